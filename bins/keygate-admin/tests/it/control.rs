//! The control plane commands: admin tokens (printed once, stored as a hash),
//! the audit log of every CLI change (actor `cli`, never a secret), key purge.

use keygate_keys::{KeyPrefix, parse_admin_token};
use serde_json::Value;

use crate::{Admin, contains, files_in};

#[test]
fn admin_tokens_are_printed_once_and_stored_only_as_their_hash() {
    let admin = Admin::sqlite().migrated();
    let created = admin.json(&[
        "admin-token",
        "create",
        "--name",
        "ci",
        "--role",
        "operator",
    ]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("kg_ak_"));
    parse_admin_token(&token, &KeyPrefix::default()).unwrap();
    assert_eq!(created["role"], "operator");
    assert_eq!(created["status"], "active");
    let id = created["id"].as_str().unwrap().to_owned();

    let listed = admin.json(&["admin-token", "list"]);
    let tokens = listed["admin_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert!(tokens[0].get("token").is_none());
    let listed_text = admin.run(&["admin-token", "list"]);
    assert!(!contains(&listed_text.stdout, token.as_bytes()));

    for file in files_in(admin.dir()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, token.as_bytes()),
            "{} holds the token",
            file.display()
        );
    }

    let revoked = admin.json(&["admin-token", "revoke", &id]);
    assert_eq!(revoked["status"], "revoked");
    let err = admin.fails(&["admin-token", "create", "--name", "x", "--role", "root"]);
    assert!(err.contains("root"), "{err}");
    let err = admin.fails(&["admin-token", "revoke", &token]);
    assert!(!err.contains(&token[6..]), "{err}");
}

#[test]
fn every_cli_change_is_in_the_audit_log_as_cli() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    admin.json(&["account", "top-up", &account, "--amount", "1"]);
    let key = admin.json(&["key", "create", "--account", &account]);
    let key_id = key["id"].as_str().unwrap().to_owned();
    admin.json(&["key", "update", &key_id, "--name", "renamed"]);
    let rotated = admin.json(&["key", "rotate", &key_id]);
    let new_id = rotated["id"].as_str().unwrap().to_owned();
    admin.json(&["key", "revoke", &new_id]);
    admin.json(&["usage", "purge", "--older-than", "90d"]);
    let token = admin.json(&["admin-token", "create", "--name", "t", "--role", "viewer"]);
    let token_id = token["id"].as_str().unwrap().to_owned();
    admin.json(&["admin-token", "revoke", &token_id]);
    // Reads write nothing.
    admin.json(&["key", "list"]);
    admin.json(&["account", "list"]);

    let log = admin.json(&["audit", "list"]);
    let entries = log["entries"].as_array().unwrap();
    let seen: Vec<(String, String)> = entries
        .iter()
        .rev()
        .map(|e| {
            assert_eq!(e["actor"], "cli");
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("account.create", account.as_str()),
        ("account.top_up", account.as_str()),
        ("key.create", key_id.as_str()),
        ("key.update", key_id.as_str()),
        ("key.rotate", key_id.as_str()),
        ("key.create", new_id.as_str()),
        ("key.revoke", new_id.as_str()),
        ("usage.purge", "-"),
        ("admin_token.create", token_id.as_str()),
        ("admin_token.revoke", token_id.as_str()),
    ]
    .iter()
    .map(|(a, t)| ((*a).to_owned(), (*t).to_owned()))
    .collect();
    assert_eq!(seen, expected);
    let text = serde_json::to_string(&log).unwrap();
    for secret in [&key["key"], &rotated["key"], &token["token"]] {
        assert!(!text.contains(secret.as_str().unwrap()));
    }

    // Paging back with --before.
    let first = admin.json(&["audit", "list", "--limit", "3"]);
    assert_eq!(first["entries"].as_array().unwrap().len(), 3);
    let next = first["next_before"].as_u64().unwrap().to_string();
    let rest = admin.json(&["audit", "list", "--before", &next]);
    assert_eq!(rest["entries"].as_array().unwrap().len(), 7);
    assert_eq!(rest["next_before"], Value::Null);
}

#[test]
fn key_purge_deletes_only_long_dead_keys() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let live = admin.json(&["key", "create", "--account", &account]);
    let dead = admin.json(&["key", "create", "--account", &account]);
    admin.json(&["key", "revoke", dead["id"].as_str().unwrap()]);
    // Revoked just now: not yet 30 days ago.
    let purged = admin.json(&["key", "purge"]);
    assert_eq!(purged["deleted"], 0);
    let err = admin.fails(&["key", "purge", "--older-than", "1h"]);
    assert!(err.contains("1d or more"), "{err}");
    let listed = admin.json(&["key", "list"]);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    let _ = live;
}
