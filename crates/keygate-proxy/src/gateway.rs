//! The gateway service: one request in, one response out. Auth, policy, body probe,
//! routing, forwarding and the request log line all happen here, in that order.

use std::borrow::Cow;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use keygate_keys::{KeyKind, strip_query_param};
use keygate_store::{ApiKey, CredentialStore};
use serde::Deserialize;

use crate::auth::Authenticator;
use crate::billing::{Admission, Billing};
use crate::body::{BodyEnd, BodyObserver, GatewayBody};
use crate::config::{ConfigError, ProxyConfig};
use crate::error::ProxyError;
use crate::routing::{BodyFormat, Endpoint, Router, key_allows_model, truncate};
use crate::upstream::Upstream;

/// Largest total size of request header names and values accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest model name accepted.
const MAX_MODEL_LEN: usize = 256;
/// Longest client name kept in usage records.
const MAX_CLIENT_NAME_LEN: usize = 100;
/// How long shutdown waits for settlements and the last usage batch.
const BILLING_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// The client's address, put in request extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// What a [`ResponseTap`] learns about a forwarded exchange.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The authenticated key.
    pub key: &'a ApiKey,
    /// The requested model.
    pub model: &'a str,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The upstream that answered.
    pub upstream: &'a str,
    /// The upstream's status.
    pub status: StatusCode,
}

/// A tap point on forwarded responses: the billing layer plugs in here to read
/// usage from each body as it streams past.
pub trait ResponseTap: Send + Sync + 'static {
    /// An observer for this exchange's body, if it wants one.
    fn tap(&self, exchange: &Exchange<'_>) -> Option<Box<dyn BodyObserver>>;
}

/// The gateway service.
pub struct Gateway {
    auth: Arc<Authenticator>,
    store: Arc<dyn CredentialStore>,
    router: Router,
    max_body_bytes: usize,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    poll_interval: Duration,
    last_used_flush: Duration,
    taps: Vec<Arc<dyn ResponseTap>>,
    billing: Option<Arc<Billing>>,
    listed_models: Vec<String>,
    started_unix: i64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("router", &self.router)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Everything the log line says about a request. Never a key, a body or a query.
#[derive(Clone, Debug, Default)]
struct RequestInfo {
    route: &'static str,
    model: Option<String>,
    key_id: Option<String>,
    upstream: Option<String>,
}

/// Peeks at the fields keygate needs without building a JSON tree.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

impl Gateway {
    /// Builds the gateway: validates and connects every upstream.
    pub fn new(config: ProxyConfig, store: Arc<dyn CredentialStore>) -> Result<Self, ConfigError> {
        config.validate()?;
        let upstreams = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                Upstream::new(upstream, &format!("upstreams[{i}]"), config.timeouts).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auth = Authenticator::new(
            Arc::clone(&store),
            config.key_prefix,
            config.query_param,
            &config.auth,
        );
        Ok(Self {
            auth: Arc::new(auth),
            store,
            router: Router::new(upstreams),
            max_body_bytes: config.max_body_bytes,
            first_byte_timeout: config.timeouts.first_byte,
            idle_timeout: config.timeouts.idle,
            poll_interval: config.auth.poll_interval,
            last_used_flush: config.auth.last_used_flush,
            taps: Vec::new(),
            billing: None,
            listed_models: config.listed_models,
            started_unix: Utc::now().timestamp(),
        })
    }

    /// Adds a tap on every forwarded response body.
    pub fn with_tap(mut self, tap: Arc<dyn ResponseTap>) -> Self {
        self.taps.push(tap);
        self
    }

    /// Bills every forwarded request through `billing`.
    pub fn with_billing(mut self, billing: Arc<Billing>) -> Self {
        self.billing = Some(billing);
        self
    }

    /// The billing layer, when on.
    pub fn billing(&self) -> Option<&Arc<Billing>> {
        self.billing.as_ref()
    }

