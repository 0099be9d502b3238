//! Auth, policy, routing, forwarding, streaming and shutdown over plain HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use keygate_keys::KeyKind;
use keygate_proxy::{BodyEnd, BodyObserver, Exchange, ResponseTap, Shutdown};
use keygate_store::{KeySettings, ScopeSet};
use keygate_test_utils::MockUpstream;

use crate::harness::*;

/// Every accepted credential source works, and the upstream sees the provider key,
/// never the client's, in any header or in the query string.
#[tokio::test]
async fn every_credential_source_is_replaced_by_the_provider_key() {
    let mock = MockUpstream::start().await;
    mock.require_key(PROVIDER_KEY);
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let body = chat("gpt-4o-mini", false).to_string();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("user:{key}"))
    );
    let bearer = format!("Bearer {key}");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case<'_>> = vec![
        (
            "bearer",
            vec![("authorization", &bearer)],
            gw.url("/v1/chat/completions"),
        ),
        (
            "basic",
            vec![("authorization", &basic)],
            gw.url("/v1/chat/completions"),
        ),
        (
            "x-api-key",
            vec![("x-api-key", &key)],
            gw.url("/v1/chat/completions"),
        ),
        (
            "api-key",
            vec![("api-key", &key)],
            gw.url("/v1/chat/completions"),
        ),
        (
            "query",
            vec![],
            gw.url(&format!(
                "/chat/completions?api-version=2024-06-01&api-key={key}"
            )),
        ),
    ];
    for (name, mut headers, url) in cases {
        headers.push(("content-type", "application/json"));
        let reply = send(request(Method::POST, &url, &headers, body.clone())).await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        assert_eq!(
            reply.json()["choices"][0]["message"]["content"],
            "The quick brown fox jumps over the lazy dog.",
            "{name}"
        );
    }
    let received = mock.requests();
    assert_eq!(received.len(), 5);
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.path, "/v1/chat/completions", "request {i}");
        assert_eq!(
            r.headers.get("authorization").unwrap(),
            &format!("Bearer {PROVIDER_KEY}"),
            "request {i}"
        );
        for (name, value) in &r.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(&key), "request {i}: client key in {name}");
        }
        assert!(!r.headers.contains_key("x-api-key") && !r.headers.contains_key("api-key"));
        assert_eq!(
            r.body,
            Bytes::from(body.clone()),
            "request {i}: body changed"
        );
    }
    // The query keeps every other parameter, byte for byte.
    assert_eq!(received[4].query.as_deref(), Some("api-version=2024-06-01"));
}

