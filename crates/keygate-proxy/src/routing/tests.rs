//! Candidate selection without a network: tiers, weights, affinity, health and
//! the least-recently-failed fallback, over real `Upstream`s that are never
//! called.

use std::time::Duration;

use super::*;
use crate::config::defaults;
use crate::upstream::{ProviderKey, UpstreamConfig, UpstreamTimeouts};

fn upstream(name: &str, priority: i32, weight: u32, keys: usize) -> Arc<Upstream> {
    let config = UpstreamConfig {
        priority,
        weight,
        provider_keys: (0..keys)
            .map(|k| ProviderKey::new(format!("sk-{name}-{k}")))
            .collect(),
        ..UpstreamConfig::new(
            name,
            "http://127.0.0.1:9/v1",
            ProviderKind::OpenAi,
            vec!["gpt-*".into()],
        )
    };
    let timeouts = UpstreamTimeouts {
        connect: defaults::CONNECT_TIMEOUT,
        first_byte: defaults::FIRST_BYTE_TIMEOUT,
        idle: defaults::IDLE_TIMEOUT,
    };
    Arc::new(Upstream::new(&config, name, timeouts).unwrap())
}

fn router(upstreams: Vec<Arc<Upstream>>, affinity: Affinity) -> Router {
    let settings = RoutingSettings {
        affinity,
        breaker: BreakerSettings {
            failures: 2,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
        },
        ..RoutingSettings::default()
    };
    Router::with_settings(upstreams, settings)
}

fn picks(router: &Router, n: usize) -> Vec<usize> {
    let candidates = router.candidates(ProviderKind::OpenAi, "gpt-4o").unwrap();
    let mut counts = vec![0; router.upstreams().len()];
    for i in 0..n {
        let target = router
            .pick(
                &candidates,
                &Tried::default(),
                sticky_hash(&format!("key_{i}")),
            )
            .unwrap();
        counts[target.upstream] += 1;
    }
    counts
}

#[test]
fn one_upstream_per_model_routes_as_before() {
    let r = router(vec![upstream("a", 0, 1, 1)], Affinity::None);
    assert_eq!(picks(&r, 10), [10]);
    assert_eq!(r.route(ProviderKind::OpenAi, "gpt-4o").unwrap().name(), "a");
    assert!(matches!(
        r.candidates(ProviderKind::OpenAi, "claude-x"),
        Err(ProxyError::ModelNotFound(_))
    ));
}

#[test]
fn weights_split_within_five_points_over_2000_requests() {
    let r = router(
        vec![
            upstream("a", 0, 3, 1),
            upstream("b", 0, 1, 1),
            upstream("backup", 1, 100, 1),
        ],
        Affinity::None,
    );
    let counts = picks(&r, 2000);
    assert_eq!(
        counts[2], 0,
        "the second tier is not used while the first is up"
    );
    let share = counts[0] as f64 / 2000.0 * 100.0;
    assert!((share - 75.0).abs() <= 5.0, "{counts:?}");
}

#[test]
fn weights_split_under_affinity_too_and_each_key_sticks() {
    let r = router(
        vec![upstream("a", 0, 1, 1), upstream("b", 0, 1, 1)],
        Affinity::Key,
    );
    let counts = picks(&r, 2000);
    let share = counts[0] as f64 / 2000.0 * 100.0;
    assert!((share - 50.0).abs() <= 5.0, "{counts:?}");
    let candidates = r.candidates(ProviderKind::OpenAi, "gpt-4o").unwrap();
    let hash = sticky_hash("key_7");
    let first = r.pick(&candidates, &Tried::default(), hash).unwrap();
    for _ in 0..50 {
        assert_eq!(r.pick(&candidates, &Tried::default(), hash), Some(first));
    }
}

