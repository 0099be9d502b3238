//! The operations behind the routes: each parses its input, calls the store,
//! appends to the audit log when it changed something, and answers in the shape
//! `keygate-admin --json` prints.

use chrono::Utc;
use keygate_keys::{AdminSecret, KeyKind, SecretKey};
use keygate_store::{
    AccountId, AdminRole, ApiKey, KeyId, KeySettings, KeyUpdate, NewAccount, NewAdminToken,
    NewApiKey, NewAuditEntry, ReplacementKey, UsageGroup, UsageQuery,
};
use serde_json::{Value, json};

use crate::context::{Answer, Caller, Deps};
use crate::error::ApiError;
use crate::inputs::{self, json_body};
use crate::routes::{Matched, Op};
use keygate_store::json as views;

/// Runs the matched route's operation.
pub(crate) async fn run(
    api: &Deps,
    caller: &Caller,
    matched: &Matched<'_>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let id = matched.id.unwrap_or("");
    let no_query = |allowed: &[&str]| inputs::query(query, allowed);
    let s = &api.stores;
    match matched.route.op {
        Op::ListAccounts => {
            let q = no_query(&["limit", "after"])?;
            let accounts = s.credentials.list_accounts().await?;
            let (page, next) = page(&accounts, &q, |a| a.id.as_str())?;
            let list: Vec<Value> = page.iter().map(views::account).collect();
            Ok(Answer::json(200, json!({ "accounts": list, "next": next })))
        }
        Op::CreateAccount => {
            no_query(&[])?;
            let b: inputs::NewAccountBody = json_body(body)?;
            let balance = inputs::money(b.balance.as_deref(), b.balance_micros, "balance")?
                .unwrap_or_default();
            keygate_store::validate_tier(b.tier.as_deref())?;
            let account = s
                .credentials
                .create_account(NewAccount {
                    name: b.name,
                    email: b.email,
                    balance,
                })
                .await?;
            let account = match b.tier {
                Some(tier) => {
                    s.credentials
                        .set_account_tier(&account.id, Some(tier))
                        .await?
                }
                None => account,
            };
            audit(api, caller, "account.create", account.id.as_str()).await?;
            Ok(Answer::changed(
                201,
                views::account(&account),
                account.id.as_str(),
            ))
        }
        Op::GetAccount => {
            no_query(&[])?;
            let account = s.credentials.get_account(&id.parse()?).await?;
            Ok(Answer::json(200, views::account(&account)))
        }
        Op::UpdateAccount => {
            no_query(&[])?;
            let b: inputs::AccountPatchBody = json_body(body)?;
            if b.name.is_none() && b.email.is_none() && b.tier.is_none() {
                return Err(ApiError::Invalid {
                    param: None,
                    message: "nothing to update: give name, email or tier".into(),
                });
            }
            let id: keygate_store::AccountId = id.parse()?;
            if let Some(tier) = &b.tier {
                keygate_store::validate_tier(tier.as_deref())?;
            }
            let mut account = if b.name.is_some() || b.email.is_some() {
                let update = keygate_store::AccountUpdate {
                    name: b.name,
                    email: b.email,
                };
                s.control.update_account(&id, update).await?
            } else {
                s.credentials.get_account(&id).await?
            };
            if let Some(tier) = b.tier {
                account = s.credentials.set_account_tier(&id, tier).await?;
            }
            audit(api, caller, "account.update", account.id.as_str()).await?;
            Ok(Answer::changed(
                200,
                views::account(&account),
                account.id.as_str(),
            ))
        }
        Op::TopUp => {
            no_query(&[])?;
            let b: inputs::TopUpBody = json_body(body)?;
            let amount = inputs::money(b.amount.as_deref(), b.amount_micros, "amount")?
                .ok_or_else(|| {
                    ApiError::invalid(
                        "amount",
                        "give amount (credits as a string, e.g. \"10.5\") or amount_micros",
                    )
                })?;
            let account = s.credentials.top_up(&id.parse()?, amount).await?;
            audit(api, caller, "account.top_up", account.id.as_str()).await?;
            Ok(Answer::changed(
                200,
                views::account(&account),
                account.id.as_str(),
            ))
        }
        Op::ListKeys => {
            let q = no_query(&["account", "limit", "after"])?;
            let account: Option<AccountId> = q.get("account").map(|a| a.parse()).transpose()?;
            if let Some(account) = &account {
                s.credentials.get_account(account).await?;
            }
            let keys = s.credentials.list_keys(account.as_ref()).await?;
            let (page, next) = page(&keys, &q, |k| k.id.as_str())?;
            let list: Vec<Value> = page.iter().map(views::key).collect();
            Ok(Answer::json(200, json!({ "keys": list, "next": next })))
        }
        Op::CreateKey => {
            no_query(&[])?;
            create_key(api, caller, json_body(body)?).await
        }
        Op::GetKey => {
            no_query(&[])?;
            Ok(Answer::json(
                200,
                views::key(&s.credentials.get_key(&id.parse()?).await?),
            ))
        }
        Op::UpdateKey => {
            no_query(&[])?;
            let update = key_update(json_body(body)?)?;
            if update.is_empty() {
                return Err(ApiError::Invalid {
                    param: None,
                    message: "nothing to update: give at least one field".into(),
                });
            }
            let key = s.credentials.update_key(&id.parse()?, update).await?;
            audit(api, caller, "key.update", key.id.as_str()).await?;
            Ok(Answer::changed(200, views::key(&key), key.id.as_str()))
        }
        Op::RevokeKey => {
            no_query(&[])?;
            let key = s.credentials.revoke_key(&id.parse()?, Utc::now()).await?;
            audit(api, caller, "key.revoke", key.id.as_str()).await?;
            Ok(Answer::changed(200, views::key(&key), key.id.as_str()))
        }
        Op::RotateKey => {
            no_query(&[])?;
            let b: inputs::RotateBody = json_body(body)?;
            rotate_key(api, caller, &id.parse()?, b).await
        }
        Op::Usage => usage(api, query).await,
        Op::PurgeUsage => {
            no_query(&[])?;
            let b: inputs::PurgeBody = json_body(body)?;
            let older_than = inputs::duration(&b.older_than, "older_than")?;
            if older_than < chrono::TimeDelta::days(1) {
                return Err(ApiError::invalid(
                    "older_than",
                    "older_than must be 1d or more, such as 90d",
                ));
            }
            let before = Utc::now()
                .checked_sub_signed(older_than)
                .filter(|t| *t >= chrono::DateTime::UNIX_EPOCH)
                .ok_or_else(|| {
                    ApiError::invalid("older_than", "older_than reaches back before 1970")
                })?;
            let deleted = s.ledger.purge_usage(before).await?;
            s.control
                .append_audit(NewAuditEntry::new(&caller.actor, "usage.purge", None))
                .await?;
            Ok(Answer::json(200, json!({ "deleted": deleted })))
        }
        Op::Audit => {
            let q = no_query(&["limit", "before"])?;
            let limit = inputs::limit(&q)?;
            let before = q
                .get("before")
                .map(|b| {
                    b.parse::<u64>().map_err(|_| {
                        ApiError::invalid("before", "before must be a sequence number")
                    })
                })
                .transpose()?;
            let entries = s.control.list_audit(before, limit as u32).await?;
            let next = (entries.len() == limit)
                .then(|| entries.last().map(|e| e.seq))
                .flatten();
            let list: Vec<Value> = entries.iter().map(views::audit).collect();
            Ok(Answer::json(
                200,
                json!({ "entries": list, "next_before": next }),
            ))
        }
        Op::ListTokens => {
            no_query(&[])?;
            let list: Vec<Value> = s
                .control
                .list_admin_tokens()
                .await?
                .iter()
                .map(views::admin_token)
                .collect();
            Ok(Answer::json(200, json!({ "admin_tokens": list })))
        }
        Op::CreateToken => {
            no_query(&[])?;
            let b: inputs::NewTokenBody = json_body(body)?;
            let role: AdminRole = b
                .role
                .parse()
                .map_err(|_| ApiError::invalid("role", "role must be owner, operator or viewer"))?;
            let secret = AdminSecret::generate(&api.prefix)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let token = s
                .control
                .create_admin_token(NewAdminToken {
                    name: b.name,
                    role,
                    token_hash: secret.hash(),
                    start: secret.start(),
                })
                .await?;
            audit(api, caller, "admin_token.create", token.id.as_str()).await?;
            let mut body = views::admin_token(&token);
            body["token"] = Value::String(secret.expose().to_owned());
            Ok(Answer {
                secret: true,
                ..Answer::changed(201, body, token.id.as_str())
            })
        }
        Op::RevokeToken => {
            no_query(&[])?;
            let token = s
                .control
                .revoke_admin_token(&id.parse()?, Utc::now())
                .await?;
            audit(api, caller, "admin_token.revoke", token.id.as_str()).await?;
            Ok(Answer::changed(
                200,
                views::admin_token(&token),
                token.id.as_str(),
            ))
        }
    }
}

