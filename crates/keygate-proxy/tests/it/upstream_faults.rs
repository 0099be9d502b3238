//! The fault suite: a billed gateway in front of a mock upstream that
//! misbehaves in each of the ways of [`Fault`] (and hangs, and reports usage of
//! the wrong type or sign). For each fault the client gets the right status or
//! a stream that ends (cleanly, or broken off where the upstream broke off,
//! never hanging), nothing stays reserved, one usage record says what happened
//! (status and usage source), and the next request is served.
//!
//! A panic on the request path would show here as a connection that dies
//! before its answer and a record of 499 (the charge's drop guard): every test
//! checks the status the client read and the record's status, and that the
//! gateway drains at shutdown.

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Version};
use http_body_util::BodyExt;
use keygate_billing::{Price, PriceTable};
use keygate_proxy::Shutdown;
use keygate_store::{Micros, UsageRecord, UsageSource};
use keygate_test_utils::{Fault, MockUpstream, TestCerts};
use serde_json::json;

use crate::harness::*;

/// The longest any exchange here may take; a fault that makes one hang fails
/// the test instead.
const DEADLINE: Duration = Duration::from_secs(30);

/// The balance of the harness gateway's account.
const FUNDS: Micros = Micros(1_000_000_000);

fn prices() -> PriceTable {
    PriceTable::from_iter([("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap())])
}

/// A billed gateway on a memory store behind a [`FaultyStore`], each request
/// with its own reservation (no lease), so it is back to 0 when the request
/// ends.
async fn gateway(mock: &MockUpstream) -> TestGateway {
    gateway_with(mock, |_| {}).await
}

async fn gateway_with(
    mock: &MockUpstream,
    tweak: impl FnOnce(&mut keygate_proxy::ProxyConfig),
) -> TestGateway {
    TestGateway::builder(mock)
        .billed(prices())
        .billing(|b| b.batch_window = Duration::ZERO)
        .faulty()
        .config(tweak)
        .start()
        .await
}

/// How a response body ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The last frame and a clean end.
    Clean,
    /// The body broke off with an error (the connection or stream was reset).
    Broken,
}

/// What the client got.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    body: Bytes,
    ended: Ended,
}

impl Got {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn code(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        json["error"]["code"].as_str().unwrap().to_owned()
    }
}

/// Sends a gpt-4o chat completion (streamed or not) and reads the whole
/// answer, within [`DEADLINE`].
async fn send_chat(gw: &TestGateway, key: &str, stream: bool) -> Got {
    let request = json_request(
        &gw.url("/v1/chat/completions"),
        key,
        &chat("gpt-4o", stream),
    );
    tokio::time::timeout(DEADLINE, async {
        let response = match client().request(request).await {
            Ok(response) => response,
            Err(e) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                panic!("no answer: {e:?}; records: {:?}", gw.records(0).await);
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        let ended = loop {
            match body.frame().await {
                None => break Ended::Clean,
                Some(Err(_)) => break Ended::Broken,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
            }
        };
        Got {
            status,
            body: Bytes::from(bytes),
            ended,
        }
    })
    .await
    .expect("the exchange hung")
}

/// After a fault: nothing is reserved, the `n`th usage record has `status`
/// and `source` and charged at most what the account paid, and with the fault
/// cleared the next request is served and billed as reported. Returns the
/// record.
async fn recovers(
    gw: &TestGateway,
    mock: &MockUpstream,
    key: &str,
    n: usize,
    status: u16,
    source: UsageSource,
) -> UsageRecord {
    let balance = gw.settled(&gw.account).await;
    let record = gw.records(n).await.remove(n - 1);
    assert_eq!(record.status, status, "{record:?}");
    assert_eq!(record.usage_source, source, "{record:?}");
    assert!(balance >= Micros::ZERO);
    assert!(record.cost.0 <= FUNDS.0 - balance.0, "{record:?}");
    mock.clear_failure();
    mock.clear_usage();
    let got = send_chat(gw, key, false).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let next = gw.records(n + 1).await.remove(n);
    assert_eq!(
        (next.status, next.usage_source),
        (200, UsageSource::Reported)
    );
    gw.settled(&gw.account).await;
    record
}

async fn drains(gw: TestGateway) {
    assert_eq!(gw.shutdown().await, Shutdown::Drained);
}

/// An upstream that resets every new connection: 502 `upstream_unavailable`,
/// recorded as 502 with nothing charged (no usage).
#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_upstream_is_502() {
    for stream in [false, true] {
        let mock = MockUpstream::start().await;
        mock.set_fault(Fault::Refuse);
        let gw = gateway(&mock).await;
        let key = gw.key().await;
        let got = send_chat(&gw, &key, stream).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text());
        assert_eq!(got.code(), "upstream_unavailable");
        let record = recovers(&gw, &mock, &key, 1, 502, UsageSource::Unknown).await;
        assert_eq!(record.cost, Micros::ZERO);
        drains(gw).await;
    }
    // A port nobody listens on: the same.
    let closed = MockUpstream::start().await;
    let gw = gateway(&closed).await;
    let key = gw.key().await;
    closed.shutdown().await;
    let got = send_chat(&gw, &key, false).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(gw.settled(&gw.account).await, FUNDS);
    assert_eq!(gw.records(1).await[0].status, 502);
}

