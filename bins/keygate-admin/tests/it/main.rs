//! `keygate-admin` end to end: the real binary against a real SQLite file (and
//! PostgreSQL when `KEYGATE_TEST_POSTGRES_URL` is set).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step fails the test"
)]

mod control;

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use keygate_keys::{KeyPrefix, ParsedKey};
use keygate_store::{
    AccountId, DbStore, KeyId, Ledger, Micros, NewReservation, Reserve, UsageRecord, UsageSource,
};
use keygate_test_utils::TestPostgres;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Admin {
    url: String,
    dir: Option<tempfile::TempDir>,
}

impl Admin {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
        Self {
            url,
            dir: Some(dir),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_keygate-admin"))
            .args(args)
            .env("KEYGATE_DATABASE_URL", &self.url)
            .env_remove("KEYGATE_KEY_PREFIX")
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap()
    }

    /// Runs with `--json`, expects success and one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs, expects failure with exactly one line on stderr and nothing on stdout.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        stderr
    }

    fn migrated(self) -> Self {
        self.json(&["migrate"]);
        self
    }

    fn account(&self) -> String {
        let account = self.json(&["account", "create", "--name", "Acme", "--balance", "10.5"]);
        account["id"].as_str().unwrap().to_owned()
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn key_create_prints_a_valid_key_that_is_stored_only_as_its_hash() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let created = admin.json(&["key", "create", "--account", &account, "--name", "ci"]);
    let key = created["key"].as_str().unwrap();
    assert!(created["id"].as_str().unwrap().starts_with("key_"));

    // The format: kg_sk_ + 64 hex + 8 hex CRC32 of everything before.
    assert_eq!(key.len(), 6 + 64 + 8);
    assert!(key.starts_with("kg_sk_"));
    assert!(
        key[6..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    let crc = u32::from_str_radix(&key[70..], 16).unwrap();
    assert_eq!(crc, crc32(&key.as_bytes()[..70]));
    ParsedKey::parse(key, &KeyPrefix::default()).unwrap();

    // On disk: the SHA-256 hex is there, the key is not (nor its secret part).
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let mut bytes = Vec::new();
    for file in files_in(admin.dir()) {
        bytes.extend(std::fs::read(file).unwrap());
    }
    assert!(contains(&bytes, hash.as_bytes()), "hash not stored");
    assert!(!contains(&bytes, key.as_bytes()), "key stored in clear");
    assert!(
        !contains(&bytes, &key.as_bytes()[6..70]),
        "secret stored in clear"
    );

    // Nothing prints it again.
    for args in [
        vec!["key", "show", created["id"].as_str().unwrap()],
        vec!["key", "list"],
        vec!["--json", "key", "list"],
        vec!["--json", "key", "show", created["id"].as_str().unwrap()],
    ] {
        let out = admin.run(&args);
        assert!(out.status.success());
        let printed = [out.stdout, out.stderr].concat();
        assert!(
            !contains(&printed, &key.as_bytes()[6..70]),
            "{args:?} printed the key"
        );
    }
}

/// CRC-32 (IEEE), written out here so the test does not trust the code it checks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0_u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn accounts_show_money_as_integer_micros_in_json() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let shown = admin.json(&["account", "show", &account]);
    assert_eq!(shown["balance_micros"], 10_500_000);
    assert_eq!(shown["reserved_micros"], 0);
    let topped = admin.json(&["account", "top-up", &account, "--amount", "0.25"]);
    assert_eq!(topped["balance_micros"], 10_750_000);
    let listed = admin.json(&["account", "list"]);
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 1);
    let table = admin.run(&["account", "show", &account]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("10.75"), "{table}");
}

#[test]
fn account_tiers_are_set_and_cleared() {
    let admin = Admin::sqlite().migrated();
    let created = admin.json(&["account", "create", "--name", "t", "--tier", "free"]);
    assert_eq!(created["tier"], "free");
    let id = created["id"].as_str().unwrap();
    let moved = admin.json(&["account", "update", id, "--tier", "pro"]);
    assert_eq!(moved["tier"], "pro");
    let cleared = admin.json(&["account", "update", id, "--tier", "none"]);
    assert_eq!(cleared["tier"], Value::Null);
    let err = admin.fails(&["account", "create", "--name", "u", "--tier", "not a tier"]);
    assert!(err.contains("tier"), "{err}");
    // A refused tier writes nothing.
    let listed = admin.json(&["account", "list"]);
    assert_eq!(listed["accounts"].as_array().unwrap().len(), 1);
}

