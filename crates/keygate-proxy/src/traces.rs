//! Traces: one OpenTelemetry span per proxied request (kind SERVER, named
//! `{gen_ai.operation.name} {gen_ai.request.model}` after the GenAI semantic
//! conventions), exported over OTLP/HTTP in batches. Off unless a [`Tracing`] is
//! given to [`crate::Gateway::with_tracing`].
//!
//! The span starts when the request arrives, as the child of the client's W3C
//! `traceparent` when it sends a valid one, and ends where the request log line
//! is written: when the forwarded body ends (streams included) or when keygate
//! answers an error itself. The upstream gets a `traceparent` naming keygate's
//! span instead of the client's. Its attributes are metadata only: never a body,
//! a header value, a key, a query string or a client address.
//!
//! Export never waits on a request: a finished span goes into the SDK's bounded
//! batch queue (a span that finds it full is dropped, counted, and logged once by
//! the SDK), and a worker thread sends the batches through keygate's own hyper
//! client, on the tokio runtime the [`Tracing`] was built in.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use keygate_billing::{ApiShape, JsonUsage, StreamUsage, UsageSource};
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use crate::body::{BodyEnd, BodyObserver};
use crate::endpoint::Endpoint;
use crate::error::ConfigError;

/// The path spans are posted to, below the endpoint.
const TRACES_PATH: &str = "/v1/traces";
/// Spans waiting for export; past this, new spans are dropped (and counted).
const MAX_QUEUE: usize = 4096;
/// Spans in one export request.
const MAX_BATCH: usize = 512;
/// How often a partial batch is sent.
const EXPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The largest collector answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The span's name until the request is known (an unknown route).
const UNNAMED: &str = "keygate";

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `[tracing]`: where spans go and which requests get one.
#[derive(Clone)]
pub struct TracingConfig {
    /// The collector's base URL (`http://host:4318`); spans are posted to
    /// `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of new traces sampled, `0.0..=1.0`; a client's sampled parent
    /// is honoured whatever it is (parent-based sampling).
    pub sample_ratio: f64,
    /// Longest wait for one export request.
    pub timeout: Duration,
    /// Headers sent with every export (an API key, say): secret, never shown.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(name, _)| format!("{name}: <redacted>"))
            .collect();
        f.debug_struct("TracingConfig")
            .field("otlp_endpoint", &self.shown_endpoint())
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .finish()
    }
}

impl TracingConfig {
    /// The default service name.
    pub const DEFAULT_SERVICE_NAME: &'static str = "keygate";
    /// The default export timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Every request traced, to `otlp_endpoint`, as `keygate`.
    pub fn new(otlp_endpoint: impl Into<String>) -> Self {
        Self {
            otlp_endpoint: otlp_endpoint.into(),
            service_name: Self::DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: 1.0,
            timeout: Self::DEFAULT_TIMEOUT,
            headers: Vec::new(),
        }
    }

