//! Billing through a real gateway: exact costs for every response shape on SQLite
//! and PostgreSQL, reservations that never overdraw under concurrency, and a
//! reservation released on every path that is not a settled answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::StatusCode;
use http_body_util::BodyExt;
use keygate_billing::{Price, PriceTable};
use keygate_keys::KeyKind;
use keygate_proxy::{
    Billing, BillingConfig, BodyObserver, Exchange, Gateway, ProxyConfig, ResponseTap, Shutdown,
};
use keygate_store::{
    CredentialStore, DbStore, KeySettings, Ledger, Micros, NewReservation, Reserve, UsageSource,
};
use keygate_test_utils::{MockUpstream, fixture};
use serde_json::json;

use crate::harness::{
    Backend, GatewayBuilder, PROMPT, TestGateway, chat, json_request, post, prefix, upstreams,
};

/// The prices the tests bill at, in credits per million tokens.
fn prices() -> PriceTable {
    let price = |i, o, c| Price::from_credits(i, o, c).unwrap();
    PriceTable::from_iter([
        ("gpt-4o", price(2.5, 10.0, Some(1.25))),
        ("gpt-4o-mini", price(0.15, 0.6, None)),
        ("text-embedding-3-small", price(0.02, 0.0, None)),
        ("claude-haiku-4-5", price(1.0, 5.0, Some(0.1))),
        ("o3", price(0.0, 0.0, None)),
    ])
}

/// A gateway on `backend` billing at [`prices`].
fn billed(mock: &MockUpstream, backend: Backend) -> GatewayBuilder {
    TestGateway::builder(mock).backend(backend).billed(prices())
}

const REPLY: &str = "alpha beta gamma delta epsilon zeta eta";
const REPLY_WORDS: u64 = 7;
const PROMPT_WORDS: u64 = 5;

/// `ceil(sum(tokens * micros_per_mtok) / 1e6)`, by hand.
fn cost(parts: &[(u64, i64)]) -> Micros {
    let total: i128 = parts
        .iter()
        .map(|(tokens, price)| i128::from(*tokens) * i128::from(*price))
        .sum();
    Micros(i64::try_from((total + 999_999) / 1_000_000).unwrap())
}

struct Case {
    name: &'static str,
    path: &'static str,
    body: serde_json::Value,
    input: u64,
    output: u64,
    cost: Micros,
}

