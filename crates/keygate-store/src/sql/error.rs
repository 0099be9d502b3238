//! What a database failure means to the caller: diesel and pool errors mapped to
//! `StoreError`, telling an unreachable database (retry later) from a conflict or
//! any other failure.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

use crate::error::StoreError;

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        map_diesel(error)
    }
}

/// A pool that could not hand out a connection: the database is unreachable.
pub(super) fn map_pool(error: PoolError) -> StoreError {
    use deadpool::managed::PoolError as P;
    use diesel_async::pooled_connection::PoolError as Backend;
    let cause = match error {
        P::Backend(Backend::ConnectionError(e)) => with_sources(&e),
        P::Backend(Backend::QueryError(e)) => e.to_string(),
        P::Timeout(_) => "timed out waiting for a connection".to_owned(),
        other => other.to_string(),
    };
    StoreError::Unavailable(cause)
}

/// An error's message followed by those of its sources, so "error connecting to
/// server" says why.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

fn map_diesel(error: DieselError) -> StoreError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
            StoreError::Conflict("a record with the same unique value already exists".into())
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            info,
        ) => StoreError::Unavailable(info.message().to_owned()),
        DieselError::DatabaseError(_, info) if is_connection_loss(info.message()) => {
            StoreError::Unavailable(info.message().to_owned())
        }
        DieselError::BrokenTransactionManager => {
            StoreError::Unavailable("the database connection broke mid-transaction".into())
        }
        DieselError::DatabaseError(_, info) if info.message().contains("database is locked") => {
            StoreError::Unavailable("the SQLite database stayed locked by another writer".into())
        }
        _ => StoreError::Database(error.to_string()),
    }
}

/// Server messages that mean the connection, not the query, failed (PostgreSQL
/// admin shutdown, crash recovery, a dropped socket).
fn is_connection_loss(message: &str) -> bool {
    const MARKERS: [&str; 5] = [
        "terminating connection",
        "connection closed",
        "server closed the connection",
        "the database system is",
        "error communicating with the server",
    ];
    MARKERS.iter().any(|m| message.contains(m))
}
