//! What keygate answers itself, without an upstream: `/healthz`, `/readyz`,
//! `/metrics`, CORS preflights, and `/v1/models` from the routing table.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use keygate_store::{ApiKey, CredentialStore};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::Authenticator;
use crate::billing::Billing;
use crate::body::GatewayBody;
use crate::conn::ConnectionMetrics;
use crate::context::allow_origin;
use crate::endpoint::Endpoint;
use crate::error::ProxyError;
use crate::limits::RequestLimiter;
use crate::metrics::{self, GatewayMetrics};
use crate::models::key_allows_model;
use crate::routing::Router;
use crate::text::model_phrase;

/// The answers that need no key: health, readiness, metrics and preflights.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) store: Arc<dyn CredentialStore>,
    pub(crate) billing: Option<Arc<Billing>>,
    /// Filled in by the server's accept loop.
    pub(crate) connections: Arc<ConnectionMetrics>,
    /// For the upstream counters and health.
    pub(crate) router: Arc<Router>,
    /// The limits' counters.
    pub(crate) limiter: Arc<RequestLimiter>,
    /// The authenticator's store failures.
    pub(crate) auth: Arc<Authenticator>,
    /// The request path's families; `None` when metrics are off.
    pub(crate) metrics: Option<Arc<GatewayMetrics>>,
    /// Whether `/metrics` is answered here (not on a listener of its own).
    pub(crate) metrics_on_gateway_port: bool,
}

/// The counters other parts keep as atomics, read at scrape time.
#[derive(Debug)]
struct Counters {
    connections: Arc<ConnectionMetrics>,
    router: Arc<Router>,
    limiter: Arc<RequestLimiter>,
    billing: Option<Arc<Billing>>,
    auth: Arc<Authenticator>,
    request_store_errors: u64,
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        let c = &self.connections;
        metrics::gauge(
            e,
            "keygate_open_connections",
            "Client connections open.",
            i64::try_from(c.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        )?;
        metrics::counter(
            e,
            "keygate_connections_waited",
            "Times accepting paused at max_connections.",
            c.waited.load(Ordering::Relaxed),
        )?;
        self.router.encode_metrics(e)?;
        self.limiter.encode(e)?;
        let (feed, key_use) = self.auth.store_errors();
        let billing = self.billing.as_ref().map(|b| b.metrics());
        let b = billing.unwrap_or_default();
        metrics::series(
            e,
            "keygate_store_errors",
            "Store operations that failed, by what keygate was doing: answering a request (503/500), reading the key change feed, writing last_used_at, writing usage records, settling reservations, sweeping.",
            MetricType::Counter,
            [
                ("request", self.request_store_errors),
                ("key_changes", feed),
                ("key_use", key_use),
                ("usage_write", b.usage_write_errors),
                ("settle", b.settle_errors),
                ("sweep", b.sweep_errors),
            ]
            .map(|(operation, n)| ([("operation", operation)], n)),
        )?;
        let Some(m) = billing else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "keygate_billed_requests",
                "Requests that held their upper-bound cost.",
                m.holds,
            ),
            (
                "keygate_leases_settled",
                "Store reservations (leases) settled with a charge.",
                m.settled,
            ),
            (
                "keygate_leases_released",
                "Store reservations (leases) released without a charge.",
                m.released,
            ),
            (
                "keygate_settle_failures",
                "Settlements the store never took; the sweep releases them.",
                m.settle_failures,
            ),
            (
                "keygate_refused_for_balance",
                "Requests refused with 402.",
                m.refused,
            ),
            (
                "keygate_usage_records_written",
                "Usage records stored.",
                m.records_written,
            ),
            (
                "keygate_usage_records_dropped",
                "Usage records lost: the queue was full, or the store stayed unreachable through shutdown.",
                m.records_dropped,
            ),
            (
                "keygate_usage_estimated",
                "Answers billed on estimated usage.",
                m.usage_estimated,
            ),
            (
                "keygate_usage_unknown",
                "Answers with no usage reported.",
                m.usage_unknown,
            ),
            (
                "keygate_usage_capped",
                "Answers charged less than the upstream's figures would cost (clamped counts, or cut to the reservation).",
                m.usage_capped,
            ),
            (
                "keygate_settlements_capped",
                "Lease settlements cut to what the account and key could pay.",
                m.settlements_capped,
            ),
        ] {
            metrics::counter(e, name, help, value)?;
        }
        Ok(())
    }
}

