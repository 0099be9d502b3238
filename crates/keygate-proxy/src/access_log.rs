//! The request log line (`keygate::request`): one per request, metadata only —
//! method, canonical route, status, model, key id, upstream, upstream attempts,
//! timings, bytes and outcome. Never a key, a body or a query string.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::body::{BodyEnd, BodyObserver};
use crate::error::ErrorKind;
use crate::traces::RequestSpan;

/// What the log line says about a request, filled in as the pipeline learns it.
#[derive(Debug)]
pub(crate) struct LogFields {
    pub(crate) method: Method,
    pub(crate) started: Instant,
    /// The canonical route, or `unknown`.
    pub(crate) route: &'static str,
    pub(crate) model: Option<String>,
    pub(crate) key_id: Option<String>,
    pub(crate) upstream: Option<String>,
    /// Upstream attempts made (retries and failover included).
    pub(crate) attempts: u32,
    /// The request's span, when tracing is on; it ends with the log line.
    pub(crate) span: Option<RequestSpan>,
}

impl LogFields {
    pub(crate) fn new(method: Method, started: Instant) -> Self {
        Self {
            method,
            started,
            route: "unknown",
            model: None,
            key_id: None,
            upstream: None,
            attempts: 0,
            span: None,
        }
    }

    /// The fields so far, leaving this value with the method, start and route
    /// only.
    pub(crate) fn take(&mut self) -> Self {
        Self {
            method: self.method.clone(),
            started: self.started,
            route: self.route,
            model: self.model.take(),
            key_id: self.key_id.take(),
            upstream: self.upstream.take(),
            attempts: self.attempts,
            span: self.span.take(),
        }
    }

    /// Logs a request the gateway answered itself with an error. The outcome is
    /// the error's code; `fault` says who caused it.
    pub(crate) fn log_error(&mut self, kind: ErrorKind) {
        self.log(kind.status, None, 0, kind.code, kind.source.as_str());
        self.end_span(kind.status, Some(kind.code));
    }

    /// Ends the request's span, if it has one.
    fn end_span(&mut self, status: StatusCode, error: Option<&str>) {
        if let Some(span) = self.span.take() {
            span.end(self, status, error);
        }
    }

    /// The observer that logs a forwarded request when its body ends.
    pub(crate) fn into_observer(self, status: StatusCode, first_byte: Duration) -> AccessLog {
        AccessLog {
            fields: self,
            status,
            first_byte,
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
    bytes: u64,
}

impl BodyObserver for AccessLog {
    fn on_data(&mut self, data: &Bytes) {
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
