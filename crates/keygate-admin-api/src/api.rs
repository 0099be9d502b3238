//! `AdminApi`: one request from its head to its answer — route, authenticate
//! (admin token or console session, failed attempts throttled per address),
//! check the role, read the body under a limit, run the operation (through its
//! idempotency record when it has an `Idempotency-Key`), answer JSON.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use keygate_keys::{KeyHash, KeyPrefix, parse_admin_token};
use keygate_store::{Actor, IdempotencyClaim, IdempotencyRequest, IdempotentOutcome};

use crate::context::{Answer, Body, Caller, Deps, Stores, json_response};
use crate::error::ApiError;
use crate::handlers;
use crate::routes::{Lookup, Matched, lookup};
use crate::{console, session};

/// The largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Failed token attempts an address may make per minute before it is refused.
const FAILED_ATTEMPTS_PER_MINUTE: u32 = 10;

/// The admin API over a store.
pub struct AdminApi {
    deps: Deps,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: moka::sync::Cache<IpAddr, ()>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("prefix", &self.deps.prefix)
            .finish_non_exhaustive()
    }
}

impl AdminApi {
    /// An API over `stores`; admin tokens carry `prefix`.
    pub fn new(stores: Stores, prefix: KeyPrefix) -> Self {
        let per_minute = NonZeroU32::new(FAILED_ATTEMPTS_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        Self {
            deps: Deps { stores, prefix },
            failures: RateLimiter::keyed(Quota::per_minute(per_minute)),
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Answers one request from `peer`. Never fails: errors are OpenAI-shaped
    /// bodies.
    pub async fn handle<B>(&self, request: Request<B>, peer: IpAddr) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut response = match console::asset(&path).filter(|_| method == Method::GET) {
            Some(page) => page,
            None if path == "/console/session" => match self.session(request, peer).await {
                Ok(response) => response,
                Err(error) => error_response(&error),
            },
            None => match self.route(request, peer).await {
                Ok(answer) => answer.into_response(),
                Err(error) => error_response(&error),
            },
        };
        console::secure_headers(response.headers_mut());
        tracing::info!(
            target: "keygate::admin",
            method = %method,
            route = route_name(&method, &path),
            status = response.status().as_u16(),
            "admin request"
        );
        response
    }

    async fn route<B>(&self, request: Request<B>, peer: IpAddr) -> Result<Answer, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        if parts.method == Method::GET && path == "/openapi.json" {
            return Ok(Answer::json(200, crate::openapi::document()));
        }
        let matched = match lookup(&parts.method, path) {
            Lookup::Found(matched) => matched,
            Lookup::WrongMethod => return Err(ApiError::MethodNotAllowed(path.to_owned())),
            Lookup::NotFound => return Err(ApiError::NoRoute(path.to_owned())),
        };
        let caller = self
            .authenticate(&parts.headers, &parts.method, peer)
            .await?;
        if !caller.token.role.allows(matched.route.role) {
            return Err(ApiError::Forbidden {
                role: caller.token.role.name(),
                needed: matched.route.role.name(),
                action: matched.route.summary,
            });
        }
        let body = read_body(body).await?;
        let idempotency_key = match parts.headers.get("idempotency-key") {
            Some(value) if matched.route.idempotent => Some(
                value
                    .to_str()
                    .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?
                    .to_owned(),
            ),
            _ => None,
        };
        let query = parts.uri.query();
        match idempotency_key {
            None => handlers::run(&self.deps, &caller, &matched, query, &body).await,
            Some(key) => {
                self.idempotent(&caller, &matched, query, &body, key, path)
                    .await
            }
        }
    }

    /// Runs an operation once per `Idempotency-Key`: a retry gets the first
    /// answer back (`Idempotent-Replayed: true`) — except for a created key, whose
    /// secret is never stored or shown twice: that retry gets 409 `already_created`
    /// naming the key's id.
    async fn idempotent(
        &self,
        caller: &Caller,
        matched: &Matched<'_>,
        query: Option<&str>,
        body: &[u8],
        key: String,
        path: &str,
    ) -> Result<Answer, ApiError> {
        let mut fingerprint = format!("{} {path}\n", matched.route.method).into_bytes();
        fingerprint.extend_from_slice(body);
        let request = IdempotencyRequest {
            actor: caller.actor.clone(),
            key,
            request_hash: KeyHash::of(&String::from_utf8_lossy(&fingerprint)),
        };
        let control = &self.deps.stores.control;
        match control.claim_idempotency(&request, Utc::now()).await? {
            IdempotencyClaim::Claimed => {}
            IdempotencyClaim::InProgress => {
                return Err(ApiError::Idempotency {
                    status: 409,
                    code: "idempotency_in_progress",
                    message: "a request with this Idempotency-Key is still being handled".into(),
                });
            }
            IdempotencyClaim::Mismatch => {
                return Err(ApiError::Idempotency {
                    status: 422,
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used for a different request".into(),
                });
            }
            IdempotencyClaim::Done(outcome) => return replay(outcome),
        }
        match handlers::run(&self.deps, caller, matched, query, body).await {
            Ok(answer) => {
                let outcome = IdempotentOutcome {
                    status: answer.status,
                    target: answer.target.clone(),
                    // A response holding a secret is not kept: its replay says so.
                    body: if answer.secret {
                        String::new()
                    } else {
                        answer.body.to_string()
                    },
                };
                if let Err(e) = control.finish_idempotency(&request, &outcome).await {
                    // The change is made; the record stays "in progress", so a retry
                    // is refused rather than run twice.
                    tracing::error!(target: "keygate::admin", error = %e, "idempotency record not finished");
                }
                Ok(answer)
            }
            Err(error) => {
                if let Err(e) = control.abandon_idempotency(&request).await {
                    tracing::error!(target: "keygate::admin", error = %e, "idempotency claim not released");
                }
                Err(error)
            }
        }
    }

    /// The caller's admin token from `Authorization: Bearer`, or from the console
    /// session cookie. An address with too many failures is refused before any
    /// lookup.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        method: &Method,
        peer: IpAddr,
    ) -> Result<Caller, ApiError> {
        if self.blocked.contains_key(&peer) {
            return Err(ApiError::Throttled { retry_after: 60 });
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return match session::from_cookie(&self.deps, headers, method).await {
                Ok(Some(caller)) => Ok(caller),
                Ok(None) => Err(ApiError::MissingToken),
                Err(ApiError::InvalidToken) => {
                    self.failed_attempt(peer);
                    Err(ApiError::InvalidToken)
                }
                Err(other) => Err(other),
            };
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let found = match presented.map(|t| parse_admin_token(t, &self.deps.prefix)) {
            Some(Ok(hash)) => {
                self.deps
                    .stores
                    .control
                    .find_admin_token_by_hash(&hash)
                    .await?
            }
            _ => None,
        };
        match found {
            Some(token) if token.is_active(Utc::now()) => Ok(Caller {
                actor: Actor::Token(token.id.clone()),
                token,
            }),
            _ => {
                self.failed_attempt(peer);
                Err(ApiError::InvalidToken)
            }
        }
    }

    /// `/console/session`: sign in (POST), who am I (GET), sign out (DELETE).
    async fn session<B>(
        &self,
        request: Request<B>,
        peer: IpAddr,
    ) -> Result<Response<Body>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.blocked.contains_key(&peer) {
            return Err(ApiError::Throttled { retry_after: 60 });
        }
        let (parts, body) = request.into_parts();
        let result = match parts.method {
            Method::POST => session::sign_in(&self.deps, &read_body(body).await?).await,
            Method::GET => session::current(&self.deps, &parts.headers).await,
            Method::DELETE => session::sign_out(&self.deps, &parts.headers).await,
            _ => Err(ApiError::MethodNotAllowed("/console/session".into())),
        };
        if matches!(result, Err(ApiError::InvalidToken)) {
            self.failed_attempt(peer);
        }
        result
    }

