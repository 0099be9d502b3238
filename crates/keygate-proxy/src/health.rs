//! Upstream health, per instance: a circuit breaker for each upstream and for
//! each of its provider keys (so many failures within a window take it out for a
//! cooldown, then one trial request decides), the time an upstream asked to be
//! left alone (`Retry-After`), and provider keys the provider refused (401/403),
//! which stay out until the process restarts.
//!
//! Nothing here is shared between gateway instances: each one learns on its own.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a half-open trial that never reported back keeps others waiting,
/// at least.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    /// How far back failures count.
    pub window: Duration,
    /// How long an open breaker keeps its upstream (or key) out before a trial.
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(30),
        }
    }
}

/// What a pick sees of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Healthy: take requests.
    Closed,
    /// Cooled down: one trial request may go.
    Trial,
    /// Out of rotation for now.
    Shut,
}

/// One breaker: the recent failures, and when it is open until.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    /// Failures within the window, oldest first.
    recent: VecDeque<Instant>,
    /// Open (out of rotation) until then; a trial may go after it.
    open_until: Option<Instant>,
    /// When the half-open trial started, while it is out.
    trial_since: Option<Instant>,
    /// Not before then: what the upstream's `Retry-After` asked.
    not_before: Option<Instant>,
    /// The last failure, for "least recently failed" when everything is out.
    last_failure: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // A panic while holding this lock leaves consistent data: every write
        // is a single assignment.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a pick at `now` sees, without changing anything.
    pub(crate) fn gate(&self, now: Instant) -> Gate {
        gate_of(&self.lock(), self.settings, now)
    }

    /// Takes the breaker for one request at `now`: true when it is closed, or
    /// when it is half-open and no other trial is out (this request becomes
    /// the trial).
    pub(crate) fn enter(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match gate_of(&state, self.settings, now) {
            Gate::Closed => true,
            Gate::Trial => {
                state.trial_since = Some(now);
                true
            }
            Gate::Shut => false,
        }
    }

    /// The request went well: the breaker closes and forgets its failures.
    pub(crate) fn succeeded(&self) {
        let mut state = self.lock();
        state.recent.clear();
        state.open_until = None;
        state.trial_since = None;
    }

    /// The request failed at `now`. Returns true when this opened the breaker.
    pub(crate) fn failed(&self, now: Instant) -> bool {
        let settings = self.settings;
        let mut state = self.lock();
        state.last_failure = Some(now);
        if state.trial_since.take().is_some() || state.open_until.is_some() {
            // The trial (or a request let through in the fallback) failed:
            // out for another cooldown.
            state.open_until = Some(now + settings.cooldown);
            state.recent.clear();
            return true;
        }
        while state
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) > settings.window)
        {
            state.recent.pop_front();
        }
        state.recent.push_back(now);
        if state.recent.len() >= settings.failures.max(1) as usize {
            state.open_until = Some(now + settings.cooldown);
            state.recent.clear();
            return true;
        }
        false
    }

    /// The upstream asked not to be sent anything before `until`.
    pub(crate) fn hold_off(&self, until: Instant) {
        let mut state = self.lock();
        state.not_before = Some(state.not_before.map_or(until, |t| t.max(until)));
    }

    /// When it last failed, if ever.
    pub(crate) fn last_failure(&self) -> Option<Instant> {
        self.lock().last_failure
    }
}

fn gate_of(state: &BreakerState, settings: BreakerSettings, now: Instant) -> Gate {
    if state.not_before.is_some_and(|t| now < t) {
        return Gate::Shut;
    }
    match state.open_until {
        None => Gate::Closed,
        Some(until) if now < until => Gate::Shut,
        // A trial that never reported back (its client left mid-attempt) is
        // given up after a cooldown, and at least TRIAL_TIMEOUT.
        Some(_) => match state.trial_since {
            Some(since)
                if now.saturating_duration_since(since) < settings.cooldown.max(TRIAL_TIMEOUT) =>
            {
                Gate::Shut
            }
            _ => Gate::Trial,
        },
    }
}

/// One provider key's health: its breaker (429s and the like), and whether the
/// provider refused it.
#[derive(Debug)]
pub(crate) struct KeyHealth {
    pub(crate) breaker: Breaker,
    disabled: AtomicBool,
}

impl KeyHealth {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self {
            breaker: Breaker::new(settings),
            disabled: AtomicBool::new(false),
        }
    }

    /// Takes the key out until the process restarts. Returns true the first time.
    pub(crate) fn disable(&self) -> bool {
        !self.disabled.swap(true, Ordering::Relaxed)
    }

    /// Whether the provider refused this key.
    pub(crate) fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 2,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_breaker_opens_cools_down_and_lets_one_trial_through() {
        let breaker = Breaker::new(settings());
        let t0 = Instant::now();
        assert!(!breaker.failed(t0));
        assert_eq!(breaker.gate(t0), Gate::Closed);
        assert!(breaker.failed(t0 + Duration::from_secs(1)));
        assert_eq!(breaker.gate(t0 + Duration::from_secs(2)), Gate::Shut);
        let after = t0 + Duration::from_secs(7);
        assert_eq!(breaker.gate(after), Gate::Trial);
        assert!(breaker.enter(after), "the trial goes");
        assert!(
            !breaker.enter(after),
            "a second request waits for the trial"
        );
        breaker.succeeded();
        assert_eq!(breaker.gate(after), Gate::Closed);
    }

    #[test]
    fn a_failed_trial_opens_it_again_and_old_failures_expire() {
        let breaker = Breaker::new(settings());
        let t0 = Instant::now();
        breaker.failed(t0);
        // Past the window: the first failure no longer counts.
        assert!(!breaker.failed(t0 + Duration::from_secs(11)));
        assert!(breaker.failed(t0 + Duration::from_secs(12)));
        let trial = t0 + Duration::from_secs(18);
        assert!(breaker.enter(trial));
        assert!(breaker.failed(trial));
        assert_eq!(breaker.gate(trial + Duration::from_secs(1)), Gate::Shut);
        assert_eq!(breaker.gate(trial + Duration::from_secs(6)), Gate::Trial);
    }

    #[test]
    fn retry_after_holds_a_closed_breaker_off() {
        let breaker = Breaker::new(settings());
        let t0 = Instant::now();
        breaker.hold_off(t0 + Duration::from_secs(3));
        assert_eq!(breaker.gate(t0), Gate::Shut);
        assert_eq!(breaker.gate(t0 + Duration::from_secs(3)), Gate::Closed);
    }

    #[test]
    fn a_key_is_disabled_once() {
        let key = KeyHealth::new(settings());
        assert!(key.disable());
        assert!(!key.disable());
        assert!(key.is_disabled());
    }
}
