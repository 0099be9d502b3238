//! `DbStore`: the SQLite and PostgreSQL backends through diesel-async.
//!
//! Both backends share one schema ([`schema`]) and one set of queries: the
//! operations are written once in `sql_ops!` and compiled for each connection type.
//! SQLite runs through `SyncConnectionWrapper` with WAL and a busy timeout, reads
//! on a small pool and writes on a single connection (SQLite has one writer at a
//! time anyway). PostgreSQL runs on `AsyncPgConnection` (no libpq).

mod ledger;
mod rows;
mod schema;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool::Runtime;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sqlite::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use keygate_keys::KeyHash;

use self::rows::{AccountRow, KeyChangeRow, KeyRow, KeySettingsRow, NewKeyChangeRow, millis};
use self::schema::{accounts, api_keys, key_changes};
use crate::error::{Result, StoreError};
use crate::money::Micros;
use crate::store::{CredentialStore, check_rotatable, check_top_up};
use crate::types::{
    Account, AccountId, ApiKey, KeyChange, KeyId, KeyUpdate, NewAccount, NewApiKey, ReplacementKey,
};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// PostgreSQL advisory lock key held while migrating ("keygate" in ASCII).
const MIGRATION_LOCK_ID: i64 = 0x006b_6579_6761_7465;

/// How long to wait for a pooled connection or a new one before calling the
/// database unreachable.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SQLite waits for another writer (another process) before giving up.
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

/// A parsed database URL. `Display` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` or `sqlite:PATH`; the file is created if missing.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses a URL, naming the accepted forms when it is none of them.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some(path) if !path.is_empty() && !path.contains(":memory:") => {
                Ok(DatabaseUrl::Sqlite(path.to_owned()))
            }
            Some(_) => Err(StoreError::UnsupportedUrl(format!(
                "{url:?} (SQLite needs a file path; for a throwaway store use a temporary file)"
            ))),
            None => Err(StoreError::UnsupportedUrl(redact(url))),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{path}"),
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

enum Pools {
    Sqlite {
        read: Pool<SqliteConn>,
        write: Pool<SqliteConn>,
    },
    Postgres(Pool<AsyncPgConnection>),
}

/// A [`CredentialStore`] on SQLite or PostgreSQL.
pub struct DbStore {
    url: DatabaseUrl,
    pools: Pools,
}

impl fmt::Debug for DbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbStore").field("url", &self.url).finish()
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "lives briefly on the stack of one operation; boxing would allocate per query"
)]
enum Conn {
    Sqlite(Object<SqliteConn>),
    Postgres(Object<AsyncPgConnection>),
}

/// Runs `$op` from the module of the connection's backend. Each module is the
/// same `sql_ops!` text compiled for one connection type.
macro_rules! dispatch {
    ($conn:expr, $op:ident($($arg:expr),*)) => {
        match $conn {
            Conn::Sqlite(mut c) => sqlite_ops::$op(&mut c, $($arg),*).await,
            Conn::Postgres(mut c) => pg_ops::$op(&mut c, $($arg),*).await,
        }
    };
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
        let max = options.max_connections.max(1);
        let pools = match &url {
            DatabaseUrl::Sqlite(path) => Pools::Sqlite {
                read: sqlite_pool(path, max)?,
                write: sqlite_pool(path, 1)?,
            },
            DatabaseUrl::Postgres(pg) => {
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(pg.as_str());
                Pools::Postgres(build_pool(manager, max)?)
            }
        };
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

    /// Applies pending embedded migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        self.migration_task(MigrationTask::Run).await
    }

    /// Names of embedded migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        self.migration_task(MigrationTask::ListPending).await
    }

    /// Runs a migration task on a blocking thread with a dedicated connection
    /// (diesel's migration harness is synchronous).
    async fn migration_task(&self, task: MigrationTask) -> Result<Vec<String>> {
        let outcome = match &self.url {
            DatabaseUrl::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = SqliteConnection::establish(&path)
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    diesel::connection::SimpleConnection::batch_execute(
                        &mut conn,
                        &sqlite_pragmas(),
                    )
                    .map_err(map_diesel)?;
                    task.run(&mut conn, SQLITE_MIGRATIONS)
                })
                .await
            }
            DatabaseUrl::Postgres(url) => {
                let mut conn = AsyncPgConnection::establish(url)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                // Serialises migrations across processes (several gateways starting at
                // once); the lock is released when this connection closes.
                diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
                    .execute(&mut conn)
                    .await?;
                tokio::task::spawn_blocking(move || {
                    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
                    task.run(&mut harness, POSTGRES_MIGRATIONS)
                })
                .await
            }
        };
        outcome.map_err(|e| StoreError::Migration(format!("migration task failed: {e}")))?
    }

    async fn read(&self) -> Result<Conn> {
        match &self.pools {
            Pools::Sqlite { read, .. } => read.get().await.map(Conn::Sqlite),
            Pools::Postgres(pool) => pool.get().await.map(Conn::Postgres),
        }
        .map_err(map_pool)
    }

    async fn write(&self) -> Result<Conn> {
        match &self.pools {
            Pools::Sqlite { write, .. } => write.get().await.map(Conn::Sqlite),
            Pools::Postgres(pool) => pool.get().await.map(Conn::Postgres),
        }
        .map_err(map_pool)
    }
}

