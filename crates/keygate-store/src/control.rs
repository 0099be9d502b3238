//! The control plane's storage: admin tokens with roles, the audit log,
//! idempotency records of creates and top-ups, console sessions and the cleanup
//! of long-dead keys, behind the object-safe [`ControlStore`] trait.
//!
//! Nothing here holds a secret: tokens and sessions are stored as their SHA-256,
//! audit entries name ids, and an idempotency record keeps the hash of its request
//! and a response body the caller has stripped of any secret.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use keygate_keys::KeyHash;
use keygate_types::limits::{
    MAX_AUDIT_ACTION_LEN, MAX_ID_LEN, MAX_IDEMPOTENCY_BODY_LEN, MAX_IDEMPOTENCY_KEY_LEN,
    MAX_NAME_LEN,
};
use keygate_types::{AccountId, AdminTokenId, KeyId};

use crate::error::{Result, StoreError};
use crate::types::Account;

/// What an admin token may do. Each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminRole {
    /// Reads everything; changes nothing.
    Viewer,
    /// Also creates, changes, revokes and rotates keys and tops accounts up.
    Operator,
    /// Everything, admin tokens included.
    Owner,
}

impl AdminRole {
    /// `owner`, `operator` or `viewer`.
    pub fn name(self) -> &'static str {
        match self {
            AdminRole::Owner => "owner",
            AdminRole::Operator => "operator",
            AdminRole::Viewer => "viewer",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: AdminRole) -> bool {
        self >= needed
    }
}

impl FromStr for AdminRole {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "owner" => Ok(AdminRole::Owner),
            "operator" => Ok(AdminRole::Operator),
            "viewer" => Ok(AdminRole::Viewer),
            _ => Err(StoreError::invalid(
                "role",
                "expected owner, operator or viewer",
            )),
        }
    }
}

impl fmt::Display for AdminRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stored admin token: its role and the hash of the token, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminToken {
    /// Id.
    pub id: AdminTokenId,
    /// Label.
    pub name: String,
    /// What it may do.
    pub role: AdminRole,
    /// SHA-256 of the token.
    pub token_hash: KeyHash,
    /// Display start such as `kg_ak_3f9a`.
    pub start: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl AdminToken {
    /// Whether the token works at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none_or(|at| at > now)
    }
}

/// Input to create an admin token.
#[derive(Clone, Debug)]
pub struct NewAdminToken {
    /// Label, 1 to [`MAX_NAME_LEN`] characters.
    pub name: String,
    /// Role.
    pub role: AdminRole,
    /// SHA-256 of the generated token.
    pub token_hash: KeyHash,
    /// Display start of the generated token.
    pub start: String,
}

/// Who made a change: an admin token, or the CLI on the database host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// `keygate-admin` (whoever can reach the database).
    Cli,
    /// An admin token, through the API or the console.
    Token(AdminTokenId),
    /// The gateway's own cleanup (`[keys] delete_after`).
    Cleanup,
}

impl Actor {
    /// `cli` or the token's id, as the audit log stores it.
    pub fn as_str(&self) -> &str {
        match self {
            Actor::Cli => "cli",
            Actor::Token(id) => id.as_str(),
            Actor::Cleanup => "cleanup",
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change to append to the audit log. `target` is an id, never a secret.
#[derive(Clone, Debug)]
pub struct NewAuditEntry {
    /// Who.
    pub actor: Actor,
    /// What, as `noun.verb` (`key.create`, `account.top_up`, …).
    pub action: &'static str,
    /// The id of what changed (an account, key or admin token id), if any.
    pub target: Option<String>,
}

impl NewAuditEntry {
    /// An entry for `action` on `target` by `actor`.
    pub fn new(actor: &Actor, action: &'static str, target: impl Into<Option<String>>) -> Self {
        Self {
            actor: actor.clone(),
            action,
            target: target.into(),
        }
    }
}

/// A stored audit log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the log; grows with every entry.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// `cli` or an admin token id.
    pub actor: String,
    /// `noun.verb`.
    pub action: String,
    /// The id of what changed.
    pub target: Option<String>,
}

/// The result of claiming an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new: do the operation, then [`ControlStore::finish_idempotency`]
    /// (or [`ControlStore::abandon_idempotency`] when it failed).
    Claimed,
    /// A request with this key is still being handled (or its process died before
    /// recording the outcome): nothing is done twice.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// The key was used for this request, which finished with this outcome.
    Done(IdempotentOutcome),
}

/// What an idempotent operation answered, as it is replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotentOutcome {
    /// HTTP status.
    pub status: u16,
    /// The id of what was created or changed.
    pub target: Option<String>,
    /// The response body, without any secret, at most [`MAX_IDEMPOTENCY_BODY_LEN`]
    /// bytes.
    pub body: String,
}

/// A claim on an idempotency key: which actor, which key, which request.
#[derive(Clone, Debug)]
pub struct IdempotencyRequest {
    /// The token whose key it is (keys of different tokens never collide).
    pub actor: Actor,
    /// The `Idempotency-Key` header, 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes.
    pub key: String,
    /// SHA-256 of the method, path and body.
    pub request_hash: KeyHash,
}

/// A stored console session: the hashes of its cookie and CSRF token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the session cookie.
    pub session_hash: KeyHash,
    /// SHA-256 of the session's CSRF token.
    pub csrf_hash: KeyHash,
    /// The admin token that signed in.
    pub token_id: AdminTokenId,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// Admin tokens, the audit log, idempotency records, console sessions and key