    /// The routing table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts the change-feed follower and the `last_used_at` writer. The returned
    /// handle owns them: [`Background::stop`] (called by the server after the last
    /// connection closes) stops both and writes the last batch.
    pub async fn start_background(&self) -> Background {
        let start = self.auth.feed_start().await;
        let follower =
            tokio::spawn(Arc::clone(&self.auth).follow_changes(start, self.poll_interval));
        let auth = Arc::clone(&self.auth);
        let every = self.last_used_flush;
        let flusher = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                auth.flush_key_uses().await;
            }
        });
        let mut tasks = vec![follower, flusher];
        if let Some(billing) = &self.billing {
            // Sweeps at start-up (money a crash left reserved) and periodically;
            // purges old usage at start-up and daily; renews leases past their
            // batch window.
            billing.sweep().await;
            billing.purge().await;
            let billing = Arc::clone(billing);
            tasks.push(tokio::spawn(async move {
                let mut sweep = tokio::time::interval(billing.config().sweep_interval);
                let mut purge = tokio::time::interval(Duration::from_secs(86_400));
                let mut renew = tokio::time::interval(Duration::from_millis(100));
                for ticker in [&mut sweep, &mut purge, &mut renew] {
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker.tick().await;
                }
                loop {
                    tokio::select! {
                        _ = sweep.tick() => billing.sweep().await,
                        _ = purge.tick() => billing.purge().await,
                        _ = renew.tick() => billing.renew_leases(),
                    }
                }
            }));
        }
        Background {
            auth: Arc::clone(&self.auth),
            billing: self.billing.clone(),
            tasks,
        }
    }

    /// Answers one request. Never fails: errors become OpenAI-shaped responses.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<GatewayBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let mut info = RequestInfo {
            route: "unknown",
            ..RequestInfo::default()
        };
        let mut cors = None;
        match self.serve(request, started, &mut info, &mut cors).await {
            Ok(mut response) => {
                if let Some(origin) = cors {
                    allow_origin(response.headers_mut(), origin);
                }
                response
            }
            Err(error) => {
                let kind = error.kind();
                if kind.status.is_server_error() {
                    tracing::warn!(route = info.route, code = kind.code, "request failed");
                }
                log_request(&method, &info, kind.status, started, None, 0, kind.code);
                let mut response = error.into_response();
                if let Some(origin) = cors {
                    allow_origin(response.headers_mut(), origin);
                }
                response
            }
        }
    }

    async fn serve(
        &self,
        request: Request<Incoming>,
        started: Instant,
        info: &mut RequestInfo,
        cors: &mut Option<HeaderValue>,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::GET, "/healthz") => return Ok(json(StatusCode::OK, r#"{"status":"ok"}"#)),
            (&Method::GET, "/readyz") => return Ok(self.readiness().await),
            (&Method::GET, "/metrics") => return Ok(self.metrics()),
            (&Method::OPTIONS, _) => return Ok(preflight(request.headers())),
            _ => {}
        }
        if header_bytes(request.headers()) > MAX_HEADER_BYTES {
            return Err(ProxyError::HeadersTooLarge);
        }
        let (endpoint, model_id) = Endpoint::resolve(request.method(), path)?;
        info.route = endpoint.route();
        let now = Utc::now();
        let authed = self
            .auth
            .authenticate(request.headers(), request.uri().query(), now)
            .await?;
        let key = &authed.key.key;
        info.key_id = Some(key.id.as_str().to_owned());
        if key.kind == KeyKind::Public {
            if !endpoint.allows_public_keys() {
                return Err(ProxyError::PublicKeyNotAllowed);
            }
            if let Some(origin) = request.headers().get(header::ORIGIN) {
                let allowed = origin
                    .to_str()
                    .is_ok_and(|o| key.origins.iter().any(|a| a == o || a == "*"));
                if !allowed {
                    return Err(ProxyError::OriginNotAllowed);
                }
                *cors = Some(origin.clone());
            }
        }
        let scope = endpoint.scope();
        if !key.scopes.contains(scope) {
            return Err(ProxyError::InsufficientScope(scope));
        }
        let allowance = authed.key.admit()?;
        let local = match endpoint {
            Endpoint::ListModels => Some(Ok(self.list_models(key))),
            Endpoint::GetModel => Some(self.get_model(key, model_id.unwrap_or_default())),
            _ => None,
        };
        if let Some(response) = local {
            return response.map(|mut r| {
                rate_headers(r.headers_mut(), allowance);
                r
            });
        }

        let (parts, body) = request.into_parts();
        let body = read_body(body, &parts.headers, self.max_body_bytes).await?;
        let (model, stream) = match endpoint.body_format() {
            BodyFormat::Json => probe_json(&body)?,
            BodyFormat::Multipart => (probe_multipart(&parts.headers, body.clone()).await?, false),
        };
        if model.is_empty() {
            return Err(ProxyError::ModelRequired);
        }
        if model.len() > MAX_MODEL_LEN {
            return Err(ProxyError::InvalidRequest(format!(
                "model names are at most {MAX_MODEL_LEN} bytes"
            )));
        }
        info.model = Some(model.clone());
        if !key_allows_model(&key.models, &model) {
            return Err(ProxyError::ModelNotAllowed(model));
        }
        let upstream = self.router.route(endpoint.provider(), &model)?;
        info.upstream = Some(upstream.name().to_owned());
        let mut body = body;
        let charge = match &self.billing {
            Some(billing) => {
                let admission = Admission {
                    endpoint,
                    provider: upstream.kind(),
                    key,
                    model: &model,
                    upstream: upstream.name(),
                    stream,
                    client_name: client_name(&parts.headers),
                    client_ip: parts.extensions.get::<PeerAddr>().map(|p| p.0.ip()),
                };
                Some(billing.admit(admission, &mut body, now, started).await?)
            }
            None => None,
        };

        let query = match (parts.uri.query(), self.auth.query_param()) {
            (Some(query), Some(param)) => strip_query_param(query, param),
            (query, None) => query.map(str::to_owned),
            (None, _) => None,
        };
        let uri = upstream
            .uri(endpoint.suffix(), query.as_deref())
            .map_err(|_| ProxyError::InvalidRequest("the query string is not valid".into()))?;
        let mut outgoing = Request::new(Full::new(body));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = forward_headers(&parts.headers);
        upstream.authorize(outgoing.headers_mut());

        let sent =
            tokio::time::timeout(self.first_byte_timeout, upstream.client().request(outgoing));
        let failed = match sent.await {
            Ok(Ok(response)) => Ok(response),
            Err(_) => Err(ProxyError::UpstreamTimeout(upstream.name().to_owned())),
            Ok(Err(error)) => {
                tracing::warn!(
                    upstream = upstream.name(),
                    error = %error_chain(&error),
                    "upstream request failed"
                );
                Err(ProxyError::UpstreamUnavailable(upstream.name().to_owned()))
            }
        };
        let response = match failed {
            Ok(response) => response,
            Err(error) => {
                // Nothing was served: the reservation is released, the attempt recorded.
                if let Some(charge) = charge {
                    charge.abandon(error.kind().status);
                }
                return Err(error);
            }
        };
        let first_byte = started.elapsed();
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        for name in &NOT_RETURNED {
            head.headers.remove(name);
        }
        rate_headers(&mut head.headers, allowance);
        if matches!(
            head.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            // Passed through unchanged, but likely the operator's provider key.
            tracing::warn!(
                upstream = upstream.name(),
                status = head.status.as_u16(),
                "the upstream refused the request; check its provider key"
            );
        }
        let exchange = Exchange {
            endpoint,
            key,
            model: &model,
            stream,
            upstream: upstream.name(),
            status: head.status,
        };
        let mut observers: Vec<Box<dyn BodyObserver>> = Vec::with_capacity(1 + self.taps.len());
        observers.extend(self.taps.iter().filter_map(|t| t.tap(&exchange)));
        observers.push(Box::new(RequestLog {
            method: parts.method,
            info: std::mem::take(info),
            status: head.status,
            started,
            first_byte,
            bytes: 0,
        }));
        let mut body = GatewayBody::stream(body, observers, Some(self.idle_timeout));
        if let Some(charge) = charge {
            let event_stream = head
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let filter = charge
                .usage_chunk_filter()
                .filter(|_| event_stream && head.status.is_success());
            if filter.is_some() {
                head.headers.remove(header::CONTENT_LENGTH);
            }
            let tap = charge.into_tap(head.status, event_stream, first_byte);
            body = body.with_raw_observer(Box::new(tap)).with_filter(filter);
        }
        Ok(Response::from_parts(head, body))
    }

    /// Prometheus text: billing counters, when billing is on.
    fn metrics(&self) -> Response<GatewayBody> {
        let mut out = String::new();
        if let Some(billing) = &self.billing {
            let m = billing.metrics();
            for (name, help, value) in [
                (
                    "keygate_billed_requests_total",
                    "Requests that held their upper-bound cost.",
                    m.holds,
                ),
                (
                    "keygate_leases_settled_total",
                    "Store reservations (leases) settled with a charge.",
                    m.settled,
                ),
                (
                    "keygate_leases_released_total",
                    "Store reservations (leases) released without a charge.",
                    m.released,
                ),
                (
                    "keygate_settle_failures_total",
                    "Settlements the store never took; the sweep releases them.",
                    m.settle_failures,
                ),
                (
                    "keygate_refused_for_balance_total",
                    "Requests refused with 402.",
                    m.refused,
                ),
                (
                    "keygate_usage_records_written_total",
                    "Usage records stored.",
                    m.records_written,
                ),
                (
                    "keygate_usage_records_dropped_total",
                    "Usage records lost.",
                    m.records_dropped,
                ),
                (
                    "keygate_usage_estimated_total",
                    "Answers billed on estimated usage.",
                    m.usage_estimated,
                ),
                (
                    "keygate_usage_unknown_total",
                    "Answers with no usage reported.",
                    m.usage_unknown,
                ),
            ] {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
                ));
            }
        }
        let mut response = Response::new(GatewayBody::full(out));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }

    async fn readiness(&self) -> Response<GatewayBody> {
        let ping = tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await;
        match ping {
            Ok(Ok(())) => json(StatusCode::OK, r#"{"status":"ready"}"#),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: key store unreachable");
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"store_unavailable"}"#,
                )
            }
            Err(_) => {
                tracing::warn!("readiness: key store did not answer within 2 s");
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"store_unavailable"}"#,
                )
            }
        }
    }

    /// The models a key may use, in routing order: every exact name an upstream
    /// lists, then every configured or key-listed exact name an upstream pattern
    /// serves.
    fn visible_models<'a>(&'a self, key: &'a ApiKey) -> Vec<(&'a str, &'a str)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for upstream in self.router.upstreams() {
            let names = upstream
                .models()
                .iter()
                .filter_map(|p| p.exact())
                .chain(self.listed_models.iter().map(String::as_str))
                .chain(
                    key.models
                        .iter()
                        .map(String::as_str)
                        .filter(|m| !m.ends_with('*')),
                );
            for name in names {
                // A name belongs to the first upstream serving it: that is where
                // it routes.
                let routed = self
                    .router
                    .upstreams()
                    .iter()
                    .find(|u| u.serves(name))
                    .is_some_and(|u| Arc::ptr_eq(u, upstream));
                if routed && key_allows_model(&key.models, name) && seen.insert(name) {
                    out.push((name, upstream.name()));
                }
            }
        }
        out
    }

    fn model_object(&self, id: &str, owner: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "object": "model", "created": self.started_unix, "owned_by": owner})
    }

    fn list_models(&self, key: &ApiKey) -> Response<GatewayBody> {
        let data: Vec<_> = self
            .visible_models(key)
            .into_iter()
            .map(|(id, owner)| self.model_object(id, owner))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data});
        json(StatusCode::OK, body.to_string())
    }

    fn get_model(&self, key: &ApiKey, id: &str) -> Result<Response<GatewayBody>, ProxyError> {
        let owner = self
            .router
            .upstreams()
            .iter()
            .find(|u| u.serves(id))
            .filter(|_| key_allows_model(&key.models, id));
        match owner {
            Some(upstream) => Ok(json(
                StatusCode::OK,
                self.model_object(id, upstream.name()).to_string(),
            )),
            None => Err(ProxyError::ModelNotFound(format!(
                "the model '{}' does not exist or you do not have access to it",
                truncate(id, 100)
            ))),
        }
    }
}

