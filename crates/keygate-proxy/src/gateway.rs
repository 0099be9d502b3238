//! The gateway service: its parts (authenticator, routing table, forwarder,
//! billing, local answers), how it is built from a [`ProxyConfig`], the public
//! tap point on forwarded responses, and its background tasks. The request path
//! itself is in [`crate::pipeline`].

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use keygate_store::{ApiKey, CredentialStore};
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::billing::Billing;
use crate::body::BodyObserver;
use crate::config::ProxyConfig;
use crate::endpoint::Endpoint;
use crate::error::ConfigError;
use crate::forward::Forwarder;
use crate::limits::RequestLimiter;
use crate::local::{Local, Models};
use crate::metrics::GatewayMetrics;
use crate::routing::Router;
use crate::traces::Tracing;
use crate::upstream::Upstream;

/// How long shutdown waits for settlements and the last usage batch.
const BILLING_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last spans to be exported.
const TRACING_SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

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

/// A tap point on forwarded responses: an embedder plugs in here to observe each
/// body as it streams to the client (after billing's own stage).
pub trait ResponseTap: Send + Sync + 'static {
    /// An observer for this exchange's body, if it wants one.
    fn tap(&self, exchange: &Exchange<'_>) -> Option<Box<dyn BodyObserver>>;
}

/// The gateway service.
pub struct Gateway {
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) router: Arc<Router>,
    pub(crate) forwarder: Forwarder,
    pub(crate) local: Local,
    pub(crate) models: Models,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) taps: Vec<Arc<dyn ResponseTap>>,
    pub(crate) billing: Option<Arc<Billing>>,
    pub(crate) limiter: Arc<RequestLimiter>,
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// The request path's metric families; `None` when metrics are off.
    pub(crate) metrics: Option<Arc<GatewayMetrics>>,
    /// Request spans, when tracing is on.
    pub(crate) tracing: Option<Arc<Tracing>>,
    poll_interval: Duration,
    last_used_flush: Duration,
    /// Dropped with the gateway: the server's worker runtimes end then (see
    /// [`crate::workers`]).
    pub(crate) lifetime: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("router", &self.router)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
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
            config.query_param.clone(),
            &config.auth,
        );
        let metrics = config.metrics.enabled.then(|| {
            let exact = config
                .upstreams
                .iter()
                .flat_map(|u| u.models.iter().map(String::as_str))
                .filter(|m| !m.ends_with('*'));
            Arc::new(GatewayMetrics::new(
                config.metrics.per_key,
                upstreams.iter().map(|u| u.name()),
                exact.chain(config.listed_models.iter().map(String::as_str)),
            ))
        });
        let router = Arc::new(Router::with_settings(upstreams, config.routing));
        let auth = Arc::new(auth);
        let limiter = Arc::new(RequestLimiter::new(
            keygate_limits::Limits::local(),
            config.limits.clone(),
        ));
        Ok(Self {
            auth: Arc::clone(&auth),
            router: Arc::clone(&router),
            forwarder: Forwarder {
                query_param: config.query_param,
                first_byte_timeout: config.timeouts.first_byte,
            },
            local: Local {
                store,
                billing: None,
                connections: Arc::default(),
                router,
                limiter: Arc::clone(&limiter),
                auth,
                metrics: metrics.clone(),
                metrics_on_gateway_port: config.metrics.on_gateway_port,
            },
            models: Models::new(config.listed_models),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            idle_timeout: config.timeouts.idle,
            taps: Vec::new(),
            billing: None,
            limiter,
            trusted_proxies: config.trusted_proxies,
            metrics,
            tracing: None,
            poll_interval: config.auth.poll_interval,
            last_used_flush: config.auth.last_used_flush,
            lifetime: tokio::sync::watch::Sender::new(()),
        })
    }

    /// Adds a tap on every forwarded response body.
    pub fn with_tap(mut self, tap: Arc<dyn ResponseTap>) -> Self {
        self.taps.push(tap);
        self
    }

    /// Bills every forwarded request through `billing`.
    pub fn with_billing(mut self, billing: Arc<Billing>) -> Self {
        self.local.billing = Some(Arc::clone(&billing));
        self.billing = Some(billing);
        self
    }

    /// Gives every proxied request a span through `tracing` (OTLP, or the
    /// embedder's own tracer). [`Background::stop`] flushes it.
    pub fn with_tracing(mut self, tracing: Arc<Tracing>) -> Self {
        self.tracing = Some(tracing);
        self
    }

    /// Request tracing, when on.
    pub fn tracing(&self) -> Option<&Arc<Tracing>> {
        self.tracing.as_ref()
    }

    /// Checks limits through `limits` (shared through Redis, say) instead of
    /// this process's own limiter.
    pub fn with_limits(mut self, limits: keygate_limits::Limits) -> Self {
        let settings = self.limiter.settings().clone();
        self.limiter = Arc::new(RequestLimiter::new(limits, settings));
        self.local.limiter = Arc::clone(&self.limiter);
        self
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &keygate_limits::Limits {
        self.limiter.limits()
    }

    /// The billing layer, when on.
    pub fn billing(&self) -> Option<&Arc<Billing>> {
        self.billing.as_ref()
    }

    /// The Prometheus exposition (OpenMetrics text) of one scrape, or `None`
    /// when metrics are off: for serving `/metrics` on a listener of its own
    /// (see [`crate::serve_metrics`]).
    pub fn metrics_text(&self) -> Option<String> {
        self.local.exposition()
    }

    /// The routing table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts the background tasks, each spawned by the part that owns it: the
    /// authenticator's change-feed follower and `last_used_at` writer, and
    /// billing's sweeper (after a sweep and a purge at start). The returned handle
    /// owns them: [`Background::stop`] (called by the server after the last
    /// connection closes) stops them and writes the last batches.
    pub async fn start_background(&self) -> Background {
        let mut tasks = Vec::from(
            self.auth
                .start_background(self.poll_interval, self.last_used_flush)
                .await,
        );
        if let Some(billing) = self.billing() {
            tasks.push(billing.start_background().await);
        }
        Background {
            auth: Arc::clone(&self.auth),
            billing: self.billing().cloned(),
            tracing: self.tracing.clone(),
            tasks,
        }
    }
}

/// The gateway's background tasks.
#[derive(Debug)]
pub struct Background {
    auth: Arc<Authenticator>,
    billing: Option<Arc<Billing>>,
    tracing: Option<Arc<Tracing>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Stops the tasks, writes the last `last_used_at` batch, and waits for the
    /// pending settlements and the last usage records, then exports the last
    /// spans.
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
        // Last: every request's span has ended once its connection closed.
        if let Some(tracing) = &self.tracing {
            tracing.shutdown(TRACING_SHUTDOWN_LIMIT).await;
        }
    }
}
