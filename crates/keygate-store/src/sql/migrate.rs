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

#[cfg(test)]
#[cfg(feature = "sqlite")]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::sql_types::{BigInt, Text};
    use diesel::sqlite::SqliteConnection;
    use diesel::{Connection, QueryableByName, RunQueryDsl};
    use diesel_migrations::MigrationHarness;

    use super::SQLITE_MIGRATIONS;

    #[derive(QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        usage_source: String,
        #[diesel(sql_type = BigInt)]
        attempts: i64,
    }

    fn rows(conn: &mut SqliteConnection) -> Vec<(i64, String, i64)> {
        diesel::sql_query("SELECT id, usage_source, attempts FROM usage_records ORDER BY id")
            .load::<Row>(conn)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.usage_source, r.attempts))
            .collect()
    }

    fn insert(
        conn: &mut SqliteConnection,
        id: Option<i64>,
        source: &str,
    ) -> diesel::QueryResult<()> {
        let id = id.map_or("NULL".to_owned(), |id| id.to_string());
        conn.batch_execute(&format!(
            "INSERT INTO usage_records (id, at, key_id, account_id, model, upstream, input_tokens, \
             output_tokens, cached_tokens, cost_micros, latency_ms, ttfb_ms, stream, status, \
             usage_source) VALUES ({id}, 1, 'k', 'a', 'm', 'u', 1, 2, 0, 3, 4, 5, 0, 200, '{source}')"
        ))
    }

    fn sequence_rows(conn: &mut SqliteConnection) -> usize {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let count = diesel::sql_query(
            "SELECT count(*) AS n FROM sqlite_sequence WHERE name = 'usage_records'",
        )
        .get_result::<Count>(conn)
        .unwrap();
        usize::try_from(count.n).unwrap()
    }

    /// One text that differs when any row's value, the columns' definitions
    /// or the indexes differ.
    fn snapshot(conn: &mut SqliteConnection) -> (String, String, String) {
        #[derive(QueryableByName)]
        struct Text1 {
            #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
            s: Option<String>,
        }
        let mut text = |sql: &str| {
            diesel::sql_query(sql)
                .get_result::<Text1>(&mut *conn)
                .unwrap()
                .s
                .unwrap_or_default()
        };
        let rows = text(
            "SELECT group_concat(quote(id) || ',' || quote(at) || ',' || quote(key_id) || ',' \
             || quote(account_id) || ',' || quote(model) || ',' || quote(upstream) || ',' \
             || quote(input_tokens) || ',' || quote(output_tokens) || ',' || quote(cached_tokens) \
             || ',' || quote(cost_micros) || ',' || quote(latency_ms) || ',' || quote(ttfb_ms) \
             || ',' || quote(stream) || ',' || quote(status) || ',' || quote(client_name) || ',' \
             || quote(usage_source) || ',' || quote(client_ip) || ',' || quote(attempts), ';') \
             AS s FROM (SELECT * FROM usage_records ORDER BY id)",
        );
        let columns = text(
            "SELECT group_concat(name || ' ' || type || ' ' || \"notnull\" || ' ' \
             || quote(dflt_value) || ' ' || pk, ';') AS s FROM pragma_table_info('usage_records')",
        );
        let indexes = text(
            "SELECT group_concat(sql, ';') AS s FROM (SELECT sql FROM sqlite_master \
             WHERE tbl_name = 'usage_records' AND type = 'index' ORDER BY name)",
        );
        (rows, columns, indexes)
    }

    /// Migration 8 rebuilds `usage_records`: every row and id kept, the same
    /// rules checked, no AUTOINCREMENT bookkeeping; and it reverts the same way.
    #[test]
    fn the_usage_table_rebuild_keeps_rows_ids_and_rules() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        loop {
            let pending = conn.pending_migrations(SQLITE_MIGRATIONS).unwrap();
            let next = pending[0].name().to_string();
            if next.starts_with("2026-12-03-000008") {
                break;
            }
            conn.run_next_migration(SQLITE_MIGRATIONS).unwrap();
        }
        insert(&mut conn, Some(5), "capped").unwrap();
        insert(&mut conn, Some(9), "reported").unwrap();
        conn.batch_execute(
            "UPDATE usage_records SET attempts = 2, client_name = 'cli', client_ip = '10.0.0.1' \
             WHERE id = 5",
        )
        .unwrap();
        assert_eq!(sequence_rows(&mut conn), 1);
        let before = snapshot(&mut conn);
        assert!(
            before.0.contains("'cli','capped','10.0.0.1',2"),
            "{before:?}"
        );
        assert_eq!(before.2.matches("CREATE INDEX").count(), 3, "{before:?}");

        conn.run_next_migration(SQLITE_MIGRATIONS).unwrap();
        assert_eq!(
            snapshot(&mut conn),
            before,
            "rows, columns and indexes kept"
        );
        let kept = vec![(5, "capped".to_owned(), 2), (9, "reported".to_owned(), 1)];
        assert_eq!(rows(&mut conn), kept);
        assert!(
            insert(&mut conn, None, "made-up").is_err(),
            "the usage source is checked"
        );
        assert!(insert(&mut conn, None, "").is_err());
        for source in ["reported", "estimated", "unknown", "capped"] {
            insert(&mut conn, None, source).unwrap();
        }
        let ids: Vec<_> = rows(&mut conn).into_iter().map(|r| r.0).collect();
        assert_eq!(ids, [5, 9, 10, 11, 12, 13], "ids still grow");
        assert_eq!(sequence_rows(&mut conn), 0, "no sqlite_sequence write");
        assert!(
            conn.batch_execute("UPDATE usage_records SET stream = 2 WHERE id = 5")
                .is_err(),
            "stream is checked"
        );

        conn.batch_execute("DELETE FROM usage_records WHERE id > 9")
            .unwrap();
        conn.revert_last_migration(SQLITE_MIGRATIONS).unwrap();
        assert_eq!(snapshot(&mut conn), before, "reverted to the same table");
        for source in ["reported", "estimated", "unknown", "capped"] {
            insert(&mut conn, None, source).unwrap();
        }
        assert_eq!(rows(&mut conn).len(), 6);
        assert_eq!(rows(&mut conn)[..2], kept[..]);
        assert!(insert(&mut conn, None, "made-up").is_err());
        insert(&mut conn, None, "unknown").unwrap();
        assert_eq!(rows(&mut conn).last().unwrap().0, 14);
        assert_eq!(sequence_rows(&mut conn), 1, "AUTOINCREMENT is back");
    }
}
