//! `tidy`: checks that keep the tree honest, run by `cargo xtask tidy` and as a
//! test.
//!
//! - every `.rs` file starts with a `//!` doc line;
//! - `migrations/sqlite` and `migrations/postgres` hold the same migrations, each
//!   with `up.sql` and `down.sql`;
//! - every TEXT column in a migration is bounded by a CHECK, so no column can hold
//!   a request or response body (the privacy invariant);
//! - every crate opts into the workspace lints;
//! - no two modules of a crate import each other, directly or in a cycle
//!   (`tidy_modules`).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The folders that hold the workspace's members (the root `Cargo.toml`).
const MEMBER_DIRS: [&str; 4] = ["crates", "bins", "examples", "xtask"];

/// Runs every check; returns each problem as one line.
pub(crate) fn check(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    doc_lines(root, &mut problems);
    migrations_in_step(root, &mut problems);
    text_columns_bounded(root, &mut problems);
    workspace_lints(root, &mut problems);
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
            let bounded =
                code.contains("CHECK (") && (code.contains("LENGTH(") || code.contains(" IN ("));
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
}
