//! `[metrics] listen`: `/metrics` on a port of its own and not on the
//! gateway's, from the real binary; the exposition checked by the Prometheus
//! project's own parsers (Python `prometheus_client`: the strict OpenMetrics
//! parser and the classic text parser) when `KEYGATE_TEST_PYTHON` is set.

use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use keygate_test_utils::{GatewayProcess, MockUpstream};

use crate::{ENV, cli_key, post_chat, write_config};

/// The parsers' view: each sample name with its labels and value, as JSON.
const PARSE: &str = r##"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
samples = {}
for family in openmetrics(text):
    for s in family.samples:
        key = s.name + json.dumps(dict(sorted(s.labels.items())))
        samples[key] = s.value
# The classic parser reads the same text (what a Prometheus 2 scrape without
# OpenMetrics would get) to the same sample values.
for family in classic(text.replace("# EOF\n", "")):
    for s in family.samples:
        key = s.name + json.dumps(dict(sorted(s.labels.items())))
        if key in samples and samples[key] != s.value:
            sys.exit(f"{key}: {samples[key]} vs {s.value}")
print(json.dumps(samples))
"##;

async fn get(url: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client
        .request(
            http::Request::get(url)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The metrics listener's address, from the start-up line.
async fn metrics_url(gateway: &GatewayProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gateway.log();
        if let Some(url) = log
            .lines()
            .find_map(|l| l.split_once("metrics on ").map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
        {
            return url.trim_matches('"').to_owned();
        }
        assert!(Instant::now() < deadline, "no metrics line:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_its_own_port_only() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let config = write_config(dir.path(), &mock, &url);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::start(&config, &ENV).await;
    let metrics = metrics_url(&gateway).await;
    let (key, key_id) = cli_key(&url, &[]).await;
    assert_eq!(post_chat(&gateway.base_url, &key, false).await.0, 200);
    assert_eq!(post_chat(&gateway.base_url, &key, true).await.0, 200);
    assert_eq!(
        post_chat(&gateway.base_url, "kg_sk_not-a-key", false)
            .await
            .0,
        401
    );

    let (status, body) = get(&format!("{}/metrics", gateway.base_url)).await;
    assert_eq!(status, 404, "not on the gateway's port: {body}");
    assert!(body.contains("unknown_route"), "{body}");
    let (status, _) = get(&metrics.replace("/metrics", "/other")).await;
    assert_eq!(status, 404);
    // The stream's body may still be ending when the client has read it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let exposition = loop {
        let (status, exposition) = get(&metrics).await;
        assert_eq!(status, 200);
        if exposition.contains("keygate_in_flight_requests 0") || Instant::now() > deadline {
            break exposition;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let chat = r#"keygate_requests_total{route="/v1/chat/completions",status="200",upstream="mock-openai"} 2"#;
    assert!(exposition.contains(chat), "{exposition}");
    assert!(!exposition.contains(&key_id) && !exposition.contains(&key));

    let Ok(python) = std::env::var("KEYGATE_TEST_PYTHON") else {
        eprintln!(
            "SKIPPED (Python prometheus_client parsers): KEYGATE_TEST_PYTHON is not set; point it at a python with tests/sdk/requirements.txt installed (.ci/run does)"
        );
        return;
    };
    let mut child = tokio::process::Command::new(&python)
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(exposition.as_bytes()).await.unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parsers refused the exposition: {}\n{exposition}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sample = |name: &str, labels: &str| samples[format!("{name}{labels}")].as_f64();
    let chat_labels =
        r#"{"route": "/v1/chat/completions", "status": "200", "upstream": "mock-openai"}"#;
    assert_eq!(sample("keygate_requests_total", chat_labels), Some(2.0));
    let refused = r#"{"route": "/v1/chat/completions", "status": "401", "upstream": "none"}"#;
    assert_eq!(sample("keygate_requests_total", refused), Some(1.0));
    assert_eq!(
        sample(
            "keygate_request_duration_seconds_count",
            r#"{"route": "/v1/chat/completions"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            "keygate_auth_failures_total",
            r#"{"reason": "invalid_api_key"}"#
        ),
        Some(1.0)
    );
    let input = sample(
        "keygate_tokens_total",
        r#"{"direction": "input", "model": "gpt-4o-mini"}"#,
    );
    assert!(input.is_some_and(|n| n > 0.0), "{samples}");
}
