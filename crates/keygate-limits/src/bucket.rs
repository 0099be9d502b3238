//! The token-bucket arithmetic both backends share, in whole numbers: a bucket
//! of `limit` per minute holds at most `limit × UNITS` units, one token is
//! [`UNITS`] units, and it refills `limit` units per millisecond, so a bucket
//! empty at `t` is full again at `t + 60 s`. The Lua script in `check.lua`
//! does the same sums on the Redis server; `tests/it/agree.rs` holds the two to
//! the same answers.

use std::time::Duration;

/// Units per token: a minute in milliseconds, so refilling takes no division.
pub const UNITS: i64 = 60_000;

/// The largest limit a bucket takes (per minute). Its capacity in units then
/// stays far below 2^53, where Lua's numbers stop being exact.
pub const MAX_LIMIT: u64 = 1_000_000_000;

/// A bucket's stored state: its level in units, as of `at_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) units: i64,
    pub(crate) at_ms: u64,
}

/// What a bucket shows a client: its limit, whole tokens left, and time until
/// it is full again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateState {
    /// The limit, per minute.
    pub limit: u64,
    /// Whole tokens that may still be taken now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

pub(crate) fn capacity(limit: u64) -> i64 {
    clamp_limit(limit).saturating_mul(UNITS)
}

fn clamp_limit(limit: u64) -> i64 {
    // MAX_LIMIT fits an i64; 0 is refused by the callers' validation, and
    // counted as 1 here so nothing divides by zero.
    i64::try_from(limit.clamp(1, MAX_LIMIT)).unwrap_or(1)
}

/// The level of a bucket at `now_ms`: the stored level refilled since, at most
/// full. A bucket never seen is full.
pub(crate) fn refilled(stored: Option<Level>, limit: u64, now_ms: u64) -> i64 {
    let cap = capacity(limit);
    match stored {
        None => cap,
        Some(level) => {
            let elapsed = i64::try_from(now_ms.saturating_sub(level.at_ms)).unwrap_or(i64::MAX);
            level
                .units
                .saturating_add(elapsed.saturating_mul(clamp_limit(limit)))
                .min(cap)
        }
    }
}

/// The units a take of `cost` tokens needs: a cost larger than the whole
/// bucket is cut to the bucket, so it waits for a full bucket rather than
/// forever.
pub(crate) fn cost_units(limit: u64, cost: u64) -> i64 {
    let cost = i64::try_from(cost.min(limit.clamp(1, MAX_LIMIT))).unwrap_or(0);
    cost.saturating_mul(UNITS)
}

/// Milliseconds until a bucket at `level` holds `need` units.
pub(crate) fn wait_ms(level: i64, need: i64, limit: u64) -> u64 {
    let short = need.saturating_sub(level);
    if short <= 0 {
        return 0;
    }
    let rate = clamp_limit(limit);
    u64::try_from((short + rate - 1) / rate).unwrap_or(u64::MAX)
}

/// The level after a correction of `delta` tokens (positive takes more,
/// negative gives back): never above full, never owing more than one whole
/// bucket, so a key that overran waits at most two minutes.
pub(crate) fn corrected(level: i64, limit: u64, delta: i64) -> i64 {
    let cap = capacity(limit);
    level
        .saturating_sub(delta.saturating_mul(UNITS))
        .clamp(-cap, cap)
}

/// What a client sees of a bucket at `level`.
pub(crate) fn state(level: i64, limit: u64) -> RateState {
    RateState {
        limit,
        remaining: u64::try_from(level.max(0) / UNITS).unwrap_or(0),
        reset: Duration::from_millis(wait_ms(level, capacity(limit), limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_bucket_is_full_and_refills_in_a_minute() {
        let level = refilled(None, 60, 0);
        assert_eq!(state(level, 60).remaining, 60);
        assert_eq!(state(0, 60).reset, Duration::from_secs(60));
        let half = refilled(Some(Level { units: 0, at_ms: 0 }), 60, 30_000);
        assert_eq!(state(half, 60).remaining, 30);
        let later = refilled(Some(Level { units: 0, at_ms: 0 }), 60, 600_000);
        assert_eq!(later, capacity(60));
    }

    #[test]
    fn a_cost_past_the_bucket_waits_for_a_full_bucket() {
        assert_eq!(cost_units(10, 1_000), 10 * UNITS);
        assert_eq!(wait_ms(0, cost_units(10, 1_000), 10), 60_000);
        assert_eq!(wait_ms(UNITS, UNITS, 10), 0);
    }

    #[test]
    fn a_correction_owes_at_most_one_bucket() {
        assert_eq!(corrected(0, 100, 1_000_000), -capacity(100));
        assert_eq!(corrected(0, 100, -1_000_000), capacity(100));
        assert_eq!(corrected(50 * UNITS, 100, 20), 30 * UNITS);
    }

    proptest! {
        #[test]
        fn refilling_never_passes_full_nor_goes_back(
            limit in 1u64..2_000_000_000,
            units in -1_000_000_000_000i64..1_000_000_000_000,
            at in 0u64..1_000_000,
            later in 0u64..10_000_000,
        ) {
            let start = units.min(capacity(limit));
            let level = refilled(Some(Level { units: start, at_ms: at }), limit, at + later);
            prop_assert!(level <= capacity(limit));
            prop_assert!(level >= start);
            let shown = state(level, limit);
            prop_assert!(shown.remaining <= limit.min(MAX_LIMIT));
        }

        #[test]
        fn waiting_the_wait_is_enough(
            limit in 1u64..100_000,
            level in -6_000_000_000i64..6_000_000_000,
            cost in 0u64..200_000,
        ) {
            let level = level.min(capacity(limit));
            let need = cost_units(limit, cost);
            let wait = wait_ms(level, need, limit);
            let after = refilled(Some(Level { units: level, at_ms: 0 }), limit, wait);
            prop_assert!(after >= need);
            if wait > 0 {
                let before = refilled(Some(Level { units: level, at_ms: 0 }), limit, wait - 1);
                prop_assert!(before < need);
            }
        }
    }
}
