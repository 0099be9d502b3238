//! The ledger on SQLite and PostgreSQL: one query text per operation, compiled per
//! connection type like the key operations. Every money-moving transaction locks
//! the key row before the account row, so concurrent ones never deadlock; the
//! conditional updates re-check their condition on the locked row, so concurrent
//! reservations never overdraw.

use chrono::{DateTime, Utc};
use diesel::dsl;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
#[cfg(feature = "postgres")]
use diesel_async::AsyncPgConnection;
use diesel_async::{AsyncConnection, RunQueryDsl};
use keygate_types::{AccountId, KeyId, Micros, ReservationId, UsageSource};

use super::DbStore;
use super::limit::limited;
use super::pool::Conn;
#[cfg(feature = "sqlite")]
use super::pool::SqliteConn;
use super::rows::millis;
use super::schema::{accounts, api_keys, reservations, usage_records};
use crate::error::{Result, StoreError};
use crate::ledger::{
    KeySpend, Ledger, MILLIS_PER_DAY, NewReservation, Reservation, Reserve, UsageGroup, UsageQuery,
    UsageRecord, UsageTotals, day_label, payable,
};
use crate::validate::{check_reservation, check_usage_record};

#[derive(Insertable, Queryable, Selectable, Debug)]
#[diesel(table_name = reservations)]
struct ReservationRow {
    id: String,
    account_id: String,
    key_id: String,
    amount_micros: i64,
    created_at: i64,
    expires_at: i64,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = usage_records, treat_none_as_default_value = false)]
struct NewUsageRow {
    at: i64,
    key_id: String,
    account_id: String,
    model: String,
    upstream: String,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    cost_micros: i64,
    latency_ms: i64,
    ttfb_ms: i64,
    stream: i64,
    status: i64,
    client_name: Option<String>,
    usage_source: &'static str,
    client_ip: Option<String>,
    attempts: i64,
}

#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = usage_records)]
struct UsageRow {
    at: i64,
    key_id: String,
    account_id: String,
    model: String,
    upstream: String,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    cost_micros: i64,
    latency_ms: i64,
    ttfb_ms: i64,
    stream: i64,
    status: i64,
    client_name: Option<String>,
    usage_source: String,
    client_ip: Option<String>,
    attempts: i64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Database(format!("usage_records holds {what}"))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A record as inserted: owned, so that SQLite's fixed-size multi-row inserts
/// (whose cached statements are keyed by a `'static` type) can take it.
fn usage_row(r: &UsageRecord) -> NewUsageRow {
    NewUsageRow {
        at: millis(r.at),
        key_id: r.key_id.as_str().to_owned(),
        account_id: r.account_id.as_str().to_owned(),
        model: r.model.clone(),
        upstream: r.upstream.clone(),
        input_tokens: to_i64(r.input_tokens),
        output_tokens: to_i64(r.output_tokens),
        cached_tokens: to_i64(r.cached_tokens),
        cost_micros: r.cost.0,
        latency_ms: to_i64(r.latency_ms),
        ttfb_ms: to_i64(r.ttfb_ms),
        stream: i64::from(r.stream),
        status: i64::from(r.status),
        client_name: r.client_name.clone(),
        usage_source: r.usage_source.name(),
        client_ip: r.client_ip.clone(),
        attempts: i64::from(r.attempts),
    }
}

/// Usage records on SQLite: in one transaction in one blocking call (the async
/// wrapper hands each statement to a blocking thread of its own; for a batch of
/// hundreds of rows, those hand-offs cost more than the inserts), as multi-row
/// inserts of fixed sizes (64 rows, then 8, then single rows), whose prepared
/// statements diesel caches. Per row, that is about half the instructions of
/// one statement per row (each execution sets up its statement and its CHECK
/// constraints' lookups again) and of one statement per batch (parsed anew each
/// time); `cargo xtask bench --callgrind`, docs/benchmarks.md.
#[cfg(feature = "sqlite")]
async fn record_usage_sqlite(c: &mut SqliteConn, records: &[UsageRecord]) -> Result<()> {
    use diesel::connection::Connection as _;
    let rows: Vec<NewUsageRow> = records.iter().map(usage_row).collect();
    c.spawn_blocking(move |conn| {
        conn.transaction(|conn| {
            let rest = insert_usage_chunks::<64>(conn, &rows)?;
            let rest = insert_usage_chunks::<8>(conn, rest)?;
            insert_usage_chunks::<1>(conn, rest)?;
            Ok(())
        })
    })
    .await
    .map_err(StoreError::from)
}

/// Inserts the first `rows.len() / N * N` rows as statements of `N` rows each
/// (one cached statement per `N`) and returns the rest, fewer than `N`.
#[cfg(feature = "sqlite")]
fn insert_usage_chunks<'r, const N: usize>(
    conn: &mut diesel::SqliteConnection,
    rows: &'r [NewUsageRow],
) -> diesel::QueryResult<&'r [NewUsageRow]> {
    let (whole, rest) = rows.split_at(rows.len() / N * N);
    for chunk in whole.chunks_exact(N) {
        let chunk: &[NewUsageRow; N] = chunk.try_into().map_err(|_| {
            diesel::result::Error::QueryBuilderError("a usage chunk of the wrong length".into())
        })?;
        diesel::RunQueryDsl::execute(
            diesel::insert_into(usage_records::table).values(chunk),
            conn,
        )?;
    }
    Ok(rest)
}