fn cases() -> Vec<Case> {
    let gpt4o = |i, o| cost(&[(i, 2_500_000), (o, 10_000_000)]);
    let haiku = |i, o| cost(&[(i, 1_000_000), (o, 5_000_000)]);
    let mut stream_with_usage = chat("gpt-4o", true);
    stream_with_usage["stream_options"] = json!({"include_usage": true});
    let case = |name, path, body, input, output, cost| Case {
        name,
        path,
        body,
        input,
        output,
        cost,
    };
    vec![
        case(
            "chat json",
            "/v1/chat/completions",
            chat("gpt-4o", false),
            PROMPT_WORDS,
            REPLY_WORDS,
            gpt4o(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "chat stream, usage injected",
            "/v1/chat/completions",
            chat("gpt-4o", true),
            PROMPT_WORDS,
            REPLY_WORDS,
            gpt4o(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "chat stream, usage asked",
            "/v1/chat/completions",
            stream_with_usage,
            PROMPT_WORDS,
            REPLY_WORDS,
            gpt4o(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "completions json",
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": PROMPT}),
            PROMPT_WORDS,
            REPLY_WORDS,
            cost(&[(PROMPT_WORDS, 150_000), (REPLY_WORDS, 600_000)]),
        ),
        case(
            "completions stream",
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": PROMPT, "stream": true}),
            PROMPT_WORDS,
            REPLY_WORDS,
            cost(&[(PROMPT_WORDS, 150_000), (REPLY_WORDS, 600_000)]),
        ),
        case(
            "embeddings",
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["one two three", "four five"]}),
            5,
            0,
            cost(&[(5, 20_000)]),
        ),
        case(
            "responses json",
            "/v1/responses",
            json!({"model": "gpt-4o", "input": PROMPT}),
            PROMPT_WORDS,
            REPLY_WORDS,
            gpt4o(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "responses stream",
            "/v1/responses",
            json!({"model": "gpt-4o", "input": PROMPT, "stream": true}),
            PROMPT_WORDS,
            REPLY_WORDS,
            gpt4o(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "messages json",
            "/v1/messages",
            json!({"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}),
            PROMPT_WORDS,
            REPLY_WORDS,
            haiku(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "messages stream",
            "/v1/messages",
            json!({"model": "claude-haiku-4-5", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": PROMPT}]}),
            PROMPT_WORDS,
            REPLY_WORDS,
            haiku(PROMPT_WORDS, REPLY_WORDS),
        ),
    ]
}

/// Every shape, streamed and not: the stored tokens and cost are exact, the
/// balance moves by exactly the sum, and nothing stays reserved.
async fn every_shape_is_billed_exactly(backend: Backend) {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let Some(gw) = billed(&mock, backend).try_start().await else {
        return;
    };
    let key = gw.key().await;
    let cases = cases();
    for case in &cases {
        let reply = post(&gw.url(case.path), &key, &case.body).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}: {}",
            case.name,
            reply.text()
        );
    }
    let records = gw.records(cases.len()).await;
    let mut total = Micros::ZERO;
    for (case, record) in cases.iter().zip(&records) {
        assert_eq!(
            (record.input_tokens, record.output_tokens, record.cost),
            (case.input, case.output, case.cost),
            "{}",
            case.name
        );
        assert_eq!(record.usage_source, UsageSource::Reported, "{}", case.name);
        assert_eq!(record.status, 200, "{}", case.name);
        assert_eq!(
            record.stream,
            case.body["stream"] == json!(true),
            "{}",
            case.name
        );
        total = Micros(total.0 + case.cost.0);
    }
    let balance = gw.settled(&gw.account).await;
    assert_eq!(balance, Micros(1_000_000_000 - total.0));
    assert_eq!(gw.billing().metrics().records_dropped, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_is_billed_exactly_on_sqlite() {
    every_shape_is_billed_exactly(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_is_billed_exactly_on_postgres() {
    every_shape_is_billed_exactly(Backend::Postgres("every_shape_postgres")).await;
}

/// Cached input, where the upstream reports it (`prompt_tokens_details`,
/// `input_tokens_details`, `cache_read_input_tokens`), is billed at the cached
/// price, streamed or not.
async fn cached_input_is_billed_at_the_cached_price(backend: Backend) {
    const CACHED: u64 = 3;
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    mock.set_cached_tokens(CACHED as usize);
    let Some(gw) = billed(&mock, backend).try_start().await else {
        return;
    };
    let key = gw.key().await;
    let uncached = PROMPT_WORDS - CACHED;
    let gpt4o = cost(&[
        (uncached, 2_500_000),
        (CACHED, 1_250_000),
        (REPLY_WORDS, 10_000_000),
    ]);
    let haiku = cost(&[
        (uncached, 1_000_000),
        (CACHED, 100_000),
        (REPLY_WORDS, 5_000_000),
    ]);
    let mut stream_chat = chat("gpt-4o", true);
    stream_chat["stream_options"] = json!({"include_usage": true});
    let message = |stream: bool| {
        json!({"model": "claude-haiku-4-5", "max_tokens": 64, "stream": stream,
               "messages": [{"role": "user", "content": PROMPT}]})
    };
    let cases = [
        ("/v1/chat/completions", chat("gpt-4o", false), gpt4o),
        ("/v1/chat/completions", chat("gpt-4o", true), gpt4o),
        ("/v1/chat/completions", stream_chat, gpt4o),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": PROMPT}),
            gpt4o,
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": PROMPT, "stream": true}),
            gpt4o,
        ),
        ("/v1/messages", message(false), haiku),
        ("/v1/messages", message(true), haiku),
    ];
    for (path, body, _) in &cases {
        let reply = post(&gw.url(path), &key, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    }
    let records = gw.records(cases.len()).await;
    for ((path, body, expected), record) in cases.iter().zip(&records) {
        let what = format!("{path} stream={}", body["stream"]);
        assert_eq!(
            (
                record.input_tokens,
                record.cached_tokens,
                record.output_tokens
            ),
            (PROMPT_WORDS, CACHED, REPLY_WORDS),
            "{what}"
        );
        assert_eq!(record.cost, *expected, "{what}");
    }
    let total: i64 = cases.iter().map(|(_, _, c)| c.0).sum();
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000 - total));
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_input_is_billed_at_the_cached_price_on_sqlite() {
    cached_input_is_billed_at_the_cached_price(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_input_is_billed_at_the_cached_price_on_postgres() {
    cached_input_is_billed_at_the_cached_price(Backend::Postgres("cached_postgres")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_is_billed_exactly_in_memory() {
    every_shape_is_billed_exactly(Backend::Memory).await;
}

/// Server-sent events of a body, as JSON values (`[DONE]` left out).
fn events(body: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// A client that did not ask for usage gets exactly the stream the upstream
/// would have sent it; one that asked gets the usage chunk unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn the_injected_usage_chunk_is_hidden_from_clients_that_did_not_ask() {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let gw = billed(&mock, Backend::Memory).start().await;
    let key = gw.key().await;

    let direct = |body: &serde_json::Value| {
        json_request(
            &format!("{}/v1/chat/completions", mock.url()),
            "unused",
            body,
        )
    };
    let plain = chat("gpt-4o", true);
    let through = post(&gw.url("/v1/chat/completions"), &key, &plain).await;
    let upstream_saw: serde_json::Value =
        serde_json::from_slice(&mock.requests().last().unwrap().body).unwrap();
    assert_eq!(upstream_saw["stream_options"]["include_usage"], true);
    let expected = crate::harness::send(direct(&plain)).await;
    let (got, want) = (events(&through.body), events(&expected.body));
    assert_eq!(got.len(), want.len(), "{}", through.text());
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got["choices"], want["choices"]);
        assert_eq!(got.get("usage"), want.get("usage"));
    }
    assert!(through.text().ends_with("data: [DONE]\n\n"));

    let mut asked = chat("gpt-4o", true);
    asked["stream_options"] = json!({"include_usage": true});
    let through = post(&gw.url("/v1/chat/completions"), &key, &asked).await;
    let forwarded = mock.requests().last().unwrap().body.clone();
    assert_eq!(
        forwarded,
        Bytes::from(asked.to_string()),
        "body forwarded as-is"
    );
    let last = events(&through.body).pop().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], PROMPT_WORDS);
}

/// 200 concurrent requests against a balance that covers about 10 reservations:
/// every 2xx is paid for, nothing else is charged, the balance never goes below
/// zero and nothing stays reserved.
/// `workers` above 0: served on that many worker threads, each with a
/// runtime of its own.
async fn concurrent_requests_never_overdraw(backend: Backend, window: Duration, workers: usize) {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    mock.set_latency(Duration::from_millis(20));
    let Some(gw) = billed(&mock, backend)
        .billing(|billing| billing.batch_window = window)
        .server(|options| options.workers = workers)
        .try_start()
        .await
    else {
        return;
    };
    let mut body = chat("gpt-4o", false);
    body["max_tokens"] = json!(16);
    let reservation = cost(&[(body.to_string().len() as u64, 2_500_000), (16, 10_000_000)]);
    let start = Micros(reservation.0 * 10 + reservation.0 / 2);
    let account = gw.account_with(start).await;
    let (key, _) = gw
        .key_for(&account, KeySettings::new(KeyKind::Private))
        .await;

    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let store = Arc::clone(&gw.store);
        let account = account.clone();
        let watching = Arc::clone(&watching);
        tokio::spawn(async move {
            let mut lowest = i64::MAX;
            while watching.load(Ordering::SeqCst) {
                let a = store.get_account(&account).await.unwrap();
                lowest = lowest.min(a.balance.0 - a.reserved.0).min(a.balance.0);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            lowest
        })
    };
    let url = gw.url("/v1/chat/completions");
    let requests = (0..200).map(|_| {
        let (url, key, body) = (url.clone(), key.clone(), body.clone());
        tokio::spawn(async move { post(&url, &key, &body).await })
    });
    let mut ok = 0_i64;
    for request in requests {
        let reply = request.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => assert_eq!(reply.code(), "insufficient_balance"),
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    let balance = gw.settled(&account).await;
    watching.store(false, Ordering::SeqCst);
    let lowest = watcher.await.unwrap();
    let each = cost(&[(PROMPT_WORDS, 2_500_000), (REPLY_WORDS, 10_000_000)]);
    assert!(ok >= 10, "only {ok} requests fitted");
    assert!(
        ok < 200,
        "every request fitted: the balance was not limiting"
    );
    assert_eq!(balance, Micros(start.0 - ok * each.0), "{ok} answered");
    assert!(
        balance >= Micros::ZERO && lowest >= 0,
        "overdrawn: {lowest}"
    );
    // Refused requests never reached an upstream: only answers are recorded.
    let records = gw.records(ok as usize).await;
    assert_eq!(records.len() as i64, ok);
    assert!(records.iter().all(|r| r.cost == each && r.status == 200));
    assert_eq!(gw.billing().metrics().refused, 200 - ok as u64);
    assert_eq!(gw.billing().metrics().records_dropped, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overdraw_on_sqlite() {
    concurrent_requests_never_overdraw(Backend::Sqlite, Duration::from_secs(1), 0).await;
}

/// The same served on two worker threads.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_on_worker_threads_never_overdraw_on_sqlite() {
    concurrent_requests_never_overdraw(Backend::Sqlite, Duration::from_secs(1), 2).await;
}

/// The same with leases off: one store reservation per request.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overdraw_without_leases() {
    concurrent_requests_never_overdraw(Backend::Sqlite, Duration::ZERO, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overdraw_on_postgres() {
    concurrent_requests_never_overdraw(
        Backend::Postgres("overdraw_postgres"),
        Duration::from_secs(1),
        0,
    )
    .await;
}

/// On PostgreSQL, served on two worker threads: the pool's connections are
/// opened on (and driven by) whichever worker's runtime needed them first.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_on_worker_threads_never_overdraw_on_postgres() {
    concurrent_requests_never_overdraw(
        Backend::Postgres("overdraw_workers_postgres"),
        Duration::from_secs(1),
        2,
    )
    .await;
}

/// Two gateways on one PostgreSQL database, each with its own leases and its own
/// connection pool, share a balance without overdrawing it.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_a_balance_without_overdrawing() {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    mock.set_latency(Duration::from_millis(10));
    let Some(first) = billed(&mock, Backend::Postgres("two_instances"))
        .try_start()
        .await
    else {
        return;
    };
    let second_store = DbStore::connect(first.database_url()).await.unwrap();
    let second = billed(&mock, Backend::Shared(Arc::new(second_store)))
        .start()
        .await;
    let body = chat("gpt-4o", false);
    let each = cost(&[(PROMPT_WORDS, 2_500_000), (REPLY_WORDS, 10_000_000)]);
    let bound = cost(&[
        (body.to_string().len() as u64, 2_500_000),
        (4096, 10_000_000),
    ]);
    // Room for about 20 upper bounds: each lease of 32 bounds is refused, so
    // both instances fall back to one reservation per request when they need it.
    let start = Micros(bound.0 * 20);
    let account = first.account_with(start).await;
    let (key, _) = first
        .key_for(&account, KeySettings::new(KeyKind::Private))
        .await;
    let mut requests = Vec::new();
    for i in 0..120 {
        let url = if i % 2 == 0 {
            first.url("/v1/chat/completions")
        } else {
            second.url("/v1/chat/completions")
        };
        let (key, body) = (key.clone(), body.clone());
        requests.push(tokio::spawn(async move { post(&url, &key, &body).await }));
    }
    let mut ok = 0_i64;
    for request in requests {
        let reply = request.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => {}
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    let balance = first.settled(&account).await;
    assert!(ok >= 20, "only {ok} answered");
    assert_eq!(balance, Micros(start.0 - ok * each.0));
    assert!(balance >= Micros::ZERO);
}

/// A key's spend limit refuses with 402 spend_limit_exceeded.
#[tokio::test(flavor = "multi_thread")]
async fn a_spend_limit_refuses_with_402() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Memory).start().await;
    let mut settings = KeySettings::new(KeyKind::Private);
    settings.spend_limit = Some(Micros(10));
    let account = gw.account.clone();
    let (key, _) = gw.key_for(&account, settings).await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(reply.code(), "spend_limit_exceeded");
    assert_eq!(reply.json()["error"]["type"], "insufficient_quota");

    let poor = gw.account_with(Micros(1)).await;
    let (key, _) = gw.key_for(&poor, KeySettings::new(KeyKind::Private)).await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(reply.code(), "insufficient_balance");
    // A model priced at zero needs no balance.
    let reply = gw.chat(&key, "o3").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// A model with no price is refused unless unpriced models are allowed.
#[tokio::test(flavor = "multi_thread")]
async fn unpriced_models_are_refused_unless_allowed() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Memory).start().await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o-2024-08-06").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("no price"), "{}", reply.text());

    let gw = billed(&mock, Backend::Memory)
        .billing(|billing| billing.allow_unpriced = true)
        .start()
        .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o-2024-08-06").await;
    assert_eq!(reply.status, StatusCode::OK);
    let record = gw.records(1).await.remove(0);
    assert_eq!(record.cost, Micros::ZERO);
    assert_eq!(record.usage_source, UsageSource::Reported);
}

/// An upstream error response passes through and charges nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_500_charges_nothing() {
    let mock = MockUpstream::start().await;
    mock.fail_with(500, r#"{"error":{"message":"boom","type":"server_error"}}"#);
    let gw = billed(&mock, Backend::Sqlite).start().await;
    let key = gw.key().await;
    for stream in [false, true] {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            &key,
            &chat("gpt-4o", stream),
        )
        .await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let records = gw.records(2).await;
    assert!(
        records
            .iter()
            .all(|r| r.status == 500 && r.cost == Micros::ZERO)
    );
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000));
    assert_eq!(gw.billing().metrics().settled, 0);
}

/// No answer at all (a refused connection, a first-byte timeout): released.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_and_slow_upstreams_release_the_reservation() {
    let mock = MockUpstream::start().await;
    mock.hang();
    let gw = billed(&mock, Backend::Memory)
        .config(|config| config.timeouts.first_byte = Duration::from_millis(200))
        .start()
        .await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000));
    assert_eq!(gw.records(1).await[0].status, 504);

    let closed = MockUpstream::start().await;
    let gw2 = billed(&closed, Backend::Memory).start().await;
    let key = gw2.key().await;
    closed.shutdown().await;
    let reply = gw2.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(gw2.settled(&gw2.account).await, Micros(1_000_000_000));
}

/// A client that leaves before the answer starts: released, recorded as 499.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_before_the_answer_is_not_charged() {
    let mock = MockUpstream::start().await;
    mock.set_latency(Duration::from_secs(2));
    let gw = billed(&mock, Backend::Memory).start().await;
    let key = gw.key().await;
    let url = gw.url("/v1/chat/completions");
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        post(&url, &key, &chat("gpt-4o", false)),
    )
    .await;
    assert!(attempt.is_err(), "the answer came too soon");
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000));
    let record = gw.records(1).await.remove(0);
    assert_eq!((record.status, record.cost), (499, Micros::ZERO));
}