#[test]
fn key_settings_round_trip_through_the_cli() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let created = admin.json(&[
        "key",
        "create",
        "--account",
        &account,
        "--kind",
        "public",
        "--scopes",
        "chat,models",
        "--models",
        "gpt-4o-mini,o3*",
        "--origins",
        "https://app.example",
        "--expires-in",
        "30d",
        "--rpm",
        "60",
        "--tpm",
        "1000",
        "--max-parallel",
        "3",
        "--spend-limit",
        "2.5",
        "--meta",
        "team=web",
    ]);
    assert!(created["key"].as_str().unwrap().starts_with("kg_pk_"));
    assert_eq!(created["kind"], "public");
    assert_eq!(created["scopes"], serde_json::json!(["models", "chat"]));
    assert_eq!(created["models"], serde_json::json!(["gpt-4o-mini", "o3*"]));
    assert_eq!(
        created["origins"],
        serde_json::json!(["https://app.example"])
    );
    assert_eq!(created["spend_limit_micros"], 2_500_000);
    assert_eq!(created["max_parallel"], 3);
    assert_eq!(created["metadata"]["team"], "web");
    assert_eq!(created["status"], "active");
    assert!(created["expires_at"].is_string());

    let id = created["id"].as_str().unwrap();
    let updated = admin.json(&[
        "key",
        "update",
        id,
        "--rpm",
        "none",
        "--no-expiry",
        "--name",
        "web",
        "--max-parallel",
        "none",
    ]);
    assert_eq!(updated["rpm"], Value::Null);
    assert_eq!(updated["max_parallel"], Value::Null);
    assert_eq!(updated["expires_at"], Value::Null);
    assert_eq!(updated["name"], "web");
    assert_eq!(updated["tpm"], 1000);
    assert!(updated.get("key").is_none());
}

#[test]
fn revoke_and_rotate() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let first = admin.json(&["key", "create", "--account", &account, "--rpm", "9"]);
    let first_id = first["id"].as_str().unwrap();
    let rotated = admin.json(&["key", "rotate", first_id, "--grace", "1h"]);
    let new_key = rotated["key"].as_str().unwrap();
    assert_ne!(new_key, first["key"].as_str().unwrap());
    assert_eq!(rotated["rpm"], 9);
    assert_eq!(rotated["replaces"]["id"], first_id);
    let old = admin.json(&["key", "show", first_id]);
    assert_eq!(
        old["status"], "active",
        "grace period keeps the old key working"
    );
    assert!(old["revoked_at"].is_string());

    let second_id = rotated["id"].as_str().unwrap();
    let revoked = admin.json(&["key", "revoke", second_id]);
    assert_eq!(revoked["status"], "revoked");
    let err = admin.fails(&["key", "rotate", second_id]);
    assert!(err.contains("revoked"), "{err}");
}

#[test]
fn every_failure_is_one_clear_line() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["account", "show", "acct_0000000000000000"],
            "not found",
        ),
        (vec!["account", "show", "bogus"], "acct_"),
        (vec!["key", "show", "key_0000000000000000"], "not found"),
        (
            vec!["key", "create", "--account", &account, "--expires-in", "3x"],
            "30d",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--scopes",
                "chat,admin",
            ],
            "unknown scope \"admin\"",
        ),
        (
            vec!["key", "create", "--account", &account, "--kind", "public"],
            "allowed models",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            "in the past",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--expires-at",
                "tomorrow",
            ],
            "RFC 3339",
        ),
        (
            vec!["key", "create", "--account", "acct_ffffffffffffffff"],
            "not found",
        ),
        (vec!["key", "create"], "--account"),
        (
            vec!["key", "update", "key_0000000000000000"],
            "nothing to update",
        ),
        (
            vec!["account", "top-up", &account, "--amount", "0"],
            "more than 0",
        ),
        (
            vec!["account", "top-up", &account, "--amount", "1.0000001"],
            "6 decimal places",
        ),
        (
            vec!["account", "create", "--name", "x", "--email", "nope"],
            "email",
        ),
        (
            vec![
                "--database-url",
                "postgres://u:hunter2@127.0.0.1:1/x",
                "account",
                "list",
            ],
            "unreachable",
        ),
        (
            vec!["--database-url", "mysql://db/x", "account", "list"],
            "sqlite://",
        ),
        (vec!["--key-prefix", "NO", "account", "list"], "prefix"),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--expires-in",
                "1000000y",
            ],
            "too far",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--meta",
                "a=1",
                "--meta",
                "a=2",
            ],
            "more than once",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--kind",
                "public",
                "--models",
                "*",
            ],
            "not *",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                &account,
                "--kind",
                "public",
                "--models",
                "o3",
                "--scopes",
                "*",
            ],
            "chat and models",
        ),
        (
            vec![
                "--database-url",
                "host=db user=me password=hunter2",
                "account",
                "list",
            ],
            "sqlite://",
        ),
        (
            vec![
                "--database-url",
                "postgres://me:hun?ter2@127.0.0.1:1/x",
                "account",
                "list",
            ],
            "unreachable",
        ),
    ];
    for (args, expected) in cases {
        let err = admin.fails(&args);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            !err.contains("hunter2"),
            "{args:?} leaked a password: {err}"
        );
    }
    // Nothing was created by the failures.
    assert!(
        admin.json(&["key", "list"])["keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn an_unmigrated_database_says_what_to_run() {
    let admin = Admin::sqlite();
    let err = admin.fails(&["account", "list"]);
    assert!(err.contains("keygate-admin migrate"), "{err}");
    let first = admin.json(&["migrate"]);
    let on_disk = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/sqlite"
    ))
    .unwrap()
    .count();
    assert_eq!(first["applied"].as_array().unwrap().len(), on_disk);
    let again = admin.json(&["migrate"]);
    assert!(again["applied"].as_array().unwrap().is_empty());
}

