//! [`Limits`]: what the gateway holds. The shared limiter when there is one
//! (Redis), the in-process one always, and the policy for a shared limiter that
//! cannot answer ([`OnBackendError`]): the first failure of an outage is logged
//! once, every one is counted, and for a second after a failure checks go
//! straight to the policy rather than wait for another deadline. A check that
//! admits returns a [`Lease`]: it holds the request's slots until dropped and
//! corrects its buckets on the limiter that admitted it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::local::LocalLimiter;
use crate::{Check, LimitError, Limiter, RateState, Verdict, WindowState};

/// How long after a failure the shared limiter is left alone.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What a check does when the shared limiter cannot answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnBackendError {
    /// Check against this instance's own limiter (limits then hold per instance
    /// until the shared one is back).
    #[default]
    Local,
    /// Refuse the request ([`LimitError::Unavailable`]).
    Deny,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitMetrics {
    /// Calls to the shared limiter that failed or timed out.
    pub backend_errors: u64,
    /// Checks answered by the in-process limiter because the shared one could not.
    pub fallbacks: u64,
    /// Checks refused because the shared limiter could not answer.
    pub denied: u64,
}

#[derive(Debug, Default)]
struct Counters {
    backend_errors: AtomicU64,
    fallbacks: AtomicU64,
    denied: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    local: LocalLimiter,
    shared: Option<Arc<dyn Limiter>>,
    on_error: OnBackendError,
    /// Set while the shared limiter is failing: when to try it again.
    down: Mutex<Option<Instant>>,
    counters: Counters,
    lease_prefix: u64,
    next_lease: AtomicU64,
}

/// The gateway's limits: cheap to clone, one per gateway.
#[derive(Clone, Debug)]
pub struct Limits(Arc<Inner>);

/// An admitted check's hold: the slots it took (given back when the lease is
/// dropped), and the limiter that admitted it, which corrections go to.
#[derive(Debug)]
pub struct Lease {
    limits: Limits,
    id: String,
    slots: Vec<String>,
    shared: bool,
}

/// The answer to [`Limits::check`].
#[derive(Debug)]
pub enum Decision {
    /// Admitted: the rates after this request, and its lease.
    Admitted {
        /// Every rate of the check after its take.
        rates: Vec<RateState>,
        /// Holds the slots; corrects the buckets.
        lease: Lease,
    },
    /// Refused, nothing taken.
    Refused(crate::Refusal),
}

enum Via {
    Shared(Arc<dyn Limiter>),
    Local,
}

impl Limits {
    /// Limits held in this process only.
    pub fn local() -> Self {
        Self::build(LocalLimiter::new(), None, OnBackendError::Local)
    }

    /// Limits held in `shared`, with `on_error` for when it cannot answer.
    pub fn shared(shared: Arc<dyn Limiter>, on_error: OnBackendError) -> Self {
        Self::build(LocalLimiter::new(), Some(shared), on_error)
    }

    /// Limits on a given in-process limiter (a test's clock), and optionally a
    /// shared one.
    pub fn with_local(
        local: LocalLimiter,
        shared: Option<Arc<dyn Limiter>>,
        on_error: OnBackendError,
    ) -> Self {
        Self::build(local, shared, on_error)
    }

    fn build(
        local: LocalLimiter,
        shared: Option<Arc<dyn Limiter>>,
        on_error: OnBackendError,
    ) -> Self {
        Self(Arc::new(Inner {
            local,
            shared,
            on_error,
            down: Mutex::new(None),
            counters: Counters::default(),
            lease_prefix: rand::random(),
            next_lease: AtomicU64::new(0),
        }))
    }

    /// Whether the limits are shared with other instances.
    pub fn is_shared(&self) -> bool {
        self.0.shared.is_some()
    }

    /// The counters.
    pub fn metrics(&self) -> LimitMetrics {
        let c = &self.0.counters;
        LimitMetrics {
            backend_errors: c.backend_errors.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
        }
    }

