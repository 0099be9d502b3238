//! Criterion bench: one limit check as a request makes it (the key's rpm and
//! tpm buckets, and a slot taken and given back), in process and through
//! Redis (`KEYGATE_TEST_REDIS_URL`, a fresh prefix; skipped when unset).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keygate_limits::{
    Check, Decision, Limiter, Limits, LocalLimiter, OnBackendError, Rate, RedisLimiter,
    RedisSettings, Slot,
};
use keygate_test_utils::TestRedis;

/// What one request of a key with rpm, tpm and max_parallel checks; limits
/// no bench can exhaust (a bucket of 1e9 a minute refills 16.7 M a second, so
/// each take is 1 token: the cost of a take does not depend on its size).
fn request_check(slot: bool) -> Check {
    Check {
        rates: vec![
            Rate::new("key:key_bench:rpm", keygate_limits::MAX_LIMIT, 1),
            Rate::new("key:key_bench:tpm", keygate_limits::MAX_LIMIT, 1),
        ],
        slots: if slot {
            vec![Slot {
                key: "key:key_bench:parallel".into(),
                max: u32::MAX,
            }]
        } else {
            vec![]
        },
    }
}

fn time_limits(
    runtime: &tokio::runtime::Runtime,
    limits: &Limits,
    check: &Check,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            match limits.check(black_box(check)).await.unwrap() {
                Decision::Admitted { lease, .. } => drop(black_box(lease)),
                Decision::Refused(r) => panic!("refused: {r:?}"),
            }
        }
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("limit_check");
    group.throughput(Throughput::Elements(1));
    let local = LocalLimiter::new();
    let rates = request_check(false);
    group.bench_function("local/rpm_tpm", |b| {
        b.iter(|| local.check_now(black_box(&rates)).unwrap())
    });
    let limits = Limits::local();
    let with_slot = request_check(true);
    group.bench_function("local/rpm_tpm_slot", |b| {
        b.iter_custom(|iters| time_limits(&runtime, &limits, &with_slot, iters))
    });
    match TestRedis::create("limit_check redis") {
        None => eprintln!("limit_check/redis: skipped, set KEYGATE_TEST_REDIS_URL"),
        Some(redis) => {
            let shared = Arc::new(
                runtime
                    .block_on(async {
                        let limiter = RedisLimiter::new(&RedisSettings {
                            url: redis.url.clone(),
                            prefix: redis.prefix.clone(),
                            timeout: Duration::from_secs(2),
                        })?;
                        limiter.ping().await.map(|()| limiter)
                    })
                    .unwrap(),
            );
            group.bench_function("redis/rpm_tpm", |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(shared.check(black_box(&rates), "bench").await.unwrap());
                        }
                        start.elapsed()
                    })
                })
            });
            let limits = Limits::shared(shared, OnBackendError::Deny);
            group.bench_function("redis/rpm_tpm_slot", |b| {
                // The slot goes back off the request path, in a spawned task;
                // a current-thread runtime runs it at the next await.
                b.iter_custom(|iters| time_limits(&runtime, &limits, &with_slot, iters))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
