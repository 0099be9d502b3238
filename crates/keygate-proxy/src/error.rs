//! Every error the gateway itself answers with, and the one function that maps each
//! to a status and an OpenAI-shaped body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use keygate_store::Scope;

use crate::body::GatewayBody;

/// Who caused an error. It decides the status class, whether a retry can help and,
/// for the billing layer, whether anything is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request was wrong: 4xx, do not retry unchanged.
    Client,
    /// The upstream provider failed or was unreachable: 502/504, retry may help.
    Upstream,
    /// keygate itself (or its store) failed: 5xx, retry may help.
    Gateway,
}

/// An error keygate answers itself. Upstream error responses are not errors here:
/// they pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The body is not JSON, or a field has the wrong type.
    #[error("{0}")]
    InvalidRequest(String),
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
    /// The model is not in the key's allowed list.
    #[error("API key is not allowed to use model '{0}'")]
    ModelNotAllowed(String),
    /// A public key used from an origin it does not list.
    #[error("origin not allowed for this API key")]
    OriginNotAllowed,
    /// No upstream serves the model on this route.
    #[error("{0}")]
    ModelNotFound(String),
    /// The model has no price and the gateway bills every request.
    #[error(
        "the model '{0}' has no price on this gateway, so it cannot be used; the operator must add a [prices] entry for it"
    )]
    ModelNotPriced(String),
    /// No such route.
    #[error("unknown route {method} {path}")]
    UnknownRoute {
        /// Method.
        method: http::Method,
        /// Path without the query string.
        path: String,
    },
    /// Known route, wrong method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Method.
        method: http::Method,
        /// Path without the query string.
        path: String,
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
    /// The key's request rate limit was hit.
    #[error(
        "rate limit exceeded: this API key may send {rpm} requests per minute; retry after {} s",
        crate::limits::retry_after_secs(*retry_after)
    )]
    RateLimited {
        /// The key's requests per minute.
        rpm: u32,
        /// Until a retry can succeed.
        retry_after: std::time::Duration,
    },
    /// The upstream could not be reached, or broke the connection.
    #[error("the upstream provider '{0}' is unavailable")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("the upstream provider '{0}' did not respond in time")]
    UpstreamTimeout(String),
    /// The key store is unreachable and the key is not cached.
    #[error("the key store is unavailable; retry shortly")]
    StoreUnavailable,
    /// Anything else. The cause is logged, never sent.
    #[error("internal error")]
    Internal,
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
            Self::InvalidRequest(_) => (400, "invalid_request_error", "invalid_request", Client),
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
            Self::MethodNotAllowed { .. } => {
                (405, "invalid_request_error", "method_not_allowed", Client)
            }
            Self::RequestTooLarge { .. } => {
                (413, "invalid_request_error", "request_too_large", Client)
            }
            Self::HeadersTooLarge => (431, "invalid_request_error", "headers_too_large", Client),
            Self::RateLimited { .. } => (429, "rate_limit_error", "rate_limit_exceeded", Client),
            Self::UpstreamUnavailable(_) => {
                (502, "upstream_error", "upstream_unavailable", Upstream)
            }
            Self::UpstreamTimeout(_) => (504, "upstream_error", "upstream_timeout", Upstream),
            Self::StoreUnavailable => (503, "server_error", "store_unavailable", Gateway),
            Self::Internal => (500, "server_error", "internal_error", Gateway),
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
            Self::RateLimited { rpm, retry_after } => {
                let secs = crate::limits::retry_after_secs(*retry_after);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                headers.insert("x-ratelimit-limit-requests", HeaderValue::from(*rpm));
                headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0_u32));
                if let Ok(reset) = HeaderValue::from_str(&format!("{}ms", retry_after.as_millis()))
                {
                    headers.insert("x-ratelimit-reset-requests", reset);
                }
            }
            Self::StoreUnavailable => {
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
