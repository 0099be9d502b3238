//! [`ControlStore`] on SQLite and PostgreSQL: the control plane's tables
//! (`admin_tokens`, `audit_log`, `idempotency_keys`, `console_sessions`) and the
//! key cleanup, written once in `control_ops!` and compiled per connection type.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
#[cfg(feature = "postgres")]
use diesel_async::AsyncPgConnection;
use diesel_async::{AsyncConnection, RunQueryDsl};
use keygate_keys::KeyHash;
use keygate_types::{AccountId, AdminTokenId, KeyId};

use super::DbStore;
#[cfg(feature = "sqlite")]
use super::pool::SqliteConn;
use super::rows::{AccountRow, millis};
use super::schema::{accounts, api_keys, key_changes, reservations};
use crate::control::{
    AccountUpdate, AdminToken, AuditEntry, ConsoleSession, ControlStore, IN_PROGRESS,
    IdempotencyClaim, IdempotencyRequest, IdempotentOutcome, NewAdminToken, NewAuditEntry,
    check_audit_entry, check_idempotency_request, check_new_admin_token, check_outcome, claim_of,
};
use crate::error::{Result, StoreError};
use crate::types::Account;

mod schema {
    diesel::table! {
        admin_tokens (id) {
            id -> Text,
            name -> Text,
            role -> Text,
            token_hash -> Text,
            start -> Text,
            created_at -> BigInt,
            revoked_at -> Nullable<BigInt>,
            last_used_at -> Nullable<BigInt>,
        }
    }

    diesel::table! {
        audit_log (seq) {
            seq -> BigInt,
            at -> BigInt,
            actor -> Text,
            action -> Text,
            target -> Nullable<Text>,
        }
    }

    diesel::table! {
        idempotency_keys (actor, idem_key) {
            actor -> Text,
            idem_key -> Text,
            request_hash -> Text,
            status -> BigInt,
            target -> Nullable<Text>,
            body -> Text,
            created_at -> BigInt,
        }
    }

    diesel::table! {
        console_sessions (session_hash) {
            session_hash -> Text,
            csrf_hash -> Text,
            token_id -> Text,
            created_at -> BigInt,
            expires_at -> BigInt,
        }
    }
}

use schema::{admin_tokens, audit_log, console_sessions, idempotency_keys};

#[derive(Queryable, Selectable, Insertable, Debug)]
#[diesel(table_name = admin_tokens)]
struct TokenRow {
    id: String,
    name: String,
    role: String,
    token_hash: String,
    start: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = audit_log)]
struct AuditRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: Option<String>,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = audit_log)]
struct NewAuditRow<'a> {
    at: i64,
    actor: &'a str,
    action: &'a str,
    target: Option<&'a str>,
}

#[derive(Queryable, Selectable, Insertable, Debug)]
#[diesel(table_name = idempotency_keys)]
struct IdempotencyRow {
    actor: String,
    idem_key: String,
    request_hash: String,
    status: i64,
    target: Option<String>,
    body: String,
    created_at: i64,
}

#[derive(Queryable, Selectable, Insertable, Debug)]
#[diesel(table_name = console_sessions)]
struct SessionRow {
    session_hash: String,
    csrf_hash: String,
    token_id: String,
    created_at: i64,
    expires_at: i64,
}

fn corrupt(column: &str) -> StoreError {
    StoreError::Database(format!("stored {column} is malformed"))
}

fn time(column: &str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(column))
}

fn hash(column: &str, hex: &str) -> Result<KeyHash> {
    hex.parse().map_err(|_| corrupt(column))
}

impl TryFrom<TokenRow> for AdminToken {
    type Error = StoreError;
    fn try_from(row: TokenRow) -> Result<Self> {
        Ok(AdminToken {
            id: row.id.parse()?,
            name: row.name,
            role: row.role.parse().map_err(|_| corrupt("admin_tokens.role"))?,
            token_hash: hash("admin_tokens.token_hash", &row.token_hash)?,
            start: row.start,
            created_at: time("admin_tokens.created_at", row.created_at)?,
            revoked_at: row
                .revoked_at
                .map(|t| time("admin_tokens.revoked_at", t))
                .transpose()?,
        })
    }
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;
    fn try_from(row: AuditRow) -> Result<Self> {
        Ok(AuditEntry {
            seq: u64::try_from(row.seq).map_err(|_| corrupt("audit_log.seq"))?,
            at: time("audit_log.at", row.at)?,
            actor: row.actor,
            action: row.action,
            target: row.target,
        })
    }
}

