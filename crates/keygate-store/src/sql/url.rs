//! `DatabaseUrl`: which backend a database URL names, and how to show it without
//! its password. A URL whose backend this build leaves out is refused here, with
//! the feature to rebuild with.

use std::fmt;

use crate::error::{Result, StoreError};

/// A parsed database URL. `Display` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` or `sqlite:PATH`; the file is created if missing.
    #[cfg(feature = "sqlite")]
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses a URL, naming the accepted forms when it is none of them, and the
    /// missing feature when it names a backend this build leaves out.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return postgres(url);
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some(path) if !path.is_empty() && !path.contains(":memory:") => sqlite(path),
            Some(_) => Err(StoreError::UnsupportedUrl(format!(
                "{url:?} (SQLite needs a file path; for a throwaway store use a temporary file)"
            ))),
            None => Err(StoreError::UnsupportedUrl(redact(url))),
        }
    }

    /// The backend's name, as `CredentialStore::backend` reports it.
    pub(super) fn backend(&self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

#[cfg(feature = "sqlite")]
fn sqlite(path: &str) -> Result<DatabaseUrl> {
    Ok(DatabaseUrl::Sqlite(path.to_owned()))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite(_path: &str) -> Result<DatabaseUrl> {
    Err(StoreError::BackendNotBuilt {
        backend: "SQLite",
        feature: "sqlite",
    })
}

#[cfg(feature = "postgres")]
fn postgres(url: &str) -> Result<DatabaseUrl> {
    Ok(DatabaseUrl::Postgres(url.to_owned()))
}

#[cfg(not(feature = "postgres"))]
fn postgres(_url: &str) -> Result<DatabaseUrl> {
    Err(StoreError::BackendNotBuilt {
        backend: "PostgreSQL",
        feature: "postgres",
    })
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{path}"),
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Shows a database URL without its password or query string (either may carry a
/// secret). Text that is not `scheme://…` is not shown at all.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not shown: not a scheme://… URL)".to_owned();
    };
    // The userinfo ends at the last '@': an unencoded '?' or '/' in a password must
    // not be mistaken for the start of the path or query.
    let (user, host) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            (format!("{user}{masked}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    let host = host.split('?').next().unwrap_or("");
    format!("{scheme}://{user}{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_urls_are_refused_without_their_password() {
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        let err = DatabaseUrl::parse("mysql://root:hunter2@db/kg")
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("sqlite://"),
            "{err}"
        );
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_urls_parse() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://keygate.db").unwrap(),
            DatabaseUrl::Sqlite("keygate.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/kg.db").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/kg.db".into())
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_urls_parse_and_redact() {
        let pg = DatabaseUrl::parse("postgres://me:hunter2@db:5432/kg?password=x").unwrap();
        let shown = format!("{pg} {pg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("password=x"),
            "{shown}"
        );
        assert!(shown.contains("postgres://me:***@db:5432/kg"));
    }

    #[cfg(not(feature = "sqlite"))]
    #[test]
    fn a_sqlite_url_without_the_sqlite_feature_names_the_feature() {
        let err = DatabaseUrl::parse("sqlite://keygate.db").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this build of keygate has no SQLite support; rebuild with the `sqlite` feature"
        );
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn a_postgres_url_without_the_postgres_feature_names_the_feature() {
        let err = DatabaseUrl::parse("postgres://me:hunter2@db/kg").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this build of keygate has no PostgreSQL support; rebuild with the `postgres` feature"
        );
    }
}
