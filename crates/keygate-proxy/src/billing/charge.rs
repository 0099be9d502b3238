//! One billed request, from admission to settlement: the [`Charge`] holds the
//! request's share of a lease, attaches itself to the response (reading usage
//! from the upstream's bytes, hiding the usage chunk keygate asked for), and
//! settles when the body ends. Dropped before an answer, it returns its hold
//! uncharged and records the attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{StatusCode, header, response};
use keygate_billing::{
    ApiShape, JsonUsage, Price, StreamUsage, Usage, UsageChunkFilter, UsageSource,
};
use keygate_store::{Micros, UsageRecord};

use super::leases::LeaseHold;
use super::metrics::bump;
use super::usage_writer::UsageWriter;
use crate::body::{BodyEnd, BodyFilter, BodyObserver, GatewayBody};
use crate::endpoint::Endpoint;
use crate::metrics::GatewayMetrics;
use crate::traces::UsageSlot;

/// Bytes of request body counted as one input token when usage has to be
/// estimated. About four bytes of English text make a token in OpenAI's and
/// Anthropic's tokenizers; the JSON around the text only adds bytes, so the
/// estimate leans high.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 4;

/// One admitted request: its hold (if its price is above zero), how to read its
/// usage, and its usage record. It attaches itself to the response with
/// [`Charge::attach`] and settles when the body ends; dropped before that, it
/// returns the hold uncharged.
#[derive(Debug)]
pub(crate) struct Charge {
    writer: Arc<UsageWriter>,
    hold: Option<LeaseHold>,
    price: Option<Price>,
    shape: Option<ApiShape>,
    /// The client did not ask for the usage chunk; remove it from the stream.
    filter_usage_chunk: bool,
    input_bytes: u64,
    started: Instant,
    /// Set when the answer starts; `None` while there is none.
    reader: Option<Reader>,
    /// Taken when the request is billed; a charge dropped with it still here
    /// was cut short (the client left, or a panic).
    record: Option<UsageRecord>,
    /// Where the request's tokens and cost are counted, when metrics are on.
    metrics: Option<Arc<GatewayMetrics>>,
    /// Where the request's span takes the usage billed, when it is traced.
    usage_slot: Option<UsageSlot>,
    /// The request's limits, settled with the usage read here: one reading of
    /// the body for both.
    limits: Option<Box<dyn SettledWithUsage>>,
}

/// What settles with the usage a charge read, when the body ends (the
/// request's limits): the charge carries it there.
pub(crate) trait SettledWithUsage: std::fmt::Debug + Send + 'static {
    /// Whether the answer was a success, and the usage read (`None`: none,
    /// or an error answer); once.
    fn settle(self: Box<Self>, success: bool, used: Option<&Usage>);
}

/// What [`Charge::new`] needs besides the writer.
#[derive(Debug)]
pub(crate) struct ChargeParts {
    pub(crate) hold: Option<LeaseHold>,
    pub(crate) price: Option<Price>,
    pub(crate) endpoint: Endpoint,
    pub(crate) filter_usage_chunk: bool,
    pub(crate) input_bytes: u64,
    pub(crate) started: Instant,
    pub(crate) record: UsageRecord,
}

#[derive(Debug)]
enum Reader {
    None,
    Json(JsonUsage),
    Stream(Box<StreamUsage>),
    /// A stream whose usage chunk is removed: the filter reads the usage in
    /// the same pass.
    Filtered(Box<UsageChunkFilter>),
}

impl Charge {
    pub(crate) fn new(writer: Arc<UsageWriter>, parts: ChargeParts) -> Self {
        Self {
            writer,
            hold: parts.hold,
            price: parts.price,
            shape: shape_of(parts.endpoint),
            filter_usage_chunk: parts.filter_usage_chunk,
            input_bytes: parts.input_bytes,
            started: parts.started,
            reader: None,
            record: Some(parts.record),
            metrics: None,
            usage_slot: None,
            limits: None,
        }
    }

    /// Counts the request's tokens and cost in `metrics` when it settles.
    pub(crate) fn count_in(&mut self, metrics: Arc<GatewayMetrics>) {
        self.metrics = Some(metrics);
    }