#[derive(Clone, Copy, Debug)]
enum MigrationTask {
    Run,
    ListPending,
}

impl MigrationTask {
    fn run<DB: diesel::backend::Backend>(
        self,
        harness: &mut impl MigrationHarness<DB>,
        source: EmbeddedMigrations,
    ) -> Result<Vec<String>> {
        let names = match self {
            MigrationTask::Run => harness
                .run_pending_migrations(source)
                .map(|done| done.iter().map(ToString::to_string).collect()),
            MigrationTask::ListPending => harness
                .pending_migrations(source)
                .map(|pending| pending.iter().map(|m| m.name().to_string()).collect()),
        };
        names.map_err(|e| StoreError::Migration(e.to_string()))
    }
}

fn sqlite_pragmas() -> String {
    format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
    )
}

fn sqlite_pool(path: &str, max: usize) -> Result<Pool<SqliteConn>> {
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

fn map_pool(error: PoolError) -> StoreError {
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

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        map_diesel(error)
    }
}

/// The store's operations, written once and compiled per connection type.
/// `$begin_key_change` is the statement every key-changing transaction starts with:
/// on SQLite a write that takes the write lock up front (so a read-then-write
/// transaction never fails with a stale snapshot when another process writes), on
/// PostgreSQL a lock that serialises key changes so `key_changes.seq` grows in
/// commit order and a poller never skips a change.
macro_rules! sql_ops {
    ($module:ident, $conn:ty, $begin_key_change:literal) => {
        mod $module {
            use super::*;

            type C = $conn;

            pub(super) async fn ping(c: &mut C) -> Result<()> {
                diesel::sql_query("SELECT 1").execute(c).await?;
                Ok(())
            }

            async fn begin_key_change(c: &mut C) -> Result<()> {
                diesel::sql_query($begin_key_change).execute(c).await?;
                Ok(())
            }

            async fn record_change(c: &mut C, key: &KeyRow, now: i64) -> Result<()> {
                diesel::insert_into(key_changes::table)
                    .values(NewKeyChangeRow {
                        key_id: &key.id,
                        key_hash: &key.key_hash,
                        changed_at: now,
                    })
                    .execute(c)
                    .await?;
                Ok(())
            }

            pub(super) async fn create_account(c: &mut C, new: NewAccount) -> Result<Account> {
                new.validate()?;
                let row = AccountRow {
                    id: AccountId::generate().to_string(),
                    name: new.name,
                    email: new.email,
                    balance_micros: new.balance.0,
                    reserved_micros: 0,
                    created_at: millis(Utc::now()),
                };
                diesel::insert_into(accounts::table)
                    .values(&row)
                    .execute(c)
                    .await?;
                row.try_into()
            }

            pub(super) async fn get_account(c: &mut C, id: &AccountId) -> Result<Account> {
                accounts::table
                    .find(id.as_str())
                    .select(AccountRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::account_not_found(id))?
                    .try_into()
            }

            pub(super) async fn list_accounts(c: &mut C) -> Result<Vec<Account>> {
                accounts::table
                    .select(AccountRow::as_select())
                    .order((accounts::created_at.asc(), accounts::id.asc()))
                    .load(c)
                    .await?
                    .into_iter()
                    .map(Account::try_from)
                    .collect()
            }

            pub(super) async fn top_up(
                c: &mut C,
                id: &AccountId,
                amount: Micros,
            ) -> Result<Account> {
                check_top_up(amount)?;
                let updated = diesel::update(accounts::table.find(id.as_str()))
                    .filter(accounts::balance_micros.le(i64::MAX - amount.0))
                    .set(accounts::balance_micros.eq(accounts::balance_micros + amount.0))
                    .execute(c)
                    .await?;
                let account = get_account(c, id).await?;
                if updated == 0 {
                    return Err(StoreError::Conflict(format!(
                        "account {id}: the balance would overflow"
                    )));
                }
                Ok(account)
            }

            async fn key_row(c: &mut C, id: &KeyId) -> Result<KeyRow> {
                api_keys::table
                    .find(id.as_str())
                    .select(KeyRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::key_not_found(id))
            }

            /// Inserts a key whose settings are already validated.
            async fn insert_key(c: &mut C, new: NewApiKey, now: DateTime<Utc>) -> Result<KeyRow> {
                let exists: i64 = accounts::table
                    .filter(accounts::id.eq(new.account_id.as_str()))
                    .count()
                    .get_result(c)
                    .await?;
                if exists == 0 {
                    return Err(StoreError::account_not_found(&new.account_id));
                }
                let row = KeyRow::from_key(&ApiKey::new(KeyId::generate(), new, now))?;
                diesel::insert_into(api_keys::table)
                    .values(&row)
                    .execute(c)
                    .await?;
                record_change(c, &row, millis(now)).await?;
                Ok(row)
            }

            pub(super) async fn create_key(c: &mut C, new: NewApiKey) -> Result<ApiKey> {
                new.settings.validate()?;
                let row = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        insert_key(c, new, Utc::now()).await
                    })
                    .await?;
                row.try_into()
            }

            pub(super) async fn get_key(c: &mut C, id: &KeyId) -> Result<ApiKey> {
                key_row(c, id).await?.try_into()
            }

            pub(super) async fn find_key_by_hash(
                c: &mut C,
                hash: &KeyHash,
            ) -> Result<Option<ApiKey>> {
                api_keys::table
                    .filter(api_keys::key_hash.eq(hash.to_hex()))
                    .select(KeyRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .map(ApiKey::try_from)
                    .transpose()
            }

            pub(super) async fn list_keys(
                c: &mut C,
                account: Option<&AccountId>,
            ) -> Result<Vec<ApiKey>> {
                let mut query = api_keys::table
                    .select(KeyRow::as_select())
                    .order((api_keys::created_at.asc(), api_keys::id.asc()))
                    .into_boxed();
                if let Some(account) = account {
                    query = query.filter(api_keys::account_id.eq(account.as_str()));
                }
                query
                    .load(c)
                    .await?
                    .into_iter()
                    .map(ApiKey::try_from)
                    .collect()
            }

            pub(super) async fn update_key(
                c: &mut C,
                id: &KeyId,
                update: KeyUpdate,
            ) -> Result<ApiKey> {
                let id = id.clone();
                let row = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        let key = ApiKey::try_from(key_row(c, &id).await?)?;
                        let settings = update.apply(&key)?;
                        diesel::update(api_keys::table.find(id.as_str()))
                            .set(KeySettingsRow::new(&settings)?)
                            .execute(c)
                            .await?;
                        let row = key_row(c, &id).await?;
                        record_change(c, &row, millis(Utc::now())).await?;
                        Ok(row)
                    })
                    .await?;
                row.try_into()
            }

            /// Sets `revoked_at` to the earlier of its current value and `at`.
            async fn revoke_row(c: &mut C, id: &KeyId, at: i64) -> Result<KeyRow> {
                let mut row = key_row(c, id).await?;
                let revoked_at = row.revoked_at.map_or(at, |earlier| earlier.min(at));
                diesel::update(api_keys::table.find(id.as_str()))
                    .set(api_keys::revoked_at.eq(revoked_at))
                    .execute(c)
                    .await?;
                row.revoked_at = Some(revoked_at);
                record_change(c, &row, millis(Utc::now())).await?;
                Ok(row)
            }

            pub(super) async fn revoke_key(
                c: &mut C,
                id: &KeyId,
                at: DateTime<Utc>,
            ) -> Result<ApiKey> {
                let id = id.clone();
                let row = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        revoke_row(c, &id, millis(at)).await
                    })
                    .await?;
                row.try_into()
            }

            pub(super) async fn rotate_key(
                c: &mut C,
                id: &KeyId,
                replacement: ReplacementKey,
                old_revoked_at: DateTime<Utc>,
            ) -> Result<(ApiKey, ApiKey)> {
                let id = id.clone();
                let (new, old) = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        let now = Utc::now();
                        let old = ApiKey::try_from(key_row(c, &id).await?)?;
                        check_rotatable(&old, now)?;
                        let new = NewApiKey {
                            account_id: old.account_id.clone(),
                            key_hash: replacement.key_hash,
                            start: replacement.start,
                            settings: old.settings(),
                        };
                        let new = insert_key(c, new, now).await?;
                        let old = revoke_row(c, &id, millis(old_revoked_at)).await?;
                        Ok((new, old))
                    })
                    .await?;
                Ok((new.try_into()?, old.try_into()?))
            }

            pub(super) async fn record_key_use(
                c: &mut C,
                uses: &[(KeyId, DateTime<Utc>)],
            ) -> Result<()> {
                let uses: Vec<(String, i64)> = uses
                    .iter()
                    .map(|(id, at)| (id.to_string(), millis(*at)))
                    .collect();
                c.transaction::<_, StoreError, _>(async move |c| {
                    for (id, at) in &uses {
                        diesel::update(api_keys::table.find(id.as_str()))
                            .filter(
                                api_keys::last_used_at
                                    .is_null()
                                    .or(api_keys::last_used_at.lt(*at)),
                            )
                            .set(api_keys::last_used_at.eq(*at))
                            .execute(c)
                            .await?;
                    }
                    Ok(())
                })
                .await
            }

            pub(super) async fn key_changes_since(
                c: &mut C,
                after: u64,
                limit: u32,
            ) -> Result<Vec<KeyChange>> {
                let after = i64::try_from(after).unwrap_or(i64::MAX);
                key_changes::table
                    .filter(key_changes::seq.gt(after))
                    .order(key_changes::seq.asc())
                    .limit(i64::from(limit))
                    .select(KeyChangeRow::as_select())
                    .load(c)
                    .await?
                    .into_iter()
                    .map(KeyChange::try_from)
                    .collect()
            }

            pub(super) async fn latest_key_change(c: &mut C) -> Result<u64> {
                let latest: Option<i64> = key_changes::table
                    .select(diesel::dsl::max(key_changes::seq))
                    .first(c)
                    .await?;
                Ok(latest.and_then(|seq| u64::try_from(seq).ok()).unwrap_or(0))
            }
        }
    };
}

