//! Billing on the request path: reserve before forwarding, read usage from the
//! response as it streams past, settle the actual cost when it ends, and release
//! the reservation on every other path.
//!
//! A request's upper bound is held in a lease (see [`crate::leases`]): a store
//! reservation a key's requests share for a batch window. The `LeaseHold` a
//! request owns is settled with the actual cost when the body ends; dropping it
//! (an early return, an upstream error, a client that leaves before the answer, a
//! panic) returns it uncharged. Settling a lease in the store runs in tasks
//! tracked by [`Billing`], so the request path never waits on a settlement;
//! [`Billing::shutdown`] waits for them. Usage records go to the batching
//! [`UsageWriter`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::StatusCode;
use keygate_billing::{
    ApiShape, Injection, JsonUsage, Price, PriceTable, ReservationRule, StreamUsage, Usage,
    UsageChunkFilter, UsageSource, inject_include_usage, max_output_tokens, reserve_upper_bound,
};
use keygate_store::{
    ApiKey, Ledger, Micros, Reservation, UsageRecord, UsageSource as StoredSource,
};
use tokio_util::task::TaskTracker;

use crate::body::{BodyEnd, BodyObserver};
use crate::error::ProxyError;
use crate::leases::{LeaseHold, Leased, Leases, Settler};
use crate::routing::{Endpoint, ProviderKind};
use crate::usage_writer::{UsageWriter, WriterSettings};

/// Bytes of request body counted as one input token when usage has to be
/// estimated. About four bytes of English text make a token in OpenAI's and
/// Anthropic's tokenizers; the JSON around the text only adds bytes, so the
/// estimate leans high.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

/// How the gateway bills.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// Prices by exact model name.
    pub prices: PriceTable,
    /// Forward models without a price, charging nothing for them.
    pub allow_unpriced: bool,
    /// How much to reserve before forwarding.
    pub rule: ReservationRule,
    /// How long a reservation lives before a sweep may release it. Longer than
    /// any request should take: a request still running when its reservation is
    /// swept is charged all the same when it ends.
    pub reservation_ttl: Duration,
    /// How long a key's requests share one store reservation (a lease) before
    /// it is settled and renewed; zero gives every request its own reservation.
    /// A crash loses at most this much of the charges.
    pub batch_window: Duration,
    /// How often expired reservations are swept.
    pub sweep_interval: Duration,
    /// Usage records older than this are purged; `None` keeps them.
    pub usage_retention: Option<Duration>,
    /// Store the client address in usage records.
    pub log_client_ip: bool,
    /// The usage writer's batching.
    pub writer: WriterSettings,
}

impl BillingConfig {
    /// Defaults for everything but the prices.
    pub fn new(prices: PriceTable) -> Self {
        Self {
            prices,
            allow_unpriced: false,
            rule: ReservationRule::default(),
            reservation_ttl: Duration::from_secs(3600),
            batch_window: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(60),
            usage_retention: Some(Duration::from_secs(90 * 86_400)),
            log_client_ip: false,
            writer: WriterSettings::default(),
        }
    }
}

/// Counters an operator watches; all monotonic.
#[derive(Debug, Default)]
pub struct BillingMetrics {
    /// Requests that held their upper bound (from a lease).
    pub holds: AtomicU64,
    /// Store reservations (leases) that ended: settled or released.
    pub leases_ended: AtomicU64,
    /// Leases settled with a charge.
    pub settled: AtomicU64,
    /// Leases released without a charge.
    pub released: AtomicU64,
    /// Settlements or releases that could not reach the store (the sweep frees
    /// the money later, uncharged).
    pub settle_failures: AtomicU64,
    /// Requests refused with 402.
    pub refused: AtomicU64,
    /// Usage records stored.
    pub records_written: AtomicU64,
    /// Usage records lost: the queue was full, or the store stayed unreachable
    /// through shutdown. Stays 0 in a healthy deployment.
    pub records_dropped: AtomicU64,
    /// Successful responses whose usage was estimated.
    pub usage_estimated: AtomicU64,
    /// Successful responses with no usage reported or estimated.
    pub usage_unknown: AtomicU64,
}