async fn audit(
    api: &Deps,
    caller: &Caller,
    action: &'static str,
    target: &str,
) -> Result<(), ApiError> {
    api.stores
        .control
        .append_audit(NewAuditEntry::new(
            &caller.actor,
            action,
            Some(target.to_owned()),
        ))
        .await?;
    Ok(())
}

/// One page of `items` (in the store's order) after the cursor `after` (the last
/// id of the previous page); the next cursor when more follow.
fn page<'a, T>(
    items: &'a [T],
    query: &std::collections::BTreeMap<String, String>,
    id: impl Fn(&T) -> &str,
) -> Result<(&'a [T], Option<String>), ApiError> {
    let limit = inputs::limit(query)?;
    let start = match query.get("after") {
        None => 0,
        Some(after) => items
            .iter()
            .position(|item| id(item) == after)
            .map(|i| i + 1)
            .ok_or_else(|| ApiError::invalid("after", "after is not an id of this list"))?,
    };
    let end = (start + limit).min(items.len());
    let next = (end < items.len()).then(|| id(&items[end - 1]).to_owned());
    Ok((&items[start..end], next))
}

async fn create_key(
    api: &Deps,
    caller: &Caller,
    b: inputs::NewKeyBody,
) -> Result<Answer, ApiError> {
    let kind: KeyKind = match b.kind.as_deref() {
        None => KeyKind::Private,
        Some(kind) => kind
            .parse()
            .map_err(|e: String| ApiError::invalid("kind", e))?,
    };
    let mut settings = KeySettings::new(kind);
    settings.name = b.name;
    if let Some(scopes) = &b.scopes {
        settings.scopes = inputs::scopes(scopes)?;
    }
    settings.models = b.models;
    settings.origins = b.origins;
    let now = Utc::now();
    settings.expires_at = match (b.expires_in.as_deref(), b.expires_at.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_in",
                "give expires_in or expires_at, not both",
            ));
        }
        (Some(after), None) => Some(
            now.checked_add_signed(inputs::duration(after, "expires_in")?)
                .ok_or_else(|| ApiError::invalid("expires_in", "expires_in is too long"))?,
        ),
        (None, Some(at)) => {
            let at = inputs::timestamp(at, "expires_at")?;
            if at <= now {
                return Err(ApiError::invalid("expires_at", "expires_at is in the past"));
            }
            Some(at)
        }
        (None, None) => None,
    };
    settings.rpm = b.rpm;
    settings.tpm = b.tpm;
    settings.max_parallel = b.max_parallel;
    settings.spend_limit = inputs::money(
        b.spend_limit.as_deref(),
        b.spend_limit_micros,
        "spend_limit",
    )?;
    settings.metadata = b.metadata;
    settings.validate()?;
    let account: AccountId = b
        .account
        .parse()
        .map_err(|e: keygate_store::IdError| ApiError::invalid("account", e.reason()))?;
    let secret =
        SecretKey::generate(&api.prefix, kind).map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = api
        .stores
        .credentials
        .create_key(NewApiKey {
            account_id: account,
            key_hash: secret.hash(),
            start: secret.start(),
            settings,
        })
        .await?;
    audit(api, caller, "key.create", key.id.as_str()).await?;
    Ok(new_key_answer(&key, &secret, None))
}

