//! The ledger: money held by in-flight requests (reservations), what they finally
//! cost (settlement), and one usage record per request. Written once as a trait and
//! implemented by every backend, like [`crate::CredentialStore`].
//!
//! A reservation takes an upper bound of a request's cost from the account's
//! available balance (`balance - reserved`) and, when the key has a spend limit,
//! from what the key may still spend (`limit - spent - reserved`), atomically: it
//! fails rather than overdraw. Settling charges the actual cost and releases the
//! rest in one transaction; releasing returns it all. Reservations carry an expiry
//! so that a crash never strands money: [`Ledger::sweep_reservations`] releases
//! expired ones.

use chrono::{DateTime, Utc};

use keygate_types::{AccountId, KeyId, Micros, ReservationId, UsageSource};

use crate::error::{Result, StoreError};

/// Input to reserve money for a request.
#[derive(Clone, Debug)]
pub struct NewReservation {
    /// The paying account.
    pub account_id: AccountId,
    /// The key making the request.
    pub key_id: KeyId,
    /// The upper bound of the request's cost; zero or more.
    pub amount: Micros,
    /// When an unsettled reservation may be swept.
    pub expires_at: DateTime<Utc>,
}

/// Money held for one in-flight request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Id.
    pub id: ReservationId,
    /// The paying account.
    pub account_id: AccountId,
    /// The key.
    pub key_id: KeyId,
    /// The amount held.
    pub amount: Micros,
    /// When it may be swept.
    pub expires_at: DateTime<Utc>,
}

/// The outcome of a reservation attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The money is held.
    Held(Reservation),
    /// The account's available balance is smaller than the amount.
    InsufficientBalance,
    /// The key's spend limit would be passed.
    SpendLimitExceeded,
}

/// What a key has spent and holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySpend {
    /// Charged so far.
    pub spent: Micros,
    /// Held by in-flight requests.
    pub reserved: Micros,
}

/// One request's usage: metadata only, never content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// When the request started.
    pub at: DateTime<Utc>,
    /// The key.
    pub key_id: KeyId,
    /// The paying account.
    pub account_id: AccountId,
    /// The requested model (at most [`keygate_types::limits::MAX_MODEL_LEN`]
    /// bytes).
    pub model: String,
    /// The upstream that served it (at most
    /// [`keygate_types::limits::MAX_UPSTREAM_NAME_LEN`] bytes).
    pub upstream: String,
    /// Input tokens, cached included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// What was charged.
    pub cost: Micros,
    /// Total time.
    pub latency_ms: u64,
    /// Time to the first byte of the response.
    pub ttfb_ms: u64,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The status sent to the client.
    pub status: u16,
    /// `X-Client-Name` or similar, truncated to
    /// [`keygate_types::limits::MAX_CLIENT_NAME_LEN`] bytes.
    pub client_name: Option<String>,
    /// Where the token counts came from.
    pub usage_source: UsageSource,
    /// The client address, only when the operator turned it on (at most
    /// [`keygate_types::limits::MAX_CLIENT_IP_LEN`] bytes).
    pub client_ip: Option<String>,
    /// Upstream attempts the request took, retries and failover included (0
    /// when it never reached one).
    pub attempts: u32,
}

/// What [`Ledger::usage_report`] groups usage by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGroup {
    /// The requested model.
    Model,
    /// The key id.
    Key,
    /// The UTC day of the request, `YYYY-MM-DD`.
    Day,
}

impl UsageGroup {
    /// The name operators type: `model`, `key` or `day`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Key => "key",
            Self::Day => "day",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "model" => Some(Self::Model),
            "key" => Some(Self::Key),
            "day" => Some(Self::Day),
            _ => None,
        }
    }
}

/// Which usage to total, and how to group it.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    /// Start of the window, inclusive.
    pub since: DateTime<Utc>,
    /// End of the window, exclusive. A window that ends before it starts is empty.
    pub until: DateTime<Utc>,
    /// Only this account's usage.
    pub account: Option<AccountId>,
    /// Only this key's usage.
    pub key: Option<KeyId>,
    /// What one row totals.
    pub group_by: UsageGroup,
}

