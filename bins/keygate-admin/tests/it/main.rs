//! `keygate-admin` end to end: the real binary against a real SQLite file (and
//! PostgreSQL when `KEYGATE_TEST_POSTGRES_URL` is set).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step fails the test"
)]

use std::path::{Path, PathBuf};
use std::process::Output;

use keygate_keys::{KeyPrefix, ParsedKey};
use keygate_test_utils::TestPostgres;
use serde_json::Value;
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
    ]);
    assert_eq!(updated["rpm"], Value::Null);
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
