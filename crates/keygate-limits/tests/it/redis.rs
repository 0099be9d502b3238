//! The Redis limiter: the same answers as the in-process one, shared by every
//! limiter on the server, all-or-nothing, slots held until released.

use std::sync::Arc;
use std::time::Duration;

use keygate_limits::{
    Check, Decision, Limiter, Limits, LocalLimiter, ManualClock, OnBackendError, Rate,
    RedisLimiter, RedisSettings, Refused, Slot, Verdict,
};
use keygate_test_utils::TestRedis;

fn limiter(redis: &TestRedis) -> RedisLimiter {
    RedisLimiter::new(&RedisSettings {
        url: redis.url.clone(),
        prefix: redis.prefix.clone(),
        timeout: Duration::from_secs(2),
    })
    .unwrap()
}

fn rates(rates: &[(&str, u64, u64)]) -> Check {
    Check {
        rates: rates
            .iter()
            .map(|(k, l, c)| Rate::new(*k, *l, *c))
            .collect(),
        slots: vec![],
    }
}

#[tokio::test]
async fn redis_and_local_give_the_same_answers() {
    let Some(redis) = TestRedis::create("redis_and_local_give_the_same_answers") else {
        return;
    };
    let shared = limiter(&redis);
    shared.ping().await.unwrap();
    // A limit of 5 per minute refills one token per 12 s: the test is over
    // long before, so both see the same levels.
    let local = LocalLimiter::manual(ManualClock::default());
    let steps = [1, 2, 1, 3, 1, 1];
    for cost in steps {
        let check = rates(&[("agree", 5, cost)]);
        let a = shared.check(&check, "l").await.unwrap();
        let b = local.check(&check, "l").await.unwrap();
        match (&a, &b) {
            (Verdict::Admitted { rates: x }, Verdict::Admitted { rates: y }) => {
                assert_eq!(x[0].remaining, y[0].remaining, "cost {cost}");
            }
            (Verdict::Refused(x), Verdict::Refused(y)) => {
                assert_eq!(x.by, y.by);
                assert_eq!(x.rates[0].remaining, y.rates[0].remaining);
                // One token short: 12 s, less what Redis refilled meanwhile.
                assert!(x.retry_after <= y.retry_after, "{x:?} {y:?}");
                assert!(x.retry_after > Duration::from_secs(1), "{x:?}");
            }
            _ => panic!("cost {cost}: redis {a:?}, local {b:?}"),
        }
    }
    // Corrections too.
    shared.adjust("agree", 5, -5).await.unwrap();
    local.adjust("agree", 5, -5).await.unwrap();
    let check = rates(&[("agree", 5, 5)]);
    assert!(matches!(
        shared.check(&check, "l").await.unwrap(),
        Verdict::Admitted { .. }
    ));
    assert!(matches!(
        local.check(&check, "l").await.unwrap(),
        Verdict::Admitted { .. }
    ));
}

