//! Domain types: accounts, API keys, the inputs that create and change them, and
//! the key change feed. Each input type validates itself so every backend
//! enforces the same rules.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use keygate_keys::{KeyHash, KeyKind};
use rand::RngExt;

use crate::error::{Result, StoreError};
use crate::money::Micros;
use crate::scope::{Scope, ScopeSet};

/// Upper bound of a name or label.
pub const MAX_NAME_LEN: usize = 200;
/// Upper bound of allowed models per key.
pub const MAX_MODELS: usize = 64;
/// Upper bound of allowed origins per key.
pub const MAX_ORIGINS: usize = 32;
/// Upper bound of metadata entries per key.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Largest single top-up: one billion credits.
pub const MAX_TOP_UP: Micros = Micros(1_000_000_000 * crate::money::MICROS_PER_CREDIT);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                let bits: u64 = rand::rng().random();
                Self(format!(concat!($prefix, "_{:016x}"), bits))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                let s = s.trim();
                let valid = s.len() <= 40
                    && s
                        .strip_prefix(concat!($prefix, "_"))
                        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
                if valid {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(StoreError::invalid("id", not_an_id(s, $prefix)))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account's id, `acct_` and 16 hex.
    AccountId,
    "acct"
);
id_type!(
    /// An API key's id, `key_` and 16 hex. Not secret; not the key.
    KeyId,
    "key"
);
id_type!(
    /// A reservation's id, `res_` and 16 hex.
    ReservationId,
    "res"
);

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
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Input to create an account.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// Optional email.
    pub email: Option<String>,
    /// Opening balance, zero or more.
    pub balance: Micros,
}

