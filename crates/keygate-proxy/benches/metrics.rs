//! Criterion bench: what the Prometheus metrics cost. `metrics/record`: what
//! one billed request records (in flight, status, duration, first byte,
//! tokens and cost), without and with the per-key families.
//! `metrics/request`: a whole billed chat completion through an in-process
//! gateway on loopback to a mock upstream, with metrics on and off.
//! `metrics/scrape`: one `/metrics` exposition after that traffic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_billing::{Price, PriceTable};
use keygate_proxy::{
    Billing, BillingConfig, Gateway, ProviderKey, ProviderKind, ProxyConfig, ServerOptions,
    UpstreamConfig,
};
use keygate_store::{AccountId, CredentialStore, KeyId, Ledger, MemoryStore, Micros};
use keygate_test_utils::{MockUpstream, fixture};

fn record(c: &mut Criterion) {
    let key = KeyId::generate();
    let account = AccountId::generate();
    let mut group = c.benchmark_group("metrics/record");
    for (name, per_key) in [("default", false), ("per_key", true)] {
        let metrics = keygate_proxy::bench::Metrics::new(per_key);
        group.bench_function(name, |b| {
            b.iter(|| metrics.record_request(black_box("gpt-4o"), (&key, &account)));
        });
    }
    group.finish();
}

/// A billed gateway on loopback in front of `mock`, with one key.
struct Running {
    url: String,
    auth: String,
    client: Client<HttpConnector, Full<Bytes>>,
    gateway: Arc<Gateway>,
}

async fn start(mock: &MockUpstream, metrics: bool) -> Running {
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
    let mut config = ProxyConfig::new(fixture::prefix(), vec![upstream]);
    config.metrics.enabled = metrics;
    let prices = PriceTable::from_iter([("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap())]);
    let ledger: Arc<dyn Ledger> = Arc::clone(&store) as Arc<dyn Ledger>;
    let billing = Arc::new(Billing::new(BillingConfig::new(prices), ledger));
    let credentials: Arc<dyn CredentialStore> = store;
    let gateway = Arc::new(
        Gateway::new(config, credentials)
            .unwrap()
            .with_billing(billing),
    );
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

async fn chat(gw: &Running) {
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

fn request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mock, on, off) = runtime.block_on(async {
        let mock = MockUpstream::start().await;
        mock.set_recording(false);
        mock.set_nodelay(true);
        let on = start(&mock, true).await;
        let off = start(&mock, false).await;
        (mock, on, off)
    });
    let mut group = c.benchmark_group("metrics/request");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("metrics_on", |b| b.iter(|| runtime.block_on(chat(&on))));
    group.bench_function("metrics_off", |b| b.iter(|| runtime.block_on(chat(&off))));
    group.finish();
    assert!(off.gateway.metrics_text().is_none());
    let mut group = c.benchmark_group("metrics/scrape");
    group.bench_function("exposition", |b| {
        b.iter(|| on.gateway.metrics_text().unwrap().len());
    });
    group.finish();
    drop(mock);
}

criterion_group!(benches, record, request);
criterion_main!(benches);