/// A client that leaves mid-stream: the upstream is cancelled and an estimate
/// is billed, marked as such.
#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_stream_is_billed_as_estimated() {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    mock.set_chunk_delay(Duration::from_millis(150));
    let gw = billed(&mock, Backend::Sqlite).start().await;
    let key = gw.key().await;
    let body = chat("gpt-4o", true);
    let response = crate::harness::client()
        .request(json_request(&gw.url("/v1/chat/completions"), &key, &body))
        .await
        .unwrap();
    let mut body_stream = response.into_body();
    let mut content = 0;
    while content < 2 {
        let frame = body_stream.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            content += events(&data)
                .iter()
                .filter(|e| {
                    e["choices"][0]["delta"]["content"]
                        .as_str()
                        .is_some_and(|c| !c.is_empty())
                })
                .count();
        }
    }
    drop(body_stream);
    let record = gw.records(1).await.remove(0);
    assert_eq!(record.usage_source, UsageSource::Estimated);
    assert_eq!(record.status, 499);
    let forwarded = mock.requests().last().unwrap().body.len() as u64;
    assert_eq!(record.input_tokens, forwarded.div_ceil(4));
    assert!(
        (2..REPLY_WORDS).contains(&record.output_tokens),
        "{record:?}"
    );
    let expected = cost(&[
        (record.input_tokens, 2_500_000),
        (record.output_tokens, 10_000_000),
    ]);
    assert_eq!(record.cost, expected);
    let balance = gw.settled(&gw.account).await;
    assert_eq!(balance, Micros(1_000_000_000 - expected.0));
    for _ in 0..100 {
        if mock.cancelled_streams() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        mock.cancelled_streams(),
        1,
        "the upstream was not cancelled"
    );
}