/// A snapshot of [`BillingMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BillingSnapshot {
    /// See [`BillingMetrics::holds`].
    pub holds: u64,
    /// See [`BillingMetrics::leases_ended`].
    pub leases_ended: u64,
    /// See [`BillingMetrics::settled`].
    pub settled: u64,
    /// See [`BillingMetrics::released`].
    pub released: u64,
    /// See [`BillingMetrics::settle_failures`].
    pub settle_failures: u64,
    /// See [`BillingMetrics::refused`].
    pub refused: u64,
    /// See [`BillingMetrics::records_written`].
    pub records_written: u64,
    /// See [`BillingMetrics::records_dropped`].
    pub records_dropped: u64,
    /// See [`BillingMetrics::usage_estimated`].
    pub usage_estimated: u64,
    /// See [`BillingMetrics::usage_unknown`].
    pub usage_unknown: u64,
}

impl BillingMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> BillingSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BillingSnapshot {
            holds: get(&self.holds),
            leases_ended: get(&self.leases_ended),
            settled: get(&self.settled),
            released: get(&self.released),
            settle_failures: get(&self.settle_failures),
            refused: get(&self.refused),
            records_written: get(&self.records_written),
            records_dropped: get(&self.records_dropped),
            usage_estimated: get(&self.usage_estimated),
            usage_unknown: get(&self.usage_unknown),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The billing layer of one gateway.
#[derive(Debug)]
pub struct Billing {
    config: BillingConfig,
    ledger: Arc<dyn Ledger>,
    metrics: Arc<BillingMetrics>,
    leases: Arc<Leases>,
    /// Settlement tasks; waited for at shutdown.
    tasks: TaskTracker,
    writer: UsageWriter,
}

/// What the request path knows about a request when it admits it for billing.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) provider: ProviderKind,
    pub(crate) key: &'a ApiKey,
    pub(crate) model: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) stream: bool,
    pub(crate) client_name: Option<String>,
    /// The client's address; kept only when the operator turned that on.
    pub(crate) client_ip: Option<std::net::IpAddr>,
}

/// One admitted request: its reservation (if its price is above zero), the
/// body to forward (with `include_usage` injected where needed) and what the
/// tap needs to bill it.
#[derive(Debug)]
pub(crate) struct Charge {
    billing: Arc<Billing>,
    hold: Option<LeaseHold>,
    price: Option<Price>,
    shape: Option<ApiShape>,
    /// The client did not ask for the usage chunk; remove it from the stream.
    filter_usage_chunk: bool,
    input_bytes: u64,
    started: Instant,
    /// Taken when the request is answered; a charge dropped with it still here
    /// was cut short before the answer (the client left, or a panic).
    record: Option<UsageRecord>,
}

impl Billing {
    /// The billing layer over `ledger`, with its usage writer started. Must be
    /// called inside a tokio runtime.
    pub fn new(config: BillingConfig, ledger: Arc<dyn Ledger>) -> Self {
        let metrics = Arc::new(BillingMetrics::default());
        let writer = UsageWriter::start(Arc::clone(&ledger), config.writer, Arc::clone(&metrics));
        let tasks = TaskTracker::new();
        let settler = Arc::new(StoreSettler {
            ledger: Arc::clone(&ledger),
            metrics: Arc::clone(&metrics),
            tasks: tasks.clone(),
            give_up: config.reservation_ttl,
        });
        let leases = Arc::new(Leases::new(
            Arc::clone(&ledger),
            settler,
            config.batch_window,
            config.reservation_ttl,
            tasks.clone(),
        ));
        Self {
            config,
            ledger,
            metrics,
            leases,
            tasks,
            writer,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BillingConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> BillingSnapshot {
        self.metrics.snapshot()
    }

    /// Waits for every settlement started so far (at most `limit`), then flushes
    /// and stops the usage writer. Called once the server stops serving.
    pub async fn shutdown(&self, limit: Duration) {
        self.leases.retire_all();
        self.tasks.close();
        if tokio::time::timeout(limit, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.tasks.len(),
                "billing: settlements still pending at shutdown; the sweep releases their reservations"
            );
        }
        self.writer.shutdown(limit).await;
    }

    /// Releases expired reservations; logs, never fails.
    pub async fn sweep(&self) {
        match self.ledger.sweep_reservations(Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(released = n, "billing: expired reservations released"),
            Err(e) => tracing::warn!(error = %e, "billing: reservation sweep failed"),
        }
    }

    /// Purges usage records past the retention period; logs, never fails.
    pub async fn purge(&self) {
        let Some(retention) = self.config.usage_retention else {
            return;
        };
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let Some(before) = Utc::now().checked_sub_signed(retention) else {
            return;
        };
        match self.ledger.purge_usage(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "billing: old usage records purged"),
            Err(e) => tracing::warn!(error = %e, "billing: usage purge failed"),
        }
    }