#[test]
fn a_tier_is_left_only_when_every_candidate_is_out() {
    let r = router(
        vec![
            upstream("a", 0, 1, 1),
            upstream("b", 0, 1, 1),
            upstream("c", 5, 1, 1),
        ],
        Affinity::None,
    );
    let candidates = r.candidates(ProviderKind::OpenAi, "gpt-4o").unwrap();
    let a = Target {
        upstream: 0,
        key: 0,
    };
    let b = Target {
        upstream: 1,
        key: 0,
    };
    // Two failures open a's breaker: every pick goes to b.
    r.report(a, Outcome::UpstreamFailed(Failure::Connection, None), false);
    r.report(a, Outcome::UpstreamFailed(Failure::Connection, None), false);
    assert_eq!(picks(&r, 20), [0, 20, 0]);
    // b out too: the next tier.
    r.report(b, Outcome::UpstreamFailed(Failure::Connection, None), false);
    r.report(b, Outcome::UpstreamFailed(Failure::Connection, None), false);
    assert_eq!(picks(&r, 5), [0, 0, 5]);
    // A request that tried c goes back to the least recently failed of a
    // and b rather than being refused.
    let mut tried = Tried::default();
    tried.upstream(Target {
        upstream: 2,
        key: 0,
    });
    assert_eq!(r.pick(&candidates, &tried, 0), Some(a));
    tried.upstream(a);
    assert_eq!(r.pick(&candidates, &tried, 0), Some(b));
    tried.upstream(b);
    assert_eq!(r.pick(&candidates, &tried, 0), None);
}

#[test]
fn pool_keys_rotate_and_a_refused_key_is_skipped_for_good() {
    let r = router(vec![upstream("a", 0, 1, 3)], Affinity::None);
    let candidates = r.candidates(ProviderKind::OpenAi, "gpt-4o").unwrap();
    let keys: Vec<usize> = (0..6)
        .map(|_| r.pick(&candidates, &Tried::default(), 0).unwrap().key)
        .collect();
    assert_eq!(keys, [0, 1, 2, 0, 1, 2]);
    r.report(
        Target {
            upstream: 0,
            key: 1,
        },
        Outcome::KeyRefused,
        false,
    );
    for _ in 0..10 {
        assert_ne!(r.pick(&candidates, &Tried::default(), 0).unwrap().key, 1);
    }
    // Even when the others are limited, a refused key is not tried.
    for key in [0, 2] {
        let t = Target { upstream: 0, key };
        r.report(
            t,
            Outcome::RateLimited(Some(Duration::from_secs(60))),
            false,
        );
    }
    let fallback = r.pick(&candidates, &Tried::default(), 0).unwrap();
    assert_ne!(fallback.key, 1);
    assert_eq!(r.metrics.keys_disabled[0].load(Ordering::Relaxed), 1);
}

#[test]
fn retry_after_keeps_a_key_out_while_others_serve() {
    let r = router(vec![upstream("a", 0, 1, 2)], Affinity::Key);
    let candidates = r.candidates(ProviderKind::OpenAi, "gpt-4o").unwrap();
    let hash = sticky_hash("one key");
    let first = r.pick(&candidates, &Tried::default(), hash).unwrap();
    r.report(
        first,
        Outcome::RateLimited(Some(Duration::from_secs(30))),
        false,
    );
    let moved = r.pick(&candidates, &Tried::default(), hash).unwrap();
    assert_ne!(moved.key, first.key, "affinity moves off a limited key");
    let mut tried = Tried::default();
    tried.key(moved);
    // The only other key is held off: the fallback still finds it.
    assert_eq!(r.pick(&candidates, &tried, hash), Some(first));
}

#[test]
fn a_half_open_breaker_lets_exactly_one_trial_through() {
    let settings = RoutingSettings {
        breaker: BreakerSettings {
            failures: 1,
            window: Duration::from_secs(60),
            cooldown: Duration::from_millis(1),
        },
        ..RoutingSettings::default()
    };
    let r = Router::with_settings(
        vec![upstream("a", 0, 1, 1), upstream("b", 0, 1, 1)],
        settings,
    );
    let a = Target {
        upstream: 0,
        key: 0,
    };
    r.report(a, Outcome::UpstreamFailed(Failure::Connection, None), false);
    // Wait out the 1 ms cooldown without asserting on time.
    while r.health[0].breaker.gate(Instant::now()) != Gate::Trial {
        std::thread::sleep(Duration::from_millis(1));
    }
    let counts = picks(&r, 10);
    assert_eq!(counts[0], 1, "one trial while it is half-open: {counts:?}");
    r.report(a, Outcome::Answered, false);
    let counts = picks(&r, 10);
    assert!(counts[0] >= 4, "closed again: {counts:?}");
}