impl NewAccount {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_name("name", &self.name, false)?;
        if let Some(email) = &self.email {
            let plausible = email.len() <= 254
                && email.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                })
                && !email.chars().any(|c| c.is_whitespace() || c.is_control());
            if !plausible {
                return Err(StoreError::invalid(
                    "email",
                    format!("{email:?} is not an email address"),
                ));
            }
        }
        if self.balance < Micros::ZERO || self.balance > MAX_TOP_UP {
            return Err(StoreError::invalid(
                "balance",
                format!("must be between 0 and {MAX_TOP_UP} credits"),
            ));
        }
        Ok(())
    }
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
    /// Label, up to 200 characters, may be empty.
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
            spend_limit: None,
            metadata: BTreeMap::new(),
        }
    }

    /// Checks every field and the rules between them.
    pub fn validate(&self) -> Result<()> {
        validate_name("name", &self.name, true)?;
        if self.scopes.is_empty() {
            return Err(StoreError::invalid(
                "scopes",
                "a key needs at least one scope",
            ));
        }
        if self.models.len() > MAX_MODELS {
            return Err(StoreError::invalid(
                "models",
                format!("at most {MAX_MODELS} models per key"),
            ));
        }
        for model in &self.models {
            validate_model(model)?;
        }
        if self.kind == KeyKind::Public {
            if self.models.is_empty() || self.models.iter().any(|m| m == "*") {
                return Err(StoreError::invalid(
                    "models",
                    "a public key needs an explicit list of allowed models (not *)",
                ));
            }
            let public_scopes: ScopeSet = [Scope::Chat, Scope::Models].into_iter().collect();
            if self.scopes.union(public_scopes) != public_scopes {
                return Err(StoreError::invalid(
                    "scopes",
                    "a public key may only have the chat and models scopes",
                ));
            }
        }
        if self.origins.len() > MAX_ORIGINS {
            return Err(StoreError::invalid(
                "origins",
                format!("at most {MAX_ORIGINS} origins per key"),
            ));
        }
        for origin in &self.origins {
            validate_origin(origin)?;
        }
        if self.rpm == Some(0) {
            return Err(StoreError::invalid("rpm", "must be at least 1"));
        }
        if self.tpm == Some(0) {
            return Err(StoreError::invalid("tpm", "must be at least 1"));
        }
        if self.spend_limit.is_some_and(|limit| limit < Micros::ZERO) {
            return Err(StoreError::invalid("spend limit", "must not be negative"));
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(StoreError::invalid(
                "metadata",
                format!("at most {MAX_METADATA_ENTRIES} entries"),
            ));
        }
        for (key, value) in &self.metadata {
            let key_ok = !key.is_empty()
                && key.len() <= 40
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !key_ok {
                return Err(StoreError::invalid(
                    "metadata",
                    format!("{key:?}: names are 1 to 40 characters of a-z, 0-9, _ - ."),
                ));
            }
            if value.chars().count() > MAX_NAME_LEN || value.chars().any(char::is_control) {
                return Err(StoreError::invalid(
                    "metadata",
                    format!("value of {key:?}: up to {MAX_NAME_LEN} printable characters"),
                ));
            }
        }
        Ok(())
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
            && self.spend_limit.is_none()
            && self.metadata.is_none()
    }

    /// Applies the update to a copy of `key`'s settings and validates the result.
    /// Backends call this so the same rules hold everywhere.
    pub fn apply(&self, key: &ApiKey) -> Result<KeySettings> {
        let mut settings = key.settings();
        if let Some(name) = &self.name {
            settings.name.clone_from(name);
        }
        if let Some(scopes) = self.scopes {
            settings.scopes = scopes;
        }
        if let Some(models) = &self.models {
            settings.models.clone_from(models);
        }
        if let Some(origins) = &self.origins {
            settings.origins.clone_from(origins);
        }
        if let Some(expires_at) = self.expires_at {
            settings.expires_at = expires_at;
        }
        if let Some(rpm) = self.rpm {
            settings.rpm = rpm;
        }
        if let Some(tpm) = self.tpm {
            settings.tpm = tpm;
        }
        if let Some(limit) = self.spend_limit {
            settings.spend_limit = limit;
        }
        if let Some(metadata) = &self.metadata {
            settings.metadata.clone_from(metadata);
        }
        settings.validate()?;
        Ok(settings)
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

/// Says why `text` is not an id without echoing it whole: a pasted API key must not
/// be printed back.
fn not_an_id(text: &str, prefix: &str) -> String {
    let looks_like_a_key = text.contains("_sk_") || text.contains("_pk_");
    if looks_like_a_key {
        return format!(
            "that looks like an API key, not a {prefix}_… id; `keygate-admin key list` shows ids"
        );
    }
    let shown: String = text.chars().take(24).collect();
    let ellipsis = if text.chars().count() > 24 { "…" } else { "" };
    format!("{shown:?}{ellipsis} is not a {prefix}_… id")
}

fn validate_name(field: &'static str, name: &str, may_be_empty: bool) -> Result<()> {
    if !may_be_empty && name.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(StoreError::invalid(
            field,
            format!("at most {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn validate_model(model: &str) -> Result<()> {
    let pattern_body = model.strip_suffix('*').unwrap_or(model);
    let valid = !model.is_empty()
        && model.len() <= 128
        && !pattern_body.contains('*')
        && model.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if valid {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "models",
            format!(
                "{model:?}: a model is a name or a prefix ending in *, up to 128 visible characters, no commas"
            ),
        ))
    }
}

fn validate_origin(origin: &str) -> Result<()> {
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let valid = host.is_some_and(|host| {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    });
    if valid {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "origins",
            format!("{origin:?}: an origin is scheme://host[:port], e.g. https://app.example"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private() -> KeySettings {
        KeySettings::new(KeyKind::Private)
    }

    #[test]
    fn ids_generate_and_parse() {
        let id = AccountId::generate();
        assert!(id.as_str().starts_with("acct_"));
        assert_eq!(id.as_str().parse::<AccountId>().unwrap(), id);
        assert!("key_abc".parse::<AccountId>().is_err());
        assert!("acct_".parse::<AccountId>().is_err());
        assert!("acct_a;b".parse::<AccountId>().is_err());
        let pasted = format!("kg_sk_{}", "ab".repeat(36));
        let err = pasted.parse::<KeyId>().unwrap_err().to_string();
        assert!(!err.contains(&"ab".repeat(4)), "{err}");
        assert!(err.contains("API key"), "{err}");
        assert!(KeyId::generate().as_str().parse::<KeyId>().is_ok());
    }

    #[test]
    fn settings_validation() {
        assert!(private().validate().is_ok());
        let cases: Vec<(KeySettings, &str)> = vec![
            (
                KeySettings {
                    scopes: ScopeSet::NONE,
                    ..private()
                },
                "scopes",
            ),
            (KeySettings::new(KeyKind::Public), "models"),
            (
                KeySettings {
                    models: vec!["*".into()],
                    ..KeySettings::new(KeyKind::Public)
                },
                "models",
            ),
            (
                KeySettings {
                    models: vec!["o3".into()],
                    scopes: ScopeSet::all(),
                    ..KeySettings::new(KeyKind::Public)
                },
                "scopes",
            ),
            (
                KeySettings {
                    models: vec!["gpt*4".into()],
                    ..private()
                },
                "models",
            ),
            (
                KeySettings {
                    models: vec!["a,b".into()],
                    ..private()
                },
                "models",
            ),
            (
                KeySettings {
                    origins: vec!["app.example".into()],
                    ..private()
                },
                "origins",
            ),
            (
                KeySettings {
                    origins: vec!["https://a/b".into()],
                    ..private()
                },
                "origins",
            ),
            (
                KeySettings {
                    rpm: Some(0),
                    ..private()
                },
                "rpm",
            ),
            (
                KeySettings {
                    spend_limit: Some(Micros(-1)),
                    ..private()
                },
                "spend limit",
            ),
            (
                KeySettings {
                    name: "x".repeat(201),
                    ..private()
                },
                "name",
            ),
            (
                KeySettings {
                    name: "a\nb".into(),
                    ..private()
                },
                "name",
            ),
            (
                KeySettings {
                    metadata: [("bad key".to_owned(), "v".to_owned())].into(),
                    ..private()
                },
                "metadata",
            ),
        ];
        for (settings, field) in cases {
            match settings.validate() {
                Err(StoreError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let public = KeySettings {
            models: vec!["gpt-4o*".into()],
            origins: vec!["https://app.example".into(), "http://localhost:3000".into()],
            ..KeySettings::new(KeyKind::Public)
        };
        assert!(public.validate().is_ok());
    }

    #[test]
    fn account_validation() {
        let ok = NewAccount {
            name: "Acme".into(),
            email: Some("ops@acme.example".into()),
            balance: Micros(0),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            NewAccount {
                name: " ".into(),
                ..ok.clone()
            },
            NewAccount {
                email: Some("nope".into()),
                ..ok.clone()
            },
            NewAccount {
                email: Some("a\u{1b}[2J@b.example".into()),
                ..ok.clone()
            },
            NewAccount {
                balance: Micros(-1),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(StoreError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
