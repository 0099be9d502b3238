//! The one gateway harness: a real gateway on 127.0.0.1:0 in front of a real mock
//! upstream, built by [`GatewayBuilder`] (backend, billing, taps, config, TLS, a
//! faulty store), with its store to make accounts and keys in, and a small hyper
//! client that records when each frame arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_billing::PriceTable;
use keygate_keys::KeyPrefix;
use keygate_proxy::{
    Billing, BillingConfig, Gateway, ProviderKey, ProviderKind, ProxyConfig, ResponseTap,
    ServerOptions, Shutdown, Tracing, UpstreamConfig, WriterSettings,
};
use keygate_store::{
    AccountId, CredentialStore, DbStore, KeyId, KeySettings, Ledger, MemoryStore, Micros,
    UsageRecord,
};
use keygate_test_utils::{MockUpstream, TestPostgres, fixture};
use tokio::sync::oneshot;

pub use crate::faults::{FaultyStore, Store};

pub const PROVIDER_KEY: &str = "sk-upstream-provider-key-0123456789";
pub const ANTHROPIC_PROVIDER_KEY: &str = "sk-ant-upstream-provider-key-0123456789";
/// What [`chat`] asks, five words.
pub const PROMPT: &str = "Say hello to the test";
/// The balance of every harness gateway's own account.
const FUNDS: Micros = Micros(1_000_000_000);

/// The key prefix the gateway expects and fixture keys carry.
pub fn prefix() -> KeyPrefix {
    fixture::prefix()
}

/// OpenAI and Anthropic upstreams, both on `mock`.
pub fn upstreams(mock: &MockUpstream) -> Vec<UpstreamConfig> {
    vec![
        UpstreamConfig {
            provider_keys: vec![ProviderKey::new(PROVIDER_KEY.into())],
            ..UpstreamConfig::new(
                "mock-openai",
                &format!("{}/v1", mock.url()),
                ProviderKind::OpenAi,
                vec![
                    "gpt-4o*".into(),
                    "o3".into(),
                    "text-embedding-3-small".into(),
                ],
            )
        },
        UpstreamConfig {
            provider_keys: vec![ProviderKey::new(ANTHROPIC_PROVIDER_KEY.into())],
            ..UpstreamConfig::new(
                "mock-anthropic",
                &format!("{}/v1", mock.url()),
                ProviderKind::Anthropic,
                vec!["claude-*".into()],
            )
        },
    ]
}

/// Where a gateway's accounts, keys and usage live.
pub enum Backend {
    Memory,
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database named after the test; the gateway is not
    /// started when `KEYGATE_TEST_POSTGRES_URL` is unset.
    Postgres(&'static str),
    /// Another gateway's store: a second instance on the same database.
    Shared(Arc<dyn Store>),
}

/// How to start a [`TestGateway`]: memory store, no billing, no taps, plain HTTP
/// and a 5 s grace period unless told otherwise.
pub struct GatewayBuilder {
    backend: Backend,
    config: ProxyConfig,
    billing: Option<BillingConfig>,
    taps: Vec<Arc<dyn ResponseTap>>,
    faulty: bool,
    options: ServerOptions,
    tracing: Option<Arc<Tracing>>,
}

impl GatewayBuilder {
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Changes the gateway's config (upstreams on the mock, a 100 ms change-feed
    /// poll) before it is built.
    pub fn config(mut self, tweak: impl FnOnce(&mut ProxyConfig)) -> Self {
        tweak(&mut self.config);
        self
    }

    /// Bills every request at `prices`, with a usage writer that flushes every 20 ms.
    pub fn billed(mut self, prices: PriceTable) -> Self {
        let mut billing = BillingConfig::new(prices);
        billing.writer = WriterSettings {
            queue_capacity: 10_000,
            batch_size: 64,
            flush_interval: Duration::from_millis(20),
        };
        self.billing = Some(billing);
        self
    }

