//! The backend-independent store tests. Each takes a [`Backend`] and must pass on
//! all of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use keygate_keys::{KeyKind, SecretKey};
use keygate_store::{
    Account, ApiKey, CredentialStore, KeySettings, KeySpend, KeyStatus, KeyUpdate, Micros,
    NewAccount, NewApiKey, NewReservation, ReplacementKey, Reservation, Reserve, Scope, ScopeSet,
    StoreError, UsageGroup, UsageQuery, UsageRecord, UsageSource, UsageTotals,
};

use keygate_test_utils::fixture;

use crate::Backend;

fn credits(n: i64) -> Micros {
    Micros(n * 1_000_000)
}

fn generate(kind: KeyKind) -> SecretKey {
    SecretKey::generate(&fixture::prefix(), kind).unwrap()
}

/// The stored key for `secret`, whatever its status.
async fn lookup(store: &dyn CredentialStore, secret: &SecretKey) -> Option<ApiKey> {
    store.find_key_by_hash(&secret.hash()).await.unwrap()
}

fn replacement() -> (SecretKey, ReplacementKey) {
    let secret = generate(KeyKind::Private);
    let replacement = ReplacementKey {
        key_hash: secret.hash(),
        start: secret.start(),
    };
    (secret, replacement)
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, field: &str) {
    match result {
        Err(StoreError::Invalid { field: f, .. }) if f == field => {}
        other => panic!("expected invalid {field}, got {other:?}"),
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::NotFound { .. })),
        "expected not found, got {result:?}"
    );
}

pub(crate) async fn accounts_are_created_listed_and_found(b: &Backend) {
    let store = b.store.as_ref();
    let acme = store
        .create_account(NewAccount {
            name: "Acme".into(),
            email: Some("ops@acme.example".into()),
            balance: credits(5),
        })
        .await
        .unwrap();
    let globex = fixture::account(store, "Globex", Micros::ZERO).await;
    assert!(acme.id.as_str().starts_with("acct_"));
    assert_eq!(acme.balance, credits(5));
    assert_eq!(acme.reserved, Micros::ZERO);
    let fetched = store.get_account(&acme.id).await.unwrap();
    assert_eq!(fetched.name, "Acme");
    assert_eq!(fetched.email.as_deref(), Some("ops@acme.example"));
    assert_eq!(fetched.balance, credits(5));
    let ids: Vec<_> = store
        .list_accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert!(ids.contains(&acme.id) && ids.contains(&globex.id));
    assert_eq!(ids.len(), 2);
}

pub(crate) async fn account_input_is_validated(b: &Backend) {
    let store = b.store.as_ref();
    let bad_name = NewAccount {
        name: String::new(),
        email: None,
        balance: Micros::ZERO,
    };
    assert_invalid(store.create_account(bad_name).await, "name");
    let bad_email = NewAccount {
        name: "x".into(),
        email: Some("not-an-email".into()),
        balance: Micros::ZERO,
    };
    assert_invalid(store.create_account(bad_email).await, "email");
    let negative = NewAccount {
        name: "x".into(),
        email: None,
        balance: Micros(-1),
    };
    assert_invalid(store.create_account(negative).await, "balance");
    assert!(store.list_accounts().await.unwrap().is_empty());
}

pub(crate) async fn top_ups_add_exactly_and_reject_bad_amounts(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let after = store
        .top_up(&acct.id, Micros::parse_credits("10.5").unwrap())
        .await
        .unwrap();
    assert_eq!(after.balance, Micros(10_500_000));
    let after = store.top_up(&acct.id, Micros(1)).await.unwrap();
    assert_eq!(after.balance, Micros(10_500_001));
    assert_invalid(store.top_up(&acct.id, Micros::ZERO).await, "amount");
    assert_invalid(store.top_up(&acct.id, Micros(-5)).await, "amount");
    assert_invalid(
        store
            .top_up(&acct.id, Micros(keygate_store::MAX_TOP_UP.0 + 1))
            .await,
        "amount",
    );
    assert_not_found(
        store
            .top_up(&"acct_0000000000000000".parse().unwrap(), Micros(1))
            .await,
    );
    assert_eq!(
        store.get_account(&acct.id).await.unwrap().balance,
        Micros(10_500_001)
    );
}

