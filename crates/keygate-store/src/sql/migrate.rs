//! Migrations: the embedded `migrations/{sqlite,postgres}` folders, applied or
//! listed on a dedicated connection (diesel's migration harness is synchronous, so
//! it runs on a blocking thread). On PostgreSQL an advisory lock serialises
//! migrations across processes.

use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::DbStore;
use super::url::DatabaseUrl;
use crate::error::{Result, StoreError};

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// PostgreSQL advisory lock key held while migrating ("keygate" in ASCII).
#[cfg(feature = "postgres")]
const MIGRATION_LOCK_ID: i64 = 0x006b_6579_6761_7465;

impl DbStore {
    /// Applies pending embedded migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        self.migration_task(MigrationTask::Run).await
    }

    /// Names of embedded migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        self.migration_task(MigrationTask::ListPending).await
    }

    /// Runs a migration task on a blocking thread with a dedicated connection.
    async fn migration_task(&self, task: MigrationTask) -> Result<Vec<String>> {
        let outcome = match self.url() {
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite(path) => {
                use diesel::Connection;
                use diesel::connection::SimpleConnection;
                use diesel::sqlite::SqliteConnection;

                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = SqliteConnection::establish(&path)
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    conn.batch_execute(&super::pool::sqlite_pragmas())?;
                    task.run(&mut conn, SQLITE_MIGRATIONS)
                })
                .await
            }
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres(url) => {
                use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

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