/// A panic on the request path drops the reservation's guard, which releases it.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_releases_the_reservation() {
    struct Panics;
    impl ResponseTap for Panics {
        fn tap(&self, _: &Exchange<'_>) -> Option<Box<dyn BodyObserver>> {
            panic!("a tap that panics (test)");
        }
    }
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Memory)
        .tap(Arc::new(Panics))
        .start()
        .await;
    let key = gw.key().await;
    let sent = crate::harness::client()
        .request(json_request(
            &gw.url("/v1/chat/completions"),
            &key,
            &chat("gpt-4o", false),
        ))
        .await;
    assert!(
        sent.is_err(),
        "the connection should have died with the panic"
    );
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000));
    let metrics = gw.billing().metrics();
    assert_eq!((metrics.holds, metrics.settled), (1, 0));
}

/// Usage writes fail for a while: the writer retries and loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn usage_records_survive_a_store_outage() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Sqlite).faulty().start().await;
    gw.faults().set_usage_down(true);
    let key = gw.key().await;
    for _ in 0..5 {
        let reply = gw.chat(&key, "gpt-4o").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.billing().metrics().records_written, 0);
    gw.faults().set_usage_down(false);
    assert_eq!(gw.records(5).await.len(), 5);
    assert_eq!(gw.billing().metrics().records_dropped, 0);
}