/// No answer before the first-byte timeout: 504 `upstream_timeout`, recorded
/// as 504, nothing charged.
#[tokio::test(flavor = "multi_thread")]
async fn no_answer_before_the_first_byte_timeout_is_504() {
    let mock = MockUpstream::start().await;
    let gw = gateway_with(&mock, |c| {
        c.timeouts.first_byte = Duration::from_millis(300)
    })
    .await;
    let key = gw.key().await;
    for (n, stream) in [(1, false), (3, true)] {
        mock.hang();
        let got = send_chat(&gw, &key, stream).await;
        assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text());
        assert_eq!(got.code(), "upstream_timeout");
        let record = recovers(&gw, &mock, &key, n, 504, UsageSource::Unknown).await;
        assert_eq!(record.cost, Micros::ZERO);
    }
    drains(gw).await;
}

/// Headers, then a reset: the client has its 200 and a body that breaks off;
/// recorded as 502 with nothing charged, as nothing was answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_after_the_headers_breaks_the_body_off_uncharged() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    for (n, stream) in [(1, false), (3, true)] {
        mock.set_fault(Fault::ResetAfterHeaders);
        let got = send_chat(&gw, &key, stream).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.ended, Ended::Broken, "{}", got.text());
        assert!(got.body.is_empty(), "{}", got.text());
        let record = recovers(&gw, &mock, &key, n, 502, UsageSource::Unknown).await;
        assert_eq!(record.cost, Micros::ZERO);
    }
    drains(gw).await;
}

/// A stream reset after three events: the client has them and a body that
/// breaks off; the record is 502, billed as estimated from what was streamed.
/// The usage store is down while it happens and the record still arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_mid_stream_is_billed_as_estimated() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    mock.set_fault(Fault::ResetMidStream { frames: 3 });
    gw.faults().set_usage_down(true);
    let got = send_chat(&gw, &key, true).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ended, Ended::Broken, "{}", got.text());
    assert_eq!(got.text().matches("data: ").count(), 3, "{}", got.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.faults().set_usage_down(false);
    let record = recovers(&gw, &mock, &key, 1, 502, UsageSource::Estimated).await;
    assert!(record.output_tokens >= 1, "{record:?}");
    assert!(record.cost > Micros::ZERO, "{record:?}");
    assert_eq!(gw.billing().metrics().records_dropped, 0);
    drains(gw).await;
}

/// The same resets over HTTP/2 (a TLS upstream that offers h2): the stream gets
/// `RST_STREAM`, the client's body breaks off, and the next request is served.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_stream_reset() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, _, _) = certs.write_to(dir.path()).unwrap();
    let mock = MockUpstream::start_tls(&certs).await;
    let gw = gateway_with(&mock, |c| {
        for upstream in &mut c.upstreams {
            upstream.ca_file = Some(ca_path.clone());
        }
    })
    .await;
    let key = gw.key().await;
    let cases = [
        (Fault::ResetAfterHeaders, false, 0, UsageSource::Unknown),
        (
            Fault::ResetMidStream { frames: 3 },
            true,
            3,
            UsageSource::Estimated,
        ),
    ];
    for (i, (fault, stream, events, source)) in cases.into_iter().enumerate() {
        mock.set_fault(fault);
        let got = send_chat(&gw, &key, stream).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.ended, Ended::Broken, "{}", got.text());
        assert_eq!(got.text().matches("data: ").count(), events);
        recovers(&gw, &mock, &key, 2 * i + 1, 502, source).await;
    }
    assert!(mock.requests().iter().all(|r| r.version == Version::HTTP_2));
    drains(gw).await;
}

/// Broken JSON in every event, and a JSON answer cut in half: the client gets
/// them as they came (200, a clean end); the stream is billed as estimated, the
/// JSON answer recorded as unknown and charged nothing.
#[tokio::test(flavor = "multi_thread")]
async fn broken_json_passes_through_and_is_estimated_or_unknown() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    mock.set_fault(Fault::BrokenJson);
    let got = send_chat(&gw, &key, true).await;
    assert_eq!((got.status, got.ended), (StatusCode::OK, Ended::Clean));
    let text = got.text();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "{}",
        &text[text.len() - 300..]
    );
    let record = recovers(&gw, &mock, &key, 1, 200, UsageSource::Estimated).await;
    assert!(record.input_tokens > 0);

    mock.set_fault(Fault::BrokenJson);
    let got = send_chat(&gw, &key, false).await;
    assert_eq!((got.status, got.ended), (StatusCode::OK, Ended::Clean));
    assert!(serde_json::from_slice::<serde_json::Value>(&got.body).is_err());
    let record = recovers(&gw, &mock, &key, 3, 200, UsageSource::Unknown).await;
    assert_eq!(record.cost, Micros::ZERO);
    drains(gw).await;
}