/// `/v1/messages` goes to the Anthropic upstream with `x-api-key`, and Anthropic
/// headers pass through.
#[tokio::test]
async fn anthropic_messages_get_x_api_key_and_keep_their_headers() {
    let mock = MockUpstream::start().await;
    mock.require_key(ANTHROPIC_PROVIDER_KEY);
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let body = serde_json::json!({
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/messages"),
        &[
            ("x-api-key", &key),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "tools-2024-04-04"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.json()["content"][0]["text"],
        "The quick brown fox jumps over the lazy dog."
    );
    let r = &mock.requests()[0];
    assert_eq!(r.headers.get("x-api-key").unwrap(), ANTHROPIC_PROVIDER_KEY);
    assert!(!r.headers.contains_key("authorization"));
    assert_eq!(r.headers.get("anthropic-version").unwrap(), "2023-06-01");
    assert_eq!(r.headers.get("anthropic-beta").unwrap(), "tools-2024-04-04");

    // A Claude model on the OpenAI route is not found, with a hint.
    let reply = post(
        &gw.url("/v1/chat/completions"),
        &key,
        &chat("claude-3-5-sonnet-latest", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "model_not_found");
    assert!(reply.text().contains("/v1/messages"), "{}", reply.text());
}

fn assert_error(reply: &Reply, status: u16, kind: &str, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["error"]["type"], kind, "{json}");
    assert_eq!(json["error"]["code"], code, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert!(
        json["error"].as_object().unwrap().contains_key("param"),
        "{json}"
    );
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "application/json"
    );
}

/// Every 401 the key check can give, with the seeds' messages.
#[tokio::test]
async fn authentication_errors() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let url = gw.url("/v1/chat/completions");
    let body = chat("gpt-4o", false);

    let reply = send(request(Method::POST, &url, &[], body.to_string())).await;
    assert_error(&reply, 401, "authentication_error", "missing_api_key");

    let key = gw.key().await;
    let mut typo = key.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'0' { b'1' } else { b'0' };
    let typo = String::from_utf8(typo).unwrap();
    let unknown = keygate_keys::SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
    for bad in [
        "garbage",
        typo.as_str(),
        unknown.expose(),
        "sk-proj-abcdef",
        &key.replace("kg_", "xx_"),
    ] {
        let reply = post(&url, bad, &body).await;
        assert_error(&reply, 401, "authentication_error", "invalid_api_key");
        assert!(!reply.text().contains(bad), "the presented key is echoed");
    }
    let reply = send(request(
        Method::POST,
        &url,
        &[("authorization", "Digest abc")],
        body.to_string(),
    ))
    .await;
    assert_error(&reply, 401, "authentication_error", "invalid_api_key");

    let mut expiring = KeySettings::new(KeyKind::Private);
    expiring.expires_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(800));
    let (expiring, _) = gw.key_with(expiring).await;
    assert_eq!(post(&url, &expiring, &body).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Served from the cache, and still refused: expiry is checked on every request.
    let reply = post(&url, &expiring, &body).await;
    assert_error(&reply, 401, "authentication_error", "api_key_expired");
    assert_eq!(reply.json()["error"]["message"], "API key has expired");

    let (revoked, id) = gw.key_with(KeySettings::new(KeyKind::Private)).await;
    assert_eq!(post(&url, &revoked, &body).await.status, StatusCode::OK);
    let mut served = 2;
    gw.store.revoke_key(&id, chrono::Utc::now()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let reply = post(&url, &revoked, &body).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_error(&reply, 401, "authentication_error", "api_key_revoked");
            break;
        }
        served += 1;
        assert!(Instant::now() < deadline, "revocation not seen within 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mock.requests().len(),
        served,
        "a refused request reached the upstream"
    );
}

/// 403s: scope, public key route, model list, origin.
#[tokio::test]
async fn permission_errors() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let url = gw.url("/v1/chat/completions");

    let mut embeddings_only = KeySettings::new(KeyKind::Private);
    embeddings_only.scopes = "embeddings".parse::<ScopeSet>().unwrap();
    let (key, _) = gw.key_with(embeddings_only).await;
    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_error(&reply, 403, "permission_error", "insufficient_scope");
    assert_eq!(
        reply.json()["error"]["message"],
        "API key does not have required scope: chat"
    );
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &format!("Bearer {key}"))],
        "",
    ))
    .await;
    assert_error(&reply, 403, "permission_error", "insufficient_scope");

    let mut limited = KeySettings::new(KeyKind::Private);
    limited.models = vec!["gpt-4o-mini".into()];
    let (key, _) = gw.key_with(limited).await;
    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_error(&reply, 403, "permission_error", "model_not_allowed");
    assert_eq!(
        post(&url, &key, &chat("gpt-4o-mini", false)).await.status,
        StatusCode::OK
    );

    let mut public = KeySettings::new(KeyKind::Public);
    public.models = vec!["gpt-4o-mini".into()];
    public.origins = vec!["https://app.example".into()];
    let (pk, _) = gw.key_with(public).await;
    let reply = post(
        &gw.url("/v1/embeddings"),
        &pk,
        &serde_json::json!({"model": "gpt-4o-mini", "input": "x"}),
    )
    .await;
    assert_error(&reply, 403, "permission_error", "public_key_not_allowed");
    let auth = format!("Bearer {pk}");
    let body = chat("gpt-4o-mini", false).to_string();
    let reply = send(request(
        Method::POST,
        &url,
        &[("authorization", &auth), ("origin", "https://evil.example")],
        body.clone(),
    ))
    .await;
    assert_error(&reply, 403, "permission_error", "origin_not_allowed");
    let reply = send(request(
        Method::POST,
        &url,
        &[("authorization", &auth), ("origin", "https://app.example")],
        body,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
}

/// 400, 404, 405, 413, 431: the request itself is wrong. Nothing reaches the upstream.
#[tokio::test]
async fn request_errors() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .config(|c| c.max_body_bytes = 4096)
        .start()
        .await;
    let key = gw.key().await;
    let auth = format!("Bearer {key}");
    let url = gw.url("/v1/chat/completions");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];

    let reply = send(request(
        Method::POST,
        &url,
        &headers,
        "{\"model\": \"gpt-4o\", \"messages\": [",
    ))
    .await;
    assert_error(&reply, 400, "invalid_request_error", "invalid_request");
    let reply = send(request(Method::POST, &url, &headers, "{\"model\": 4}")).await;
    assert_error(&reply, 400, "invalid_request_error", "invalid_request");
    let reply = send(request(Method::POST, &url, &headers, "{\"messages\": []}")).await;
    assert_error(&reply, 400, "invalid_request_error", "model_required");
    assert_eq!(reply.json()["error"]["param"], "model");

    let reply = post(&url, &key, &chat("no-such-model", false)).await;
    assert_error(&reply, 404, "invalid_request_error", "model_not_found");

    let reply = send(request(
        Method::POST,
        &gw.url("/v1/nothing/here"),
        &headers,
        "{}",
    ))
    .await;
    assert_error(&reply, 404, "invalid_request_error", "unknown_route");
    let reply = send(request(Method::GET, &url, &headers, "")).await;
    assert_error(&reply, 405, "invalid_request_error", "method_not_allowed");

    // Too large, both declared up front and streamed without a length.
    let big = format!("{{\"model\":\"gpt-4o\",\"pad\":\"{}\"}}", "x".repeat(5000));
    let reply = send(request(Method::POST, &url, &headers, big.clone())).await;
    assert_error(&reply, 413, "invalid_request_error", "request_too_large");
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(1000)
            .map(|c| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::copy_from_slice(c)))
            })
            .collect::<Vec<_>>(),
    );
    let streamed = http::Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header("authorization", &auth)
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(streamed).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let huge = "v".repeat(70 * 1024);
    let reply = send(request(
        Method::POST,
        &url,
        &[("authorization", &auth), ("x-padding", &huge)],
        "{}",
    ))
    .await;
    assert_error(&reply, 431, "invalid_request_error", "headers_too_large");

    assert!(
        mock.requests().is_empty(),
        "a refused request reached the upstream"
    );
}

