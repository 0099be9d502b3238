//! What the gateway knows about one request as it moves through the pipeline:
//! one value, filled in stage by stage, that the response tail and the error
//! tail read.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response};

use crate::access_log::LogFields;
use crate::billing::Charge;
use crate::body::GatewayBody;
use crate::error::ProxyError;
use crate::limits::LimitHold;
use crate::rate::RateHeaders;

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
    /// The client's address (the peer, or who a trusted proxy forwarded for).
    pub(crate) client: Option<IpAddr>,
    /// The request's limits after its admission, for `x-ratelimit-*`.
    pub(crate) rates: RateHeaders,
    /// The request's limits, once admitted: the response body takes them; the
    /// error tail drops them (the slot and the token estimate come back).
    pub(crate) limits: Option<LimitHold>,
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
            client: None,
            rates: RateHeaders::default(),
            limits: None,
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
        if let (ProxyError::Store(_), Some(meter)) = (&error, &self.log.meter) {
            meter.metrics().store_error();
        }
        if let Some(charge) = self.charge.take() {
            // Nothing was served: the hold is returned, the attempt recorded.
            charge.abandon(kind.status);
        }
        drop(self.limits.take());
        self.log.log_error(kind);
        let refused = matches!(error, ProxyError::RateLimited { .. });
        let mut response = error.into_response();
        if !refused {
            self.rate_headers(response.headers_mut());
        }
        self.add_cors(response.headers_mut());
        response
    }

    /// The CORS headers every answer to an allowed origin carries.
    pub(crate) fn add_cors(&self, headers: &mut HeaderMap) {
        if let Some(origin) = &self.cors {
            allow_origin(headers, origin.clone());
        }
    }

    /// The request's limits in OpenAI's header names, replacing the
    /// provider's (which describe the operator's account, not this key).
    pub(crate) fn rate_headers(&self, headers: &mut HeaderMap) {
        self.rates.write(headers);
    }
}

/// Allows `origin` to read the answer.
pub(crate) fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}