/// A stream without `[DONE]` (its usage chunk still sent): the client's
/// stream ends cleanly without it, and the usage is billed as reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_without_done_ends_cleanly_and_is_billed() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    mock.set_fault(Fault::NoDone);
    let got = send_chat(&gw, &key, true).await;
    assert_eq!((got.status, got.ended), (StatusCode::OK, Ended::Clean));
    assert!(!got.text().contains("[DONE]"), "{}", got.text());
    assert!(got.text().contains("data: "), "{}", got.text());
    let record = recovers(&gw, &mock, &key, 1, 200, UsageSource::Reported).await;
    assert_eq!(record.output_tokens, 9, "{record:?}");
    drains(gw).await;
}

/// Usage with the wrong types (strings, a float, an object, null) or the wrong
/// sign, in JSON and streamed answers: 200, recorded as capped (the counts are
/// not believed as sent), charged at most the reservation.
#[tokio::test(flavor = "multi_thread")]
async fn usage_of_the_wrong_type_or_sign_is_capped() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    let huge: serde_json::Value = serde_json::from_str("18446744073709551616").unwrap();
    let cases = [
        (json!("5"), json!(9)),
        (json!(5), json!(-9)),
        (json!(-1), json!(-1)),
        (json!(5.5), json!(9)),
        (json!({"tokens": 5}), json!(9)),
        (json!(null), json!([9])),
        (huge, json!(9)),
    ];
    let mut n = 0;
    for (prompt, completion) in cases {
        for stream in [false, true] {
            let case = format!("{prompt} / {completion}, stream={stream}");
            mock.set_usage(prompt.clone(), completion.clone());
            let got = send_chat(&gw, &key, stream).await;
            assert_eq!(
                (got.status, got.ended),
                (StatusCode::OK, Ended::Clean),
                "{case}"
            );
            n += 2;
            let record = recovers(&gw, &mock, &key, n - 1, 200, UsageSource::Capped).await;
            assert!(
                record.input_tokens <= keygate_billing::MAX_REPORTED_TOKENS,
                "{case}"
            );
        }
    }
    drains(gw).await;
}

/// A 50 MB answer streams through whole (never buffered: usage is read from
/// its tail) and is billed as reported.
#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_answer_streams_through_and_is_billed() {
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    mock.set_fault(Fault::Huge { bytes: 50_000_000 });
    let got = send_chat(&gw, &key, false).await;
    assert_eq!((got.status, got.ended), (StatusCode::OK, Ended::Clean));
    assert!(got.body.len() >= 50_000_000, "{}", got.body.len());
    let tail = String::from_utf8_lossy(&got.body[got.body.len() - 500..]).into_owned();
    assert!(tail.contains("\"usage\""), "{tail}");
    drop(got);
    let record = recovers(&gw, &mock, &key, 1, 200, UsageSource::Reported).await;
    assert_eq!(record.input_tokens, 5, "{record:?}");
    assert!(record.cost > Micros::ZERO);
    drains(gw).await;
}

/// A drip of one byte per second against a 300 ms idle timeout: the client
/// gets the first byte and a body that breaks off, recorded as 502 and
/// charged nothing. The drip is bounded twice: by the idle timeout, and by the
/// answer's own length.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_byte_per_second_drip_is_cut_by_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let gw = gateway_with(&mock, |c| c.timeouts.idle = Duration::from_millis(300)).await;
    let key = gw.key().await;
    for (n, stream) in [(1, false), (3, true)] {
        mock.set_fault(Fault::Drip {
            interval: Duration::from_secs(1),
        });
        let got = send_chat(&gw, &key, stream).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.ended, Ended::Broken, "{}", got.text());
        assert!(got.body.len() <= 2, "{}", got.text());
        let record = recovers(&gw, &mock, &key, n, 502, UsageSource::Unknown).await;
        assert_eq!(record.cost, Micros::ZERO);
    }
    drains(gw).await;
}

/// A drip faster than the idle timeout (a byte a millisecond) is read byte by
/// byte: the answer arrives whole and is billed exactly as reported, streamed
/// or not.
#[tokio::test(flavor = "multi_thread")]
async fn a_fast_drip_is_read_byte_by_byte() {
    let mock = MockUpstream::start().await;
    mock.set_reply("alpha beta");
    let gw = gateway(&mock).await;
    let key = gw.key().await;
    for (n, stream) in [(1, false), (3, true)] {
        mock.set_fault(Fault::Drip {
            interval: Duration::from_millis(1),
        });
        let got = send_chat(&gw, &key, stream).await;
        assert_eq!((got.status, got.ended), (StatusCode::OK, Ended::Clean));
        if stream {
            assert!(got.text().ends_with("data: [DONE]\n\n"), "{}", got.text());
        } else {
            let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
            assert_eq!(body["choices"][0]["message"]["content"], "alpha beta");
        }
        let record = recovers(&gw, &mock, &key, n, 200, UsageSource::Reported).await;
        assert_eq!(
            (record.input_tokens, record.output_tokens),
            (5, 2),
            "{record:?}"
        );
    }
    drains(gw).await;
}