/// Upstream failures: unreachable is 502, silent is 504, and an upstream error
/// response passes through unchanged.
#[tokio::test]
async fn upstream_errors() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .config(|c| c.timeouts.first_byte = Duration::from_millis(300))
        .start()
        .await;
    let key = gw.key().await;
    let url = gw.url("/v1/chat/completions");

    let upstream_body = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    mock.fail_with(429, upstream_body);
    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.text(), upstream_body);

    mock.hang();
    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_error(&reply, 504, "upstream_error", "upstream_timeout");
    mock.clear_failure();

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = keygate_proxy::ProxyConfig::new(prefix(), upstreams(&mock));
    config.upstreams[0].base_url = format!("http://{closed}/v1");
    let dead = TestGateway::builder(&mock)
        .config(|c| c.upstreams = config.upstreams)
        .start()
        .await;
    let key = dead.key().await;
    let reply = post(
        &dead.url("/v1/chat/completions"),
        &key,
        &chat("gpt-4o", false),
    )
    .await;
    assert_error(&reply, 502, "upstream_error", "upstream_unavailable");
    assert!(
        !reply.text().contains(&closed.to_string()),
        "internals in the body"
    );
}

/// A store outage: keys already cached keep working; others get 503; readiness
/// says so.
#[tokio::test]
async fn store_outage_is_503_for_uncached_keys_only() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock).faulty().start().await;
    let cached = gw.key().await;
    let uncached = gw.key().await;
    // Let the change feed pass the two creations first: they drop the hashes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = gw.url("/v1/chat/completions");
    assert_eq!(
        post(&url, &cached, &chat("gpt-4o", false)).await.status,
        StatusCode::OK
    );
    let ready = send(request(Method::GET, &gw.url("/readyz"), &[], "")).await;
    assert_eq!(ready.status, StatusCode::OK);

    gw.faults().set_keys_down(true);
    assert_eq!(
        post(&url, &cached, &chat("gpt-4o", false)).await.status,
        StatusCode::OK
    );
    let reply = post(&url, &uncached, &chat("gpt-4o", false)).await;
    assert_error(&reply, 503, "server_error", "store_unavailable");
    assert!(reply.headers.contains_key("retry-after"));
    let ready = send(request(Method::GET, &gw.url("/readyz"), &[], "")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let alive = send(request(Method::GET, &gw.url("/healthz"), &[], "")).await;
    assert_eq!(alive.status, StatusCode::OK);

    gw.faults().set_keys_down(false);
    assert_eq!(
        post(&url, &uncached, &chat("gpt-4o", false)).await.status,
        StatusCode::OK
    );
}