sql_ops!(
    sqlite_ops,
    SqliteConn,
    "DELETE FROM key_changes WHERE seq < 0"
);
sql_ops!(
    pg_ops,
    AsyncPgConnection,
    "LOCK TABLE key_changes IN SHARE ROW EXCLUSIVE MODE"
);

#[async_trait::async_trait]
impl CredentialStore for DbStore {
    fn backend(&self) -> &'static str {
        match self.url {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }

    async fn ping(&self) -> Result<()> {
        dispatch!(self.read().await?, ping())
    }

    async fn create_account(&self, new: NewAccount) -> Result<Account> {
        dispatch!(self.write().await?, create_account(new))
    }

    async fn get_account(&self, id: &AccountId) -> Result<Account> {
        dispatch!(self.read().await?, get_account(id))
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        dispatch!(self.read().await?, list_accounts())
    }

    async fn top_up(&self, id: &AccountId, amount: Micros) -> Result<Account> {
        dispatch!(self.write().await?, top_up(id, amount))
    }

    async fn create_key(&self, new: NewApiKey) -> Result<ApiKey> {
        dispatch!(self.write().await?, create_key(new))
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        dispatch!(self.read().await?, get_key(id))
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        dispatch!(self.read().await?, find_key_by_hash(hash))
    }

