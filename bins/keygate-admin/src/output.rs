//! Printing: aligned tables for people, one JSON document for scripts. Money in
//! JSON is integer micro-units in fields ending `_micros`.

use std::io::Write as _;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use comfy_table::{CellAlignment, Table, presets};
use keygate_keys::SecretKey;
use keygate_store::json::{
    account as account_json, grand_total, key as key_json, opt_time, time, totals as totals_json,
    usage_row as usage_row_json,
};
use keygate_store::{Account, ApiKey, DatabaseUrl, UsageQuery, UsageTotals};
use serde_json::{Value, json};

pub(crate) struct Output {
    pub(crate) json: bool,
}

/// Text with its control characters escaped (`\u{1b}`), so a model name sent by a
/// client cannot drive the operator's terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One table row of usage totals; cost in credits.
fn usage_cells(label: &str, t: &UsageTotals) -> Vec<String> {
    vec![
        printable(label),
        t.requests.to_string(),
        t.input_tokens.to_string(),
        t.output_tokens.to_string(),
        t.cached_tokens.to_string(),
        t.cost.to_string(),
    ]
}

fn table() -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

fn key_rows(k: &ApiKey) -> Vec<(&'static str, String)> {
    let limit = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
    vec![
        ("id", k.id.to_string()),
        ("account", k.account_id.to_string()),
        ("name", or_dash(k.name.clone())),
        ("kind", k.kind.name().to_owned()),
        ("start", format!("{}…", k.start)),
        ("status", k.status(Utc::now()).name().to_owned()),
        ("scopes", k.scopes.to_string()),
        (
            "models",
            if k.models.is_empty() {
                "all".to_owned()
            } else {
                k.models.join(",")
            },
        ),
        ("origins", or_dash(k.origins.join(","))),
        ("expires", k.expires_at.map_or("never".to_owned(), time)),
        ("revoked", k.revoked_at.map_or("-".to_owned(), time)),
        ("rpm", limit(k.rpm)),
        ("tpm", limit(k.tpm)),
        ("max parallel", limit(k.max_parallel)),
        (
            "spend limit",
            k.spend_limit.map_or("-".to_owned(), |m| m.to_string()),
        ),
        (
            "metadata",
            or_dash(
                k.metadata
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ),
        ("created", time(k.created_at)),
        ("last used", k.last_used_at.map_or("never".to_owned(), time)),
    ]
}

/// Writes one document to stdout. A closed or full stdout is an error, not a
/// panic: the caller may have to undo what it did (see `new_key`).
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

fn print_pairs(rows: &[(&str, String)]) -> anyhow::Result<()> {
    let mut t = table();
    for (name, value) in rows {
        t.add_row(vec![name.to_string(), value.clone()]);
    }
    emit(&t.trim_fmt())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    emit(&serde_json::to_string_pretty(value)?)
}

impl Output {
    pub(crate) fn migrated(&self, applied: &[String], url: &DatabaseUrl) -> anyhow::Result<()> {
        if self.json {
            return print_json(&json!({ "database": url.to_string(), "applied": applied }));
        }
        if applied.is_empty() {
            emit(&format!("{url} is up to date"))
        } else {
            emit(&format!("{url}: applied {}", applied.join(", ")))
        }
    }

    pub(crate) fn account(&self, a: &Account) -> anyhow::Result<()> {
        if self.json {
            return print_json(&account_json(a));
        }
        print_pairs(&[
            ("id", a.id.to_string()),
            ("name", a.name.clone()),
            ("email", a.email.clone().unwrap_or_else(|| "-".to_owned())),
            ("balance", a.balance.to_string()),
            ("reserved", a.reserved.to_string()),
            ("tier", a.tier.clone().unwrap_or_else(|| "-".to_owned())),
            ("created", time(a.created_at)),
        ])
    }

    pub(crate) fn accounts(&self, accounts: &[Account]) -> anyhow::Result<()> {
        if self.json {
            let list: Vec<Value> = accounts.iter().map(account_json).collect();
            return print_json(&json!({ "accounts": list }));
        }
        let mut t = table();
        t.set_header(vec!["ID", "NAME", "BALANCE", "RESERVED", "CREATED"]);
        for a in accounts {
            t.add_row(vec![
                a.id.to_string(),
                a.name.clone(),
                a.balance.to_string(),
                a.reserved.to_string(),
                time(a.created_at),
            ]);
        }
        emit(&t.trim_fmt())
    }

    /// Prints a usage report and its total: `{"rows":[…],"total":{…}}` in JSON.
    pub(crate) fn usage_report(
        &self,
        query: &UsageQuery,
        rows: &[UsageTotals],
    ) -> anyhow::Result<()> {
        let total = grand_total(rows).context("the usage totals do not fit in 64 bits")?;
        if self.json {
            let list: Vec<Value> = rows.iter().map(usage_row_json).collect();
            return print_json(&json!({ "rows": list, "total": totals_json(&total) }));
        }
        let group = query.group_by.name();
        let mut heading = format!(
            "Usage by {group} from {} to {}",
            time(query.since),
            time(query.until)
        );
        if let Some(account) = &query.account {
            heading.push_str(&format!(", account {account}"));
        }
        if let Some(key) = &query.key {
            heading.push_str(&format!(", key {key}"));
        }
        heading.push_str(" (cost in credits):");
        let mut t = table();
        t.set_header(vec![
            group.to_uppercase(),
            "REQUESTS".to_owned(),
            "INPUT TOKENS".to_owned(),
            "OUTPUT TOKENS".to_owned(),
            "CACHED TOKENS".to_owned(),
            "COST".to_owned(),
        ]);
        for row in rows {
            t.add_row(usage_cells(&row.group, row));
        }
        t.add_row(usage_cells("total", &total));
        for number in 1..=5 {
            if let Some(column) = t.column_mut(number) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        emit(&format!("{heading}\n{}", t.trim_fmt()))
    }

    pub(crate) fn purged(&self, deleted: u64, before: DateTime<Utc>) -> anyhow::Result<()> {
        if self.json {
            return print_json(&json!({ "deleted": deleted }));
        }
        let records = if deleted == 1 { "record" } else { "records" };
        emit(&format!(
            "deleted {deleted} usage {records} from before {}",
            time(before)
        ))
    }

    pub(crate) fn key(&self, k: &ApiKey) -> anyhow::Result<()> {
        if self.json {
            return print_json(&key_json(k));
        }
        print_pairs(&key_rows(k))
    }

    pub(crate) fn keys(&self, keys: &[ApiKey]) -> anyhow::Result<()> {
        if self.json {
            let list: Vec<Value> = keys.iter().map(key_json).collect();
            return print_json(&json!({ "keys": list }));
        }
        let mut t = table();
        t.set_header(vec![
            "ID", "ACCOUNT", "NAME", "KIND", "START", "STATUS", "SCOPES", "EXPIRES",
        ]);
        for k in keys {
            t.add_row(vec![
                k.id.to_string(),
                k.account_id.to_string(),
                or_dash(k.name.clone()),
                k.kind.name().to_owned(),
                format!("{}…", k.start),
                k.status(Utc::now()).name().to_owned(),
                k.scopes.to_string(),
                k.expires_at.map_or("never".to_owned(), time),
            ]);
        }
        emit(&t.trim_fmt())
    }

    /// Prints a freshly created key: the only time its full text is ever shown.
    pub(crate) fn new_key(
        &self,
        k: &ApiKey,
        secret: &SecretKey,
        rotated: Option<&ApiKey>,
    ) -> anyhow::Result<()> {
        if self.json {
            let mut value = key_json(k);
            if let Value::Object(map) = &mut value {
                map.insert("key".to_owned(), Value::String(secret.expose().to_owned()));
                if let Some(old) = rotated {
                    map.insert(
                        "replaces".to_owned(),
                        json!({ "id": old.id.as_str(), "revoked_at": opt_time(old.revoked_at) }),
                    );
                }
            }
            return print_json(&value);
        }
        let mut rows = vec![("key", secret.expose().to_owned())];
        rows.extend(key_rows(k));
        if let Some(old) = rotated {
            let until = old.revoked_at.map_or("-".to_owned(), time);
            rows.push(("replaces", format!("{} (stops working {until})", old.id)));
        }
        print_pairs(&rows)?;
        let _ = writeln!(
            std::io::stderr(),
            "Save this key now: keygate stores only its hash and cannot show it again."
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_escape_control_characters() {
        assert_eq!(printable("gpt-4o/ü"), "gpt-4o/ü");
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
