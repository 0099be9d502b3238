//! Leases against a memory store: sharing, retiring, sizing, shutdown.

use super::*;
use keygate_store::{CredentialStore, MemoryStore};
use keygate_test_utils::fixture;

#[derive(Default)]
struct Recorded(Mutex<Vec<(Reservation, Micros)>>);

impl Settler for Recorded {
    fn settle(&self, reservation: Reservation, cost: Micros) {
        lock(&self.0).push((reservation, cost));
    }
}

async fn setup(balance: i64) -> (Arc<MemoryStore>, AccountId, KeyId) {
    let store = Arc::new(MemoryStore::new());
    let (account, _, key) = fixture::account_and_key(&*store, Micros(balance)).await;
    (store, account.id, key.id)
}

fn leases(
    store: &Arc<MemoryStore>,
    settled: &Arc<Recorded>,
    window: Duration,
    ttl: Duration,
) -> Arc<Leases> {
    Arc::new(Leases::new(
        store.clone(),
        settled.clone(),
        window,
        ttl,
        crate::billing::tasks::HomeTasks::new(),
        false,
    ))
}

fn held(leased: Leased) -> LeaseHold {
    match leased {
        Leased::Held(hold) => hold,
        other => panic!("not held: {other:?}"),
    }
}

/// Shutdown's wait: until the last request in flight has ended and its
/// lease is settled, or the limit, which says how many are still open.
#[tokio::test]
async fn shutdown_waits_for_the_requests_still_in_flight() {
    let (store, account, key) = setup(1_000_000).await;
    let settled = Arc::new(Recorded::default());
    let leases = leases(
        &store,
        &settled,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    assert_eq!(leases.settled(Duration::ZERO).await, 0);
    let late = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    let stuck = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    leases.retire_all();
    assert_eq!(leases.settled(Duration::from_millis(50)).await, 1);
    drop(stuck);
    // Another key's request, ending a moment after shutdown began.
    let (other_account, _, other_key) = fixture::account_and_key(&*store, Micros(1_000_000)).await;
    let other = held(
        leases
            .hold(&other_account.id, &other_key.id, Micros(100))
            .await
            .unwrap(),
    );
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        late.settle(Micros(30));
        other.settle(Micros(40));
    });
    assert_eq!(leases.settled(Duration::from_secs(10)).await, 0);
    let mut costs: Vec<_> = lock(&settled.0).iter().map(|s| s.1).collect();
    costs.sort();
    assert_eq!(costs, [Micros(30), Micros(40)]);
}

#[tokio::test]
async fn requests_share_one_lease_until_it_is_retired() {
    let (store, account, key) = setup(1_000_000).await;
    let settled = Arc::new(Recorded::default());
    let leases = leases(
        &store,
        &settled,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let a = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    let b = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    // One store reservation of 32 requests' room.
    assert_eq!(
        store.get_account(&account).await.unwrap().reserved,
        Micros(3200)
    );
    a.settle(Micros(30));
    b.settle(Micros(40));
    assert!(lock(&settled.0).is_empty(), "settled before it was retired");
    leases.retire_all();
    let settled = lock(&settled.0);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].1, Micros(70));
}

#[tokio::test]
async fn a_poor_account_gets_a_lease_for_the_one_request() {
    let (store, account, key) = setup(250).await;
    let settled = Arc::new(Recorded::default());
    let leases = leases(
        &store,
        &settled,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let a = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    let b = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    assert!(matches!(
        leases.hold(&account, &key, Micros(100)).await.unwrap(),
        Leased::InsufficientBalance
    ));
    assert_eq!(
        store.get_account(&account).await.unwrap().reserved,
        Micros(200)
    );
    drop(a);
    b.settle(Micros(10));
    leases.retire_all();
    let costs: Vec<Micros> = lock(&settled.0).iter().map(|(_, c)| *c).collect();
    assert_eq!(costs.len(), 2);
    assert!(costs.contains(&Micros(0)) && costs.contains(&Micros(10)));
}

#[tokio::test]
async fn a_zero_window_settles_each_request_alone() {
    let (store, account, key) = setup(1_000).await;
    let settled = Arc::new(Recorded::default());
    let leases = leases(&store, &settled, Duration::ZERO, Duration::from_secs(60));
    let a = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    assert_eq!(
        store.get_account(&account).await.unwrap().reserved,
        Micros(100)
    );
    a.settle(Micros(7));
    assert_eq!(lock(&settled.0)[0].1, Micros(7));
}

#[tokio::test]
async fn a_busy_key_gets_its_next_lease_before_it_runs_out() {
    let (store, account, key) = setup(1_000_000).await;
    let settled = Arc::new(Recorded::default());
    let leases = leases(
        &store,
        &settled,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    let mut holds = Vec::new();
    for _ in 0..25 {
        holds.push(held(
            leases.hold(&account, &key, Micros(100)).await.unwrap(),
        ));
    }
    // 25 of 32 bounds held: a successor is being taken in the background.
    for _ in 0..100 {
        if lock(&settled.0).is_empty()
            && store.get_account(&account).await.unwrap().reserved > Micros(3200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reserved = store.get_account(&account).await.unwrap().reserved;
    assert!(reserved > Micros(3200), "no successor lease: {reserved}");
    // The next request draws on the successor without waiting.
    holds.push(held(
        leases.hold(&account, &key, Micros(3000)).await.unwrap(),
    ));
    for hold in holds {
        hold.settle(Micros(1));
    }
    // The first lease was retired by its successor and is settled.
    assert_eq!(lock(&settled.0)[0].1, Micros(25));
    leases.retire_all();
    assert_eq!(lock(&settled.0).len(), 2);
}

#[tokio::test]
async fn a_request_is_charged_at_most_its_hold_unless_allowed_more() {
    for (beyond, charged) in [(false, 100), (true, 1_000_000)] {
        let (store, account, key) = setup(1_000_000).await;
        let settled = Arc::new(Recorded::default());
        let leases = Arc::new(Leases::new(
            store.clone(),
            settled.clone(),
            Duration::ZERO,
            Duration::from_secs(60),
            crate::billing::tasks::HomeTasks::new(),
            beyond,
        ));
        let a = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
        assert_eq!(a.settle(Micros(1_000_000)), Micros(charged), "{beyond}");
        assert_eq!(lock(&settled.0)[0].1, Micros(charged), "{beyond}");
        let b = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
        assert_eq!(b.settle(Micros(-5)), Micros::ZERO, "a negative cost");
    }
}

#[tokio::test]
async fn old_leases_are_renewed() {
    let (store, account, key) = setup(1_000_000).await;
    let settled = Arc::new(Recorded::default());
    let leases = leases(
        &store,
        &settled,
        Duration::from_millis(1),
        Duration::from_secs(60),
    );
    let a = held(leases.hold(&account, &key, Micros(100)).await.unwrap());
    std::thread::sleep(Duration::from_millis(5));
    leases.renew();
    assert!(lock(&settled.0).is_empty(), "a request is still in flight");
    a.settle(Micros(5));
    assert_eq!(lock(&settled.0)[0].1, Micros(5));
    leases.renew();
    assert!(lock(&leases.shards[shard_of(&key)]).is_empty());
}
