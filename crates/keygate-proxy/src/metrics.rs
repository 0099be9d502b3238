//! The gateway's Prometheus metrics, through `prometheus-client`: the families
//! the request path updates ([`GatewayMetrics`]), and one scrape's exposition
//! ([`Exposition`]), which adds the counters other parts keep as atomics
//! (connections, upstreams and their breakers, limits, billing, the store).
//!
//! Labels stay bounded: routes are canonical, statuses are HTTP codes,
//! upstreams and models come from the config (any other model is counted as
//! `other`), and no key id, account id or client address is a label unless
//! `[metrics] per_key` asks for the per-key families.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use keygate_billing::Usage;
use keygate_store::{AccountId, KeyId, Micros};
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::body::BodyEnd;

/// What `[metrics]` asks of the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Whether the gateway keeps metrics at all; off, `/metrics` is 404 and
    /// the request path records nothing.
    pub enabled: bool,
    /// Whether `/metrics` is answered on the gateway's own port (off when the
    /// binary serves it on a listener of its own).
    pub on_gateway_port: bool,
    /// Adds the per-key families (`keygate_key_*`, labelled by key id and
    /// account id): one series per key, so off by default.
    pub per_key: bool,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            on_gateway_port: true,
            per_key: false,
        }
    }
}

/// A label value from the config (an upstream or model name): cheap to clone
/// on the request path.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct Name(Arc<str>);

impl Name {
    fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// The value of a model label for a model the config does not name.
const OTHER_MODEL: &str = "other";
/// The value of an upstream label for a request no upstream answered.
const NO_UPSTREAM: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    upstream: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    route: &'static str,
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: Name,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key_id: String,
    account_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyTokenLabels {
    key_id: String,
    account_id: String,
    direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One model's token and cost series, taken from their families once.
#[derive(Clone, Debug)]
struct ModelSeries {
    input: Counter,
    output: Counter,
    cached_input: Counter,
    cost: Counter,
}

impl ModelSeries {
    fn new(
        tokens: &Family<TokenLabels, Counter>,
        cost: &Family<ModelLabels, Counter>,
        model: Name,
    ) -> Self {
        let token = |direction| {
            let labels = TokenLabels {
                model: model.clone(),
                direction,
            };
            (*tokens.get_or_create(&labels)).clone()
        };
        Self {
            input: token("input"),
            output: token("output"),
            cached_input: token("cached_input"),
            cost: (*cost.get_or_create(&ModelLabels {
                model: model.clone(),
            }))
            .clone(),
        }
    }
}

/// Request latencies, from a millisecond to about nine minutes (a long
/// generation): 20 buckets, each twice the last.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The families the request path updates. Cloning shares them.
#[derive(Clone, Debug)]
pub(crate) struct GatewayMetrics {
    per_key: bool,
    /// Model names from the config, each with its series of
    /// `keygate_tokens_total` and `keygate_cost_micros_total`, made at start
    /// (so they read 0 before the first request) and shared with the
    /// families.
    models: Arc<HashMap<Box<str>, ModelSeries>>,
    /// Upstream names from the config, in routing order.
    upstreams: Arc<Vec<Name>>,
    other_model: ModelSeries,
    no_upstream: Name,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RouteLabels>,
    first_byte: HistogramFamily<RouteLabels>,
    incomplete: Family<EndLabels, Counter>,
    in_flight: Gauge<i64, AtomicI64>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    /// Requests answered 5xx because the store failed.
    request_store_errors: Counter,
    key_requests: Family<KeyLabels, Counter>,
    key_tokens: Family<KeyTokenLabels, Counter>,
    key_cost: Family<KeyLabels, Counter>,
}

/// One request the gateway answered, as the metrics count it.
#[derive(Debug)]
pub(crate) struct Finished<'a> {
    pub(crate) route: &'static str,
    pub(crate) status: u16,
    pub(crate) upstream: Option<&'a str>,
    /// The key and its account, for the per-key families.
    pub(crate) key: Option<(&'a str, &'a str)>,
    pub(crate) elapsed: Duration,
    /// Until the first byte of a forwarded body; `None` for keygate's own
    /// answers.
    pub(crate) first_byte: Option<Duration>,
    /// How a forwarded body ended; `None` for keygate's own answers.
    pub(crate) end: Option<BodyEnd>,
}

impl GatewayMetrics {
    /// Families for a gateway whose config names these upstreams and models.
    pub(crate) fn new<'a>(
        per_key: bool,
        upstreams: impl IntoIterator<Item = &'a str>,
        models: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let tokens = Family::default();
        let cost = Family::default();
        let series = |name: &str| ModelSeries::new(&tokens, &cost, Name::new(name));
        let models = models
            .into_iter()
            .map(|m| (Box::from(m), series(m)))
            .collect();
        let other_model = series(OTHER_MODEL);
        Self {
            per_key,
            models: Arc::new(models),
            upstreams: Arc::new(upstreams.into_iter().map(Name::new).collect()),
            other_model,
            no_upstream: Name::new(NO_UPSTREAM),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            first_byte: Family::new_with_constructor(latency_histogram),
            incomplete: Family::default(),
            in_flight: Gauge::default(),
            tokens,
            cost,
            auth_failures: Family::default(),
            request_store_errors: Counter::default(),
            key_requests: Family::default(),
            key_tokens: Family::default(),
            key_cost: Family::default(),
        }
    }

    /// Whether the per-key families are on.
    pub(crate) fn per_key(&self) -> bool {
        self.per_key
    }

    fn model(&self, model: &str) -> &ModelSeries {
        self.models.get(model).unwrap_or(&self.other_model)
    }

