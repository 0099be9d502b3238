//! The `keygate` binary end to end: real processes for the gateway and
//! `keygate-admin`, the mock upstream in this test, and the official Python SDKs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "tests"
)]

mod admin_api;
mod console;
mod limits;
mod metrics;
mod privacy;

use std::path::Path;
use std::time::{Duration, Instant};

use keygate_test_utils::{
    GatewayProcess, MOCK_ANTHROPIC_KEY_ENV, MOCK_OPENAI_KEY_ENV, MockUpstream, TestPostgres, admin,
    write_mock_config,
};

const PROVIDER_KEY: &str = "sk-provider-e2e-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-provider-e2e-0123456789";

/// Writes the shared mock config for `mock` and `database_url` into `dir`.
fn write_config(dir: &Path, mock: &MockUpstream, database_url: &str) -> std::path::PathBuf {
    write_mock_config(dir, &mock.url(), database_url).unwrap()
}

const ENV: [(&str, &str); 2] = [
    (MOCK_OPENAI_KEY_ENV, PROVIDER_KEY),
    (MOCK_ANTHROPIC_KEY_ENV, ANTHROPIC_KEY),
];

/// Creates an account and a key with the CLI; returns (key, key id).
async fn cli_key(database_url: &str, extra: &[&str]) -> (String, String) {
    let account = admin(
        database_url,
        &[
            "--json",
            "account",
            "create",
            "--name",
            "e2e",
            "--balance",
            "100",
        ],
    )
    .await;
    assert!(account.success, "{}", account.stderr);
    let account: serde_json::Value = serde_json::from_str(&account.stdout).unwrap();
    let mut args = vec![
        "--json",
        "key",
        "create",
        "--account",
        account["id"].as_str().unwrap(),
        "--name",
        "e2e",
    ];
    args.extend_from_slice(extra);
    let key = admin(database_url, &args).await;
    assert!(key.success, "{}", key.stderr);
    let key: serde_json::Value = serde_json::from_str(&key.stdout).unwrap();
    (
        key["key"].as_str().unwrap().to_owned(),
        key["id"].as_str().unwrap().to_owned(),
    )
}

async fn post_chat(base: &str, key: &str, stream: bool) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let body = serde_json::json!({"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": "PRIVATE-PROMPT-MARKER hello"}]});
    let request = http::Request::post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A key made by the CLI in another process works at once, and its revocation by
/// the CLI reaches the running gateway within one second.
async fn cli_revocation_reaches_the_gateway(database_url: &str) {
    let mock = MockUpstream::start().await;
    mock.require_key(PROVIDER_KEY);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mock, database_url);
    let gateway = GatewayProcess::start(&config, &ENV).await;
    let (key, id) = cli_key(database_url, &[]).await;
    let (status, body) = post_chat(&gateway.base_url, &key, false).await;
    assert_eq!(status, 200, "{body}\n{}", gateway.log());

    let revoked = admin(database_url, &["key", "revoke", &id]).await;
    assert!(revoked.success, "{}", revoked.stderr);
    let since = Instant::now();
    loop {
        let (status, body) = post_chat(&gateway.base_url, &key, false).await;
        if status == 401 {
            assert!(body.contains("api_key_revoked"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "revocation not seen within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("revocation took effect after {:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revocation_reaches_the_gateway_within_a_second_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    cli_revocation_reaches_the_gateway(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_revocation_reaches_the_gateway_within_a_second_postgres() {
    let Some(db) = TestPostgres::create("gateway_cli_revocation").await else {
        return;
    };
    cli_revocation_reaches_the_gateway(db.url()).await;
}

/// SIGTERM: the gateway stops accepting, lets the running stream finish, exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_stream_finish() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let config = write_config(dir.path(), &mock, &url);
    let mut gateway = GatewayProcess::start(&config, &ENV).await;
    let (key, _) = cli_key(&url, &[]).await;
    let base = gateway.base_url.clone();
    let stream = tokio::spawn(async move { post_chat(&base, &key, true).await });
    // Wait until the upstream is streaming, then ask the gateway to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gateway.terminate();
    let (status, body) = stream.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("lazy") && body.trim_end().ends_with("data: [DONE]"),
        "{body}"
    );
    let exit = gateway
        .wait(Duration::from_secs(15))
        .await
        .expect("gateway did not exit");
    assert!(exit.success(), "exit {exit}\n{}", gateway.log());
    let log = gateway.log();
    assert!(log.contains("shut down cleanly"), "{log}");
    assert_eq!(mock.completed_streams(), 1);
}

/// The log has one metadata line per request and never a key, a provider key, a
/// body or a query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_carries_metadata_only() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let config = write_config(dir.path(), &mock, &url);
    let gateway = GatewayProcess::start(&config, &ENV).await;
    let (key, id) = cli_key(&url, &[]).await;
    assert_eq!(post_chat(&gateway.base_url, &key, false).await.0, 200);
    assert_eq!(post_chat(&gateway.base_url, &key, true).await.0, 200);
    assert_eq!(
        post_chat(&gateway.base_url, "kg_sk_not-a-key", false)
            .await
            .0,
        401
    );
    use http_body_util::BodyExt as _;
    let query = http::Request::post(format!(
        "{}/v1/chat/completions?secret-param=QUERY-MARKER&api-key={key}",
        gateway.base_url
    ))
    .body(http_body_util::Full::new(bytes::Bytes::from(
        r#"{"model":"gpt-4o-mini","messages":[]}"#,
    )))
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(query).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let log = gateway.log();
    for secret in [
        key.as_str(),
        PROVIDER_KEY,
        ANTHROPIC_KEY,
        "PRIVATE-PROMPT-MARKER",
        "QUERY-MARKER",
        "quick brown fox",
        "not-a-key",
    ] {
        assert!(!log.contains(secret), "log contains {secret:?}:\n{log}");
    }
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keygate::request"))
        .collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines.iter().filter(|l| l.contains(&id)).count() == 3,
        "{log}"
    );
    for line in &lines {
        assert!(line.contains(r#"route="/v1/chat/completions""#), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("status=401") && l.contains("invalid_api_key")),
        "{log}"
    );
    // Responses sent in full are logged as complete, streamed or not.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(r#"outcome="complete""#))
            .count(),
        3,
        "{log}"
    );
}

/// Runs `keygate --config PATH` to its end.
async fn run_keygate(path: &Path) -> std::process::Output {
    tokio::process::Command::new(keygate_test_utils::workspace_binary("keygate"))
        .arg("--config")
        .arg(path)
        .output()
        .await
        .unwrap()
}

/// A config mistake stops the gateway at start with one line naming the file, the
/// field and the fix.
#[tokio::test]
async fn config_errors_stop_the_start_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"x\"\nbase_url = \"ftp://nowhere\"\nkind = \"openai\"\nmodels = [\"m*\"]\n").unwrap();
    let output = run_keygate(&path).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("bad.toml")
            && last.contains("upstreams[0].base_url")
            && last.contains("https://"),
        "{stderr}"
    );

    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nlisten_port = 8080\n").unwrap();
    let output = run_keygate(&path).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.toml (line 2)") && stderr.contains("listen_port"),
        "{stderr}"
    );
}