pub(crate) async fn concurrent_top_ups_lose_nothing(b: &Backend) {
    let acct = fixture::account(b.store.as_ref(), "busy", Micros::ZERO).await;
    let stores: Vec<Arc<dyn CredentialStore>> = std::iter::once(b.store.clone())
        .chain(b.other_process.clone())
        .collect();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = stores[i % stores.len()].clone();
        let id = acct.id.clone();
        tasks.push(tokio::spawn(async move {
            store.top_up(&id, credits(1)).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let balance = b.store.get_account(&acct.id).await.unwrap().balance;
    assert_eq!(balance, credits(60));
}

pub(crate) async fn keys_are_stored_by_hash_with_their_settings(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let expires = Utc::now() + TimeDelta::days(30);
    let settings = KeySettings {
        name: "ci runner".into(),
        scopes: "chat,models".parse().unwrap(),
        models: vec!["gpt-4o*".into(), "o3".into()],
        origins: vec!["https://app.example".into()],
        expires_at: Some(expires),
        rpm: Some(60),
        tpm: Some(100_000),
        max_parallel: Some(4),
        spend_limit: Some(credits(3)),
        metadata: [("team".to_owned(), "search".to_owned())].into(),
        ..KeySettings::new(KeyKind::Private)
    };
    let (secret, created) = fixture::key(store, &acct.id, settings).await;
    assert!(created.id.as_str().starts_with("key_"));
    assert_eq!(created.key_hash, secret.hash());
    assert_eq!(created.start, secret.start());
    let found = lookup(store, &secret).await.unwrap();
    assert_eq!(found.id, created.id);
    assert_eq!(found.account_id, acct.id);
    assert_eq!(found.name, "ci runner");
    assert_eq!(found.kind, KeyKind::Private);
    assert!(found.scopes.contains(Scope::Chat) && !found.scopes.contains(Scope::Embeddings));
    assert_eq!(found.models, vec!["gpt-4o*", "o3"]);
    assert_eq!(found.origins, vec!["https://app.example"]);
    assert_eq!(
        found.expires_at.map(|t| t.timestamp_millis()),
        Some(expires.timestamp_millis())
    );
    assert_eq!(
        (found.rpm, found.tpm, found.max_parallel),
        (Some(60), Some(100_000), Some(4))
    );
    assert_eq!(found.spend_limit, Some(credits(3)));
    assert_eq!(
        found.metadata.get("team").map(String::as_str),
        Some("search")
    );
    assert_eq!(found.revoked_at, None);
    assert_eq!(found.status(Utc::now()), KeyStatus::Active);
    assert_eq!(store.get_key(&created.id).await.unwrap(), found);
    let stranger = generate(KeyKind::Private);
    assert!(lookup(store, &stranger).await.is_none());
}

pub(crate) async fn key_input_is_validated(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let secret = generate(KeyKind::Public);
    let public_without_models = NewApiKey {
        account_id: acct.id.clone(),
        key_hash: secret.hash(),
        start: secret.start(),
        settings: KeySettings::new(KeyKind::Public),
    };
    assert_invalid(store.create_key(public_without_models).await, "models");
    let no_scopes = NewApiKey {
        account_id: acct.id.clone(),
        key_hash: secret.hash(),
        start: secret.start(),
        settings: KeySettings {
            scopes: ScopeSet::NONE,
            ..KeySettings::new(KeyKind::Private)
        },
    };
    assert_invalid(store.create_key(no_scopes).await, "scopes");
    assert!(store.list_keys(None).await.unwrap().is_empty());
    assert_eq!(store.latest_key_change().await.unwrap(), 0);
}

pub(crate) async fn key_for_unknown_account_is_not_found(b: &Backend) {
    let secret = generate(KeyKind::Private);
    let result = b
        .store
        .create_key(NewApiKey {
            account_id: "acct_ffffffffffffffff".parse().unwrap(),
            key_hash: secret.hash(),
            start: secret.start(),
            settings: KeySettings::new(KeyKind::Private),
        })
        .await;
    assert_not_found(result);
}

pub(crate) async fn duplicate_key_hash_is_a_conflict(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let (secret, _) = fixture::private_key(store, &acct.id).await;
    let again = store
        .create_key(NewApiKey {
            account_id: acct.id.clone(),
            key_hash: secret.hash(),
            start: secret.start(),
            settings: KeySettings::new(KeyKind::Private),
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(store.list_keys(None).await.unwrap().len(), 1);
}

pub(crate) async fn keys_list_by_account(b: &Backend) {
    let store = b.store.as_ref();
    let a = fixture::account(store, "a", Micros::ZERO).await;
    let other = fixture::account(store, "b", Micros::ZERO).await;
    let (_, a1) = fixture::private_key(store, &a.id).await;
    let (_, a2) = fixture::private_key(store, &a.id).await;
    let (_, b1) = fixture::private_key(store, &other.id).await;
    let of_a: Vec<_> = store
        .list_keys(Some(&a.id))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(of_a.len(), 2);
    assert!(of_a.contains(&a1.id) && of_a.contains(&a2.id));
    assert_eq!(store.list_keys(None).await.unwrap().len(), 3);
    assert_eq!(store.list_keys(Some(&other.id)).await.unwrap()[0].id, b1.id);
}

pub(crate) async fn update_changes_only_what_it_names(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let settings = KeySettings {
        name: "before".into(),
        rpm: Some(10),
        spend_limit: Some(credits(1)),
        expires_at: Some(Utc::now() + TimeDelta::hours(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (secret, created) = fixture::key(store, &acct.id, settings).await;
    let updated = store
        .update_key(
            &created.id,
            KeyUpdate {
                name: Some("after".into()),
                scopes: Some("embeddings".parse().unwrap()),
                rpm: Some(None),
                expires_at: Some(None),
                tpm: Some(Some(500)),
                max_parallel: Some(None),
                ..KeyUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.name, "after");
    assert_eq!(updated.scopes, "embeddings".parse().unwrap());
    assert_eq!(
        (updated.rpm, updated.tpm, updated.max_parallel),
        (None, Some(500), None)
    );
    assert_eq!(updated.expires_at, None);
    assert_eq!(
        updated.spend_limit,
        Some(credits(1)),
        "untouched field kept"
    );
    assert_eq!(updated.key_hash, secret.hash());
    let stored = lookup(store, &secret).await.unwrap();
    assert_eq!(stored, updated);
}

pub(crate) async fn update_that_breaks_a_rule_is_refused(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let public = KeySettings {
        models: vec!["gpt-4o-mini".into()],
        ..KeySettings::new(KeyKind::Public)
    };
    let (_, created) = fixture::key(store, &acct.id, public).await;
    let before = store.latest_key_change().await.unwrap();
    let cleared = KeyUpdate {
        models: Some(Vec::new()),
        ..KeyUpdate::default()
    };
    assert_invalid(store.update_key(&created.id, cleared).await, "models");
    assert_eq!(
        store.get_key(&created.id).await.unwrap().models,
        vec!["gpt-4o-mini"]
    );
    assert_eq!(
        store.latest_key_change().await.unwrap(),
        before,
        "no change recorded"
    );
}

pub(crate) async fn revoke_is_immediate_and_keeps_the_earliest_time(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let (secret, created) = fixture::private_key(store, &acct.id).await;
    let now = Utc::now();
    let revoked = store.revoke_key(&created.id, now).await.unwrap();
    assert_eq!(revoked.status(Utc::now()), KeyStatus::Revoked);
    let found = lookup(store, &secret).await.unwrap();
    assert_eq!(found.status(Utc::now()), KeyStatus::Revoked);
    let again = store
        .revoke_key(&created.id, now + TimeDelta::days(1))
        .await
        .unwrap();
    assert_eq!(
        again.revoked_at.map(|t| t.timestamp_millis()),
        Some(now.timestamp_millis())
    );
}

pub(crate) async fn expired_keys_report_expired(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let settings = KeySettings {
        expires_at: Some(Utc::now() - TimeDelta::seconds(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (secret, _) = fixture::key(store, &acct.id, settings).await;
    let found = lookup(store, &secret).await.unwrap();
    assert_eq!(found.status(Utc::now()), KeyStatus::Expired);
    let soon = KeySettings {
        expires_at: Some(Utc::now() + TimeDelta::hours(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (_, later) = fixture::key(store, &acct.id, soon).await;
    assert_eq!(later.status(Utc::now()), KeyStatus::Active);
    assert_eq!(
        later.status(Utc::now() + TimeDelta::hours(2)),
        KeyStatus::Expired
    );
}

pub(crate) async fn rotate_now_revokes_the_old_key(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let settings = KeySettings {
        name: "svc".into(),
        models: vec!["o3".into()],
        rpm: Some(7),
        ..KeySettings::new(KeyKind::Private)
    };
    let (old_secret, old) = fixture::key(store, &acct.id, settings).await;
    let (new_secret, replacement) = replacement();
    let (new, old_after) = store
        .rotate_key(&old.id, replacement, Utc::now())
        .await
        .unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(new.account_id, acct.id);
    assert_eq!((new.name.as_str(), new.rpm), ("svc", Some(7)));
    assert_eq!(new.models, vec!["o3"]);
    assert_eq!(new.key_hash, new_secret.hash());
    assert_eq!(old_after.status(Utc::now()), KeyStatus::Revoked);
    let old_found = lookup(store, &old_secret).await.unwrap();
    assert_eq!(old_found.status(Utc::now()), KeyStatus::Revoked);
    let new_found = lookup(store, &new_secret).await.unwrap();
    assert_eq!(new_found.status(Utc::now()), KeyStatus::Active);
}

pub(crate) async fn rotate_with_grace_keeps_the_old_key_until_then(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let (old_secret, old) = fixture::private_key(store, &acct.id).await;
    let grace_end = Utc::now() + TimeDelta::hours(24);
    let (_, replacement) = replacement();
    store
        .rotate_key(&old.id, replacement, grace_end)
        .await
        .unwrap();
    let old_found = lookup(store, &old_secret).await.unwrap();
    assert_eq!(old_found.status(Utc::now()), KeyStatus::Active);
    assert_eq!(
        old_found.status(grace_end + TimeDelta::seconds(1)),
        KeyStatus::Revoked
    );
}

pub(crate) async fn rotate_of_a_revoked_key_is_a_conflict(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let (_, old) = fixture::private_key(store, &acct.id).await;
    store.revoke_key(&old.id, Utc::now()).await.unwrap();
    let (new_secret, replacement) = replacement();
    let result = store.rotate_key(&old.id, replacement, Utc::now()).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert!(lookup(store, &new_secret).await.is_none());
}

pub(crate) async fn rotate_of_an_expired_key_is_a_conflict(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let settings = KeySettings {
        expires_at: Some(Utc::now() - TimeDelta::seconds(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (_, old) = fixture::key(store, &acct.id, settings).await;
    let (new_secret, replacement) = replacement();
    let result = store.rotate_key(&old.id, replacement, Utc::now()).await;
    assert!(
        matches!(&result, Err(StoreError::Conflict(m)) if m.contains("expired")),
        "{result:?}"
    );
    assert!(lookup(store, &new_secret).await.is_none());
    assert_eq!(store.get_key(&old.id).await.unwrap().revoked_at, None);
}

pub(crate) async fn every_key_change_is_in_the_feed_in_order(b: &Backend) {
    let store = b.store.as_ref();
    assert_eq!(store.latest_key_change().await.unwrap(), 0);
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let (_, k1) = fixture::private_key(store, &acct.id).await;
    let start = store.latest_key_change().await.unwrap();
    assert!(start > 0);
    store
        .update_key(
            &k1.id,
            KeyUpdate {
                rpm: Some(Some(5)),
                ..KeyUpdate::default()
            },
        )
        .await
        .unwrap();
    store.revoke_key(&k1.id, Utc::now()).await.unwrap();
    let (_, k2) = fixture::private_key(store, &acct.id).await;
    let (_, replacement) = replacement();
    let (k3, _) = store
        .rotate_key(&k2.id, replacement, Utc::now())
        .await
        .unwrap();

    let changes = store.key_changes_since(start, 100).await.unwrap();
    let ids: Vec<_> = changes.iter().map(|c| c.key_id.clone()).collect();
    assert_eq!(
        ids,
        vec![
            k1.id.clone(),
            k1.id.clone(),
            k2.id.clone(),
            k3.id.clone(),
            k2.id.clone()
        ]
    );
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(changes[0].key_hash, k1.key_hash);
    assert_eq!(store.latest_key_change().await.unwrap(), changes[4].seq);
    let limited = store.key_changes_since(start, 2).await.unwrap();
    assert_eq!(limited, changes[..2]);
    assert!(
        store
            .key_changes_since(changes[4].seq, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn feed_is_shared_between_processes(b: &Backend) {
    let Some(other) = &b.other_process else {
        return; // The memory store lives in one process by definition.
    };
    let acct = fixture::account(b.store.as_ref(), "a", Micros::ZERO).await;
    let (secret, created) = fixture::private_key(b.store.as_ref(), &acct.id).await;
    let seen = b.store.latest_key_change().await.unwrap();
    other.revoke_key(&created.id, Utc::now()).await.unwrap();
    let changes = b.store.key_changes_since(seen, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key_hash, secret.hash());
    let found = lookup(b.store.as_ref(), &secret).await.unwrap();
    assert_eq!(found.status(Utc::now()), KeyStatus::Revoked);
}

pub(crate) async fn last_used_only_moves_forward(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "a", Micros::ZERO).await;
    let (_, k) = fixture::private_key(store, &acct.id).await;
    let t1 = Utc::now();
    let t0 = t1 - TimeDelta::minutes(5);
    let unknown = "key_0000000000000000".parse().unwrap();
    store
        .record_key_use(&[
            (k.id.clone(), t0),
            (k.id.clone(), t1),
            (unknown, t1),
            (k.id.clone(), t0),
        ])
        .await
        .unwrap();
    store.record_key_use(&[(k.id.clone(), t0)]).await.unwrap();
    store.record_key_use(&[]).await.unwrap();
    let stored = store.get_key(&k.id).await.unwrap();
    assert_eq!(
        stored.last_used_at.map(|t| t.timestamp_millis()),
        Some(t1.timestamp_millis())
    );
}

pub(crate) async fn revoke_racing_lookups_is_seen_by_every_later_lookup(b: &Backend) {
    let acct = fixture::account(b.store.as_ref(), "a", Micros::ZERO).await;
    let (secret, created) = fixture::private_key(b.store.as_ref(), &acct.id).await;
    let hash = secret.hash();
    let revoker = b.other_process.clone().unwrap_or_else(|| b.store.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut lookups = Vec::new();
    for _ in 0..4 {
        let store = b.store.clone();
        let done = done.clone();
        lookups.push(tokio::spawn(async move {
            let mut seen = 0_u32;
            loop {
                // Read the flag before the lookup: if it was already set, the revoke
                // had committed, and this lookup must see it.
                let after_revoke = done.load(std::sync::atomic::Ordering::SeqCst);
                let key = store.find_key_by_hash(&hash).await.unwrap().unwrap();
                let status = key.status(Utc::now());
                if after_revoke {
                    assert_eq!(status, KeyStatus::Revoked);
                    return seen;
                }
                assert!(matches!(status, KeyStatus::Active | KeyStatus::Revoked));
                seen += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    revoker.revoke_key(&created.id, Utc::now()).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for lookup in lookups {
        total += lookup.await.unwrap();
    }
    assert!(total > 0, "lookups ran before the revoke");
}

pub(crate) async fn unknown_ids_are_not_found(b: &Backend) {
    let store = b.store.as_ref();
    let key_id = "key_0123456789abcdef".parse().unwrap();
    let acct_id = "acct_0123456789abcdef".parse().unwrap();
    assert_not_found(store.get_account(&acct_id).await);
    assert_not_found(store.get_key(&key_id).await);
    assert_not_found(store.update_key(&key_id, KeyUpdate::default()).await);
    assert_not_found(store.revoke_key(&key_id, Utc::now()).await);
    assert_not_found(store.rotate_key(&key_id, replacement().1, Utc::now()).await);
}

pub(crate) async fn concurrent_key_changes_from_two_processes_all_land(b: &Backend) {
    let acct = fixture::account(b.store.as_ref(), "a", Micros::ZERO).await;
    let stores: Vec<Arc<dyn CredentialStore>> = std::iter::once(b.store.clone())
        .chain(b.other_process.clone())
        .collect();
    let start = b.store.latest_key_change().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = stores[i % stores.len()].clone();
        let acct = acct.clone();
        tasks.push(tokio::spawn(async move {
            let (_, k) = fixture::private_key(store.as_ref(), &acct.id).await;
            store
                .update_key(
                    &k.id,
                    KeyUpdate {
                        rpm: Some(Some(1)),
                        ..KeyUpdate::default()
                    },
                )
                .await
                .unwrap();
            let (_, replacement) = replacement();
            store
                .rotate_key(&k.id, replacement, Utc::now())
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Per key: create, update, rotate (new key), revoke (old key).
    let changes = b.store.key_changes_since(start, 1000).await.unwrap();
    assert_eq!(changes.len(), 24 * 4);
    assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(b.store.list_keys(Some(&acct.id)).await.unwrap().len(), 48);
}

// The ledger.

async fn funded(backend: &Backend, credit: i64, limit: Option<i64>) -> (Account, ApiKey) {
    let acct = fixture::account(&*backend.store, "ledger", Micros::ZERO).await;
    backend
        .store
        .top_up(&acct.id, credits(credit))
        .await
        .unwrap();
    let mut settings = KeySettings::new(KeyKind::Private);
    settings.spend_limit = limit.map(credits);
    let (_, key) = fixture::key(&*backend.store, &acct.id, settings).await;
    (acct, key)
}

fn hold(acct: &Account, key: &ApiKey, amount: Micros) -> NewReservation {
    NewReservation {
        account_id: acct.id.clone(),
        key_id: key.id.clone(),
        amount,
        expires_at: Utc::now() + TimeDelta::minutes(10),
    }
}

fn held(outcome: Reserve) -> Reservation {
    match outcome {
        Reserve::Held(r) => r,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

pub(crate) async fn reservations_settle_and_release_exact_money(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 10, None).await;
    let first = held(ledger.reserve(hold(&acct, &key, credits(3))).await.unwrap());
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!((shown.balance, shown.reserved), (credits(10), credits(3)));
    assert_eq!(
        ledger.reserve(hold(&acct, &key, credits(8))).await.unwrap(),
        Reserve::InsufficientBalance
    );
    let second = held(ledger.reserve(hold(&acct, &key, credits(7))).await.unwrap());
    assert_eq!(
        ledger.reserve(hold(&acct, &key, Micros(1))).await.unwrap(),
        Reserve::InsufficientBalance,
        "exactly all of it is held"
    );

    ledger.settle(&first, Micros(1_250_001)).await.unwrap();
    ledger.release(&second).await.unwrap();
    ledger.release(&second).await.unwrap();
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!(shown.balance, Micros(10_000_000 - 1_250_001));
    assert_eq!(shown.reserved, Micros::ZERO);
    let spend = ledger.key_spend(&key.id).await.unwrap();
    assert_eq!(
        spend,
        KeySpend {
            spent: Micros(1_250_001),
            reserved: Micros::ZERO
        }
    );

    let other = fixture::account(&*backend.store, "other", Micros::ZERO).await;
    let err = ledger
        .reserve(hold(&other, &key, credits(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = ledger
        .reserve(hold(&acct, &key, Micros(-1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}

pub(crate) async fn spend_limits_hold_reservations_and_charges(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 100, Some(2)).await;
    let first = held(
        ledger
            .reserve(hold(&acct, &key, Micros(1_500_000)))
            .await
            .unwrap(),
    );
    assert_eq!(
        ledger.reserve(hold(&acct, &key, credits(1))).await.unwrap(),
        Reserve::SpendLimitExceeded
    );
    ledger.settle(&first, Micros(1_500_000)).await.unwrap();
    let rest = held(
        ledger
            .reserve(hold(&acct, &key, Micros(500_000)))
            .await
            .unwrap(),
    );
    assert_eq!(
        ledger.reserve(hold(&acct, &key, Micros(1))).await.unwrap(),
        Reserve::SpendLimitExceeded
    );
    ledger.release(&rest).await.unwrap();
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!(
        (shown.balance, shown.reserved),
        (Micros(98_500_000), Micros::ZERO)
    );
}

pub(crate) async fn concurrent_reservations_never_overdraw(backend: &Backend) {
    let (acct, key) = funded(backend, 10, None).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let ledger = if i % 2 == 0 {
            backend.ledger.clone()
        } else {
            backend.other_ledger.clone()
        };
        let new = hold(&acct, &key, credits(1));
        tasks.push(tokio::spawn(
            async move { ledger.reserve(new).await.unwrap() },
        ));
    }
    let mut reservations = Vec::new();
    for task in tasks {
        if let Reserve::Held(r) = task.await.unwrap() {
            reservations.push(r);
        }
    }
    assert_eq!(reservations.len(), 10, "exactly the balance is held");
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!(shown.reserved, credits(10));
    let mut tasks = Vec::new();
    for (i, r) in reservations.into_iter().enumerate() {
        let ledger = if i % 2 == 0 {
            backend.ledger.clone()
        } else {
            backend.other_ledger.clone()
        };
        tasks.push(tokio::spawn(async move {
            ledger.settle(&r, Micros(500_000)).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!((shown.balance, shown.reserved), (credits(5), Micros::ZERO));
    assert_eq!(
        backend.ledger.key_spend(&key.id).await.unwrap().spent,
        credits(5)
    );
}

pub(crate) async fn expired_reservations_are_swept(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 10, Some(10)).await;
    let mut stale = hold(&acct, &key, credits(4));
    stale.expires_at = Utc::now() - TimeDelta::seconds(1);
    let stale = held(ledger.reserve(stale).await.unwrap());
    let live = held(ledger.reserve(hold(&acct, &key, credits(2))).await.unwrap());
    assert_eq!(ledger.sweep_reservations(Utc::now()).await.unwrap(), 1);
    assert_eq!(ledger.sweep_reservations(Utc::now()).await.unwrap(), 0);
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!(shown.reserved, credits(2));
    assert_eq!(
        ledger.key_spend(&key.id).await.unwrap().reserved,
        credits(2)
    );
    // A request that finishes after its reservation was swept is still charged,
    // once: a settlement retried (its first answer lost) changes nothing.
    ledger.settle(&stale, credits(1)).await.unwrap();
    ledger.settle(&stale, credits(1)).await.unwrap();
    ledger.release(&live).await.unwrap();
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!((shown.balance, shown.reserved), (credits(9), Micros::ZERO));
    assert_eq!(ledger.key_spend(&key.id).await.unwrap().spent, credits(1));
}

pub(crate) async fn settling_twice_charges_once(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 10, None).await;
    let r = held(ledger.reserve(hold(&acct, &key, credits(3))).await.unwrap());
    ledger.settle(&r, credits(2)).await.unwrap();
    ledger.settle(&r, credits(2)).await.unwrap();
    ledger.release(&r).await.unwrap();
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!((shown.balance, shown.reserved), (credits(8), Micros::ZERO));
    let spend = ledger.key_spend(&key.id).await.unwrap();
    assert_eq!((spend.spent, spend.reserved), (credits(2), Micros::ZERO));
}

pub(crate) async fn settling_past_the_balance_saturates_at_what_can_be_paid(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 10, None).await;
    let first = held(ledger.reserve(hold(&acct, &key, credits(3))).await.unwrap());
    let other = held(ledger.reserve(hold(&acct, &key, credits(2))).await.unwrap());
    // 3 held by `first` plus 5 free: 8 can be paid; `other`'s 2 stay covered.
    assert_eq!(
        ledger.settle(&first, Micros(i64::MAX)).await.unwrap(),
        credits(8)
    );
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!((shown.balance, shown.reserved), (credits(2), credits(2)));
    assert_eq!(ledger.settle(&other, credits(5)).await.unwrap(), credits(2));
    assert_eq!(
        ledger.settle(&other, credits(5)).await.unwrap(),
        Micros::ZERO
    );
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!(
        (shown.balance, shown.reserved),
        (Micros::ZERO, Micros::ZERO)
    );
    assert_eq!(ledger.key_spend(&key.id).await.unwrap().spent, credits(10));
    // A swept reservation settled late saturates too, at zero.
    let mut stale = hold(&acct, &key, Micros::ZERO);
    stale.expires_at = Utc::now() - TimeDelta::seconds(1);
    let stale = held(ledger.reserve(stale).await.unwrap());
    ledger.sweep_reservations(Utc::now()).await.unwrap();
    assert_eq!(
        ledger.settle(&stale, credits(1)).await.unwrap(),
        Micros::ZERO
    );
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!(shown.balance, Micros::ZERO);
    // A reservation too large for any account is refused, not an overflow.
    assert_eq!(
        ledger
            .reserve(hold(&acct, &key, Micros(i64::MAX)))
            .await
            .unwrap(),
        Reserve::InsufficientBalance
    );
}

pub(crate) async fn settling_past_the_spend_limit_saturates_at_the_limit(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 100, Some(5)).await;
    let first = held(ledger.reserve(hold(&acct, &key, credits(1))).await.unwrap());
    let other = held(ledger.reserve(hold(&acct, &key, credits(1))).await.unwrap());
    // The limit leaves 5 - 1 (held by `other`) = 4.
    assert_eq!(
        ledger.settle(&first, credits(50)).await.unwrap(),
        credits(4)
    );
    assert_eq!(
        ledger.settle(&other, Micros(i64::MAX)).await.unwrap(),
        credits(1)
    );
    let spend = ledger.key_spend(&key.id).await.unwrap();
    assert_eq!((spend.spent, spend.reserved), (credits(5), Micros::ZERO));
    let shown = backend.store.get_account(&acct.id).await.unwrap();
    assert_eq!((shown.balance, shown.reserved), (credits(95), Micros::ZERO));
    assert_eq!(
        ledger.reserve(hold(&acct, &key, Micros(1))).await.unwrap(),
        Reserve::SpendLimitExceeded
    );
}

pub(crate) async fn usage_records_are_never_refused_for_their_numbers(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 1, None).await;
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let record = UsageRecord {
        at: now,
        key_id: key.id.clone(),
        account_id: acct.id.clone(),
        model: "m".into(),
        upstream: "openai".into(),
        input_tokens: u64::MAX,
        output_tokens: i64::MAX as u64 + 1,
        cached_tokens: u64::MAX,
        cost: Micros(1),
        latency_ms: u64::MAX,
        ttfb_ms: u64::MAX,
        stream: true,
        status: 200,
        client_name: None,
        usage_source: UsageSource::Capped,
        client_ip: None,
        attempts: 3,
    };
    ledger
        .record_usage(std::slice::from_ref(&record))
        .await
        .unwrap();
    let found = ledger
        .usage_between(now, now + TimeDelta::seconds(1))
        .await
        .unwrap();
    let max = i64::MAX as u64;
    assert_eq!(
        found,
        vec![UsageRecord {
            input_tokens: max,
            output_tokens: max,
            cached_tokens: max,
            latency_ms: max,
            ttfb_ms: max,
            ..record
        }]
    );
}

pub(crate) async fn usage_records_round_trip_and_purge(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 1, None).await;
    let now = Utc::now();
    let record = |minutes_ago: i64, model: &str| UsageRecord {
        at: DateTime::from_timestamp_millis(
            (now - TimeDelta::minutes(minutes_ago)).timestamp_millis(),
        )
        .unwrap(),
        key_id: key.id.clone(),
        account_id: acct.id.clone(),
        model: model.to_owned(),
        upstream: "openai".into(),
        input_tokens: 1200,
        output_tokens: 7,
        cached_tokens: 1024,
        cost: Micros(1_337),
        latency_ms: 812,
        ttfb_ms: 95,
        stream: minutes_ago % 2 == 0,
        status: 200,
        client_name: (minutes_ago == 1).then(|| "my-app/1.0".to_owned()),
        usage_source: if minutes_ago == 3 {
            UsageSource::Estimated
        } else {
            UsageSource::Reported
        },
        client_ip: None,
        attempts: 1,
    };
    let records = vec![
        record(3, "gpt-4o"),
        record(1, "gpt-4o-mini"),
        record(2, "o3"),
    ];
    ledger.record_usage(&records).await.unwrap();
    let found = ledger
        .usage_between(now - TimeDelta::hours(1), now + TimeDelta::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![records[0].clone(), records[2].clone(), records[1].clone()]
    );
    assert_eq!(
        ledger
            .purge_usage(now - TimeDelta::seconds(150))
            .await
            .unwrap(),
        1
    );
    let found = ledger
        .usage_between(now - TimeDelta::hours(1), now + TimeDelta::seconds(1))
        .await
        .unwrap();
    assert_eq!(found.len(), 2);

    let mut bad = record(0, &"m".repeat(257));
    assert!(matches!(
        ledger.record_usage(&[bad.clone()]).await,
        Err(StoreError::Invalid { .. })
    ));
    bad.model = "ok".into();
    bad.client_name = Some("c".repeat(101));
    assert!(matches!(
        ledger.record_usage(&[record(0, "fine"), bad]).await,
        Err(StoreError::Invalid { .. })
    ));
    let found = ledger
        .usage_between(now - TimeDelta::hours(1), now + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "a refused batch stores nothing");
}

/// A batch as large as the usage writer hands over at load: written in
/// chunks of every size the SQL backends use (64 rows, 8, single rows), every
/// row back as written, the optional fields both set and unset.
pub(crate) async fn usage_records_in_large_batches_round_trip(backend: &Backend) {
    let ledger = &*backend.ledger;
    let (acct, key) = funded(backend, 1, None).await;
    let start = Utc::now() - TimeDelta::hours(1);
    let record = |i: i64| UsageRecord {
        at: DateTime::from_timestamp_millis((start + TimeDelta::seconds(i)).timestamp_millis())
            .unwrap(),
        key_id: key.id.clone(),
        account_id: acct.id.clone(),
        model: format!("model-{i}"),
        upstream: if i % 2 == 0 { "openai" } else { "azure" }.into(),
        input_tokens: 1000 + i as u64,
        output_tokens: i as u64,
        cached_tokens: (i % 5) as u64,
        cost: Micros(10 * i),
        latency_ms: 100 + i as u64,
        ttfb_ms: i as u64,
        stream: i % 3 == 0,
        status: if i % 7 == 0 { 500 } else { 200 },
        client_name: (i % 2 == 0).then(|| format!("app-{i}")),
        usage_source: match i % 4 {
            0 => UsageSource::Reported,
            1 => UsageSource::Estimated,
            2 => UsageSource::Unknown,
            _ => UsageSource::Capped,
        },
        client_ip: (i % 3 == 1).then(|| format!("192.0.2.{}", i % 250)),
        attempts: (i % 3) as u32,
    };
    // 75 = 64 + 8 + 3, then 139 = 2 × 64 + 8 + 3.
    let first: Vec<UsageRecord> = (0..75).map(record).collect();
    let second: Vec<UsageRecord> = (75..214).map(record).collect();
    ledger.record_usage(&first).await.unwrap();
    ledger.record_usage(&second).await.unwrap();
    let mut found = ledger
        .usage_between(start - TimeDelta::seconds(1), Utc::now())
        .await
        .unwrap();
    found.sort_by_key(|r| r.at);
    let written: Vec<UsageRecord> = first.into_iter().chain(second).collect();
    assert_eq!(found.len(), written.len());
    assert_eq!(found, written);
}

// Usage reports.

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

fn usage(when: &str, key: &ApiKey, model: &str, tokens: (u64, u64, u64), cost: i64) -> UsageRecord {
    UsageRecord {
        at: at(when),
        key_id: key.id.clone(),
        account_id: key.account_id.clone(),
        model: model.to_owned(),
        upstream: "openai".into(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        cached_tokens: tokens.2,
        cost: Micros(cost),
        latency_ms: 100,
        ttfb_ms: 10,
        stream: false,
        status: 200,
        client_name: None,
        usage_source: UsageSource::Reported,
        client_ip: None,
        attempts: 1,
    }
}

fn totals(group: &str, requests: u64, tokens: (u64, u64, u64), cost: i64) -> UsageTotals {
    UsageTotals {
        group: group.to_owned(),
        requests,
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        cached_tokens: tokens.2,
        cost: Micros(cost),
    }
}

/// 2^53 + 1: a total that went through a float would come back one short.
const BEYOND_FLOAT: i64 = 9_007_199_254_740_993;

/// Two accounts, three keys and usage over three days of March 2026, plus one
/// record just before and one exactly at the end of the window.
struct UsageFixture {
    key_a1: ApiKey,
    key_a2: ApiKey,
    key_b: ApiKey,
    query: UsageQuery,
}

async fn usage_fixture(backend: &Backend) -> UsageFixture {
    let store = &*backend.store;
    let acct_a = fixture::account(store, "a", Micros::ZERO).await;
    let acct_b = fixture::account(store, "b", Micros::ZERO).await;
    let (_, key_a1) = fixture::private_key(store, &acct_a.id).await;
    let (_, key_a2) = fixture::private_key(store, &acct_a.id).await;
    let (_, key_b) = fixture::private_key(store, &acct_b.id).await;
    let records = vec![
        usage("2026-02-28T23:59:59.999Z", &key_a1, "gpt-4o", (1, 1, 1), 1),
        usage(
            "2026-03-01T00:00:00Z",
            &key_a1,
            "gpt-4o",
            (100, 10, 50),
            1_000,
        ),
        usage(
            "2026-03-01T23:59:59.999Z",
            &key_a2,
            "gpt-4o",
            (200, 20, 0),
            2_000,
        ),
        usage("2026-03-02T00:00:00Z", &key_a1, "o3", (300, 30, 100), 3_001),
        usage(
            "2026-03-02T12:00:00Z",
            &key_b,
            "gpt-4o",
            (400, 40, 0),
            4_000,
        ),
        usage(
            "2026-03-03T08:00:00Z",
            &key_b,
            "GPT-4o",
            (500, 50, 7),
            5_000,
        ),
        usage(
            "2026-03-03T09:00:00Z",
            &key_a2,
            "claude-sonnet",
            (600, 60, 600),
            6_000,
        ),
        usage(
            "2026-03-03T23:00:00Z",
            &key_a1,
            "o3",
            (4_294_967_297, 0, 0),
            BEYOND_FLOAT,
        ),
        usage("2026-03-04T00:00:00Z", &key_b, "o3", (1, 1, 1), 1),
    ];
    backend.ledger.record_usage(&records).await.unwrap();
    UsageFixture {
        key_a1,
        key_a2,
        key_b,
        query: UsageQuery {
            since: at("2026-03-01T00:00:00Z"),
            until: at("2026-03-04T00:00:00Z"),
            account: None,
            key: None,
            group_by: UsageGroup::Model,
        },
    }
}

pub(crate) async fn usage_report_totals_by_model_in_byte_order(backend: &Backend) {
    let f = usage_fixture(backend).await;
    let report = backend.ledger.usage_report(&f.query).await.unwrap();
    assert_eq!(
        report,
        vec![
            totals("GPT-4o", 1, (500, 50, 7), 5_000),
            totals("claude-sonnet", 1, (600, 60, 600), 6_000),
            totals("gpt-4o", 3, (700, 70, 50), 7_000),
            totals("o3", 2, (4_294_967_597, 30, 100), BEYOND_FLOAT + 3_001),
        ]
    );
}

pub(crate) async fn usage_report_totals_by_key(backend: &Backend) {
    let f = usage_fixture(backend).await;
    let query = UsageQuery {
        group_by: UsageGroup::Key,
        ..f.query.clone()
    };
    let report = backend.ledger.usage_report(&query).await.unwrap();
    let mut expected = vec![
        totals(
            f.key_a1.id.as_str(),
            3,
            (4_294_967_697, 40, 150),
            BEYOND_FLOAT + 4_001,
        ),
        totals(f.key_a2.id.as_str(), 2, (800, 80, 600), 8_000),
        totals(f.key_b.id.as_str(), 2, (900, 90, 7), 9_000),
    ];
    expected.sort_by(|a, b| a.group.cmp(&b.group));
    assert_eq!(report, expected);
}

pub(crate) async fn usage_report_totals_by_utc_day(backend: &Backend) {
    let f = usage_fixture(backend).await;
    let query = UsageQuery {
        group_by: UsageGroup::Day,
        ..f.query.clone()
    };
    let report = backend.ledger.usage_report(&query).await.unwrap();
    assert_eq!(
        report,
        vec![
            totals("2026-03-01", 2, (300, 30, 50), 3_000),
            totals("2026-03-02", 2, (700, 70, 100), 7_001),
            totals(
                "2026-03-03",
                3,
                (4_294_968_397, 110, 607),
                BEYOND_FLOAT + 11_000
            ),
        ]
    );

    // Days before 1970 round down too: 23:00 on 1969-12-31 is that day, not the next.
    backend
        .ledger
        .record_usage(&[
            usage("1969-12-31T00:00:00Z", &f.key_b, "m", (1, 0, 0), 1),
            usage("1969-12-31T23:00:00Z", &f.key_b, "m", (2, 0, 0), 2),
            usage("1970-01-01T00:00:00Z", &f.key_b, "m", (4, 0, 0), 4),
            usage("1970-01-01T23:59:59.999Z", &f.key_b, "m", (8, 0, 0), 8),
        ])
        .await
        .unwrap();
    let query = UsageQuery {
        since: at("1969-01-01T00:00:00Z"),
        until: at("1971-01-01T00:00:00Z"),
        ..query
    };
    assert_eq!(
        backend.ledger.usage_report(&query).await.unwrap(),
        vec![
            totals("1969-12-31", 2, (3, 0, 0), 3),
            totals("1970-01-01", 2, (12, 0, 0), 12),
        ]
    );
}

pub(crate) async fn usage_report_filters_by_account_key_and_window(backend: &Backend) {
    let f = usage_fixture(backend).await;
    let ledger = &*backend.ledger;
    let report = |query: UsageQuery| async move { ledger.usage_report(&query).await.unwrap() };

    let account_a = UsageQuery {
        account: Some(f.key_a1.account_id.clone()),
        ..f.query.clone()
    };
    assert_eq!(
        report(account_a.clone()).await,
        vec![
            totals("claude-sonnet", 1, (600, 60, 600), 6_000),
            totals("gpt-4o", 2, (300, 30, 50), 3_000),
            totals("o3", 2, (4_294_967_597, 30, 100), BEYOND_FLOAT + 3_001),
        ]
    );

    let key_a1_by_day = UsageQuery {
        key: Some(f.key_a1.id.clone()),
        group_by: UsageGroup::Day,
        ..f.query.clone()
    };
    assert_eq!(
        report(key_a1_by_day).await,
        vec![
            totals("2026-03-01", 1, (100, 10, 50), 1_000),
            totals("2026-03-02", 1, (300, 30, 100), 3_001),
            totals("2026-03-03", 1, (4_294_967_297, 0, 0), BEYOND_FLOAT),
        ]
    );

    let both = UsageQuery {
        key: Some(f.key_a2.id.clone()),
        group_by: UsageGroup::Key,
        ..account_a.clone()
    };
    assert_eq!(
        report(both).await,
        vec![totals(f.key_a2.id.as_str(), 2, (800, 80, 600), 8_000)]
    );
    let key_of_another_account = UsageQuery {
        key: Some(f.key_b.id.clone()),
        ..account_a
    };
    assert_eq!(report(key_of_another_account).await, vec![]);

    // `since` is inclusive and `until` exclusive, to the millisecond.
    let narrow = UsageQuery {
        since: at("2026-03-01T23:59:59.999Z"),
        until: at("2026-03-02T12:00:00Z"),
        group_by: UsageGroup::Day,
        ..f.query.clone()
    };
    assert_eq!(
        report(narrow).await,
        vec![
            totals("2026-03-01", 1, (200, 20, 0), 2_000),
            totals("2026-03-02", 1, (300, 30, 100), 3_001),
        ]
    );
    let wider = UsageQuery {
        since: at("2026-02-01T00:00:00Z"),
        until: at("2026-04-01T00:00:00Z"),
        group_by: UsageGroup::Day,
        ..f.query.clone()
    };
    let days: Vec<String> = report(wider).await.into_iter().map(|t| t.group).collect();
    assert_eq!(
        days,
        [
            "2026-02-28",
            "2026-03-01",
            "2026-03-02",
            "2026-03-03",
            "2026-03-04"
        ]
    );
    for (since, until) in [
        (f.query.since, f.query.since),
        (f.query.until, f.query.since),
        (at("2030-01-01T00:00:00Z"), at("2031-01-01T00:00:00Z")),
    ] {
        let empty = UsageQuery {
            since,
            until,
            ..f.query.clone()
        };
        assert_eq!(report(empty).await, vec![], "{since} to {until}");
    }
}

pub(crate) async fn usage_report_refuses_totals_past_63_bits(backend: &Backend) {
    let (_, key) = funded(backend, 1, None).await;
    let huge = i64::MAX.unsigned_abs();
    backend
        .ledger
        .record_usage(&[
            usage("2026-03-01T00:00:00Z", &key, "m", (huge, 0, 0), 0),
            usage("2026-03-01T00:00:01Z", &key, "m", (1, 0, 0), 0),
        ])
        .await
        .unwrap();
    let query = UsageQuery {
        since: at("2026-03-01T00:00:00Z"),
        until: at("2026-03-02T00:00:00Z"),
        account: None,
        key: None,
        group_by: UsageGroup::Model,
    };
    let err = backend.ledger.usage_report(&query).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
}

pub(crate) async fn an_account_tier_is_set_cleared_and_fed_to_its_keys(b: &Backend) {
    let store = b.store.as_ref();
    let acct = fixture::account(store, "tiered", Micros::ZERO).await;
    assert_eq!(acct.tier, None);
    let (_, k1) = fixture::private_key(store, &acct.id).await;
    let (_, k2) = fixture::private_key(store, &acct.id).await;
    let other = fixture::account(store, "other", Micros::ZERO).await;
    let (_, k3) = fixture::private_key(store, &other.id).await;
    let start = store.latest_key_change().await.unwrap();
    let set = store
        .set_account_tier(&acct.id, Some("free".into()))
        .await
        .unwrap();
    assert_eq!(set.tier.as_deref(), Some("free"));
    assert_eq!(
        store.get_account(&acct.id).await.unwrap().tier.as_deref(),
        Some("free")
    );
    let mut changed: Vec<_> = store
        .key_changes_since(start, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.key_id)
        .collect();
    changed.sort();
    let mut expected = vec![k1.id.clone(), k2.id.clone()];
    expected.sort();
    assert_eq!(changed, expected);
    assert!(!changed.contains(&k3.id));
    let cleared = store.set_account_tier(&acct.id, None).await.unwrap();
    assert_eq!(cleared.tier, None);
    for bad in ["", "has space", &"x".repeat(65)] {
        assert!(
            matches!(
                store.set_account_tier(&acct.id, Some(bad.to_owned())).await,
                Err(StoreError::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    let missing: keygate_store::AccountId = "acct_00000000000000ff".parse().unwrap();
    assert!(matches!(
        store.set_account_tier(&missing, Some("free".into())).await,
        Err(StoreError::NotFound { .. })
    ));
}