/// Streamed chunks reach the client as the upstream sends them, not at the end.
#[tokio::test]
async fn streaming_chunks_arrive_at_the_upstream_pace() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(100));
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let (status, frames) = stream_frames(req).await;
    assert_eq!(status, StatusCode::OK);
    let text: String = frames
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(text.contains("data: [DONE]"), "{text}");
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "The quick brown fox jumps over the lazy dog.");
    // Nine words, paced 100 ms apart: the frames must be spread over most of that
    // time. Had the gateway buffered, they would arrive together.
    assert!(frames.len() >= 9, "only {} frames", frames.len());
    let spread = frames.last().unwrap().0 - frames.first().unwrap().0;
    assert!(
        spread >= Duration::from_millis(500),
        "frames arrived within {spread:?}"
    );
    let distinct = frames
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 >= Duration::from_millis(50))
        .count();
    assert!(distinct >= 6, "frames bunched: {distinct} gaps");
}

/// A client that goes away mid-stream cancels the upstream request.
#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(100));
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    let mut body = response.into_body();
    use http_body_util::BodyExt as _;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.cancelled_streams() == 0 {
        assert!(Instant::now() < deadline, "upstream stream never cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.completed_streams(), 0);
}

/// Graceful shutdown: new connections are refused, a running stream finishes.
#[tokio::test]
async fn graceful_shutdown_lets_a_running_stream_finish() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(80));
    let mut gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let addr = gw.addr;
    let server = gw.begin_shutdown();
    use http_body_util::BodyExt as _;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("lazy") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert_eq!(server.await.unwrap(), Shutdown::Drained);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
    assert_eq!(mock.completed_streams(), 1);
}

/// A grace period that runs out closes what is left.
#[tokio::test]
async fn shutdown_grace_period_is_bounded() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(400));
    let mut gw = TestGateway::builder(&mock)
        .grace(Duration::from_millis(200))
        .start()
        .await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    let server = gw.begin_shutdown();
    assert_eq!(server.await.unwrap(), Shutdown::GraceExpired);
    use http_body_util::BodyExt as _;
    assert!(
        response.into_body().collect().await.is_err(),
        "stream should have been cut"
    );
}

