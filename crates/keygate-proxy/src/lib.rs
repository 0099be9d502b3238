//! keygate-proxy: the gateway's hyper service. It authenticates the key (through a
//! cache that follows the store's change feed), applies scope and model policy,
//! routes by `model` to an upstream, forwards the body byte for byte with the
//! provider's key, and streams the answer back frame by frame. Every error it
//! answers itself is OpenAI-shaped and comes from one mapping in [`ProxyError::kind`].
//!
//! With [`Billing`] on, it reserves the upper bound of each request's cost before
//! forwarding, reads usage from the response as it streams past and settles the
//! actual cost when it ends.
//!
//! It does no SQL: the store is a `dyn CredentialStore` and a `dyn Ledger`, so it
//! builds no database driver; pick the store's backends with `keygate-store`'s
//! `sqlite` and `postgres` features.
//!
//! With [`Tracing`] on ([`Gateway::with_tracing`]), each proxied request gets an
//! OpenTelemetry span in the GenAI conventions, exported over OTLP/HTTP.
//!
//! Embedding the gateway in a service of your own takes a store, a config with the
//! upstreams, and a listener. Connections are served on the runtime that calls
//! [`serve`]; [`ServerOptions::workers`] serves them instead on threads of their
//! own, a current-thread runtime each, as the `keygate` binary does:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use keygate_keys::KeyPrefix;
//! use keygate_proxy::{
//!     Gateway, ProviderKey, ProviderKind, ProxyConfig, ServerOptions, UpstreamConfig,
//! };
//! use keygate_store::{CredentialStore, MemoryStore};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() {
//! let store: Arc<dyn CredentialStore> = Arc::new(MemoryStore::new());
//! let openai = UpstreamConfig {
//!     provider_keys: vec![ProviderKey::new("sk-your-provider-key".into())],
//!     ..UpstreamConfig::new(
//!         "openai",
//!         "https://api.openai.com/v1",
//!         ProviderKind::OpenAi,
//!         vec!["gpt-4o*".into()],
//!     )
//! };
//! let config = ProxyConfig::new(KeyPrefix::default(), vec![openai]);
//! config.validate().unwrap(); // what `keygate --check` runs
//! let gateway = Arc::new(Gateway::new(config, store).unwrap());
//! // Billing: `gateway.with_billing(Arc::new(Billing::new(BillingConfig::new(prices), ledger)))`.
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let options = ServerOptions { grace: Duration::from_secs(30), ..ServerOptions::new() };
//! // Serves until the shutdown future resolves (here at once), then drains.
//! let stop = async {};
//! keygate_proxy::serve(listener, gateway, options, stop).await;
//! # }
//! ```

mod access_log;
mod auth;
mod backoff;
mod billing;
mod body;
mod client_addr;
mod config;
mod conn;
mod context;
mod endpoint;
mod error;
mod failover;
mod forward;
mod gateway;
mod health;
mod limits;
mod local;
mod metrics;
mod models;
mod own_view;
mod pipeline;
mod policy;
mod probe;
mod public;
mod rate;
mod routing;
mod server;
mod signing;
mod text;
mod traces;
mod upstream;
mod upstream_pool;
mod worker;
mod workers;

pub use auth::{Authenticated, Authenticator, CachedKey};
pub use billing::{
    Billing, BillingConfig, BillingMetrics, BillingSnapshot, ESTIMATE_BYTES_PER_TOKEN,
    WriterSettings,
};
pub use body::{BodyEnd, BodyError, BodyObserver, GatewayBody, IdleTimeout};
pub use config::{
    AuthSettings, DEFAULT_AUTH_FAILURES_PER_MINUTE, LimitSettings, ProxyConfig, PublicKeyLimits,
    Tier, defaults,
};
pub use context::PeerAddr;
pub use endpoint::{BodyFormat, Endpoint, ProviderKind};
pub use error::{BoxError, ConfigError, ErrorKind, ErrorSource, ProxyError};
pub use gateway::{Background, Exchange, Gateway, ResponseTap};
pub use health::BreakerSettings;
pub use keygate_limits::{Limits, OnBackendError, RedisLimiter, RedisSettings};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricsSettings};
pub use models::{InvalidModelPattern, ModelPattern, key_allows_model};
pub use rate::{LimitKind, RateHeaders};
pub use routing::{Affinity, RetryOn, Router, RoutingMetrics, RoutingSettings};
pub use server::{ServerOptions, Shutdown, load_tls, serve_metrics, server_tls};
pub use traces::{Tracing, TracingConfig};
pub use upstream::{
    DEFAULT_STREAMS_PER_CONNECTION, HookSecret, ProviderKey, SigningConfig, Upstream,
    UpstreamConfig, UpstreamTimeouts,
};
pub use workers::serve;