/// The gateway's background tasks.
#[derive(Debug)]
pub struct Background {
    auth: Arc<Authenticator>,
    billing: Option<Arc<Billing>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Stops the tasks, writes the last `last_used_at` batch, and waits for the
    /// pending settlements and the last usage records.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        // Wait for the aborts, so no flush is mid-write when the last one starts.
        for task in self.tasks {
            let _ = task.await;
        }
        self.auth.flush_key_uses().await;
        if let Some(billing) = &self.billing {
            billing.shutdown(BILLING_SHUTDOWN_LIMIT).await;
            let metrics = billing.metrics();
            tracing::info!(
                records_written = metrics.records_written,
                records_dropped = metrics.records_dropped,
                leases_settled = metrics.settled,
                leases_released = metrics.released,
                "billing stopped"
            );
        }
    }
}

/// Logs the request line when the response body ends.
struct RequestLog {
    method: Method,
    info: RequestInfo,
    status: StatusCode,
    started: Instant,
    first_byte: Duration,
    bytes: u64,
}

impl BodyObserver for RequestLog {
    fn on_data(&mut self, data: &Bytes) {
        self.bytes += data.len() as u64;
    }

    fn on_end(&mut self, end: BodyEnd) {
        let outcome = match end {
            BodyEnd::Complete => "complete",
            BodyEnd::Cancelled => "client_cancelled",
            BodyEnd::Failed => "upstream_broke",
        };
        log_request(
            &self.method,
            &self.info,
            self.status,
            self.started,
            Some(self.first_byte),
            self.bytes,
            outcome,
        );
    }
}

