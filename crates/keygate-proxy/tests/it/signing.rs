//! Requests signed for the operator's own services: the mock records what the
//! gateway sent, and the headers verify over those exact bytes with
//! `keygate-keys`' verifiers and with the reference Python receivers
//! (`standardwebhooks`, and seed 004's bcrypt snippet), and fail when the body,
//! the timestamp or the secret change.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use http::header::HeaderValue;
use keygate_keys::{
    REQUEST_NONCE, SignatureError, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP,
    verify_request_nonce, verify_standard_webhook, verify_standard_webhook_at,
};
use keygate_proxy::{HookSecret, ProviderKind, SigningConfig, UpstreamConfig};
use keygate_test_utils::MockUpstream;

use crate::harness::{TestGateway, chat, post, request, send};

const HOOK_KEY: &str = "hook-key-for-the-operator's-worker";
const TOLERANCE: Duration = Duration::from_secs(300);

fn worker(mock: &MockUpstream) -> UpstreamConfig {
    UpstreamConfig {
        signing: Some(SigningConfig {
            secret: HookSecret::new(HOOK_KEY.into()),
            standard_webhooks: true,
            request_nonce: true,
        }),
        ..UpstreamConfig::new(
            "worker",
            &format!("{}/v1", mock.url()),
            ProviderKind::OpenAi,
            vec!["worker-*".into()],
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_requests_verify_over_the_exact_bytes_sent() {
    let mock = MockUpstream::start().await;
    let price = keygate_billing::Price::from_credits(1.0, 1.0, None).unwrap();
    let gw = TestGateway::builder(&mock)
        .billed(keygate_billing::PriceTable::from_iter([(
            "worker-1", price,
        )]))
        .config(|config| config.upstreams = vec![worker(&mock)])
        .start()
        .await;
    let key = gw.key().await;
    // A billed stream, so the body is rewritten (include_usage) before it is
    // signed.
    let reply = post(
        &gw.url("/v1/chat/completions"),
        &key,
        &chat("worker-1", true),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let sent = mock.requests().remove(0);
    assert!(String::from_utf8_lossy(&sent.body).contains("include_usage"));
    let secret = HOOK_KEY.as_bytes();
    assert_eq!(
        verify_standard_webhook(secret, &sent.headers, &sent.body, TOLERANCE),
        Ok(())
    );
    let nonce = sent.headers[&REQUEST_NONCE].to_str().unwrap();
    assert_eq!(verify_request_nonce(secret, nonce), Ok(()));
    assert_eq!(
        verify_request_nonce(b"another hook key", nonce),
        Err(SignatureError::Mismatch)
    );

    // Body, secret and timestamp changed: refused.
    let mut body = sent.body.to_vec();
    body.push(b' ');
    assert_eq!(
        verify_standard_webhook(secret, &sent.headers, &body, TOLERANCE),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_standard_webhook(b"another hook key", &sent.headers, &sent.body, TOLERANCE),
        Err(SignatureError::Mismatch)
    );
    let ts: i64 = sent.headers[&WEBHOOK_TIMESTAMP]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut moved = sent.headers.clone();
    moved.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts - 1));
    assert_eq!(
        verify_standard_webhook(secret, &moved, &sent.body, TOLERANCE),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_standard_webhook_at(secret, &sent.headers, &sent.body, TOLERANCE, ts + 301),
        Err(SignatureError::Stale)
    );

    python_verifies(&sent.headers, &sent.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_send_signature_headers_of_its_own() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let auth = format!("Bearer {key}");
    let body = chat("gpt-4o", false).to_string();
    let reply = send(request(
        http::Method::POST,
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("webhook-id", "msg_forged"),
            ("webhook-timestamp", "1"),
            ("webhook-signature", "v1,AAAA"),
            ("x-request-nonce", "$2b$10$forged"),
        ],
        body,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let sent = mock.requests().remove(0);
    for name in [
        WEBHOOK_ID,
        WEBHOOK_TIMESTAMP,
        WEBHOOK_SIGNATURE,
        REQUEST_NONCE,
    ] {
        assert!(!sent.headers.contains_key(&name), "{name} was forwarded");
    }
}

/// Runs `tests/sdk/verify_signature.py` with the Python at
/// `KEYGATE_TEST_PYTHON` (`.ci/run` installs `standardwebhooks` and `bcrypt`
/// there); says so loudly when it is not set.
#[allow(clippy::print_stderr, reason = "a skip must be loud")]
fn python_verifies(headers: &http::HeaderMap, body: &[u8]) {
    let Ok(python) = std::env::var("KEYGATE_TEST_PYTHON") else {
        eprintln!(
            "SKIPPED (Python signature receivers): KEYGATE_TEST_PYTHON is not set; point it at a python with tests/sdk/requirements.txt installed (.ci/run does)"
        );
        return;
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/sdk/verify_signature.py"
    );
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.into())))
        .collect();
    let input = serde_json::json!({
        "secret": HOOK_KEY,
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "python: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