/// Internals reached by the criterion benches in `benches/`; not an API.
#[doc(hidden)]
pub mod bench {
    use crate::ProxyError;

    /// The gateway's peek at `model` and `stream` in a JSON request body.
    pub fn probe_json(body: &[u8]) -> Result<(String, bool), ProxyError> {
        crate::probe::probe_model_and_stream(body)
    }

    /// What routing does per request before forwarding: the candidates for an
    /// OpenAI `model`, the pick for `key_id`, and the report of a good answer.
    /// Returns the picked upstream's index.
    pub fn route(router: &crate::Router, model: &str, key_id: &str) -> Result<usize, ProxyError> {
        use crate::routing::{Outcome, Tried, sticky_hash};
        let candidates = router.candidates(crate::ProviderKind::OpenAi, model)?;
        let target = router
            .pick(&candidates, &Tried::default(), sticky_hash(key_id))
            .ok_or_else(|| ProxyError::UpstreamUnavailable("none".into()))?;
        router.report(target, Outcome::Answered, false);
        Ok(target.upstream)
    }

    /// What tracing adds to one chat request: the span started from the
    /// request's headers (its `traceparent` read and replaced), the GenAI and
    /// keygate attributes set, the usage handed over, and the span ended.
    pub fn request_span(tracing: &crate::Tracing, headers: &mut http::HeaderMap) {
        let mut span = tracing.start(&http::Method::POST, headers);
        span.operation = crate::traces::operation(crate::Endpoint::ChatCompletions);
        span.provider = Some("openai");
        let model = "gpt-4o".to_owned();
        let key_id = "key_0123456789abcdef".to_owned();
        let upstream = "openai".to_owned();
        if let Some(slot) = span.usage_slot() {
            slot.set(1200, 350);
        }
        let fields = crate::traces::SpanFields {
            route: "/v1/chat/completions",
            model: Some(&model),
            key_id: Some(&key_id),
            upstream: Some(&upstream),
            attempts: 1,
        };
        span.end(&fields, http::StatusCode::OK, None);
    }

    /// The metric families of a gateway with three upstreams and five
    /// configured models, for timing what one request records.
    #[derive(Debug)]
    pub struct Metrics(std::sync::Arc<crate::metrics::GatewayMetrics>);

    impl Metrics {
        /// Families as `[metrics] per_key` says.
        pub fn new(per_key: bool) -> Self {
            let models = [
                "gpt-4o",
                "gpt-4o-mini",
                "o3",
                "claude-sonnet-4-5",
                "text-embedding-3-small",
            ];
            Self(std::sync::Arc::new(crate::metrics::GatewayMetrics::new(
                per_key,
                ["openai", "azure", "anthropic"],
                models,
            )))
        }

        /// What a billed chat completion records: in flight while it runs,
        /// its tokens and cost, its status, duration and first byte.
        pub fn record_request(
            &self,
            model: &str,
            key: (&keygate_store::KeyId, &keygate_store::AccountId),
        ) {
            let in_flight = self.0.in_flight();
            let usage = keygate_billing::Usage {
                input_tokens: 1200,
                output_tokens: 300,
                cached_input_tokens: 0,
                source: keygate_billing::UsageSource::Reported,
            };
            self.0
                .usage(model, key, &usage, keygate_store::Micros(6000));
            in_flight.metrics().finished(&crate::metrics::Finished {
                route: "/v1/chat/completions",
                status: 200,
                upstream: Some("openai"),
                key: Some((key.0.as_str(), key.1.as_str())),
                elapsed: std::time::Duration::from_millis(40),
                first_byte: Some(std::time::Duration::from_millis(12)),
                end: Some(crate::BodyEnd::Complete),
            });
        }
    }
}