    /// Admits a request: prices it, reserves the upper bound of its cost and
    /// decides how to read its usage. `body` may be rewritten to ask the upstream
    /// for usage.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        request: Admission<'_>,
        body: &mut Bytes,
        started_at: DateTime<Utc>,
        started: Instant,
    ) -> Result<Charge, ProxyError> {
        let price = match self.config.prices.get(request.model) {
            Some(price) => Some(*price),
            None if self.config.allow_unpriced => None,
            None => return Err(ProxyError::ModelNotPriced(request.model.to_owned())),
        };
        let shape = shape_of(request.endpoint);
        let mut filter_usage_chunk = false;
        if request.stream
            && request.provider == ProviderKind::OpenAi
            && matches!(
                request.endpoint,
                Endpoint::ChatCompletions | Endpoint::Completions
            )
        {
            if let Injection::Rewritten(rewritten) = inject_include_usage(body) {
                *body = Bytes::from(rewritten);
                filter_usage_chunk = true;
            }
        }
        let input_bytes = body.len() as u64;
        let free = |price: &Price| {
            price.input_per_mtok() == Micros::ZERO
                && price.output_per_mtok() == Micros::ZERO
                && price.cached_input_per_mtok().unwrap_or(Micros::ZERO) == Micros::ZERO
        };
        let hold = match &price {
            // A free model holds nothing: no need to read the body's output cap.
            Some(price) if !free(price) => {
                let amount = reserve_upper_bound(
                    price,
                    body.len(),
                    max_output_tokens(body),
                    &self.config.rule,
                );
                if amount > Micros::ZERO {
                    Some(self.reserve(request.key, amount).await?)
                } else {
                    None
                }
            }
            _ => None,
        };
        let record = UsageRecord {
            at: started_at,
            key_id: request.key.id.clone(),
            account_id: request.key.account_id.clone(),
            model: request.model.to_owned(),
            upstream: request.upstream.to_owned(),
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cost: Micros::ZERO,
            latency_ms: 0,
            ttfb_ms: 0,
            stream: request.stream,
            status: 0,
            client_name: request.client_name,
            usage_source: StoredSource::Unknown,
            client_ip: request
                .client_ip
                .filter(|_| self.config.log_client_ip)
                .map(|ip| ip.to_string()),
        };
        Ok(Charge {
            billing: Arc::clone(self),
            hold,
            price,
            shape,
            filter_usage_chunk,
            input_bytes,
            started,
            record: Some(record),
        })
    }

    async fn reserve(&self, key: &ApiKey, amount: Micros) -> Result<LeaseHold, ProxyError> {
        match self.leases.hold(&key.account_id, &key.id, amount).await {
            Ok(Leased::Held(hold)) => {
                bump(&self.metrics.holds);
                Ok(hold)
            }
            Ok(Leased::InsufficientBalance) => {
                bump(&self.metrics.refused);
                Err(ProxyError::InsufficientBalance)
            }
            Ok(Leased::SpendLimitExceeded) => {
                bump(&self.metrics.refused);
                Err(ProxyError::SpendLimitExceeded)
            }
            Err(e) => {
                tracing::warn!(error = %e, "billing: cannot reserve; the store is unavailable");
                Err(ProxyError::StoreUnavailable)
            }
        }
    }

    /// Retires leases past the batch window. Called periodically.
    pub fn renew_leases(&self) {
        self.leases.renew();
    }
}

/// Settles retired leases in the store, in tasks tracked for shutdown, retrying
/// while the store is unreachable.
#[derive(Debug)]
struct StoreSettler {
    ledger: Arc<dyn Ledger>,
    metrics: Arc<BillingMetrics>,
    tasks: TaskTracker,
    /// How long a settlement is retried: the reservation's lifetime.
    give_up: Duration,
}

