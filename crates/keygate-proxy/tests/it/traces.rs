//! Traces: a real gateway exporting over OTLP/HTTP to the test collector from
//! keygate-test-utils. JSON and streamed chats get one SERVER span each with the
//! GenAI attributes and the right token counts (from billing, or from the span's
//! own reader when billing is off); a stream's span ends only after the stream;
//! a refused key, a failover, a client's `traceparent` (and an invalid one) and
//! sampling; nothing of the request's content reaches the export; with tracing
//! off the upstream gets the client's `traceparent` unchanged.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use keygate_billing::{Price, PriceTable};
use keygate_proxy::{ProviderKey, ProviderKind, Tracing, TracingConfig, UpstreamConfig};
use keygate_test_utils::opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use keygate_test_utils::{CollectedSpan, MockUpstream, OtlpCollector, fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::harness::{
    GatewayBuilder, PROMPT, PROVIDER_KEY, TestGateway, chat, client, json_request, post, request,
    send,
};

/// How long a test waits for what it expects to arrive.
const WAIT: Duration = Duration::from_secs(30);
/// What the mock answers: three output tokens.
const REPLY: &str = "one two three";
/// A client's trace.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn prices() -> PriceTable {
    PriceTable::from_iter([("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap())])
}

/// Tracing to `collector`, every request sampled (or `ratio` of new traces).
fn tracing_to(collector: &OtlpCollector, ratio: f64) -> Arc<Tracing> {
    let mut config = TracingConfig::new(collector.endpoint());
    config.service_name = "keygate-test".into();
    config.sample_ratio = ratio;
    Arc::new(Tracing::otlp(&config).unwrap())
}

/// A gateway on `mock` tracing through `tracing`, billed when `billed`.
fn traced(mock: &MockUpstream, tracing: &Arc<Tracing>, billed: bool) -> GatewayBuilder {
    let builder = TestGateway::builder(mock).tracing(Arc::clone(tracing));
    if billed {
        builder.billed(prices())
    } else {
        builder
    }
}

/// Flushes `tracing` and returns every span the collector has.
async fn exported(tracing: &Tracing, collector: &OtlpCollector) -> Vec<CollectedSpan> {
    tracing.flush(WAIT).await;
    collector.spans()
}

/// Flushes and waits for exactly one span, which it returns.
async fn one_span(tracing: &Tracing, collector: &OtlpCollector) -> CollectedSpan {
    tracing.flush(WAIT).await;
    let mut spans = collector.wait_for_spans(1, WAIT).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    spans.remove(0)
}

fn assert_chat_span(span: &CollectedSpan, key_id: &str, tokens: Option<(i64, i64)>) {
    assert_eq!(span.span.name, "chat gpt-4o");
    assert_eq!(span.span.kind, SpanKind::Server as i32);
    assert_eq!(span.service_name.as_deref(), Some("keygate-test"));
    assert_eq!(span.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(span.str_attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(span.str_attr("gen_ai.request.model"), Some("gpt-4o"));
    assert_eq!(
        span.int_attr("gen_ai.usage.input_tokens")
            .zip(span.int_attr("gen_ai.usage.output_tokens")),
        tokens,
        "{span:#?}"
    );
    assert_eq!(span.str_attr("keygate.key_id"), Some(key_id));
    assert_eq!(span.str_attr("keygate.upstream"), Some("mock-openai"));
    assert_eq!(span.int_attr("keygate.attempts"), Some(1));
    assert_eq!(span.int_attr("http.response.status_code"), Some(200));
    assert_eq!(span.str_attr("http.request.method"), Some("POST"));
    assert_eq!(span.str_attr("http.route"), Some("/v1/chat/completions"));
    assert_eq!(span.str_attr("error.type"), None);
    assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
}

/// `key` with its last character changed: well-formed, but not a key.
fn wrong_key(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

/// A private key on the gateway's account, and its id.
async fn key_and_id(gw: &TestGateway) -> (String, String) {
    let (secret, key) = fixture::private_key(&*gw.store, &gw.account).await;
    (secret.expose().to_owned(), key.id.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_streamed_chats_get_spans_with_genai_attributes_and_billed_tokens() {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&mock, &tracing, true).start().await;
    let (key, id) = key_and_id(&gw).await;
    let url = gw.url("/v1/chat/completions");

    let reply = post(&url, &key, &chat("gpt-4o", false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let streamed = post(&url, &key, &chat("gpt-4o", true)).await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text());
    assert!(streamed.text().contains("[DONE]"));

    tracing.flush(WAIT).await;
    let spans = collector.wait_for_spans(2, WAIT).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let records = gw.records(2).await;
    for (span, record) in spans.iter().zip(&records) {
        let billed = (record.input_tokens as i64, record.output_tokens as i64);
        assert_eq!(billed, (5, 3), "the mock counts words");
        assert_chat_span(span, &id, Some(billed));
    }
    // Two requests, two traces, each span a root.
    assert_ne!(spans[0].trace_id(), spans[1].trace_id());
    assert!(spans.iter().all(|s| s.parent_span_id().is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_billing_the_span_reads_the_usage_itself() {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&mock, &tracing, false).start().await;
    let (key, id) = key_and_id(&gw).await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let span = one_span(&tracing, &collector).await;
    assert_chat_span(&span, &id, Some((5, 3)));
}

/// An upstream that answers one chat stream: a content event, then waits for
/// `release` before the usage event and `[DONE]`.
async fn held_stream(release: oneshot::Receiver<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        // The head, then the body by its length.
        let mut seen = Vec::new();
        let mut buf = [0_u8; 4096];
        let body_len = loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before its request");
            seen.extend_from_slice(&buf[..n]);
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                break end + 4 + len;
            }
        };
        while seen.len() < body_len {
            let n = socket.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
        let first = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        socket
            .write_all(format!("{head}{}", chunk(first)).as_bytes())
            .await
            .unwrap();
        let _ = release.await;
        let usage = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\ndata: [DONE]\n\n";
        socket
            .write_all(format!("{}0\r\n\r\n", chunk(usage)).as_bytes())
            .await
            .unwrap();
        let _ = socket.read(&mut buf).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_request_s_span_ends_only_after_the_stream() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let (release, held) = oneshot::channel();
    let upstream = held_stream(held).await;
    let gw = traced(&mock, &tracing, false)
        .config(move |config| {
            config.upstreams = vec![UpstreamConfig {
                provider_keys: vec![ProviderKey::new(PROVIDER_KEY.into())],
                ..UpstreamConfig::new(
                    "mock-openai",
                    &upstream,
                    ProviderKind::OpenAi,
                    vec!["gpt-4o*".into()],
                )
            }];
        })
        .start()
        .await;
    let (key, id) = key_and_id(&gw).await;
    let mut body = chat("gpt-4o", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let response = client()
        .request(json_request(&gw.url("/v1/chat/completions"), &key, &body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("hi"));

    // Held open: everything ended so far is exported, and the stream's span is
    // not among it.
    assert!(exported(&tracing, &collector).await.is_empty());

    let released_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    release.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    let span = one_span(&tracing, &collector).await;
    assert_chat_span(&span, &id, Some((7, 2)));
    assert!(
        u128::from(span.span.end_time_unix_nano) > released_at.as_nanos(),
        "the span ended before the stream did"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_gets_a_401_span_with_its_error_type() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&mock, &tracing, true).start().await;
    let key = gw.key().await;
    let wrong = wrong_key(&key);
    let reply = post(
        &gw.url("/v1/chat/completions"),
        &wrong,
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let span = one_span(&tracing, &collector).await;
    assert_eq!(span.int_attr("http.response.status_code"), Some(401));
    assert_eq!(span.str_attr("error.type"), Some(reply.code().as_str()));
    assert_eq!(span.str_attr("http.route"), Some("/v1/chat/completions"));
    assert_eq!(span.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(span.str_attr("keygate.key_id"), None);
    assert_eq!(span.int_attr("keygate.attempts"), Some(0));
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failover_span_counts_two_attempts_and_names_the_backup() {
    let backup = MockUpstream::start().await;
    backup.set_reply(REPLY);
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/v1")
    };
    let openai = |name: &str, url: &str, priority| UpstreamConfig {
        provider_keys: vec![ProviderKey::new(PROVIDER_KEY.into())],
        priority,
        ..UpstreamConfig::new(name, url, ProviderKind::OpenAi, vec!["gpt-4o*".into()])
    };
    let upstreams = vec![
        openai("primary", &refused, 0),
        openai("backup", &format!("{}/v1", backup.url()), 1),
    ];
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&backup, &tracing, true)
        .config(move |config| config.upstreams = upstreams)
        .start()
        .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let span = one_span(&tracing, &collector).await;
    assert_eq!(span.int_attr("keygate.attempts"), Some(2));
    assert_eq!(span.str_attr("keygate.upstream"), Some("backup"));
    assert_eq!(span.int_attr("gen_ai.usage.output_tokens"), Some(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_s_traceparent_is_the_parent_and_the_upstream_gets_keygate_s_span() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    // No new trace sampled: the client's sampled parent decides.
    let tracing = tracing_to(&collector, 0.0);
    let gw = traced(&mock, &tracing, true).start().await;
    let key = gw.key().await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let auth = format!("Bearer {key}");
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
        ],
        chat("gpt-4o", false).to_string(),
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let span = one_span(&tracing, &collector).await;
    assert_eq!(span.trace_id(), CLIENT_TRACE);
    assert_eq!(span.parent_span_id(), CLIENT_SPAN);
    assert_ne!(span.span_id(), CLIENT_SPAN);
    assert_eq!(span.span.trace_state, "vendor=abc");

    let forwarded = &mock.requests()[0].headers;
    let sent: Vec<_> = forwarded.get_all("traceparent").iter().collect();
    assert_eq!(sent.len(), 1, "one traceparent upstream");
    assert_eq!(
        sent[0].to_str().unwrap(),
        format!("00-{CLIENT_TRACE}-{}-01", span.span_id())
    );
    assert_eq!(forwarded["tracestate"], "vendor=abc");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_traceparent_is_ignored_and_sampling_applies_to_new_traces() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 0.0);
    let gw = traced(&mock, &tracing, false).start().await;
    let key = gw.key().await;
    let auth = format!("Bearer {key}");
    let send_with = |traceparent: &'static str| {
        let auth = auth.clone();
        let url = gw.url("/v1/chat/completions");
        async move {
            send(request(
                Method::POST,
                &url,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("traceparent", traceparent),
                ],
                chat("gpt-4o", false).to_string(),
            ))
            .await
        }
    };
    // Not a traceparent: no error, a new trace, not sampled at ratio 0.
    let reply = send_with("00-not-a-trace-01").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A parent that was not sampled: not sampled here either.
    let unsampled = send_with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").await;
    assert_eq!(unsampled.status, StatusCode::OK);
    assert!(exported(&tracing, &collector).await.is_empty());
    let requests = mock.requests();
    // The upstream still gets keygate's own (valid, unsampled) traceparent.
    let first = requests[0].headers["traceparent"].to_str().unwrap();
    assert!(
        first.starts_with("00-") && first.ends_with("-00"),
        "{first}"
    );
    assert!(!first.contains("not-a-trace"));
    let second = requests[1].headers["traceparent"].to_str().unwrap();
    assert!(
        second.starts_with(&format!("00-{CLIENT_TRACE}-")),
        "{second}"
    );
    assert!(!second.contains(CLIENT_SPAN), "{second}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_content_key_query_or_header_value_is_exported() {
    let canary = "canary-7f3a9c2e51";
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&mock, &tracing, true).start().await;
    let (key, id) = key_and_id(&gw).await;
    let auth = format!("Bearer {key}");
    let body = serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": format!("{PROMPT} {canary}")}],
        "user": canary,
    });
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("x-custom-canary", canary),
        ("user-agent", canary),
        ("x-forwarded-for", "203.0.113.77"),
    ];
    let url = gw.url(&format!("/v1/chat/completions?trace_canary={canary}"));
    let reply = send(request(Method::POST, &url, &headers, body.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // A refused key's text must not leak either.
    let wrong = wrong_key(&key);
    let wrong_auth = format!("Bearer {wrong}");
    let refused = send(request(
        Method::POST,
        &url,
        &[("authorization", &wrong_auth), ("x-custom-canary", canary)],
        body.to_string(),
    ))
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    tracing.flush(WAIT).await;
    let spans = collector.wait_for_spans(2, WAIT).await;
    assert_eq!(spans.len(), 2);
    let raw = collector.raw();
    let secret_tail = key.rsplit('_').next().unwrap();
    let wrong_tail = wrong.rsplit('_').next().unwrap();
    for needle in [
        canary,
        key.as_str(),
        secret_tail,
        wrong.as_str(),
        wrong_tail,
        PROMPT,
        "203.0.113.77",
        "127.0.0.1",
        REPLY,
        PROVIDER_KEY,
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle:?} is in the export"
        );
    }
    // What is there: the key id, the route.
    let shown = String::from_utf8_lossy(&raw);
    assert!(shown.contains(&id) && shown.contains("/v1/chat/completions"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tracing_off_passes_the_client_s_traceparent_unchanged() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let auth = format!("Bearer {key}");
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("traceparent", &traceparent),
            ("tracestate", "vendor=abc"),
        ],
        chat("gpt-4o", false).to_string(),
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let forwarded = &mock.requests()[0].headers;
    assert_eq!(forwarded["traceparent"], traceparent.as_str());
    assert_eq!(forwarded["tracestate"], "vendor=abc");
    assert!(collector.exports().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_exports_the_last_spans() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&mock, &tracing, false).start().await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK);
    // No flush: the gateway's own shutdown sends what is queued.
    gw.shutdown().await;
    let spans = collector.wait_for_spans(1, WAIT).await;
    assert_eq!(spans[0].span.name, "chat gpt-4o");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_keygate_makes_itself_ends_its_span_as_served() {
    let mock = MockUpstream::start().await;
    let collector = OtlpCollector::start().await;
    let tracing = tracing_to(&collector, 1.0);
    let gw = traced(&mock, &tracing, false).start().await;
    let (key, id) = key_and_id(&gw).await;
    let auth = format!("Bearer {key}");
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let span = one_span(&tracing, &collector).await;
    assert_eq!(span.span.name, "GET /v1/models");
    assert_eq!(span.int_attr("http.response.status_code"), Some(200));
    assert_eq!(span.str_attr("error.type"), None);
    assert_eq!(span.str_attr("gen_ai.operation.name"), None);
    assert_eq!(span.str_attr("keygate.key_id"), Some(id.as_str()));
    assert!(mock.requests().is_empty());
}
