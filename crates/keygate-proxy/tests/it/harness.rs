//! A real gateway on 127.0.0.1:0 in front of a real mock upstream, a store to make
//! keys in, and a small hyper client that records when each frame arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_keys::{KeyHash, KeyKind, KeyPrefix, SecretKey};
use keygate_proxy::{
    Gateway, ProviderKey, ProviderKind, ProxyConfig, ServerOptions, Shutdown, UpstreamConfig,
};
use keygate_store::{
    Account, AccountId, ApiKey, CredentialStore, KeyChange, KeyId, KeySettings, KeyUpdate,
    MemoryStore, Micros, NewAccount, NewApiKey, ReplacementKey, StoreError,
};
use keygate_test_utils::MockUpstream;
use tokio::sync::oneshot;

pub const PROVIDER_KEY: &str = "sk-upstream-provider-key-0123456789";
pub const ANTHROPIC_PROVIDER_KEY: &str = "sk-ant-upstream-provider-key-0123456789";

pub fn prefix() -> KeyPrefix {
    KeyPrefix::new("kg").unwrap()
}

/// OpenAI and Anthropic upstreams, both on `mock`.
pub fn upstreams(mock: &MockUpstream) -> Vec<UpstreamConfig> {
    vec![
        UpstreamConfig {
            name: "mock-openai".into(),
            base_url: format!("{}/v1", mock.url()),
            kind: ProviderKind::OpenAi,
            provider_key: Some(ProviderKey::new(PROVIDER_KEY.into())),
            models: vec![
                "gpt-4o*".into(),
                "o3".into(),
                "text-embedding-3-small".into(),
            ],
            ca_file: None,
        },
        UpstreamConfig {
            name: "mock-anthropic".into(),
            base_url: format!("{}/v1", mock.url()),
            kind: ProviderKind::Anthropic,
            provider_key: Some(ProviderKey::new(ANTHROPIC_PROVIDER_KEY.into())),
            models: vec!["claude-*".into()],
            ca_file: None,
        },
    ]
}

/// A store whose every call can be made to fail as "unavailable".
#[derive(Debug)]
pub struct SwitchableStore {
    inner: MemoryStore,
    pub down: AtomicBool,
    /// Sleep between reading a key and returning it, in milliseconds.
    pub lookup_delay_ms: std::sync::atomic::AtomicU64,
}

impl SwitchableStore {
    pub fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            down: AtomicBool::new(false),
            lookup_delay_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn check(&self) -> keygate_store::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test: store switched off".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl CredentialStore for SwitchableStore {
    fn backend(&self) -> &'static str {
        "switchable"
    }
    async fn ping(&self) -> keygate_store::Result<()> {
        self.check()
    }
    async fn create_account(&self, new: NewAccount) -> keygate_store::Result<Account> {
        self.inner.create_account(new).await
    }
    async fn get_account(&self, id: &AccountId) -> keygate_store::Result<Account> {
        self.inner.get_account(id).await
    }
    async fn list_accounts(&self) -> keygate_store::Result<Vec<Account>> {
        self.inner.list_accounts().await
    }
    async fn top_up(&self, id: &AccountId, amount: Micros) -> keygate_store::Result<Account> {
        self.inner.top_up(id, amount).await
    }
    async fn create_key(&self, new: NewApiKey) -> keygate_store::Result<ApiKey> {
        self.inner.create_key(new).await
    }
    async fn get_key(&self, id: &KeyId) -> keygate_store::Result<ApiKey> {
        self.inner.get_key(id).await
    }
    async fn find_key_by_hash(&self, hash: &KeyHash) -> keygate_store::Result<Option<ApiKey>> {
        self.check()?;
        let found = self.inner.find_key_by_hash(hash).await;
        let delay = self.lookup_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        found
    }
    async fn list_keys(&self, account: Option<&AccountId>) -> keygate_store::Result<Vec<ApiKey>> {
        self.inner.list_keys(account).await
    }
    async fn update_key(&self, id: &KeyId, update: KeyUpdate) -> keygate_store::Result<ApiKey> {
        self.inner.update_key(id, update).await
    }
    async fn revoke_key(&self, id: &KeyId, at: DateTime<Utc>) -> keygate_store::Result<ApiKey> {
        self.inner.revoke_key(id, at).await
    }
    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: ReplacementKey,
        old_key_stops_at: DateTime<Utc>,
    ) -> keygate_store::Result<(ApiKey, ApiKey)> {
        self.inner
            .rotate_key(id, replacement, old_key_stops_at)
            .await
    }
    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> keygate_store::Result<()> {
        self.check()?;
        self.inner.record_key_use(uses).await
    }
    async fn key_changes_since(
        &self,
        after: u64,
        limit: u32,
    ) -> keygate_store::Result<Vec<KeyChange>> {
        self.check()?;
        self.inner.key_changes_since(after, limit).await
    }
    async fn latest_key_change(&self) -> keygate_store::Result<u64> {
        self.check()?;
        self.inner.latest_key_change().await
    }
}

/// A running gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub store: Arc<dyn CredentialStore>,
    pub account: AccountId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Shutdown>>,
}

impl TestGateway {
    pub async fn start(mock: &MockUpstream) -> Self {
        Self::start_with(
            mock,
            Arc::new(MemoryStore::new()),
            |_| {},
            ServerOptions {
                tls: None,
                grace: Duration::from_secs(5),
            },
        )
        .await
    }

    pub async fn start_with(
        mock: &MockUpstream,
        store: Arc<dyn CredentialStore>,
        tweak: impl FnOnce(&mut ProxyConfig),
        options: ServerOptions,
    ) -> Self {
        let mut config = ProxyConfig::new(prefix(), upstreams(mock));
        config.auth.poll_interval = Duration::from_millis(100);
        tweak(&mut config);
        let gateway = Arc::new(Gateway::new(config, Arc::clone(&store)).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keygate_proxy::serve(listener, gateway, options, async {
            let _ = stopped.await;
        }));
        let account = store
            .create_account(NewAccount {
                name: "test account".into(),
                email: None,
                balance: Micros(1_000_000_000),
            })
            .await
            .unwrap()
            .id;
        Self {
            addr,
            store,
            account,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Creates a key with `settings` and returns the key text and its id.
    pub async fn key_with(&self, settings: KeySettings) -> (String, KeyId) {
        let secret = SecretKey::generate(&prefix(), settings.kind).unwrap();
        let key = self
            .store
            .create_key(NewApiKey {
                account_id: self.account.clone(),
                key_hash: secret.hash(),
                start: secret.start(),
                settings,
            })
            .await
            .unwrap();
        (secret.expose().to_owned(), key.id)
    }

    /// A private key with every scope.
    pub async fn key(&self) -> String {
        self.key_with(KeySettings::new(KeyKind::Private)).await.0
    }

    /// Starts shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) -> Shutdown {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
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

pub fn chat(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello to the test"}],
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