/// Usage records on PostgreSQL: multi-row inserts (1,000 rows, 16,000 bind
/// parameters each, under PostgreSQL's 65,535) in one transaction.
#[cfg(feature = "postgres")]
async fn record_usage_pg(c: &mut AsyncPgConnection, records: &[UsageRecord]) -> Result<()> {
    let rows: Vec<NewUsageRow> = records.iter().map(usage_row).collect();
    c.transaction::<_, StoreError, _>(async move |c| {
        for chunk in rows.chunks(1000) {
            diesel::insert_into(usage_records::table)
                .values(chunk)
                .execute(c)
                .await?;
        }
        Ok(())
    })
    .await
}

/// How long a swept reservation's mark is kept for a late settlement: far
/// longer than any request runs.
const SWEPT_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// A count as stored: clamped to a `BIGINT`, never refused.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl TryFrom<UsageRow> for UsageRecord {
    type Error = StoreError;
    fn try_from(row: UsageRow) -> Result<Self> {
        Ok(Self {
            at: DateTime::from_timestamp_millis(row.at)
                .ok_or_else(|| corrupt("a time out of range"))?,
            key_id: row.key_id.parse()?,
            account_id: row.account_id.parse()?,
            model: row.model,
            upstream: row.upstream,
            input_tokens: count(row.input_tokens),
            output_tokens: count(row.output_tokens),
            cached_tokens: count(row.cached_tokens),
            cost: Micros(row.cost_micros),
            latency_ms: count(row.latency_ms),
            ttfb_ms: count(row.ttfb_ms),
            stream: row.stream != 0,
            status: u16::try_from(row.status).map_err(|_| corrupt("a status out of range"))?,
            client_name: row.client_name,
            usage_source: UsageSource::parse(&row.usage_source)
                .ok_or_else(|| corrupt("an unknown usage source"))?,
            client_ip: row.client_ip,
            attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
        })
    }
}

/// One row of a usage report as the database returns it: the group, then the
/// request count and the sums of input, output and cached tokens and of the cost.
type TotalsRow<G> = (G, i64, i64, i64, i64, i64);

fn totals<G>(group: String, row: TotalsRow<G>) -> UsageTotals {
    let (_, requests, input, output, cached, cost) = row;
    UsageTotals {
        group,
        requests: count(requests),
        input_tokens: count(input),
        output_tokens: count(output),
        cached_tokens: count(cached),
        cost: Micros(cost),
    }
}

/// The UTC day of `at`: days since 1970-01-01, rounded down (SQL's integer
/// division rounds toward zero, hence the shift for times before 1970). SQL text
/// rather than a diesel expression so that the GROUP BY and the SELECT are the same
/// expression, which PostgreSQL requires and bound parameters would break.
const DAY_SQL: &str = "(CASE WHEN \"at\" >= 0 THEN \"at\" ELSE \"at\" - 86399999 END) / 86400000";
const _: () = assert!(
    MILLIS_PER_DAY == 86_400_000,
    "DAY_SQL spells out MILLIS_PER_DAY"
);

/// The sum of a BIGINT column as BIGINT on both backends (PostgreSQL's SUM(bigint)
/// is NUMERIC). A sum past 63 bits is a database error on both.
macro_rules! sum_of {
    ($column:literal) => {
        dsl::sql::<BigInt>(concat!(
            "CAST(COALESCE(SUM(\"",
            $column,
            "\"), 0) AS BIGINT)"
        ))
    };
}

