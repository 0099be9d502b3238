//! The admin API end to end: the real `keygate` binary with `[admin] listen`,
//! admin tokens made by the real `keygate-admin`, on SQLite and PostgreSQL. Every
//! role's allowed and refused operations, idempotent retries that never credit or
//! create twice, cursor pagination, the audit log, and a revocation through the
//! API that the gateway honours within a second.

use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use keygate_test_utils::{GatewayProcess, MockUpstream, TestPostgres, admin};
use serde_json::{Value, json};

use crate::{ENV, PROVIDER_KEY, post_chat, write_config};

/// A gateway with its admin listener, and its URLs.
struct Deployment {
    gateway: GatewayProcess,
    admin_url: String,
    database_url: String,
    _mock: MockUpstream,
}

async fn start(dir: &Path, database_url: &str) -> Deployment {
    let mock = MockUpstream::start().await;
    mock.require_key(PROVIDER_KEY);
    let config = write_config(dir, &mock, database_url);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[keys]\ndelete_after = \"30d\"\n");
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::start(&config, &ENV).await;
    let log = gateway.log();
    let admin_url = log
        .split("admin API on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin listener in the log:\n{log}"))
        .to_owned();
    Deployment {
        gateway,
        admin_url,
        database_url: database_url.to_owned(),
        _mock: mock,
    }
}