/// The one request log line: metadata only.
fn log_request(
    method: &Method,
    info: &RequestInfo,
    status: StatusCode,
    started: Instant,
    first_byte: Option<Duration>,
    bytes: u64,
    outcome: &str,
) {
    tracing::info!(
        target: "keygate::request",
        method = method.as_str(),
        route = info.route,
        status = status.as_u16(),
        model = info.model.as_deref().unwrap_or("-"),
        key_id = info.key_id.as_deref().unwrap_or("-"),
        upstream = info.upstream.as_deref().unwrap_or("-"),
        latency_us = started.elapsed().as_micros() as u64,
        first_byte_us = first_byte.map_or(0, |d| d.as_micros() as u64),
        bytes,
        outcome,
    );
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The key's own request limit, in OpenAI's header names, replacing the
/// provider's (which describe the operator's account, not this key).
fn rate_headers(headers: &mut HeaderMap, allowance: Option<crate::limits::RequestAllowance>) {
    if let Some(allowance) = allowance {
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

fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// Answers a CORS preflight. It carries no key, so it promises nothing: the real
/// request is checked against the key's allowed origins.
fn preflight(headers: &HeaderMap) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    if let Some(origin) = headers.get(header::ORIGIN) {
        allow_origin(out, origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        let requested = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

/// The client's own name for itself, for usage records: `X-Client-Name`,
/// `X-Keygate-Client` or `User-Agent`, truncated.
fn client_name(headers: &HeaderMap) -> Option<String> {
    ["x-client-name", "x-keygate-client", "user-agent"]
        .into_iter()
        .find_map(|name| headers.get(name)?.to_str().ok())
        .map(|name| truncate(name.trim(), MAX_CLIENT_NAME_LEN).to_owned())
        .filter(|name| !name.is_empty())
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

async fn read_body(body: Incoming, headers: &HeaderMap, limit: usize) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::RequestTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::RequestTooLarge { limit })
        }
        Err(_) => Err(ProxyError::InvalidRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// Reads `model` and `stream` from a JSON object body. Error messages give a
/// position, never a piece of the body.
pub(crate) fn probe_json(body: &[u8]) -> Result<(String, bool), ProxyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ProxyError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        let at = format!("line {}, column {}", e.line(), e.column());
        ProxyError::InvalidRequest(match e.classify() {
            serde_json::error::Category::Data => format!(
                "a field of the request body has the wrong type ({at}): 'model' must be a string and 'stream' a boolean"
            ),
            _ => format!("the request body is not valid JSON ({at})"),
        })
    })?;
    let model = probe.model.map(Cow::into_owned).unwrap_or_default();
    Ok((model, probe.stream.unwrap_or(false)))
}

/// Reads the `model` field of a `multipart/form-data` body.
async fn probe_multipart(headers: &HeaderMap, body: Bytes) -> Result<String, ProxyError> {
    let invalid = |message: &str| ProxyError::InvalidRequest(message.to_owned());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("this endpoint takes a multipart/form-data body"))?;
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| invalid("this endpoint takes a multipart/form-data body with a boundary"))?;
    let chunks = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut form = multer::Multipart::new(chunks, boundary);
    // Every part is read: a second `model` could be the one the upstream uses.
    let mut model = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) if field.name() == Some("model") => {
                if model.is_some() {
                    return Err(invalid(
                        "the multipart field 'model' is given more than once",
                    ));
                }
                let text = field
                    .text()
                    .await
                    .map_err(|_| invalid("the multipart field 'model' is not valid text"))?;
                model = Some(text);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(model.unwrap_or_default()),
            Err(_) => return Err(invalid("the multipart/form-data body is malformed")),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Headers dropped from requests besides hop-by-hop ones: the client's credentials
/// (replaced by the provider key), its cookies, the operator's provider account
/// choice (a client must not pick which organisation or project is charged), the
/// end user's address as proxies in front add it (privacy: no IP leaves keygate),
/// what the client stack derives from the URI and body, and `accept-encoding` so
/// usage can be read from the response.
const NOT_FORWARDED: [HeaderName; 20] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::COOKIE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    header::VIA,
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::ACCEPT_ENCODING,
    header::PROXY_AUTHENTICATE,
];