/// The tap point sees every frame the client gets, then one end.
#[tokio::test]
async fn response_taps_see_every_frame() {
    #[derive(Default)]
    struct Counts {
        bytes: AtomicUsize,
        ends: AtomicUsize,
    }
    struct Tap(Arc<Counts>);
    struct Observer(Arc<Counts>);
    impl ResponseTap for Tap {
        fn tap(&self, exchange: &Exchange<'_>) -> Option<Box<dyn BodyObserver>> {
            assert_eq!(exchange.model, "gpt-4o");
            assert!(exchange.stream);
            Some(Box::new(Observer(Arc::clone(&self.0))))
        }
    }
    impl BodyObserver for Observer {
        fn on_data(&mut self, data: &Bytes) {
            self.0.bytes.fetch_add(data.len(), Ordering::SeqCst);
        }
        fn on_end(&mut self, end: BodyEnd) {
            assert_eq!(end, BodyEnd::Complete);
            self.0.ends.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mock = MockUpstream::start().await;
    let counts = Arc::new(Counts::default());
    let gw = TestGateway::builder(&mock)
        .tap(Arc::new(Tap(Arc::clone(&counts))))
        .grace(Duration::from_secs(1))
        .start()
        .await;
    let key = gw.key().await;
    let reply = post(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(counts.bytes.load(Ordering::SeqCst), reply.body.len());
    assert_eq!(counts.ends.load(Ordering::SeqCst), 1);
}

/// `GET /v1/models` is answered by keygate, filtered by the key.
#[tokio::test]
async fn models_are_listed_from_the_routing_table_and_filtered_by_key() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let auth = format!("Bearer {key}");
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let ids: Vec<String> = reply.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["o3", "text-embedding-3-small"]);

    let mut limited = KeySettings::new(KeyKind::Private);
    limited.models = vec!["gpt-4o-mini".into(), "o3".into()];
    let (key, _) = gw.key_with(limited).await;
    let auth = format!("Bearer {key}");
    let reply = send(request(
        Method::GET,
        &gw.url("/models"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    let ids: Vec<String> = reply.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["o3", "gpt-4o-mini"]);
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/models/gpt-4o-mini"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    assert_eq!(reply.json()["owned_by"], "mock-openai");
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/models/text-embedding-3-small"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    assert_error(&reply, 404, "invalid_request_error", "model_not_found");
    assert!(mock.requests().is_empty());
}

/// Embeddings and a multipart upload are routed by their `model`.
#[tokio::test]
async fn embeddings_and_multipart_routes() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let reply = post(
        &gw.url("/v1/embeddings"),
        &key,
        &serde_json::json!({"model": "text-embedding-3-small", "input": ["a b", "c"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["data"].as_array().unwrap().len(), 2);

    let boundary = "XBOUNDARYX";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--{boundary}--\r\n"
    );
    let auth = format!("Bearer {key}");
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let _ = send(request(
        Method::POST,
        &gw.url("/v1/audio/transcriptions"),
        &[("authorization", &auth), ("content-type", &content_type)],
        form.clone(),
    ))
    .await;
    let received = mock.requests();
    let last = received.last().unwrap();
    assert_eq!(last.path, "/v1/audio/transcriptions");
    assert_eq!(last.body, Bytes::from(form), "multipart body changed");

    let mut no_stt = KeySettings::new(KeyKind::Private);
    no_stt.scopes = "chat".parse::<ScopeSet>().unwrap();
    let (key, _) = gw.key_with(no_stt).await;
    let auth = format!("Bearer {key}");
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/audio/transcriptions"),
        &[("authorization", &auth), ("content-type", &content_type)],
        "",
    ))
    .await;
    assert_eq!(
        reply.json()["error"]["message"],
        "API key does not have required scope: stt"
    );
}

/// The key's `last_used_at` is written in batches, and at shutdown.
#[tokio::test]
async fn last_used_is_written_at_shutdown() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let (key, id) = gw.key_with(KeySettings::new(KeyKind::Private)).await;
    assert!(gw.store.get_key(&id).await.unwrap().last_used_at.is_none());
    assert_eq!(
        post(
            &gw.url("/v1/chat/completions"),
            &key,
            &chat("gpt-4o", false)
        )
        .await
        .status,
        StatusCode::OK
    );
    let store = Arc::clone(&gw.store);
    assert_eq!(gw.shutdown().await, Shutdown::Drained);
    assert!(store.get_key(&id).await.unwrap().last_used_at.is_some());
}

/// A lookup that read a key just before its revocation committed, and cached it
/// after the change feed had dropped it, is not trusted: the next request reads
/// the key again and is refused.
#[tokio::test]
async fn a_lookup_racing_a_revocation_does_not_keep_the_key_alive() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock).faulty().start().await;
    let (key, id) = gw.key_with(KeySettings::new(KeyKind::Private)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.faults().set_lookup_delay(Duration::from_millis(600));
    let url = gw.url("/v1/chat/completions");
    let racing = {
        let (url, key) = (url.clone(), key.clone());
        tokio::spawn(async move { post(&url, &key, &chat("gpt-4o", false)).await })
    };
    // The lookup has read the active row and is still on its way back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.store.revoke_key(&id, chrono::Utc::now()).await.unwrap();
    // The follower (100 ms poll) applies the revocation before the lookup returns.
    let first = racing.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "began before the revocation");
    gw.faults().set_lookup_delay(Duration::ZERO);
    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_error(&reply, 401, "authentication_error", "api_key_revoked");
}