impl TryFrom<SessionRow> for ConsoleSession {
    type Error = StoreError;
    fn try_from(row: SessionRow) -> Result<Self> {
        Ok(ConsoleSession {
            session_hash: hash("console_sessions.session_hash", &row.session_hash)?,
            csrf_hash: hash("console_sessions.csrf_hash", &row.csrf_hash)?,
            token_id: row.token_id.parse()?,
            created_at: time("console_sessions.created_at", row.created_at)?,
            expires_at: time("console_sessions.expires_at", row.expires_at)?,
        })
    }
}

/// The control plane's operations, compiled per connection type.
/// `$begin_key_change` is the key change feed's first statement, as in `keys`.
macro_rules! control_ops {
    ($module:ident, $conn:ty, $begin_key_change:literal) => {
        mod $module {
            use super::*;

            type C = $conn;

            pub(super) async fn create_admin_token(
                c: &mut C,
                new: NewAdminToken,
            ) -> Result<AdminToken> {
                let row = TokenRow {
                    id: AdminTokenId::generate().to_string(),
                    name: new.name,
                    role: new.role.name().to_owned(),
                    token_hash: new.token_hash.to_hex(),
                    start: new.start,
                    created_at: millis(Utc::now()),
                    revoked_at: None,
                };
                diesel::insert_into(admin_tokens::table)
                    .values(&row)
                    .execute(c)
                    .await?;
                row.try_into()
            }

            pub(super) async fn find_admin_token_by_hash(
                c: &mut C,
                hash: &KeyHash,
            ) -> Result<Option<AdminToken>> {
                admin_tokens::table
                    .filter(admin_tokens::token_hash.eq(hash.to_hex()))
                    .select(TokenRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .map(AdminToken::try_from)
                    .transpose()
            }

            pub(super) async fn list_admin_tokens(c: &mut C) -> Result<Vec<AdminToken>> {
                admin_tokens::table
                    .select(TokenRow::as_select())
                    .order((admin_tokens::created_at.asc(), admin_tokens::id.asc()))
                    .load(c)
                    .await?
                    .into_iter()
                    .map(AdminToken::try_from)
                    .collect()
            }

            pub(super) async fn revoke_admin_token(
                c: &mut C,
                id: &AdminTokenId,
                at: i64,
            ) -> Result<AdminToken> {
                let id = id.clone();
                c.transaction::<_, StoreError, _>(async move |c| {
                    let mut row: TokenRow = admin_tokens::table
                        .find(id.as_str())
                        .select(TokenRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| StoreError::admin_token_not_found(&id))?;
                    let revoked_at = row.revoked_at.map_or(at, |t| t.min(at));
                    diesel::update(admin_tokens::table.find(id.as_str()))
                        .set(admin_tokens::revoked_at.eq(revoked_at))
                        .execute(c)
                        .await?;
                    diesel::delete(
                        console_sessions::table.filter(console_sessions::token_id.eq(id.as_str())),
                    )
                    .execute(c)
                    .await?;
                    row.revoked_at = Some(revoked_at);
                    row.try_into()
                })
                .await
            }

            pub(super) async fn append_audit(
                c: &mut C,
                entry: NewAuditEntry,
            ) -> Result<AuditEntry> {
                let row = NewAuditRow {
                    at: millis(Utc::now()),
                    actor: entry.actor.as_str(),
                    action: entry.action,
                    target: entry.target.as_deref(),
                };
                diesel::insert_into(audit_log::table)
                    .values(&row)
                    .returning(AuditRow::as_returning())
                    .get_result(c)
                    .await?
                    .try_into()
            }

            pub(super) async fn list_audit(
                c: &mut C,
                before: Option<u64>,
                limit: u32,
            ) -> Result<Vec<AuditEntry>> {
                let mut query = audit_log::table
                    .select(AuditRow::as_select())
                    .order(audit_log::seq.desc())
                    .limit(i64::from(limit))
                    .into_boxed();
                if let Some(before) = before {
                    query =
                        query.filter(audit_log::seq.lt(i64::try_from(before).unwrap_or(i64::MAX)));
                }
                query
                    .load(c)
                    .await?
                    .into_iter()
                    .map(AuditEntry::try_from)
                    .collect()
            }

            pub(super) async fn claim_idempotency(
                c: &mut C,
                request: &IdempotencyRequest,
                now: i64,
            ) -> Result<IdempotencyClaim> {
                let inserted = diesel::insert_into(idempotency_keys::table)
                    .values(IdempotencyRow {
                        actor: request.actor.as_str().to_owned(),
                        idem_key: request.key.clone(),
                        request_hash: request.request_hash.to_hex(),
                        status: i64::from(IN_PROGRESS),
                        target: None,
                        body: String::new(),
                        created_at: now,
                    })
                    .on_conflict_do_nothing()
                    .execute(c)
                    .await?;
                if inserted == 1 {
                    return Ok(IdempotencyClaim::Claimed);
                }
                let row: IdempotencyRow = idempotency_keys::table
                    .find((request.actor.as_str(), request.key.as_str()))
                    .select(IdempotencyRow::as_select())
                    .first(c)
                    .await?;
                let stored = hash("idempotency_keys.request_hash", &row.request_hash)?;
                let status =
                    u16::try_from(row.status).map_err(|_| corrupt("idempotency_keys.status"))?;
                Ok(claim_of(&stored, status, row.target, row.body, request))
            }

            pub(super) async fn finish_idempotency(
                c: &mut C,
                request: &IdempotencyRequest,
                outcome: &IdempotentOutcome,
            ) -> Result<()> {
                diesel::update(
                    idempotency_keys::table.find((request.actor.as_str(), request.key.as_str())),
                )
                .set((
                    idempotency_keys::status.eq(i64::from(outcome.status)),
                    idempotency_keys::target.eq(outcome.target.as_deref()),
                    idempotency_keys::body.eq(outcome.body.as_str()),
                ))
                .execute(c)
                .await?;
                Ok(())
            }

            pub(super) async fn abandon_idempotency(
                c: &mut C,
                request: &IdempotencyRequest,
            ) -> Result<()> {
                diesel::delete(
                    idempotency_keys::table
                        .find((request.actor.as_str(), request.key.as_str()))
                        .filter(idempotency_keys::status.eq(i64::from(IN_PROGRESS))),
                )
                .execute(c)
                .await?;
                Ok(())
            }

            pub(super) async fn purge_idempotency(c: &mut C, before: i64) -> Result<u64> {
                let n = diesel::delete(
                    idempotency_keys::table.filter(idempotency_keys::created_at.lt(before)),
                )
                .execute(c)
                .await?;
                Ok(n as u64)
            }

            pub(super) async fn create_session(c: &mut C, s: &ConsoleSession) -> Result<()> {
                diesel::insert_into(console_sessions::table)
                    .values(SessionRow {
                        session_hash: s.session_hash.to_hex(),
                        csrf_hash: s.csrf_hash.to_hex(),
                        token_id: s.token_id.to_string(),
                        created_at: millis(s.created_at),
                        expires_at: millis(s.expires_at),
                    })
                    .execute(c)
                    .await?;
                Ok(())
            }

            pub(super) async fn find_session(
                c: &mut C,
                hash: &KeyHash,
                now: i64,
            ) -> Result<Option<ConsoleSession>> {
                console_sessions::table
                    .find(hash.to_hex())
                    .filter(console_sessions::expires_at.gt(now))
                    .select(SessionRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .map(ConsoleSession::try_from)
                    .transpose()
            }

            pub(super) async fn delete_session(c: &mut C, hash: &KeyHash) -> Result<()> {
                diesel::delete(console_sessions::table.find(hash.to_hex()))
                    .execute(c)
                    .await?;
                Ok(())
            }

            pub(super) async fn purge_sessions(c: &mut C, now: i64) -> Result<u64> {
                let n = diesel::delete(
                    console_sessions::table.filter(console_sessions::expires_at.le(now)),
                )
                .execute(c)
                .await?;
                Ok(n as u64)
            }

            pub(super) async fn update_account(
                c: &mut C,
                id: &AccountId,
                update: AccountUpdate,
            ) -> Result<Account> {
                let id = id.clone();
                c.transaction::<_, StoreError, _>(async move |c| {
                    let row: AccountRow = accounts::table
                        .find(id.as_str())
                        .select(AccountRow::as_select())
                        .first(c)
                        .await
                        .optional()?
                        .ok_or_else(|| StoreError::NotFound {
                            entity: "account",
                            id: id.to_string(),
                        })?;
                    let account = Account::try_from(row)?;
                    let (name, email) = update.apply(&account)?;
                    diesel::update(accounts::table.find(id.as_str()))
                        .set((accounts::name.eq(&name), accounts::email.eq(&email)))
                        .execute(c)
                        .await?;
                    Ok(Account {
                        name,
                        email,
                        ..account
                    })
                })
                .await
            }

            pub(super) async fn purge_keys(c: &mut C, before: i64) -> Result<Vec<KeyId>> {
                c.transaction::<_, StoreError, _>(async move |c| {
                    diesel::sql_query($begin_key_change).execute(c).await?;
                    let held: Vec<String> = reservations::table
                        .select(reservations::key_id)
                        .distinct()
                        .load(c)
                        .await?;
                    let dead: Vec<(String, String)> = api_keys::table
                        .filter(
                            api_keys::revoked_at
                                .lt(before)
                                .or(api_keys::expires_at.lt(before)),
                        )
                        .select((api_keys::id, api_keys::key_hash))
                        .order(api_keys::id.asc())
                        .load(c)
                        .await?;
                    let now = millis(Utc::now());
                    let mut purged = Vec::new();
                    for (id, key_hash) in dead.into_iter().filter(|(id, _)| !held.contains(id)) {
                        diesel::insert_into(key_changes::table)
                            .values((
                                key_changes::key_id.eq(&id),
                                key_changes::key_hash.eq(&key_hash),
                                key_changes::changed_at.eq(now),
                            ))
                            .execute(c)
                            .await?;
                        diesel::delete(api_keys::table.find(&id)).execute(c).await?;
                        purged.push(id.parse()?);
                    }
                    Ok(purged)
                })
                .await
            }
        }
    };
}

#[cfg(feature = "sqlite")]
control_ops!(
    sqlite_control,
    SqliteConn,
    "DELETE FROM key_changes WHERE seq < 0"
);
#[cfg(feature = "postgres")]
control_ops!(
    pg_control,
    AsyncPgConnection,
    "LOCK TABLE key_changes IN SHARE ROW EXCLUSIVE MODE"
);

#[async_trait::async_trait]
impl ControlStore for DbStore {
    async fn create_admin_token(&self, new: NewAdminToken) -> Result<AdminToken> {
        check_new_admin_token(&new)?;
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            create_admin_token(new)
        )
    }

    async fn find_admin_token_by_hash(&self, hash: &KeyHash) -> Result<Option<AdminToken>> {
        dispatch!(
            self.read().await?,
            sqlite_control | pg_control,
            find_admin_token_by_hash(hash)
        )
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        dispatch!(
            self.read().await?,
            sqlite_control | pg_control,
            list_admin_tokens()
        )
    }

    async fn revoke_admin_token(&self, id: &AdminTokenId, at: DateTime<Utc>) -> Result<AdminToken> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            revoke_admin_token(id, millis(at))
        )
    }

    async fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditEntry> {
        check_audit_entry(&entry)?;
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            append_audit(entry)
        )
    }

    async fn list_audit(&self, before: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>> {
        dispatch!(
            self.read().await?,
            sqlite_control | pg_control,
            list_audit(before, limit)
        )
    }

    async fn claim_idempotency(
        &self,
        request: &IdempotencyRequest,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim> {
        check_idempotency_request(request)?;
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            claim_idempotency(request, millis(now))
        )
    }

    async fn finish_idempotency(
        &self,
        request: &IdempotencyRequest,
        outcome: &IdempotentOutcome,
    ) -> Result<()> {
        check_outcome(outcome)?;
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            finish_idempotency(request, outcome)
        )
    }

    async fn abandon_idempotency(&self, request: &IdempotencyRequest) -> Result<()> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            abandon_idempotency(request)
        )
    }

    async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            purge_idempotency(millis(before))
        )
    }

    async fn create_session(&self, session: &ConsoleSession) -> Result<()> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            create_session(session)
        )
    }

    async fn find_session(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        dispatch!(
            self.read().await?,
            sqlite_control | pg_control,
            find_session(hash, millis(now))
        )
    }

    async fn delete_session(&self, hash: &KeyHash) -> Result<()> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            delete_session(hash)
        )
    }

    async fn purge_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            purge_sessions(millis(now))
        )
    }

    async fn update_account(&self, id: &AccountId, update: AccountUpdate) -> Result<Account> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            update_account(id, update)
        )
    }

    async fn purge_keys(&self, before: DateTime<Utc>) -> Result<Vec<KeyId>> {
        dispatch!(
            self.write().await?,
            sqlite_control | pg_control,
            purge_keys(millis(before))
        )
    }
}
