//! The backend-independent store tests. Each takes a [`Backend`] and must pass on
//! all of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use keygate_keys::{KeyKind, KeyPrefix, SecretKey};
use keygate_store::{
    Account, ApiKey, CredentialStore, KeySettings, KeyStatus, KeyUpdate, Micros, NewAccount,
    NewApiKey, ReplacementKey, Scope, ScopeSet, StoreError,
};

use crate::Backend;

fn credits(n: i64) -> Micros {
    Micros(n * 1_000_000)
}

async fn account(store: &dyn CredentialStore, name: &str) -> Account {
    store
        .create_account(NewAccount {
            name: name.to_owned(),
            email: None,
            balance: Micros::ZERO,
        })
        .await
        .unwrap()
}

fn generate(kind: KeyKind) -> SecretKey {
    SecretKey::generate(&KeyPrefix::default(), kind).unwrap()
}

async fn key_with(
    store: &dyn CredentialStore,
    account: &Account,
    settings: KeySettings,
) -> (SecretKey, ApiKey) {
    let secret = generate(settings.kind);
    let key = store
        .create_key(NewApiKey {
            account_id: account.id.clone(),
            key_hash: secret.hash(),
            start: secret.start(),
            settings,
        })
        .await
        .unwrap();
    (secret, key)
}

async fn key(store: &dyn CredentialStore, account: &Account) -> (SecretKey, ApiKey) {
    key_with(store, account, KeySettings::new(KeyKind::Private)).await
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
    let globex = account(store, "Globex").await;
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
    let acct = account(store, "a").await;
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
    let acct = account(b.store.as_ref(), "busy").await;
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
    let acct = account(store, "a").await;
    let expires = Utc::now() + TimeDelta::days(30);
    let settings = KeySettings {
        name: "ci runner".into(),
        scopes: "chat,models".parse().unwrap(),
        models: vec!["gpt-4o*".into(), "o3".into()],
        origins: vec!["https://app.example".into()],
        expires_at: Some(expires),
        rpm: Some(60),
        tpm: Some(100_000),
        spend_limit: Some(credits(3)),
        metadata: [("team".to_owned(), "search".to_owned())].into(),
        ..KeySettings::new(KeyKind::Private)
    };
    let (secret, created) = key_with(store, &acct, settings).await;
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
    assert_eq!((found.rpm, found.tpm), (Some(60), Some(100_000)));
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
    let acct = account(store, "a").await;
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
    let acct = account(store, "a").await;
    let (secret, _) = key(store, &acct).await;
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
    let a = account(store, "a").await;
    let other = account(store, "b").await;
    let (_, a1) = key(store, &a).await;
    let (_, a2) = key(store, &a).await;
    let (_, b1) = key(store, &other).await;
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
    let acct = account(store, "a").await;
    let settings = KeySettings {
        name: "before".into(),
        rpm: Some(10),
        spend_limit: Some(credits(1)),
        expires_at: Some(Utc::now() + TimeDelta::hours(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (secret, created) = key_with(store, &acct, settings).await;
    let updated = store
        .update_key(
            &created.id,
            KeyUpdate {
                name: Some("after".into()),
                scopes: Some("embeddings".parse().unwrap()),
                rpm: Some(None),
                expires_at: Some(None),
                tpm: Some(Some(500)),
                ..KeyUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.name, "after");
    assert_eq!(updated.scopes, "embeddings".parse().unwrap());
    assert_eq!((updated.rpm, updated.tpm), (None, Some(500)));
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
    let acct = account(store, "a").await;
    let public = KeySettings {
        models: vec!["gpt-4o-mini".into()],
        ..KeySettings::new(KeyKind::Public)
    };
    let (_, created) = key_with(store, &acct, public).await;
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
    let acct = account(store, "a").await;
    let (secret, created) = key(store, &acct).await;
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
    let acct = account(store, "a").await;
    let settings = KeySettings {
        expires_at: Some(Utc::now() - TimeDelta::seconds(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (secret, _) = key_with(store, &acct, settings).await;
    let found = lookup(store, &secret).await.unwrap();
    assert_eq!(found.status(Utc::now()), KeyStatus::Expired);
    let soon = KeySettings {
        expires_at: Some(Utc::now() + TimeDelta::hours(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (_, later) = key_with(store, &acct, soon).await;
    assert_eq!(later.status(Utc::now()), KeyStatus::Active);
    assert_eq!(
        later.status(Utc::now() + TimeDelta::hours(2)),
        KeyStatus::Expired
    );
}

pub(crate) async fn rotate_now_revokes_the_old_key(b: &Backend) {
    let store = b.store.as_ref();
    let acct = account(store, "a").await;
    let settings = KeySettings {
        name: "svc".into(),
        models: vec!["o3".into()],
        rpm: Some(7),
        ..KeySettings::new(KeyKind::Private)
    };
    let (old_secret, old) = key_with(store, &acct, settings).await;
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
    let acct = account(store, "a").await;
    let (old_secret, old) = key(store, &acct).await;
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
    let acct = account(store, "a").await;
    let (_, old) = key(store, &acct).await;
    store.revoke_key(&old.id, Utc::now()).await.unwrap();
    let (new_secret, replacement) = replacement();
    let result = store.rotate_key(&old.id, replacement, Utc::now()).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert!(lookup(store, &new_secret).await.is_none());
}

pub(crate) async fn rotate_of_an_expired_key_is_a_conflict(b: &Backend) {
    let store = b.store.as_ref();
    let acct = account(store, "a").await;
    let settings = KeySettings {
        expires_at: Some(Utc::now() - TimeDelta::seconds(1)),
        ..KeySettings::new(KeyKind::Private)
    };
    let (_, old) = key_with(store, &acct, settings).await;
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
    let acct = account(store, "a").await;
    let (_, k1) = key(store, &acct).await;
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
    let (_, k2) = key(store, &acct).await;
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
    let acct = account(b.store.as_ref(), "a").await;
    let (secret, created) = key(b.store.as_ref(), &acct).await;
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
    let acct = account(store, "a").await;
    let (_, k) = key(store, &acct).await;
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
    let acct = account(b.store.as_ref(), "a").await;
    let (secret, created) = key(b.store.as_ref(), &acct).await;
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
    let acct = account(b.store.as_ref(), "a").await;
    let stores: Vec<Arc<dyn CredentialStore>> = std::iter::once(b.store.clone())
        .chain(b.other_process.clone())
        .collect();
    let start = b.store.latest_key_change().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = stores[i % stores.len()].clone();
        let acct = acct.clone();
        tasks.push(tokio::spawn(async move {
            let (_, k) = key(store.as_ref(), &acct).await;
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
