//! Every error the gateway itself answers with, the one function that maps each to
//! a status and an OpenAI-shaped body, the one conversion from store errors, and
//! the error a setting that cannot work gives at start.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use keygate_billing::{BodyError, InputError};
use keygate_store::{Scope, StoreError};

use crate::body::GatewayBody;
use crate::rate::{LimitKind, RateHeaders};
use crate::text::{model_phrase, shown_method};

/// A boxed cause, kept on an error for the log line.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who caused an error. It decides the status class and whether a retry can help;
/// the request log line names it (`fault`), so an operator can tell a client's
/// mistakes from an upstream's failures and the gateway's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request was wrong: 4xx, do not retry unchanged.
    Client,
    /// The upstream provider failed or was unreachable: 502/504, retry may help.
    Upstream,
    /// keygate itself (or its store) failed: 5xx, retry may help.
    Gateway,
}

impl ErrorSource {
    /// The name in the request log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Gateway => "gateway",
        }
    }
}

/// A setting that cannot work, named by its config path (`upstreams[0].base_url`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field, as written in the config file.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error keygate answers itself. Upstream error responses are not errors here:
/// they pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The body is not JSON, or a field has the wrong type.
    #[error("{0}")]
    InvalidRequest(String),
    /// A field keygate reads to route or bill the request (`model`, `stream`,
    /// an output cap, `n`, `stream_options`) is duplicated or malformed. Names
    /// the parameter, never its value.
    #[error("{0}")]
    InvalidParam(InputError),
    /// The body has no `model`.
    #[error("you must provide a model parameter")]
    ModelRequired,
    /// No credential in any accepted place.
    #[error("no API key provided; send it as 'Authorization: Bearer YOUR_KEY' (or x-api-key)")]
    MissingApiKey,
    /// Malformed, bad checksum, wrong prefix or unknown key. The reason is logged as
    /// a category and never shown, so the answer does not help guessing.
    #[error("invalid API key provided")]
    InvalidApiKey,
    /// The key's expiry has passed.
    #[error("API key has expired")]
    ApiKeyExpired,
    /// The key was revoked (or its rotation grace period ended).
    #[error("API key has been revoked")]
    ApiKeyRevoked,
    /// The account's balance cannot cover the request.
    #[error("insufficient balance: top up the account to continue")]
    InsufficientBalance,
    /// The key's spend limit is reached.
    #[error("API key spend limit exceeded")]
    SpendLimitExceeded,
    /// The key lacks the route's scope.
    #[error("API key does not have required scope: {0}")]
    InsufficientScope(Scope),
    /// A public key on a route that only private keys may use.
    #[error("public API keys may only call chat completions and models; use a secret key")]
    PublicKeyNotAllowed,
    /// The model is not in the key's allowed list. The model is named only when
    /// short and printable (`text::shown_model`).
    #[error("API key is not allowed to use {}", model_phrase(.0))]
    ModelNotAllowed(String),
    /// A public key used from an origin it does not list.
    #[error("origin not allowed for this API key")]
    OriginNotAllowed,
    /// No upstream serves the model on this route.
    #[error("{0}")]
    ModelNotFound(String),
    /// The model has no price and the gateway bills every request.
    #[error(
        "{} has no price on this gateway, so it cannot be used; the operator must add a [prices] entry for it",
        model_phrase(.0)
    )]
    ModelNotPriced(String),
    /// No such route. Nothing of the path is repeated: it may hold anything,
    /// a pasted key included.
    #[error(
        "unknown route: keygate serves the OpenAI and Anthropic API paths, such as /v1/chat/completions and /v1/messages"
    )]
    UnknownRoute,
    /// No upstream of the provider kind this route needs is configured.
    #[error("no upstream of this gateway serves {0}")]
    NoUpstream(&'static str),
    /// Batches are run and billed by the provider later; a billed gateway
    /// cannot reserve for them, so it does not create them.
    #[error(
        "batches are not billed by this gateway, so it does not create them; send this request to the provider directly"
    )]
    BatchNotBilled,
    /// Known route, wrong method.
    #[error("{} is not allowed on {path}", shown_method(.method))]
    MethodNotAllowed {
        /// Method.
        method: http::Method,
        /// The endpoint's canonical route.
        path: &'static str,
    },
    /// The body is larger than the configured limit.
    #[error("request body is larger than the {limit} byte limit")]
    RequestTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Request headers larger than the server accepts.
    #[error("request headers are too large")]
    HeadersTooLarge,
    /// The body did not arrive within `[server] body_read_timeout`.
    #[error("the request body did not arrive within {} ms", timeout.as_millis())]
    BodyReadTimeout {
        /// The deadline for the whole body.
        timeout: std::time::Duration,
    },
    /// A limit was hit: the key's, its address's, or failed authentications
    /// from the address.
    #[error("{}", rate_message(*kind, *limit, *retry_after))]
    RateLimited {
        /// Which limit.
        kind: LimitKind,
        /// Its size (per minute, or at once).
        limit: u64,
        /// Until a retry can succeed.
        retry_after: std::time::Duration,
        /// The request's limits as they stand, for `x-ratelimit-*`.
        headers: RateHeaders,
    },
    /// The shared rate-limit backend cannot answer and `[limits]
    /// on_backend_error = "deny"`.
    #[error("rate limits cannot be checked right now; retry shortly")]
    LimitsUnavailable,
    /// The upstream could not be reached, or broke the connection.
    #[error("the upstream provider '{0}' is unavailable")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("the upstream provider '{0}' did not respond in time")]
    UpstreamTimeout(String),
    /// A store operation failed: unreachable (503, retry shortly) or anything
    /// else (500). The cause is logged, never sent.
    #[error("{}", if .0.is_unavailable() { "the key store is unavailable; retry shortly" } else { "internal error" })]
    Store(#[source] Arc<StoreError>),
    /// Anything else. The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl From<BodyError> for ProxyError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::Input(error) => Self::InvalidParam(error),
            BodyError::NotAnObject | BodyError::NotJson { .. } => {
                Self::InvalidRequest(error.to_string())
            }
        }
    }
}

