//! A mock OpenAI + Anthropic upstream: a real hyper server (HTTP/1.1 and HTTP/2,
//! plain or TLS) on `127.0.0.1:0` that answers the routes a gateway forwards,
//! records every request, and can be told to fail, hang, slow down, demand a key
//! or misbehave in the ways of [`Fault`].
//!
//! This module holds the handle a test drives; `state` what the handle and the
//! connections share (behaviour, recorded requests, counters), `server` the
//! accept loop and connections, `routes` how one request is answered, `formats`
//! the wire formats and `body` the paced, counted response bodies.

mod body;
mod formats;
mod routes;
mod server;
mod state;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCerts;
use server::accept_loop;
use state::{Failure, Shared, lock};

pub use state::{Fault, RecordedRequest};

/// A mock OpenAI + Anthropic upstream listening on `127.0.0.1` on a free port.
///
/// Routes (each also without the `/v1` prefix):
/// - `POST /v1/chat/completions` and `POST /v1/completions`, plain JSON or SSE
///   with `"stream": true` (a usage chunk only with
///   `stream_options.include_usage`);
/// - `POST /v1/embeddings`, deterministic vectors, floats or `base64`;
/// - `POST /v1/messages`, Anthropic JSON or SSE;
/// - `POST /v1/responses`, a minimal Responses API reply, or its SSE events with
///   `"stream": true`;
/// - `GET /v1/models`, listing `gpt-4o`, `gpt-4o-mini`, `gpt-4.1-mini`,
///   `text-embedding-3-small` and `text-embedding-3-large`.
///
/// Anything else is a 404 and unparsable JSON a 400, both in the provider's
/// error shape. Token counts are word counts: prompt tokens are the words of
/// every message `content` (plus Anthropic's `system` and the Responses API's
/// `instructions`), completion tokens the words of the reply. Streams send the
/// reply one word per event, each event in its own body frame.
///
/// Dropping the mock (or [`MockUpstream::shutdown`]) stops the accept loop and
/// every connection and HTTP/2 stream task it started.
pub struct MockUpstream {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    /// Dropping this sender tells every spawned HTTP/2 stream task to stop.
    stop: Option<watch::Sender<()>>,
    /// The accept loop; it owns the connection tasks.
    accept: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts a plain-HTTP mock (HTTP/1.1, or HTTP/2 with prior knowledge).
    pub async fn start() -> MockUpstream {
        Self::spawn(None).await
    }

    /// Starts an HTTPS mock serving `certs`' leaf certificate, offering ALPN
    /// `h2` and `http/1.1`. Clients trust it through `certs.ca_pem` and reach it as
    /// `localhost` (see [`MockUpstream::url`]).
    pub async fn start_tls(certs: &TestCerts) -> MockUpstream {
        let config = certs.server_config(&[b"h2", b"http/1.1"]);
        Self::spawn(Some(TlsAcceptor::from(config))).await
    }

    async fn spawn(tls: Option<TlsAcceptor>) -> MockUpstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("mock upstream cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("mock upstream has no local address: {e}"));
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(());
        let is_tls = tls.is_some();
        // Who waits: `shutdown` awaits this task; `Drop` aborts it. Either way its
        // `JoinSet` of connection tasks is aborted with it.
        let accept = tokio::spawn(accept_loop(listener, tls, Arc::clone(&shared), stopped));
        MockUpstream {
            addr,
            tls: is_tls,
            shared,
            stop: Some(stop),
            accept: Some(accept),
        }
    }

    /// The socket address the mock listens on (always `127.0.0.1`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, without a trailing slash or `/v1`:
    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for a TLS mock.
    pub fn url(&self) -> String {
        let port = self.addr.port();
        if self.tls {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        }
    }

    /// From now on, requests must carry `Authorization: Bearer KEY` (OpenAI
    /// routes) or `x-api-key: KEY` (`/v1/messages`); others get a 401 in the
    /// provider's error shape.
    ///
    /// The official `anthropic` Python SDK (2.x) sends its key as
    /// `Authorization: Bearer`, which this check rejects on `/v1/messages`: it
    /// stands for the upstream's strict `x-api-key` contract, not for what clients
    /// send a gateway.
    pub fn require_key(&self, key: &str) {
        self.shared.behaviour().key = Some(key.to_owned());
    }

    /// Sets the assistant's reply text (default: "The quick brown fox jumps over
    /// the lazy dog."). Streams rebuild it from words joined by single spaces.
    pub fn set_reply(&self, text: &str) {
        text.clone_into(&mut self.shared.behaviour().reply);
    }