impl Settler for StoreSettler {
    fn settle(&self, reservation: Reservation, cost: Micros) {
        bump(&self.metrics.leases_ended);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (the process is ending): the sweep releases it.
            bump(&self.metrics.settle_failures);
            return;
        };
        let ledger = Arc::clone(&self.ledger);
        let metrics = Arc::clone(&self.metrics);
        let give_up = self.give_up;
        self.tasks.spawn_on(
            async move {
                // A store outage (a failover) must not cost a lease's charges:
                // retry until the store answers, for as long as the
                // reservation could live. Shutdown waits a bounded time for
                // these tasks; one still failing then is logged below.
                let started = std::time::Instant::now();
                let mut backoff = Duration::from_millis(50);
                let mut warned = false;
                loop {
                    let done = if cost > Micros::ZERO {
                        ledger.settle(&reservation, cost).await
                    } else {
                        ledger.release(&reservation).await
                    };
                    match done {
                        Ok(()) => {
                            if cost > Micros::ZERO {
                                bump(&metrics.settled);
                            } else {
                                bump(&metrics.released);
                            }
                            if warned {
                                tracing::info!(reservation = %reservation.id, "billing: settled after the store came back");
                            }
                            return;
                        }
                        Err(e) if started.elapsed() > give_up => {
                            tracing::error!(
                                error = %e,
                                reservation = %reservation.id,
                                cost_micros = cost.0,
                                "billing: cannot settle; the sweep will release the reservation uncharged"
                            );
                            break;
                        }
                        Err(e) => {
                            if !warned {
                                warned = true;
                                tracing::warn!(error = %e, reservation = %reservation.id, "billing: cannot settle yet; retrying");
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                bump(&metrics.settle_failures);
            },
            &runtime,
        );
    }
}

impl Charge {
    /// Whether the stream must pass through a [`UsageChunkFilter`].
    pub(crate) fn usage_chunk_filter(&self) -> Option<UsageChunkFilter> {
        self.filter_usage_chunk.then(UsageChunkFilter::new)
    }

    /// The tap that reads this request's usage from the upstream's bytes and
    /// bills it when the body ends.
    pub(crate) fn into_tap(
        mut self,
        status: StatusCode,
        event_stream: bool,
        first_byte: Duration,
    ) -> BillingTap {
        let reader = match (self.shape, event_stream) {
            (None, _) => Reader::None,
            (Some(shape), true) => Reader::Stream(Box::new(StreamUsage::new(shape))),
            (Some(shape), false) => Reader::Json(JsonUsage::new(shape)),
        };
        let mut record = self.record.take();
        if let Some(record) = &mut record {
            record.status = status.as_u16();
            record.ttfb_ms = millis(first_byte);
        }
        BillingTap {
            billing: Arc::clone(&self.billing),
            hold: self.hold.take(),
            price: self.price,
            reader,
            input_bytes: self.input_bytes,
            started: self.started,
            record,
        }
    }

    /// Records a request that got no answer to stream (the upstream failed or
    /// timed out). The reservation is released when `self` drops.
    pub(crate) fn abandon(mut self, status: StatusCode) {
        self.close(status.as_u16());
    }

    fn close(&mut self, status: u16) {
        if let Some(mut record) = self.record.take() {
            record.status = status;
            record.latency_ms = millis(self.started.elapsed());
            self.billing.writer.push(record);
        }
        drop(self.hold.take());
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        // Cut short before the answer: 499, as proxies log a client that left.
        self.close(499);
    }
}

#[derive(Debug)]
enum Reader {
    None,
    Json(JsonUsage),
    Stream(Box<StreamUsage>),
}

/// Reads usage from the upstream's bytes and bills the request when its body
/// ends. Holds the reservation until then.
#[derive(Debug)]
pub(crate) struct BillingTap {
    billing: Arc<Billing>,
    hold: Option<LeaseHold>,
    price: Option<Price>,
    reader: Reader,
    input_bytes: u64,
    started: Instant,
    record: Option<UsageRecord>,
}

impl BillingTap {
    /// What to charge for, from how the body ended and what was read.
    fn usage(&self, success: bool, end: BodyEnd) -> Option<Usage> {
        if !success {
            return None;
        }
        let (read, content_events) = match &self.reader {
            // Speech answers are audio: no usage to read. Counted as unknown
            // (`keygate_usage_unknown_total`), not logged per request.
            Reader::None => {
                bump(&self.billing.metrics.usage_unknown);
                return None;
            }
            Reader::Json(json) => (json.usage(), 0),
            Reader::Stream(stream) => (stream.usage(), stream.content_events()),
        };
        if read.source == UsageSource::Reported {
            return Some(read);
        }
        let estimate = || Usage {
            input_tokens: if read.input_tokens > 0 {
                read.input_tokens
            } else {
                self.input_bytes.div_ceil(ESTIMATE_BYTES_PER_TOKEN)
            },
            output_tokens: read.output_tokens.max(content_events),
            cached_input_tokens: read.cached_input_tokens,
            source: UsageSource::Estimated,
        };
        match (end, &self.reader) {
            // The client left: the upstream worked on the input and on what was
            // streamed so far.
            (BodyEnd::Cancelled, _) => Some(estimate()),
            // The upstream broke off after sending content.
            (BodyEnd::Failed, _) if content_events > 0 => Some(estimate()),
            (BodyEnd::Failed, _) => None,
            // A complete stream without its final usage chunk.
            (BodyEnd::Complete, Reader::Stream(_)) => Some(estimate()),
            // A complete JSON answer without usage: nothing to go on.
            (BodyEnd::Complete, _) => Some(read),
        }
    }
}

impl BodyObserver for BillingTap {
    fn on_data(&mut self, data: &Bytes) {
        match &mut self.reader {
            Reader::None => {}
            Reader::Json(json) => json.push(data),
            Reader::Stream(stream) => stream.push(data),
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let success = StatusCode::from_u16(record.status).is_ok_and(|s| s.is_success());
        let usage = self.usage(success, end);
        let cost = match (&usage, &self.price) {
            (Some(usage), Some(price)) if usage.source != UsageSource::Unknown => price.cost(usage),
            _ => Micros::ZERO,
        };
        if let Some(usage) = &usage {
            record.input_tokens = usage.input_tokens;
            record.output_tokens = usage.output_tokens;
            record.cached_tokens = usage.cached_input_tokens;
            record.usage_source = match usage.source {
                UsageSource::Reported => StoredSource::Reported,
                UsageSource::Estimated => {
                    bump(&self.billing.metrics.usage_estimated);
                    StoredSource::Estimated
                }
                UsageSource::Unknown => {
                    bump(&self.billing.metrics.usage_unknown);
                    tracing::warn!(
                        model = record.model.as_str(),
                        upstream = record.upstream.as_str(),
                        "billing: the upstream reported no usage; nothing charged"
                    );
                    StoredSource::Unknown
                }
            };
        }
        record.cost = cost;
        record.latency_ms = millis(self.started.elapsed());
        if end != BodyEnd::Complete && success {
            // What the client got is not what the upstream meant to send.
            record.status = match end {
                BodyEnd::Cancelled => 499,
                _ => 502,
            };
        }
        if let Some(hold) = self.hold.take() {
            hold.settle(cost);
        }
        self.billing.writer.push(record);
    }
}

impl Drop for BillingTap {
    fn drop(&mut self) {
        // A body dropped without an end (it never is, but a panic mid-poll
        // could): bill it as cancelled rather than strand the reservation.
        if self.record.is_some() {
            self.on_end(BodyEnd::Cancelled);
        }
    }
}

/// Which reader an endpoint's responses need. Image and transcription answers
/// of token-priced models (`gpt-image-1`, `gpt-4o-transcribe`) carry a `usage`
/// with `input_tokens`/`output_tokens`, read like a completion's; speech answers
/// are audio and carry none.
fn shape_of(endpoint: Endpoint) -> Option<ApiShape> {
    match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Completions
        | Endpoint::ImageGenerations
        | Endpoint::ImageEdits
        | Endpoint::ImageVariations
        | Endpoint::AudioTranscriptions
        | Endpoint::AudioTranslations => Some(ApiShape::OpenAiCompletions),
        Endpoint::Embeddings => Some(ApiShape::OpenAiEmbeddings),
        Endpoint::Responses => Some(ApiShape::OpenAiResponses),
        Endpoint::Messages => Some(ApiShape::AnthropicMessages),
        Endpoint::AudioSpeech | Endpoint::ListModels | Endpoint::GetModel => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