/// A client that goes away while its reservation is being taken (the store has
/// committed it, the answer is still on its way) strands nothing: the lease is
/// published or released all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_reservation_strands_nothing() {
    let mock = MockUpstream::start().await;
    for window in [Duration::ZERO, Duration::from_millis(200)] {
        let gw = billed(&mock, Backend::Memory)
            .billing(|billing| billing.batch_window = window)
            .faulty()
            .start()
            .await;
        gw.faults()
            .set_reserve_reply_delay(Duration::from_millis(400));
        let key = gw.key().await;
        let url = gw.url("/v1/chat/completions");
        let attempt = tokio::time::timeout(
            Duration::from_millis(100),
            post(&url, &key, &chat("gpt-4o", false)),
        )
        .await;
        assert!(attempt.is_err(), "answered before the reservation was");
        // The reservation committed; once its task ends it is released.
        assert_eq!(
            gw.settled(&gw.account).await,
            Micros(1_000_000_000),
            "window {window:?}"
        );
        assert_eq!(mock.requests().len(), 0, "nothing was forwarded");
    }
}

/// Graceful shutdown writes the records still queued.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_flushes_queued_usage_records() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Sqlite)
        .billing(|billing| {
            billing.writer.flush_interval = Duration::from_secs(3600);
            billing.writer.batch_size = 1000;
        })
        .start()
        .await;
    let key = gw.key().await;
    for _ in 0..3 {
        let reply = post(
            &gw.url("/v1/embeddings"),
            &key,
            &json!({"model": "text-embedding-3-small", "input": "a b c"}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gw.billing().metrics().records_written,
        0,
        "flushed too early"
    );
    let store = Arc::clone(&gw.store);
    let billing = Arc::clone(gw.billing());
    assert_eq!(gw.shutdown().await, Shutdown::Drained);
    let records = store
        .usage_between(DateTime::<Utc>::UNIX_EPOCH, Utc::now())
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(billing.metrics().records_dropped, 0);
}

/// A usage record the store refuses is kept and retried, never dropped: the
/// records beside it in its batch are written at once, and it is written once
/// the store takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_usage_record_is_retried_not_dropped() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Sqlite)
        .billing(|billing| billing.writer.flush_interval = Duration::from_millis(50))
        .faulty()
        .start()
        .await;
    gw.faults().set_usage_refused_for(Some("gpt-4o-mini"));
    let key = gw.key().await;
    for model in ["gpt-4o", "gpt-4o-mini", "gpt-4o"] {
        let reply = gw.chat(&key, model).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let written = gw.records(2).await;
    assert!(written.iter().all(|r| r.model == "gpt-4o"), "{written:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.billing().metrics().records_written, 2);
    assert_eq!(gw.billing().metrics().records_dropped, 0);
    gw.faults().set_usage_refused_for(None);
    let written = gw.records(3).await;
    assert_eq!(written.len(), 3);
    assert_eq!(gw.billing().metrics().records_dropped, 0);
}

/// Records the store still refuses at shutdown are counted exactly as dropped.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_counts_exactly_the_records_it_could_not_write() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Memory)
        .billing(|billing| billing.writer.flush_interval = Duration::from_millis(50))
        .faulty()
        .start()
        .await;
    gw.faults().set_usage_refused_for(Some("gpt-4o-mini"));
    let key = gw.key().await;
    for model in ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"] {
        let reply = gw.chat(&key, model).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    gw.records(1).await;
    let billing = Arc::clone(gw.billing());
    assert_eq!(billing.metrics().records_dropped, 0);
    assert_eq!(gw.shutdown().await, Shutdown::Drained);
    let metrics = billing.metrics();
    assert_eq!((metrics.records_written, metrics.records_dropped), (1, 3));
}

/// Usage records name the client (`X-Client-Name`, else `User-Agent`) and keep
/// its address only when the operator turns that on.
#[tokio::test(flavor = "multi_thread")]
async fn usage_records_name_the_client_and_keep_no_address_by_default() {
    let mock = MockUpstream::start().await;
    for log_ip in [false, true] {
        let gw = billed(&mock, Backend::Memory)
            .billing(|billing| billing.log_client_ip = log_ip)
            .start()
            .await;
        let key = gw.key().await;
        let auth = format!("Bearer {key}");
        let body = chat("gpt-4o", false).to_string();
        for extra in [
            ("x-client-name", "nightly-batch"),
            ("user-agent", "OpenAI/Python 9.9"),
        ] {
            let request = crate::harness::request(
                http::Method::POST,
                &gw.url("/v1/chat/completions"),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    extra,
                ],
                body.clone(),
            );
            assert_eq!(crate::harness::send(request).await.status, StatusCode::OK);
        }
        let records = gw.records(2).await;
        let names: Vec<_> = records.iter().map(|r| r.client_name.as_deref()).collect();
        assert_eq!(names, [Some("nightly-batch"), Some("OpenAI/Python 9.9")]);
        let ip = if log_ip { Some("127.0.0.1") } else { None };
        assert!(
            records.iter().all(|r| r.client_ip.as_deref() == ip),
            "{records:?}"
        );
    }
}

