//! The privacy invariant on the schema itself, on SQLite and PostgreSQL: after
//! every migration, no column that can hold text (TEXT, VARCHAR, JSON, a BLOB,
//! an untyped SQLite column) exists beyond an allowlist of metadata columns, so
//! no table can hold a key, a prompt or a response. A new text column fails
//! here until it is added to [`METADATA_COLUMNS`] with a reason in review.

use diesel::QueryableByName;
use diesel::sql_types::Text;

/// Every column that may hold text, and what it holds.
const METADATA_COLUMNS: &[(&str, &str)] = &[
    // ids (`acct_…`, `key_…`, `res_…`), never a key
    ("accounts", "id"),
    ("api_keys", "id"),
    ("api_keys", "account_id"),
    ("key_changes", "key_id"),
    ("reservations", "id"),
    ("reservations", "account_id"),
    ("reservations", "key_id"),
    ("usage_records", "key_id"),
    ("usage_records", "account_id"),
    // operator-given names and contact
    ("accounts", "name"),
    ("accounts", "email"),
    // the account's limit tier, a `[tiers.NAME]` of the config
    ("accounts", "tier"),
    ("api_keys", "name"),
    // a key's SHA-256 (64 hex) and its display start (prefix, kind, 4 hex)
    ("api_keys", "key_hash"),
    ("key_changes", "key_hash"),
    ("api_keys", "start"),
    // a key's settings: kind, scopes, allowed models and origins, labels
    ("api_keys", "kind"),
    ("api_keys", "scopes"),
    ("api_keys", "models"),
    ("api_keys", "origins"),
    ("api_keys", "metadata"),
    // usage metadata: model name (at most 64 printable), upstream name, the
    // client's self-declared name (truncated), how usage was known, and the
    // address only when the operator turns it on
    ("usage_records", "model"),
    ("usage_records", "upstream"),
    ("usage_records", "client_name"),
    ("usage_records", "usage_source"),
    ("usage_records", "client_ip"),
    // the control plane: admin token ids, names, roles, SHA-256 hashes (64 hex)
    // and display starts; audit rows (actor id or "cli"/"cleanup", action,
    // target id); idempotency records (the client's Idempotency-Key, a request
    // hash, the replayable answer of an account create or top-up, never a key
    // or token); console sessions (hashes and the token id)
    ("admin_tokens", "id"),
    ("admin_tokens", "name"),
    ("admin_tokens", "role"),
    ("admin_tokens", "token_hash"),
    ("admin_tokens", "start"),
    ("audit_log", "actor"),
    ("audit_log", "action"),
    ("audit_log", "target"),
    ("idempotency_keys", "actor"),
    ("idempotency_keys", "idem_key"),
    ("idempotency_keys", "request_hash"),
    ("idempotency_keys", "target"),
    ("idempotency_keys", "body"),
    ("console_sessions", "session_hash"),
    ("console_sessions", "csrf_hash"),
    ("console_sessions", "token_id"),
    // the migration runner's own bookkeeping: migration versions
    ("__diesel_schema_migrations", "version"),
];

#[derive(QueryableByName, Debug)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    column_type: String,
}

/// The columns of `columns` that can hold text and are not in the allowlist.
fn unexpected(columns: &[Column], holds_text: impl Fn(&str) -> bool) -> Vec<&Column> {
    assert!(
        columns.iter().any(|c| c.table_name == "usage_records"),
        "the schema was not read: {columns:?}"
    );
    columns
        .iter()
        .filter(|c| holds_text(&c.column_type.to_ascii_lowercase()))
        .filter(|c| {
            !METADATA_COLUMNS
                .iter()
                .any(|(t, n)| *t == c.table_name && *n == c.column_name)
        })
        .collect()
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread")]
async fn no_text_column_beyond_the_metadata_allowlist_on_sqlite() {
    use diesel::{Connection, RunQueryDsl, SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.db");
    let store = keygate_store::DbStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT m.name AS table_name, p.name AS column_name, p.type AS column_type \
         FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .load(&mut conn)
    .unwrap();
    // SQLite's type affinity: a declared type with CHAR, CLOB or TEXT is text,
    // BLOB or no type at all holds anything.
    let found = unexpected(&columns, |t| {
        t.is_empty()
            || ["char", "clob", "text", "blob"]
                .iter()
                .any(|k| t.contains(k))
    });
    assert!(
        found.is_empty(),
        "text columns outside the allowlist: {found:?}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn no_text_column_beyond_the_metadata_allowlist_on_postgres() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let Some(db) = keygate_test_utils::TestPostgres::create("schema_allowlist").await else {
        return;
    };
    let store = keygate_store::DbStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let mut conn = AsyncPgConnection::establish(db.url()).await.unwrap();
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT table_name::text AS table_name, column_name::text AS column_name, \
         data_type::text AS column_type FROM information_schema.columns \
         WHERE table_schema = current_schema()",
    )
    .load(&mut conn)
    .await
    .unwrap();
    // Only numbers, booleans and times cannot hold a text.
    let found = unexpected(&columns, |t| {
        ![
            "bigint",
            "integer",
            "smallint",
            "boolean",
            "timestamp",
            "date",
            "numeric",
            "double precision",
            "real",
        ]
        .iter()
        .any(|k| t.starts_with(k))
    });
    assert!(
        found.is_empty(),
        "text columns outside the allowlist: {found:?}"
    );
}
