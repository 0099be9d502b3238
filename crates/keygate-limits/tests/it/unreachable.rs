//! A Redis that is not there (a loopback port nothing listens on): checks
//! follow `on_backend_error`, and the outage is counted.

use std::sync::Arc;
use std::time::Duration;

use keygate_limits::{
    Check, Decision, LimitError, Limits, OnBackendError, Rate, RedisLimiter, RedisSettings,
};

/// A loopback port that was free a moment ago and has no listener now.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn limits(on_error: OnBackendError) -> Limits {
    let redis = RedisLimiter::new(&RedisSettings {
        url: format!("redis://127.0.0.1:{}", closed_port()),
        prefix: "unreachable".into(),
        timeout: Duration::from_millis(500),
    })
    .unwrap();
    Limits::shared(Arc::new(redis), on_error)
}

fn check() -> Check {
    Check {
        rates: vec![Rate::new("k", 2, 1)],
        slots: vec![],
    }
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_local_limits() {
    let limits = limits(OnBackendError::Local);
    let mut admitted = 0;
    for _ in 0..3 {
        if let Decision::Admitted { .. } = limits.check(&check()).await.unwrap() {
            admitted += 1;
        }
    }
    // The local limiter still holds the limit.
    assert_eq!(admitted, 2);
    let m = limits.metrics();
    assert!(m.backend_errors >= 1, "{m:?}");
    assert_eq!(m.fallbacks, 3, "{m:?}");
}

#[tokio::test]
async fn an_unreachable_redis_denies_when_told_to() {
    let limits = limits(OnBackendError::Deny);
    assert!(matches!(
        limits.check(&check()).await,
        Err(LimitError::Unavailable(_))
    ));
    assert_eq!(limits.metrics().denied, 1);
}

#[test]
fn a_url_that_is_not_one_is_refused_without_echo() {
    let error = RedisLimiter::new(&RedisSettings {
        url: "http://user:hunter2@host".into(),
        prefix: "p".into(),
        timeout: Duration::from_secs(1),
    })
    .unwrap_err();
    assert!(!error.to_string().contains("hunter2"), "{error}");
}
