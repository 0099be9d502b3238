//! What the gateway knows about one request as it moves through the pipeline:
//! one value, filled in stage by stage, that the response tail and the error
//! tail read.

use std::net::SocketAddr;
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response};

use crate::access_log::LogFields;
use crate::billing::Charge;
use crate::body::GatewayBody;
use crate::error::ProxyError;
use crate::limits::RequestAllowance;

/// The client's address, put in request extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// One request's state: set by the stage that learns it, read by the ones after.
#[derive(Debug)]
pub(crate) struct RequestContext {
    /// When the request arrived, by the wall clock (key expiry, usage records).
    pub(crate) now: DateTime<Utc>,
    /// The log line's fields.
    pub(crate) log: LogFields,
    /// A public key's origin, allowed: echoed in CORS headers on every answer.
    pub(crate) cors: Option<HeaderValue>,
    /// The key's request limit after this request, for `x-ratelimit-*`.
    pub(crate) allowance: Option<RequestAllowance>,
    /// The request's charge, once admitted for billing. The response takes it;
    /// the error tail abandons it.
    pub(crate) charge: Option<Charge>,
}

impl RequestContext {
    pub(crate) fn new(method: Method) -> Self {
        Self {
            now: Utc::now(),
            log: LogFields::new(method, Instant::now()),
            cors: None,
            allowance: None,
            charge: None,
        }
    }

    /// When the request arrived, by the monotonic clock.
    pub(crate) fn started(&self) -> Instant {
        self.log.started
    }

    /// The answer to a request that failed: logged, its charge abandoned, and
    /// the error as an OpenAI-shaped response.
    pub(crate) fn fail(&mut self, error: ProxyError) -> Response<GatewayBody> {
        let kind = error.kind();
        if kind.status == http::StatusCode::INTERNAL_SERVER_ERROR {
            // Something keygate did not expect: the cause is logged here, once.
            tracing::error!(
                route = self.log.route,
                code = kind.code,
                cause = %crate::error::error_chain(&error),
                "request failed"
            );
        } else if kind.status.is_server_error() {
            tracing::warn!(
                route = self.log.route,
                code = kind.code,
                cause = %crate::error::error_chain(&error),
                "request failed"
            );
        }
        if let Some(charge) = self.charge.take() {
            // Nothing was served: the hold is returned, the attempt recorded.
            charge.abandon(kind.status);
        }
        self.log.log_error(kind);
        let mut response = error.into_response();
        self.add_cors(response.headers_mut());
        response
    }

    /// The CORS headers every answer to an allowed origin carries.
    pub(crate) fn add_cors(&self, headers: &mut HeaderMap) {
        if let Some(origin) = &self.cors {
            allow_origin(headers, origin.clone());
        }
    }

    /// The key's own request limit, in OpenAI's header names, replacing the
    /// provider's (which describe the operator's account, not this key).
    pub(crate) fn rate_headers(&self, headers: &mut HeaderMap) {
        if let Some(allowance) = self.allowance {
            headers.insert(
                "x-ratelimit-limit-requests",
                HeaderValue::from(allowance.limit),
            );
            headers.insert(
                "x-ratelimit-remaining-requests",
                HeaderValue::from(allowance.remaining),
            );
            headers.remove("x-ratelimit-reset-requests");
        }
    }
}

/// Allows `origin` to read the answer.
pub(crate) fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}
