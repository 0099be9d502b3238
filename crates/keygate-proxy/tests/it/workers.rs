//! Serving on worker threads (`ServerOptions::workers`): money charged exactly
//! once over many connections, one `max_connections` for all workers, and the
//! drain at shutdown, and no money lost when the server's future is dropped.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt as _;
use keygate_billing::{Price, PriceTable};
use keygate_proxy::Shutdown;
use keygate_store::{Micros, UsageSource};
use keygate_test_utils::MockUpstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{Backend, TestGateway, chat, client, json_request};

const WORKERS: usize = 2;

fn prices() -> PriceTable {
    PriceTable::from_iter([("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap())])
}

/// 16 clients, each on its own connection, 10 requests each, streamed and
/// not: every answer is charged once and recorded once, and nothing is left
/// reserved or queued after shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn requests_on_many_connections_are_charged_once_each() {
    const CLIENTS: usize = 16;
    const EACH: usize = 10;
    let mock = MockUpstream::start().await;
    mock.set_reply("alpha beta gamma delta epsilon zeta eta");
    let gw = TestGateway::builder(&mock)
        .backend(Backend::Sqlite)
        .billed(prices())
        .server(|o| o.workers = WORKERS)
        .start()
        .await;
    let key = gw.key().await;
    let (before, _) = gw.balance(&gw.account).await;
    let url = gw.url("/v1/chat/completions");
    let clients = (0..CLIENTS).map(|c| {
        let (url, key) = (url.clone(), key.clone());
        tokio::spawn(async move {
            // A client of its own: a connection of its own.
            let client = client();
            let mut streamed = 0;
            for i in 0..EACH {
                let stream = (c + i) % 2 == 0;
                let response = client
                    .request(json_request(&url, &key, &chat("gpt-4o", stream)))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                if stream {
                    assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
                    streamed += 1;
                }
            }
            streamed
        })
    });
    let mut streamed = 0;
    for c in clients {
        streamed += c.await.unwrap();
    }
    let total = CLIENTS * EACH;
    assert_eq!(streamed, total / 2);
    let records = gw.records(total).await;
    let each = records[0].cost;
    assert!(each > Micros::ZERO);
    assert!(records.iter().all(|r| r.cost == each && r.status == 200));
    assert!(
        records
            .iter()
            .all(|r| r.usage_source == UsageSource::Reported)
    );
    let metrics = gw.billing().metrics();
    assert_eq!(metrics.records_dropped, 0);
    let (store, account) = (std::sync::Arc::clone(&gw.store), gw.account.clone());
    assert_eq!(gw.shutdown().await, Shutdown::Drained);
    let account = store.get_account(&account).await.unwrap();
    assert_eq!(account.reserved, Micros::ZERO);
    assert_eq!(account.balance.0, before.0 - each.0 * total as i64);
    let all = store
        .usage_between(chrono::DateTime::UNIX_EPOCH, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(all.len(), total, "a record written twice, or lost");
}

/// Opens a connection and asks for `/healthz`; true when answered within
/// `wait`.
async fn answered(conn: &mut TcpStream, wait: Duration) -> bool {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    match tokio::time::timeout(wait, conn.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

/// `max_connections` counts every worker's connections together.
#[tokio::test]
async fn max_connections_is_one_limit_for_all_workers() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .server(|o| {
            o.workers = WORKERS;
            o.max_connections = 4;
        })
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(gw.addr).await.unwrap();
        assert!(answered(&mut conn, Duration::from_secs(10)).await);
        held.push(conn);
    }
    let mut waiting = TcpStream::connect(gw.addr).await.unwrap();
    assert!(
        !answered(&mut waiting, Duration::from_millis(300)).await,
        "a fifth connection was served while four were open"
    );
    drop(held.pop());
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), waiting.read(&mut buf))
        .await
        .expect("the fifth connection was not served after one closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Both workers waited for a slot before the fifth: one pause. The worker
    // that took the fifth paused again at once: two in all, not one per worker.
    waiting
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .await
        .unwrap();
    let mut metrics = Vec::new();
    while !metrics.ends_with(b"# EOF\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), waiting.read(&mut buf))
            .await
            .expect("no metrics")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&metrics));
        metrics.extend_from_slice(&buf[..n]);
    }
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("keygate_connections_waited_total 2\n"),
        "{metrics}"
    );
}

/// At shutdown a worker stops accepting and lets its streams finish.
#[tokio::test]
async fn a_stream_on_a_worker_finishes_at_shutdown() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(50));
    let mut gw = TestGateway::builder(&mock)
        .server(|o| o.workers = WORKERS)
        .start()
        .await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let addr = gw.addr;
    let server = gw.begin_shutdown();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
    assert_eq!(server.await.unwrap(), Shutdown::Drained);
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    assert_eq!(mock.completed_streams(), 1);
}

/// A grace period that runs out on a worker closes its streams, and says so.
#[tokio::test]
async fn the_grace_period_bounds_a_workers_drain() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(400));
    let mut gw = TestGateway::builder(&mock)
        .server(|o| o.workers = WORKERS)
        .grace(Duration::from_millis(200))
        .start()
        .await;
    let key = gw.key().await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    let server = gw.begin_shutdown();
    assert_eq!(server.await.unwrap(), Shutdown::GraceExpired);
    assert!(
        response.into_body().collect().await.is_err(),
        "the stream should have been cut"
    );
}

/// The server's future dropped mid-stream (an embedder aborting its task): the
/// worker drains the stream, and the request is charged although the worker's
/// runtime ends right after, because billing's store calls run on billing's
/// own runtime.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_server_loses_no_money() {
    let mock = MockUpstream::start().await;
    mock.set_chunk_delay(Duration::from_millis(30));
    let mut gw = TestGateway::builder(&mock)
        .backend(Backend::Sqlite)
        .billed(prices())
        // One reservation per request: it is settled as the stream ends, on
        // the worker's thread.
        .billing(|b| b.batch_window = Duration::ZERO)
        .server(|o| o.workers = WORKERS)
        .start()
        .await;
    let key = gw.key().await;
    let (before, _) = gw.balance(&gw.account).await;
    let req = json_request(&gw.url("/v1/chat/completions"), &key, &chat("gpt-4o", true));
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    gw.abort_server();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
    let records = gw.records(1).await;
    assert!(records[0].cost > Micros::ZERO);
    // Nobody stopped the background: wait as `Background::stop` would.
    gw.billing().shutdown(Duration::from_secs(10)).await;
    let metrics = gw.billing().metrics();
    assert_eq!(
        (metrics.settled, metrics.settle_failures),
        (1, 0),
        "{metrics:?}"
    );
    let account = gw.store.get_account(&gw.account).await.unwrap();
    assert_eq!(
        account.reserved,
        Micros::ZERO,
        "the reservation was stranded"
    );
    assert_eq!(account.balance.0, before.0 - records[0].cost.0);
}