    /// Which limiter to ask now: the shared one unless it failed within the
    /// last second.
    fn via(&self) -> Via {
        match &self.0.shared {
            None => Via::Local,
            Some(shared) => {
                let down = self.0.down.lock().map(|d| *d).unwrap_or(None);
                match down {
                    Some(retry_at) if Instant::now() < retry_at => Via::Local,
                    _ => Via::Shared(Arc::clone(shared)),
                }
            }
        }
    }

    fn succeeded(&self) {
        if let Ok(mut down) = self.0.down.lock()
            && down.take().is_some()
        {
            tracing::info!("rate-limit backend reachable again; limits are shared again");
        }
    }

    fn failed(&self, error: &LimitError) {
        self.0
            .counters
            .backend_errors
            .fetch_add(1, Ordering::Relaxed);
        if let Ok(mut down) = self.0.down.lock() {
            if down.is_none() {
                let then = match self.0.on_error {
                    OnBackendError::Local => {
                        "checking limits in this instance only until it is back"
                    }
                    OnBackendError::Deny => "refusing limited requests until it is back",
                };
                tracing::warn!(error = %error, "rate-limit backend unavailable; {then}");
            }
            *down = Some(Instant::now() + RETRY_AFTER_FAILURE);
        }
    }

    /// Whether the fallback may answer; counts what the policy did.
    fn fall_back(&self, error: LimitError) -> Result<(), LimitError> {
        match self.0.on_error {
            OnBackendError::Local => {
                self.0.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            OnBackendError::Deny => {
                self.0.counters.denied.fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    fn lease_id(&self) -> String {
        let n = self.0.next_lease.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.0.lease_prefix)
    }

    /// Admits the request by every rate and slot of `check`, or by none. An
    /// error only when the shared limiter cannot answer and the policy is
    /// [`OnBackendError::Deny`], or for a check no limiter takes.
    pub async fn check(&self, check: &Check) -> Result<Decision, LimitError> {
        let id = self.lease_id();
        let (verdict, shared) = match self.via() {
            Via::Shared(shared) => match shared.check(check, &id).await {
                Ok(verdict) => {
                    self.succeeded();
                    (verdict, true)
                }
                Err(error @ LimitError::Invalid(_)) => return Err(error),
                Err(error) => {
                    self.failed(&error);
                    self.fall_back(error)?;
                    (self.0.local.check_now(check)?, false)
                }
            },
            Via::Local if self.is_shared() => {
                self.fall_back(LimitError::Unavailable("still failing".into()))?;
                (self.0.local.check_now(check)?, false)
            }
            Via::Local => (self.0.local.check_now(check)?, false),
        };
        Ok(match verdict {
            Verdict::Refused(refusal) => Decision::Refused(refusal),
            Verdict::Admitted { rates } => Decision::Admitted {
                rates,
                lease: Lease {
                    limits: self.clone(),
                    id,
                    slots: check.slots.iter().map(|s| s.key.clone()).collect(),
                    shared,
                },
            },
        })
    }

    /// The window `key` now, counting one more hit when `hit`. The same
    /// policy as checks when the shared limiter cannot answer.
    pub async fn window(
        &self,
        key: &str,
        window: Duration,
        hit: bool,
    ) -> Result<WindowState, LimitError> {
        match self.via() {
            Via::Shared(shared) => match shared.window(key, window, hit).await {
                Ok(state) => {
                    self.succeeded();
                    Ok(state)
                }
                Err(error) => {
                    self.failed(&error);
                    self.fall_back(error)?;
                    Ok(self.0.local.window_now(key, window, hit))
                }
            },
            Via::Local if self.is_shared() => {
                self.fall_back(LimitError::Unavailable("still failing".into()))?;
                Ok(self.0.local.window_now(key, window, hit))
            }
            Via::Local => Ok(self.0.local.window_now(key, window, hit)),
        }
    }

    /// Runs `call` on the shared limiter off the request path; a failure is
    /// counted (the bucket is then off by this correction; slots free by
    /// themselves after [`crate::SLOT_TTL`]).
    fn spawn_shared<F>(&self, call: F)
    where
        F: FnOnce(Arc<dyn Limiter>) -> futures_call::BoxFuture + Send + 'static,
    {
        let (Some(shared), Ok(handle)) =
            (self.0.shared.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let limits = self.clone();
        handle.spawn(async move {
            if let Err(error) = call(shared).await {
                limits.failed(&error);
            }
        });
    }
}

mod futures_call {
    //! The boxed future a deferred shared call returns.
    pub(super) type BoxFuture = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), crate::LimitError>> + Send + 'static>,
    >;
}

impl Lease {
    /// Corrects the bucket `key` (of `limit` per minute) by `delta` tokens on
    /// the limiter that admitted the request: positive takes more, negative
    /// gives back. Off the request path for a shared limiter.
    pub fn adjust(&self, key: &str, limit: u64, delta: i64) {
        if delta == 0 {
            return;
        }
        if !self.shared {
            self.limits.0.local.adjust_now(key, limit, delta);
            return;
        }
        let key = key.to_owned();
        self.limits.spawn_shared(move |shared| {
            Box::pin(async move { shared.adjust(&key, limit, delta).await })
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        let slots = std::mem::take(&mut self.slots);
        if !self.shared {
            self.limits.0.local.release_now(&slots);
            return;
        }
        let id = std::mem::take(&mut self.id);
        self.limits
            .spawn_shared(move |shared| Box::pin(async move { shared.release(&slots, &id).await }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rate, Slot};

    /// A shared limiter that is always down.
    #[derive(Debug)]
    struct Down;

    #[async_trait::async_trait]
    impl Limiter for Down {
        async fn check(&self, _: &Check, _: &str) -> Result<Verdict, LimitError> {
            Err(LimitError::Unavailable("down".into()))
        }
        async fn adjust(&self, _: &str, _: u64, _: i64) -> Result<(), LimitError> {
            Err(LimitError::Unavailable("down".into()))
        }
        async fn release(&self, _: &[String], _: &str) -> Result<(), LimitError> {
            Err(LimitError::Unavailable("down".into()))
        }
        async fn window(&self, _: &str, _: Duration, _: bool) -> Result<WindowState, LimitError> {
            Err(LimitError::Unavailable("down".into()))
        }
    }

    fn one(limit: u64) -> Check {
        Check {
            rates: vec![Rate::new("k", limit, 1)],
            slots: vec![Slot {
                key: "p".into(),
                max: 1,
            }],
        }
    }

    #[tokio::test]
    async fn a_down_backend_falls_back_to_local_limits() {
        let limits = Limits::shared(Arc::new(Down), OnBackendError::Local);
        let lease = match limits.check(&one(2)).await.unwrap() {
            Decision::Admitted { lease, .. } => lease,
            other => panic!("{other:?}"),
        };
        // The local slot is held by the lease, and freed with it.
        assert!(matches!(
            limits.check(&one(2)).await.unwrap(),
            Decision::Refused(_)
        ));
        drop(lease);
        assert!(matches!(
            limits.check(&one(2)).await.unwrap(),
            Decision::Admitted { .. }
        ));
        let m = limits.metrics();
        assert_eq!(m.backend_errors, 1, "one try, then a second of rest");
        assert_eq!(m.fallbacks, 3);
        assert_eq!(m.denied, 0);
    }

    #[tokio::test]
    async fn a_down_backend_denies_when_told_to() {
        let limits = Limits::shared(Arc::new(Down), OnBackendError::Deny);
        assert!(matches!(
            limits.check(&one(2)).await,
            Err(LimitError::Unavailable(_))
        ));
        assert!(
            limits
                .window("w", Duration::from_secs(60), true)
                .await
                .is_err()
        );
        assert_eq!(limits.metrics().denied, 2);
    }

    #[tokio::test]
    async fn local_limits_correct_their_own_buckets() {
        let limits = Limits::local();
        let check = Check {
            rates: vec![Rate::new("t", 100, 100)],
            slots: vec![],
        };
        let Decision::Admitted { rates, lease } = limits.check(&check).await.unwrap() else {
            panic!("refused");
        };
        assert_eq!(rates[0].remaining, 0);
        lease.adjust("t", 100, -60);
        let small = Check {
            rates: vec![Rate::new("t", 100, 50)],
            slots: vec![],
        };
        assert!(matches!(
            limits.check(&small).await.unwrap(),
            Decision::Admitted { .. }
        ));
    }
}
