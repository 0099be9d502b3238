//! Criterion bench: what routing costs. `routing/pick`: candidate selection per
//! request (candidates, tier and weight pick, health report) for one upstream,
//! four upstreams in two tiers with key pools, and the same under key affinity.
//! `routing/failover`: a whole request through an in-process gateway on
//! loopback to a mock upstream, directly and with a first candidate whose port
//! refuses connections (its breaker never opens here, so every request pays the
//! failover).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_proxy::{
    Affinity, BreakerSettings, Gateway, ProviderKey, ProviderKind, ProxyConfig, Router,
    RoutingSettings, Upstream, UpstreamConfig, defaults,
};
use keygate_store::{CredentialStore, MemoryStore, Micros};
use keygate_test_utils::fixture;

mod support;

use support::{Running, chat};

fn upstream(name: &str, url: &str, priority: i32, weight: u32, keys: usize) -> UpstreamConfig {
    UpstreamConfig {
        priority,
        weight,
        provider_keys: (0..keys)
            .map(|k| ProviderKey::new(format!("sk-{name}-{k}")))
            .collect(),
        ..UpstreamConfig::new(name, url, ProviderKind::OpenAi, vec!["gpt-4o*".into()])
    }
}

fn router(configs: &[UpstreamConfig], affinity: Affinity) -> Router {
    let timeouts = keygate_proxy::UpstreamTimeouts {
        connect: defaults::CONNECT_TIMEOUT,
        first_byte: defaults::FIRST_BYTE_TIMEOUT,
        idle: defaults::IDLE_TIMEOUT,
    };
    let upstreams = configs
        .iter()
        .map(|c| Arc::new(Upstream::new(c, &c.name, timeouts).unwrap()))
        .collect();
    let settings = RoutingSettings {
        affinity,
        ..RoutingSettings::default()
    };
    Router::with_settings(upstreams, settings)
}

fn pick(c: &mut Criterion) {
    let url = "http://127.0.0.1:9/v1";
    let one = router(&[upstream("a", url, 0, 1, 1)], Affinity::None);
    let four = [
        upstream("a", url, 0, 3, 3),
        upstream("b", url, 0, 1, 3),
        upstream("c", url, 1, 1, 3),
        upstream("d", url, 1, 1, 3),
    ];
    let spread = router(&four, Affinity::None);
    let sticky = router(&four, Affinity::Key);
    let mut group = c.benchmark_group("routing/pick");
    for (name, router) in [
        ("one_upstream", &one),
        ("four_upstreams_two_tiers_pools", &spread),
        ("four_upstreams_affinity", &sticky),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                keygate_proxy::bench::route(black_box(router), "gpt-4o", "key_0123456789abcdef")
                    .unwrap()
            });
        });
    }
    group.finish();
}

/// A gateway on loopback in front of `upstreams`, with one key.
async fn start(upstreams: Vec<UpstreamConfig>) -> Running {
    let store: Arc<dyn CredentialStore> = Arc::new(MemoryStore::new());
    let account = fixture::account(&*store, "bench", Micros(1_000_000_000)).await;
    let (secret, _) = fixture::private_key(&*store, &account.id).await;
    let mut config = ProxyConfig::new(fixture::prefix(), upstreams);
    config.routing.breaker = BreakerSettings {
        failures: u32::MAX,
        ..BreakerSettings::default()
    };
    support::serve(Arc::new(Gateway::new(config, store).unwrap()), &secret).await
}

fn failover(c: &mut Criterion) {
    let runtime = support::runtime();
    let (mock, direct, refused_first) = runtime.block_on(async {
        let mock = support::quiet_mock().await;
        let good = format!("{}/v1", mock.url());
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}/v1", closed.local_addr().unwrap());
        drop(closed);
        let direct = start(vec![upstream("good", &good, 0, 1, 1)]).await;
        let refused_first = start(vec![
            upstream("refused", &refused, 0, 1, 1),
            upstream("good", &good, 1, 1, 1),
        ])
        .await;
        (mock, direct, refused_first)
    });
    let mut group = c.benchmark_group("routing/failover");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("direct", |b| b.iter(|| runtime.block_on(chat(&direct))));
    group.bench_function("first_candidate_refused", |b| {
        b.iter(|| runtime.block_on(chat(&refused_first)));
    });
    group.finish();
    drop(mock);
}

criterion_group!(benches, pick, failover);
criterion_main!(benches);
