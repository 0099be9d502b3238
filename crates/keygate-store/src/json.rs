//! The JSON shape of the store's records, shared by `keygate-admin --json` and
//! the admin API: times in RFC 3339 (seconds, `Z`), money as integer `_micros`,
//! never a key or a token (the one answer that creates a secret adds it itself).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::{Account, AdminToken, ApiKey, AuditEntry, UsageTotals};

/// RFC 3339, seconds, `Z`.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// [`time`], or `null`.
pub fn opt_time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::String(time(t)))
}

/// An account.
pub fn account(a: &Account) -> Value {
    json!({
        "id": a.id.as_str(),
        "name": a.name,
        "email": a.email,
        "balance_micros": a.balance.0,
        "reserved_micros": a.reserved.0,
        "tier": a.tier,
        "created_at": time(a.created_at),
    })
}

/// A key, never the key itself.
pub fn key(k: &ApiKey) -> Value {
    json!({
        "id": k.id.as_str(),
        "account_id": k.account_id.as_str(),
        "name": k.name,
        "kind": k.kind.name(),
        "start": k.start,
        "status": k.status(Utc::now()).name(),
        "scopes": k.scopes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "models": k.models,
        "origins": k.origins,
        "expires_at": opt_time(k.expires_at),
        "revoked_at": opt_time(k.revoked_at),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "max_parallel": k.max_parallel,
        "spend_limit_micros": k.spend_limit.map(|m| m.0),
        "metadata": k.metadata,
        "created_at": time(k.created_at),
        "last_used_at": opt_time(k.last_used_at),
    })
}

/// An admin token, never the token itself.
pub fn admin_token(t: &AdminToken) -> Value {
    json!({
        "id": t.id.as_str(),
        "name": t.name,
        "role": t.role.name(),
        "start": t.start,
        "status": if t.is_active(Utc::now()) { "active" } else { "revoked" },
        "created_at": time(t.created_at),
        "revoked_at": opt_time(t.revoked_at),
    })
}

/// An audit log entry.
pub fn audit(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
    })
}

/// The counts and cost of usage totals, without the group.
pub fn totals(t: &UsageTotals) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("requests".into(), t.requests.into());
    map.insert("input_tokens".into(), t.input_tokens.into());
    map.insert("output_tokens".into(), t.output_tokens.into());
    map.insert("cached_tokens".into(), t.cached_tokens.into());
    map.insert("cost_micros".into(), t.cost.0.into());
    map
}

/// One usage report row: its group, counts and cost.
pub fn usage_row(t: &UsageTotals) -> Value {
    let mut map = Map::new();
    map.insert("group".into(), t.group.clone().into());
    map.extend(totals(t));
    Value::Object(map)
}

/// The sum of report rows, or `None` if it does not fit.
pub fn grand_total(rows: &[UsageTotals]) -> Option<UsageTotals> {
    rows.iter().try_fold(UsageTotals::default(), |sum, row| {
        Some(UsageTotals {
            group: String::new(),
            requests: sum.requests.checked_add(row.requests)?,
            input_tokens: sum.input_tokens.checked_add(row.input_tokens)?,
            output_tokens: sum.output_tokens.checked_add(row.output_tokens)?,
            cached_tokens: sum.cached_tokens.checked_add(row.cached_tokens)?,
            cost: sum.cost.checked_add(row.cost)?,
        })
    })
}
