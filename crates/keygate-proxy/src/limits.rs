//! Limits on the request path, through `keygate_limits::Limits` (in this
//! process, or shared through Redis): failed authentications per client
//! address before any lookup; then, once the body is read, one check for the
//! key's `rpm`, `tpm` and `max_parallel` and a public key's per-address
//! limits. The state is keyed by key id and address, never held by the auth
//! cache, so no key change or cache expiry resets an allowance.
//!
//! An admitted request carries a [`LimitHold`] from admission to the end of its
//! body: it holds the request's slot (given back when the body ends or the
//! client leaves), and corrects the token buckets from the estimate debited on
//! admission to the tokens the upstream reports.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{header, response};
use keygate_billing::{
    ApiShape, DEFAULT_OUTPUT_RESERVE, Demand, JsonUsage, StreamUsage, Usage, UsageSource,
};
use keygate_keys::KeyKind;
use keygate_limits::{Check, Decision, Lease, LimitError, Limits, Rate, Refused, Slot};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::auth::CachedKey;
use crate::billing::{ESTIMATE_BYTES_PER_TOKEN, SettledWithUsage, shape_of};
use crate::body::{BodyEnd, BodyObserver, GatewayBody};
use crate::config::{LimitSettings, Tier};
use crate::endpoint::Endpoint;
use crate::error::ProxyError;
use crate::metrics;
use crate::rate::{LimitKind, RateHeaders};

/// The window failed authentications are counted in.
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// The gateway's limits and their counters.
#[derive(Debug)]
pub(crate) struct RequestLimiter {
    limits: Limits,
    settings: LimitSettings,
    refusals: [AtomicU64; LimitKind::ALL.len()],
}

impl RequestLimiter {
    pub(crate) fn new(limits: Limits, settings: LimitSettings) -> Self {
        Self {
            limits,
            settings,
            refusals: Default::default(),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Refusals so far, by kind, for `/metrics`.
    pub(crate) fn refusals(&self) -> impl Iterator<Item = (LimitKind, u64)> + '_ {
        LimitKind::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(kind, n)| (*kind, n.load(Ordering::Relaxed)))
    }