/// Loads a usage report grouped by `$group`, totalled by the database.
macro_rules! usage_totals {
    ($c:expr, $query:expr, $group:expr) => {{
        let query: &UsageQuery = $query;
        let mut rows = usage_records::table
            .filter(usage_records::at.ge(millis(query.since)))
            .filter(usage_records::at.lt(millis(query.until)))
            .group_by($group)
            .select((
                $group,
                dsl::count_star(),
                sum_of!("input_tokens"),
                sum_of!("output_tokens"),
                sum_of!("cached_tokens"),
                sum_of!("cost_micros"),
            ))
            .into_boxed();
        if let Some(account) = &query.account {
            rows = rows.filter(usage_records::account_id.eq(account.as_str()));
        }
        if let Some(key) = &query.key {
            rows = rows.filter(usage_records::key_id.eq(key.as_str()));
        }
        rows.load($c).await?
    }};
}

macro_rules! ledger_ops {
    ($module:ident, $conn:ty) => {
        mod $module {
            use super::*;

            type C = $conn;

            /// Returns `held` to the key and the account, then charges `cost`, or
            /// as much of it as the account and the key can pay (see
            /// [`payable`]); returns what was charged. The key row is locked
            /// before the account row, as everywhere.
            async fn move_money(
                c: &mut C,
                key: &KeyId,
                account: &AccountId,
                held: i64,
                cost: i64,
            ) -> Result<Micros> {
                let (spent, key_reserved, limit): (i64, i64, Option<i64>) =
                    diesel::update(api_keys::table.find(key.as_str()))
                        .set(api_keys::reserved_micros.eq(api_keys::reserved_micros - held))
                        .returning((
                            api_keys::spent_micros,
                            api_keys::reserved_micros,
                            api_keys::spend_limit_micros,
                        ))
                        .get_result(c)
                        .await?;
                let (balance, account_reserved): (i64, i64) =
                    diesel::update(accounts::table.find(account.as_str()))
                        .set(accounts::reserved_micros.eq(accounts::reserved_micros - held))
                        .returning((accounts::balance_micros, accounts::reserved_micros))
                        .get_result(c)
                        .await?;
                let charged = payable(
                    cost,
                    balance,
                    account_reserved,
                    spent,
                    limit.map(|limit| (limit, key_reserved)),
                );
                if charged == 0 {
                    return Ok(Micros::ZERO);
                }
                diesel::update(api_keys::table.find(key.as_str()))
                    .set(api_keys::spent_micros.eq(api_keys::spent_micros + charged))
                    .execute(c)
                    .await?;
                diesel::update(accounts::table.find(account.as_str()))
                    .set(accounts::balance_micros.eq(accounts::balance_micros - charged))
                    .execute(c)
                    .await?;
                Ok(Micros(charged))
            }

            pub(super) async fn reserve(c: &mut C, new: NewReservation) -> Result<Reserve> {
                check_reservation(&new)?;
                c.transaction::<_, StoreError, _>(async move |c| {
                    let amount = new.amount.0;
                    let key = new.key_id.as_str();
                    // Written so that no sum can overflow: a key whose holds plus
                    // this one pass 63 bits cannot be paid for by any account.
                    let on_key = diesel::update(api_keys::table.find(key))
                        .filter(api_keys::account_id.eq(new.account_id.as_str()))
                        .filter(api_keys::reserved_micros.le(i64::MAX - amount))
                        .filter(
                            api_keys::spend_limit_micros.is_null().or(
                                (api_keys::spend_limit_micros.assume_not_null()
                                    - api_keys::spent_micros
                                    - api_keys::reserved_micros)
                                    .ge(amount),
                            ),
                        )
                        .set(api_keys::reserved_micros.eq(api_keys::reserved_micros + amount))
                        .execute(c)
                        .await?;
                    if on_key == 0 {
                        let exists: i64 = api_keys::table
                            .filter(api_keys::id.eq(key))
                            .filter(api_keys::account_id.eq(new.account_id.as_str()))
                            .count()
                            .get_result(c)
                            .await?;
                        if exists == 0 {
                            return Err(StoreError::key_not_found(&new.key_id));
                        }
                        let limit: Option<i64> = api_keys::table
                            .find(key)
                            .select(api_keys::spend_limit_micros)
                            .first(c)
                            .await?;
                        return Ok(match limit {
                            Some(_) => Reserve::SpendLimitExceeded,
                            None => Reserve::InsufficientBalance,
                        });
                    }
                    let on_account = diesel::update(accounts::table.find(new.account_id.as_str()))
                        .filter((accounts::balance_micros - accounts::reserved_micros).ge(amount))
                        .set(accounts::reserved_micros.eq(accounts::reserved_micros + amount))
                        .execute(c)
                        .await?;
                    if on_account == 0 {
                        // Undo the key's hold; the transaction commits nothing else.
                        diesel::update(api_keys::table.find(key))
                            .set(api_keys::reserved_micros.eq(api_keys::reserved_micros - amount))
                            .execute(c)
                            .await?;
                        return Ok(Reserve::InsufficientBalance);
                    }
                    let row = ReservationRow {
                        id: ReservationId::generate().to_string(),
                        account_id: new.account_id.to_string(),
                        key_id: new.key_id.to_string(),
                        amount_micros: amount,
                        created_at: millis(Utc::now()),
                        expires_at: millis(new.expires_at),
                    };
                    diesel::insert_into(reservations::table)
                        .values(&row)
                        .execute(c)
                        .await?;
                    Ok(Reserve::Held(Reservation {
                        id: row.id.parse()?,
                        account_id: new.account_id,
                        key_id: new.key_id,
                        amount: new.amount,
                        expires_at: new.expires_at,
                    }))
                })
                .await
            }

            /// Deletes a reservation, returns what it still held (nothing once
            /// swept) and charges `cost`, saturating at what the account and the
            /// key can pay; returns what was charged. A reservation already gone
            /// was settled before: settling it again changes nothing.
            pub(super) async fn finish(
                c: &mut C,
                reservation: &Reservation,
                cost: Micros,
            ) -> Result<Micros> {
                let reservation = reservation.clone();
                c.transaction::<_, StoreError, _>(async move |c| {
                    let swept: Option<Option<i64>> =
                        diesel::delete(reservations::table.find(reservation.id.as_str()))
                            .returning(reservations::swept_at)
                            .get_result(c)
                            .await
                            .optional()?;
                    let held = match swept {
                        None => return Ok(Micros::ZERO),
                        Some(None) => reservation.amount.0,
                        Some(Some(_)) => 0,
                    };
                    if held == 0 && cost.0 <= 0 {
                        return Ok(Micros::ZERO);
                    }
                    move_money(
                        c,
                        &reservation.key_id,
                        &reservation.account_id,
                        held,
                        cost.0,
                    )
                    .await
                })
                .await
            }

            pub(super) async fn sweep(c: &mut C, now: DateTime<Utc>) -> Result<u64> {
                // Marks swept rows kept long past any request's end are dropped.
                diesel::delete(
                    reservations::table
                        .filter(reservations::swept_at.lt(millis(now) - SWEPT_KEPT_MS)),
                )
                .execute(c)
                .await?;
                let expired: Vec<ReservationRow> = limited(
                    reservations::table
                        .filter(reservations::expires_at.lt(millis(now)))
                        .filter(reservations::swept_at.is_null())
                        .select(ReservationRow::as_select()),
                    1000,
                )
                .load(c)
                .await?;
                let mut swept = 0;
                for row in expired {
                    let key: KeyId = row.key_id.parse()?;
                    let account: AccountId = row.account_id.parse()?;
                    let marked = c
                        .transaction::<_, StoreError, _>(async move |c| {
                            // The money goes back; the row stays, marked, so a
                            // late settlement still charges (once).
                            let marked = diesel::update(
                                reservations::table
                                    .find(row.id.as_str())
                                    .filter(reservations::swept_at.is_null()),
                            )
                            .set(reservations::swept_at.eq(Some(millis(now))))
                            .execute(c)
                            .await?;
                            if marked == 1 {
                                move_money(c, &key, &account, row.amount_micros, 0).await?;
                            }
                            Ok(marked)
                        })
                        .await?;
                    swept += marked as u64;
                }
                Ok(swept)
            }

            pub(super) async fn key_spend(c: &mut C, key: &KeyId) -> Result<KeySpend> {
                let found: Option<(i64, i64)> = api_keys::table
                    .find(key.as_str())
                    .select((api_keys::spent_micros, api_keys::reserved_micros))
                    .first(c)
                    .await
                    .optional()?;
                let (spent, reserved) = found.ok_or_else(|| StoreError::key_not_found(key))?;
                Ok(KeySpend {
                    spent: Micros(spent),
                    reserved: Micros(reserved),
                })
            }

            pub(super) async fn usage_between(
                c: &mut C,
                since: DateTime<Utc>,
                until: DateTime<Utc>,
            ) -> Result<Vec<UsageRecord>> {
                usage_records::table
                    .filter(usage_records::at.ge(millis(since)))
                    .filter(usage_records::at.lt(millis(until)))
                    .order((usage_records::at.asc(), usage_records::id.asc()))
                    .select(UsageRow::as_select())
                    .load(c)
                    .await?
                    .into_iter()
                    .map(UsageRecord::try_from)
                    .collect()
            }

            pub(super) async fn usage_report(
                c: &mut C,
                query: &UsageQuery,
            ) -> Result<Vec<UsageTotals>> {
                match query.group_by {
                    UsageGroup::Model => {
                        let rows: Vec<TotalsRow<String>> =
                            usage_totals!(c, query, usage_records::model);
                        Ok(by_text(rows))
                    }
                    UsageGroup::Key => {
                        let rows: Vec<TotalsRow<String>> =
                            usage_totals!(c, query, usage_records::key_id);
                        Ok(by_text(rows))
                    }
                    UsageGroup::Day => {
                        let rows: Vec<TotalsRow<i64>> =
                            usage_totals!(c, query, dsl::sql::<BigInt>(DAY_SQL));
                        by_day(rows)
                    }
                }
            }

            pub(super) async fn purge_usage(c: &mut C, before: DateTime<Utc>) -> Result<u64> {
                let deleted = diesel::delete(
                    usage_records::table.filter(usage_records::at.lt(millis(before))),
                )
                .execute(c)
                .await?;
                Ok(deleted as u64)
            }
        }
    };
}

