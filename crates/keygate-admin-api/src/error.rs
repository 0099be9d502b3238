//! `ApiError`: every way an admin API request fails, and the one mapping to a
//! status and an OpenAI-shaped body (`{"error":{"message","type","param","code"}}`).
//! 5xx bodies say nothing about internals; the cause is logged once, here.

use keygate_store::StoreError;
use serde_json::json;

/// An admin API request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No admin token and no console session.
    #[error("an admin token is required: send Authorization: Bearer {{prefix}}_ak_…")]
    MissingToken,
    /// The token is malformed, unknown or revoked.
    #[error("the admin token is not valid")]
    InvalidToken,
    /// The token's role may not do this.
    #[error("this admin token's role ({role}) may not {action}; it needs {needed}")]
    Forbidden {
        /// The token's role.
        role: &'static str,
        /// The role needed.
        needed: &'static str,
        /// What was attempted.
        action: &'static str,
    },
    /// A console change without a valid CSRF token.
    #[error("the CSRF token is missing or does not match this session")]
    Csrf,
    /// Too many failed sign-ins from this address.
    #[error("too many failed admin token attempts from this address; retry later")]
    Throttled {
        /// Seconds until the next attempt is accepted.
        retry_after: u64,
    },
    /// Bad input; `param` names the field.
    #[error("{message}")]
    Invalid {
        /// The field.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The body is larger than the admin API takes.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// No such route.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// The route exists but not with this method.
    #[error("method not allowed on {0}")]
    MethodNotAllowed(String),
    /// The account, key or token does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts the stored state.
    #[error("{0}")]
    Conflict(String),
    /// A retried request whose first run created a secret, which is never shown twice.
    #[error("{0}")]
    AlreadyCreated(String),
    /// An `Idempotency-Key` reused for a different request, or still in use.
    #[error("{message}")]
    Idempotency {
        /// 409 (in progress) or 422 (a different request).
        status: u16,
        /// `idempotency_in_progress` or `idempotency_key_reused`.
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// The store cannot be reached.
    #[error("the store is unavailable")]
    Unavailable(String),
    /// Anything else; the cause is logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// Bad input naming a field.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            param: Some(param.to_owned()),
            message: message.into(),
        }
    }

    /// Status, OpenAI error type and code.
    pub fn kind(&self) -> (u16, &'static str, &'static str) {
        match self {
            ApiError::MissingToken => (401, "authentication_error", "missing_admin_token"),
            ApiError::InvalidToken => (401, "authentication_error", "invalid_admin_token"),
            ApiError::Forbidden { .. } => (403, "permission_error", "insufficient_role"),
            ApiError::Csrf => (403, "permission_error", "csrf_token_invalid"),
            ApiError::Throttled { .. } => (429, "rate_limit_error", "too_many_failed_attempts"),
            ApiError::Invalid { .. } => (400, "invalid_request_error", "invalid_request"),
            ApiError::TooLarge(_) => (413, "invalid_request_error", "request_too_large"),
            ApiError::NoRoute(_) => (404, "invalid_request_error", "not_found"),
            ApiError::MethodNotAllowed(_) => (405, "invalid_request_error", "method_not_allowed"),
            ApiError::NotFound(_) => (404, "invalid_request_error", "not_found"),
            ApiError::Conflict(_) => (409, "invalid_request_error", "conflict"),
            ApiError::AlreadyCreated(_) => (409, "invalid_request_error", "already_created"),
            ApiError::Idempotency { status, code, .. } => (*status, "invalid_request_error", code),
            ApiError::Unavailable(_) => (503, "server_error", "store_unavailable"),
            ApiError::Internal(_) => (500, "server_error", "internal_error"),
        }
    }

    /// The OpenAI-shaped body. Logs the cause of a 5xx.
    pub fn body(&self) -> serde_json::Value {
        let (status, kind, code) = self.kind();
        match self {
            ApiError::Unavailable(cause) | ApiError::Internal(cause) => {
                tracing::error!(target: "keygate::admin", status, cause = %cause, "admin request failed");
            }
            _ => {}
        }
        let param = match self {
            ApiError::Invalid { param, .. } => param.clone(),
            _ => None,
        };
        json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }
}

/// An id that does not parse is bad input; the text is not echoed whole.
impl From<keygate_store::IdError> for ApiError {
    fn from(error: keygate_store::IdError) -> Self {
        ApiError::invalid("id", error.reason())
    }
}

/// The one conversion from store errors.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { .. } => ApiError::NotFound(error.to_string()),
            StoreError::Invalid { field, reason } => ApiError::Invalid {
                param: Some(field.to_owned()),
                message: format!("invalid {field}: {reason}"),
            },
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
