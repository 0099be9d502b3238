//! Per-key request rate limits (`rpm`), enforced in this gateway instance with
//! governor's GCRA: a key may burst up to its per-minute allowance, then gets one
//! request per 60/rpm seconds. Shared limits across instances (Redis) and token
//! limits (`tpm`, which need the usage the billing layer reads) come later.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::error::ProxyError;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A key's request limit. Lives in the key's cache entry, so a changed limit takes
/// effect (with a fresh allowance) as soon as the change feed drops the entry.
pub(crate) struct RequestLimit {
    rpm: NonZeroU32,
    limiter: Limiter,
    clock: DefaultClock,
}

impl std::fmt::Debug for RequestLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimit")
            .field("rpm", &self.rpm)
            .finish()
    }
}

/// The state of a key's request limit after an admitted request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestAllowance {
    /// Requests per minute.
    pub limit: u32,
    /// Requests that may still be sent at once.
    pub remaining: u32,
}

impl RequestLimit {
    /// A limit of `rpm` requests per minute; `None` for no limit.
    pub(crate) fn new(rpm: Option<u32>) -> Option<Self> {
        let rpm = NonZeroU32::new(rpm?)?;
        let clock = DefaultClock::default();
        let limiter = RateLimiter::direct_with_clock(Quota::per_minute(rpm), clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Some(Self {
            rpm,
            limiter,
            clock,
        })
    }

    /// Admits one request, or says when the next one can be.
    pub(crate) fn check(&self) -> Result<RequestAllowance, ProxyError> {
        match self.limiter.check() {
            Ok(state) => Ok(RequestAllowance {
                limit: self.rpm.get(),
                remaining: state.remaining_burst_capacity(),
            }),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(ProxyError::RateLimited {
                    rpm: self.rpm.get(),
                    retry_after: wait,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_rpm_then_refusal() {
        let limit = RequestLimit::new(Some(3)).unwrap();
        let remaining: Vec<u32> = (0..3).map(|_| limit.check().unwrap().remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limit.check() {
            Err(ProxyError::RateLimited { rpm, retry_after }) => {
                assert_eq!(rpm, 3);
                assert!(
                    retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20)
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(RequestLimit::new(None).is_none());
        assert!(RequestLimit::new(Some(0)).is_none());
    }
}