#[test]
fn custom_key_prefix() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let created = admin.json(&[
        "--key-prefix",
        "acme",
        "key",
        "create",
        "--account",
        &account,
    ]);
    assert!(created["key"].as_str().unwrap().starts_with("acme_sk_"));
    assert!(created["start"].as_str().unwrap().starts_with("acme_sk_"));
}

/// Runs the admin with only `env` of the variables it reads set.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keygate-admin"));
    command
        .args(args)
        .env_remove("KEYGATE_DATABASE_URL")
        .env_remove("KEYGATE_KEY_PREFIX")
        .env_remove("KEYGATE_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

/// Like [`run_with_env`], expecting success and one JSON document.
fn json_with_env(args: &[&str], env: &[(&str, &str)]) -> Value {
    let out = run_with_env(args, env);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A gateway config as the gateway reads it, with every section the admin ignores
/// (an upstream whose key variable is unset here, prices, billing), the database
/// `DIR/gateway.db` and the prefix `acme`.
fn gateway_config(dir: &Path) -> (PathBuf, PathBuf) {
    let db = dir.join("gateway.db");
    let url = format!("sqlite://{}", db.display());
    let path = keygate_test_utils::write_mock_config(dir, "http://127.0.0.1:9", &url).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("key_prefix = \"kg\"") && text.contains("[[upstreams]]"));
    let text = text.replace("key_prefix = \"kg\"", "key_prefix = \"acme\"")
        + "\n[billing]\nbatch_window = \"0s\"\n\n[privacy]\nlog_client_ip = false\n";
    std::fs::write(&path, text).unwrap();
    (path, db)
}

#[test]
fn config_takes_the_database_and_the_prefix_from_the_gateway_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, db) = gateway_config(dir.path());
    let config = config.to_str().unwrap();
    let migrated = json_with_env(&["--config", config, "--json", "migrate"], &[]);
    assert!(!migrated["applied"].as_array().unwrap().is_empty());
    assert!(db.is_file(), "{:?}", files_in(dir.path()));
    let account = json_with_env(
        &[
            "--json", "account", "create", "--name", "Acme", "--config", config,
        ],
        &[],
    );
    let id = account["id"].as_str().unwrap();
    let created = json_with_env(
        &[
            "--config",
            config,
            "--json",
            "key",
            "create",
            "--account",
            id,
        ],
        &[],
    );
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("acme_sk_"), "{key}");
    ParsedKey::parse(key, &KeyPrefix::new("acme").unwrap()).unwrap();

    // KEYGATE_CONFIG names the file as --config does.
    let keys = json_with_env(&["--json", "key", "list"], &[("KEYGATE_CONFIG", config)]);
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    let created = json_with_env(
        &["--json", "key", "create", "--account", id],
        &[("KEYGATE_CONFIG", config)],
    );
    assert!(created["key"].as_str().unwrap().starts_with("acme_sk_"));

    // An empty variable counts as unset, as it does for the gateway: the file applies.
    let keys = json_with_env(
        &["--config", config, "--json", "key", "list"],
        &[("KEYGATE_DATABASE_URL", ""), ("KEYGATE_KEY_PREFIX", "")],
    );
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn flags_and_variables_win_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (config, gateway_db) = gateway_config(dir.path());
    let config = config.to_str().unwrap();
    let other_db = dir.path().join("other.db");
    let other = format!("sqlite://{}", other_db.display());

    // --database-url over the file (and over KEYGATE_DATABASE_URL).
    let env_db = dir.path().join("env.db");
    let env_url = format!("sqlite://{}", env_db.display());
    json_with_env(
        &[
            "--config",
            config,
            "--database-url",
            &other,
            "--json",
            "migrate",
        ],
        &[("KEYGATE_DATABASE_URL", &env_url)],
    );
    assert!(other_db.is_file());
    assert!(!gateway_db.exists() && !env_db.exists());

    // KEYGATE_DATABASE_URL over the file.
    json_with_env(
        &["--config", config, "--json", "migrate"],
        &[("KEYGATE_DATABASE_URL", &env_url)],
    );
    assert!(env_db.is_file());
    assert!(!gateway_db.exists());

    // --key-prefix and KEYGATE_KEY_PREFIX over the file, the flag first.
    let account = json_with_env(
        &[
            "--config",
            config,
            "--database-url",
            &other,
            "--json",
            "account",
            "create",
            "--name",
            "A",
        ],
        &[],
    );
    let id = account["id"].as_str().unwrap();
    let create = [
        "--config",
        config,
        "--database-url",
        &other,
        "--json",
        "key",
        "create",
        "--account",
        id,
    ];
    let by_flag = json_with_env(
        &[&create[..], &["--key-prefix", "flag"]].concat(),
        &[("KEYGATE_KEY_PREFIX", "env")],
    );
    assert!(by_flag["key"].as_str().unwrap().starts_with("flag_sk_"));
    let by_env = json_with_env(&create, &[("KEYGATE_KEY_PREFIX", "env")]);
    assert!(by_env["key"].as_str().unwrap().starts_with("env_sk_"));
    let by_file = json_with_env(&create, &[]);
    assert!(by_file["key"].as_str().unwrap().starts_with("acme_sk_"));
}

