//! `[routing]`: which failures are retried on the next candidate upstream, how
//! many attempts a request may take, key affinity, and the breaker every
//! upstream and provider key has.

use anyhow::bail;
use keygate_config::{RawAffinity, RawRetryOn, RawRouting};
use keygate_proxy::{Affinity, RetryOn, RoutingSettings};

use super::duration;

/// `[routing]` over the proxy's defaults.
pub(super) fn routing(raw: Option<&RawRouting>) -> anyhow::Result<RoutingSettings> {
    let defaults = RoutingSettings::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let retry_on = match &raw.retry_on {
        None => defaults.retry_on,
        Some(list) => {
            let mut on = RetryOn::NONE;
            for entry in list {
                match entry {
                    RawRetryOn::Connection => on.connection = true,
                    RawRetryOn::Timeout => on.timeout = true,
                    RawRetryOn::RateLimited => on.rate_limited = true,
                    RawRetryOn::ServerError => on.server_error = true,
                }
            }
            on
        }
    };
    let max_attempts = raw.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        bail!("routing.max_attempts: must be at least 1; 1 turns retries off");
    }
    let failures = raw.breaker_failures.unwrap_or(defaults.breaker.failures);
    if failures == 0 {
        bail!("routing.breaker_failures: must be at least 1");
    }
    let mut breaker = defaults.breaker;
    breaker.failures = failures;
    breaker.window = duration::parse(
        "routing.breaker_window",
        raw.breaker_window.as_deref(),
        defaults.breaker.window,
    )?;
    breaker.cooldown = duration::parse(
        "routing.breaker_cooldown",
        raw.breaker_cooldown.as_deref(),
        defaults.breaker.cooldown,
    )?;
    Ok(RoutingSettings {
        retry_on,
        max_attempts,
        affinity: match raw.affinity {
            None | Some(RawAffinity::None) => Affinity::None,
            Some(RawAffinity::Key) => Affinity::Key,
        },
        breaker,
    })
}
