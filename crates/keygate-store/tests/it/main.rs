//! The store suite: one set of tests written against `CredentialStore` and run on
//! every backend (memory, SQLite, PostgreSQL when `KEYGATE_TEST_POSTGRES_URL` is set).
//! A backend whose cargo feature is off is not tested.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step fails the test"
)]

mod control_suite;
mod schema;
mod suite;

use std::sync::Arc;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use keygate_store::DbStore;
use keygate_store::{ControlStore, CredentialStore, Ledger, MemoryStore};
#[cfg(feature = "postgres")]
use keygate_test_utils::TestPostgres;

/// A store plus whatever must live as long as it (a temp dir, a test database).
#[allow(missing_debug_implementations, reason = "test fixture")]
pub(crate) struct Backend {
    pub(crate) store: Arc<dyn CredentialStore>,
    /// The same store's ledger.
    pub(crate) ledger: Arc<dyn Ledger>,
    /// The other process's ledger (the memory store's own for the memory backend).
    pub(crate) other_ledger: Arc<dyn Ledger>,
    /// A second, independent handle on the same database, standing in for another
    /// process (the CLI while the gateway runs). `None` for the memory store.
    pub(crate) other_process: Option<Arc<dyn CredentialStore>>,
    /// The same store's control plane.
    pub(crate) control: Arc<dyn ControlStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn memory() -> Option<Backend> {
    let store = Arc::new(MemoryStore::new());
    Some(Backend {
        store: store.clone(),
        ledger: store.clone(),
        other_ledger: store.clone(),
        other_process: None,
        control: store,
        _guard: Box::new(()),
    })
}

#[cfg(feature = "sqlite")]
async fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let store = DbStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let other = Arc::new(DbStore::connect(&url).await.unwrap());
    let store = Arc::new(store);
    Some(Backend {
        store: store.clone(),
        ledger: store.clone(),
        control: store,
        other_ledger: other.clone(),
        other_process: Some(other),
        _guard: Box::new(dir),
    })
}

#[cfg(feature = "postgres")]
async fn postgres(test: &str) -> Option<Backend> {
    let db = TestPostgres::create(test).await?;
    let store = DbStore::connect(db.url()).await.unwrap();
    let applied = store.migrate().await.unwrap();
    assert!(!applied.is_empty());
    let other = Arc::new(DbStore::connect(db.url()).await.unwrap());
    let store = Arc::new(store);
    Some(Backend {
        store: store.clone(),
        ledger: store.clone(),
        control: store,
        other_ledger: other.clone(),
        other_process: Some(other),
        _guard: Box::new(db),
    })
}

/// Instantiates every suite test once per backend, as `memory::NAME`,
/// `sqlite::NAME` and `postgres::NAME`.
macro_rules! backend_suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let backend = crate::memory().await.unwrap();
                    crate::suite::$test(&backend).await;
                }
            )*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let backend = crate::sqlite().await.unwrap();
                    crate::suite::$test(&backend).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let Some(backend) = crate::postgres(stringify!($test)).await else {
                        return;
                    };
                    crate::suite::$test(&backend).await;
                }
            )*
        }
    };
}

/// The control plane suite, instantiated like [`backend_suite`] but in modules of
/// its own (`memory_control::NAME`, …).
macro_rules! control_suite {
    ($($test:ident),* $(,)?) => {
        mod memory_control {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let backend = crate::memory().await.unwrap();
                    crate::control_suite::$test(&backend).await;
                }
            )*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite_control {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let backend = crate::sqlite().await.unwrap();
                    crate::control_suite::$test(&backend).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres_control {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $test() {
                    let Some(backend) = crate::postgres(stringify!($test)).await else {
                        return;
                    };
                    crate::control_suite::$test(&backend).await;
                }
            )*
        }
    };
}

control_suite!(
    admin_tokens_are_stored_by_hash_listed_and_revoked,
    audit_log_pages_newest_first,
    idempotency_claims_once_and_replays,
    concurrent_claims_of_one_key_let_one_through,
    sessions_expire_and_end_with_their_token,
    purge_deletes_long_dead_keys_through_the_feed,
    accounts_change_name_and_email_only,
);