/// A second `model` part in a multipart body is refused: the upstream might use it
/// instead of the one the key was checked against.
#[tokio::test]
async fn a_repeated_multipart_model_is_refused() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let mut limited = KeySettings::new(KeyKind::Private);
    limited.models = vec!["gpt-4o-transcribe".into()];
    let (key, _) = gw.key_with(limited).await;
    let boundary = "B0UNDARY";
    let part = |model: &str| {
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n")
    };
    let form = format!(
        "{}{}--{boundary}--\r\n",
        part("gpt-4o-transcribe"),
        part("o3")
    );
    let auth = format!("Bearer {key}");
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/audio/transcriptions"),
        &[("authorization", &auth), ("content-type", &content_type)],
        form,
    ))
    .await;
    assert_error(&reply, 400, "invalid_request_error", "invalid_request");
    assert!(mock.requests().is_empty());
}

/// A key's `rpm`: a burst of that many, then 429 with `Retry-After` and the
/// `x-ratelimit-*` headers, and nothing more reaches the upstream.
#[tokio::test]
async fn requests_per_minute_are_limited_per_key() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let mut limited = KeySettings::new(KeyKind::Private);
    limited.rpm = Some(3);
    let (key, _) = gw.key_with(limited).await;
    let other = gw.key().await;
    let url = gw.url("/v1/chat/completions");
    for remaining in ["2", "1", "0"] {
        let reply = post(&url, &key, &chat("gpt-4o", false)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.headers.get("x-ratelimit-limit-requests").unwrap(),
            "3"
        );
        assert_eq!(
            reply.headers.get("x-ratelimit-remaining-requests").unwrap(),
            remaining
        );
    }
    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_error(&reply, 429, "rate_limit_error", "rate_limit_exceeded");
    let retry: u64 = reply
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(
        reply.headers.get("x-ratelimit-remaining-requests").unwrap(),
        "0"
    );
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 requests per minute")
    );
    assert_eq!(mock.requests().len(), 3);
    // Another key is not affected.
    assert_eq!(
        post(&url, &other, &chat("gpt-4o", false)).await.status,
        StatusCode::OK
    );
}

/// An upstream that goes silent mid-stream is cut after the idle timeout: the
/// client sees the stream end with an error and the upstream request is dropped.
#[tokio::test]
async fn a_silent_upstream_stream_is_cut_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(600));
    let gw = TestGateway::builder(&mock)
        .config(|c| c.timeouts.idle = Duration::from_millis(200))
        .start()
        .await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    use http_body_util::BodyExt as _;
    assert!(
        response.into_body().collect().await.is_err(),
        "the stream should be cut"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.cancelled_streams() == 0 {
        assert!(Instant::now() < deadline, "upstream stream never cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Error bodies repeat no path segment, no client method name and no model name
/// that is long or unprintable: a key pasted as a path or a model is never echoed.
#[tokio::test]
async fn error_bodies_echo_no_path_and_no_long_model() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];

    let reply = send(request(
        Method::GET,
        &gw.url(&format!("/v1/{key}")),
        &headers,
        "",
    ))
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "unknown_route");
    let models = format!("/v1/models/{key}");
    let lookup = send(request(Method::GET, &gw.url(&models), &headers, "")).await;
    assert_eq!(lookup.status, StatusCode::NOT_FOUND);
    assert_eq!(lookup.json()["error"]["code"], "model_not_found");
    let custom = Method::from_bytes(b"SECRETMETHOD").unwrap();
    let odd = send(request(
        custom,
        &gw.url("/v1/chat/completions"),
        &headers,
        "",
    ))
    .await;
    assert_eq!(odd.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(String::from_utf8_lossy(&odd.body).contains("this method is not allowed"));

    let long = "m".repeat(200);
    let url = gw.url("/v1/chat/completions");
    let mut echoed = Vec::new();
    for model in [key.as_str(), long.as_str(), "bad\u{7}model"] {
        let reply = post(&url, &key, &chat(model, false)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{model}");
        assert_eq!(reply.json()["error"]["code"], "model_not_found");
        echoed.push(reply);
    }
    for reply in [&reply, &lookup, &odd].into_iter().chain(&echoed) {
        let body = String::from_utf8_lossy(&reply.body);
        for secret in [key.as_str(), long.as_str(), "SECRETMETHOD", "bad"] {
            assert!(!body.contains(secret), "{body}");
        }
    }
    let short = post(&url, &key, &chat("no-such-model", false)).await;
    assert!(String::from_utf8_lossy(&short.body).contains("'no-such-model'"));
    assert!(mock.requests().is_empty());
}
