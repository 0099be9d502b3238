//! Connections: the pools a `DbStore` draws from and the SQLite session settings.
//! SQLite reads on a small pool and writes on a single connection (SQLite has one
//! writer at a time anyway), each connection in WAL mode with a busy timeout;
//! PostgreSQL uses one pool of `AsyncPgConnection`s for everything.

use std::time::Duration;

use deadpool::Runtime;
#[cfg(feature = "postgres")]
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};

use super::error::map_pool;
use super::url::DatabaseUrl;
use crate::error::{Result, StoreError};

/// An async SQLite connection: diesel's synchronous one on a blocking thread.
#[cfg(feature = "sqlite")]
pub(super) type SqliteConn =
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::sqlite::SqliteConnection>;

/// How long to wait for a pooled connection or a new one before calling the
/// database unreachable.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another writer (another process) before giving up.
#[cfg(feature = "sqlite")]
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Pool sizes and timeouts.
#[derive(Clone, Debug)]
pub struct DbOptions {
    /// Connections for reads (SQLite) or for everything (PostgreSQL).
    pub max_connections: usize,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self { max_connections: 8 }
    }
}

/// The pools of one database.
pub(super) enum Pools {
    #[cfg(feature = "sqlite")]
    Sqlite {
        read: Pool<SqliteConn>,
        write: Pool<SqliteConn>,
    },
    #[cfg(feature = "postgres")]
    Postgres(Pool<AsyncPgConnection>),
}

/// One connection out of a pool, for one operation.
#[allow(
    clippy::large_enum_variant,
    reason = "lives briefly on the stack of one operation; boxing would allocate per query"
)]
pub(super) enum Conn {
    #[cfg(feature = "sqlite")]
    Sqlite(Object<SqliteConn>),
    #[cfg(feature = "postgres")]
    Postgres(Object<AsyncPgConnection>),
}

impl Pools {
    /// Pools for `url`. Connections are made when first needed.
    pub(super) fn new(url: &DatabaseUrl, options: &DbOptions) -> Result<Self> {
        let max = options.max_connections.max(1);
        Ok(match url {
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite(path) => Pools::Sqlite {
                read: sqlite_pool(path, max)?,
                write: sqlite_pool(path, 1)?,
            },
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(pg) => {
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(pg.as_str());
                Pools::Postgres(build_pool(manager, max)?)
            }
        })
    }

    /// A connection for reading.
    pub(super) async fn read(&self) -> Result<Conn> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { read, .. } => read.get().await.map(Conn::Sqlite),
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pool.get().await.map(Conn::Postgres),
        }
        .map_err(map_pool)
    }

    /// A connection for writing: SQLite's single writer.
    pub(super) async fn write(&self) -> Result<Conn> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { write, .. } => write.get().await.map(Conn::Sqlite),
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pool.get().await.map(Conn::Postgres),
        }
        .map_err(map_pool)
    }
}

/// The settings every SQLite connection starts with.
#[cfg(feature = "sqlite")]
pub(super) fn sqlite_pragmas() -> String {
    format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
    )
}

#[cfg(feature = "sqlite")]
fn sqlite_pool(path: &str, max: usize) -> Result<Pool<SqliteConn>> {
    use diesel_async::pooled_connection::ManagerConfig;
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    use futures_util::FutureExt;

    let mut config = ManagerConfig::<SqliteConn>::default();
    config.custom_setup = Box::new(|path| {
        let path = path.to_owned();
        async move {
            let mut conn = SqliteConn::establish(&path).await?;
            conn.batch_execute(&sqlite_pragmas())
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    build_pool(
        AsyncDieselConnectionManager::new_with_config(path, config),
        max,
    )
}

fn build_pool<C>(manager: AsyncDieselConnectionManager<C>, max: usize) -> Result<Pool<C>>
where
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager<Type = C>,
{
    Pool::builder(manager)
        .max_size(max)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}
