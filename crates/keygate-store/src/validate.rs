//! The rules every backend enforces, written once: what a valid account, key,
//! top-up, reservation or usage record is, and how a key update applies. The
//! memory and SQL backends call these before they write, so each refuses the same
//! input with the same message.

use chrono::{DateTime, Utc};
use keygate_keys::KeyKind;
use keygate_types::Micros;
use keygate_types::limits::{
    MAX_CLIENT_IP_LEN, MAX_CLIENT_NAME_LEN, MAX_EMAIL_LEN, MAX_MODEL_LEN, MAX_NAME_LEN,
    MAX_UPSTREAM_NAME_LEN,
};

use crate::error::{Result, StoreError};
use crate::ledger::{NewReservation, UsageRecord};
use crate::scope::{Scope, ScopeSet};
use crate::types::{ApiKey, KeySettings, KeyStatus, KeyUpdate, NewAccount};

/// Upper bound of allowed models per key.
pub const MAX_MODELS: usize = 64;
/// Upper bound of allowed origins per key.
pub const MAX_ORIGINS: usize = 32;
/// Upper bound of metadata entries per key.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Largest single top-up: one billion credits.
pub const MAX_TOP_UP: Micros = Micros(1_000_000_000 * keygate_types::MICROS_PER_CREDIT);

/// The longest entry of a key's allowed models (a name or a prefix ending in `*`),
/// in bytes.
const MAX_MODEL_PATTERN_LEN: usize = 128;
/// The longest host (with its port) of an allowed origin, in bytes.
const MAX_ORIGIN_HOST_LEN: usize = 253;
/// The longest name of a metadata entry, in bytes.
const MAX_METADATA_NAME_LEN: usize = 40;

impl NewAccount {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate_name("name", &self.name, false)?;
        if let Some(email) = &self.email {
            let plausible = email.len() <= MAX_EMAIL_LEN
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

impl KeySettings {
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
        if self.max_parallel == Some(0) {
            return Err(StoreError::invalid("max_parallel", "must be at least 1"));
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
                && key.len() <= MAX_METADATA_NAME_LEN
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !key_ok {
                return Err(StoreError::invalid(
                    "metadata",
                    format!(
                        "{key:?}: names are 1 to {MAX_METADATA_NAME_LEN} characters of a-z, 0-9, _ - ."
                    ),
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

impl KeyUpdate {
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
        if let Some(max_parallel) = self.max_parallel {
            settings.max_parallel = max_parallel;
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

/// Checks a top-up's amount.
pub(crate) fn check_top_up(amount: Micros) -> Result<()> {
    if amount <= Micros::ZERO || amount > MAX_TOP_UP {
        return Err(StoreError::invalid(
            "amount",
            format!("a top-up must be more than 0 and at most {MAX_TOP_UP} credits"),
        ));
    }
    Ok(())
}

/// A key can be rotated while it is usable: not revoked and not expired (its
/// replacement would copy the past expiry).
pub(crate) fn check_rotatable(key: &ApiKey, now: DateTime<Utc>) -> Result<()> {
    match key.status(now) {
        KeyStatus::Active => Ok(()),
        KeyStatus::Revoked => Err(StoreError::Conflict(format!(
            "key {} is revoked and cannot be rotated",
            key.id
        ))),
        KeyStatus::Expired => Err(StoreError::Conflict(format!(
            "key {} has expired and cannot be rotated; create a new key instead",
            key.id
        ))),
    }
}

/// Checks a reservation's amount.
pub(crate) fn check_reservation(new: &NewReservation) -> Result<()> {
    if new.amount < Micros::ZERO {
        return Err(StoreError::invalid(
            "amount",
            "a reservation cannot be negative",
        ));
    }
    Ok(())
}

/// Checks a usage record's bounded text fields, so every backend refuses the
/// same ones. Its numbers are never refused (see [`stored_usage_record`]).
pub(crate) fn check_usage_record(record: &UsageRecord) -> Result<()> {
    let too_long = |field: &'static str, max: usize| {
        StoreError::invalid(field, format!("at most {max} bytes"))
    };
    if record.model.len() > MAX_MODEL_LEN {
        return Err(too_long("model", MAX_MODEL_LEN));
    }
    if record.upstream.len() > MAX_UPSTREAM_NAME_LEN {
        return Err(too_long("upstream", MAX_UPSTREAM_NAME_LEN));
    }
    if record
        .client_name
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CLIENT_NAME_LEN)
    {
        return Err(too_long("client_name", MAX_CLIENT_NAME_LEN));
    }
    if record
        .client_ip
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CLIENT_IP_LEN)
    {
        return Err(too_long("client_ip", MAX_CLIENT_IP_LEN));
    }
    Ok(())
}

/// A usage record as every backend stores it: its counts (tokens, latencies)
/// clamped to `i64::MAX`, the most a `BIGINT` column holds. A usage record is
/// never refused for its numbers.
pub(crate) fn stored_usage_record(record: &UsageRecord) -> UsageRecord {
    let clamp = |n: u64| n.min(i64::MAX.unsigned_abs());
    UsageRecord {
        input_tokens: clamp(record.input_tokens),
        output_tokens: clamp(record.output_tokens),
        cached_tokens: clamp(record.cached_tokens),
        latency_ms: clamp(record.latency_ms),
        ttfb_ms: clamp(record.ttfb_ms),
        ..record.clone()
    }
}

/// Checks a tier name: 1 to `MAX_TIER_LEN` letters, digits, `-` and `_`.
pub fn validate_tier(tier: Option<&str>) -> Result<()> {
    let Some(tier) = tier else {
        return Ok(());
    };
    let ok = !tier.is_empty()
        && tier.len() <= keygate_types::limits::MAX_TIER_LEN
        && tier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "tier",
            format!(
                "a tier name is 1 to {} letters, digits, '-' and '_'",
                keygate_types::limits::MAX_TIER_LEN
            ),
        ))
    }
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
        && model.len() <= MAX_MODEL_PATTERN_LEN
        && !pattern_body.contains('*')
        && model.bytes().all(|b| b.is_ascii_graphic() && b != b',');
    if valid {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "models",
            format!(
                "{model:?}: a model is a name or a prefix ending in *, up to {MAX_MODEL_PATTERN_LEN} visible characters, no commas"
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
            && host.len() <= MAX_ORIGIN_HOST_LEN
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
                    name: "x".repeat(MAX_NAME_LEN + 1),
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
