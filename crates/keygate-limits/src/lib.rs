//! keygate-limits: rate limits that hold across gateway instances. One
//! interface, [`Limiter`], and two implementations: [`LocalLimiter`] (in this
//! process) and [`RedisLimiter`] (shared by every instance on one Redis, each
//! check one Lua script, so checking and debiting are atomic). [`Limits`] puts
//! them together with the policy for a Redis that cannot be reached
//! ([`OnBackendError`]): fall back to the in-process limiter, or refuse.
//!
//! Three kinds of state, each keyed by a string the caller chooses (a key id,
//! an account id, a client address — never anything a cache holds):
//! - **rates**: token buckets of `limit` per minute (requests, or tokens),
//!   debited by a cost when admitted and corrected afterwards ([`Limiter::adjust`]);
//! - **slots**: requests in flight, at most `max` at once, each held by a
//!   [`Lease`] until released;
//! - **windows**: fixed one-window counters (failed logins per address).
//!
//! A [`Check`] names every rate and slot a request needs; it is admitted by all
//! of them or debited by none.
//!
//! ```
//! use keygate_limits::{Check, Limiter, LocalLimiter, Rate, Verdict};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = LocalLimiter::new();
//! let check = Check { rates: vec![Rate::new("key:k1:rpm", 2, 1)], slots: vec![] };
//! for _ in 0..2 {
//!     assert!(matches!(limiter.check(&check, "lease").await.unwrap(), Verdict::Admitted { .. }));
//! }
//! assert!(matches!(limiter.check(&check, "lease").await.unwrap(), Verdict::Refused(_)));
//! # }
//! ```

mod bucket;
mod limits;
mod local;
mod redis;

use std::time::Duration;

pub use bucket::{MAX_LIMIT, RateState, UNITS};
pub use limits::{Decision, Lease, LimitMetrics, Limits, OnBackendError};
pub use local::{LocalLimiter, ManualClock};
pub use redis::{RedisLimiter, RedisSettings};

/// A token bucket a request takes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Whose bucket: a key id, account or address, with what it counts.
    pub key: String,
    /// Tokens per minute, 1 to [`MAX_LIMIT`]; also the bucket's size.
    pub limit: u64,
    /// Tokens this request takes. A cost larger than `limit` is cut to it.
    pub cost: u64,
}

impl Rate {
    /// A take of `cost` from the bucket `key` of `limit` per minute.
    pub fn new(key: impl Into<String>, limit: u64, cost: u64) -> Self {
        Self {
            key: key.into(),
            limit,
            cost,
        }
    }
}

/// Requests in flight under one name, at most `max` at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Whose slots.
    pub key: String,
    /// Most in flight at once.
    pub max: u32,
}

/// Everything one request needs: admitted by all, or debited by none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Buckets to take from.
    pub rates: Vec<Rate>,
    /// Slots to hold.
    pub slots: Vec<Slot>,
}

impl Check {
    /// Whether the check asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty() && self.slots.is_empty()
    }
}

/// Which part of a [`Check`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `rates[i]`: the bucket cannot cover the cost.
    Rate(usize),
    /// `slots[i]`: as many requests as allowed are in flight.
    Slot(usize),
}

/// A refused check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What refused (when several do, the one with the longest wait).
    pub by: Refused,
    /// Until a retry can succeed (for a slot, a short guess: slots free when
    /// requests end).
    pub retry_after: Duration,
    /// Every rate of the check as it stands, nothing taken.
    pub rates: Vec<RateState>,
}

/// What a backend answers to a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: every rate after its take, in the check's order.
    Admitted {
        /// The rates after this request.
        rates: Vec<RateState>,
    },
    /// Refused, nothing taken.
    Refused(Refusal),
}

/// A fixed window's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowState {
    /// Hits in the current window.
    pub count: u64,
    /// Until the window ends.
    pub resets_in: Duration,
}

/// How long a slot is held at most when its request never says it ended (the
/// instance holding it crashed): then it frees itself.
pub const SLOT_TTL: Duration = Duration::from_secs(15 * 60);

/// Retry-After for a request refused by its slots: they free when a request
/// ends, which nothing predicts.
pub const SLOT_RETRY: Duration = Duration::from_secs(1);

/// A limiter backend could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The shared backend is unreachable or too slow.
    #[error("the rate-limit backend is unavailable: {0}")]
    Unavailable(String),
    /// A limit outside what the limiter takes.
    #[error("invalid limit: {0}")]
    Invalid(&'static str),
}

/// One limiter: in this process ([`LocalLimiter`]) or shared ([`RedisLimiter`]).
/// `lease` names the slots a check takes, so [`Limiter::release`] gives back
/// exactly those.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync + std::fmt::Debug {
    /// Admits the request by every rate and slot of `check`, or by none.
    async fn check(&self, check: &Check, lease: &str) -> Result<Verdict, LimitError>;

    /// Corrects the bucket `key` by `delta` tokens: positive takes more (the
    /// request used more than it was debited), negative gives back.
    async fn adjust(&self, key: &str, limit: u64, delta: i64) -> Result<(), LimitError>;

    /// Gives back the slots `keys` that `lease` holds.
    async fn release(&self, keys: &[String], lease: &str) -> Result<(), LimitError>;

    /// The current window of `key`, counting one more hit when `hit`.
    async fn window(
        &self,
        key: &str,
        window: Duration,
        hit: bool,
    ) -> Result<WindowState, LimitError>;
}

/// Refuses what no backend can hold.
pub(crate) fn validate(check: &Check) -> Result<(), LimitError> {
    for rate in &check.rates {
        if rate.limit == 0 || rate.limit > MAX_LIMIT {
            return Err(LimitError::Invalid("a rate limit is 1 to 1e9 per minute"));
        }
    }
    let mut keys: Vec<&str> = check.rates.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Err(LimitError::Invalid("a check names each bucket once"));
    }
    if check.slots.iter().any(|s| s.max == 0) {
        return Err(LimitError::Invalid("a slot limit is at least 1"));
    }
    Ok(())
}
