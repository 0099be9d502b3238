//! The request log line (`keygate::request`): one per request, metadata only —
//! method, canonical route, status, model, key id, upstream, upstream attempts,
//! timings, bytes and outcome. Never a key, a body or a query string.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::body::{BodyEnd, BodyObserver};
use crate::error::ErrorKind;
use crate::metrics::{Finished, InFlight};
use crate::traces::{RequestSpan, SpanFields};

/// What the log line says about a request, filled in as the pipeline learns it.
#[derive(Debug)]
pub(crate) struct LogFields {
    pub(crate) method: Method,
    pub(crate) started: Instant,
    /// The canonical route, or `unknown`.
    pub(crate) route: &'static str,
    pub(crate) model: Option<String>,
    pub(crate) key_id: Option<String>,
    /// The key's account, for the per-key metric families.
    pub(crate) account_id: Option<String>,
    pub(crate) upstream: Option<String>,
    /// Upstream attempts made (retries and failover included).
    pub(crate) attempts: u32,
    /// The request's span, when tracing is on; it ends with the log line.
    pub(crate) span: Option<RequestSpan>,
    /// The request in the metrics, while it is in flight; `None` when metrics
    /// are off, and once the fields are taken by a forwarded answer.
    pub(crate) meter: Option<InFlight>,
    /// The fields went to a forwarded answer's log observer.
    pub(crate) taken: bool,
}

impl LogFields {
    pub(crate) fn new(method: Method, started: Instant) -> Self {
        Self {
            method,
            started,
            route: "unknown",
            model: None,
            key_id: None,
            account_id: None,
            upstream: None,
            attempts: 0,
            span: None,
            meter: None,
            taken: false,
        }
    }

    /// The fields so far, leaving this value with the method, start and route
    /// only.
    pub(crate) fn take(&mut self) -> Self {
        self.taken = true;
        Self {
            method: self.method.clone(),
            started: self.started,
            route: self.route,
            model: self.model.take(),
            key_id: self.key_id.take(),
            account_id: self.account_id.take(),
            upstream: self.upstream.take(),
            attempts: self.attempts,
            span: self.span.take(),
            meter: self.meter.take(),
            taken: false,
        }
    }

    /// Logs a request the gateway answered itself with an error. The outcome is
    /// the error's code; `fault` says who caused it.
    pub(crate) fn log_error(&mut self, kind: ErrorKind) {
        self.count(kind.status, None, None);
        self.log(kind.status, None, 0, kind.code, kind.source.as_str());
        self.end_span(kind.status, Some(kind.code));
    }

    /// Ends the request's span, if it has one.
    fn end_span(&mut self, status: StatusCode, error: Option<&str>) {
        if let Some(span) = self.span.take() {
            let fields = SpanFields {
                route: self.route,
                model: self.model.as_deref(),
                key_id: self.key_id.as_deref(),
                upstream: self.upstream.as_deref(),
                attempts: self.attempts,
            };
            span.end(&fields, status, error);
        }
    }

    /// Logs a request the gateway answered itself (`/v1/models`, the key's
    /// own view), unless a forwarded answer took the fields.
    pub(crate) fn log_answer(&mut self, status: StatusCode) {
        if self.taken {
            return;
        }
        self.count(status, None, None);
        self.log(status, None, 0, "complete", "-");
        self.end_span(status, None);
    }

    /// Counts the request in the metrics, when they are on.
    fn count(&self, status: StatusCode, first_byte: Option<Duration>, end: Option<BodyEnd>) {
        let Some(meter) = &self.meter else {
            return;
        };
        meter.metrics().finished(&Finished {
            route: self.route,
            status: status.as_u16(),
            upstream: self.upstream.as_deref(),
            key: self.key_id.as_deref().zip(self.account_id.as_deref()),
            elapsed: self.started.elapsed(),
            first_byte,
            end,
        });
    }

    /// The observer that logs a forwarded request when its body ends.
    pub(crate) fn into_observer(self, status: StatusCode, first_byte: Duration) -> AccessLog {
        AccessLog {
            fields: self,
            status,
            first_byte,
            first_data: None,
            bytes: 0,
        }
    }

    fn log(
        &self,
        status: StatusCode,
        first_byte: Option<Duration>,
        bytes: u64,
        outcome: &str,
        fault: &str,
    ) {
        tracing::info!(
            target: "keygate::request",
            method = self.method.as_str(),
            route = self.route,
            status = status.as_u16(),
            model = self.model.as_deref().unwrap_or("-"),
            key_id = self.key_id.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            attempts = self.attempts,
            latency_us = self.started.elapsed().as_micros() as u64,
            first_byte_us = first_byte.map_or(0, |d| d.as_micros() as u64),
            bytes,
            outcome,
            fault,
        );
    }
}

/// Logs the request line when the response body ends, counting the bytes the
/// client got.
pub(crate) struct AccessLog {
    fields: LogFields,
    status: StatusCode,
    first_byte: Duration,
    /// When the first byte of the body went by.
    first_data: Option<Duration>,
    bytes: u64,
}

impl BodyObserver for AccessLog {
    fn on_data(&mut self, data: &Bytes) {
        if self.first_data.is_none() && !data.is_empty() {
            self.first_data = Some(self.fields.started.elapsed());
        }
        self.bytes += data.len() as u64;
    }

    fn on_end(&mut self, end: BodyEnd) {
        let (outcome, fault) = match end {
            // The upstream's own error answer, passed through.
            BodyEnd::Complete if self.status.is_server_error() => ("complete", "upstream"),
            BodyEnd::Complete => ("complete", "-"),
            // The client went away, or shutdown's grace ran out.
            BodyEnd::Cancelled => ("client_cancelled", "client"),
            BodyEnd::Failed => ("upstream_broke", "upstream"),
        };
        // An empty body's first byte is its head.
        let first_data = self.first_data.unwrap_or(self.first_byte);
        self.fields.count(self.status, Some(first_data), Some(end));
        self.fields.log(
            self.status,
            Some(self.first_byte),
            self.bytes,
            outcome,
            fault,
        );
        // A failure: how the body ended, else the upstream's error status.
        let status = self.status;
        let error = match end {
            BodyEnd::Complete if status.is_client_error() || status.is_server_error() => {
                Some(status.as_str())
            }
            BodyEnd::Complete => None,
            BodyEnd::Cancelled | BodyEnd::Failed => Some(outcome),
        };
        self.fields.end_span(self.status, error);
    }
}
