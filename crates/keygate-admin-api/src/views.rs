//! The JSON the API answers with, in the shape `keygate-admin --json` prints:
//! times in RFC 3339, money as integer `_micros`, never a key or a token except
//! in the one response that creates it.

use chrono::{DateTime, SecondsFormat, Utc};
use keygate_store::{Account, AdminToken, ApiKey, AuditEntry, UsageTotals};
use serde_json::{Value, json};

/// RFC 3339, seconds, `Z`.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn opt_time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| Value::String(time(t)))
}

/// An account.
pub(crate) fn account(a: &Account) -> Value {
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
pub(crate) fn key(k: &ApiKey) -> Value {
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
pub(crate) fn admin_token(t: &AdminToken) -> Value {
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
pub(crate) fn audit(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
    })
}

/// The counts and cost of one usage group.
pub(crate) fn totals(t: &UsageTotals) -> Value {
    json!({
        "group": t.group,
        "requests": t.requests,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cached_tokens": t.cached_tokens,
        "cost_micros": t.cost.0,
    })
}

/// The sum of report rows, or `None` if it does not fit.
pub(crate) fn grand_total(rows: &[UsageTotals]) -> Option<UsageTotals> {
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
