//! Billing through a real gateway: exact costs for every response shape on SQLite
//! and PostgreSQL, reservations that never overdraw under concurrency, and a
//! reservation released on every path that is not a settled answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::StatusCode;
use http_body_util::BodyExt;
use keygate_billing::{Price, PriceTable};
use keygate_keys::{KeyKind, SecretKey};
use keygate_proxy::{
    Billing, BillingConfig, BodyObserver, Exchange, Gateway, ProxyConfig, ResponseTap,
    ServerOptions, Shutdown, WriterSettings,
};
use keygate_store::{
    AccountId, CredentialStore, DbStore, KeyId, KeySettings, KeySpend, Ledger, MemoryStore, Micros,
    NewAccount, NewApiKey, NewReservation, Reservation, Reserve, StoreError, UsageRecord,
    UsageSource,
};
use keygate_test_utils::{MockUpstream, TestPostgres};
use serde_json::json;
use tokio::sync::oneshot;

use crate::harness::{json_request, post, prefix, upstreams};

/// A store that is both key store and ledger.
trait Store: CredentialStore + Ledger {}
impl<T: CredentialStore + Ledger> Store for T {}

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

const REPLY: &str = "alpha beta gamma delta epsilon zeta eta";
const REPLY_WORDS: u64 = 7;
const PROMPT: &str = "Say hello to the test";
const PROMPT_WORDS: u64 = 5;

struct Billed {
    addr: std::net::SocketAddr,
    store: Arc<dyn Store>,
    billing: Arc<Billing>,
    account: AccountId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Shutdown>>,
    _db: Option<Db>,
}

#[allow(dead_code, reason = "held for their Drop")]
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(TestPostgres),
}

enum Backend {
    Memory,
    Sqlite,
    Postgres,
    /// Another gateway's store: a second instance on the same database.
    Shared(Arc<dyn Store>),
}

