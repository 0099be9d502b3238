//! `tidy`: checks that keep the tree honest, run by `cargo xtask tidy` and as a
//! test.
//!
//! - every `.rs` file starts with a `//!` doc line;
//! - `migrations/sqlite` and `migrations/postgres` hold the same migrations, each
//!   with `up.sql` and `down.sql`;
//! - every TEXT column in a migration is bounded by a CHECK, so no column can hold
//!   a request or response body (the privacy invariant);
//! - each `length(column) <= N` in a migration equals the `keygate_types::limits`
//!   constant the Rust code checks that column with, so the two cannot drift;
//! - every crate opts into the workspace lints;
//! - no source file (under a member's `src/`) is over 700 lines; tests and
//!   benches are exempt;
//! - no two modules of a crate import each other, directly or in a cycle
//!   (`tidy_modules`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The folders that hold the workspace's members (the root `Cargo.toml`).
const MEMBER_DIRS: [&str; 4] = ["crates", "bins", "examples", "xtask"];

/// The folders whose `.rs` files [`file_lengths`] bounds, `*` standing for each
/// member. A member's `tests/` and `benches/` lie beside them.
const SOURCE_DIRS: [&str; 4] = ["crates/*/src", "bins/*/src", "examples/*/src", "xtask/src"];

/// The most lines a source file may have; a longer one is split by concern.
const MAX_FILE_LINES: usize = 700;

use keygate_types::limits;

