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
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate_store::{AccountId, KeyId};

mod support;

use support::{chat, start_billed};

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

fn request(c: &mut Criterion) {
    let runtime = support::runtime();
    let (mock, on, off) = runtime.block_on(async {
        let mock = support::quiet_mock().await;
        let on = start_billed(&mock, |_| {}, |g| g).await;
        let off = start_billed(&mock, |c| c.metrics.enabled = false, |g| g).await;
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