    /// The limits' counters at scrape time: refusals by the limit that
    /// refused, and the shared backend's failures.
    pub(crate) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        metrics::series(
            encoder,
            "keygate_rate_limited",
            "Requests refused with 429, by the limit that refused.",
            MetricType::Counter,
            self.refusals()
                .map(|(kind, n)| ([("limit", kind.as_str())], n)),
        )?;
        let m = self.limits.metrics();
        metrics::counter(
            encoder,
            "keygate_limit_backend_errors",
            "Calls to the shared rate-limit backend (Redis) that failed or timed out.",
            m.backend_errors,
        )?;
        metrics::counter(
            encoder,
            "keygate_limit_fallbacks",
            "Limit checks answered in this instance because the shared backend could not.",
            m.fallbacks,
        )?;
        metrics::counter(
            encoder,
            "keygate_limit_denied",
            "Requests refused (503) because the shared backend could not answer.",
            m.denied,
        )
    }

    fn refused(&self, kind: LimitKind) {
        if let Some(n) = LimitKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.refusals.get(i))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refuses an address that has failed to authenticate too often this
    /// minute, before its credential is looked at.
    pub(crate) async fn before_auth(&self, client: Option<IpAddr>) -> Result<(), ProxyError> {
        let limit = self.settings.auth_failures_per_minute;
        let Some(client) = client.filter(|_| limit > 0) else {
            return Ok(());
        };
        let window = self
            .limits
            .window(&auth_key(client), AUTH_WINDOW, false)
            .await
            .map_err(limits_unavailable)?;
        if window.count >= u64::from(limit) {
            self.refused(LimitKind::AuthFailures);
            return Err(ProxyError::RateLimited {
                kind: LimitKind::AuthFailures,
                limit: u64::from(limit),
                retry_after: window.resets_in,
                headers: RateHeaders::default(),
            });
        }
        Ok(())
    }

    /// Counts a failed authentication from `client` (a key that is malformed,
    /// unknown, expired or revoked; not a request without any key).
    pub(crate) async fn auth_failed(&self, client: Option<IpAddr>, error: &ProxyError) {
        let counts = matches!(
            error,
            ProxyError::InvalidApiKey | ProxyError::ApiKeyExpired | ProxyError::ApiKeyRevoked
        );
        let Some(client) = client.filter(|_| counts && self.settings.auth_failures_per_minute > 0)
        else {
            return;
        };
        if let Err(e) = self
            .limits
            .window(&auth_key(client), AUTH_WINDOW, true)
            .await
        {
            tracing::debug!(error = %e, "failed authentication not counted");
        }
    }

    /// Admits one request of `key` from `client`: `demand` is what a body asks
    /// for (`None` for requests without one, which count only against request
    /// limits and hold no slot). `None` when nothing limits the key.
    pub(crate) async fn admit(
        &self,
        key: &CachedKey,
        client: Option<IpAddr>,
        request: Option<(Endpoint, &Demand)>,
    ) -> Result<Option<LimitHold>, ProxyError> {
        let plan = self.plan(key, client, request.map(|(_, d)| d));
        if plan.check.is_empty() {
            return Ok(None);
        }
        let decision = self
            .limits
            .check(&plan.check)
            .await
            .map_err(limits_unavailable)?;
        match decision {
            Decision::Refused(refusal) => {
                let mut headers = RateHeaders::default();
                for (kind, state) in plan.rate_kinds.iter().zip(&refusal.rates) {
                    headers.add(*kind, *state);
                }
                let (kind, limit) = match refusal.by {
                    Refused::Rate(i) => (plan.rate_kinds[i], plan.check.rates[i].limit),
                    Refused::Slot(i) => (LimitKind::Parallel, u64::from(plan.check.slots[i].max)),
                };
                self.refused(kind);
                Err(ProxyError::RateLimited {
                    kind,
                    limit,
                    retry_after: refusal.retry_after,
                    headers,
                })
            }
            Decision::Admitted { rates, lease } => {
                let mut headers = RateHeaders::default();
                for (kind, state) in plan.rate_kinds.iter().zip(&rates) {
                    headers.add(*kind, *state);
                }
                let tokens = plan
                    .check
                    .rates
                    .iter()
                    .zip(&plan.rate_kinds)
                    .filter(|(_, kind)| kind.counts_tokens())
                    .map(|(rate, _)| (rate.key.clone(), rate.limit))
                    .collect();
                Ok(Some(LimitHold {
                    lease,
                    headers,
                    tokens,
                    estimate: plan.estimate,
                    shape: request.and_then(|(endpoint, _)| shape_of(endpoint)),
                    reader: None,
                    success: false,
                    settled: false,
                }))
            }
        }
    }

    /// The rates and slots a request needs.
    /// The tier a key is held to: its account's, else the default.
    fn tier(&self, key: &CachedKey) -> Option<Tier> {
        let tiers = &self.settings.tiers;
        key.tier
            .as_deref()
            .and_then(|name| tiers.get(name))
            .or_else(|| {
                self.settings
                    .default_tier
                    .as_deref()
                    .and_then(|n| tiers.get(n))
            })
            .copied()
    }

    fn plan(&self, cached: &CachedKey, client: Option<IpAddr>, demand: Option<&Demand>) -> Plan {
        let key = &cached.key;
        let id = key.id.as_str();
        let tier = self.tier(cached).unwrap_or_default();
        // A per-key tier bounds the key's own limits; an account-wide one
        // is a bucket of the account's besides them.
        let tighter = |own: Option<u32>, tier: Option<u32>| match (own, tier) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (rpm, tpm, max_parallel) = if tier.account_wide {
            (key.rpm, key.tpm, key.max_parallel)
        } else {
            (
                tighter(key.rpm, tier.rpm),
                tighter(key.tpm, tier.tpm),
                tighter(key.max_parallel, tier.max_parallel),
            )
        };
        let estimate = demand.map_or(0, token_estimate);
        let mut plan = Plan {
            check: Check::default(),
            rate_kinds: Vec::new(),
            estimate,
        };
        // Each limiter key is formatted only for a limit that is set.
        let mut rate = |kind: LimitKind, key: &dyn Fn() -> String, limit: Option<u32>| {
            if let Some(limit) = limit.filter(|l| *l > 0) {
                let cost = if kind.counts_tokens() { estimate } else { 1 };
                if kind.counts_tokens() && demand.is_none() {
                    return;
                }
                plan.check
                    .rates
                    .push(Rate::new(key(), u64::from(limit), cost));
                plan.rate_kinds.push(kind);
            }
        };
        rate(LimitKind::Requests, &|| format!("key:{id}:rpm"), rpm);
        rate(LimitKind::Tokens, &|| format!("key:{id}:tpm"), tpm);
        let account = key.account_id.as_str();
        if tier.account_wide {
            rate(
                LimitKind::Requests,
                &|| format!("account:{account}:rpm"),
                tier.rpm,
            );
            rate(
                LimitKind::Tokens,
                &|| format!("account:{account}:tpm"),
                tier.tpm,
            );
        }
        if key.kind == KeyKind::Public
            && let Some(client) = client
        {
            let public = self.settings.public_keys;
            rate(
                LimitKind::AddressRequests,
                &|| format!("addr:{id}:{client}:rpm"),
                public.rpm_per_address,
            );
            rate(
                LimitKind::AddressTokens,
                &|| format!("addr:{id}:{client}:tpm"),
                public.tpm_per_address,
            );
        }
        if demand.is_some() {
            if let Some(max) = max_parallel.filter(|m| *m > 0) {
                let key = format!("key:{id}:parallel");
                plan.check.slots.push(Slot { key, max });
            }
            if let Some(max) = tier.max_parallel.filter(|m| *m > 0 && tier.account_wide) {
                let key = format!("account:{account}:parallel");
                plan.check.slots.push(Slot { key, max });
            }
        }
        plan
    }
}

struct Plan {
    check: Check,
    /// What each of `check.rates` limits.
    rate_kinds: Vec<LimitKind>,
    estimate: u64,
}