backend_suite!(
    accounts_are_created_listed_and_found,
    account_input_is_validated,
    top_ups_add_exactly_and_reject_bad_amounts,
    concurrent_top_ups_lose_nothing,
    concurrent_key_changes_from_two_processes_all_land,
    keys_are_stored_by_hash_with_their_settings,
    key_input_is_validated,
    key_for_unknown_account_is_not_found,
    duplicate_key_hash_is_a_conflict,
    keys_list_by_account,
    update_changes_only_what_it_names,
    update_that_breaks_a_rule_is_refused,
    revoke_is_immediate_and_keeps_the_earliest_time,
    expired_keys_report_expired,
    rotate_now_revokes_the_old_key,
    rotate_with_grace_keeps_the_old_key_until_then,
    rotate_of_a_revoked_key_is_a_conflict,
    rotate_of_an_expired_key_is_a_conflict,
    every_key_change_is_in_the_feed_in_order,
    an_account_tier_is_set_cleared_and_fed_to_its_keys,
    feed_is_shared_between_processes,
    last_used_only_moves_forward,
    revoke_racing_lookups_is_seen_by_every_later_lookup,
    unknown_ids_are_not_found,
    reservations_settle_and_release_exact_money,
    spend_limits_hold_reservations_and_charges,
    concurrent_reservations_never_overdraw,
    expired_reservations_are_swept,
    settling_twice_charges_once,
    settling_past_the_balance_saturates_at_what_can_be_paid,
    settling_past_the_spend_limit_saturates_at_the_limit,
    usage_records_are_never_refused_for_their_numbers,
    usage_records_round_trip_and_purge,
    usage_records_in_large_batches_round_trip,
    usage_report_totals_by_model_in_byte_order,
    usage_report_totals_by_key,
    usage_report_totals_by_utc_day,
    usage_report_filters_by_account_key_and_window,
    usage_report_refuses_totals_past_63_bits,
);

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_postgres_is_reported_as_unavailable() {
    let err = DbStore::connect("postgres://nobody:secret@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_in_a_missing_directory_is_reported_as_unavailable() {
    let err = DbStore::connect("sqlite:///nonexistent-dir/for/sure/keygate.db")
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread")]
async fn migrations_report_pending_then_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let store = DbStore::connect(&url).await.unwrap();
    let pending = store.pending_migrations().await.unwrap();
    let on_disk = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/sqlite"
    ))
    .unwrap()
    .count();
    assert_eq!(pending.len(), on_disk, "{pending:?}");
    assert_eq!(store.migrate().await.unwrap().len(), on_disk);
    assert!(store.pending_migrations().await.unwrap().is_empty());
    assert!(store.migrate().await.unwrap().is_empty());
}

/// On PostgreSQL, `seq` comes from a sequence, so without the feed lock a change
/// that takes seq N and commits after N+1 would be skipped by a poller that has
/// already read N+1. A competing writer holds an uncommitted change here (a plain
/// insert, taking no lock of its own); the store's key change must wait for it, and
/// the feed must show both, in order.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_feed_never_skips_a_change_that_commits_late() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    use keygate_store::Micros;
    use keygate_test_utils::fixture;

    let Some(db) =
        TestPostgres::create("postgres_feed_never_skips_a_change_that_commits_late").await
    else {
        return;
    };
    let store = Arc::new(DbStore::connect(db.url()).await.unwrap());
    store.migrate().await.unwrap();
    let (_, _, key) = fixture::account_and_key(&*store, Micros::ZERO).await;
    let seen = store.latest_key_change().await.unwrap();

    let mut competitor = AsyncPgConnection::establish(db.url()).await.unwrap();
    competitor
        .batch_execute(&format!(
            "BEGIN; INSERT INTO key_changes (key_id, key_hash, changed_at) VALUES ('key_competitor', '{}', 0);",
            "0".repeat(64)
        ))
        .await
        .unwrap();

    let revoke = tokio::spawn({
        let store = store.clone();
        let id = key.id.clone();
        async move { store.revoke_key(&id, chrono::Utc::now()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !revoke.is_finished(),
        "a key change did not wait for the feed lock"
    );
    assert_eq!(
        store.latest_key_change().await.unwrap(),
        seen,
        "nothing past the open change"
    );

    competitor.batch_execute("COMMIT").await.unwrap();
    revoke.await.unwrap().unwrap();
    let changes = store.key_changes_since(seen, 10).await.unwrap();
    let ids: Vec<&str> = changes.iter().map(|c| c.key_id.as_str()).collect();
    assert_eq!(ids, vec!["key_competitor", key.id.as_str()]);
    assert_eq!(changes[1].seq, changes[0].seq + 1);
}