    /// Checks every field; errors name the `[tracing]` key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.traces_uri()?;
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::new(
                "tracing.service_name",
                "must not be empty",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "tracing.sample_ratio",
                format!(
                    "{} is out of range; write a number from 0.0 (no new trace sampled) to 1.0 (every request)",
                    self.sample_ratio
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "tracing.timeout",
                "must be more than zero",
            ));
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    format!("tracing.headers.{name}"),
                    "is not a valid HTTP header name",
                ));
            }
            // Never the value in the message: it is a secret.
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::new(
                    format!("tracing.headers.{name}"),
                    "the value is not a valid HTTP header value",
                ));
            }
        }
        Ok(())
    }

    /// The endpoint as it may be shown: scheme, host, port and path, without
    /// user info or query.
    pub fn shown_endpoint(&self) -> String {
        match self.otlp_endpoint.parse::<http::Uri>() {
            Ok(uri) => {
                let host = uri.host().unwrap_or("?");
                let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
                let scheme = uri.scheme_str().unwrap_or("?");
                format!(
                    "{scheme}://{host}{port}{}",
                    uri.path().trim_end_matches('/')
                )
            }
            Err(_) => "<invalid>".to_owned(),
        }
    }

    /// `{otlp_endpoint}/v1/traces`, checked.
    fn traces_uri(&self) -> Result<String, ConfigError> {
        let field = "tracing.otlp_endpoint";
        let uri: http::Uri = self.otlp_endpoint.parse().map_err(|_| {
            ConfigError::new(
                field,
                "is not a URL; write the collector's base URL, like \"http://127.0.0.1:4318\"",
            )
        })?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(ConfigError::new(
                    field,
                    "must start with http:// or https:// (OTLP over HTTP)",
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(ConfigError::new(field, "has no host"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(ConfigError::new(
                field,
                "must not carry credentials; send them in [tracing] headers",
            ));
        }
        if uri.query().is_some() {
            return Err(ConfigError::new(field, "must not have a query string"));
        }
        let base = self.otlp_endpoint.trim_end_matches('/');
        Ok(format!("{base}{TRACES_PATH}"))
    }
}

/// Where request spans go: a tracer, and the provider to flush at shutdown when
/// keygate built it.
pub struct Tracing {
    tracer: BoxedTracer,
    provider: Option<SdkTracerProvider>,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("owns_provider", &self.provider.is_some())
            .finish_non_exhaustive()
    }
}

impl Tracing {
    /// Spans exported over OTLP/HTTP (protobuf) as `config` says, in batches.
    /// Call it inside the tokio runtime the gateway runs on: exports are sent
    /// on it.
    pub fn otlp(config: &TracingConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let endpoint = config.traces_uri()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("tracing", "must be set up inside a tokio runtime"))?;
        let client = ExportClient::new(runtime, config.timeout)?;
        let headers: HashMap<String, String> = config.headers.iter().cloned().collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(config.timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| ConfigError::new("tracing", format!("the OTLP exporter: {e}")))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(config.sample_ratio))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self::with_provider(provider))
    }

    /// Spans from an SDK provider of the embedder's (its own exporter and
    /// sampler); [`Tracing::shutdown`] flushes and shuts it down.
    pub fn with_provider(provider: SdkTracerProvider) -> Self {
        use opentelemetry::trace::TracerProvider as _;
        let tracer = provider.tracer("keygate");
        Self {
            tracer: BoxedTracer::new(Box::new(tracer)),
            provider: Some(provider),
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Spans from any tracer of the embedder's; flushing it is the embedder's
    /// business.
    pub fn with_tracer<T>(tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        Self {
            tracer: BoxedTracer::new(Box::new(tracer)),
            provider: None,
            propagator: TraceContextPropagator::new(),
        }
    }

    /// Sends the spans ended so far, waiting at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush());
        match tokio::time::timeout(limit, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(error = %error, "traces: flush failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("traces: flush did not finish in time"),
        }
    }

    /// Sends the spans still queued and stops the exporter, waiting at most
    /// `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit));
        // The SDK bounds its own wait; this one only guards against it not.
        match tokio::time::timeout(limit + Duration::from_secs(1), stopped).await {
            Ok(Ok(Ok(()))) => tracing::info!("traces flushed"),
            Ok(Ok(Err(error))) => tracing::warn!(error = %error, "traces: shutdown failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!("traces: shutdown did not finish in time"),
        }
    }

    /// Starts a request's span, the child of the client's `traceparent` when it
    /// is valid, and puts keygate's own `traceparent` (and the trace state) in
    /// `headers` in its place, for the upstream.
    pub(crate) fn start(&self, method: &Method, headers: &mut HeaderMap) -> RequestSpan {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(UNNAMED)
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let own = Context::new().with_remote_span_context(span.span_context().clone());
        self.propagator
            .inject_context(&own, &mut HeaderInjector(headers));
        RequestSpan {
            ended: false,
            recording: span.is_recording(),
            span,
            method: method.clone(),
            operation: None,
            provider: None,
            usage: UsageSlot::default(),
        }
    }
}

fn sampler(ratio: f64) -> Sampler {
    let root = if ratio >= 1.0 {
        Sampler::AlwaysOn
    } else if ratio <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(ratio)
    };
    Sampler::ParentBased(Box::new(root))
}