    /// Attaches the charge to the upstream's answer: it reads usage from the
    /// upstream's own bytes, then (for a successful event stream whose client did
    /// not ask for usage) removes the usage chunk from what follows it, and
    /// settles when the body ends. Add it before any other stage, so they see
    /// what the client gets.
    pub(crate) fn attach(
        mut self,
        head: &mut response::Parts,
        body: GatewayBody,
        first_byte: Duration,
    ) -> GatewayBody {
        let event_stream = head
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let filter = self.filter_usage_chunk && event_stream && head.status.is_success();
        self.reader = Some(match (self.shape, event_stream) {
            (None, _) => Reader::None,
            (Some(shape), true) if filter => {
                Reader::Filtered(Box::new(UsageChunkFilter::reading_usage(shape)))
            }
            (Some(shape), true) => Reader::Stream(Box::new(StreamUsage::new(shape))),
            (Some(shape), false) => Reader::Json(JsonUsage::new(shape)),
        });
        if let Some(record) = &mut self.record {
            record.status = head.status.as_u16();
            record.ttfb_ms = millis(first_byte);
        }
        if matches!(self.reader, Some(Reader::Filtered(_))) {
            head.headers.remove(header::CONTENT_LENGTH);
            return body.filter(Box::new(self));
        }
        body.observe(Box::new(self))
    }

    /// Carries `limits` to the body's end and settles them with the usage read
    /// for the bill, instead of their reading it again.
    pub(crate) fn carry(&mut self, limits: Box<dyn SettledWithUsage>) {
        self.limits = Some(limits);
    }

    /// Hands the usage billed to the request's span, at the body's end.
    pub(crate) fn report_usage(&mut self, slot: UsageSlot) {
        self.usage_slot = Some(slot);
    }

    /// Names the upstream that served the answer (or was tried last) and the
    /// attempts the request took, for the usage record.
    pub(crate) fn served_by(&mut self, upstream: &str, attempts: u32) {
        if let Some(record) = &mut self.record {
            upstream.clone_into(&mut record.upstream);
            record.attempts = attempts;
        }
    }

    /// Records a request that got no answer to stream (the upstream failed or
    /// timed out, answered `status` by the gateway). The hold is returned
    /// uncharged.
    pub(crate) fn abandon(mut self, status: StatusCode) {
        self.close(status.as_u16());
    }

    fn close(&mut self, status: u16) {
        if let Some(mut record) = self.record.take() {
            record.status = status;
            record.latency_ms = millis(self.started.elapsed());
            self.writer.push(record);
        }
        drop(self.hold.take());
    }

    /// What to charge for, from how the body ended and what was read.
    fn usage(&self, success: bool, end: BodyEnd) -> Option<Usage> {
        if !success {
            return None;
        }
        let metrics = self.writer.metrics();
        let (read, content_events) = match self.reader.as_ref()? {
            // Speech answers are audio: no usage to read. Counted as unknown
            // (`keygate_usage_unknown_total`), not logged per request.
            Reader::None => {
                bump(&metrics.usage_unknown);
                return None;
            }
            Reader::Json(json) => (json.usage(), 0),
            Reader::Stream(stream) => (stream.usage(), stream.content_events()),
            Reader::Filtered(filter) => filter
                .reader()
                .map_or((Usage::default(), 0), |s| (s.usage(), s.content_events())),
        };
        if matches!(read.source, UsageSource::Reported | UsageSource::Capped) {
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
            (BodyEnd::Complete, Some(Reader::Stream(_) | Reader::Filtered(_))) => Some(estimate()),
            // A complete JSON answer without usage: nothing to go on.
            (BodyEnd::Complete, _) => Some(read),
        }
    }
}

impl BodyObserver for Charge {
    fn on_data(&mut self, data: &Bytes) {
        match &mut self.reader {
            None | Some(Reader::None) => {}
            Some(Reader::Json(json)) => json.push(data),
            Some(Reader::Stream(stream)) => stream.push(data),
            // Read as it is filtered.
            Some(Reader::Filtered(_)) => {}
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        self.settle(end);
    }
}

/// A charge whose usage chunk is removed rides on the body as its filter.
impl BodyFilter for Charge {
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        match &mut self.reader {
            Some(Reader::Filtered(filter)) => filter.push(data),
            _ => data.to_vec(),
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match &mut self.reader {
            Some(Reader::Filtered(filter)) => filter.finish(),
            _ => Vec::new(),
        }
    }

