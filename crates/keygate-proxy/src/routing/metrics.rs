//! The routing table's counters for `/metrics`, by upstream (names come from
//! the config, so the label set is bounded): attempts by outcome, retries,
//! breaker openings, disabled provider keys, and each breaker's state at
//! scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::health::Gate;
use crate::metrics;
use crate::upstream::Upstream;

/// Counters for `/metrics`, by upstream (names come from the config, so the
/// label set is bounded).
#[derive(Debug, Default)]
pub struct RoutingMetrics {
    names: Vec<String>,
    /// Per upstream, one counter per [`Attempt`].
    attempts: Vec<[AtomicU64; Attempt::ALL.len()]>,
    pub(super) retries: AtomicU64,
    pub(super) breaker_opened: Vec<AtomicU64>,
    pub(super) keys_disabled: Vec<AtomicU64>,
}

/// How one upstream attempt went, as `keygate_upstream_attempts_total` labels
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// An answer that says nothing against the upstream.
    Answered,
    /// No connection: refused, reset, TLS failed.
    ConnectError,
    /// No answer before `timeouts.first_byte`.
    Timeout,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// 401 or 403 to the provider key.
    KeyRefused,
}

impl Attempt {
    const ALL: [Attempt; 6] = [
        Self::Answered,
        Self::ConnectError,
        Self::Timeout,
        Self::RateLimited,
        Self::ServerError,
        Self::KeyRefused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::KeyRefused => "key_refused",
        }
    }
}

impl RoutingMetrics {
    pub(super) fn new(upstreams: &[Arc<Upstream>]) -> Self {
        let zeros = || upstreams.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            names: upstreams.iter().map(|u| u.name().to_owned()).collect(),
            attempts: upstreams.iter().map(|_| Default::default()).collect(),
            retries: AtomicU64::new(0),
            breaker_opened: zeros(),
            keys_disabled: zeros(),
        }
    }

    pub(super) fn attempted(&self, upstream: usize, attempt: Attempt) {
        if let Some(counters) = self.attempts.get(upstream) {
            bump(counters, attempt as usize);
        }
    }

    /// These counters at scrape time, and what each upstream's breaker lets
    /// through now (`gates`, in upstream order).
    pub(super) fn encode(
        &self,
        gates: &[Gate],
        encoder: &mut DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        let upstream = |name: &str| [("upstream", name.to_owned())];
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metrics::series(
            encoder,
            "keygate_upstream_attempts",
            "Requests sent to an upstream (retries included), by how the attempt went.",
            MetricType::Counter,
            self.names
                .iter()
                .zip(&self.attempts)
                .flat_map(|(name, counters)| {
                    Attempt::ALL.iter().zip(counters).map(move |(attempt, n)| {
                        (
                            [
                                ("upstream", name.clone()),
                                ("outcome", attempt.as_str().to_owned()),
                            ],
                            load(n),
                        )
                    })
                }),
        )?;
        metrics::counter(
            encoder,
            "keygate_upstream_retries",
            "Attempts after the first of a request.",
            load(&self.retries),
        )?;
        metrics::series(
            encoder,
            "keygate_upstream_breaker_opened",
            "Times an upstream's or provider key's breaker opened.",
            MetricType::Counter,
            self.names
                .iter()
                .zip(&self.breaker_opened)
                .map(|(name, n)| (upstream(name), load(n))),
        )?;
        metrics::series(
            encoder,
            "keygate_provider_keys_disabled",
            "Provider keys taken out after a 401 or 403 from the provider.",
            MetricType::Counter,
            self.names
                .iter()
                .zip(&self.keys_disabled)
                .map(|(name, n)| (upstream(name), load(n))),
        )?;
        metrics::series(
            encoder,
            "keygate_upstream_up",
            "Whether an upstream takes requests now: its breaker closed, or cooled down for a trial (this instance).",
            MetricType::Gauge,
            self.names
                .iter()
                .zip(gates)
                .map(|(name, gate)| (upstream(name), u64::from(*gate != Gate::Shut))),
        )?;
        metrics::series(
            encoder,
            "keygate_upstream_breaker_state",
            "An upstream's breaker in this instance: 0 closed, 1 half-open (a trial may go), 2 open.",
            MetricType::Gauge,
            self.names.iter().zip(gates).map(|(name, gate)| {
                let state = match gate {
                    Gate::Closed => 0,
                    Gate::Trial => 1,
                    Gate::Shut => 2,
                };
                (upstream(name), state)
            }),
        )
    }
}

pub(super) fn bump(counters: &[AtomicU64], i: usize) {
    if let Some(counter) = counters.get(i) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