#[test]
fn a_bad_config_file_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |args: &[&str], env: &[(&str, &str)]| {
        let out = run_with_env(args, env);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        stderr
    };
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let err = fails(&["--config", missing, "account", "list"], &[]);
    assert!(
        err.starts_with("keygate-admin: cannot read the config file ") && err.contains(missing),
        "{err}"
    );
    // Even when the flags leave nothing for the file to supply, a named file must be readable.
    let err = fails(
        &[
            "account",
            "list",
            "--database-url",
            "sqlite://x.db",
            "--key-prefix",
            "kg",
        ],
        &[("KEYGATE_CONFIG", missing)],
    );
    assert!(err.contains(missing), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "database_url = \"sqlite://x.db\"\ndatabase = \"typo\"\n",
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let err = fails(&["--config", bad, "account", "list"], &[]);
    assert!(
        err.contains(&format!("{bad} (line 2)")) && err.contains("`database`"),
        "{err}"
    );

    let not_toml = dir.path().join("not.toml");
    std::fs::write(&not_toml, "[[upstreams]\n").unwrap();
    let not_toml = not_toml.to_str().unwrap();
    let err = fails(&["--config", not_toml, "migrate"], &[]);
    assert!(err.contains(not_toml), "{err}");

    let bad_prefix = dir.path().join("prefix.toml");
    std::fs::write(&bad_prefix, "key_prefix = \"Acme\"\n").unwrap();
    let bad_prefix = bad_prefix.to_str().unwrap();
    let err = fails(&["--config", bad_prefix, "account", "list"], &[]);
    assert!(
        err.contains(&format!("{bad_prefix}: key_prefix: ")),
        "{err}"
    );

    let bad_url = dir.path().join("url.toml");
    std::fs::write(&bad_url, "database_url = \"mysql://u:hunter2@db/x\"\n").unwrap();
    let bad_url = bad_url.to_str().unwrap();
    let err = fails(&["--config", bad_url, "account", "list"], &[]);
    assert!(err.contains(&format!("{bad_url}: database_url: ")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        files_in(dir.path())
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "toml"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn works_on_postgres() {
    let Some(db) = TestPostgres::create("keygate-admin works_on_postgres").await else {
        return;
    };
    let admin = Admin {
        url: db.url().to_owned(),
        dir: None,
    };
    let admin = tokio::task::spawn_blocking(move || {
        let admin = admin.migrated();
        let account = admin.account();
        let created = admin.json(&["key", "create", "--account", &account]);
        ParsedKey::parse(created["key"].as_str().unwrap(), &KeyPrefix::default()).unwrap();
        let revoked = admin.json(&["key", "revoke", created["id"].as_str().unwrap()]);
        assert_eq!(revoked["status"], "revoked");
        admin
    })
    .await
    .unwrap();
    drop(admin);
    drop(db);
}

#[test]
fn a_key_pasted_where_an_id_belongs_is_not_printed_back() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let created = admin.json(&["key", "create", "--account", &account]);
    let key = created["key"].as_str().unwrap();
    for args in [
        vec!["key", "show", key],
        vec!["key", "revoke", key],
        vec!["key", "list", "--account", key],
    ] {
        let err = admin.fails(&args);
        assert!(!err.contains(&key[6..20]), "{args:?}: {err}");
        assert!(err.contains("looks like an API key"), "{args:?}: {err}");
    }
}

#[test]
fn a_mistyped_sqlite_path_creates_nothing() {
    let admin = Admin::sqlite().migrated();
    let typo = admin.dir().join("typo.db");
    let url = format!("sqlite://{}", typo.display());
    let err = admin.fails(&["--database-url", &url, "account", "list"]);
    assert!(err.contains("no database at"), "{err}");
    assert!(!typo.exists());
}

#[test]
fn a_key_that_cannot_be_shown_is_revoked() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate-admin"))
        .args(["key", "create", "--account", &account])
        .env("KEYGATE_DATABASE_URL", &admin.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the child writes: its stdout is now a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("was revoked"), "{stderr}");
    let keys = admin.json(&["key", "list"]);
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["status"], "revoked");
}