impl From<InputError> for ProxyError {
    fn from(error: InputError) -> Self {
        Self::InvalidParam(error)
    }
}

impl From<StoreError> for ProxyError {
    fn from(error: StoreError) -> Self {
        Self::Store(Arc::new(error))
    }
}

impl From<Arc<StoreError>> for ProxyError {
    fn from(error: Arc<StoreError>) -> Self {
        Self::Store(error)
    }
}

/// What a client is told about the limit it hit.
fn rate_message(kind: LimitKind, limit: u64, retry_after: Duration) -> String {
    let what = match kind {
        LimitKind::Requests => format!("this API key may send {limit} requests per minute"),
        LimitKind::Tokens => format!("this API key may use {limit} tokens per minute"),
        LimitKind::Parallel => format!("this API key may have {limit} requests in flight at once"),
        LimitKind::AddressRequests => {
            format!("this API key may send {limit} requests per minute from one address")
        }
        LimitKind::AddressTokens => {
            format!("this API key may use {limit} tokens per minute from one address")
        }
        LimitKind::AuthFailures => {
            return format!(
                "too many failed authentication attempts from this address; retry after {} s",
                retry_after_secs(retry_after)
            );
        }
    };
    format!(
        "rate limit exceeded: {what}; retry after {} s",
        retry_after_secs(retry_after)
    )
}

/// Whole seconds to wait, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Status, `type` and `code` of an error, from one exhaustive match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorKind {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI `error.type`.
    pub kind: &'static str,
    /// OpenAI `error.code`.
    pub code: &'static str,
    /// Who caused it.
    pub source: ErrorSource,
}