fn new_key_answer(key: &ApiKey, secret: &SecretKey, replaces: Option<&ApiKey>) -> Answer {
    let mut body = views::key(key);
    body["key"] = Value::String(secret.expose().to_owned());
    if let Some(old) = replaces {
        body["replaces"] = json!({
            "id": old.id.as_str(),
            "revoked_at": old.revoked_at.map(views::time),
        });
    }
    Answer {
        secret: true,
        ..Answer::changed(201, body, key.id.as_str())
    }
}

async fn rotate_key(
    api: &Deps,
    caller: &Caller,
    id: &KeyId,
    b: inputs::RotateBody,
) -> Result<Answer, ApiError> {
    let grace = b
        .grace
        .as_deref()
        .map(|g| inputs::duration(g, "grace"))
        .transpose()?
        .unwrap_or_default();
    let credentials = &api.stores.credentials;
    let old = credentials.get_key(id).await?;
    let secret = SecretKey::generate(&api.prefix, old.kind)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let old_revoked_at = Utc::now()
        .checked_add_signed(grace)
        .ok_or_else(|| ApiError::invalid("grace", "grace is too long"))?;
    let (new, old) = credentials
        .rotate_key(
            id,
            ReplacementKey {
                key_hash: secret.hash(),
                start: secret.start(),
            },
            old_revoked_at,
        )
        .await?;
    audit(api, caller, "key.rotate", old.id.as_str()).await?;
    audit(api, caller, "key.create", new.id.as_str()).await?;
    Ok(new_key_answer(&new, &secret, Some(&old)))
}