#[test]
fn rotate_reports_when_the_old_key_really_stops() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let first = admin.json(&["key", "create", "--account", &account]);
    let id = first["id"].as_str().unwrap();
    let once = admin.json(&["key", "rotate", id, "--grace", "1h"]);
    let twice = admin.json(&["key", "rotate", id, "--grace", "48h"]);
    assert_eq!(
        twice["replaces"]["revoked_at"],
        once["replaces"]["revoked_at"]
    );
    let err = admin.fails(&["key", "rotate", id, "--grace", "1000000y"]);
    assert!(err.contains("--grace"), "{err}");
}

#[test]
fn metadata_can_be_replaced_and_cleared() {
    let admin = Admin::sqlite().migrated();
    let account = admin.account();
    let created = admin.json(&["key", "create", "--account", &account, "--meta", "team=a"]);
    let id = created["id"].as_str().unwrap();
    let replaced = admin.json(&[
        "key", "update", id, "--meta", "env=prod", "--meta", "team=b",
    ]);
    assert_eq!(
        replaced["metadata"],
        serde_json::json!({"env": "prod", "team": "b"})
    );
    let cleared = admin.json(&["key", "update", id, "--no-meta"]);
    assert_eq!(cleared["metadata"], serde_json::json!({}));
}

/// The CLI plus a store handle on the same database, for writing what the CLI only
/// reads (usage records, reservations). Store calls run on `runtime`; the CLI runs
/// as a child process in between. Fields drop in order: connections first, the
/// test database last.
struct WithStore {
    store: DbStore,
    runtime: tokio::runtime::Runtime,
    admin: Admin,
    _postgres: Option<TestPostgres>,
}

