//! The key holder's own view, answered by keygate with the presented key and the
//! `usage` scope: `GET /v1/key` (this key's settings, spend and last use — never
//! the key), `GET /v1/usage?since=&until=&group_by=model|day` and its alias
//! `GET /v1/quota` (the account's balance and reserved money, this key's
//! requests, tokens and cost).

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use keygate_store::{ApiKey, CredentialStore, Ledger, UsageGroup, UsageQuery, UsageTotals};
use serde_json::{Value, json};

use crate::body::GatewayBody;
use crate::endpoint::Endpoint;
use crate::error::ProxyError;

/// Whether this module answers `endpoint`.
pub(crate) fn serves(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::KeyInfo | Endpoint::KeyUsage | Endpoint::Quota
    )
}

/// The answer for an endpoint [`serves`] names. `ledger` is `None` when billing
/// is off: then there is no spend or usage to report, and the answer says so
/// with zeros and `"billing": false`.
pub(crate) async fn answer(
    endpoint: Endpoint,
    key: &ApiKey,
    query: Option<&str>,
    store: &dyn CredentialStore,
    ledger: Option<&dyn Ledger>,
    now: DateTime<Utc>,
) -> Result<Response<GatewayBody>, ProxyError> {
    let body = match endpoint {
        Endpoint::KeyInfo => key_info(key, ledger).await?,
        _ => usage(key, query, store, ledger, now).await?,
    };
    let mut response = Response::new(GatewayBody::full(body.to_string()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn key_info(key: &ApiKey, ledger: Option<&dyn Ledger>) -> Result<Value, ProxyError> {
    let spent = match ledger {
        Some(ledger) => Some(ledger.key_spend(&key.id).await?.spent.0),
        None => None,
    };
    Ok(json!({
        "id": key.id.as_str(),
        "name": key.name,
        "kind": key.kind.name(),
        "start": key.start,
        "scopes": key.scopes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "models": key.models,
        "expires_at": key.expires_at.map(time),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "spend_limit_micros": key.spend_limit.map(|m| m.0),
        "spent_micros": spent,
        "created_at": time(key.created_at),
        "last_used_at": key.last_used_at.map(time),
    }))
}

async fn usage(
    key: &ApiKey,
    query: Option<&str>,
    store: &dyn CredentialStore,
    ledger: Option<&dyn Ledger>,
    now: DateTime<Utc>,
) -> Result<Value, ProxyError> {
    let mut since = now - TimeDelta::days(30);
    let mut until = now;
    let mut group_by = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "since" => since = when(&value, "since", now)?,
            "until" => until = when(&value, "until", now)?,
            "group_by" => {
                group_by = Some(match value.as_ref() {
                    "model" => UsageGroup::Model,
                    "day" => UsageGroup::Day,
                    _ => {
                        return Err(ProxyError::InvalidRequest(
                            "group_by must be model or day".into(),
                        ));
                    }
                });
            }
            // Others (the key's own `?api-key=` among them) are not this
            // endpoint's and are left alone.
            _ => {}
        }
    }
    if since >= until {
        return Err(ProxyError::InvalidRequest(
            "since must be before until".into(),
        ));
    }
    let account = store.get_account(&key.account_id).await?;
    let (totals, rows) = match ledger {
        None => (UsageTotals::default(), Vec::new()),
        Some(ledger) => {
            let report = |group_by| UsageQuery {
                since,
                until,
                account: None,
                key: Some(key.id.clone()),
                group_by,
            };
            let by_model = ledger.usage_report(&report(UsageGroup::Model)).await?;
            let total = sum(&by_model)?;
            let rows = match group_by {
                None => Vec::new(),
                Some(UsageGroup::Model) => by_model,
                Some(group) => ledger.usage_report(&report(group)).await?,
            };
            (total, rows)
        }
    };
    let mut body = json!({
        "object": "usage",
        "key_id": key.id.as_str(),
        "account_id": account.id.as_str(),
        "balance_micros": account.balance.0,
        "reserved_micros": account.reserved.0,
        "available_micros": account.balance.0.saturating_sub(account.reserved.0),
        "billing": ledger.is_some(),
        "since": time(since),
        "until": time(until),
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cost_micros": totals.cost.0,
    });
    if let Some(group) = group_by {
        body["group_by"] = Value::String(group.name().to_owned());
        body["data"] = rows
            .iter()
            .map(|r| {
                json!({
                    "group": r.group,
                    "requests": r.requests,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cached_tokens": r.cached_tokens,
                    "cost_micros": r.cost.0,
                })
            })
            .collect();
    }
    Ok(body)
}

fn sum(rows: &[UsageTotals]) -> Result<UsageTotals, ProxyError> {
    rows.iter()
        .try_fold(UsageTotals::default(), |t, r| {
            Some(UsageTotals {
                group: String::new(),
                requests: t.requests.checked_add(r.requests)?,
                input_tokens: t.input_tokens.checked_add(r.input_tokens)?,
                output_tokens: t.output_tokens.checked_add(r.output_tokens)?,
                cached_tokens: t.cached_tokens.checked_add(r.cached_tokens)?,
                cost: t.cost.checked_add(r.cost)?,
            })
        })
        .ok_or_else(|| ProxyError::Internal("usage totals overflow".into()))
}

/// An RFC 3339 time or a duration ago (`7d`).
fn when(text: &str, field: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ProxyError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(at.with_timezone(&Utc));
    }
    humantime::parse_duration(text.trim())
        .ok()
        .and_then(|d| TimeDelta::from_std(d).ok())
        .and_then(|ago| now.checked_sub_signed(ago))
        .ok_or_else(|| {
            ProxyError::InvalidRequest(format!(
                "{field} must be an RFC 3339 time or a duration such as 7d"
            ))
        })
}
