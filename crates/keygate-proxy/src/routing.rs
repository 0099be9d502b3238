//! Which upstream serves a request. Every upstream of the endpoint's provider
//! kind whose patterns match the model is a candidate. Candidates are grouped
//! in tiers by `priority` (lower first); a tier is used only when every
//! candidate of the tiers before it is unavailable (its breaker open, every
//! provider key out, or already tried by this request). Within a tier the split
//! is by `weight`: smooth weighted round-robin, or with `affinity = "key"` a
//! weighted rendezvous hash of the keygate key, so each key stays on one
//! upstream and provider key while they are healthy. When every candidate is
//! out, the least recently failed one is tried rather than refusing.
//!
//! Health is kept here, per upstream and per provider key, in this process
//! only (see [`crate::health`]).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::ProviderKind;
use crate::error::ProxyError;
use crate::health::{BreakerSettings, Gate, KeyHealth};
use crate::text::model_phrase;
use crate::upstream::Upstream;

mod metrics;

pub use metrics::RoutingMetrics;
use metrics::{Attempt, bump};

/// How requests are spread over candidates and retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingSettings {
    /// Which failures move a request to the next candidate.
    pub retry_on: RetryOn,
    /// Most upstream attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// Whether a keygate key sticks to one upstream and provider key.
    pub affinity: Affinity,
    /// The breaker of every upstream and provider key.
    pub breaker: BreakerSettings,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            retry_on: RetryOn::ALL,
            max_attempts: 3,
            affinity: Affinity::None,
            breaker: BreakerSettings::default(),
        }
    }
}

/// `[routing] retry_on`: the failures that are retried on the next candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryOn {
    /// A refused or reset connection, or one that broke before the answer's head.
    pub connection: bool,
    /// No answer head within the first-byte timeout.
    pub timeout: bool,
    /// 429.
    pub rate_limited: bool,
    /// 500 to 599.
    pub server_error: bool,
}

impl RetryOn {
    /// All four, the default.
    pub const ALL: Self = Self {
        connection: true,
        timeout: true,
        rate_limited: true,
        server_error: true,
    };
    /// None: every request gets one attempt.
    pub const NONE: Self = Self {
        connection: false,
        timeout: false,
        rate_limited: false,
        server_error: false,
    };
}

/// `[routing] affinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Spread every request by weight.
    None,
    /// Keep each keygate key on one upstream and provider key while healthy.
    Key,
}

/// One attempt's destination: an upstream and one of its provider-key slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) upstream: usize,
    pub(crate) key: usize,
}

/// What a request has already tried: upstreams it must not go back to, and
/// provider keys of upstreams it may.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    upstreams: Vec<usize>,
    keys: Vec<Target>,
}

impl Tried {
    /// The upstream failed: no second attempt there.
    pub(crate) fn upstream(&mut self, target: Target) {
        self.upstreams.push(target.upstream);
    }

    /// Only the provider key failed: the upstream may be tried with another.
    pub(crate) fn key(&mut self, target: Target) {
        self.keys.push(target);
    }

    fn excludes_upstream(&self, upstream: usize) -> bool {
        self.upstreams.contains(&upstream)
    }

    fn excludes_key(&self, upstream: usize, key: usize) -> bool {
        self.excludes_upstream(upstream) || self.keys.contains(&Target { upstream, key })
    }
}

/// The candidates for one request, in tier order (priority, then
/// configuration order).
#[derive(Debug)]
pub(crate) struct Candidates {
    list: Vec<usize>,
    /// Take the first available in order, never split by weight: stored
    /// objects live at the upstream that made them.
    ordered: bool,
}

impl Candidates {
    /// The first candidate, which the request is admitted under.
    pub(crate) fn first(&self) -> usize {
        self.list.first().copied().unwrap_or_default()
    }
}

/// Why an upstream failed an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection, or it broke before the answer's head.
    Connection,
    /// No answer in time.
    Timeout,
    /// A 5xx answer.
    ServerError,
}

/// How an attempt went, as health sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer that says nothing against the upstream (2xx, or a 4xx about
    /// the request).
    Answered,
    /// The connection failed or timed out, or the upstream answered 5xx
    /// (with its `Retry-After`, when given).
    UpstreamFailed(Failure, Option<Duration>),
    /// 429: the provider key is being limited; `Retry-After` when given.
    RateLimited(Option<Duration>),
    /// 401 or 403 to the provider key.
    KeyRefused,
}