/// Headers dropped from responses besides hop-by-hop ones: which provider account
/// the operator uses is the operator's business, and provider cookies are for the
/// provider's own domain.
const NOT_RETURNED: [HeaderName; 4] = [
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("anthropic-organization-id"),
    header::SET_COOKIE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    for name in &NOT_FORWARDED {
        headers.remove(name);
    }
    headers
}

/// An error and its causes on one line, for logs.
fn error_chain(error: &dyn std::error::Error) -> String {
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
    fn probe_reads_model_and_stream_only() {
        let (model, stream) = probe_json(
            br#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!((model.as_str(), stream), ("gpt-4o", true));
        let (model, stream) = probe_json(br#"{"model":"a\"b","stream":null}"#).unwrap();
        assert_eq!((model.as_str(), stream), ("a\"b", false));
        assert_eq!(probe_json(b"{}").unwrap().0, "");
    }

    #[test]
    fn probe_errors_never_echo_the_body() {
        for body in [
            &br#"{"model": 42}"#[..],
            br#"["gpt-4o"]"#,
            br#"{"model":"secret-prompt"#,
            br#"{"model":"m","stream":"secret-prompt"}"#,
            b"",
        ] {
            let err = probe_json(body).unwrap_err();
            assert!(matches!(err, ProxyError::InvalidRequest(_)), "{body:?}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn forwarded_headers_lose_credentials_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer kg_sk_x"));
        h.insert("x-api-key", HeaderValue::from_static("kg_sk_x"));
        h.insert("api-key", HeaderValue::from_static("kg_sk_x"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(
            "openai-organization",
            HeaderValue::from_static("org-client-choice"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("forwarded", HeaderValue::from_static("for=203.0.113.9"));
        h.insert("cookie", HeaderValue::from_static("session=1"));
        let out = forward_headers(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("anthropic-version") && out.contains_key("content-type"));
    }
}
