//! Traces from the real binary: `keygate` with `[tracing] otlp_endpoint` at the
//! test collector logs once where traces go, serves a chat, and its shutdown
//! (SIGTERM) exports the request's span before the process exits.

use std::time::Duration;

use keygate_test_utils::{GatewayProcess, MockUpstream, OtlpCollector, write_mock_config};

use crate::{ENV, cli_key, post_chat};

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exports_a_request_span_and_flushes_it_at_shutdown() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let path = write_mock_config(dir.path(), &mock.url(), &database_url).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}\n[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"keygate-e2e\"\n\
             headers = {{ authorization = \"Bearer otlp-secret-e2e\" }}\n",
            collector.endpoint()
        ),
    )
    .unwrap();
    let mut gateway = GatewayProcess::start(&path, &ENV).await;
    let log = gateway.log();
    assert!(log.contains("traces exported over OTLP/HTTP"), "{log}");
    assert!(log.contains(&collector.endpoint()), "{log}");

    let (key, id) = cli_key(&database_url, &[]).await;
    let (status, body) = post_chat(&gateway.base_url, &key, true).await;
    assert_eq!(status, 200, "{body}\n{}", gateway.log());
    // The batch interval (5 s) has not run out: the span goes out at shutdown.
    gateway.terminate();
    let exited = gateway.wait(Duration::from_secs(30)).await;
    assert!(exited.is_some_and(|s| s.success()), "{}", gateway.log());

    let spans = collector.wait_for_spans(1, Duration::from_secs(10)).await;
    let span = &spans[0];
    assert_eq!(span.span.name, "chat gpt-4o-mini");
    assert_eq!(span.service_name.as_deref(), Some("keygate-e2e"));
    assert_eq!(span.str_attr("keygate.key_id"), Some(id.as_str()));
    assert_eq!(span.int_attr("http.response.status_code"), Some(200));
    assert!(span.int_attr("gen_ai.usage.output_tokens").is_some());
    let export = &collector.exports()[0];
    assert_eq!(export.headers["authorization"], "Bearer otlp-secret-e2e");
    assert_eq!(
        export.headers["content-type"], "application/x-protobuf",
        "OTLP/HTTP protobuf"
    );
    let log = gateway.log();
    assert!(log.contains("traces flushed"), "{log}");
    assert!(
        !log.contains("otlp-secret-e2e"),
        "the header value is logged"
    );
    assert!(!log.contains("PRIVATE-PROMPT-MARKER"));
}