/// Usage records past the retention period are purged when the gateway starts.
#[tokio::test(flavor = "multi_thread")]
async fn old_usage_records_are_purged_at_start_up() {
    let mock = MockUpstream::start().await;
    let gw = billed(&mock, Backend::Sqlite).start().await;
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut old = gw.records(1).await.remove(0);
    old.at = Utc::now() - chrono::Duration::days(91);
    gw.store.record_usage(&[old]).await.unwrap();
    assert_eq!(gw.records(2).await.len(), 2);
    // A second gateway on the same database purges at start-up (90 days).
    let second = billed(&mock, Backend::Shared(Arc::clone(&gw.store)))
        .start()
        .await;
    let mut records = second.records(1).await;
    for _ in 0..250 {
        if records.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        records = second.records(1).await;
    }
    assert_eq!(records.len(), 1, "the 91-day-old record is still there");
    assert!(records[0].at > Utc::now() - chrono::Duration::days(1));
}

/// A reservation a crash left behind is swept when the gateway starts. This one
/// needs no server: `start_background` itself sweeps before it returns.
#[tokio::test(flavor = "multi_thread")]
async fn expired_reservations_are_swept_at_start_up() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let store = DbStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let (account, _, key) = fixture::account_and_key(&store, Micros(1000)).await;
    let held = store
        .reserve(NewReservation {
            account_id: account.id.clone(),
            key_id: key.id,
            amount: Micros(600),
            expires_at: Utc::now() - chrono::Duration::seconds(1),
        })
        .await
        .unwrap();
    assert!(matches!(held, Reserve::Held(_)));
    let store = Arc::new(store);
    let billing = Arc::new(Billing::new(
        BillingConfig::new(prices()),
        Arc::clone(&store) as Arc<dyn Ledger>,
    ));
    let gateway = Gateway::new(ProxyConfig::new(prefix(), upstreams(&mock)), store.clone())
        .unwrap()
        .with_billing(billing);
    let background = gateway.start_background().await;
    let account = store.get_account(&account.id).await.unwrap();
    assert_eq!(
        (account.balance, account.reserved),
        (Micros(1000), Micros::ZERO)
    );
    background.stop().await;
}