fn key_update(b: inputs::KeyPatchBody) -> Result<KeyUpdate, ApiError> {
    Ok(KeyUpdate {
        name: b.name,
        scopes: b.scopes.as_deref().map(inputs::scopes).transpose()?,
        models: b.models,
        origins: b.origins,
        expires_at: b
            .expires_at
            .map(|at| at.map(|t| inputs::timestamp(&t, "expires_at")).transpose())
            .transpose()?,
        rpm: b.rpm,
        tpm: b.tpm,
        max_parallel: b.max_parallel,
        spend_limit: b.spend_limit_micros.map(|m| m.map(keygate_store::Micros)),
        metadata: b.metadata,
    })
}

async fn usage(api: &Deps, query: Option<&str>) -> Result<Answer, ApiError> {
    let q = inputs::query(query, &["account", "key", "since", "until", "group_by"])?;
    let now = Utc::now();
    let since = match q.get("since") {
        Some(t) => time_or_ago(t, "since", now)?,
        None => now - chrono::TimeDelta::days(7),
    };
    let until = match q.get("until") {
        Some(t) => time_or_ago(t, "until", now)?,
        None => now,
    };
    if since >= until {
        return Err(ApiError::invalid("since", "since must be before until"));
    }
    let group_by = match q.get("group_by") {
        None => UsageGroup::Model,
        Some(g) => UsageGroup::parse(g)
            .ok_or_else(|| ApiError::invalid("group_by", "group_by must be model, key or day"))?,
    };
    let account: Option<AccountId> = q.get("account").map(|a| a.parse()).transpose()?;
    let key: Option<KeyId> = q.get("key").map(|k| k.parse()).transpose()?;
    let query = UsageQuery {
        since,
        until,
        account,
        key,
        group_by,
    };
    let rows = api.stores.ledger.usage_report(&query).await?;
    let total = views::grand_total(&rows)
        .ok_or_else(|| ApiError::Internal("usage totals overflow".into()))?;
    let list: Vec<Value> = rows.iter().map(views::usage_row).collect();
    let total = Value::Object(views::totals(&total));
    Ok(Answer::json(
        200,
        json!({
            "since": views::time(since),
            "until": views::time(until),
            "group_by": group_by.name(),
            "rows": list,
            "total": total,
        }),
    ))
}

/// An RFC 3339 time or a duration ago (`7d`).
fn time_or_ago(
    text: &str,
    field: &str,
    now: chrono::DateTime<Utc>,
) -> Result<chrono::DateTime<Utc>, ApiError> {
    if let Ok(at) = inputs::timestamp(text, field) {
        return Ok(at);
    }
    let ago = inputs::duration(text, field).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{field} is neither an RFC 3339 time nor a duration such as 7d"),
        )
    })?;
    now.checked_sub_signed(ago)
        .ok_or_else(|| ApiError::invalid(field, format!("{field} reaches too far back")))
}