struct UpstreamHealth {
    breaker: crate::health::Breaker,
    keys: Vec<KeyHealth>,
    /// The next key slot in rotation.
    rotation: AtomicUsize,
}

/// The routing table: upstreams in configuration order, with their health.
pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    health: Vec<UpstreamHealth>,
    settings: RoutingSettings,
    /// Smooth weighted round-robin's current weight per upstream.
    current: Mutex<Vec<i64>>,
    metrics: Arc<RoutingMetrics>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("upstreams", &self.upstreams)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A table over `upstreams` with the default routing settings.
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Self {
        Self::with_settings(upstreams, RoutingSettings::default())
    }

    /// A table over `upstreams`, in order.
    pub fn with_settings(upstreams: Vec<Arc<Upstream>>, settings: RoutingSettings) -> Self {
        let health = upstreams
            .iter()
            .map(|u| UpstreamHealth {
                breaker: crate::health::Breaker::new(settings.breaker),
                keys: (0..u.key_slots())
                    .map(|_| KeyHealth::new(settings.breaker))
                    .collect(),
                rotation: AtomicUsize::new(0),
            })
            .collect();
        let metrics = Arc::new(RoutingMetrics::new(&upstreams));
        log_shared_tiers(&upstreams);
        Self {
            current: Mutex::new(vec![0; upstreams.len()]),
            upstreams,
            health,
            settings,
            metrics,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    /// The routing counters and each upstream's breaker, at scrape time.
    pub(crate) fn encode_metrics(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        let now = Instant::now();
        let gates: Vec<Gate> = self.health.iter().map(|h| h.breaker.gate(now)).collect();
        self.metrics.encode(&gates, encoder)
    }

    /// The first upstream of the lowest tier of `provider` whose patterns match
    /// `model`: where a request goes when everything is healthy and weights
    /// are equal.
    pub fn route(&self, provider: ProviderKind, model: &str) -> Result<&Arc<Upstream>, ProxyError> {
        let candidates = self.candidates(provider, model)?;
        Ok(self.upstream(candidates.first()))
    }

    /// Every upstream, in order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub(crate) fn upstream(&self, index: usize) -> &Arc<Upstream> {
        // Indices come from this table.
        &self.upstreams[index.min(self.upstreams.len().saturating_sub(1))]
    }

    /// The candidates for `model` on `provider`'s API, or 404 `model_not_found`.
    pub(crate) fn candidates(
        &self,
        provider: ProviderKind,
        model: &str,
    ) -> Result<Candidates, ProxyError> {
        let mut found: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| self.upstreams[i].kind() == provider && self.upstreams[i].serves(model))
            .collect();
        if !found.is_empty() {
            // Stable: configuration order within a tier.
            found.sort_by_key(|&i| self.upstreams[i].priority());
            return Ok(Candidates {
                list: found,
                ordered: false,
            });
        }
        let shown = model_phrase(model);
        let message = match self.upstreams.iter().find(|u| u.serves(model)) {
            Some(other) if other.kind() == ProviderKind::Anthropic => {
                format!("{shown} is an Anthropic model: call it through /v1/messages")
            }
            Some(_) => format!("{shown} is served through the OpenAI API, not /v1/messages"),
            None => format!("{shown} does not exist or you do not have access to it"),
        };
        Err(ProxyError::ModelNotFound(message))
    }

    /// The candidates for a stored object's endpoint (`route` names it in
    /// errors): every upstream of `provider`, in tier order, tried in that
    /// order, so files, batches and stored responses go to the first healthy
    /// one.
    pub(crate) fn objects(
        &self,
        provider: ProviderKind,
        route: &'static str,
    ) -> Result<Candidates, ProxyError> {
        let mut list: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| self.upstreams[i].kind() == provider)
            .collect();
        if list.is_empty() {
            return Err(ProxyError::NoUpstream(route));
        }
        list.sort_by_key(|&i| self.upstreams[i].priority());
        Ok(Candidates {
            list,
            ordered: true,
        })
    }

    /// The next attempt's target: the first tier with an available candidate,
    /// split by weight (or by `sticky`, a hash of the keygate key, under key
    /// affinity); when none is available, the least recently failed candidate
    /// not yet tried. `None` when every candidate was tried.
    pub(crate) fn pick(
        &self,
        candidates: &Candidates,
        tried: &Tried,
        sticky: u64,
    ) -> Option<Target> {
        let now = Instant::now();
        let sticky = (self.settings.affinity == Affinity::Key).then_some(sticky);
        let mut rest = candidates.list.as_slice();
        while let Some(&first) = rest.first() {
            let priority = self.upstreams[first].priority();
            let split = rest
                .iter()
                .position(|&i| self.upstreams[i].priority() != priority)
                .unwrap_or(rest.len());
            let (tier, after) = rest.split_at(split);
            rest = after;
            let mut open: Vec<(usize, usize)> = tier
                .iter()
                .filter(|&&i| !tried.excludes_upstream(i))
                .filter(|&&i| self.health[i].breaker.gate(now) != Gate::Shut)
                .filter_map(|&i| self.open_key(i, tried, sticky, now).map(|k| (i, k)))
                .collect();
            while !open.is_empty() {
                let chosen = match sticky {
                    _ if candidates.ordered => 0,
                    Some(hash) => self.rendezvous(&open, hash),
                    None => self.round_robin(&open),
                };
                let (upstream, key) = open[chosen];
                let health = &self.health[upstream];
                if health.breaker.enter(now) && health.keys[key].breaker.enter(now) {
                    return Some(Target { upstream, key });
                }
                // Another request took the half-open trial first.
                open.remove(chosen);
            }
        }
        self.least_recently_failed(candidates, tried)
    }

    /// A provider key of `upstream` that is not out: in rotation, or by the
    /// rendezvous hash under key affinity.
    fn open_key(
        &self,
        upstream: usize,
        tried: &Tried,
        sticky: Option<u64>,
        now: Instant,
    ) -> Option<usize> {
        let health = &self.health[upstream];
        let usable = |k: usize| {
            !tried.excludes_key(upstream, k)
                && !health.keys[k].is_disabled()
                && health.keys[k].breaker.gate(now) != Gate::Shut
        };
        let n = health.keys.len();
        if let Some(hash) = sticky {
            return (0..n).filter(|&k| usable(k)).max_by(|&a, &b| {
                score(hash, upstream, a, 1).total_cmp(&score(hash, upstream, b, 1))
            });
        }
        let start = if n > 1 {
            health.rotation.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        (0..n).map(|step| (start + step) % n).find(|&k| usable(k))
    }

    /// Smooth weighted round-robin (nginx's) over `open`.
    fn round_robin(&self, open: &[(usize, usize)]) -> usize {
        if open.len() == 1 {
            return 0;
        }
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut total = 0_i64;
        let mut best = 0;
        for (n, &(upstream, _)) in open.iter().enumerate() {
            let weight = i64::from(self.upstreams[upstream].weight());
            total += weight;
            current[upstream] += weight;
            if current[upstream] > current[open[best].0] {
                best = n;
            }
        }
        current[open[best].0] -= total;
        best
    }

    /// The candidate of `open` with the highest weighted rendezvous score for
    /// `hash`: stable while the set stays the same, and only the keys of an
    /// upstream that leaves move.
    fn rendezvous(&self, open: &[(usize, usize)], hash: u64) -> usize {
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (n, &(upstream, _)) in open.iter().enumerate() {
            let s = score(
                hash,
                upstream,
                usize::MAX,
                self.upstreams[upstream].weight(),
            );
            if s > best_score {
                best = n;
                best_score = s;
            }
        }
        best
    }

    /// When every candidate is out: the one not yet tried that failed longest
    /// ago (never counts as longest), with its least recently failed provider
    /// key that the provider has not refused.
    fn least_recently_failed(&self, candidates: &Candidates, tried: &Tried) -> Option<Target> {
        candidates
            .list
            .iter()
            .filter(|&&i| !tried.excludes_upstream(i))
            .filter_map(|&upstream| {
                let health = &self.health[upstream];
                let key = (0..health.keys.len())
                    .filter(|&k| !tried.excludes_key(upstream, k) && !health.keys[k].is_disabled())
                    .min_by_key(|&k| health.keys[k].breaker.last_failure())?;
                let failed = health
                    .breaker
                    .last_failure()
                    .max(health.keys[key].breaker.last_failure());
                Some((failed, Target { upstream, key }))
            })
            .min_by_key(|(failed, _)| *failed)
            .map(|(_, target)| target)
    }

    /// Records how an attempt at `target` went.
    pub(crate) fn report(&self, target: Target, outcome: Outcome, retry: bool) {
        let now = Instant::now();
        let health = &self.health[target.upstream];
        let key = &health.keys[target.key];
        let m = &self.metrics;
        m.attempted(
            target.upstream,
            match outcome {
                Outcome::Answered => Attempt::Answered,
                Outcome::UpstreamFailed(Failure::Connection, _) => Attempt::ConnectError,
                Outcome::UpstreamFailed(Failure::Timeout, _) => Attempt::Timeout,
                Outcome::UpstreamFailed(Failure::ServerError, _) => Attempt::ServerError,
                Outcome::RateLimited(_) => Attempt::RateLimited,
                Outcome::KeyRefused => Attempt::KeyRefused,
            },
        );
        if retry {
            m.retries.fetch_add(1, Ordering::Relaxed);
        }
        let opened = match outcome {
            Outcome::Answered => {
                health.breaker.succeeded();
                key.breaker.succeeded();
                false
            }
            Outcome::UpstreamFailed(_, wait) => {
                if let Some(wait) = wait {
                    health.breaker.hold_off(now + wait);
                }
                health.breaker.failed(now)
            }
            Outcome::RateLimited(wait) => {
                if let Some(wait) = wait {
                    key.breaker.hold_off(now + wait);
                }
                key.breaker.failed(now)
            }
            Outcome::KeyRefused => {
                let upstream = self.upstreams[target.upstream].name();
                if self.upstreams[target.upstream].has_keys() && key.disable() {
                    bump(&m.keys_disabled, target.upstream);
                    tracing::error!(
                        upstream,
                        key_slot = target.key,
                        "the provider refused this provider key (401/403): it is out of rotation until keygate restarts"
                    );
                }
                false
            }
        };
        if opened {
            bump(&m.breaker_opened, target.upstream);
            tracing::warn!(
                upstream = self.upstreams[target.upstream].name(),
                key_slot = target.key,
                cooldown_ms =
                    u64::try_from(self.settings.breaker.cooldown.as_millis()).unwrap_or(u64::MAX),
                "upstream breaker opened"
            );
        }
    }
}

