//! Several upstreams per model: failover on a refused or reset connection, a
//! first-byte timeout, 5xx and 429 (with `Retry-After`), with the right answer
//! and the right upstream and attempt count on the usage record; no retry once
//! a stream has started; breakers that open, cool down and recover; provider-key
//! pools with a refused key skipped; key affinity.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use keygate_billing::{Price, PriceTable};
use keygate_proxy::{
    Affinity, BreakerSettings, ProviderKey, ProviderKind, RetryOn, RoutingSettings, UpstreamConfig,
};
use keygate_store::{KeySettings, Micros};
use keygate_test_utils::MockUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::harness::{GatewayBuilder, PROVIDER_KEY, TestGateway, chat, client, json_request};

fn prices() -> PriceTable {
    PriceTable::from_iter([("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap())])
}

/// An OpenAI upstream `name` at `url` (with `/v1`) serving `gpt-4o*`.
fn openai(name: &str, url: &str, priority: i32) -> UpstreamConfig {
    UpstreamConfig {
        provider_keys: vec![ProviderKey::new(PROVIDER_KEY.into())],
        priority,
        ..UpstreamConfig::new(name, url, ProviderKind::OpenAi, vec!["gpt-4o*".into()])
    }
}

/// A billed gateway whose upstreams are `upstreams` only, with `routing`.
fn gateway(
    mock: &MockUpstream,
    upstreams: Vec<UpstreamConfig>,
    routing: RoutingSettings,
) -> GatewayBuilder {
    TestGateway::builder(mock)
        .billed(prices())
        .config(move |config| {
            config.upstreams = upstreams;
            config.routing = routing;
            config.timeouts.first_byte = Duration::from_millis(500);
        })
}

/// "primary" (priority 0) at `first`, "backup" (priority 1) on `backup`.
fn primary_and_backup(first: &str, backup: &MockUpstream) -> Vec<UpstreamConfig> {
    vec![
        openai("primary", first, 0),
        openai("backup", &format!("{}/v1", backup.url()), 1),
    ]
}

/// A URL on a port nothing listens on.
async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

/// A server that runs `answer` on each connection, counting them. Aborted when
/// the handle drops.
struct RawServer {
    url: String,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head, then resets the connection (RST, no answer).
async fn resetting() -> RawServer {
    raw(|mut socket| async move {
        let mut buf = [0_u8; 4096];
        let _ = socket.read(&mut buf).await;
        let _ = socket.set_zero_linger();
        drop(socket);
    })
    .await
}

/// Answers 200 with an event-stream head and one event, then closes.
async fn breaking_stream() -> RawServer {
    raw(|mut socket| async move {
        let mut buf = [0_u8; 4096];
        let _ = socket.read(&mut buf).await;
        let event = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"half\"}}]}\n\n";
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
            event.len()
        );
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.flush().await;
        let _ = socket.set_zero_linger();
        drop(socket);
    })
    .await
}

async fn raw<F, Fut>(answer: F) -> RawServer
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    // Who waits: nobody; `RawServer`'s drop aborts it.
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            answer(socket).await;
        }
    });
    RawServer {
        url,
        connections,
        task,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_fails_over_and_the_record_names_the_backup() {
    let backup = MockUpstream::start().await;
    let first = refused_url().await;
    let gw = gateway(
        &backup,
        primary_and_backup(&first, &backup),
        RoutingSettings::default(),
    )
    .start()
    .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let record = gw.records(1).await.remove(0);
    assert_eq!((record.upstream.as_str(), record.attempts), ("backup", 2));
    assert!(record.cost > Micros::ZERO, "the served answer is charged");
    assert_eq!(backup.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_connection_fails_over() {
    let backup = MockUpstream::start().await;
    let reset = resetting().await;
    let gw = gateway(
        &backup,
        primary_and_backup(&reset.url, &backup),
        RoutingSettings::default(),
    )
    .start()
    .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reset.connections.load(Ordering::SeqCst) >= 1);
    let record = gw.records(1).await.remove(0);
    assert_eq!((record.upstream.as_str(), record.attempts), ("backup", 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_byte_timeout_fails_over() {
    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    primary.hang();
    let ups = primary_and_backup(&format!("{}/v1", primary.url()), &backup);
    let gw = gateway(&backup, ups, RoutingSettings::default())
        .start()
        .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK);
    let record = gw.records(1).await.remove(0);
    assert_eq!((record.upstream.as_str(), record.attempts), ("backup", 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_fails_over_and_when_all_fail_the_last_answer_is_served_uncharged() {
    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    primary.fail_with(503, r#"{"error":{"message":"primary down"}}"#);
    let ups = primary_and_backup(&format!("{}/v1", primary.url()), &backup);
    let gw = gateway(&backup, ups, RoutingSettings::default())
        .start()
        .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK);

    backup.fail_with(500, r#"{"error":{"message":"backup down"}}"#);
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.text().contains("backup down"), "{}", reply.text());
    let records = gw.records(2).await;
    assert_eq!(
        (
            records[1].upstream.as_str(),
            records[1].attempts,
            records[1].cost
        ),
        ("backup", 2, Micros::ZERO)
    );
    assert_eq!(
        gw.settled(&gw.account).await,
        Micros(1_000_000_000 - records[0].cost.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_fails_over_and_retry_after_keeps_the_upstream_out() {
    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    primary.fail_with(429, r#"{"error":{"message":"slow down"}}"#);
    primary.set_response_header("retry-after", "120");
    let ups = primary_and_backup(&format!("{}/v1", primary.url()), &backup);
    let gw = gateway(&backup, ups, RoutingSettings::default())
        .start()
        .await;
    let key = gw.key().await;
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    }
    assert_eq!(
        primary.requests().len(),
        1,
        "held off after its Retry-After"
    );
    let records = gw.records(3).await;
    let attempts: Vec<u32> = records.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, [2, 1, 1]);
    assert!(records.iter().all(|r| r.upstream == "backup"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_follow_retry_on_and_max_attempts() {
    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    primary.fail_with(503, r#"{"error":{"message":"primary down"}}"#);
    let ups = primary_and_backup(&format!("{}/v1", primary.url()), &backup);
    let routing = RoutingSettings {
        retry_on: RetryOn {
            server_error: false,
            ..RetryOn::ALL
        },
        ..RoutingSettings::default()
    };
    let gw = gateway(&backup, ups.clone(), routing).start().await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(backup.requests().is_empty(), "5xx is not retried here");

    let one = RoutingSettings {
        max_attempts: 1,
        ..RoutingSettings::default()
    };
    let gw = gateway(&backup, ups, one).start().await;
    let key = gw.key().await;
    assert_eq!(
        gw.chat(&key, "gpt-4o").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(backup.requests().is_empty(), "one attempt only");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_retry_once_the_stream_has_started() {
    let backup = MockUpstream::start().await;
    let broken = breaking_stream().await;
    let gw = gateway(
        &backup,
        primary_and_backup(&broken.url, &backup),
        RoutingSettings::default(),
    )
    .start()
    .await;
    let key = gw.key().await;
    let request = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Err(_) => break,
        }
    }
    assert!(String::from_utf8_lossy(&got).contains("half"));
    assert!(backup.requests().is_empty(), "nothing was retried");
    let record = gw.records(1).await.remove(0);
    assert_eq!((record.upstream.as_str(), record.attempts), ("primary", 1));
    assert_eq!(record.status, 502, "the stream broke off");
}

/// Breakers with a short cooldown: the test waits for it by polling the
/// gateway's own `/metrics`, never asserting on time.
#[tokio::test(flavor = "multi_thread")]
async fn a_breaker_opens_cools_down_and_recovers() {
    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    primary.fail_with(500, r#"{"error":{"message":"down"}}"#);
    let ups = primary_and_backup(&format!("{}/v1", primary.url()), &backup);
    let routing = RoutingSettings {
        breaker: BreakerSettings {
            failures: 2,
            window: Duration::from_secs(60),
            cooldown: Duration::from_millis(300),
        },
        ..RoutingSettings::default()
    };
    let gw = gateway(&backup, ups, routing).start().await;
    let key = gw.key().await;
    for _ in 0..2 {
        assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    }
    assert_eq!(primary.requests().len(), 2);
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("keygate_upstream_up{upstream=\"primary\"} 0"),
        "{metrics}"
    );
    // Open: requests go straight to the backup.
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    }
    assert_eq!(primary.requests().len(), 2, "out of rotation while open");
    // Recovered upstream; after the cooldown one trial decides.
    primary.clear_failure();
    while !metrics_text(&gw)
        .await
        .contains("keygate_upstream_up{upstream=\"primary\"} 1")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    }
    assert_eq!(primary.requests().len(), 5, "closed again after the trial");
    let records = gw.records(8).await;
    assert!(
        records[5..]
            .iter()
            .all(|r| r.upstream == "primary" && r.attempts == 1)
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("keygate_upstream_breaker_opened_total{upstream=\"primary\"} 1"),
        "{metrics}"
    );
}

/// Every candidate cooling down: the least recently failed is tried rather
/// than refusing.
#[tokio::test(flavor = "multi_thread")]
async fn when_everything_is_out_the_least_recently_failed_is_tried() {
    let primary = MockUpstream::start().await;
    let backup = MockUpstream::start().await;
    primary.fail_with(500, r#"{"error":{"message":"primary down"}}"#);
    backup.fail_with(500, r#"{"error":{"message":"backup down"}}"#);
    let ups = primary_and_backup(&format!("{}/v1", primary.url()), &backup);
    let routing = RoutingSettings {
        breaker: BreakerSettings {
            failures: 1,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(600),
        },
        ..RoutingSettings::default()
    };
    let gw = gateway(&backup, ups, routing).start().await;
    let key = gw.key().await;
    assert_eq!(
        gw.chat(&key, "gpt-4o").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Both breakers are open now; the primary failed first.
    primary.clear_failure();
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let record = gw.records(2).await.remove(1);
    assert_eq!((record.upstream.as_str(), record.attempts), ("primary", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_key_answered_401_is_skipped_from_then_on() {
    let mock = MockUpstream::start().await;
    mock.require_key("sk-good-key");
    let pool = UpstreamConfig {
        provider_keys: vec![
            ProviderKey::new("sk-revoked-key".into()),
            ProviderKey::new("sk-good-key".into()),
        ],
        ..UpstreamConfig::new(
            "pool",
            &format!("{}/v1", mock.url()),
            ProviderKind::OpenAi,
            vec!["gpt-4o*".into()],
        )
    };
    let gw = gateway(&mock, vec![pool], RoutingSettings::default())
        .start()
        .await;
    let key = gw.key().await;
    for _ in 0..4 {
        let reply = gw.chat(&key, "gpt-4o").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let keys: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys[0], "Bearer sk-revoked-key");
    assert!(
        keys[1..].iter().all(|k| k == "Bearer sk-good-key"),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 5);
    let attempts: Vec<u32> = gw.records(4).await.iter().map(|r| r.attempts).collect();
    assert_eq!(attempts, [2, 1, 1, 1]);
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("keygate_provider_keys_disabled_total{upstream=\"pool\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_affinity_keeps_each_key_on_one_upstream_and_provider_key() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let pool = |name: &str, mock: &MockUpstream| UpstreamConfig {
        provider_keys: (0..3)
            .map(|k| ProviderKey::new(format!("sk-{name}-{k}")))
            .collect(),
        ..UpstreamConfig::new(
            name,
            &format!("{}/v1", mock.url()),
            ProviderKind::OpenAi,
            vec!["gpt-4o*".into()],
        )
    };
    let routing = RoutingSettings {
        affinity: Affinity::Key,
        ..RoutingSettings::default()
    };
    let gw = gateway(&a, vec![pool("a", &a), pool("b", &b)], routing)
        .start()
        .await;
    let mut used = Vec::new();
    for _ in 0..6 {
        let (key, _) = gw
            .key_with(KeySettings::new(keygate_keys::KeyKind::Private))
            .await;
        let (from_a, from_b) = (a.requests().len(), b.requests().len());
        for _ in 0..4 {
            assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
        }
        let new: Vec<String> = a.requests()[from_a..]
            .iter()
            .chain(&b.requests()[from_b..])
            .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(new.len(), 4);
        assert!(
            new.iter().all(|k| *k == new[0]),
            "one provider key per key: {new:?}"
        );
        used.push(new[0].clone());
    }
    let records = gw.records(24).await;
    for chunk in records.chunks(4) {
        assert!(
            chunk
                .iter()
                .all(|r| r.upstream == chunk[0].upstream && r.key_id == chunk[0].key_id)
        );
    }
    used.sort();
    used.dedup();
    assert!(
        used.len() > 1,
        "six keys do not all land on one provider key: {used:?}"
    );
}

async fn metrics_text(gw: &TestGateway) -> String {
    let reply = crate::harness::send(crate::harness::request(
        http::Method::GET,
        &gw.url("/metrics"),
        &[],
        "",
    ))
    .await;
    reply.text()
}