impl Local {
    /// The answer, when the request is for one of these.
    pub(crate) async fn answer<B>(&self, request: &Request<B>) -> Option<Response<GatewayBody>> {
        Some(match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
            (&Method::GET, "/readyz") => self.readiness().await,
            (&Method::GET, "/metrics") if self.metrics_on_gateway_port => self.metrics()?,
            (&Method::OPTIONS, _) => preflight(request.headers()),
            _ => return None,
        })
    }

    /// `/metrics`, unless metrics are off (then it is an unknown route).
    fn metrics(&self) -> Option<Response<GatewayBody>> {
        let mut response = Response::new(GatewayBody::full(self.exposition()?));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        Some(response)
    }

    /// One scrape's exposition, or `None` when metrics are off: the request
    /// path's families, and the counters the connections, upstreams, limits,
    /// billing and the store keep.
    pub(crate) fn exposition(&self) -> Option<String> {
        let families = self.metrics.as_ref()?;
        let mut registry = Registry::default();
        families.register(&mut registry);
        registry.register_collector(Box::new(Counters {
            connections: Arc::clone(&self.connections),
            router: Arc::clone(&self.router),
            limiter: Arc::clone(&self.limiter),
            billing: self.billing.clone(),
            auth: Arc::clone(&self.auth),
            request_store_errors: families.request_store_errors(),
        }));
        Some(metrics::encode(&registry))
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
}

/// `/v1/models`: the models a key may use, from the routing table.
#[derive(Debug)]
pub(crate) struct Models {
    /// Concrete names an upstream pattern serves, to list besides the exact ones.
    pub(crate) listed: Vec<String>,
    /// The `created` time of every model object.
    pub(crate) started_unix: i64,
}

impl Models {
    pub(crate) fn new(listed: Vec<String>) -> Self {
        Self {
            listed,
            started_unix: Utc::now().timestamp(),
        }
    }

    /// Whether keygate answers `endpoint` itself.
    pub(crate) fn serves(endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::ListModels | Endpoint::GetModel)
    }

    /// The answer for an endpoint [`Models::serves`]: the list, or one model.
    pub(crate) fn answer(
        &self,
        router: &Router,
        model_id: Option<&str>,
        key: &ApiKey,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        match model_id {
            None => Ok(self.list_models(router, key)),
            Some(id) => self.get_model(router, key, id),
        }
    }

    /// The models a key may use, in routing order: every exact name an upstream
    /// lists, then every configured or key-listed exact name an upstream pattern
    /// serves.
    fn visible_models<'a>(
        &'a self,
        router: &'a Router,
        key: &'a ApiKey,
    ) -> Vec<(&'a str, &'a str)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for upstream in router.upstreams() {
            let names = upstream
                .models()
                .iter()
                .filter_map(|p| p.exact())
                .chain(self.listed.iter().map(String::as_str))
                .chain(
                    key.models
                        .iter()
                        .map(String::as_str)
                        .filter(|m| !m.ends_with('*')),
                );
            for name in names {
                // A name belongs to the first upstream serving it: that is where
                // it routes.
                let routed = router
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

    fn list_models(&self, router: &Router, key: &ApiKey) -> Response<GatewayBody> {
        let data: Vec<_> = self
            .visible_models(router, key)
            .into_iter()
            .map(|(id, owner)| self.model_object(id, owner))
            .collect();
        let body = serde_json::json!({"object": "list", "data": data});
        json(StatusCode::OK, body.to_string())
    }

    fn get_model(
        &self,
        router: &Router,
        key: &ApiKey,
        id: &str,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let owner = router
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
                "{} does not exist or you do not have access to it",
                model_phrase(id)
            ))),
        }
    }
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
