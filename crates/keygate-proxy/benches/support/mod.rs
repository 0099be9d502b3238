//! What the whole-request benches share: a billed gateway with one key on
//! loopback in front of a mock upstream, and one chat completion through it.

#![allow(dead_code, reason = "each bench uses part of it")]

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_billing::{Price, PriceTable};
use keygate_keys::SecretKey;
use keygate_proxy::{
    Billing, BillingConfig, Gateway, ProviderKey, ProviderKind, ProxyConfig, ServerOptions,
    UpstreamConfig,
};
use keygate_store::{CredentialStore, Ledger, MemoryStore, Micros};
use keygate_test_utils::{MockUpstream, fixture};

/// A gateway serving on loopback, with the key to call it.
pub(crate) struct Running {
    pub(crate) url: String,
    pub(crate) auth: String,
    pub(crate) client: Client<HttpConnector, Full<Bytes>>,
    pub(crate) gateway: Arc<Gateway>,
}

/// A gateway billing `gpt-4o` in front of `mock`, with one key; `config` and
/// `gateway` adjust it before it serves.
pub(crate) async fn start_billed(
    mock: &MockUpstream,
    config: impl FnOnce(&mut ProxyConfig),
    gateway: impl FnOnce(Gateway) -> Gateway,
) -> Running {
    let store = Arc::new(MemoryStore::new());
    let account = fixture::account(&*store, "bench", Micros(1_000_000_000_000)).await;
    let (secret, _) = fixture::private_key(&*store, &account.id).await;
    let upstream = UpstreamConfig {
        provider_keys: vec![ProviderKey::new("sk-bench".into())],
        ..UpstreamConfig::new(
            "openai",
            &format!("{}/v1", mock.url()),
            ProviderKind::OpenAi,
            vec!["gpt-4o*".into()],
        )
    };
    let mut proxy = ProxyConfig::new(fixture::prefix(), vec![upstream]);
    config(&mut proxy);
    let prices = PriceTable::from_iter([("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap())]);
    let ledger: Arc<dyn Ledger> = Arc::clone(&store) as Arc<dyn Ledger>;
    let billing = Arc::new(Billing::new(BillingConfig::new(prices), ledger));
    let credentials: Arc<dyn CredentialStore> = store;
    let built = Gateway::new(proxy, credentials)
        .unwrap()
        .with_billing(billing);
    serve(Arc::new(gateway(built)), &secret).await
}

/// Serves `gateway` on a loopback port; `secret` is the key the calls carry.
pub(crate) async fn serve(gateway: Arc<Gateway>, secret: &SecretKey) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Who waits: nobody; the runtime drops it when the bench ends.
    tokio::spawn(keygate_proxy::serve(
        listener,
        Arc::clone(&gateway),
        ServerOptions::new(),
        std::future::pending::<()>(),
    ));
    Running {
        url: format!("http://{addr}/v1/chat/completions"),
        auth: format!("Bearer {}", secret.expose()),
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        gateway,
    }
}

/// The runtime the whole-request benches drive their calls on.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A mock upstream that records nothing and answers without delay.
pub(crate) async fn quiet_mock() -> MockUpstream {
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    mock.set_nodelay(true);
    mock
}

/// One non-streamed chat completion, read to its end.
pub(crate) async fn chat(gw: &Running) {
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}"#;
    let request = Request::post(&gw.url)
        .header("authorization", &gw.auth)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = gw.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
}
