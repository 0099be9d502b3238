//! Request bodies and query strings as the API takes them: strict (unknown
//! fields refused), money as `_micros` integers or decimal credits in strings,
//! durations as humantime text (`30d`, `24h`).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use keygate_store::{Micros, ScopeSet};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parses a JSON body strictly; an empty body reads as `{}`.
pub(crate) fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::Invalid {
        param: None,
        message: format!(
            "the body is not the expected JSON (line {}, column {}): {}",
            e.line(),
            e.column(),
            // serde's message names the field and the type, never the value.
            e.to_string()
                .split(" at line")
                .next()
                .unwrap_or("malformed")
        ),
    })
}

/// Money given either as decimal credits in a string or as integer micro-units.
pub(crate) fn money(
    credits: Option<&str>,
    micros: Option<i64>,
    field: &str,
) -> Result<Option<Micros>, ApiError> {
    match (credits, micros) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            field,
            format!("give {field} (credits as a string) or {field}_micros, not both"),
        )),
        (Some(text), None) => Micros::parse_credits(text)
            .map(Some)
            .map_err(|e| ApiError::invalid(field, format!("{field}: {e}"))),
        (None, Some(n)) => Ok(Some(Micros(n))),
        (None, None) => Ok(None),
    }
}

/// A humantime duration (`30d`, `24h`), more than zero.
pub(crate) fn duration(text: &str, field: &str) -> Result<TimeDelta, ApiError> {
    let parsed = humantime::parse_duration(text.trim()).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{field} is not a duration such as 30d, 12h or 90s"),
        )
    })?;
    if parsed.is_zero() {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be more than zero"),
        ));
    }
    TimeDelta::from_std(parsed)
        .map_err(|_| ApiError::invalid(field, format!("{field} is too long")))
}

/// An RFC 3339 time.
pub(crate) fn timestamp(text: &str, field: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid(
                field,
                format!("{field} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"),
            )
        })
}

/// Scope names as a list.
pub(crate) fn scopes(names: &[String]) -> Result<ScopeSet, ApiError> {
    names
        .join(",")
        .parse()
        .map_err(|e: keygate_store::UnknownScope| ApiError::invalid("scopes", e.to_string()))
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value, `None`
/// when the field is left out.
fn nullable<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /api/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAccountBody {
    pub(crate) name: String,
    pub(crate) email: Option<String>,
    pub(crate) balance: Option<String>,
    pub(crate) balance_micros: Option<i64>,
    /// A `[tiers.NAME]` of the gateway's config.
    pub(crate) tier: Option<String>,
}

/// `PATCH /api/accounts/{id}`: a left-out field stays, `null` clears the email.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountPatchBody {
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) tier: Option<Option<String>>,
}

/// `POST /api/accounts/{id}/top-up`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopUpBody {
    pub(crate) amount: Option<String>,
    pub(crate) amount_micros: Option<i64>,
}

/// `POST /api/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKeyBody {
    pub(crate) account: String,
    #[serde(default)]
    pub(crate) name: String,
    pub(crate) kind: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) models: Vec<String>,
    #[serde(default)]
    pub(crate) origins: Vec<String>,
    pub(crate) expires_in: Option<String>,
    pub(crate) expires_at: Option<String>,
    pub(crate) rpm: Option<u32>,
    pub(crate) tpm: Option<u32>,
    pub(crate) max_parallel: Option<u32>,
    pub(crate) spend_limit: Option<String>,
    pub(crate) spend_limit_micros: Option<i64>,
    #[serde(default)]
    pub(crate) metadata: BTreeMap<String, String>,
}

/// `PATCH /api/keys/{id}`: a left-out field stays, `null` clears.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyPatchBody {
    pub(crate) name: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) models: Option<Vec<String>>,
    pub(crate) origins: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) tpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) max_parallel: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) spend_limit_micros: Option<Option<i64>>,
    pub(crate) metadata: Option<BTreeMap<String, String>>,
}

/// `POST /api/keys/{id}/rotate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    pub(crate) grace: Option<String>,
}

/// `POST /api/usage/purge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeBody {
    pub(crate) older_than: String,
}

/// `POST /api/admin-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenBody {
    pub(crate) name: String,
    pub(crate) role: String,
}

/// A query string as name → value; a name given twice is refused.
pub(crate) fn query(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut map = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ApiError::Invalid {
                param: None,
                message: format!(
                    "unknown query parameter; this endpoint takes {}",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            });
        }
        if map.insert(name.to_string(), value.to_string()).is_some() {
            return Err(ApiError::invalid(
                &name,
                format!("{name} is given more than once"),
            ));
        }
    }
    Ok(map)
}

/// `limit` from a query: 1 to 500, default 100.
pub(crate) fn limit(query: &BTreeMap<String, String>) -> Result<usize, ApiError> {
    match query.get("limit") {
        None => Ok(100),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", "limit must be a whole number from 1 to 500")
            }),
    }
}