/// Report rows grouped by text, in byte order. Sorted here rather than by ORDER BY:
/// PostgreSQL orders text by the database's collation, SQLite by bytes.
fn by_text(rows: Vec<TotalsRow<String>>) -> Vec<UsageTotals> {
    let mut rows: Vec<UsageTotals> = rows
        .into_iter()
        .map(|mut row| totals(std::mem::take(&mut row.0), row))
        .collect();
    rows.sort_by(|a, b| a.group.cmp(&b.group));
    rows
}

/// Report rows grouped by day number, oldest first, labelled `YYYY-MM-DD`.
fn by_day(mut rows: Vec<TotalsRow<i64>>) -> Result<Vec<UsageTotals>> {
    rows.sort_by_key(|row| row.0);
    rows.into_iter()
        .map(|row| Ok(totals(day_label(row.0)?, row)))
        .collect()
}

#[cfg(feature = "sqlite")]
ledger_ops!(sqlite_ledger, SqliteConn);
#[cfg(feature = "postgres")]
ledger_ops!(pg_ledger, AsyncPgConnection);

#[async_trait::async_trait]
impl Ledger for DbStore {
    async fn reserve(&self, new: NewReservation) -> Result<Reserve> {
        dispatch!(self.write().await?, sqlite_ledger | pg_ledger, reserve(new))
    }