    fn upstream(&self, upstream: Option<&str>) -> Name {
        upstream
            .and_then(|name| self.upstreams.iter().find(|u| &*u.0 == name))
            .unwrap_or(&self.no_upstream)
            .clone()
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(Arc::clone(self))
    }

    /// Counts a request answered 5xx because the store failed.
    pub(crate) fn store_error(&self) {
        self.request_store_errors.inc();
    }

    /// Requests answered 5xx because the store failed, so far.
    pub(crate) fn request_store_errors(&self) -> u64 {
        self.request_store_errors.get()
    }

    /// Counts one answered request: its status, how long it took, and for a
    /// forwarded body the first byte and how it ended.
    pub(crate) fn finished(&self, request: &Finished<'_>) {
        let route = request.route;
        self.requests
            .get_or_create(&RequestLabels {
                route,
                status: request.status,
                upstream: self.upstream(request.upstream),
            })
            .inc();
        let labels = RouteLabels { route };
        self.duration
            .get_or_create(&labels)
            .observe(request.elapsed.as_secs_f64());
        if let Some(first_byte) = request.first_byte {
            self.first_byte
                .get_or_create(&labels)
                .observe(first_byte.as_secs_f64());
        }
        let end = match request.end {
            Some(BodyEnd::Cancelled) => Some("client_cancelled"),
            Some(BodyEnd::Failed) => Some("upstream_broke"),
            Some(BodyEnd::Complete) | None => None,
        };
        if let Some(end) = end {
            self.incomplete
                .get_or_create(&EndLabels { route, end })
                .inc();
        }
        if let (true, Some(key)) = (self.per_key, request.key) {
            self.key_requests.get_or_create(&key_labels(key)).inc();
        }
    }

    /// Counts a request's tokens and what it was charged, by model.
    pub(crate) fn usage(
        &self,
        model: &str,
        key: (&KeyId, &AccountId),
        usage: &Usage,
        charged: Micros,
    ) {
        let series = self.model(model);
        series.input.inc_by(usage.input_tokens);
        series.output.inc_by(usage.output_tokens);
        series.cached_input.inc_by(usage.cached_input_tokens);
        let charged = u64::try_from(charged.0).unwrap_or(0);
        series.cost.inc_by(charged);
        if self.per_key {
            let counts = [
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cached_input", usage.cached_input_tokens),
            ];
            let labels = key_labels((key.0.as_str(), key.1.as_str()));
            for (direction, n) in counts {
                self.key_tokens
                    .get_or_create(&KeyTokenLabels {
                        key_id: labels.key_id.clone(),
                        account_id: labels.account_id.clone(),
                        direction,
                    })
                    .inc_by(n);
            }
            self.key_cost.get_or_create(&labels).inc_by(charged);
        }
    }

    /// Counts a failed authentication, by the error's code.
    pub(crate) fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Registers the families in `registry` (which ends each help text with
    /// a period).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "keygate_requests",
            "Requests answered, by canonical route, HTTP status and the upstream that answered (none: keygate answered itself)",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "keygate_request_duration",
            "Time from the request's arrival to the last byte of its answer (streams included), by route",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "keygate_time_to_first_byte",
            "Time from the request's arrival to the first byte of a forwarded answer's body (for a stream, its first event), by route",
            Unit::Seconds,
            self.first_byte.clone(),
        );
        registry.register(
            "keygate_responses_incomplete",
            "Forwarded answers that ended early: the client left (client_cancelled) or the upstream broke off (upstream_broke)",
            self.incomplete.clone(),
        );
        registry.register(
            "keygate_in_flight_requests",
            "Requests being answered now, streams included",
            self.in_flight.clone(),
        );
        registry.register(
            "keygate_tokens",
            "Tokens billed, by model (models the config does not name are 'other') and direction (input includes cached_input)",
            self.tokens.clone(),
        );
        registry.register(
            "keygate_cost_micros",
            "Money charged, in micro-units of the account's credit, by model",
            self.cost.clone(),
        );
        registry.register(
            "keygate_auth_failures",
            "Requests refused with 401, by reason (the error code)",
            self.auth_failures.clone(),
        );
        if self.per_key {
            registry.register(
                "keygate_key_requests",
                "Requests answered, by key and account ([metrics] per_key)",
                self.key_requests.clone(),
            );
            registry.register(
                "keygate_key_tokens",
                "Tokens billed, by key, account and direction ([metrics] per_key)",
                self.key_tokens.clone(),
            );
            registry.register(
                "keygate_key_cost_micros",
                "Money charged, by key and account ([metrics] per_key)",
                self.key_cost.clone(),
            );
        }
    }
}

fn key_labels((key, account): (&str, &str)) -> KeyLabels {
    KeyLabels {
        key_id: key.to_owned(),
        account_id: account.to_owned(),
    }
}

/// A request in flight, and the families it is counted in when it ends;
/// dropping it counts the request out.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<GatewayMetrics>);

impl InFlight {
    /// The families.
    pub(crate) fn metrics(&self) -> &GatewayMetrics {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The content type of the exposition: OpenMetrics text, which Prometheus
/// asks for first and every scraper since Prometheus 2.5 reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` as OpenMetrics text.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; an encoder error would be a bug in a
    // label, and leaves what was written so far.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
        let _ = writeln!(out, "# EOF");
    }
    out
}

/// Writes a counter that another part keeps as an atomic, at scrape time.
pub(crate) fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes a gauge read at scrape time.
pub(crate) fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes a labelled counter or gauge read at scrape time: one series per
/// label set.
pub(crate) fn series<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        let sample = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => {
                ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample)?
            }
            _ => ConstCounter::new(value).encode(sample)?,
        }
    }
    Ok(())
}
