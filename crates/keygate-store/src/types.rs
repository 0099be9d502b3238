//! Domain types: accounts, API keys, the inputs that create and change them, and
//! the key change feed. Plain data: the rules these inputs must follow are in
//! `validate`, so every backend enforces the same ones.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use keygate_keys::{KeyHash, KeyKind};
use keygate_types::{AccountId, KeyId, Micros};

use crate::scope::ScopeSet;

/// A billing account that owns keys and a balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Id.
    pub id: AccountId,
    /// Display name.
    pub name: String,
    /// Contact address for the operator, optional.
    pub email: Option<String>,
    /// Balance in micro-units.
    pub balance: Micros,
    /// Money held by in-flight requests, in micro-units.
    pub reserved: Micros,
    /// The account's tier (a `[tiers.NAME]` of the gateway's config), if set.
    pub tier: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Input to create an account.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Display name, 1 to [`crate::MAX_NAME_LEN`] characters.
    pub name: String,
    /// Optional email.
    pub email: Option<String>,
    /// Opening balance, zero or more.
    pub balance: Micros,
}

/// Whether a key can be used right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked (takes precedence over expired).
    Revoked,
}

impl KeyStatus {
    /// `active`, `expired` or `revoked`.
    pub fn name(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

/// A stored API key: its settings and the hash of the key, never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Id.
    pub id: KeyId,
    /// Owning account.
    pub account_id: AccountId,
    /// Label.
    pub name: String,
    /// Private or public.
    pub kind: KeyKind,
    /// SHA-256 of the key.
    pub key_hash: KeyHash,
    /// Display start such as `kg_sk_3f9a`.
    pub start: String,
    /// What the key may call.
    pub scopes: ScopeSet,
    /// Model names or trailing-`*` patterns the key may use; empty means all.
    pub models: Vec<String>,
    /// Browser origins a public key may be used from.
    pub origins: Vec<String>,
    /// When the key stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When the key was (or will be, for a rotation grace period) revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Requests per minute, if limited.
    pub rpm: Option<u32>,
    /// Tokens per minute, if limited.
    pub tpm: Option<u32>,
    /// Requests in flight at once, if limited.
    pub max_parallel: Option<u32>,
    /// Most this key may spend, if limited.
    pub spend_limit: Option<Micros>,
    /// Small operator-defined labels.
    pub metadata: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last time a request used the key (written in batches).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// A key as first stored: `new`'s settings, not revoked, never used.
    pub fn new(id: KeyId, new: NewApiKey, created_at: DateTime<Utc>) -> Self {
        let s = new.settings;
        Self {
            id,
            account_id: new.account_id,
            name: s.name,
            kind: s.kind,
            key_hash: new.key_hash,
            start: new.start,
            scopes: s.scopes,
            models: s.models,
            origins: s.origins,
            expires_at: s.expires_at,
            revoked_at: None,
            rpm: s.rpm,
            tpm: s.tpm,
            max_parallel: s.max_parallel,
            spend_limit: s.spend_limit,
            metadata: s.metadata,
            created_at,
            last_used_at: None,
        }
    }

    /// The key's settings, as a rotation copies them.
    pub fn settings(&self) -> KeySettings {
        KeySettings {
            name: self.name.clone(),
            kind: self.kind,
            scopes: self.scopes,
            models: self.models.clone(),
            origins: self.origins.clone(),
            expires_at: self.expires_at,
            rpm: self.rpm,
            tpm: self.tpm,
            max_parallel: self.max_parallel,
            spend_limit: self.spend_limit,
            metadata: self.metadata.clone(),
        }
    }

    /// The key's status at `now`. Checked on every request.
    pub fn status(&self, now: DateTime<Utc>) -> KeyStatus {
        if self.revoked_at.is_some_and(|at| at <= now) {
            KeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// The settings a key is created with (and that a rotation copies).
#[derive(Clone, Debug)]
pub struct KeySettings {
    /// Label, up to [`crate::MAX_NAME_LEN`] characters, may be empty.
    pub name: String,
    /// Private or public.
    pub kind: KeyKind,
    /// Scopes; must not be empty.
    pub scopes: ScopeSet,
    /// Allowed models; empty means all, which public keys may not have.
    pub models: Vec<String>,
    /// Allowed origins (public keys).
    pub origins: Vec<String>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub max_parallel: Option<u32>,
    /// Spend limit.
    pub spend_limit: Option<Micros>,
    /// Operator labels.
    pub metadata: BTreeMap<String, String>,
}

impl KeySettings {
    /// Defaults for a kind: every scope for private keys, `chat` and `models` for
    /// public ones; no limits; no expiry.
    pub fn new(kind: KeyKind) -> Self {
        let scopes = match kind {
            KeyKind::Private => ScopeSet::all(),
            KeyKind::Public => "chat,models".parse().unwrap_or_default(),
        };
        Self {
            name: String::new(),
            kind,
            scopes,
            models: Vec::new(),
            origins: Vec::new(),
            expires_at: None,
            rpm: None,
            tpm: None,
            max_parallel: None,
            spend_limit: None,
            metadata: BTreeMap::new(),
        }
    }
}

/// Input to create a key: the settings and the hash of a key generated by
/// `keygate-keys`. The key itself never reaches the store.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    /// Owning account; must exist.
    pub account_id: AccountId,
    /// SHA-256 of the generated key.
    pub key_hash: KeyHash,
    /// Display start of the generated key.
    pub start: String,
    /// Settings.
    pub settings: KeySettings,
}

/// The hash and display start of a freshly generated replacement key.
#[derive(Clone, Debug)]
pub struct ReplacementKey {
    /// SHA-256 of the new key.
    pub key_hash: KeyHash,
    /// Display start of the new key.
    pub start: String,
}

/// A change to a key's settings. `None` leaves a field as it is; for optional
/// fields `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct KeyUpdate {
    /// New label.
    pub name: Option<String>,
    /// New scopes.
    pub scopes: Option<ScopeSet>,
    /// New allowed models.
    pub models: Option<Vec<String>>,
    /// New allowed origins.
    pub origins: Option<Vec<String>>,
    /// New expiry, or `Some(None)` for none.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// New rpm limit.
    pub rpm: Option<Option<u32>>,
    /// New tpm limit.
    pub tpm: Option<Option<u32>>,
    /// New limit of requests in flight.
    pub max_parallel: Option<Option<u32>>,
    /// New spend limit.
    pub spend_limit: Option<Option<Micros>>,
    /// Replaces the metadata map.
    pub metadata: Option<BTreeMap<String, String>>,
}

impl KeyUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.scopes.is_none()
            && self.models.is_none()
            && self.origins.is_none()
            && self.expires_at.is_none()
            && self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_parallel.is_none()
            && self.spend_limit.is_none()
            && self.metadata.is_none()
    }
}

/// One entry of the key change feed: key `key_id` (hash `key_hash`) changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// Position in the feed; strictly increasing in commit order.
    pub seq: u64,
    /// The key that changed.
    pub key_id: KeyId,
    /// Its hash, so a cache keyed by hash can drop it.
    pub key_hash: KeyHash,
    /// When.
    pub changed_at: DateTime<Utc>,
}
