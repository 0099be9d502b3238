//! Throwaway PostgreSQL databases for tests.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::RngExt;

/// The environment variable that names the PostgreSQL server for tests, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`. When unset, PostgreSQL tests are
/// skipped and say so.
pub const POSTGRES_URL_VAR: &str = "KEYGATE_TEST_POSTGRES_URL";

/// A database created for one test and dropped (with `FORCE`) when this value is
/// dropped.
#[derive(Debug)]
pub struct TestPostgres {
    base_url: String,
    name: String,
    url: String,
}

impl TestPostgres {
    /// Creates a fresh database on the server named by `KEYGATE_TEST_POSTGRES_URL`.
    /// Returns `None`, after printing that the test was skipped, when the variable
    /// is unset. Panics (this is test code) when the server cannot be reached.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(base_url) = std::env::var(POSTGRES_URL_VAR) else {
            eprintln!("SKIPPED (PostgreSQL): {test} — set {POSTGRES_URL_VAR} to run it");
            return None;
        };
        let suffix: u64 = rand::rng().random();
        let name = format!("keygate_test_{}_{suffix:016x}", std::process::id());
        let mut admin = AsyncPgConnection::establish(&base_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {POSTGRES_URL_VAR}: {e}"));
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let url = with_database(&base_url, &name);
        Some(Self {
            base_url,
            name,
            url,
        })
    }

    /// The URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let base_url = self.base_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop may run inside a runtime, which cannot block on another; a short-lived
        // thread with its own runtime does the cleanup and is joined here.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = AsyncPgConnection::establish(&base_url).await {
                    let _ = diesel::sql_query(sql).execute(&mut admin).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