    async fn list_keys(&self, account: Option<&AccountId>) -> Result<Vec<ApiKey>> {
        dispatch!(self.read().await?, list_keys(account))
    }

    async fn update_key(&self, id: &KeyId, update: KeyUpdate) -> Result<ApiKey> {
        dispatch!(self.write().await?, update_key(id, update))
    }

    async fn revoke_key(&self, id: &KeyId, at: DateTime<Utc>) -> Result<ApiKey> {
        dispatch!(self.write().await?, revoke_key(id, at))
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: ReplacementKey,
        old_revoked_at: DateTime<Utc>,
    ) -> Result<(ApiKey, ApiKey)> {
        dispatch!(
            self.write().await?,
            rotate_key(id, replacement, old_revoked_at)
        )
    }

    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> Result<()> {
        // One row per key, latest time, in id order: concurrent batches from several
        // gateways then lock rows in the same order and cannot deadlock.
        let mut latest: std::collections::BTreeMap<&KeyId, DateTime<Utc>> = Default::default();
        for (id, at) in uses {
            let entry = latest.entry(id).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let uses: Vec<(KeyId, DateTime<Utc>)> = latest
            .into_iter()
            .map(|(id, at)| (id.clone(), at))
            .collect();
        dispatch!(self.write().await?, record_key_use(&uses))
    }

    async fn key_changes_since(&self, after: u64, limit: u32) -> Result<Vec<KeyChange>> {
        dispatch!(self.read().await?, key_changes_since(after, limit))
    }

    async fn latest_key_change(&self) -> Result<u64> {
        dispatch!(self.read().await?, latest_key_change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://keygate.db").unwrap(),
            DatabaseUrl::Sqlite("keygate.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/kg.db").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/kg.db".into())
        );
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        let pg = DatabaseUrl::parse("postgres://me:hunter2@db:5432/kg?password=x").unwrap();
        let shown = format!("{pg} {pg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("password=x"),
            "{shown}"
        );
        assert!(shown.contains("postgres://me:***@db:5432/kg"));
        let err = DatabaseUrl::parse("mysql://root:hunter2@db/kg")
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("sqlite://"),
            "{err}"
        );
    }
}
