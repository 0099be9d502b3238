//! The backend-independent control plane tests: admin tokens, the audit log,
//! idempotency records, console sessions and key cleanup, run on every backend.

use chrono::{TimeDelta, Utc};
use keygate_keys::{AdminSecret, KeyHash, random_token};
use keygate_store::{
    Actor, AdminRole, AdminTokenId, ConsoleSession, IdempotencyClaim, IdempotencyRequest,
    IdempotentOutcome, Micros, NewAdminToken, NewAuditEntry, StoreError,
};
use keygate_test_utils::fixture;

use crate::Backend;

fn new_token(name: &str, role: AdminRole) -> (AdminSecret, NewAdminToken) {
    let secret = AdminSecret::generate(&fixture::prefix()).unwrap();
    let new = NewAdminToken {
        name: name.into(),
        role,
        token_hash: secret.hash(),
        start: secret.start(),
    };
    (secret, new)
}

pub(crate) async fn admin_tokens_are_stored_by_hash_listed_and_revoked(b: &Backend) {
    let control = b.control.as_ref();
    let (secret, new) = new_token("ops", AdminRole::Operator);
    let token = control.create_admin_token(new).await.unwrap();
    assert!(token.id.as_str().starts_with("adm_"));
    assert_eq!(token.role, AdminRole::Operator);
    assert_eq!(token.start, secret.start());
    assert!(token.is_active(Utc::now()));

    let found = control
        .find_admin_token_by_hash(&secret.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, token);
    assert!(
        control
            .find_admin_token_by_hash(&KeyHash::of("other"))
            .await
            .unwrap()
            .is_none()
    );

    let (_, second) = new_token("viewer", AdminRole::Viewer);
    control.create_admin_token(second).await.unwrap();
    let names: Vec<String> = control
        .list_admin_tokens()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ops", "viewer"]);

    let at = Utc::now();
    let revoked = control.revoke_admin_token(&token.id, at).await.unwrap();
    assert!(!revoked.is_active(Utc::now()));
    let again = control
        .revoke_admin_token(&token.id, at + TimeDelta::hours(1))
        .await
        .unwrap();
    assert_eq!(
        again.revoked_at, revoked.revoked_at,
        "the earlier time stays"
    );
    assert!(matches!(
        control
            .revoke_admin_token(&AdminTokenId::generate(), at)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // The same hash twice is refused; an empty name too.
    let (_, mut dup) = new_token("dup", AdminRole::Owner);
    dup.token_hash = secret.hash();
    assert!(control.create_admin_token(dup).await.is_err());
    let (_, mut unnamed) = new_token("", AdminRole::Owner);
    unnamed.name = " ".into();
    assert!(matches!(
        control.create_admin_token(unnamed).await,
        Err(StoreError::Invalid { field: "name", .. })
    ));
}

pub(crate) async fn audit_log_pages_newest_first(b: &Backend) {
    let control = b.control.as_ref();
    let token = Actor::Token(AdminTokenId::generate());
    for i in 0..5 {
        let actor = if i % 2 == 0 {
            Actor::Cli
        } else {
            token.clone()
        };
        control
            .append_audit(NewAuditEntry::new(
                &actor,
                "key.revoke",
                Some(format!("key_{i:016x}")),
            ))
            .await
            .unwrap();
    }
    let first = control.list_audit(None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].target.as_deref(), Some("key_0000000000000004"));
    assert_eq!(first[0].actor, "cli");
    assert_eq!(first[1].actor, token.as_str());
    assert!(first[0].seq > first[1].seq);
    let rest = control.list_audit(Some(first[1].seq), 10).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[2].target.as_deref(), Some("key_0000000000000000"));
    assert!(
        control
            .list_audit(Some(rest[2].seq), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let too_long = NewAuditEntry::new(&Actor::Cli, "key.revoke", Some("x".repeat(41)));
    assert!(matches!(
        control.append_audit(too_long).await,
        Err(StoreError::Invalid {
            field: "target",
            ..
        })
    ));
}

pub(crate) async fn idempotency_claims_once_and_replays(b: &Backend) {
    let control = b.control.as_ref();
    let actor = Actor::Token(AdminTokenId::generate());
    let request = IdempotencyRequest {
        actor: actor.clone(),
        key: "retry-1".into(),
        request_hash: KeyHash::of("POST /api/accounts/x/top-up {\"amount\":\"1\"}"),
    };
    let now = Utc::now();
    assert_eq!(
        control.claim_idempotency(&request, now).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        control.claim_idempotency(&request, now).await.unwrap(),
        IdempotencyClaim::InProgress
    );
    let outcome = IdempotentOutcome {
        status: 200,
        target: Some("acct_0000000000000001".into()),
        body: "{\"balance_micros\":1000000}".into(),
    };
    control
        .finish_idempotency(&request, &outcome)
        .await
        .unwrap();
    assert_eq!(
        control.claim_idempotency(&request, now).await.unwrap(),
        IdempotencyClaim::Done(outcome.clone())
    );
    // Abandoning a finished record does nothing.
    control.abandon_idempotency(&request).await.unwrap();
    assert_eq!(
        control.claim_idempotency(&request, now).await.unwrap(),
        IdempotencyClaim::Done(outcome)
    );

    let other_body = IdempotencyRequest {
        request_hash: KeyHash::of("something else"),
        ..request.clone()
    };
    assert_eq!(
        control.claim_idempotency(&other_body, now).await.unwrap(),
        IdempotencyClaim::Mismatch
    );
    // The same key of another token is another record.
    let other_actor = IdempotencyRequest {
        actor: Actor::Cli,
        ..request.clone()
    };
    assert_eq!(
        control.claim_idempotency(&other_actor, now).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    control.abandon_idempotency(&other_actor).await.unwrap();
    assert_eq!(
        control.claim_idempotency(&other_actor, now).await.unwrap(),
        IdempotencyClaim::Claimed,
        "an abandoned claim can be taken again"
    );

    let bad = IdempotencyRequest {
        key: "has space".into(),
        ..request.clone()
    };
    assert!(control.claim_idempotency(&bad, now).await.is_err());
    let big = IdempotentOutcome {
        status: 200,
        target: None,
        body: "x".repeat(9000),
    };
    assert!(control.finish_idempotency(&request, &big).await.is_err());

    assert_eq!(
        control
            .purge_idempotency(now + TimeDelta::seconds(1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        control.claim_idempotency(&request, now).await.unwrap(),
        IdempotencyClaim::Claimed
    );
}

pub(crate) async fn concurrent_claims_of_one_key_let_one_through(b: &Backend) {
    let request = IdempotencyRequest {
        actor: Actor::Cli,
        key: "race".into(),
        request_hash: KeyHash::of("body"),
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let control = b.control.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            control.claim_idempotency(&request, Utc::now()).await
        }));
    }
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            IdempotencyClaim::Claimed => claimed += 1,
            IdempotencyClaim::InProgress => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 1);
}

pub(crate) async fn sessions_expire_and_end_with_their_token(b: &Backend) {
    let control = b.control.as_ref();
    let (_, new) = new_token("console", AdminRole::Owner);
    let token = control.create_admin_token(new).await.unwrap();
    let cookie = random_token().unwrap();
    let now = Utc::now();
    let session = ConsoleSession {
        session_hash: KeyHash::of(&cookie),
        csrf_hash: KeyHash::of(&random_token().unwrap()),
        token_id: token.id.clone(),
        created_at: now,
        expires_at: now + TimeDelta::hours(1),
    };
    control.create_session(&session).await.unwrap();
    let found = control
        .find_session(&KeyHash::of(&cookie), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.token_id, token.id);
    assert_eq!(found.csrf_hash, session.csrf_hash);
    assert!(
        control
            .find_session(&KeyHash::of(&cookie), now + TimeDelta::hours(2))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert_eq!(
        control
            .purge_sessions(now + TimeDelta::hours(2))
            .await
            .unwrap(),
        1
    );

    let short = ConsoleSession {
        session_hash: KeyHash::of("second"),
        ..session.clone()
    };
    control.create_session(&short).await.unwrap();
    control.delete_session(&short.session_hash).await.unwrap();
    assert!(
        control
            .find_session(&short.session_hash, now)
            .await
            .unwrap()
            .is_none()
    );

    control.create_session(&session).await.unwrap();
    control.revoke_admin_token(&token.id, now).await.unwrap();
    assert!(
        control
            .find_session(&session.session_hash, now)
            .await
            .unwrap()
            .is_none(),
        "revoking a token ends its sessions"
    );
}

pub(crate) async fn purge_deletes_long_dead_keys_through_the_feed(b: &Backend) {
    let store = b.store.as_ref();
    let account = fixture::account(store, "purge", Micros(1_000_000)).await;
    let (_, live) = fixture::private_key(store, &account.id).await;
    let (old_secret, old) = fixture::private_key(store, &account.id).await;
    let (_, recent) = fixture::private_key(store, &account.id).await;
    let (_, held) = fixture::private_key(store, &account.id).await;
    let now = Utc::now();
    store
        .revoke_key(&old.id, now - TimeDelta::days(40))
        .await
        .unwrap();
    store
        .revoke_key(&recent.id, now - TimeDelta::days(1))
        .await
        .unwrap();
    store
        .revoke_key(&held.id, now - TimeDelta::days(40))
        .await
        .unwrap();
    let reservation = b
        .ledger
        .reserve(keygate_store::NewReservation {
            account_id: account.id.clone(),
            key_id: held.id.clone(),
            amount: Micros(10),
            expires_at: now + TimeDelta::minutes(5),
        })
        .await
        .unwrap();
    let seen = store.latest_key_change().await.unwrap();

    let purged = b
        .control
        .purge_keys(now - TimeDelta::days(30))
        .await
        .unwrap();
    assert_eq!(purged, vec![old.id.clone()]);
    assert!(
        store
            .find_key_by_hash(&old_secret.hash())
            .await
            .unwrap()
            .is_none()
    );
    let changes = store.key_changes_since(seen, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key_id, old.id);
    assert_eq!(changes[0].key_hash, old_secret.hash());
    let mut left: Vec<_> = store
        .list_keys(Some(&account.id))
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    left.sort();
    let mut expected = vec![live.id, recent.id, held.id.clone()];
    expected.sort();
    assert_eq!(left, expected);

    if let keygate_store::Reserve::Held(r) = reservation {
        b.ledger.release(&r).await.unwrap();
    }
    let purged = b
        .control
        .purge_keys(now - TimeDelta::days(30))
        .await
        .unwrap();
    assert_eq!(purged, vec![held.id]);
}

pub(crate) async fn accounts_change_name_and_email_only(b: &Backend) {
    let store = b.store.as_ref();
    let account = fixture::account(store, "before", Micros(7)).await;
    let changed = b
        .control
        .update_account(
            &account.id,
            keygate_store::AccountUpdate {
                name: Some("after".into()),
                email: Some(Some("ops@example.com".into())),
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.name, "after");
    assert_eq!(changed.email.as_deref(), Some("ops@example.com"));
    assert_eq!(changed.balance, Micros(7));
    assert_eq!(store.get_account(&account.id).await.unwrap(), changed);
    let cleared = b
        .control
        .update_account(
            &account.id,
            keygate_store::AccountUpdate {
                name: None,
                email: Some(None),
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.name, "after");
    assert_eq!(cleared.email, None);
    let refused = b
        .control
        .update_account(
            &account.id,
            keygate_store::AccountUpdate {
                name: Some(String::new()),
                email: None,
            },
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid { .. })),
        "{refused:?}"
    );
    let missing = b
        .control
        .update_account(&keygate_store::AccountId::generate(), Default::default())
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })));
}
