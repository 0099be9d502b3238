//! The control plane commands: admin tokens, the audit log and key purge, with
//! their output; and [`audit`], which every changing command calls so the audit
//! log names the CLI as the actor.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use chrono::Utc;
use comfy_table::{Table, presets};
use keygate_keys::{AdminSecret, KeyPrefix};
use keygate_store::json::{admin_token as token_json, audit as audit_json, time};
use keygate_store::{Actor, AdminToken, ControlStore, DbStore, NewAdminToken, NewAuditEntry};
use serde_json::{Value, json};

use crate::cli::{AdminTokenCommand, AuditCommand};
use crate::output::Output;

/// Appends `action` on `target` to the audit log, actor `cli`. The change itself
/// has happened; a failure here says so.
pub(crate) async fn audit(
    store: &dyn ControlStore,
    action: &'static str,
    target: impl Into<Option<String>>,
) -> Result<()> {
    let target = target.into();
    store
        .append_audit(NewAuditEntry::new(&Actor::Cli, action, target.clone()))
        .await
        .with_context(|| {
            format!(
                "{action} {} was done, but its audit log entry could not be written",
                target.unwrap_or_default()
            )
        })?;
    Ok(())
}

pub(crate) async fn admin_token(
    store: &DbStore,
    command: AdminTokenCommand,
    prefix: &KeyPrefix,
    out: &Output,
) -> Result<()> {
    match command {
        AdminTokenCommand::Create { name, role } => {
            let secret = AdminSecret::generate(prefix).context("cannot generate a token")?;
            let token = store
                .create_admin_token(NewAdminToken {
                    name,
                    role,
                    token_hash: secret.hash(),
                    start: secret.start(),
                })
                .await?;
            if let Err(err) = print_new_token(out, &token, &secret) {
                // Nobody will ever see it: revoke rather than leave it working.
                let undo = store.revoke_admin_token(&token.id, Utc::now()).await;
                let undo = match undo {
                    Ok(_) => format!("admin token {} was revoked", token.id),
                    Err(e) => format!("revoking admin token {} failed too ({e})", token.id),
                };
                return Err(err.context(format!("the new token could not be shown, so {undo}")));
            }
            audit(store, "admin_token.create", token.id.to_string()).await
        }
        AdminTokenCommand::List => print_tokens(out, &store.list_admin_tokens().await?),
        AdminTokenCommand::Revoke { id } => {
            let token = store.revoke_admin_token(&id.parse()?, Utc::now()).await?;
            audit(store, "admin_token.revoke", token.id.to_string()).await?;
            print_token(out, &token)
        }
    }
}

pub(crate) async fn audit_log(store: &DbStore, command: AuditCommand, out: &Output) -> Result<()> {
    let AuditCommand::List { limit, before } = command;
    let entries = store.list_audit(before, limit).await?;
    if out.json {
        let list: Vec<Value> = entries.iter().map(audit_json).collect();
        let next = (entries.len() == limit as usize)
            .then(|| entries.last().map(|e| e.seq))
            .flatten();
        return emit(&serde_json::to_string_pretty(
            &json!({ "entries": list, "next_before": next }),
        )?);
    }
    let mut t = table();
    t.set_header(vec!["SEQ", "AT", "ACTOR", "ACTION", "TARGET"]);
    for e in &entries {
        t.add_row(vec![
            e.seq.to_string(),
            time(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    emit(&t.trim_fmt())
}

pub(crate) async fn purge_keys(
    store: &DbStore,
    older_than: chrono::TimeDelta,
    out: &Output,
) -> Result<()> {
    let before = Utc::now()
        .checked_sub_signed(older_than)
        .context("--older-than is too long")?;
    let purged = store.purge_keys(before).await?;
    for id in &purged {
        audit(store, "key.purge", id.to_string()).await?;
    }
    if out.json {
        let ids: Vec<&str> = purged.iter().map(|id| id.as_str()).collect();
        return emit(&serde_json::to_string_pretty(
            &json!({ "deleted": purged.len(), "ids": ids }),
        )?);
    }
    let keys = if purged.len() == 1 { "key" } else { "keys" };
    emit(&format!(
        "deleted {} {keys} revoked or expired before {}",
        purged.len(),
        time(before)
    ))
}

fn print_new_token(out: &Output, token: &AdminToken, secret: &AdminSecret) -> Result<()> {
    if out.json {
        let mut value = token_json(token);
        if let Value::Object(map) = &mut value {
            map.insert("token".into(), Value::String(secret.expose().to_owned()));
        }
        return emit(&serde_json::to_string_pretty(&value)?);
    }
    let mut rows = vec![("token".to_owned(), secret.expose().to_owned())];
    rows.extend(token_rows(token));
    print_rows(&rows)?;
    let _ = writeln!(
        std::io::stderr(),
        "Save this token now: keygate stores only its hash and cannot show it again."
    );
    Ok(())
}

fn print_token(out: &Output, token: &AdminToken) -> Result<()> {
    if out.json {
        return emit(&serde_json::to_string_pretty(&token_json(token))?);
    }
    print_rows(&token_rows(token))
}

fn print_tokens(out: &Output, tokens: &[AdminToken]) -> Result<()> {
    if out.json {
        let list: Vec<Value> = tokens.iter().map(token_json).collect();
        return emit(&serde_json::to_string_pretty(
            &json!({ "admin_tokens": list }),
        )?);
    }
    let mut t = table();
    t.set_header(vec!["ID", "NAME", "ROLE", "START", "STATUS", "CREATED"]);
    for token in tokens {
        t.add_row(vec![
            token.id.to_string(),
            token.name.clone(),
            token.role.name().to_owned(),
            format!("{}…", token.start),
            if token.is_active(Utc::now()) {
                "active"
            } else {
                "revoked"
            }
            .to_owned(),
            time(token.created_at),
        ]);
    }
    emit(&t.trim_fmt())
}

fn token_rows(t: &AdminToken) -> Vec<(String, String)> {
    vec![
        ("id".into(), t.id.to_string()),
        ("name".into(), t.name.clone()),
        ("role".into(), t.role.name().to_owned()),
        ("start".into(), format!("{}…", t.start)),
        ("created".into(), time(t.created_at)),
        ("revoked".into(), t.revoked_at.map_or("-".to_owned(), time)),
    ]
}

fn table() -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table
}

fn print_rows(rows: &[(String, String)]) -> Result<()> {
    let mut t = table();
    for (name, value) in rows {
        t.add_row(vec![name.clone(), value.clone()]);
    }
    emit(&t.trim_fmt())
}

fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}
