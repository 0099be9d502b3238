//! `DbStore`: the SQLite and PostgreSQL backends through diesel-async, each behind
//! its cargo feature (`sqlite`, `postgres`).
//!
//! Both backends share one schema (`schema`) and one set of queries: the
//! operations are written once (`sql_ops!` in `keys`, `ledger_ops!` in `ledger`)
//! and compiled for each connection type; `dispatch!` runs the module of the
//! connection's backend. SQLite runs through `SyncConnectionWrapper`, PostgreSQL
//! on `AsyncPgConnection` (no libpq); see `pool`.

use std::fmt;

use crate::error::{Result, StoreError};
use crate::store::CredentialStore;

/// Runs `$op` from the module of the connection's backend: `$sqlite` or `$pg`,
/// the same operation text compiled for each connection type.
macro_rules! dispatch {
    ($conn:expr, $sqlite:ident | $pg:ident, $op:ident($($arg:expr),*)) => {
        match $conn {
            #[cfg(feature = "sqlite")]
            $crate::sql::pool::Conn::Sqlite(mut c) => $sqlite::$op(&mut c, $($arg),*).await,
            #[cfg(feature = "postgres")]
            $crate::sql::pool::Conn::Postgres(mut c) => $pg::$op(&mut c, $($arg),*).await,
        }
    };
}

mod control;
mod error;
mod keys;
mod ledger;
mod limit;
mod migrate;
mod pool;
mod rows;
mod schema;
mod url;

pub use self::pool::DbOptions;
use self::pool::{Conn, Pools};
pub use self::url::DatabaseUrl;

/// A [`CredentialStore`] and [`crate::Ledger`] on SQLite or PostgreSQL.
pub struct DbStore {
    url: DatabaseUrl,
    pools: Pools,
}

impl fmt::Debug for DbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbStore").field("url", &self.url).finish()
    }
}

impl DbStore {
    /// Opens the database at `url` with default pool sizes and checks that it
    /// answers. Does not migrate; see [`DbStore::migrate`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &DbOptions::default()).await
    }

    /// Opens the database at `url` and checks that it answers.
    pub async fn connect_with(url: &str, options: &DbOptions) -> Result<Self> {
        let url = DatabaseUrl::parse(url)?;
        let pools = Pools::new(&url, options)?;
        let store = Self { url, pools };
        match store.ping().await {
            Ok(()) => Ok(store),
            Err(StoreError::Unavailable(cause)) => Err(StoreError::Unavailable(format!(
                "cannot open {}: {cause}",
                store.url
            ))),
            Err(other) => Err(other),
        }
    }

    /// The URL, password hidden.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    async fn read(&self) -> Result<Conn> {
        self.pools.read().await
    }

    async fn write(&self) -> Result<Conn> {
        self.pools.write().await
    }
}