impl ProxyError {
    /// The one mapping from error to status, type, code and cause.
    pub fn kind(&self) -> ErrorKind {
        use ErrorSource::{Client, Gateway, Upstream};
        let (status, kind, code, source) = match self {
            Self::InvalidRequest(_) | Self::InvalidParam(_) => {
                (400, "invalid_request_error", "invalid_request", Client)
            }
            Self::ModelRequired => (400, "invalid_request_error", "model_required", Client),
            Self::MissingApiKey => (401, "authentication_error", "missing_api_key", Client),
            Self::InvalidApiKey => (401, "authentication_error", "invalid_api_key", Client),
            Self::ApiKeyExpired => (401, "authentication_error", "api_key_expired", Client),
            Self::ApiKeyRevoked => (401, "authentication_error", "api_key_revoked", Client),
            Self::InsufficientBalance => {
                (402, "insufficient_quota", "insufficient_balance", Client)
            }
            Self::SpendLimitExceeded => (402, "insufficient_quota", "spend_limit_exceeded", Client),
            Self::InsufficientScope(_) => (403, "permission_error", "insufficient_scope", Client),
            Self::PublicKeyNotAllowed => {
                (403, "permission_error", "public_key_not_allowed", Client)
            }
            Self::ModelNotAllowed(_) => (403, "permission_error", "model_not_allowed", Client),
            Self::OriginNotAllowed => (403, "permission_error", "origin_not_allowed", Client),
            Self::ModelNotFound(_) => (404, "invalid_request_error", "model_not_found", Client),
            Self::ModelNotPriced(_) => (404, "invalid_request_error", "model_not_found", Client),
            Self::UnknownRoute { .. } => (404, "invalid_request_error", "unknown_route", Client),
            Self::NoUpstream(_) => (404, "invalid_request_error", "unknown_route", Client),
            Self::BatchNotBilled => (403, "permission_error", "batches_not_billed", Client),
            Self::MethodNotAllowed { .. } => {
                (405, "invalid_request_error", "method_not_allowed", Client)
            }
            Self::RequestTooLarge { .. } => {
                (413, "invalid_request_error", "request_too_large", Client)
            }
            Self::HeadersTooLarge => (431, "invalid_request_error", "headers_too_large", Client),
            Self::BodyReadTimeout { .. } => {
                (408, "invalid_request_error", "request_timeout", Client)
            }
            Self::RateLimited { .. } => (429, "rate_limit_error", "rate_limit_exceeded", Client),
            Self::LimitsUnavailable => (503, "server_error", "limits_unavailable", Gateway),
            Self::UpstreamUnavailable(_) => {
                (502, "upstream_error", "upstream_unavailable", Upstream)
            }
            Self::UpstreamTimeout(_) => (504, "upstream_error", "upstream_timeout", Upstream),
            Self::Store(e) if e.is_unavailable() => {
                (503, "server_error", "store_unavailable", Gateway)
            }
            Self::Store(_) | Self::Internal(_) => (500, "server_error", "internal_error", Gateway),
        };
        ErrorKind {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind,
            code,
            source,
        }
    }

    /// The OpenAI `param` the error is about, if any.
    fn param(&self) -> Option<&'static str> {
        match self {
            Self::ModelRequired
            | Self::ModelNotAllowed(_)
            | Self::ModelNotFound(_)
            | Self::ModelNotPriced(_) => Some("model"),
            Self::InvalidParam(error) => Some(error.param),
            _ => None,
        }
    }

    /// The JSON body `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> Bytes {
        let kind = self.kind();
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind.kind,
                "param": self.param(),
                "code": kind.code,
            }
        });
        Bytes::from(body.to_string())
    }

    /// The complete response, with `Retry-After` where a retry makes sense.
    pub fn into_response(self) -> Response<GatewayBody> {
        let kind = self.kind();
        let mut response = Response::new(GatewayBody::full(self.body()));
        *response.status_mut() = kind.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::RateLimited {
                retry_after,
                headers: rates,
                ..
            } => {
                let secs = retry_after_secs(*retry_after);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                rates.write(headers);
            }
            Self::LimitsUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Store(e) if e.is_unavailable() => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if kind.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygate\""),
            );
        }
        response
    }
}

/// An error and its causes on one line, for logs.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_is_503_only_when_the_store_is_unreachable() {
        let down = ProxyError::from(StoreError::Unavailable("connection refused".into()));
        assert_eq!(down.kind().status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.kind().code, "store_unavailable");
        let response = down.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");

        let broken = ProxyError::from(StoreError::Database("syntax error".into()));
        assert_eq!(broken.kind().status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(broken.kind().code, "internal_error");
        assert!(!String::from_utf8_lossy(&broken.body()).contains("syntax"));
        assert!(error_chain(&broken).contains("syntax error"));
        assert!(
            broken
                .into_response()
                .headers()
                .get(header::RETRY_AFTER)
                .is_none()
        );
    }

    #[test]
    fn a_malformed_field_is_400_naming_the_param() {
        let error = ProxyError::from(
            keygate_billing::BillingInputs::read(br#"{"max_tokens":"secret"}"#).unwrap_err(),
        );
        assert_eq!(error.kind().status, StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
        assert_eq!(body["error"]["param"], "max_tokens");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(!body.to_string().contains("secret"));
        let not_json = ProxyError::from(BodyError::NotAnObject);
        assert!(matches!(not_json, ProxyError::InvalidRequest(_)));
        assert_eq!(not_json.param(), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
