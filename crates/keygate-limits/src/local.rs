//! [`LocalLimiter`]: every limit in this process. Buckets and windows live in
//! moka caches (bounded, idle ones dropped: an idle bucket is full again by
//! then), slots in a map that holds only keys with a request in flight. A check
//! locks the buckets it names in key order, so two checks never deadlock and a
//! check is all-or-nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::bucket::{self, Level};
use crate::{
    Check, LimitError, Limiter, Refusal, Refused, SLOT_RETRY, Verdict, WindowState, validate,
};

/// How long an untouched bucket is kept: longer than the two minutes the
/// emptiest bucket (one owing a whole bucket) takes to be full again.
const BUCKET_IDLE: Duration = Duration::from_secs(180);

/// Most buckets and windows kept.
const CAPACITY: u64 = 1_000_000;

/// The limiter's clock: monotonic milliseconds.
#[derive(Clone, Debug)]
enum Clock {
    Monotonic(Instant),
    Manual(ManualClock),
}

/// A clock a test moves by hand.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock {
    fn now_ms(&self) -> u64 {
        match self {
            Self::Monotonic(start) => {
                u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
            }
            Self::Manual(clock) => clock.0.load(Ordering::Relaxed),
        }
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// Every limit in this process.
pub struct LocalLimiter {
    clock: Clock,
    buckets: Cache<String, Shared<Option<Level>>>,
    windows: Cache<String, Shared<(u64, u64)>>,
    slots: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("buckets", &self.buckets.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a bucket leaves sums that are still numbers.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalLimiter {
    /// A limiter on the monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(Clock::Monotonic(Instant::now()))
    }

    /// A limiter on a clock the caller moves.
    pub fn manual(clock: ManualClock) -> Self {
        Self::with_clock(Clock::Manual(clock))
    }

    fn with_clock(clock: Clock) -> Self {
        Self {
            clock,
            buckets: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(BUCKET_IDLE)
                .build(),
            windows: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(BUCKET_IDLE)
                .build(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn bucket(&self, key: &str) -> Shared<Option<Level>> {
        self.buckets
            .get_with_by_ref(key, || Arc::new(Mutex::new(None)))
    }

    /// The check itself; synchronous, for the fallback path and benches.
    pub fn check_now(&self, check: &Check) -> Result<Verdict, LimitError> {
        validate(check)?;
        let now = self.clock.now_ms();
        // Locked in key order, so two checks never wait on each other in a circle.
        let cells: Vec<_> = check.rates.iter().map(|r| self.bucket(&r.key)).collect();
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.sort_by(|a, b| check.rates[*a].key.cmp(&check.rates[*b].key));
        let mut guards: Vec<Option<MutexGuard<'_, Option<Level>>>> =
            cells.iter().map(|_| None).collect();
        for i in order {
            guards[i] = Some(lock(&cells[i]));
        }
        let mut levels = Vec::with_capacity(check.rates.len());
        let mut refusal: Option<(Refused, u64)> = None;
        for (i, (rate, guard)) in check.rates.iter().zip(&guards).enumerate() {
            let stored = guard.as_ref().and_then(|g| **g);
            let level = bucket::refilled(stored, rate.limit, now);
            let need = bucket::cost_units(rate.limit, rate.cost);
            let wait = bucket::wait_ms(level, need, rate.limit);
            if level < need && refusal.is_none_or(|(_, w)| wait > w) {
                refusal = Some((Refused::Rate(i), wait));
            }
            levels.push(level);
        }
        let mut slots = lock(&self.slots);
        if refusal.is_none() {
            for (i, slot) in check.slots.iter().enumerate() {
                if slots.get(&slot.key).copied().unwrap_or(0) >= slot.max {
                    refusal = Some((Refused::Slot(i), 0));
                    break;
                }
            }
        }
        if let Some((by, wait)) = refusal {
            let retry_after = match by {
                Refused::Rate(_) => Duration::from_millis(wait),
                Refused::Slot(_) => SLOT_RETRY,
            };
            return Ok(Verdict::Refused(Refusal {
                by,
                retry_after,
                rates: check
                    .rates
                    .iter()
                    .zip(&levels)
                    .map(|(r, l)| bucket::state(*l, r.limit))
                    .collect(),
            }));
        }
        for slot in &check.slots {
            *slots.entry(slot.key.clone()).or_insert(0) += 1;
        }
        drop(slots);
        let mut after = Vec::with_capacity(check.rates.len());
        for ((rate, guard), level) in check.rates.iter().zip(&mut guards).zip(levels) {
            let units = level - bucket::cost_units(rate.limit, rate.cost);
            if let Some(guard) = guard {
                **guard = Some(Level { units, at_ms: now });
            }
            after.push(bucket::state(units, rate.limit));
        }
        Ok(Verdict::Admitted { rates: after })
    }

    /// [`Limiter::adjust`], synchronously.
    pub fn adjust_now(&self, key: &str, limit: u64, delta: i64) {
        let now = self.clock.now_ms();
        let cell = self.bucket(key);
        let mut guard = lock(&cell);
        let level = bucket::refilled(*guard, limit, now);
        *guard = Some(Level {
            units: bucket::corrected(level, limit, delta),
            at_ms: now,
        });
    }

    /// [`Limiter::release`], synchronously.
    pub fn release_now(&self, keys: &[String]) {
        let mut slots = lock(&self.slots);
        for key in keys {
            if let Some(count) = slots.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    slots.remove(key);
                }
            }
        }
    }

    /// [`Limiter::window`], synchronously.
    pub fn window_now(&self, key: &str, window: Duration, hit: bool) -> WindowState {
        let now = self.clock.now_ms();
        let len = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let index = now / len;
        let cell = self
            .windows
            .get_with_by_ref(key, || Arc::new(Mutex::new((index, 0))));
        let mut guard = lock(&cell);
        if guard.0 != index {
            *guard = (index, 0);
        }
        if hit {
            guard.1 = guard.1.saturating_add(1);
        }
        WindowState {
            count: guard.1,
            resets_in: Duration::from_millis(len - now % len),
        }
    }
}

#[async_trait::async_trait]
impl Limiter for LocalLimiter {
    async fn check(&self, check: &Check, _lease: &str) -> Result<Verdict, LimitError> {
        self.check_now(check)
    }

    async fn adjust(&self, key: &str, limit: u64, delta: i64) -> Result<(), LimitError> {
        self.adjust_now(key, limit, delta);
        Ok(())
    }

    async fn release(&self, keys: &[String], _lease: &str) -> Result<(), LimitError> {
        self.release_now(keys);
        Ok(())
    }

    async fn window(
        &self,
        key: &str,
        window: Duration,
        hit: bool,
    ) -> Result<WindowState, LimitError> {
        Ok(self.window_now(key, window, hit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rate, Slot};

    fn rates(rates: &[(&str, u64, u64)]) -> Check {
        Check {
            rates: rates
                .iter()
                .map(|(k, l, c)| Rate::new(*k, *l, *c))
                .collect(),
            slots: vec![],
        }
    }

    fn admitted(v: &Verdict) -> bool {
        matches!(v, Verdict::Admitted { .. })
    }

    #[test]
    fn a_bucket_admits_its_limit_then_one_per_interval() {
        let clock = ManualClock::default();
        let limiter = LocalLimiter::manual(clock.clone());
        let check = rates(&[("k", 60, 1)]);
        for left in (0..60).rev() {
            match limiter.check_now(&check).unwrap() {
                Verdict::Admitted { rates } => assert_eq!(rates[0].remaining, left),
                other => panic!("refused early: {other:?}"),
            }
        }
        match limiter.check_now(&check).unwrap() {
            Verdict::Refused(r) => {
                assert_eq!(r.by, Refused::Rate(0));
                assert_eq!(r.retry_after, Duration::from_secs(1));
                assert_eq!(r.rates[0].remaining, 0);
            }
            other => panic!("admitted past the limit: {other:?}"),
        }
        clock.advance(Duration::from_millis(999));
        assert!(!admitted(&limiter.check_now(&check).unwrap()));
        clock.advance(Duration::from_millis(1));
        assert!(admitted(&limiter.check_now(&check).unwrap()));
        assert!(!admitted(&limiter.check_now(&check).unwrap()));
    }

    #[test]
    fn a_refusal_by_one_bucket_takes_from_none() {
        let limiter = LocalLimiter::manual(ManualClock::default());
        assert!(admitted(
            &limiter.check_now(&rates(&[("b", 1, 1)])).unwrap()
        ));
        let both = rates(&[("a", 10, 1), ("b", 1, 1)]);
        match limiter.check_now(&both).unwrap() {
            Verdict::Refused(r) => {
                assert_eq!(r.by, Refused::Rate(1));
                assert_eq!(r.rates[0].remaining, 10, "a was not taken from");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrections_take_more_or_give_back() {
        let clock = ManualClock::default();
        let limiter = LocalLimiter::manual(clock.clone());
        let take = rates(&[("t", 1000, 600)]);
        assert!(admitted(&limiter.check_now(&take).unwrap()));
        // The answer was small: 500 of the 600 come back.
        limiter.adjust_now("t", 1000, -500);
        assert!(admitted(&limiter.check_now(&take).unwrap()));
        // A large answer: the bucket owes.
        limiter.adjust_now("t", 1000, 5000);
        match limiter.check_now(&rates(&[("t", 1000, 1)])).unwrap() {
            Verdict::Refused(r) => assert!(r.retry_after > Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_secs(61));
        assert!(admitted(
            &limiter.check_now(&rates(&[("t", 1000, 1)])).unwrap()
        ));
    }

    #[test]
    fn slots_hold_until_released() {
        let limiter = LocalLimiter::manual(ManualClock::default());
        let check = Check {
            rates: vec![Rate::new("r", 100, 1)],
            slots: vec![Slot {
                key: "p".into(),
                max: 2,
            }],
        };
        assert!(admitted(&limiter.check_now(&check).unwrap()));
        assert!(admitted(&limiter.check_now(&check).unwrap()));
        match limiter.check_now(&check).unwrap() {
            Verdict::Refused(r) => {
                assert_eq!(r.by, Refused::Slot(0));
                assert_eq!(r.retry_after, SLOT_RETRY);
                assert_eq!(
                    r.rates[0].remaining, 98,
                    "no request taken when a slot refuses"
                );
            }
            other => panic!("{other:?}"),
        }
        limiter.release_now(&["p".to_owned()]);
        assert!(admitted(&limiter.check_now(&check).unwrap()));
        limiter.release_now(&["p".to_owned(), "p".to_owned()]);
        limiter.release_now(&["p".to_owned(), "p".to_owned()]);
        assert!(limiter.slots.lock().unwrap().is_empty());
    }

    #[test]
    fn a_window_counts_until_it_ends() {
        let clock = ManualClock::default();
        let limiter = LocalLimiter::manual(clock.clone());
        let minute = Duration::from_secs(60);
        for n in 1..=3 {
            assert_eq!(limiter.window_now("w", minute, true).count, n);
        }
        let peek = limiter.window_now("w", minute, false);
        assert_eq!(peek.count, 3);
        assert_eq!(peek.resets_in, minute);
        clock.advance(minute);
        assert_eq!(limiter.window_now("w", minute, false).count, 0);
    }

    #[test]
    fn invalid_limits_are_errors() {
        let limiter = LocalLimiter::new();
        assert!(limiter.check_now(&rates(&[("z", 0, 1)])).is_err());
        assert!(
            limiter
                .check_now(&rates(&[("z", 5, 1), ("z", 5, 1)]))
                .is_err()
        );
        let slots = Check {
            rates: vec![],
            slots: vec![Slot {
                key: "s".into(),
                max: 0,
            }],
        };
        assert!(limiter.check_now(&slots).is_err());
    }
}