/// The GenAI operation an endpoint performs (`gen_ai.operation.name`), for the
/// endpoints that run a model.
pub(crate) fn operation(endpoint: Endpoint) -> Option<&'static str> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => Some("chat"),
        Endpoint::Completions => Some("text_completion"),
        Endpoint::Embeddings => Some("embeddings"),
        Endpoint::ImageGenerations
        | Endpoint::ImageEdits
        | Endpoint::ImageVariations
        | Endpoint::AudioSpeech
        | Endpoint::AudioTranscriptions
        | Endpoint::AudioTranslations => Some("generate_content"),
        _ => None,
    }
}

/// Tokens the request used, as billing read them (or the span's own reader
/// when billing is off), for the span's end.
#[derive(Clone, Debug, Default)]
pub(crate) struct UsageSlot(Arc<OnceLock<(u64, u64)>>);

impl UsageSlot {
    /// Sets the input and output tokens; the first value set stays.
    pub(crate) fn set(&self, input: u64, output: u64) {
        let _ = self.0.set((input, output));
    }

    fn get(&self) -> Option<(u64, u64)> {
        self.0.get().copied()
    }
}

/// What the request log knows that the span's end reports.
#[derive(Debug)]
pub(crate) struct SpanFields<'a> {
    /// The canonical route, or `unknown`.
    pub(crate) route: &'static str,
    pub(crate) model: Option<&'a str>,
    pub(crate) key_id: Option<&'a str>,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) attempts: u32,
}

/// One request's span, carried in its log fields and ended with them.
pub(crate) struct RequestSpan {
    span: BoxedSpan,
    /// Set by [`RequestSpan::end`]; a span dropped without it was cut short.
    ended: bool,
    recording: bool,
    method: Method,
    /// `gen_ai.operation.name`, once the endpoint is known.
    pub(crate) operation: Option<&'static str>,
    /// `gen_ai.provider.name`: the endpoint's, then the upstream's kind.
    pub(crate) provider: Option<&'static str>,
    usage: UsageSlot,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan")
            .field("recording", &self.recording)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl RequestSpan {
    /// Where billing hands the request's usage to the span, if it records.
    pub(crate) fn usage_slot(&self) -> Option<UsageSlot> {
        self.recording.then(|| self.usage.clone())
    }

    /// An observer that reads usage from the upstream's bytes itself (in the
    /// endpoint's `shape`, if it has one), for a recording span of a request
    /// billing does not read.
    pub(crate) fn usage_reader(
        &self,
        shape: Option<ApiShape>,
        event_stream: bool,
    ) -> Option<Box<dyn BodyObserver>> {
        if !self.recording {
            return None;
        }
        let shape = shape?;
        Some(Box::new(UsageReader::new(
            shape,
            event_stream,
            self.usage.clone(),
        )))
    }

    /// Ends the span with the request's fields, its status, and on a failure
    /// what went wrong (`error.type`).
    pub(crate) fn end(mut self, fields: &SpanFields<'_>, status: StatusCode, error: Option<&str>) {
        if self.recording {
            let model = fields.model;
            let name = match (self.operation, model) {
                (Some(op), Some(model)) => format!("{op} {model}"),
                (Some(op), None) => op.to_owned(),
                (None, _) if fields.route != "unknown" => {
                    format!("{} {}", self.method.as_str(), fields.route)
                }
                (None, _) => self.method.as_str().to_owned(),
            };
            self.span.update_name(name);
            let mut attributes = Vec::with_capacity(14);
            attributes.push(KeyValue::new(
                "http.request.method",
                self.method.as_str().to_owned(),
            ));
            if fields.route != "unknown" {
                attributes.push(KeyValue::new("http.route", fields.route));
            }
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if let Some(op) = self.operation {
                attributes.push(KeyValue::new("gen_ai.operation.name", op));
            }
            if let Some(provider) = self.provider {
                attributes.push(KeyValue::new("gen_ai.provider.name", provider));
            }
            if let Some(model) = model {
                attributes.push(KeyValue::new("gen_ai.request.model", model.to_owned()));
            }
            if let Some((input, output)) = self.usage.get() {
                attributes.push(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    i64::try_from(input).unwrap_or(i64::MAX),
                ));
                attributes.push(KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    i64::try_from(output).unwrap_or(i64::MAX),
                ));
            }
            if let Some(key_id) = fields.key_id {
                attributes.push(KeyValue::new("keygate.key_id", key_id.to_owned()));
            }
            if let Some(upstream) = fields.upstream {
                attributes.push(KeyValue::new("keygate.upstream", upstream.to_owned()));
            }
            attributes.push(KeyValue::new(
                "keygate.attempts",
                i64::from(fields.attempts),
            ));
            if let Some(error) = error {
                attributes.push(KeyValue::new("error.type", error.to_owned()));
            }
            self.span.set_attributes(attributes);
            if status.is_server_error() {
                self.span
                    .set_status(Status::error(error.unwrap_or(status.as_str()).to_owned()));
            }
        }
        self.ended = true;
        self.span.end();
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        // The request was dropped before it was answered (the client left
        // while keygate was still at work): said so, with what is known.
        if !self.ended && self.recording {
            if let Some(op) = self.operation {
                self.span.update_name(op.to_owned());
            }
            self.span.set_attributes([
                KeyValue::new("http.request.method", self.method.as_str().to_owned()),
                KeyValue::new("error.type", "client_cancelled"),
            ]);
        }
        self.span.end();
    }
}