    /// Changes the billing config; [`Self::billed`] comes first.
    pub fn billing(mut self, tweak: impl FnOnce(&mut BillingConfig)) -> Self {
        tweak(self.billing.as_mut().expect("billing() before billed()"));
        self
    }

    /// Traces every request through `tracing`.
    pub fn tracing(mut self, tracing: Arc<Tracing>) -> Self {
        self.tracing = Some(tracing);
        self
    }

    pub fn tap(mut self, tap: Arc<dyn ResponseTap>) -> Self {
        self.taps.push(tap);
        self
    }

    /// Puts a [`FaultyStore`] between the gateway and the backend, reached through
    /// [`TestGateway::faults`].
    pub fn faulty(mut self) -> Self {
        self.faulty = true;
        self
    }

    pub fn tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.options.tls = Some(tls);
        self
    }

    pub fn grace(mut self, grace: Duration) -> Self {
        self.options.grace = grace;
        self
    }

    /// Changes the server's options (connection limits and deadlines).
    pub fn server(mut self, tweak: impl FnOnce(&mut ServerOptions)) -> Self {
        tweak(&mut self.options);
        self
    }

    /// Starts the gateway; for a backend that is always there.
    pub async fn start(self) -> TestGateway {
        self.try_start()
            .await
            .expect("no PostgreSQL for this gateway: use try_start")
    }

    /// Starts the gateway, or `None` when its PostgreSQL is not configured.
    pub async fn try_start(self) -> Option<TestGateway> {
        let (store, database_url, db): (Arc<dyn Store>, _, Option<Db>) = match self.backend {
            Backend::Memory => (Arc::new(MemoryStore::new()), None, None),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
                let store = DbStore::connect(&url).await.unwrap();
                store.migrate().await.unwrap();
                (Arc::new(store), Some(url), Some(Db::Sqlite(dir)))
            }
            Backend::Postgres(test) => {
                let pg = TestPostgres::create(test).await?;
                let store = DbStore::connect(pg.url()).await.unwrap();
                store.migrate().await.unwrap();
                let url = pg.url().to_owned();
                (Arc::new(store), Some(url), Some(Db::Postgres(pg)))
            }
            Backend::Shared(store) => (store, None, None),
        };
        let (store, faults) = if self.faulty {
            let faults = Arc::new(FaultyStore::new(store));
            (Arc::clone(&faults) as Arc<dyn Store>, Some(faults))
        } else {
            (store, None)
        };
        let keys = Arc::clone(&store) as Arc<dyn CredentialStore>;
        let mut gateway = Gateway::new(self.config, keys).unwrap();
        let billing = self.billing.map(|config| {
            let ledger = Arc::clone(&store) as Arc<dyn Ledger>;
            Arc::new(Billing::new(config, ledger))
        });
        if let Some(billing) = &billing {
            gateway = gateway.with_billing(Arc::clone(billing));
        }
        for tap in self.taps {
            gateway = gateway.with_tap(tap);
        }
        if let Some(tracing) = self.tracing {
            gateway = gateway.with_tracing(tracing);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keygate_proxy::serve(
            listener,
            Arc::new(gateway),
            self.options,
            async {
                let _ = stopped.await;
            },
        ));
        let account = fixture::account(&*store, "test account", FUNDS).await.id;
        Some(TestGateway {
            addr,
            store,
            account,
            billing,
            faults,
            database_url,
            stop: Some(stop),
            task: Some(task),
            _db: db,
        })
    }
}

/// What must outlive a database-backed store.
#[allow(dead_code, reason = "held for their Drop")]
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(TestPostgres),
}

/// A running gateway and its own account, holding [`FUNDS`].
pub struct TestGateway {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub account: AccountId,
    billing: Option<Arc<Billing>>,
    faults: Option<Arc<FaultyStore>>,
    database_url: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Shutdown>>,
    _db: Option<Db>,
}