/// The Rust constant each length-bounded column must agree with, as
/// `(table, column, constant's name, its value)`.
const COLUMN_LIMITS: &[(&str, &str, &str, usize)] = &[
    ("accounts", "id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    ("accounts", "name", "MAX_NAME_LEN", limits::MAX_NAME_LEN),
    ("accounts", "email", "MAX_EMAIL_LEN", limits::MAX_EMAIL_LEN),
    ("accounts", "tier", "MAX_TIER_LEN", limits::MAX_TIER_LEN),
    ("api_keys", "id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    ("api_keys", "name", "MAX_NAME_LEN", limits::MAX_NAME_LEN),
    ("key_changes", "key_id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    ("reservations", "id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    (
        "reservations",
        "account_id",
        "MAX_ID_LEN",
        limits::MAX_ID_LEN,
    ),
    ("reservations", "key_id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    ("usage_records", "key_id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    (
        "usage_records",
        "account_id",
        "MAX_ID_LEN",
        limits::MAX_ID_LEN,
    ),
    (
        "usage_records",
        "model",
        "MAX_MODEL_LEN",
        limits::MAX_MODEL_LEN,
    ),
    (
        "usage_records",
        "upstream",
        "MAX_UPSTREAM_NAME_LEN",
        limits::MAX_UPSTREAM_NAME_LEN,
    ),
    (
        "usage_records",
        "client_name",
        "MAX_CLIENT_NAME_LEN",
        limits::MAX_CLIENT_NAME_LEN,
    ),
    (
        "usage_records",
        "client_ip",
        "MAX_CLIENT_IP_LEN",
        limits::MAX_CLIENT_IP_LEN,
    ),
    ("admin_tokens", "id", "MAX_ID_LEN", limits::MAX_ID_LEN),
    ("admin_tokens", "name", "MAX_NAME_LEN", limits::MAX_NAME_LEN),
    ("audit_log", "actor", "MAX_ID_LEN", limits::MAX_ID_LEN),
    (
        "audit_log",
        "action",
        "MAX_AUDIT_ACTION_LEN",
        limits::MAX_AUDIT_ACTION_LEN,
    ),
    ("audit_log", "target", "MAX_ID_LEN", limits::MAX_ID_LEN),
    (
        "idempotency_keys",
        "actor",
        "MAX_ID_LEN",
        limits::MAX_ID_LEN,
    ),
    (
        "idempotency_keys",
        "idem_key",
        "MAX_IDEMPOTENCY_KEY_LEN",
        limits::MAX_IDEMPOTENCY_KEY_LEN,
    ),
    (
        "idempotency_keys",
        "target",
        "MAX_ID_LEN",
        limits::MAX_ID_LEN,
    ),
    (
        "idempotency_keys",
        "body",
        "MAX_IDEMPOTENCY_BODY_LEN",
        limits::MAX_IDEMPOTENCY_BODY_LEN,
    ),
    (
        "console_sessions",
        "token_id",
        "MAX_ID_LEN",
        limits::MAX_ID_LEN,
    ),
];

/// Length-bounded columns that no Rust check mirrors: JSON or comma lists built
/// from values that are checked one by one, and the display start that
/// `keygate-keys` makes. A new bounded column goes in [`COLUMN_LIMITS`] or here.
const SCHEMA_ONLY_LIMITS: &[(&str, &str)] = &[
    ("api_keys", "start"),
    ("api_keys", "scopes"),
    ("api_keys", "models"),
    ("api_keys", "origins"),
    ("api_keys", "metadata"),
    ("admin_tokens", "start"),
];

/// Runs every check; returns each problem as one line.
pub(crate) fn check(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    doc_lines(root, &mut problems);
    migrations_in_step(root, &mut problems);
    text_columns_bounded(root, &mut problems);
    length_limits_match(root, &mut problems);
    workspace_lints(root, &mut problems);
    file_lengths(root, &mut problems);
    crate::tidy_modules::check(root, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn doc_lines(root: &Path, problems: &mut Vec<String>) {
    let mut rs = Vec::new();
    for dir in MEMBER_DIRS {
        files(&root.join(dir), "rs", &mut rs);
    }
    for path in rs {
        let starts_with_doc = fs::read_to_string(&path)
            .is_ok_and(|text| text.lines().next().is_some_and(|l| l.starts_with("//!")));
        if !starts_with_doc {
            problems.push(format!(
                "{} does not start with a //! doc line",
                relative(root, &path)
            ));
        }
    }
}

fn migration_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn migrations_in_step(root: &Path, problems: &mut Vec<String>) {
    let sqlite = migration_names(&root.join("migrations/sqlite"));
    let postgres = migration_names(&root.join("migrations/postgres"));
    if sqlite.is_empty() {
        problems.push("migrations/sqlite holds no migration".to_owned());
    }
    for name in sqlite.symmetric_difference(&postgres) {
        let (has, lacks) = if sqlite.contains(name) {
            ("sqlite", "postgres")
        } else {
            ("postgres", "sqlite")
        };
        problems.push(format!(
            "migration {name} is in migrations/{has} but not in migrations/{lacks}"
        ));
    }
    for (backend, names) in [("sqlite", &sqlite), ("postgres", &postgres)] {
        for name in names {
            for file in ["up.sql", "down.sql"] {
                if !root
                    .join("migrations")
                    .join(backend)
                    .join(name)
                    .join(file)
                    .is_file()
                {
                    problems.push(format!("migrations/{backend}/{name} has no {file}"));
                }
            }
        }
    }
}

fn text_columns_bounded(root: &Path, problems: &mut Vec<String>) {
    let mut sql = Vec::new();
    files(&root.join("migrations"), "sql", &mut sql);
    for path in sql {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            let code = line.split("--").next().unwrap_or("").to_ascii_uppercase();
            let is_text_column = code.split_whitespace().nth(1) == Some("TEXT")
                || code.split_whitespace().nth(1) == Some("TEXT,");
            let bounded = code.contains("CHECK (")
                && (code.contains("LENGTH(") || code.contains(" IN (") || is_literal_set(&code));
            let references = code.contains("REFERENCES");
            if is_text_column && !bounded && !references {
                problems.push(format!(
                    "{}:{}: TEXT column without a CHECK on its length",
                    relative(root, &path),
                    number + 1
                ));
            }
        }
    }
}

/// Whether a column's line checks it against a set of literals written as
/// equalities joined by OR (`c TEXT CHECK (c = 'a' OR c = 'b')`, which SQLite
/// checks without the index an `IN` list costs it): every term names this
/// column and one quoted literal. `code` is upper-cased.
fn is_literal_set(code: &str) -> bool {
    let column = code.split_whitespace().next();
    let inner = code
        .split_once("CHECK (")
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(inner, _)| inner);
    let (Some(column), Some(inner)) = (column, inner) else {
        return false;
    };
    inner.split(" OR ").all(|term| {
        term.trim()
            .strip_prefix(column)
            .and_then(|rest| rest.trim_start().strip_prefix('='))
            .map(str::trim_start)
            .is_some_and(|literal| {
                literal.len() >= 2
                    && literal.starts_with('\'')
                    && literal.ends_with('\'')
                    && !literal[1..literal.len() - 1].contains('\'')
            })
    })
}

/// One `length(column) <= N` (or `BETWEEN … AND N`) found in a migration.
#[derive(Debug, PartialEq, Eq)]
struct LengthBound {
    table: String,
    column: String,
    max: usize,
    line: usize,
}

/// The length bounds in one migration file, each with the table it belongs to
/// (the last `CREATE TABLE` or `ALTER TABLE` seen).
fn length_bounds(sql: &str) -> Vec<LengthBound> {
    let mut table = String::new();
    let mut bounds = Vec::new();
    for (number, line) in sql.lines().enumerate() {
        let code = line.split("--").next().unwrap_or("").to_ascii_lowercase();
        let words: Vec<&str> = code.split_whitespace().collect();
        if let Some(at) = words
            .windows(2)
            .position(|pair| matches!(pair, ["create" | "alter", "table"]))
        {
            let name = words[at + 2..]
                .iter()
                .find(|word| !matches!(**word, "if" | "not" | "exists"))
                .unwrap_or(&"");
            table = name.trim_end_matches('(').to_owned();
        }
        let mut rest = code.as_str();
        while let Some(start) = rest.find("length(") {
            rest = &rest[start + "length(".len()..];
            let Some((column, after)) = rest.split_once(')') else {
                break;
            };
            let after = after.trim_start();
            let max = match after.strip_prefix("<=") {
                Some(bound) => leading_number(bound),
                None => after
                    .strip_prefix("between")
                    .and_then(|range| range.split_once(" and "))
                    .and_then(|(_, bound)| leading_number(bound)),
            };
            if let Some(max) = max {
                bounds.push(LengthBound {
                    table: table.clone(),
                    column: column.trim().to_owned(),
                    max,
                    line: number + 1,
                });
            }
            rest = after;
        }
    }
    bounds
}

fn leading_number(text: &str) -> Option<usize> {
    let text = text.trim_start();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

fn length_limits_match(root: &Path, problems: &mut Vec<String>) {
    for backend in ["sqlite", "postgres"] {
        let mut sql = Vec::new();
        files(&root.join("migrations").join(backend), "sql", &mut sql);
        sql.sort();
        let mut seen = BTreeSet::new();
        for path in sql {
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            for bound in length_bounds(&text) {
                let (table, column) = (bound.table.as_str(), bound.column.as_str());
                let at = format!("{}:{}", relative(root, &path), bound.line);
                let limit = COLUMN_LIMITS
                    .iter()
                    .find(|(t, c, _, _)| *t == table && *c == column);
                match limit {
                    Some((_, _, name, value)) => {
                        seen.insert((table.to_owned(), column.to_owned()));
                        if bound.max != *value {
                            problems.push(format!(
                                "{at}: {table}.{column} is bounded by {} but keygate_types::limits::{name} is {value}",
                                bound.max
                            ));
                        }
                    }
                    None if SCHEMA_ONLY_LIMITS.contains(&(table, column)) => {}
                    None => problems.push(format!(
                        "{at}: {table}.{column} has a length bound that no keygate_types::limits constant \
                         names; add one (and check it where the column is written) or list the \
                         column in tidy's SCHEMA_ONLY_LIMITS"
                    )),
                }
            }
        }
        for (table, column, name, _) in COLUMN_LIMITS {
            if !seen.contains(&((*table).to_owned(), (*column).to_owned())) {
                problems.push(format!(
                    "migrations/{backend} has no length CHECK on {table}.{column} (keygate_types::limits::{name})"
                ));
            }
        }
    }
}

fn workspace_lints(root: &Path, problems: &mut Vec<String>) {
    let mut manifests = Vec::new();
    for dir in MEMBER_DIRS {
        files(&root.join(dir), "toml", &mut manifests);
    }
    for path in manifests.iter().filter(|p| p.ends_with("Cargo.toml")) {
        let opted_in =
            fs::read_to_string(path).is_ok_and(|text| text.contains("[lints]\nworkspace = true"));
        if !opted_in {
            problems.push(format!(
                "{} does not set [lints] workspace = true",
                relative(root, path)
            ));
        }
    }
}

/// [`SOURCE_DIRS`] under `root`, each `*` expanded to every folder it matches.
fn source_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for pattern in SOURCE_DIRS {
        let Some((parent, child)) = pattern.split_once("/*/") else {
            dirs.push(root.join(pattern));
            continue;
        };
        let Ok(entries) = fs::read_dir(root.join(parent)) else {
            continue;
        };
        let mut members: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        members.sort();
        dirs.extend(members.into_iter().map(|member| member.join(child)));
    }
    dirs
}

fn file_lengths(root: &Path, problems: &mut Vec<String>) {
    for dir in source_dirs(root) {
        let mut rs = Vec::new();
        files(&dir, "rs", &mut rs);
        rs.sort();
        for path in rs {
            // Unit tests kept in a folder of their own (`src/…/tests/`) are
            // exempt too.
            let in_tests = path
                .strip_prefix(&dir)
                .is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == "tests"));
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let lines = text.lines().count();
            if !in_tests && lines > MAX_FILE_LINES {
                problems.push(format!(
                    "{} has {lines} lines, more than {MAX_FILE_LINES}; split it by concern",
                    relative(root, &path)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_tidy() {
        if let Err(problems) = check(&crate::workspace_root()) {
            panic!("cargo xtask tidy found:\n{}", problems.join("\n"));
        }
    }

    #[test]
    fn a_set_of_literals_bounds_only_its_own_column() {
        let line = |l: &str| l.to_ascii_uppercase();
        assert!(is_literal_set(&line(
            "    kind TEXT NOT NULL CHECK (kind = 'a' OR kind = 'bc' OR kind='d'),"
        )));
        assert!(!is_literal_set(&line(
            "    kind TEXT NOT NULL CHECK (other = 'a' OR kind = 'b'),"
        )));
        assert!(!is_literal_set(&line(
            "    kind TEXT NOT NULL CHECK (kind = 'a' OR kind <> ''),"
        )));
        assert!(!is_literal_set(&line(
            "    kind TEXT NOT NULL CHECK (kind = other),"
        )));
        assert!(!is_literal_set(&line("    kind TEXT NOT NULL,")));
    }

    #[test]
    fn length_bounds_are_read_with_their_table() {
        let sql = "CREATE TABLE t (\n    id TEXT NOT NULL CHECK (length(id) <= 40),\n    \
                   name TEXT CHECK (LENGTH(name) BETWEEN 1 AND 200), -- length(x) <= 1\n    \
                   hash TEXT CHECK (length(hash) = 64)\n);\n\
                   ALTER TABLE u ADD COLUMN ip TEXT CHECK (ip IS NULL OR length(ip) <= 45);\n";
        let found: Vec<(String, String, usize, usize)> = length_bounds(sql)
            .into_iter()
            .map(|b| (b.table, b.column, b.max, b.line))
            .collect();
        let expected = [
            ("t", "id", 40, 2),
            ("t", "name", 200, 3),
            ("u", "ip", 45, 6),
        ]
        .map(|(t, c, max, line)| (t.to_owned(), c.to_owned(), max, line));
        assert_eq!(found, expected);
    }

    #[test]
    fn a_bound_that_disagrees_with_its_constant_is_caught() {
        let dir = std::env::temp_dir().join(format!("kg-tidy-limits-{}", std::process::id()));
        for backend in ["sqlite", "postgres"] {
            let migration = dir.join("migrations").join(backend).join("m1");
            fs::create_dir_all(&migration).unwrap();
            fs::write(
                migration.join("up.sql"),
                "CREATE TABLE usage_records (\n    model TEXT CHECK (length(model) <= 255),\n    \
                 note TEXT CHECK (length(note) <= 9)\n);\n",
            )
            .unwrap();
        }
        let mut problems = Vec::new();
        length_limits_match(&dir, &mut problems);
        let _ = fs::remove_dir_all(&dir);
        let sqlite: Vec<&String> = problems
            .iter()
            .filter(|p| p.contains("migrations/sqlite"))
            .collect();
        assert!(
            sqlite[0].contains("up.sql:2: usage_records.model is bounded by 255")
                && sqlite[0].contains("MAX_MODEL_LEN is 256"),
            "{problems:?}"
        );
        assert!(
            sqlite[1].contains("up.sql:3: usage_records.note"),
            "{problems:?}"
        );
        let missing = COLUMN_LIMITS.len() - 1;
        assert_eq!(sqlite.len(), 2 + missing, "{problems:?}");
        assert_eq!(problems.len(), 2 * (2 + missing), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("migrations/postgres has no length CHECK on accounts.id")),
            "{problems:?}"
        );
    }

    #[test]
    fn an_unbounded_text_column_is_caught() {
        let dir = std::env::temp_dir().join(format!("kg-tidy-{}", std::process::id()));
        let migration = dir.join("migrations/sqlite/m1");
        fs::create_dir_all(&migration).unwrap();
        fs::write(
            migration.join("up.sql"),
            "CREATE TABLE t (\n    body TEXT NOT NULL,\n    ok TEXT CHECK (length(ok) <= 9)\n);\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        text_columns_bounded(&dir, &mut problems);
        migrations_in_step(&dir, &mut problems);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("up.sql:2"), "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("not in migrations/postgres"))
        );
    }

    #[test]
    fn a_source_file_over_the_limit_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |path: &str, lines: usize| {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "//! x\n".repeat(lines)).unwrap();
        };
        write("crates/a/src/long.rs", MAX_FILE_LINES + 1);
        write("crates/a/src/deep/ok.rs", MAX_FILE_LINES);
        write("crates/a/tests/it/main.rs", MAX_FILE_LINES * 2);
        write("crates/a/benches/bench.rs", MAX_FILE_LINES * 2);
        write("crates/a/src/unit/tests/big.rs", MAX_FILE_LINES * 2);
        write("bins/b/src/deep/long.rs", MAX_FILE_LINES + 5);
        write("examples/e/src/main.rs", MAX_FILE_LINES + 1);
        write("crates/tests/src/lib.rs", MAX_FILE_LINES + 2);
        write("xtask/src/long.rs", MAX_FILE_LINES * 3);
        let mut problems = Vec::new();
        file_lengths(root, &mut problems);
        let long = |path: &str, lines: usize| {
            format!("{path} has {lines} lines, more than 700; split it by concern")
        };
        assert_eq!(
            problems,
            [
                long("crates/a/src/long.rs", 701),
                long("crates/tests/src/lib.rs", 702),
                long("bins/b/src/deep/long.rs", 705),
                long("examples/e/src/main.rs", 701),
                long("xtask/src/long.rs", 2100),
            ]
        );
    }
}