impl WithStore {
    fn sqlite() -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let admin = Admin::sqlite().migrated();
        let store = runtime.block_on(DbStore::connect(&admin.url)).unwrap();
        Self {
            store,
            runtime,
            admin,
            _postgres: None,
        }
    }

    fn postgres(test: &str) -> Option<Self> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let db = runtime.block_on(TestPostgres::create(test))?;
        let admin = Admin {
            url: db.url().to_owned(),
            dir: None,
        }
        .migrated();
        let store = runtime.block_on(DbStore::connect(db.url())).unwrap();
        Some(Self {
            store,
            runtime,
            admin,
            _postgres: Some(db),
        })
    }

    fn key(&self, account: &str) -> String {
        let key = self.admin.json(&["key", "create", "--account", account]);
        key["id"].as_str().unwrap().to_owned()
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn usage(
    at: DateTime<Utc>,
    (account, key): (&str, &str),
    model: &str,
    tokens: (u64, u64, u64),
    cost: i64,
) -> UsageRecord {
    UsageRecord {
        at,
        key_id: key.parse().unwrap(),
        account_id: account.parse().unwrap(),
        model: model.to_owned(),
        upstream: "openai".into(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        cached_tokens: tokens.2,
        cost: Micros(cost),
        latency_ms: 100,
        ttfb_ms: 10,
        stream: false,
        status: 200,
        client_name: None,
        usage_source: UsageSource::Reported,
        client_ip: None,
        attempts: 1,
    }
}

fn usage_row(group: &str, requests: u64, tokens: (u64, u64, u64), cost: i64) -> Value {
    json!({
        "group": group,
        "requests": requests,
        "input_tokens": tokens.0,
        "output_tokens": tokens.1,
        "cached_tokens": tokens.2,
        "cost_micros": cost,
    })
}

fn usage_doc(rows: Vec<Value>) -> Value {
    let sum = |field: &str| -> i64 { rows.iter().map(|r| r[field].as_i64().unwrap()).sum() };
    json!({
        "rows": rows,
        "total": {
            "requests": sum("requests"),
            "input_tokens": sum("input_tokens"),
            "output_tokens": sum("output_tokens"),
            "cached_tokens": sum("cached_tokens"),
            "cost_micros": sum("cost_micros"),
        },
    })
}

/// Usage over three whole UTC days a month ago, one record on each side of that
/// window, recent records for the default window, and one past a 90-day retention;
/// then every grouping, the filters, the table, and a purge.
fn usage_reports_and_purge(db: &WithStore) {
    let admin = &db.admin;
    let acct_a = admin.account();
    let acct_b = admin.account();
    let (key_a1, key_a2, key_b) = (db.key(&acct_a), db.key(&acct_a), db.key(&acct_b));
    let (a1, a2, b) = (
        (acct_a.as_str(), key_a1.as_str()),
        (acct_a.as_str(), key_a2.as_str()),
        (acct_b.as_str(), key_b.as_str()),
    );
    let now = Utc::now();
    let base = (now - TimeDelta::days(30))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let at = |days: i64, ms: i64| base + TimeDelta::days(days) + TimeDelta::milliseconds(ms);
    let day = |days: i64| {
        (base + TimeDelta::days(days))
            .format("%Y-%m-%d")
            .to_string()
    };
    const HOUR: i64 = 3_600_000;
    let mut records = vec![
        usage(at(0, -1), a1, "gpt-4o", (1, 1, 1), 1),
        usage(at(0, 0), a1, "gpt-4o", (100, 10, 50), 1_000),
        usage(at(0, 24 * HOUR - 1), a2, "gpt-4o", (200, 20, 0), 2_000),
        usage(at(1, 0), a1, "o3", (300, 30, 100), 3_001),
        usage(at(1, 12 * HOUR), b, "gpt-4o", (400, 40, 0), 4_000),
        usage(at(2, 8 * HOUR), b, "claude", (500, 50, 7), 2_500_000),
        usage(at(3, 0), b, "o3", (1, 1, 1), 1),
        usage(now - TimeDelta::hours(1), a1, "gpt-4o", (7, 7, 7), 7),
        usage(now - TimeDelta::days(8), a2, "o3", (9, 9, 9), 9),
        usage(now - TimeDelta::days(100), b, "gpt-4o", (5, 5, 5), 5),
    ];
    // A record whose charge was capped counts like any other.
    records[3].usage_source = UsageSource::Capped;
    db.runtime
        .block_on(db.store.record_usage(&records))
        .unwrap();

    let (since, until) = (rfc3339(at(0, 0)), rfc3339(at(3, 0)));
    let report = |extra: &[&str]| {
        let mut args = vec!["usage", "report", "--since", &since, "--until", &until];
        args.extend_from_slice(extra);
        admin.json(&args)
    };
    let by_model = usage_doc(vec![
        usage_row("claude", 1, (500, 50, 7), 2_500_000),
        usage_row("gpt-4o", 3, (700, 70, 50), 7_000),
        usage_row("o3", 1, (300, 30, 100), 3_001),
    ]);
    assert_eq!(report(&[]), by_model);
    assert_eq!(report(&["--group-by", "model"]), by_model);
    assert_eq!(
        by_model["total"],
        json!({"requests": 5, "input_tokens": 1500, "output_tokens": 150,
               "cached_tokens": 157, "cost_micros": 2_510_001})
    );

    let mut by_key = vec![
        usage_row(&key_a1, 2, (400, 40, 150), 4_001),
        usage_row(&key_a2, 1, (200, 20, 0), 2_000),
        usage_row(&key_b, 2, (900, 90, 7), 2_504_000),
    ];
    by_key.sort_by_key(|row| row["group"].as_str().unwrap().to_owned());
    assert_eq!(report(&["--group-by", "key"]), usage_doc(by_key));

    assert_eq!(
        report(&["--group-by", "day"]),
        usage_doc(vec![
            usage_row(&day(0), 2, (300, 30, 50), 3_000),
            usage_row(&day(1), 2, (700, 70, 100), 7_001),
            usage_row(&day(2), 1, (500, 50, 7), 2_500_000),
        ])
    );

    // Filters.
    assert_eq!(
        report(&["--account", &acct_a, "--group-by", "day"]),
        usage_doc(vec![
            usage_row(&day(0), 2, (300, 30, 50), 3_000),
            usage_row(&day(1), 1, (300, 30, 100), 3_001),
        ])
    );
    assert_eq!(
        report(&["--key", &key_b]),
        usage_doc(vec![
            usage_row("claude", 1, (500, 50, 7), 2_500_000),
            usage_row("gpt-4o", 1, (400, 40, 0), 4_000),
        ])
    );
    assert_eq!(
        report(&["--account", &acct_a, "--key", &key_a2, "--group-by", "key"]),
        usage_doc(vec![usage_row(&key_a2, 1, (200, 20, 0), 2_000)])
    );

    // The default window is the last 7 days; durations count back from now.
    assert_eq!(
        admin.json(&["usage", "report"]),
        usage_doc(vec![usage_row("gpt-4o", 1, (7, 7, 7), 7)])
    );
    assert_eq!(
        admin.json(&["usage", "report", "--since", "9d", "--until", "30m"]),
        usage_doc(vec![
            usage_row("gpt-4o", 1, (7, 7, 7), 7),
            usage_row("o3", 1, (9, 9, 9), 9),
        ])
    );
    assert_eq!(
        admin.json(&["usage", "report", "--since", "9d", "--until", "2h"]),
        usage_doc(vec![usage_row("o3", 1, (9, 9, 9), 9)])
    );
    let wide = admin.json(&["usage", "report", "--since", "365d"]);
    assert_eq!(wide["total"]["requests"], 10);

    // People get an aligned table with a total line, cost in credits.
    let out = admin.run(&["usage", "report", "--since", &since, "--until", &until]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].starts_with("Usage by model from "), "{table}");
    let cells = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[1]),
        [
            "MODEL", "REQUESTS", "INPUT", "TOKENS", "OUTPUT", "TOKENS", "CACHED", "TOKENS", "COST"
        ]
    );
    assert_eq!(cells(lines[2]), ["claude", "1", "500", "50", "7", "2.5"]);
    assert_eq!(cells(lines[3]), ["gpt-4o", "3", "700", "70", "50", "0.007"]);
    assert_eq!(
        cells(lines[5]),
        ["total", "5", "1500", "150", "157", "2.510001"]
    );
    let width = lines[1].chars().count();
    assert!(
        lines[1..].iter().all(|line| line.chars().count() == width),
        "columns are not aligned:\n{table}"
    );

    // Purge: only the record past 90 days goes, once.
    assert_eq!(
        admin.json(&["usage", "purge", "--older-than", "90d"]),
        json!({"deleted": 1})
    );
    assert_eq!(
        admin.json(&["usage", "purge", "--older-than", "90d"]),
        json!({"deleted": 0})
    );
    let wide = admin.json(&["usage", "report", "--since", "365d"]);
    assert_eq!(wide["total"]["requests"], 9);
    let left = db
        .runtime
        .block_on(db.store.usage_between(now - TimeDelta::days(365), now))
        .unwrap();
    assert_eq!(left.len(), 9);
    assert!(left.iter().all(|r| r.at > now - TimeDelta::days(90)));
    let out = admin.run(&["usage", "purge", "--older-than", "8d"]);
    assert!(out.status.success());
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.starts_with("deleted 8 usage records from before "),
        "{said}"
    );
}