/// The totals of one group of usage records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// The model, the key id, or the UTC day as `YYYY-MM-DD`.
    pub group: String,
    /// How many requests.
    pub requests: u64,
    /// Input tokens, cached included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// What was charged.
    pub cost: Micros,
}

/// Money and usage operations.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Holds `new.amount` against the account and the key's spend limit, or says
    /// which one it does not fit.
    async fn reserve(&self, new: NewReservation) -> Result<Reserve>;

    /// Charges `cost` for a reservation and releases it, in one transaction, and
    /// returns what was charged. A reservation already swept is charged all the
    /// same. The charge saturates at what can be paid: it never takes the
    /// balance below what the account's other reservations hold (nor below
    /// zero), nor the key's spend past its limit less its other reservations. A
    /// reservation settled before is charged nothing (and `Micros::ZERO` is
    /// returned).
    async fn settle(&self, reservation: &Reservation, cost: Micros) -> Result<Micros>;

    /// Releases a reservation without charging. Releasing twice is harmless.
    async fn release(&self, reservation: &Reservation) -> Result<()>;

    /// Releases every reservation that expired before `now`; returns how many.
    async fn sweep_reservations(&self, now: DateTime<Utc>) -> Result<u64>;

    /// What a key has spent and holds.
    async fn key_spend(&self, key: &KeyId) -> Result<KeySpend>;

    /// Stores usage records, all or none.
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()>;

    /// Usage records from `since` (inclusive) to `until` (exclusive), oldest first.
    async fn usage_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>>;

    /// Totals of the usage records in `query`'s window and filters, one row per
    /// group, ordered by group: byte order for models and keys, oldest first for
    /// days (the same as the text order of `YYYY-MM-DD`). Totals that do not fit in
    /// 63 bits are an error. The SQL backends total in the database, not here.
    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageTotals>>;

    /// Deletes usage records older than `before`; returns how many.
    async fn purge_usage(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// What a settlement charges of `cost`, once its reservation is returned: at most
/// what the account has beyond its other reservations (`balance -
/// account_reserved`), at most what keeps the key's `spent` within 63 bits, and,
/// for a key with a spend limit (`limit, key_reserved`), at most what the limit
/// leaves beyond the key's spend and its other reservations; never below zero.
/// Every step saturates.
pub(crate) fn payable(
    cost: i64,
    balance: i64,
    account_reserved: i64,
    spent: i64,
    limit: Option<(i64, i64)>,
) -> i64 {
    let on_account = balance.saturating_sub(account_reserved);
    let on_key = limit.map_or(i64::MAX.saturating_sub(spent), |(limit, key_reserved)| {
        limit.saturating_sub(spent).saturating_sub(key_reserved)
    });
    cost.min(on_account).min(on_key).max(0)
}

/// Milliseconds in a day; a day group is `at` (Unix milliseconds) divided by this,
/// rounded down.
pub(crate) const MILLIS_PER_DAY: i64 = 86_400_000;

/// The label of day number `day` (days since 1970-01-01, UTC): `YYYY-MM-DD`.
pub(crate) fn day_label(day: i64) -> Result<String> {
    day.checked_mul(MILLIS_PER_DAY)
        .and_then(DateTime::from_timestamp_millis)
        .map(|start| start.format("%Y-%m-%d").to_string())
        .ok_or_else(|| StoreError::Database(format!("usage day {day} is out of range")))
}

#[cfg(test)]
mod payable_tests {
    use super::payable;

    #[test]
    fn a_charge_stops_at_the_account_the_limit_and_63_bits() {
        assert_eq!(payable(50, 100, 0, 0, None), 50);
        assert_eq!(payable(500, 100, 30, 0, None), 70);
        assert_eq!(payable(500, 100, 0, 10, Some((40, 5))), 25);
        assert_eq!(payable(i64::MAX, i64::MAX, 0, i64::MAX - 3, None), 3);
        assert_eq!(payable(10, -5, 0, 0, None), 0);
        assert_eq!(payable(-10, 100, 0, 0, None), 0);
        assert_eq!(
            payable(10, i64::MIN, i64::MAX, 0, Some((i64::MIN, i64::MAX))),
            0
        );
    }
}