impl Billed {
    /// A billed gateway on `backend`; `None` when PostgreSQL is not configured.
    async fn start(
        mock: &MockUpstream,
        backend: Backend,
        test: &str,
        tweak: impl FnOnce(&mut ProxyConfig, &mut BillingConfig),
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
        tap: Option<Arc<dyn ResponseTap>>,
    ) -> Option<Self> {
        let (store, db): (Arc<dyn Store>, Option<Db>) = match backend {
            Backend::Memory => (Arc::new(MemoryStore::new()), None),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("billing.db").display());
                let store = DbStore::connect(&url).await.unwrap();
                store.migrate().await.unwrap();
                (Arc::new(store), Some(Db::Sqlite(dir)))
            }
            Backend::Postgres => {
                let pg = TestPostgres::create(test).await?;
                let store = DbStore::connect(pg.url()).await.unwrap();
                store.migrate().await.unwrap();
                (Arc::new(store), Some(Db::Postgres(pg)))
            }
            Backend::Shared(store) => (store, None),
        };
        let store = wrap(store);
        let mut config = ProxyConfig::new(prefix(), upstreams(mock));
        config.auth.poll_interval = Duration::from_millis(100);
        let mut billing = BillingConfig::new(prices());
        billing.writer = WriterSettings {
            queue_capacity: 10_000,
            batch_size: 64,
            flush_interval: Duration::from_millis(20),
        };
        tweak(&mut config, &mut billing);
        let ledger: Arc<dyn Ledger> = Arc::clone(&store) as Arc<dyn Ledger>;
        let billing = Arc::new(Billing::new(billing, ledger));
        let keys: Arc<dyn CredentialStore> = Arc::clone(&store) as Arc<dyn CredentialStore>;
        let mut gateway = Gateway::new(config, keys)
            .unwrap()
            .with_billing(Arc::clone(&billing));
        if let Some(tap) = tap {
            gateway = gateway.with_tap(tap);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServerOptions {
            tls: None,
            grace: Duration::from_secs(5),
        };
        let task = tokio::spawn(keygate_proxy::serve(
            listener,
            Arc::new(gateway),
            options,
            async {
                let _ = stopped.await;
            },
        ));
        let account = store
            .create_account(NewAccount {
                name: "billed".into(),
                email: None,
                balance: Micros(1_000_000_000),
            })
            .await
            .unwrap()
            .id;
        Some(Self {
            addr,
            store,
            billing,
            account,
            stop: Some(stop),
            task: Some(task),
            _db: db,
        })
    }

    async fn simple(mock: &MockUpstream, backend: Backend, test: &str) -> Option<Self> {
        Self::start(mock, backend, test, |_, _| {}, |s| s, None).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A non-streaming chat completion for `model`.
    async fn chat(&self, key: &str, model: &str) -> crate::harness::Reply {
        post(
            &self.url("/v1/chat/completions"),
            key,
            &chat_body(model, false),
        )
        .await
    }

    async fn account_with(&self, balance: Micros) -> AccountId {
        self.store
            .create_account(NewAccount {
                name: "funded".into(),
                email: None,
                balance,
            })
            .await
            .unwrap()
            .id
    }

    async fn key_for(&self, account: &AccountId, settings: KeySettings) -> (String, KeyId) {
        let secret = SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
        let key = self
            .store
            .create_key(NewApiKey {
                account_id: account.clone(),
                key_hash: secret.hash(),
                start: secret.start(),
                settings,
            })
            .await
            .unwrap();
        (secret.expose().to_owned(), key.id)
    }

    async fn key(&self) -> String {
        let account = self.account.clone();
        self.key_for(&account, KeySettings::new(KeyKind::Private))
            .await
            .0
    }

    async fn balance(&self, account: &AccountId) -> (Micros, Micros) {
        let account = self.store.get_account(account).await.unwrap();
        (account.balance, account.reserved)
    }

    /// Waits until `n` usage records are stored (at most 10 s), and returns them.
    async fn records(&self, n: usize) -> Vec<UsageRecord> {
        let since = DateTime::<Utc>::UNIX_EPOCH;
        let until = Utc::now() + chrono::Duration::hours(1);
        for _ in 0..500 {
            let records = self.store.usage_between(since, until).await.unwrap();
            if records.len() >= n {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let records = self.store.usage_between(since, until).await.unwrap();
        panic!("expected {n} usage records, found {}", records.len());
    }

    /// Waits until nothing is reserved on `account` (at most 10 s).
    async fn settled(&self, account: &AccountId) -> Micros {
        for _ in 0..500 {
            let (balance, reserved) = self.balance(account).await;
            if reserved == Micros::ZERO {
                return balance;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the reservation on {account} was never released");
    }

    async fn shutdown(mut self) -> Shutdown {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Billed {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `ceil(sum(tokens * micros_per_mtok) / 1e6)`, by hand.
fn cost(parts: &[(u64, i64)]) -> Micros {
    let total: i128 = parts
        .iter()
        .map(|(tokens, price)| i128::from(*tokens) * i128::from(*price))
        .sum();
    Micros(i64::try_from((total + 999_999) / 1_000_000).unwrap())
}

fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream})
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
    let mut stream_with_usage = chat_body("gpt-4o", true);
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
            chat_body("gpt-4o", false),
            PROMPT_WORDS,
            REPLY_WORDS,
            gpt4o(PROMPT_WORDS, REPLY_WORDS),
        ),
        case(
            "chat stream, usage injected",
            "/v1/chat/completions",
            chat_body("gpt-4o", true),
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
async fn every_shape_is_billed_exactly(backend: Backend, test: &str) {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    let Some(gw) = Billed::simple(&mock, backend, test).await else {
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
    assert_eq!(gw.billing.metrics().records_dropped, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_is_billed_exactly_on_sqlite() {
    every_shape_is_billed_exactly(Backend::Sqlite, "every_shape_sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_is_billed_exactly_on_postgres() {
    every_shape_is_billed_exactly(Backend::Postgres, "every_shape_postgres").await;
}

/// Cached input, where the upstream reports it (`prompt_tokens_details`,
/// `input_tokens_details`, `cache_read_input_tokens`), is billed at the cached
/// price, streamed or not.
async fn cached_input_is_billed_at_the_cached_price(backend: Backend, test: &str) {
    const CACHED: u64 = 3;
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    mock.set_cached_tokens(CACHED as usize);
    let Some(gw) = Billed::simple(&mock, backend, test).await else {
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
    let mut stream_chat = chat_body("gpt-4o", true);
    stream_chat["stream_options"] = json!({"include_usage": true});
    let message = |stream: bool| {
        json!({"model": "claude-haiku-4-5", "max_tokens": 64, "stream": stream,
               "messages": [{"role": "user", "content": PROMPT}]})
    };
    let cases = [
        ("/v1/chat/completions", chat_body("gpt-4o", false), gpt4o),
        ("/v1/chat/completions", chat_body("gpt-4o", true), gpt4o),
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
    cached_input_is_billed_at_the_cached_price(Backend::Sqlite, "cached_sqlite").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_input_is_billed_at_the_cached_price_on_postgres() {
    cached_input_is_billed_at_the_cached_price(Backend::Postgres, "cached_postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_is_billed_exactly_in_memory() {
    every_shape_is_billed_exactly(Backend::Memory, "every_shape_memory").await;
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
    let gw = Billed::simple(&mock, Backend::Memory, "hidden")
        .await
        .unwrap();
    let key = gw.key().await;

    let direct = |body: &serde_json::Value| {
        json_request(
            &format!("{}/v1/chat/completions", mock.url()),
            "unused",
            body,
        )
    };
    let plain = chat_body("gpt-4o", true);
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

    let mut asked = chat_body("gpt-4o", true);
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
async fn concurrent_requests_never_overdraw(backend: Backend, test: &str, window: Duration) {
    let mock = MockUpstream::start().await;
    mock.set_reply(REPLY);
    mock.set_latency(Duration::from_millis(20));
    let Some(gw) = Billed::start(
        &mock,
        backend,
        test,
        |_, billing| billing.batch_window = window,
        |s| s,
        None,
    )
    .await
    else {
        return;
    };
    let mut body = chat_body("gpt-4o", false);
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
    assert_eq!(gw.billing.metrics().refused, 200 - ok as u64);
    assert_eq!(gw.billing.metrics().records_dropped, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overdraw_on_sqlite() {
    concurrent_requests_never_overdraw(Backend::Sqlite, "overdraw_sqlite", Duration::from_secs(1))
        .await;
}

/// The same with leases off: one store reservation per request.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overdraw_without_leases() {
    concurrent_requests_never_overdraw(Backend::Sqlite, "overdraw_strict", Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_overdraw_on_postgres() {
    concurrent_requests_never_overdraw(
        Backend::Postgres,
        "overdraw_postgres",
        Duration::from_secs(1),
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
    let Some(first) = Billed::simple(&mock, Backend::Postgres, "two_instances").await else {
        return;
    };
    let url = match &first._db {
        Some(Db::Postgres(pg)) => pg.url().to_owned(),
        _ => unreachable!(),
    };
    let second_store = DbStore::connect(&url).await.unwrap();
    let second = Billed::simple(
        &mock,
        Backend::Shared(Arc::new(second_store)),
        "two_instances",
    )
    .await
    .unwrap();
    let body = chat_body("gpt-4o", false);
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
    let gw = Billed::simple(&mock, Backend::Memory, "limit")
        .await
        .unwrap();
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
    let gw = Billed::simple(&mock, Backend::Memory, "unpriced")
        .await
        .unwrap();
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o-2024-08-06").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.text().contains("no price"), "{}", reply.text());

    let gw = Billed::start(
        &mock,
        Backend::Memory,
        "unpriced",
        |_, billing| billing.allow_unpriced = true,
        |s| s,
        None,
    )
    .await
    .unwrap();
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
    let gw = Billed::simple(&mock, Backend::Sqlite, "500").await.unwrap();
    let key = gw.key().await;
    for stream in [false, true] {
        let reply = post(
            &gw.url("/v1/chat/completions"),
            &key,
            &chat_body("gpt-4o", stream),
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
    assert_eq!(gw.billing.metrics().settled, 0);
}

/// No answer at all (a refused connection, a first-byte timeout): released.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_and_slow_upstreams_release_the_reservation() {
    let mock = MockUpstream::start().await;
    mock.hang();
    let gw = Billed::start(
        &mock,
        Backend::Memory,
        "timeout",
        |config, _| config.timeouts.first_byte = Duration::from_millis(200),
        |s| s,
        None,
    )
    .await
    .unwrap();
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000));
    assert_eq!(gw.records(1).await[0].status, 504);

    let closed = MockUpstream::start().await;
    let gw2 = Billed::simple(&closed, Backend::Memory, "refused")
        .await
        .unwrap();
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
    let gw = Billed::simple(&mock, Backend::Memory, "leave")
        .await
        .unwrap();
    let key = gw.key().await;
    let url = gw.url("/v1/chat/completions");
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        post(&url, &key, &chat_body("gpt-4o", false)),
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
    let gw = Billed::simple(&mock, Backend::Sqlite, "aborted")
        .await
        .unwrap();
    let key = gw.key().await;
    let body = chat_body("gpt-4o", true);
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
    let gw = Billed::start(
        &mock,
        Backend::Memory,
        "panic",
        |_, _| {},
        |s| s,
        Some(Arc::new(Panics)),
    )
    .await
    .unwrap();
    let key = gw.key().await;
    let sent = crate::harness::client()
        .request(json_request(
            &gw.url("/v1/chat/completions"),
            &key,
            &chat_body("gpt-4o", false),
        ))
        .await;
    assert!(
        sent.is_err(),
        "the connection should have died with the panic"
    );
    assert_eq!(gw.settled(&gw.account).await, Micros(1_000_000_000));
    let metrics = gw.billing.metrics();
    assert_eq!((metrics.holds, metrics.settled), (1, 0));
}

/// A ledger whose usage writes fail while `down` is set.
#[derive(Debug)]
struct FlakyLedger {
    inner: Arc<dyn Store>,
    down: AtomicBool,
    /// Answers a reservation this long after it committed, in milliseconds.
    reserve_reply_delay_ms: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Ledger for FlakyLedger {
    async fn reserve(&self, new: NewReservation) -> keygate_store::Result<Reserve> {
        let reserved = self.inner.reserve(new).await;
        let delay = self.reserve_reply_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        reserved
    }
    async fn settle(&self, r: &Reservation, cost: Micros) -> keygate_store::Result<()> {
        self.inner.settle(r, cost).await
    }
    async fn release(&self, r: &Reservation) -> keygate_store::Result<()> {
        self.inner.release(r).await
    }
    async fn sweep_reservations(&self, now: DateTime<Utc>) -> keygate_store::Result<u64> {
        self.inner.sweep_reservations(now).await
    }
    async fn key_spend(&self, key: &KeyId) -> keygate_store::Result<KeySpend> {
        self.inner.key_spend(key).await
    }
    async fn record_usage(&self, records: &[UsageRecord]) -> keygate_store::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("test: store switched off".into()));
        }
        self.inner.record_usage(records).await
    }
    async fn usage_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> keygate_store::Result<Vec<UsageRecord>> {
        self.inner.usage_between(since, until).await
    }
    async fn purge_usage(&self, before: DateTime<Utc>) -> keygate_store::Result<u64> {
        self.inner.purge_usage(before).await
    }
    async fn usage_report(
        &self,
        query: &keygate_store::UsageQuery,
    ) -> keygate_store::Result<Vec<keygate_store::UsageTotals>> {
        self.inner.usage_report(query).await
    }
}

#[async_trait]
impl CredentialStore for FlakyLedger {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn ping(&self) -> keygate_store::Result<()> {
        self.inner.ping().await
    }
    async fn create_account(
        &self,
        new: NewAccount,
    ) -> keygate_store::Result<keygate_store::Account> {
        self.inner.create_account(new).await
    }
    async fn get_account(&self, id: &AccountId) -> keygate_store::Result<keygate_store::Account> {
        self.inner.get_account(id).await
    }
    async fn list_accounts(&self) -> keygate_store::Result<Vec<keygate_store::Account>> {
        self.inner.list_accounts().await
    }
    async fn top_up(
        &self,
        id: &AccountId,
        amount: Micros,
    ) -> keygate_store::Result<keygate_store::Account> {
        self.inner.top_up(id, amount).await
    }
    async fn create_key(&self, new: NewApiKey) -> keygate_store::Result<keygate_store::ApiKey> {
        self.inner.create_key(new).await
    }
    async fn get_key(&self, id: &KeyId) -> keygate_store::Result<keygate_store::ApiKey> {
        self.inner.get_key(id).await
    }
    async fn find_key_by_hash(
        &self,
        hash: &keygate_keys::KeyHash,
    ) -> keygate_store::Result<Option<keygate_store::ApiKey>> {
        self.inner.find_key_by_hash(hash).await
    }
    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> keygate_store::Result<Vec<keygate_store::ApiKey>> {
        self.inner.list_keys(account).await
    }
    async fn update_key(
        &self,
        id: &KeyId,
        update: keygate_store::KeyUpdate,
    ) -> keygate_store::Result<keygate_store::ApiKey> {
        self.inner.update_key(id, update).await
    }
    async fn revoke_key(
        &self,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> keygate_store::Result<keygate_store::ApiKey> {
        self.inner.revoke_key(id, at).await
    }
    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: keygate_store::ReplacementKey,
        at: DateTime<Utc>,
    ) -> keygate_store::Result<(keygate_store::ApiKey, keygate_store::ApiKey)> {
        self.inner.rotate_key(id, replacement, at).await
    }
    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> keygate_store::Result<()> {
        self.inner.record_key_use(uses).await
    }
    async fn key_changes_since(
        &self,
        after: u64,
        limit: u32,
    ) -> keygate_store::Result<Vec<keygate_store::KeyChange>> {
        self.inner.key_changes_since(after, limit).await
    }
    async fn latest_key_change(&self) -> keygate_store::Result<u64> {
        self.inner.latest_key_change().await
    }
}

/// Usage writes fail for a while: the writer retries and loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn usage_records_survive_a_store_outage() {
    let mock = MockUpstream::start().await;
    let flaky: Arc<std::sync::Mutex<Option<Arc<FlakyLedger>>>> = Arc::default();
    let slot = Arc::clone(&flaky);
    let gw = Billed::start(
        &mock,
        Backend::Sqlite,
        "outage",
        |_, _| {},
        move |inner| {
            let ledger = Arc::new(FlakyLedger {
                inner,
                down: AtomicBool::new(true),
                reserve_reply_delay_ms: std::sync::atomic::AtomicU64::new(0),
            });
            *slot.lock().unwrap() = Some(Arc::clone(&ledger));
            ledger
        },
        None,
    )
    .await
    .unwrap();
    let flaky = flaky.lock().unwrap().clone().unwrap();
    let key = gw.key().await;
    for _ in 0..5 {
        let reply = gw.chat(&key, "gpt-4o").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.billing.metrics().records_written, 0);
    flaky.down.store(false, Ordering::SeqCst);
    assert_eq!(gw.records(5).await.len(), 5);
    assert_eq!(gw.billing.metrics().records_dropped, 0);
}

/// A client that goes away while its reservation is being taken (the store has
/// committed it, the answer is still on its way) strands nothing: the lease is
/// published or released all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_reservation_strands_nothing() {
    let mock = MockUpstream::start().await;
    for window in [Duration::ZERO, Duration::from_millis(200)] {
        let slot: Arc<std::sync::Mutex<Option<Arc<FlakyLedger>>>> = Arc::default();
        let inner_slot = Arc::clone(&slot);
        let gw = Billed::start(
            &mock,
            Backend::Memory,
            "mid_reserve",
            |_, billing| billing.batch_window = window,
            move |inner| {
                let ledger = Arc::new(FlakyLedger {
                    inner,
                    down: AtomicBool::new(false),
                    reserve_reply_delay_ms: std::sync::atomic::AtomicU64::new(400),
                });
                *inner_slot.lock().unwrap() = Some(Arc::clone(&ledger));
                ledger
            },
            None,
        )
        .await
        .unwrap();
        let key = gw.key().await;
        let url = gw.url("/v1/chat/completions");
        let attempt = tokio::time::timeout(
            Duration::from_millis(100),
            post(&url, &key, &chat_body("gpt-4o", false)),
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
        drop(slot);
    }
}

/// Graceful shutdown writes the records still queued.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_flushes_queued_usage_records() {
    let mock = MockUpstream::start().await;
    let gw = Billed::start(
        &mock,
        Backend::Sqlite,
        "flush",
        |_, billing| {
            billing.writer.flush_interval = Duration::from_secs(3600);
            billing.writer.batch_size = 1000;
        },
        |s| s,
        None,
    )
    .await
    .unwrap();
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
    assert_eq!(gw.billing.metrics().records_written, 0, "flushed too early");
    let store = Arc::clone(&gw.store);
    let billing = Arc::clone(&gw.billing);
    assert_eq!(gw.shutdown().await, Shutdown::Drained);
    let records = store
        .usage_between(DateTime::<Utc>::UNIX_EPOCH, Utc::now())
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(billing.metrics().records_dropped, 0);
}

/// Usage records name the client (`X-Client-Name`, else `User-Agent`) and keep
/// its address only when the operator turns that on.
#[tokio::test(flavor = "multi_thread")]
async fn usage_records_name_the_client_and_keep_no_address_by_default() {
    let mock = MockUpstream::start().await;
    for log_ip in [false, true] {
        let gw = Billed::start(
            &mock,
            Backend::Memory,
            "client",
            |_, billing| billing.log_client_ip = log_ip,
            |s| s,
            None,
        )
        .await
        .unwrap();
        let key = gw.key().await;
        let auth = format!("Bearer {key}");
        let body = chat_body("gpt-4o", false).to_string();
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
    let gw = Billed::simple(&mock, Backend::Sqlite, "purge")
        .await
        .unwrap();
    let key = gw.key().await;
    let reply = gw.chat(&key, "gpt-4o").await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut old = gw.records(1).await.remove(0);
    old.at = Utc::now() - chrono::Duration::days(91);
    gw.store.record_usage(&[old]).await.unwrap();
    assert_eq!(gw.records(2).await.len(), 2);
    // A second gateway on the same database purges at start-up (90 days).
    let second = Billed::simple(&mock, Backend::Shared(Arc::clone(&gw.store)), "purge")
        .await
        .unwrap();
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

/// A reservation a crash left behind is swept when the gateway starts.
#[tokio::test(flavor = "multi_thread")]
async fn expired_reservations_are_swept_at_start_up() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crash.db").display());
    let store = DbStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let account = store
        .create_account(NewAccount {
            name: "crashed".into(),
            email: None,
            balance: Micros(1000),
        })
        .await
        .unwrap();
    let secret = SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
    let key = store
        .create_key(NewApiKey {
            account_id: account.id.clone(),
            key_hash: secret.hash(),
            start: secret.start(),
            settings: KeySettings::new(KeyKind::Private),
        })
        .await
        .unwrap();
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
