//! `StoreError`: what a store operation can fail with. Messages never carry a key.

use keygate_types::{AccountId, IdError, KeyId};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The account or key does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// `account` or `key`.
        entity: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// A field failed validation; nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, as the CLI names it.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The operation contradicts the stored state (a revoked key, a duplicate hash,
    /// a balance that would overflow).
    #[error("{0}")]
    Conflict(String),
    /// The database URL is not one this crate can open.
    #[error("unsupported database URL {0}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The URL names a backend this build leaves out (see the crate's `sqlite` and
    /// `postgres` features).
    #[error("this build of keygate has no {backend} support; rebuild with the `{feature}` feature")]
    BackendNotBuilt {
        /// `SQLite` or `PostgreSQL`.
        backend: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// The database cannot be reached.
    #[error("database unreachable: {0}")]
    Unavailable(String),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn account_not_found(id: &AccountId) -> Self {
        StoreError::NotFound {
            entity: "account",
            id: id.to_string(),
        }
    }

    pub(crate) fn key_not_found(id: &KeyId) -> Self {
        StoreError::NotFound {
            entity: "key",
            id: id.to_string(),
        }
    }

    /// Whether the failure is the store being unreachable (as opposed to a bad request).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// An id that does not parse is invalid input, like any other field.
impl From<IdError> for StoreError {
    fn from(error: IdError) -> Self {
        StoreError::invalid("id", error.reason())
    }
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
