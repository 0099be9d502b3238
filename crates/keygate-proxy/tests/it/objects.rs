//! The routes beyond generation: Anthropic's token counting (scope `chat`,
//! never billed) and the stored objects (files, batches, stored responses:
//! `stored` to read, `upload` to create, `delete` to delete), each forwarded to
//! an upstream of the right kind with its path and id, and refused without its
//! scope.

use http::{Method, StatusCode};
use keygate_billing::{Price, PriceTable};
use keygate_keys::KeyKind;
use keygate_store::{KeySettings, ScopeSet};
use keygate_test_utils::MockUpstream;

use crate::harness::{TestGateway, request, send};

/// Every new route: method, path, the scope it needs, and a body.
const ROUTES: [(&str, &str, &str, &str); 14] = [
    (
        "POST",
        "/v1/messages/count_tokens",
        "chat",
        r#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"hi"}]}"#,
    ),
    ("GET", "/v1/responses/resp_123", "stored", ""),
    ("DELETE", "/v1/responses/resp_123", "delete", ""),
    ("GET", "/v1/responses/resp_123/input_items", "stored", ""),
    ("GET", "/v1/files", "stored", ""),
    (
        "POST",
        "/v1/files",
        "upload",
        "--b\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b--\r\n",
    ),
    ("GET", "/v1/files/file-abc", "stored", ""),
    ("DELETE", "/v1/files/file-abc", "delete", ""),
    ("GET", "/v1/files/file-abc/content", "stored", ""),
    ("GET", "/v1/batches", "stored", ""),
    (
        "POST",
        "/v1/batches",
        "upload",
        r#"{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"}"#,
    ),
    ("GET", "/v1/batches/batch_1", "stored", ""),
    ("POST", "/v1/batches/batch_1/cancel", "delete", ""),
    ("GET", "/v1/responses/resp_123?include=x", "stored", ""),
];

async fn call(
    gw: &TestGateway,
    key: &str,
    method: &str,
    path: &str,
    body: &str,
) -> crate::harness::Reply {
    let auth = format!("Bearer {key}");
    let content_type = if body.starts_with("--b") {
        "multipart/form-data; boundary=b"
    } else {
        "application/json"
    };
    send(request(
        method.parse::<Method>().unwrap(),
        &gw.url(path),
        &[("authorization", &auth), ("content-type", content_type)],
        body.to_owned(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_new_route_is_forwarded_with_its_scope_and_refused_without() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    for (method, path, scope, body) in ROUTES {
        let scopes: ScopeSet = scope.parse().unwrap();
        let settings = KeySettings {
            scopes,
            ..KeySettings::new(KeyKind::Private)
        };
        let (allowed, _) = gw.key_with(settings).await;
        let before = mock.requests().len();
        let reply = call(&gw, &allowed, method, path, body).await;
        // The mock answers these routes 404 in the provider's shape: passed
        // through, so it was forwarded.
        assert_ne!(reply.code(), "insufficient_scope", "{method} {path}");
        let sent = mock.requests();
        assert_eq!(sent.len(), before + 1, "{method} {path} was not forwarded");
        let sent = sent.last().unwrap();
        let expected = path.split('?').next().unwrap();
        assert_eq!(
            (sent.method.as_str(), sent.path.as_str()),
            (method, expected)
        );
        assert_eq!(sent.body, body.as_bytes(), "forwarded as it came");
        let provider = if path.starts_with("/v1/messages") {
            "x-api-key"
        } else {
            "authorization"
        };
        assert!(
            sent.headers.contains_key(provider),
            "{path}: the provider key of its kind"
        );

        let others = ScopeSet::all()
            .iter()
            .filter(|s| s.name() != scope)
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(",");
        let settings = KeySettings {
            scopes: others.parse().unwrap(),
            ..KeySettings::new(KeyKind::Private)
        };
        let (refused, _) = gw.key_with(settings).await;
        let reply = call(&gw, &refused, method, path, body).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(reply.code(), "insufficient_scope");
        assert!(reply.text().contains(scope), "{}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_counting_and_objects_are_never_billed_and_batches_are_not_created() {
    let mock = MockUpstream::start().await;
    // No price for claude-haiku-4-5: a billed route would refuse it.
    let prices = PriceTable::from_iter([("gpt-4o", Price::from_credits(1.0, 1.0, None).unwrap())]);
    let gw = TestGateway::builder(&mock).billed(prices).start().await;
    let key = gw.key().await;
    let (_, path, _, body) = ROUTES[0];
    let reply = call(&gw, &key, "POST", path, body).await;
    assert_ne!(reply.code(), "model_not_found", "{}", reply.text());
    assert_eq!(mock.requests().len(), 1);
    let reply = call(&gw, &key, "GET", "/v1/files", "").await;
    assert_ne!(reply.code(), "insufficient_scope");
    let (_, path, _, body) = ROUTES[10];
    let reply = call(&gw, &key, "POST", path, body).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "batches_not_billed");
    assert_eq!(mock.requests().len(), 2, "the batch was not forwarded");
    // A priced chat afterwards is the only usage record.
    assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    let records = gw.records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].model, "gpt-4o");
    assert_eq!(gw.billing().metrics().holds, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn object_ids_are_checked_and_public_keys_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    for bad in [
        "/v1/files/..",
        "/v1/files/a%2Fb/content",
        "/v1/responses/.hidden",
    ] {
        let reply = call(&gw, &key, "GET", bad, "").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let reply = call(&gw, &key, "PUT", "/v1/files/file-abc", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(mock.requests().is_empty());
    let settings = KeySettings {
        origins: vec!["https://app.example".into()],
        models: vec!["gpt-4o".into()],
        ..KeySettings::new(KeyKind::Public)
    };
    let (public, _) = gw.key_with(settings).await;
    let reply = call(&gw, &public, "GET", "/v1/files", "").await;
    assert_eq!(reply.code(), "public_key_not_allowed");
}