/// Says at start which upstreams share a model within one tier, so an operator
/// who meant the second as a backup (configuration order once decided) sees
/// that it is now split by weight and can give it a higher `priority`.
fn log_shared_tiers(upstreams: &[Arc<Upstream>]) {
    for (i, a) in upstreams.iter().enumerate() {
        for b in &upstreams[i + 1..] {
            let shared = a.kind() == b.kind()
                && a.priority() == b.priority()
                && a.models()
                    .iter()
                    .any(|p| b.models().iter().any(|q| p.overlaps(q)));
            if shared {
                tracing::info!(
                    first = a.name(),
                    second = b.name(),
                    priority = a.priority(),
                    "two upstreams serve some of the same models in one priority tier: their requests are split by weight; give one a higher priority to make it a backup"
                );
            }
        }
    }
}

/// A stable hash of a keygate key id, for affinity.
pub(crate) fn sticky_hash(key_id: &str) -> u64 {
    // SipHash with fixed keys: the same in every process of a build.
    let mut hasher = std::hash::DefaultHasher::new();
    key_id.hash(&mut hasher);
    hasher.finish()
}

/// Weighted rendezvous score of (`hash`, `upstream`, `key`): `-weight / ln(u)`
/// for `u` uniform in (0, 1) drawn from the three.
fn score(hash: u64, upstream: usize, key: usize, weight: u32) -> f64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (hash, upstream, key).hash(&mut hasher);
    let u = ((hasher.finish() >> 11) as f64 + 0.5) / (1_u64 << 53) as f64;
    -f64::from(weight) / u.ln()
}

#[cfg(test)]
mod tests;