    async fn settle(&self, reservation: &Reservation, cost: Micros) -> Result<Micros> {
        dispatch!(
            self.write().await?,
            sqlite_ledger | pg_ledger,
            finish(reservation, cost)
        )
    }

    async fn release(&self, reservation: &Reservation) -> Result<()> {
        dispatch!(
            self.write().await?,
            sqlite_ledger | pg_ledger,
            finish(reservation, Micros::ZERO)
        )
        .map(drop)
    }

    async fn sweep_reservations(&self, now: DateTime<Utc>) -> Result<u64> {
        dispatch!(self.write().await?, sqlite_ledger | pg_ledger, sweep(now))
    }

    async fn key_spend(&self, key: &KeyId) -> Result<KeySpend> {
        dispatch!(
            self.read().await?,
            sqlite_ledger | pg_ledger,
            key_spend(key)
        )
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()> {
        for record in records {
            check_usage_record(record)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        match self.write().await? {
            #[cfg(feature = "sqlite")]
            Conn::Sqlite(mut c) => record_usage_sqlite(&mut c, records).await,
            #[cfg(feature = "postgres")]
            Conn::Postgres(mut c) => record_usage_pg(&mut c, records).await,
        }
    }

    async fn usage_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>> {
        dispatch!(
            self.read().await?,
            sqlite_ledger | pg_ledger,
            usage_between(since, until)
        )
    }

    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageTotals>> {
        dispatch!(
            self.read().await?,
            sqlite_ledger | pg_ledger,
            usage_report(query)
        )
    }

    async fn purge_usage(&self, before: DateTime<Utc>) -> Result<u64> {
        dispatch!(
            self.write().await?,
            sqlite_ledger | pg_ledger,
            purge_usage(before)
        )
    }
}