/// What a hostile upstream reports for a `max_tokens: 64` chat completion.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// `prompt_tokens: 18446744073709551615`, past `i64` and past the bound.
    PromptPastI64,
    /// `completion_tokens: 10^9` for a request capped at 64 output tokens.
    BillionCompletion,
}

impl Hostile {
    fn usage(self) -> (serde_json::Value, serde_json::Value) {
        match self {
            Hostile::PromptPastI64 => (json!(u64::MAX), json!(5)),
            Hostile::BillionCompletion => (json!(5), json!(1_000_000_000_u64)),
        }
    }
}

/// A `max_tokens: 64` chat completion on gpt-4o.
fn capped_chat(stream: bool) -> serde_json::Value {
    let mut body = chat("gpt-4o", stream);
    body["max_tokens"] = json!(64);
    body
}

/// The balance of an account that fits one request's reservation but not a
/// lease of many.
const POOR_BALANCE: Micros = Micros(5_000);

/// Sends one `max_tokens: 64` chat completion (JSON or streamed) from a fresh
/// account holding [`POOR_BALANCE`] while the upstream reports `hostile`;
/// returns the charged record, the reservation the request held, and the
/// account's balance once settled.
async fn send_hostile(
    gw: &TestGateway,
    mock: &MockUpstream,
    hostile: Hostile,
    stream: bool,
    records_before: usize,
) -> (keygate_store::UsageRecord, Micros, Micros) {
    let (prompt, completion) = hostile.usage();
    mock.set_usage(prompt, completion);
    let account = gw.account_with(POOR_BALANCE).await;
    let (key, _) = gw
        .key_for(&account, KeySettings::new(KeyKind::Private))
        .await;
    let reply = post(&gw.url("/v1/chat/completions"), &key, &capped_chat(stream)).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{hostile:?}: {}",
        reply.text()
    );
    mock.clear_usage();
    // The reservation: the body as forwarded (with usage asked for, when
    // streamed) and the 64-token output cap, at gpt-4o's price.
    let forwarded = mock.requests().pop().unwrap().body;
    let price = *prices().get("gpt-4o").unwrap();
    let demand = keygate_billing::Demand {
        input_tokens: forwarded.len() as u64,
        output_cap: Some(64),
        n: 1,
    };
    let reserved = keygate_billing::reserve_upper_bound(
        &price,
        &demand,
        &keygate_billing::ReservationRule::default(),
    );
    assert!(reserved <= POOR_BALANCE, "the test's request must fit");
    let balance = gw.settled(&account).await;
    let record = gw.records(records_before + 1).await.pop().unwrap();
    assert_eq!(record.account_id, account);
    (record, reserved, balance)
}

