//! A small OTLP/HTTP trace collector: a real hyper server on 127.0.0.1:0 that
//! takes `POST /v1/traces`, decodes each protobuf `ExportTraceServiceRequest`
//! and keeps it with the raw bytes (to search for what must never be exported).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// One export request as the collector got it.
#[derive(Clone, Debug)]
pub struct Export {
    /// Its headers.
    pub headers: HeaderMap,
    /// The body as sent.
    pub raw: Bytes,
    /// The body, decoded.
    pub request: ExportTraceServiceRequest,
}

/// A span the collector got, with its resource's `service.name`.
#[derive(Clone, Debug)]
pub struct CollectedSpan {
    /// The span.
    pub span: Span,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
}

impl CollectedSpan {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        find(&self.span.attributes, key)
    }

    /// The string attribute `key`.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    /// The integer attribute `key`.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        }
    }

    /// The trace id, as hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The span id, as hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The parent span id, as hex (empty for a root span).
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct State {
    exports: Mutex<Vec<Export>>,
    arrived: Notify,
}

impl State {
    fn exports(&self) -> MutexGuard<'_, Vec<Export>> {
        self.exports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The collector; stops when dropped.
#[derive(Debug)]
pub struct OtlpCollector {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl OtlpCollector {
    /// Starts the collector on 127.0.0.1, on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("collector: cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("collector: no address: {e}"));
        let state = Arc::new(State::default());
        let (stop, mut stopped) = watch::channel(());
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&shared);
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                let state = Arc::clone(&state);
                                async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
        });
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    /// The base URL to give as `otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export so far.
    pub fn exports(&self) -> Vec<Export> {
        self.state.exports().clone()
    }

    /// Every span so far, in the order they arrived.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        let mut spans = Vec::new();
        for export in self.state.exports().iter() {
            for resource in &export.request.resource_spans {
                let service_name = resource.resource.as_ref().and_then(|r| {
                    match find(&r.attributes, "service.name")? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    }
                });
                for scope in &resource.scope_spans {
                    for span in &scope.spans {
                        spans.push(CollectedSpan {
                            span: span.clone(),
                            service_name: service_name.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Every export body as sent, one after the other.
    pub fn raw(&self) -> Vec<u8> {
        self.state
            .exports()
            .iter()
            .flat_map(|e| e.raw.iter().copied())
            .collect()
    }

    /// Waits until at least `n` spans have arrived; panics after `limit`.
    pub async fn wait_for_spans(&self, n: usize, limit: Duration) -> Vec<CollectedSpan> {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let arrived = self.state.arrived.notified();
                let spans = self.spans();
                if spans.len() >= n {
                    return spans;
                }
                arrived.await;
            }
        });
        match waited.await {
            Ok(spans) => spans,
            Err(_) => panic!(
                "collector: {} of {n} spans arrived within {limit:?}",
                self.spans().len()
            ),
        }
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/v1/traces" {
        return status(StatusCode::NOT_FOUND);
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let raw = body.to_bytes();
    let Ok(decoded) = ExportTraceServiceRequest::decode(raw.clone()) else {
        return status(StatusCode::BAD_REQUEST);
    };
    state.exports().push(Export {
        headers: parts.headers,
        raw,
        request: decoded,
    });
    state.arrived.notify_waiters();
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(reply)))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}