#[tokio::test]
async fn a_refusal_takes_from_no_bucket() {
    let Some(redis) = TestRedis::create("a_refusal_takes_from_no_bucket") else {
        return;
    };
    let shared = limiter(&redis);
    assert!(matches!(
        shared.check(&rates(&[("b", 1, 1)]), "l").await.unwrap(),
        Verdict::Admitted { .. }
    ));
    match shared
        .check(&rates(&[("a", 10, 1), ("b", 1, 1)]), "l")
        .await
        .unwrap()
    {
        Verdict::Refused(r) => {
            assert_eq!(r.by, Refused::Rate(1));
            assert_eq!(r.rates[0].remaining, 10);
        }
        other => panic!("{other:?}"),
    }
    match shared.check(&rates(&[("a", 10, 10)]), "l").await.unwrap() {
        Verdict::Admitted { rates } => assert_eq!(rates[0].remaining, 0),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn many_instances_share_one_allowance() {
    let Some(redis) = TestRedis::create("many_instances_share_one_allowance") else {
        return;
    };
    // Three "instances", each its own connection, 300 checks at once on one
    // bucket of 60 per minute.
    let instances: Vec<Arc<RedisLimiter>> = (0..3).map(|_| Arc::new(limiter(&redis))).collect();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let limiter = Arc::clone(&instances[i % 3]);
        tasks.spawn(async move {
            let check = rates(&[("shared", 60, 1)]);
            matches!(
                limiter.check(&check, "l").await.unwrap(),
                Verdict::Admitted { .. }
            )
        });
    }
    let mut admitted = 0;
    while let Some(ok) = tasks.join_next().await {
        admitted += u64::from(ok.unwrap());
    }
    // 60 at once, then one a second for as long as the checks took.
    let bound = 60 + started.elapsed().as_secs() + 1;
    eprintln!("admitted {admitted} of 300 (bound {bound})");
    assert!(admitted >= 60 && admitted <= bound, "{admitted}");
}

#[tokio::test]
async fn slots_are_shared_and_given_back() {
    let Some(redis) = TestRedis::create("slots_are_shared_and_given_back") else {
        return;
    };
    let a = limiter(&redis);
    let b = limiter(&redis);
    let check = Check {
        rates: vec![],
        slots: vec![Slot {
            key: "par".into(),
            max: 2,
        }],
    };
    assert!(matches!(
        a.check(&check, "one").await.unwrap(),
        Verdict::Admitted { .. }
    ));
    assert!(matches!(
        b.check(&check, "two").await.unwrap(),
        Verdict::Admitted { .. }
    ));
    match a.check(&check, "three").await.unwrap() {
        Verdict::Refused(r) => assert_eq!(r.by, Refused::Slot(0)),
        other => panic!("{other:?}"),
    }
    b.release(&["par".to_owned()], "two").await.unwrap();
    assert!(matches!(
        a.check(&check, "three").await.unwrap(),
        Verdict::Admitted { .. }
    ));
    // Through `Limits`, the lease gives the slot back when dropped.
    let limits = Limits::shared(Arc::new(limiter(&redis)), OnBackendError::Deny);
    let one = Check {
        rates: vec![Rate::new("lease-rpm", 100, 1)],
        slots: vec![Slot {
            key: "lease-par".into(),
            max: 1,
        }],
    };
    let Decision::Admitted { lease, .. } = limits.check(&one).await.unwrap() else {
        panic!("refused");
    };
    assert!(matches!(
        limits.check(&one).await.unwrap(),
        Decision::Refused(_)
    ));
    drop(lease);
    // The release runs off the request path: wait for it, boundedly.
    let mut admitted = false;
    for _ in 0..200 {
        if let Decision::Admitted { .. } = limits.check(&one).await.unwrap() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted, "the dropped lease's slot never came back");
}

#[tokio::test]
async fn a_large_answer_puts_the_bucket_in_debt() {
    let Some(redis) = TestRedis::create("a_large_answer_puts_the_bucket_in_debt") else {
        return;
    };
    let shared = limiter(&redis);
    let check = rates(&[("tpm", 1000, 100)]);
    assert!(matches!(
        shared.check(&check, "l").await.unwrap(),
        Verdict::Admitted { .. }
    ));
    shared.adjust("tpm", 1000, 5000).await.unwrap();
    match shared
        .check(&rates(&[("tpm", 1000, 1)]), "l")
        .await
        .unwrap()
    {
        Verdict::Refused(r) => {
            assert!(r.retry_after > Duration::from_secs(59), "{r:?}");
            assert!(r.retry_after <= Duration::from_secs(120), "{r:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn windows_count_across_instances() {
    let Some(redis) = TestRedis::create("windows_count_across_instances") else {
        return;
    };
    let a = limiter(&redis);
    let b = limiter(&redis);
    let minute = Duration::from_secs(60);
    assert_eq!(a.window("fails", minute, true).await.unwrap().count, 1);
    assert_eq!(b.window("fails", minute, true).await.unwrap().count, 2);
    let peek = a.window("fails", minute, false).await.unwrap();
    assert_eq!(peek.count, 2);
    assert!(peek.resets_in <= minute);
    assert_eq!(b.window("other", minute, false).await.unwrap().count, 0);
}