/// An upstream that reports absurd usage (past `i64`, or a billion tokens for a
/// 64-token cap), in a JSON or a streamed answer, is charged at most the
/// request's reservation: the balance never goes below zero, the record is
/// written as `capped` with the clamped tokens and what was charged, the metric
/// counts it, and the next request is served as usual.
async fn hostile_usage_is_capped_at_the_reservation(backend: Backend) {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let Some(gw) = billed(&mock, backend).try_start().await else {
        return;
    };
    let mut records = 0;
    for hostile in [Hostile::PromptPastI64, Hostile::BillionCompletion] {
        for stream in [false, true] {
            let case = format!("{hostile:?} stream={stream}");
            let (record, reserved, balance) =
                send_hostile(&gw, &mock, hostile, stream, records).await;
            records += 1;
            assert_eq!(record.usage_source, UsageSource::Capped, "{case}");
            assert_eq!(record.cost, reserved, "{case}: charged all it held");
            assert_eq!(balance, Micros(POOR_BALANCE.0 - reserved.0), "{case}");
            assert!(balance >= Micros::ZERO, "{case}");
            match hostile {
                Hostile::PromptPastI64 => assert_eq!(
                    (record.input_tokens, record.output_tokens),
                    (keygate_billing::MAX_REPORTED_TOKENS, 5),
                    "{case}"
                ),
                Hostile::BillionCompletion => assert_eq!(
                    (record.input_tokens, record.output_tokens),
                    (5, 1_000_000_000),
                    "{case}"
                ),
            }
            assert_eq!(record.status, 200, "{case}");
        }
    }
    let metrics = gw.billing().metrics();
    assert_eq!(metrics.usage_capped, 4);
    assert_eq!(metrics.records_dropped, 0);
    let text = metrics_text(&gw).await;
    assert!(text.contains("keygate_usage_capped_total 4"), "{text}");

    // The next request is served and billed as usual.
    let key = gw.key().await;
    let reply = post(&gw.url("/v1/chat/completions"), &key, &capped_chat(false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let record = gw.records(records + 1).await.pop().unwrap();
    assert_eq!(record.usage_source, UsageSource::Reported);
    assert_eq!(
        (record.input_tokens, record.output_tokens),
        (PROMPT_WORDS, REPLY_WORDS)
    );
    assert_eq!(
        record.cost,
        cost(&[(PROMPT_WORDS, 2_500_000), (REPLY_WORDS, 10_000_000)])
    );
}

/// The gateway's `/metrics` text.
async fn metrics_text(gw: &TestGateway) -> String {
    let request = http::Request::get(gw.url("/metrics"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    crate::harness::send(request).await.text()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_usage_is_capped_at_the_reservation_in_memory() {
    hostile_usage_is_capped_at_the_reservation(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_usage_is_capped_at_the_reservation_on_sqlite() {
    hostile_usage_is_capped_at_the_reservation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_usage_is_capped_at_the_reservation_on_postgres() {
    hostile_usage_is_capped_at_the_reservation(Backend::Postgres("hostile_usage_postgres")).await;
}

/// With `charge_beyond_reservation = true` the full cost is charged, but the
/// store's settlement still stops at what the account can pay: the balance ends
/// at exactly zero, never below, and the shortfall is counted.
async fn charging_beyond_the_reservation_still_never_overdraws(backend: Backend) {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let Some(gw) = billed(&mock, backend)
        .billing(|billing| billing.charge_beyond_reservation = true)
        .try_start()
        .await
    else {
        return;
    };
    let mut records = 0;
    for hostile in [Hostile::PromptPastI64, Hostile::BillionCompletion] {
        for stream in [false, true] {
            let case = format!("{hostile:?} stream={stream}");
            let (record, reserved, balance) =
                send_hostile(&gw, &mock, hostile, stream, records).await;
            records += 1;
            assert_eq!(balance, Micros::ZERO, "{case}: all it could pay, no more");
            assert!(record.cost > reserved, "{case}: the full cost");
            let expected = match hostile {
                Hostile::PromptPastI64 => UsageSource::Capped,
                Hostile::BillionCompletion => UsageSource::Reported,
            };
            assert_eq!(record.usage_source, expected, "{case}");
        }
    }
    let metrics = gw.billing().metrics();
    assert_eq!(metrics.settlements_capped, 4);
    assert_eq!(metrics.usage_capped, 2);
    // The next request is served.
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn charging_beyond_the_reservation_still_never_overdraws_in_memory() {
    charging_beyond_the_reservation_still_never_overdraws(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn charging_beyond_the_reservation_still_never_overdraws_on_sqlite() {
    charging_beyond_the_reservation_still_never_overdraws(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn charging_beyond_the_reservation_still_never_overdraws_on_postgres() {
    charging_beyond_the_reservation_still_never_overdraws(Backend::Postgres(
        "beyond_reservation_postgres",
    ))
    .await;
}