    fn on_end(&mut self, end: BodyEnd) {
        self.settle(end);
    }
}

impl Charge {
    /// Settles the request as its body ended; once.
    fn settle(&mut self, end: BodyEnd) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let success = StatusCode::from_u16(record.status).is_ok_and(|s| s.is_success());
        let usage = self.usage(success, end);
        if let Some(limits) = self.limits.take() {
            limits.settle(success, usage.as_ref());
        }
        let cost = match (&usage, &self.price) {
            (Some(usage), Some(price)) if usage.source != UsageSource::Unknown => price.cost(usage),
            _ => Micros::ZERO,
        };
        // What is charged: the cost, cut to the hold unless the operator lets
        // requests be charged past it; nothing without a hold.
        let charged = match self.hold.take() {
            Some(hold) => hold.settle(cost),
            None => Micros::ZERO,
        };
        if let (Some(usage), Some(slot)) = (&usage, &self.usage_slot) {
            slot.set(usage.input_tokens, usage.output_tokens);
        }
        if let Some(usage) = &usage {
            let metrics = self.writer.metrics();
            record.input_tokens = usage.input_tokens;
            record.output_tokens = usage.output_tokens;
            record.cached_tokens = usage.cached_input_tokens;
            record.usage_source = if charged < cost {
                UsageSource::Capped
            } else {
                usage.source
            };
            match record.usage_source {
                UsageSource::Reported => {}
                UsageSource::Estimated => bump(&metrics.usage_estimated),
                UsageSource::Capped => {
                    bump(&metrics.usage_capped);
                    tracing::warn!(
                        model = record.model.as_str(),
                        upstream = record.upstream.as_str(),
                        cost_micros = cost.0,
                        charged_micros = charged.0,
                        "billing: the upstream's usage was out of bounds or past the reservation; charge capped"
                    );
                }
                UsageSource::Unknown => {
                    bump(&metrics.usage_unknown);
                    tracing::warn!(
                        model = record.model.as_str(),
                        upstream = record.upstream.as_str(),
                        "billing: the upstream reported no usage; nothing charged"
                    );
                }
            }
        }
        record.cost = charged;
        if let (Some(metrics), Some(usage)) = (&self.metrics, &usage) {
            metrics.usage(
                &record.model,
                (&record.key_id, &record.account_id),
                usage,
                charged,
            );
        }
        record.latency_ms = millis(self.started.elapsed());
        if end != BodyEnd::Complete && success {
            // What the client got is not what the upstream meant to send.
            record.status = match end {
                BodyEnd::Cancelled => 499,
                _ => 502,
            };
        }
        self.writer.push(record);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        match self.reader {
            // Cut short before the answer: 499, as proxies log a client that
            // left.
            None => self.close(499),
            // A body dropped without an end (it never is, but a panic mid-poll
            // could): bill it as cancelled rather than strand the hold.
            Some(_) => self.settle(BodyEnd::Cancelled),
        }
    }
}

/// Which reader an endpoint's responses need. Image and transcription answers
/// of token-priced models (`gpt-image-1`, `gpt-4o-transcribe`) carry a `usage`
/// with `input_tokens`/`output_tokens`, read like a completion's; speech answers
/// are audio and carry none.
pub(crate) fn shape_of(endpoint: Endpoint) -> Option<ApiShape> {
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
        // Speech is audio; the rest are never billed.
        Endpoint::AudioSpeech
        | Endpoint::ListModels
        | Endpoint::GetModel
        | Endpoint::KeyInfo
        | Endpoint::KeyUsage
        | Endpoint::Quota
        | Endpoint::CountTokens
        | Endpoint::GetResponse
        | Endpoint::DeleteResponse
        | Endpoint::ResponseInputItems
        | Endpoint::ListFiles
        | Endpoint::UploadFile
        | Endpoint::GetFile
        | Endpoint::DeleteFile
        | Endpoint::FileContent
        | Endpoint::ListBatches
        | Endpoint::CreateBatch
        | Endpoint::GetBatch
        | Endpoint::CancelBatch => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