fn auth_key(client: IpAddr) -> String {
    format!("authfail:{client}")
}

fn limits_unavailable(error: LimitError) -> ProxyError {
    match error {
        LimitError::Unavailable(_) => ProxyError::LimitsUnavailable,
        LimitError::Invalid(_) => ProxyError::Internal(Box::new(error)),
    }
}

/// The tokens debited on admission: the input estimated from its bytes
/// (`ESTIMATE_BYTES_PER_TOKEN`), plus the output cap times `n` (or the default
/// output reserve when the request sets no cap).
pub(crate) fn token_estimate(demand: &Demand) -> u64 {
    let input = demand.input_tokens.div_ceil(ESTIMATE_BYTES_PER_TOKEN);
    let output = demand
        .output_cap
        .unwrap_or(DEFAULT_OUTPUT_RESERVE)
        .saturating_mul(demand.n.max(1));
    input.saturating_add(output)
}

/// An admitted request's limits, from admission to the end of its body.
#[derive(Debug)]
pub(crate) struct LimitHold {
    lease: Lease,
    pub(crate) headers: RateHeaders,
    /// The token buckets debited by `estimate`: (key, limit).
    tokens: Vec<(String, u64)>,
    estimate: u64,
    shape: Option<ApiShape>,
    reader: Option<Reader>,
    success: bool,
    settled: bool,
}

#[derive(Debug)]
enum Reader {
    Json(JsonUsage),
    Stream(Box<StreamUsage>),
}

impl LimitHold {
    /// Rides on the response body until it ends, reading usage from the
    /// upstream's own bytes when tokens are limited. Add it before any stage
    /// that rewrites the body. When the request is billed, the charge reads
    /// the usage instead and settles the hold ([`SettledWithUsage`]).
    pub(crate) fn attach(mut self, head: &response::Parts, body: GatewayBody) -> GatewayBody {
        self.success = head.status.is_success();
        if !self.tokens.is_empty()
            && let Some(shape) = self.shape
        {
            let stream = head
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            self.reader = Some(if stream {
                Reader::Stream(Box::new(StreamUsage::new(shape)))
            } else {
                Reader::Json(JsonUsage::new(shape))
            });
        }
        body.observe(Box::new(self))
    }

    /// The tokens the request used, when the upstream said.
    fn used(&self) -> Option<Usage> {
        let usage = match self.reader.as_ref()? {
            Reader::Json(json) => json.usage(),
            Reader::Stream(stream) => stream.usage(),
        };
        matches!(usage.source, UsageSource::Reported | UsageSource::Capped).then_some(usage)
    }

    fn correct(&mut self, delta: i64) {
        self.settled = true;
        for (key, limit) in &self.tokens {
            self.lease.adjust(key, *limit, delta);
        }
    }
}

impl BodyObserver for LimitHold {
    fn on_data(&mut self, data: &Bytes) {
        match &mut self.reader {
            None => {}
            Some(Reader::Json(json)) => json.push(data),
            Some(Reader::Stream(stream)) => stream.push(data),
        }
    }

    fn on_end(&mut self, _end: BodyEnd) {
        let used = self.used();
        self.settle_with(used);
    }
}

/// The usage the charge read from the same bytes; `None` leaves the estimate
/// standing. The slot is given back as the hold drops.
impl SettledWithUsage for LimitHold {
    fn settle(mut self: Box<Self>, success: bool, used: Option<&Usage>) {
        self.success = success;
        let used = used
            .filter(|u| matches!(u.source, UsageSource::Reported | UsageSource::Capped))
            .copied();
        self.settle_with(used);
    }
}

impl LimitHold {
    fn settle_with(&mut self, used: Option<Usage>) {
        if self.tokens.is_empty() || self.settled {
            return;
        }
        let estimate = i64::try_from(self.estimate).unwrap_or(i64::MAX);
        let delta = if !self.success {
            // An error answer used no tokens.
            -estimate
        } else if let Some(usage) = used {
            let used = usage.input_tokens.saturating_add(usage.output_tokens);
            i64::try_from(used)
                .unwrap_or(i64::MAX)
                .saturating_sub(estimate)
        } else {
            // Nothing reported (or the client left before the usage): the
            // estimate stands.
            0
        };
        self.correct(delta);
    }
}

impl Drop for LimitHold {
    fn drop(&mut self) {
        // Never attached to an answer: nothing was served, the estimate comes
        // back. The lease gives the slot back as it drops.
        if !self.settled {
            let estimate = i64::try_from(self.estimate).unwrap_or(i64::MAX);
            self.correct(-estimate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_input_bytes_over_four_plus_the_output_cap() {
        let demand = Demand {
            input_tokens: 400,
            output_cap: Some(50),
            n: 2,
        };
        assert_eq!(token_estimate(&demand), 100 + 100);
        let uncapped = Demand {
            output_cap: None,
            n: 0,
            ..demand
        };
        assert_eq!(token_estimate(&uncapped), 100 + DEFAULT_OUTPUT_RESERVE);
    }
}
