//! What the API's stages share: the stores, the authenticated caller, an
//! operation's answer and the JSON response it becomes.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use keygate_keys::KeyPrefix;
use keygate_store::{Actor, AdminToken, ControlStore, CredentialStore, Ledger};
use serde_json::Value;

/// The stores the API works on: the same database through its three traits.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Accounts and keys.
    pub credentials: Arc<dyn CredentialStore>,
    /// Usage.
    pub ledger: Arc<dyn Ledger>,
    /// Admin tokens, audit log, idempotency, sessions.
    pub control: Arc<dyn ControlStore>,
}

/// Who is calling, once authenticated.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) token: AdminToken,
    pub(crate) actor: Actor,
}

/// The response body type.
pub(crate) type Body = Full<Bytes>;

/// What an operation answered.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    /// The id of what was created or changed (kept by an idempotency record).
    pub(crate) target: Option<String>,
    /// The body holds a secret, so an idempotency record must not keep it.
    pub(crate) secret: bool,
    /// Replayed from an idempotency record.
    pub(crate) replayed: bool,
}

impl Answer {
    pub(crate) fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            target: None,
            secret: false,
            replayed: false,
        }
    }

    pub(crate) fn changed(status: u16, body: Value, target: &str) -> Self {
        Self {
            target: Some(target.to_owned()),
            ..Self::json(status, body)
        }
    }

    pub(crate) fn into_response(self) -> http::Response<Body> {
        let mut response = json_response(self.status, &self.body);
        if self.replayed {
            response.headers_mut().insert(
                "idempotent-replayed",
                http::HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// A JSON response.
pub(crate) fn json_response(status: u16, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// What the operations work with.
#[derive(Debug)]
pub(crate) struct Deps {
    pub(crate) stores: Stores,
    pub(crate) prefix: KeyPrefix,
}