/// cleanup. Every backend of [`crate::CredentialStore`] implements it too.
#[async_trait::async_trait]
pub trait ControlStore: Send + Sync + fmt::Debug {
    /// Stores a new admin token.
    async fn create_admin_token(&self, new: NewAdminToken) -> Result<AdminToken>;

    /// The admin token with this hash, whatever its status.
    async fn find_admin_token_by_hash(&self, hash: &KeyHash) -> Result<Option<AdminToken>>;

    /// Admin tokens, oldest first.
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;

    /// Revokes a token as of `at` (an earlier revocation stays) and ends its
    /// console sessions.
    async fn revoke_admin_token(&self, id: &AdminTokenId, at: DateTime<Utc>) -> Result<AdminToken>;

    /// Appends to the audit log.
    async fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditEntry>;

    /// Up to `limit` audit entries with `seq < before` (all when `None`), newest
    /// first.
    async fn list_audit(&self, before: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>>;

    /// Claims an idempotency key for a request, or says how it was used before.
    async fn claim_idempotency(
        &self,
        request: &IdempotencyRequest,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim>;

    /// Records the outcome of a claimed request.
    async fn finish_idempotency(
        &self,
        request: &IdempotencyRequest,
        outcome: &IdempotentOutcome,
    ) -> Result<()>;

    /// Gives a claim up (the request failed and changed nothing), so a retry runs.
    async fn abandon_idempotency(&self, request: &IdempotencyRequest) -> Result<()>;

    /// Deletes idempotency records made before `before`; returns how many.
    async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64>;

    /// Stores a console session.
    async fn create_session(&self, session: &ConsoleSession) -> Result<()>;

    /// The session with this hash if it has not expired at `now`.
    async fn find_session(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>>;

    /// Ends a session (sign out).
    async fn delete_session(&self, hash: &KeyHash) -> Result<()>;

    /// Deletes sessions expired at `now`; returns how many.
    async fn purge_sessions(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Changes an account's name and email (`Some(None)` clears the email); its
    /// money only moves through top-ups and the ledger.
    async fn update_account(&self, id: &AccountId, update: AccountUpdate) -> Result<Account>;

    /// Deletes keys revoked or expired before `before` that hold no reservation;
    /// their usage records stay and still name the key id. Each deletion goes
    /// through the key change feed, so a cached copy is dropped. Returns the ids.
    async fn purge_keys(&self, before: DateTime<Utc>) -> Result<Vec<KeyId>>;
}

/// A change to an account's name or email. `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct AccountUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New email, or `Some(None)` for none.
    pub email: Option<Option<String>>,
}

impl AccountUpdate {
    /// The account's name and email after the update, checked by the same rules
    /// as a new account's.
    pub(crate) fn apply(&self, account: &Account) -> Result<(String, Option<String>)> {
        let name = self.name.clone().unwrap_or_else(|| account.name.clone());
        let email = self.email.clone().unwrap_or_else(|| account.email.clone());
        crate::types::NewAccount {
            name: name.clone(),
            email: email.clone(),
            balance: keygate_types::Micros::ZERO,
        }
        .validate()?;
        Ok((name, email))
    }
}

/// Checks a new admin token before any backend writes it.
pub(crate) fn check_new_admin_token(new: &NewAdminToken) -> Result<()> {
    if new.name.trim().is_empty() || new.name.chars().count() > MAX_NAME_LEN {
        return Err(StoreError::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if new.start.len() > 32 {
        return Err(StoreError::invalid("start", "at most 32 characters"));
    }
    Ok(())
}

/// Checks an audit entry before any backend writes it.
pub(crate) fn check_audit_entry(entry: &NewAuditEntry) -> Result<()> {
    if entry.action.is_empty() || entry.action.len() > MAX_AUDIT_ACTION_LEN {
        return Err(StoreError::invalid(
            "action",
            format!("must be 1 to {MAX_AUDIT_ACTION_LEN} bytes"),
        ));
    }
    if entry.target.as_ref().is_some_and(|t| t.len() > MAX_ID_LEN) {
        return Err(StoreError::invalid(
            "target",
            format!("at most {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII bytes.
pub(crate) fn check_idempotency_request(request: &IdempotencyRequest) -> Result<()> {
    let key = &request.key;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(StoreError::invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

/// Checks an outcome before it is stored.
pub(crate) fn check_outcome(outcome: &IdempotentOutcome) -> Result<()> {
    if outcome.body.len() > MAX_IDEMPOTENCY_BODY_LEN {
        return Err(StoreError::invalid(
            "body",
            format!("an idempotent response is at most {MAX_IDEMPOTENCY_BODY_LEN} bytes"),
        ));
    }
    if outcome
        .target
        .as_ref()
        .is_some_and(|t| t.len() > MAX_ID_LEN)
    {
        return Err(StoreError::invalid(
            "target",
            format!("at most {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Status 0 marks a claimed record whose request has not finished.
pub(crate) const IN_PROGRESS: u16 = 0;

/// How a stored record answers a new claim.
pub(crate) fn claim_of(
    stored_hash: &KeyHash,
    status: u16,
    target: Option<String>,
    body: String,
    request: &IdempotencyRequest,
) -> IdempotencyClaim {
    if stored_hash != &request.request_hash {
        IdempotencyClaim::Mismatch
    } else if status == IN_PROGRESS {
        IdempotencyClaim::InProgress
    } else {
        IdempotencyClaim::Done(IdempotentOutcome {
            status,
            target,
            body,
        })
    }
}

impl StoreError {
    pub(crate) fn admin_token_not_found(id: &AdminTokenId) -> Self {
        StoreError::NotFound {
            entity: "admin token",
            id: id.to_string(),
        }
    }
}