    fn failed_attempt(&self, peer: IpAddr) {
        if self.failures.check_key(&peer).is_err() {
            tracing::warn!(target: "keygate::admin", peer = %peer, "admin token attempts throttled");
            self.blocked.insert(peer, ());
        }
    }
}

fn replay(outcome: IdempotentOutcome) -> Result<Answer, ApiError> {
    if outcome.body.is_empty() {
        return Err(ApiError::AlreadyCreated(format!(
            "this request was already handled: it created {}; a secret is shown only once, so it is not shown again",
            outcome.target.unwrap_or_default()
        )));
    }
    let body: serde_json::Value = serde_json::from_str(&outcome.body)
        .map_err(|e| ApiError::Internal(format!("stored idempotent body: {e}")))?;
    let mut answer = Answer::json(outcome.status, body);
    answer.replayed = true;
    Ok(answer)
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge(MAX_BODY_BYTES))
        }
        Err(_) => Err(ApiError::invalid(
            "body",
            "the request body could not be read",
        )),
    }
}

/// The route template of a path, for the log line (never the path's ids or query).
fn route_name(method: &Method, path: &str) -> &'static str {
    match lookup(method, path) {
        Lookup::Found(m) => m.route.path,
        _ if path == "/openapi.json" => "/openapi.json",
        _ if path == "/console/session" => "/console/session",
        _ if console::asset(path).is_some() => "console asset",
        _ => "other",
    }
}

/// An error as a response.
pub(crate) fn error_response(error: &ApiError) -> Response<Body> {
    let (status, _, _) = error.kind();
    let mut response = json_response(status, &error.body());
    if let ApiError::Throttled { retry_after } = error {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    if matches!(error, ApiError::MissingToken | ApiError::InvalidToken) {
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    response
}