    /// Reports `n` of every following prompt's tokens (at most all of them) as
    /// read from the provider's cache: `prompt_tokens_details.cached_tokens`,
    /// `input_tokens_details.cached_tokens` and Anthropic's
    /// `cache_read_input_tokens`.
    pub fn set_cached_tokens(&self, n: usize) {
        self.shared.behaviour().cached_tokens = n;
    }

    /// Reports `prompt` and `completion` as every following answer's input and
    /// output token counts, raw JSON values written as given (a number past
    /// `i64`, a negative one, a string): `prompt_tokens`/`completion_tokens`,
    /// Responses' `input_tokens`/`output_tokens` and Anthropic's
    /// `input_tokens`/`output_tokens`, in JSON and streamed answers alike.
    pub fn set_usage(&self, prompt: serde_json::Value, completion: serde_json::Value) {
        self.shared.behaviour().reported_usage = Some((prompt, completion));
    }

    /// Reports the real counts again after [`MockUpstream::set_usage`].
    pub fn clear_usage(&self) {
        self.shared.behaviour().reported_usage = None;
    }

    /// Delays every following response's headers by `d`.
    pub fn set_latency(&self, d: Duration) {
        self.shared.behaviour().latency = d;
    }

    /// Sleeps `d` between the frames of every following streamed response
    /// (default: no delay).
    pub fn set_chunk_delay(&self, d: Duration) {
        self.shared.behaviour().chunk_delay = d;
    }

    /// Answers every following request with `status` and `body` (as
    /// `application/json`) until [`MockUpstream::clear_failure`]. Panics if
    /// `status` is not a valid status code.
    pub fn fail_with(&self, status: u16, body: &str) {
        let status = StatusCode::from_u16(status)
            .unwrap_or_else(|e| panic!("fail_with: invalid status {status}: {e}"));
        self.shared.behaviour().failure =
            Some(Failure::Status(status, Bytes::from(body.to_owned())));
    }

    /// Adds the header `name: value` to every following answer, failures
    /// included (a `Retry-After` on a 429). Panics on an invalid name or value.
    pub fn set_response_header(&self, name: &str, value: &str) {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("set_response_header: invalid name {name:?}: {e}"));
        let value = http::HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("set_response_header: invalid value {value:?}: {e}"));
        self.shared.behaviour().extra_headers.push((name, value));
    }

    /// Never sends response headers for any following request (until
    /// [`MockUpstream::clear_failure`]); a request that already hangs hangs until
    /// the client goes away or the mock stops. Requests are still recorded.
    pub fn hang(&self) {
        self.shared.behaviour().failure = Some(Failure::Hang);
    }

    /// Misbehaves as `fault` says on every following request (or, for
    /// [`Fault::Refuse`], connection) until [`MockUpstream::clear_failure`].
    pub fn set_fault(&self, fault: Fault) {
        self.shared.behaviour().fault = Some(fault);
    }

    /// Undoes [`MockUpstream::fail_with`], [`MockUpstream::hang`] and
    /// [`MockUpstream::set_fault`] for following requests.
    pub fn clear_failure(&self) {
        let mut behaviour = self.shared.behaviour();
        behaviour.failure = None;
        behaviour.fault = None;
    }

    /// Whether following requests are recorded (default: yes). A load test
    /// turns recording off so the mock's memory does not grow with every request
    /// and [`MockUpstream::requests`] stays as it was.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    /// Whether connections accepted from now on set `TCP_NODELAY` (default: no).
    /// Without it, the second streamed response on a kept-alive connection can
    /// sit in Nagle's buffer until the client's delayed ACK (about 40 ms on
    /// Linux), so a load test that measures the gaps between chunks turns it on,
    /// as production servers do.
    pub fn set_nodelay(&self, on: bool) {
        self.shared.nodelay.store(on, Ordering::Relaxed);
    }

    /// Caps the HTTP/2 streams of connections accepted from now on at `max`
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`, as providers set it); `None` (the
    /// default) for no cap.
    pub fn set_max_streams(&self, max: Option<u32>) {
        self.shared
            .max_streams
            .store(max.unwrap_or(0), Ordering::Relaxed);
    }

    /// Connections accepted so far (over TLS: those whose handshake finished).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order (while recording is on).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Streamed responses whose body was dropped before its last event was sent,
    /// i.e. the client went away mid-stream.
    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Streamed responses whose last event was sent.
    pub fn completed_streams(&self) -> usize {
        self.shared.completed.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every connection and waits for the accept loop and
    /// its connection tasks to end.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("url", &self.url())
            .field("requests", &lock(&self.shared.requests).len())
            .finish_non_exhaustive()
    }
}