#[test]
fn usage_report_and_purge_on_sqlite() {
    usage_reports_and_purge(&WithStore::sqlite());
}

#[test]
fn usage_report_and_purge_on_postgres() {
    let Some(db) = WithStore::postgres("keygate-admin usage_report_and_purge_on_postgres") else {
        return;
    };
    usage_reports_and_purge(&db);
}

/// Money held by an in-flight request shows as reserved, exactly.
fn account_show_includes_reserved_money(db: &WithStore) {
    let account = db.admin.account();
    let key = db.key(&account);
    let outcome = db
        .runtime
        .block_on(db.store.reserve(NewReservation {
            account_id: account.parse::<AccountId>().unwrap(),
            key_id: key.parse::<KeyId>().unwrap(),
            amount: Micros(1_250_001),
            expires_at: Utc::now() + TimeDelta::minutes(10),
        }))
        .unwrap();
    assert!(matches!(outcome, Reserve::Held(_)), "{outcome:?}");
    let shown = db.admin.json(&["account", "show", &account]);
    assert_eq!(shown["balance_micros"], 10_500_000);
    assert_eq!(shown["reserved_micros"], 1_250_001);
    let listed = db.admin.json(&["account", "list"]);
    assert_eq!(listed["accounts"][0]["reserved_micros"], 1_250_001);
    assert_eq!(listed["accounts"][0]["balance_micros"], 10_500_000);
    let out = db.admin.run(&["account", "show", &account]);
    let table = String::from_utf8(out.stdout).unwrap();
    let row = |name: &str| {
        table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .map(|line| line.split_whitespace().skip(1).collect::<Vec<_>>())
    };
    assert_eq!(row("balance"), Some(vec!["10.5"]), "{table}");
    assert_eq!(row("reserved"), Some(vec!["1.250001"]), "{table}");
    let out = db.admin.run(&["account", "list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("RESERVED") && table.contains("1.250001"),
        "{table}"
    );
}

#[test]
fn account_show_includes_reserved_money_on_sqlite() {
    account_show_includes_reserved_money(&WithStore::sqlite());
}

#[test]
fn account_show_includes_reserved_money_on_postgres() {
    let Some(db) =
        WithStore::postgres("keygate-admin account_show_includes_reserved_money_on_postgres")
    else {
        return;
    };
    account_show_includes_reserved_money(&db);
}

#[test]
fn a_model_name_cannot_drive_the_terminal() {
    let db = WithStore::sqlite();
    let account = db.admin.account();
    let key = db.key(&account);
    let model = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let at = Utc::now() - TimeDelta::hours(1);
    db.runtime
        .block_on(
            db.store
                .record_usage(&[usage(at, (&account, &key), model, (1, 2, 0), 3)]),
        )
        .unwrap();
    let report = db.admin.json(&["usage", "report"]);
    assert_eq!(
        report["rows"][0]["group"], model,
        "JSON keeps the name exactly"
    );
    let out = db.admin.run(&["usage", "report"]);
    assert!(out.status.success());
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&0x07));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"),
        "{table}"
    );
}