impl TestGateway {
    pub fn builder(mock: &MockUpstream) -> GatewayBuilder {
        let mut config = ProxyConfig::new(prefix(), upstreams(mock));
        config.auth.poll_interval = Duration::from_millis(100);
        GatewayBuilder {
            backend: Backend::Memory,
            config,
            billing: None,
            taps: Vec::new(),
            faulty: false,
            tracing: None,
            options: ServerOptions {
                grace: Duration::from_secs(5),
                ..ServerOptions::new()
            },
        }
    }

    /// A gateway on a memory store with everything else as it comes.
    pub async fn start(mock: &MockUpstream) -> Self {
        Self::builder(mock).start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The billing layer; the gateway must have been built [`GatewayBuilder::billed`].
    pub fn billing(&self) -> &Arc<Billing> {
        self.billing.as_ref().expect("the gateway is not billed")
    }

    /// The store's switches; the gateway must have been built [`GatewayBuilder::faulty`].
    pub fn faults(&self) -> &FaultyStore {
        self.faults
            .as_ref()
            .expect("the gateway's store is not faulty")
    }

    /// The database URL of a SQLite or PostgreSQL backend.
    pub fn database_url(&self) -> &str {
        self.database_url
            .as_deref()
            .expect("no database of its own")
    }

    /// Creates a key with `settings` on the gateway's account and returns the key
    /// text and its id.
    pub async fn key_with(&self, settings: KeySettings) -> (String, KeyId) {
        self.key_for(&self.account, settings).await
    }

    /// A private key with every scope on the gateway's account.
    pub async fn key(&self) -> String {
        let (secret, _) = fixture::private_key(&*self.store, &self.account).await;
        secret.expose().to_owned()
    }

    /// Creates another account, holding `balance`.
    pub async fn account_with(&self, balance: Micros) -> AccountId {
        fixture::account(&*self.store, "funded", balance).await.id
    }

    /// Creates a key with `settings` on `account` and returns the key text and its id.
    pub async fn key_for(&self, account: &AccountId, settings: KeySettings) -> (String, KeyId) {
        let (secret, key) = fixture::key(&*self.store, account, settings).await;
        (secret.expose().to_owned(), key.id)
    }

    /// The balance and the reserved money of `account`.
    pub async fn balance(&self, account: &AccountId) -> (Micros, Micros) {
        let account = self.store.get_account(account).await.unwrap();
        (account.balance, account.reserved)
    }

    /// Waits until `n` usage records are stored (at most 10 s), and returns them.
    pub async fn records(&self, n: usize) -> Vec<UsageRecord> {
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

    /// Waits until nothing is reserved on `account` (at most 10 s), and returns
    /// its balance.
    pub async fn settled(&self, account: &AccountId) -> Micros {
        for _ in 0..500 {
            let (balance, reserved) = self.balance(account).await;
            if reserved == Micros::ZERO {
                return balance;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the reservation on {account} was never released");
    }

    /// A non-streaming chat completion for `model`.
    pub async fn chat(&self, key: &str, model: &str) -> Reply {
        post(&self.url("/v1/chat/completions"), key, &chat(model, false)).await
    }

    /// Starts shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) -> Shutdown {
        self.begin_shutdown().await.unwrap()
    }

    /// Drops the server's future, as an embedder aborting its task would: no
    /// shutdown signal, no background stop.
    pub fn abort_server(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<Shutdown> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The OpenAI error code.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).unwrap()
}

pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A JSON POST with a Bearer key.
pub fn json_request(url: &str, key: &str, body: &serde_json::Value) -> Request<Full<Bytes>> {
    let auth = format!("Bearer {key}");
    request(
        Method::POST,
        url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
}

/// POSTs JSON with a Bearer key.
pub async fn post(url: &str, key: &str, body: &serde_json::Value) -> Reply {
    send(json_request(url, key, body)).await
}

/// A chat completion request body for `model` asking [`PROMPT`].
pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
    })
}

/// Each data frame of a streamed response with when it arrived.
pub async fn stream_frames(request: Request<Full<Bytes>>) -> (StatusCode, Vec<(Instant, Bytes)>) {
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push((Instant::now(), data));
        }
    }
    (status, frames)
}