/// The official `openai` and `anthropic` Python packages against the gateway.
/// `.ci/run` installs them in a virtualenv and sets `KEYGATE_TEST_PYTHON`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdks_end_to_end() {
    let Ok(python) = std::env::var("KEYGATE_TEST_PYTHON") else {
        eprintln!(
            "SKIPPED (Python SDKs): KEYGATE_TEST_PYTHON is not set; point it at a python with tests/sdk/requirements.txt installed (.ci/run does)"
        );
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let config = write_config(dir.path(), &mock, &url);
    let gateway = GatewayProcess::start(&config, &ENV).await;
    let (key, _) = cli_key(&url, &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/e2e.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .env("KEYGATE_E2E_BASE", &gateway.base_url)
        .env("KEYGATE_E2E_KEY", &key)
        .env("KEYGATE_E2E_CHAT_MODEL", "gpt-4o-mini")
        .env("KEYGATE_E2E_EMBED_MODEL", "text-embedding-3-small")
        .env("KEYGATE_E2E_CLAUDE_MODEL", "claude-haiku-4-5")
        .env(
            "KEYGATE_E2E_REPLY",
            "The quick brown fox jumps over the lazy dog.",
        )
        .env("KEYGATE_E2E_ERRORS", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gateway.log()
    );
    // Every request reached its upstream with that upstream's key, never the client's.
    let (messages, openai): (Vec<_>, Vec<_>) = mock
        .requests()
        .into_iter()
        .partition(|r| r.path == "/v1/messages");
    assert!(openai.len() >= 4, "{openai:?}");
    let bearer = format!("Bearer {PROVIDER_KEY}");
    assert!(openai.iter().all(|r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| *v == *bearer)
    }));
    assert!(mock.requests().iter().all(|r| {
        r.headers
            .values()
            .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(&key))
    }));
    assert!(messages.len() >= 2);
    assert!(messages.iter().all(|r| {
        r.headers
            .get("x-api-key")
            .is_some_and(|v| v == ANTHROPIC_KEY)
    }));
    assert!(
        messages
            .iter()
            .all(|r| !r.headers.contains_key("authorization"))
    );
}

/// `--check` builds what the start builds (upstreams, patterns, CA and TLS files)
/// without opening the database or the port.
#[tokio::test]
async fn check_validates_upstreams_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check.toml");
    let run = |path: std::path::PathBuf| async move {
        tokio::process::Command::new(keygate_test_utils::workspace_binary("keygate"))
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()
            .await
            .unwrap()
    };
    std::fs::write(&path, "database_url = \"sqlite:///nonexistent/dir/kg.db\"\n[[upstreams]]\nname = \"x\"\nbase_url = \"https://x.example/v1\"\nkind = \"openai\"\nmodels = [\"g*pt\"]\n").unwrap();
    let output = run(path.clone()).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("upstreams[0].models") && stderr.contains("g*pt"),
        "{stderr}"
    );

    std::fs::write(&path, "database_url = \"sqlite:///nonexistent/dir/kg.db\"\n[[upstreams]]\nname = \"x\"\nbase_url = \"https://x.example/v1\"\nkind = \"openai\"\nmodels = [\"gpt-4o*\"]\n").unwrap();
    let output = run(path.clone()).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!dir.path().join("kg.db").exists());

    // What only building the gateway used to catch, and the billing sections.
    let upstream = "[[upstreams]]\nname = \"x\"\nbase_url = \"https://x.example/v1\"\nkind = \"openai\"\nmodels = [\"gpt-4o*\"]\n";
    for (text, expected) in [
        (format!("{upstream}{upstream}"), "upstreams[1].name"),
        (
            upstream.replace("models", "ca_file = \"missing-ca.pem\"\nmodels"),
            "upstreams[0].ca_file",
        ),
        (
            format!(
                "{upstream}[prices.\"gpt-4o\"]\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0\n"
            ),
            "prices.\"gpt-4o\"",
        ),
        (
            format!("{upstream}[billing]\nbatch_window = \"2m\"\n"),
            "billing.batch_window",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let output = run(path.clone()).await;
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("check.toml") && stderr.contains(expected),
            "{expected}: {stderr}"
        );
    }
}