impl Deployment {
    /// A new admin token of `role`, made with the CLI.
    async fn token(&self, role: &str) -> String {
        let out = admin(
            &self.database_url,
            &[
                "--json",
                "admin-token",
                "create",
                "--name",
                role,
                "--role",
                role,
            ],
        )
        .await;
        assert!(out.success, "{}", out.stderr);
        let created: Value = serde_json::from_str(&out.stdout).unwrap();
        created["token"].as_str().unwrap().to_owned()
    }
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

async fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> Reply {
    call_with(base, method, path, token, body, idempotency_key, &[]).await
}

async fn call_with(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    idempotency_key: Option<&str>,
    extra: &[(&str, &str)],
) -> Reply {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = request
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    for field in ["message", "type", "code"] {
        assert!(reply.body["error"][field].is_string(), "{}", reply.body);
    }
}

async fn admin_api_end_to_end(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), database_url).await;
    let base = d.admin_url.as_str();
    let owner = d.token("owner").await;

    // No token, a bad token.
    assert_error(
        &call(base, "GET", "/api/accounts", None, None, None).await,
        401,
        "missing_admin_token",
    );
    let last = if owner.ends_with('0') { '1' } else { '0' };
    let bad = format!("{}{last}", &owner[..owner.len() - 1]);
    assert_error(
        &call(base, "GET", "/api/accounts", Some(&bad), None, None).await,
        401,
        "invalid_admin_token",
    );

    // An account, created once however often the request is retried.
    let new_account = json!({"name": "Acme", "balance": "10.5"});
    let created = call(
        base,
        "POST",
        "/api/accounts",
        Some(&owner),
        Some(new_account.clone()),
        Some("acct-1"),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["balance_micros"], 10_500_000);
    let account = created.body["id"].as_str().unwrap().to_owned();
    let again = call(
        base,
        "POST",
        "/api/accounts",
        Some(&owner),
        Some(new_account),
        Some("acct-1"),
    )
    .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, created.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = call(
        base,
        "POST",
        "/api/accounts",
        Some(&owner),
        Some(json!({"name": "Other"})),
        Some("acct-1"),
    )
    .await;
    assert_error(&other, 422, "idempotency_key_reused");

    // Top-ups: a retried one credits once.
    let top_up = format!("/api/accounts/{account}/top-up");
    for _ in 0..3 {
        let reply = call(
            base,
            "POST",
            &top_up,
            Some(&owner),
            Some(json!({"amount": "2"})),
            Some("top-up-1"),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["balance_micros"], 12_500_000);
    }
    let micros = call(
        base,
        "POST",
        &top_up,
        Some(&owner),
        Some(json!({"amount_micros": 500_000})),
        None,
    )
    .await;
    assert_eq!(micros.body["balance_micros"], 13_000_000);
    let renamed = call(
        base,
        "PATCH",
        &format!("/api/accounts/{account}"),
        Some(&owner),
        Some(json!({"name": "Acme Ltd", "email": "ops@acme.example"})),
        None,
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["email"], "ops@acme.example");
    assert_eq!(renamed.body["tier"], Value::Null);
    let path = format!("/api/accounts/{account}");
    let tiered = call(
        base,
        "PATCH",
        &path,
        Some(&owner),
        Some(json!({"tier": "free"})),
        None,
    )
    .await;
    assert_eq!(tiered.status, 200, "{}", tiered.body);
    assert_eq!(tiered.body["tier"], "free");
    assert_eq!(tiered.body["name"], "Acme Ltd");
    let bad = call(
        base,
        "PATCH",
        &path,
        Some(&owner),
        Some(json!({"tier": "no such"})),
        None,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let cleared = call(
        base,
        "PATCH",
        &path,
        Some(&owner),
        Some(json!({"tier": null})),
        None,
    )
    .await;
    assert_eq!(cleared.body["tier"], Value::Null);
    let shown = call(
        base,
        "GET",
        &format!("/api/accounts/{account}"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_eq!(shown.body["balance_micros"], 13_000_000);
    assert_error(
        &call(
            base,
            "POST",
            &top_up,
            Some(&owner),
            Some(json!({"amount": "-1"})),
            None,
        )
        .await,
        400,
        "invalid_request",
    );

    // A key: shown in the create response only; a retry does not make a second one.
    let new_key = json!({"account": account, "name": "web", "scopes": ["chat", "models"], "expires_in": "30d", "rpm": 60});
    let key = call(
        base,
        "POST",
        "/api/keys",
        Some(&owner),
        Some(new_key.clone()),
        Some("key-1"),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body);
    let secret = key.body["key"].as_str().unwrap().to_owned();
    let key_id = key.body["id"].as_str().unwrap().to_owned();
    assert_eq!(key.body["scopes"], json!(["models", "chat"]));
    let retry = call(
        base,
        "POST",
        "/api/keys",
        Some(&owner),
        Some(new_key),
        Some("key-1"),
    )
    .await;
    assert_error(&retry, 409, "already_created");
    assert!(
        retry.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&key_id)
    );
    assert!(!retry.body.to_string().contains(&secret));
    let shown = call(
        base,
        "GET",
        &format!("/api/keys/{key_id}"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert!(shown.body.get("key").is_none());
    assert_eq!(shown.body["rpm"], 60);
    let (status, body) = post_chat(&d.gateway.base_url, &secret, false).await;
    assert_eq!(status, 200, "{body}");

    // Update, rotate with grace, pagination.
    let patched = call(
        base,
        "PATCH",
        &format!("/api/keys/{key_id}"),
        Some(&owner),
        Some(json!({"name": "web-2", "rpm": null, "max_parallel": 4})),
        None,
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["name"], "web-2");
    assert_eq!(patched.body["rpm"], Value::Null);
    assert_eq!(patched.body["max_parallel"], 4);
    let rotated = call(
        base,
        "POST",
        &format!("/api/keys/{key_id}/rotate"),
        Some(&owner),
        Some(json!({"grace": "1h"})),
        None,
    )
    .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    assert_eq!(rotated.body["replaces"]["id"], key_id.as_str());
    let new_secret = rotated.body["key"].as_str().unwrap().to_owned();
    let new_id = rotated.body["id"].as_str().unwrap().to_owned();
    let first = call(
        base,
        "GET",
        &format!("/api/keys?account={account}&limit=1"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_eq!(first.body["keys"].as_array().unwrap().len(), 1);
    let next = first.body["next"].as_str().unwrap().to_owned();
    let second = call(
        base,
        "GET",
        &format!("/api/keys?account={account}&limit=1&after={next}"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_eq!(second.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["next"], Value::Null);
    assert_ne!(first.body["keys"][0]["id"], second.body["keys"][0]["id"]);

    // Revoke through the API: the gateway refuses the key within a second.
    let revoked = call(
        base,
        "POST",
        &format!("/api/keys/{new_id}/revoke"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_eq!(revoked.body["status"], "revoked");
    let since = Instant::now();
    loop {
        let (status, body) = post_chat(&d.gateway.base_url, &new_secret, false).await;
        if status == 401 {
            assert!(body.contains("api_key_revoked"), "{body}");
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "revocation not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Usage after traffic.
    let usage = call(
        base,
        "GET",
        &format!("/api/usage?account={account}&since=1h&group_by=model"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    assert!(usage.body["total"]["cost_micros"].is_i64());

    // The audit log: every change, by this token, never a secret.
    let audit = call(
        base,
        "GET",
        "/api/audit?limit=100",
        Some(&owner),
        None,
        None,
    )
    .await;
    let text = audit.body.to_string();
    for secret in [&secret, &new_secret, &owner] {
        assert!(!text.contains(secret.as_str()));
    }
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|e| e["actor"] != "cli")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "account.create",
            "account.top_up",
            "account.top_up",
            "account.update",
            "account.update",
            "account.update",
            "key.create",
            "key.update",
            "key.rotate",
            "key.create",
            "key.revoke"
        ]
    );

    // Errors in the OpenAI shape; the document the route table renders is served.
    assert_error(
        &call(base, "GET", "/api/nothing", Some(&owner), None, None).await,
        404,
        "not_found",
    );
    assert_error(
        &call(
            base,
            "POST",
            "/api/keys",
            Some(&owner),
            Some(json!({"account": account, "colour": 1})),
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    let doc = call(base, "GET", "/openapi.json", None, None, None).await;
    assert_eq!(doc.body, keygate_admin_api::openapi_document());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_end_to_end_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    admin_api_end_to_end(&format!(
        "sqlite://{}",
        dir.path().join("keygate.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_end_to_end_postgres() {
    let Some(db) = TestPostgres::create("admin_api_end_to_end").await else {
        return;
    };
    admin_api_end_to_end(db.url()).await;
}

/// What each role may do, and the 403 for the rest.
async fn roles_allow_and_refuse(database_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), database_url).await;
    let base = d.admin_url.as_str();
    let (owner, operator, viewer) = (
        d.token("owner").await,
        d.token("operator").await,
        d.token("viewer").await,
    );
    let account = call(
        base,
        "POST",
        "/api/accounts",
        Some(&owner),
        Some(json!({"name": "R"})),
        None,
    )
    .await;
    let account = account.body["id"].as_str().unwrap().to_owned();
    let key = call(
        base,
        "POST",
        "/api/keys",
        Some(&owner),
        Some(json!({"account": account})),
        None,
    )
    .await;
    let key_id = key.body["id"].as_str().unwrap().to_owned();

    // Reads: every role.
    for token in [&owner, &operator, &viewer] {
        for path in [
            "/api/accounts".to_owned(),
            format!("/api/accounts/{account}"),
            "/api/keys".into(),
            format!("/api/keys/{key_id}"),
            "/api/usage".into(),
            "/api/audit".into(),
        ] {
            let reply = call(base, "GET", &path, Some(token), None, None).await;
            assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        }
    }
    // Viewer: no change at all.
    for (method, path, body) in [
        ("POST", "/api/keys".to_owned(), json!({"account": account})),
        (
            "POST",
            format!("/api/accounts/{account}/top-up"),
            json!({"amount": "1"}),
        ),
        ("POST", format!("/api/keys/{key_id}/revoke"), json!({})),
        ("PATCH", format!("/api/keys/{key_id}"), json!({"name": "x"})),
        ("POST", "/api/accounts".into(), json!({"name": "x"})),
    ] {
        assert_error(
            &call(base, method, &path, Some(&viewer), Some(body), None).await,
            403,
            "insufficient_role",
        );
    }
    // Operator: keys and top-ups, not accounts, purges or tokens.
    let made = call(
        base,
        "POST",
        "/api/keys",
        Some(&operator),
        Some(json!({"account": account})),
        None,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let topped = call(
        base,
        "POST",
        &format!("/api/accounts/{account}/top-up"),
        Some(&operator),
        Some(json!({"amount": "1"})),
        None,
    )
    .await;
    assert_eq!(topped.status, 200);
    let rotated = call(
        base,
        "POST",
        &format!("/api/keys/{key_id}/rotate"),
        Some(&operator),
        None,
        None,
    )
    .await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let patch_path = format!("/api/accounts/{account}");
    for (method, path, body) in [
        ("POST", "/api/accounts", json!({"name": "x"})),
        ("PATCH", patch_path.as_str(), json!({"name": "x"})),
        ("POST", "/api/usage/purge", json!({"older_than": "90d"})),
        ("GET", "/api/admin-tokens", json!({})),
        (
            "POST",
            "/api/admin-tokens",
            json!({"name": "x", "role": "owner"}),
        ),
    ] {
        assert_error(
            &call(base, method, path, Some(&operator), Some(body), None).await,
            403,
            "insufficient_role",
        );
    }
    // Owner: tokens too; a revoked token stops working.
    let made = call(
        base,
        "POST",
        "/api/admin-tokens",
        Some(&owner),
        Some(json!({"name": "temp", "role": "viewer"})),
        None,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let temp = made.body["token"].as_str().unwrap().to_owned();
    let listed = call(base, "GET", "/api/admin-tokens", Some(&owner), None, None).await;
    assert!(!listed.body.to_string().contains(&temp));
    assert_eq!(
        call(base, "GET", "/api/keys", Some(&temp), None, None)
            .await
            .status,
        200
    );
    let id = made.body["id"].as_str().unwrap();
    call(
        base,
        "POST",
        &format!("/api/admin-tokens/{id}/revoke"),
        Some(&owner),
        None,
        None,
    )
    .await;
    assert_error(
        &call(base, "GET", "/api/keys", Some(&temp), None, None).await,
        401,
        "invalid_admin_token",
    );
    let purged = call(
        base,
        "POST",
        "/api/usage/purge",
        Some(&owner),
        Some(json!({"older_than": "90d"})),
        None,
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_allow_and_refuse_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    roles_allow_and_refuse(&format!(
        "sqlite://{}",
        dir.path().join("keygate.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_allow_and_refuse_postgres() {
    let Some(db) = TestPostgres::create("admin_roles").await else {
        return;
    };
    roles_allow_and_refuse(db.url()).await;
}

/// Failed token attempts from one address are refused after ten a minute, even
/// with a good token, before any lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!("sqlite://{}", dir.path().join("keygate.db").display()),
    )
    .await;
    let owner = d.token("owner").await;
    let base = d.admin_url.as_str();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            call(base, "GET", "/api/keys", Some("kg_ak_nonsense"), None, None)
                .await
                .status,
        );
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(statuses[11], 429);
    let refused = call(base, "GET", "/api/keys", Some(&owner), None, None).await;
    assert_error(&refused, 429, "too_many_failed_attempts");
    assert!(refused.headers.contains_key("retry-after"));
}

/// schemathesis (from PyPI; `.ci/run` installs it and sets `KEYGATE_TEST_SCHEMATHESIS`
/// to its command) against the served OpenAPI document with an owner token: no 5xx,
/// every response in the documented status codes and schemas. A bounded run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_response_off_schema() {
    let Ok(st) = std::env::var("KEYGATE_TEST_SCHEMATHESIS") else {
        eprintln!(
            "SKIPPED (schemathesis): set KEYGATE_TEST_SCHEMATHESIS to the schemathesis command to run it"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!("sqlite://{}", dir.path().join("keygate.db").display()),
    )
    .await;
    let owner = d.token("owner").await;
    // Something for the generated ids and filters to find.
    let account = call(
        &d.admin_url,
        "POST",
        "/api/accounts",
        Some(&owner),
        Some(json!({"name": "S", "balance": "1"})),
        None,
    )
    .await;
    let account = account.body["id"].as_str().unwrap().to_owned();
    call(
        &d.admin_url,
        "POST",
        "/api/keys",
        Some(&owner),
        Some(json!({"account": account})),
        None,
    )
    .await;
    let out = tokio::process::Command::new(&st)
        .args([
            "run",
            &format!("{}/openapi.json", d.admin_url),
            "--url",
            &d.admin_url,
            "--header",
            &format!("Authorization: Bearer {owner}"),
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--exclude-path-regex",
            "/api/admin-tokens/.*/revoke",
            "--seed",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache goes in the working directory: a temporary one.
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.gateway
            .log()
            .lines()
            .filter(|l| l.contains("admin"))
            .take(50)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{}", stdout);
}

/// A key holder's own view on the gateway port: `GET /v1/key`, `/v1/usage`,
/// `/v1/quota` with the `usage` scope; 403 `insufficient_scope` without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_holders_see_their_own_key_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!("sqlite://{}", dir.path().join("keygate.db").display()),
    )
    .await;
    let owner = d.token("owner").await;
    let base = d.admin_url.as_str();
    let account = call(
        base,
        "POST",
        "/api/accounts",
        Some(&owner),
        Some(json!({"name": "Holder", "balance": "5"})),
        None,
    )
    .await;
    let account = account.body["id"].as_str().unwrap().to_owned();
    let with = call(
        base,
        "POST",
        "/api/keys",
        Some(&owner),
        Some(json!({"account": account, "name": "mine", "scopes": ["chat", "usage"], "rpm": 100})),
        None,
    )
    .await;
    let secret = with.body["key"].as_str().unwrap().to_owned();
    let without = call(
        base,
        "POST",
        "/api/keys",
        Some(&owner),
        Some(json!({"account": account, "scopes": ["chat"]})),
        None,
    )
    .await;
    let other = without.body["key"].as_str().unwrap().to_owned();
    let gw = d.gateway.base_url.as_str();

    let (status, _) = post_chat(gw, &secret, false).await;
    assert_eq!(status, 200);
    let info = call(gw, "GET", "/v1/key", Some(&secret), None, None).await;
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.body["id"], with.body["id"]);
    assert_eq!(info.body["name"], "mine");
    assert_eq!(info.body["rpm"], 100);
    assert!(!info.body.to_string().contains(&secret[7..]));

    // Usage records are written in batches: wait (bounded) for the request's.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage = call(
            gw,
            "GET",
            "/v1/usage?since=1h&group_by=model",
            Some(&secret),
            None,
            None,
        )
        .await;
        assert_eq!(usage.status, 200, "{}", usage.body);
        if usage.body["requests"] == 1 || Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(usage.body["requests"], 1, "{}", usage.body);
    assert_eq!(usage.body["data"][0]["group"], "gpt-4o-mini");
    assert!(usage.body["cost_micros"].as_i64().unwrap() > 0);
    // The balance is charged when the key's lease settles (a batch window later).
    let balance = usage.body["balance_micros"].as_i64().unwrap();
    assert!(balance <= 5_000_000, "{}", usage.body);
    assert_eq!(
        usage.body["available_micros"].as_i64().unwrap(),
        balance - usage.body["reserved_micros"].as_i64().unwrap()
    );
    let quota = call(gw, "GET", "/v1/quota", Some(&secret), None, None).await;
    assert_eq!(quota.status, 200);
    assert_eq!(quota.body["key_id"], with.body["id"]);
    assert!(quota.body["balance_micros"].is_i64());
    let by_day = call(
        gw,
        "GET",
        "/v1/usage?group_by=day",
        Some(&secret),
        None,
        None,
    )
    .await;
    assert_eq!(by_day.body["data"].as_array().unwrap().len(), 1);
    assert_error(
        &call(
            gw,
            "GET",
            "/v1/usage?group_by=key",
            Some(&secret),
            None,
            None,
        )
        .await,
        400,
        "invalid_request",
    );

    for path in ["/v1/key", "/v1/usage", "/v1/quota"] {
        let refused = call(gw, "GET", path, Some(&other), None, None).await;
        assert_error(&refused, 403, "insufficient_scope");
    }
}

/// Console sessions: a hashed cookie with the right flags, and no change without
/// the CSRF token; the console page carries a strict CSP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_need_the_csrf_token_for_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(
        dir.path(),
        &format!("sqlite://{}", dir.path().join("keygate.db").display()),
    )
    .await;
    let owner = d.token("owner").await;
    let base = d.admin_url.as_str();
    let signed = call(
        base,
        "POST",
        "/console/session",
        None,
        Some(json!({"token": owner})),
        None,
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.body);
    let set = signed.headers["set-cookie"].to_str().unwrap().to_owned();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(flag), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = signed.body["csrf"].as_str().unwrap().to_owned();
    let who = call_with(
        base,
        "GET",
        "/console/session",
        None,
        None,
        None,
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(who.body["role"], "owner");
    let read = call_with(
        base,
        "GET",
        "/api/accounts",
        None,
        None,
        None,
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(read.status, 200);
    let no_csrf = call_with(
        base,
        "POST",
        "/api/accounts",
        None,
        Some(json!({"name": "x"})),
        None,
        &[("cookie", &cookie)],
    )
    .await;
    assert_error(&no_csrf, 403, "csrf_token_invalid");
    let wrong = call_with(
        base,
        "POST",
        "/api/accounts",
        None,
        Some(json!({"name": "x"})),
        None,
        &[("cookie", &cookie), ("x-csrf-token", "nope")],
    )
    .await;
    assert_error(&wrong, 403, "csrf_token_invalid");
    let ok = call_with(
        base,
        "POST",
        "/api/accounts",
        None,
        Some(json!({"name": "x"})),
        None,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let out = call_with(
        base,
        "DELETE",
        "/console/session",
        None,
        None,
        None,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
    )
    .await;
    assert_eq!(out.status, 200);
    let after = call_with(
        base,
        "GET",
        "/api/accounts",
        None,
        None,
        None,
        &[("cookie", &cookie)],
    )
    .await;
    assert_error(&after, 401, "invalid_admin_token");
    let bad = call(
        base,
        "POST",
        "/console/session",
        None,
        Some(json!({"token": "kg_ak_wrong"})),
        None,
    )
    .await;
    assert_error(&bad, 401, "invalid_admin_token");

    // The page and its assets: a strict policy, no inline script.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let page = client
        .get(format!("{base}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = page.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&html).contains("<script>"));
}