#[test]
fn usage_commands_fail_with_one_clear_line() {
    let db = WithStore::sqlite();
    let admin = &db.admin;
    let acct_a = admin.account();
    let acct_b = admin.account();
    let key_b = db.key(&acct_b);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["usage", "report", "--since", "3x"],
            "neither a duration",
        ),
        (vec!["usage", "report", "--since", "yesterday"], "RFC 3339"),
        (vec!["usage", "report", "--until", "soon"], "RFC 3339"),
        (vec!["usage", "report", "--since", "0d"], "zero"),
        (
            vec!["usage", "report", "--since", "1d", "--until", "2d"],
            "is not before --until",
        ),
        (
            vec![
                "usage",
                "report",
                "--since",
                "2026-03-02T00:00:00Z",
                "--until",
                "2026-03-01T00:00:00Z",
            ],
            "--since 2026-03-02T00:00:00Z is not before --until 2026-03-01T00:00:00Z",
        ),
        (vec!["usage", "report", "--since", "1000000y"], "too far"),
        (vec!["usage", "report", "--account", "bogus"], "acct_"),
        (vec!["usage", "report", "--key", &acct_a], "not a key_"),
        (
            vec!["usage", "report", "--account", "acct_0000000000000000"],
            "account acct_0000000000000000 not found",
        ),
        (
            vec!["usage", "report", "--key", "key_0000000000000000"],
            "key key_0000000000000000 not found",
        ),
        (
            vec!["usage", "report", "--account", &acct_a, "--key", &key_b],
            "belongs to account",
        ),
        (
            vec!["usage", "report", "--group-by", "week"],
            "possible values: model, key, day",
        ),
        (vec!["usage", "purge"], "--older-than"),
        (vec!["usage", "purge", "--older-than", "0d"], "zero"),
        (vec!["usage", "purge", "--older-than", "90m"], "1d or more"),
        (vec!["usage", "purge", "--older-than", "ninety"], "30d"),
        (
            vec!["usage", "purge", "--older-than", "1000000y"],
            "before 1970",
        ),
        (
            vec!["usage", "purge", "--older-than", "200y"],
            "before 1970",
        ),
    ];
    for (args, expected) in cases {
        let err = admin.fails(&args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
