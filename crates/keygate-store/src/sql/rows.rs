//! Row structs and their conversion to and from domain types. Times are Unix
//! milliseconds; lists and maps are JSON text; scopes are their comma list.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use keygate_keys::KeyHash;
use keygate_types::Micros;

use super::schema::{accounts, api_keys, key_changes};
use crate::error::{Result, StoreError};
use crate::types::{Account, ApiKey, KeyChange, KeySettings};

#[derive(Queryable, Selectable, Insertable, Debug)]
#[diesel(table_name = accounts)]
pub(super) struct AccountRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) email: Option<String>,
    pub(super) balance_micros: i64,
    pub(super) reserved_micros: i64,
    pub(super) created_at: i64,
    pub(super) tier: Option<String>,
}

#[derive(Queryable, Selectable, Insertable, Debug)]
#[diesel(table_name = api_keys)]
pub(super) struct KeyRow {
    pub(super) id: String,
    pub(super) account_id: String,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) key_hash: String,
    pub(super) start: String,
    pub(super) scopes: String,
    pub(super) models: String,
    pub(super) origins: String,
    pub(super) expires_at: Option<i64>,
    pub(super) revoked_at: Option<i64>,
    pub(super) rpm: Option<i64>,
    pub(super) tpm: Option<i64>,
    pub(super) max_parallel: Option<i64>,
    pub(super) spend_limit_micros: Option<i64>,
    pub(super) metadata: String,
    pub(super) created_at: i64,
    pub(super) last_used_at: Option<i64>,
}

/// The settings columns of `api_keys`, written by update.
#[derive(AsChangeset, Debug)]
#[diesel(table_name = api_keys, treat_none_as_null = true)]
pub(super) struct KeySettingsRow {
    pub(super) name: String,
    pub(super) scopes: String,
    pub(super) models: String,
    pub(super) origins: String,
    pub(super) expires_at: Option<i64>,
    pub(super) rpm: Option<i64>,
    pub(super) tpm: Option<i64>,
    pub(super) max_parallel: Option<i64>,
    pub(super) spend_limit_micros: Option<i64>,
    pub(super) metadata: String,
}

#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = key_changes)]
pub(super) struct KeyChangeRow {
    pub(super) seq: i64,
    pub(super) key_id: String,
    pub(super) key_hash: String,
    pub(super) changed_at: i64,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = key_changes)]
pub(super) struct NewKeyChangeRow<'a> {
    pub(super) key_id: &'a str,
    pub(super) key_hash: &'a str,
    pub(super) changed_at: i64,
}

pub(super) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(column: &str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(column, "a time out of range"))
}

fn corrupt(column: &str, what: &str) -> StoreError {
    StoreError::Database(format!("stored {column} holds {what}"))
}

fn limit(column: &str, value: Option<i64>) -> Result<Option<u32>> {
    value
        .map(|v| u32::try_from(v).map_err(|_| corrupt(column, "a limit out of range")))
        .transpose()
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|_| corrupt(column, "malformed JSON"))
}

impl TryFrom<AccountRow> for Account {
    type Error = StoreError;
    fn try_from(row: AccountRow) -> Result<Self> {
        Ok(Account {
            id: row.id.parse()?,
            name: row.name,
            email: row.email,
            balance: Micros(row.balance_micros),
            reserved: Micros(row.reserved_micros),
            tier: row.tier,
            created_at: time("accounts.created_at", row.created_at)?,
        })
    }
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = StoreError;
    fn try_from(row: KeyRow) -> Result<Self> {
        Ok(ApiKey {
            id: row.id.parse()?,
            account_id: row.account_id.parse()?,
            name: row.name,
            kind: row
                .kind
                .parse()
                .map_err(|_| corrupt("api_keys.kind", "an unknown kind"))?,
            key_hash: row
                .key_hash
                .parse::<KeyHash>()
                .map_err(|_| corrupt("api_keys.key_hash", "a malformed hash"))?,
            start: row.start,
            scopes: row
                .scopes
                .parse()
                .map_err(|_| corrupt("api_keys.scopes", "an unknown scope"))?,
            models: from_json("api_keys.models", &row.models)?,
            origins: from_json("api_keys.origins", &row.origins)?,
            expires_at: row
                .expires_at
                .map(|t| time("api_keys.expires_at", t))
                .transpose()?,
            revoked_at: row
                .revoked_at
                .map(|t| time("api_keys.revoked_at", t))
                .transpose()?,
            rpm: limit("api_keys.rpm", row.rpm)?,
            tpm: limit("api_keys.tpm", row.tpm)?,
            max_parallel: limit("api_keys.max_parallel", row.max_parallel)?,
            spend_limit: row.spend_limit_micros.map(Micros),
            metadata: from_json("api_keys.metadata", &row.metadata)?,
            created_at: time("api_keys.created_at", row.created_at)?,
            last_used_at: row
                .last_used_at
                .map(|t| time("api_keys.last_used_at", t))
                .transpose()?,
        })
    }
}

impl TryFrom<KeyChangeRow> for KeyChange {
    type Error = StoreError;
    fn try_from(row: KeyChangeRow) -> Result<Self> {
        Ok(KeyChange {
            seq: u64::try_from(row.seq)
                .map_err(|_| corrupt("key_changes.seq", "a negative seq"))?,
            key_id: row.key_id.parse()?,
            key_hash: row
                .key_hash
                .parse()
                .map_err(|_| corrupt("key_changes.key_hash", "a malformed hash"))?,
            changed_at: time("key_changes.changed_at", row.changed_at)?,
        })
    }
}

impl KeySettingsRow {
    pub(super) fn new(s: &KeySettings) -> Result<Self> {
        Ok(Self {
            name: s.name.clone(),
            scopes: s.scopes.to_string(),
            models: to_json(&s.models)?,
            origins: to_json(&s.origins)?,
            expires_at: s.expires_at.map(millis),
            rpm: s.rpm.map(i64::from),
            tpm: s.tpm.map(i64::from),
            max_parallel: s.max_parallel.map(i64::from),
            spend_limit_micros: s.spend_limit.map(|m| m.0),
            metadata: to_json(&s.metadata)?,
        })
    }
}

impl KeyRow {
    pub(super) fn from_key(key: &ApiKey) -> Result<Self> {
        let s = KeySettingsRow::new(&key.settings())?;
        Ok(Self {
            id: key.id.to_string(),
            account_id: key.account_id.to_string(),
            name: s.name,
            kind: key.kind.name().to_owned(),
            key_hash: key.key_hash.to_hex(),
            start: key.start.clone(),
            scopes: s.scopes,
            models: s.models,
            origins: s.origins,
            expires_at: s.expires_at,
            revoked_at: key.revoked_at.map(millis),
            rpm: s.rpm,
            tpm: s.tpm,
            max_parallel: s.max_parallel,
            spend_limit_micros: s.spend_limit_micros,
            metadata: s.metadata,
            created_at: millis(key.created_at),
            last_used_at: key.last_used_at.map(millis),
        })
    }
}