/// Reads usage from the upstream's bytes for the span when billing does not.
struct UsageReader {
    reader: Reader,
    slot: UsageSlot,
}

enum Reader {
    Json(JsonUsage),
    Stream(Box<StreamUsage>),
}

impl UsageReader {
    fn new(shape: ApiShape, event_stream: bool, slot: UsageSlot) -> Self {
        let reader = if event_stream {
            Reader::Stream(Box::new(StreamUsage::new(shape)))
        } else {
            Reader::Json(JsonUsage::new(shape))
        };
        Self { reader, slot }
    }
}

impl BodyObserver for UsageReader {
    fn on_data(&mut self, data: &Bytes) {
        match &mut self.reader {
            Reader::Json(json) => json.push(data),
            Reader::Stream(stream) => stream.push(data),
        }
    }

    fn on_end(&mut self, _end: BodyEnd) {
        let usage = match &self.reader {
            Reader::Json(json) => json.usage(),
            Reader::Stream(stream) => stream.usage(),
        };
        if usage.source != UsageSource::Unknown {
            self.slot.set(usage.input_tokens, usage.output_tokens);
        }
    }
}

/// The exporter's HTTP client: keygate's hyper-util client (plain HTTP, or TLS
/// with the webpki roots through rustls and ring), each request run on the
/// gateway's runtime with a deadline.
#[derive(Clone)]
struct ExportClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ExportClient {
    fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Result<Self, ConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tracing", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        // ALPN is set by the builder; the config above must not set it.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Self {
            client,
            runtime,
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let this = self.clone();
        let sent = self.runtime.spawn(async move {
            let exchange = async {
                let (parts, body) = request.into_parts();
                let answer = this
                    .client
                    .request(http::Request::from_parts(parts, Full::new(body)))
                    .await?;
                let (parts, body) = answer.into_parts();
                let body = Limited::new(body, MAX_ANSWER_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(this.timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(HttpError::from("the collector did not answer in time")),
            }
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_shown_without_secrets_and_headers_are_redacted() {
        let mut config = TracingConfig::new("https://otel.example:4318/base/");
        config.headers = vec![("authorization".into(), "Bearer otlp-secret".into())];
        assert_eq!(config.shown_endpoint(), "https://otel.example:4318/base");
        assert_eq!(
            config.traces_uri().unwrap(),
            "https://otel.example:4318/base/v1/traces"
        );
        let shown = format!("{config:?}");
        assert!(
            shown.contains("authorization") && !shown.contains("otlp-secret"),
            "{shown}"
        );
        let creds = TracingConfig::new("http://user:pw@c:4318");
        let err = creds.validate().unwrap_err();
        assert_eq!(err.field, "tracing.otlp_endpoint");
        assert!(!err.message.contains("pw"));
        assert_eq!(creds.shown_endpoint(), "http://c:4318");
    }

    #[test]
    fn operations_follow_the_genai_names() {
        assert_eq!(operation(Endpoint::ChatCompletions), Some("chat"));
        assert_eq!(operation(Endpoint::Messages), Some("chat"));
        assert_eq!(operation(Endpoint::Completions), Some("text_completion"));
        assert_eq!(operation(Endpoint::Embeddings), Some("embeddings"));
        assert_eq!(operation(Endpoint::ListFiles), None);
    }
}
