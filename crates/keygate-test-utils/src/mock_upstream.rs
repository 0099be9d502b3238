//! A mock OpenAI + Anthropic upstream: a real hyper server (HTTP/1.1 and HTTP/2,
//! plain or TLS) on `127.0.0.1:0` that answers the routes a gateway forwards,
//! records every request, and can be told to fail, hang, slow down or demand a key.

mod formats;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCerts;
use formats::Reply;

/// The reply text until [`MockUpstream::set_reply`] changes it.
const DEFAULT_REPLY: &str = "The quick brown fox jumps over the lazy dog.";

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

/// One request as the mock received it, body included.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string, without the `?`.
    pub query: Option<String>,
    /// Every request header.
    pub headers: HeaderMap,
    /// The full request body.
    pub body: Bytes,
    /// The HTTP version the request came in on.
    pub version: Version,
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

    /// Never sends response headers for any following request (until
    /// [`MockUpstream::clear_failure`]); a request that already hangs hangs until
    /// the client goes away or the mock stops. Requests are still recorded.
    pub fn hang(&self) {
        self.shared.behaviour().failure = Some(Failure::Hang);
    }

    /// Undoes [`MockUpstream::fail_with`] and [`MockUpstream::hang`] for
    /// following requests.
    pub fn clear_failure(&self) {
        self.shared.behaviour().failure = None;
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

/// State shared by the handle and every connection.
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Off after `set_recording(false)`: requests are no longer pushed.
    recording: AtomicBool,
    /// On after `set_nodelay(true)`: accepted sockets set `TCP_NODELAY`.
    nodelay: AtomicBool,
    cancelled: AtomicUsize,
    completed: AtomicUsize,
    next_id: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            behaviour: Mutex::default(),
            requests: Mutex::default(),
            recording: AtomicBool::new(true),
            nodelay: AtomicBool::new(false),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Shared {
    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        lock(&self.behaviour)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What the test asked the mock to do; each request works on a snapshot.
#[derive(Clone)]
struct Behaviour {
    key: Option<String>,
    reply: String,
    latency: Duration,
    chunk_delay: Duration,
    failure: Option<Failure>,
    cached_tokens: usize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            key: None,
            reply: DEFAULT_REPLY.to_owned(),
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            failure: None,
            cached_tokens: 0,
        }
    }
}

#[derive(Clone)]
enum Failure {
    Status(StatusCode, Bytes),
    Hang,
}

/// Locks a mutex, ignoring poisoning: a panicking test must not hide the state
/// from the next assertion.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // The sender is only ever dropped, which ends `changed` with an error.
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if shared.nodelay.load(Ordering::Relaxed) {
                    let _ = stream.set_nodelay(true);
                }
                connections.spawn(serve_connection(
                    stream,
                    tls.clone(),
                    Arc::clone(&shared),
                    stopped.clone(),
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stopped: watch::Receiver<()>,
) {
    let builder = auto::Builder::new(StoppableExecutor { stopped });
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    match tls {
        None => {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    }
}

/// Runs hyper's HTTP/2 stream tasks until they finish or the mock stops.
#[derive(Clone)]
struct StoppableExecutor {
    stopped: watch::Receiver<()>,
}

impl<F> hyper::rt::Executor<F> for StoppableExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut stopped = self.stopped.clone();
        // Who waits: nobody; the task ends with its HTTP/2 stream, or when the
        // mock's stop sender is dropped.
        tokio::spawn(async move {
            tokio::select! {
                _ = future => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if shared.recording.load(Ordering::Relaxed) {
        lock(&shared.requests).push(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
            version: parts.version,
        });
    }
    let behaviour = shared.behaviour().clone();
    if let Some(Failure::Hang) = behaviour.failure {
        std::future::pending::<()>().await;
    }
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }
    if let Some(Failure::Status(status, body)) = behaviour.failure {
        return Ok(raw_json(status, body));
    }
    Ok(route(&shared, &behaviour, &parts, &body))
}

/// Which error shape a route answers in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
}

fn route(
    shared: &Arc<Shared>,
    behaviour: &Behaviour,
    parts: &http::request::Parts,
    body: &[u8],
) -> Response<MockBody> {
    let path = parts.uri.path();
    let route = path
        .strip_prefix("/v1")
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(path);
    let provider = if route == "/messages" {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    };
    let authorized = match &behaviour.key {
        Some(key) => authorized(&parts.headers, provider, key),
        None => true,
    };
    if !authorized {
        return match provider {
            Provider::OpenAi => json(
                StatusCode::UNAUTHORIZED,
                &formats::openai_error(
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                ),
            ),
            Provider::Anthropic => json(
                StatusCode::UNAUTHORIZED,
                &formats::anthropic_error("authentication_error", "invalid x-api-key"),
            ),
        };
    }
    let ctx = Ctx {
        shared,
        behaviour,
        provider,
    };
    match (&parts.method, route) {
        (&Method::POST, "/chat/completions") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("chatcmpl-mock", model, formats::chat_prompt_words(body));
            match stream_options(body) {
                Some(include_usage) => {
                    ctx.sse(formats::chat_completion_stream(&reply, include_usage))
                }
                None => json(StatusCode::OK, &formats::chat_completion(&reply)),
            }
        }),
        (&Method::POST, "/completions") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("cmpl-mock", model, formats::completion_prompt_words(body));
            match stream_options(body) {
                Some(include_usage) => {
                    ctx.sse(formats::text_completion_stream(&reply, include_usage))
                }
                None => json(StatusCode::OK, &formats::text_completion(&reply)),
            }
        }),
        (&Method::POST, "/embeddings") => ctx.with_json(body, |ctx, body, model| {
            match formats::embeddings(body, model) {
                Ok(reply) => json(StatusCode::OK, &reply),
                Err(message) => ctx.bad_request(&message),
            }
        }),
        (&Method::POST, "/messages") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("msg_mock", model, formats::anthropic_prompt_words(body));
            match stream_options(body) {
                Some(_) => ctx.sse(formats::message_stream(&reply)),
                None => json(StatusCode::OK, &formats::message(&reply)),
            }
        }),
        (&Method::POST, "/responses") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("resp_mock", model, formats::responses_prompt_words(body));
            let message_id = format!("msg_mock{:08}", ctx.shared.next_id());
            match stream_options(body) {
                Some(_) => ctx.sse(formats::response_stream(&reply, &message_id)),
                None => json(StatusCode::OK, &formats::response(&reply, &message_id)),
            }
        }),
        (&Method::GET, "/models") => json(StatusCode::OK, &formats::models(now())),
        (method, _) => json(
            StatusCode::NOT_FOUND,
            &formats::openai_error(
                &format!("Unknown request URL: {method} {path}."),
                "invalid_request_error",
                Some("unknown_url"),
            ),
        ),
    }
}

fn authorized(headers: &HeaderMap, provider: Provider, key: &str) -> bool {
    match provider {
        Provider::OpenAi => headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == key),
        Provider::Anthropic => headers
            .get("x-api-key")
            .is_some_and(|v| v.as_bytes() == key.as_bytes()),
    }
}

/// `None` for a non-streaming request; `Some(include_usage)` for a streaming one.
fn stream_options(body: &Value) -> Option<bool> {
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    Some(
        body.pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
    )
}

/// What a route handler needs besides the request.
struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    behaviour: &'a Behaviour,
    provider: Provider,
}

impl Ctx<'_> {
    /// Parses `body` as a JSON object with a string `model` and hands both to
    /// `answer`; a 400 otherwise.
    fn with_json(
        &self,
        body: &[u8],
        answer: impl FnOnce(&Self, &Value, &str) -> Response<MockBody>,
    ) -> Response<MockBody> {
        let body: Value = match serde_json::from_slice(body) {
            Ok(body @ Value::Object(_)) => body,
            Ok(_) => return self.bad_request("the request body must be a JSON object"),
            Err(e) => {
                return self.bad_request(&format!(
                    "We could not parse the JSON body of your request: {e}"
                ));
            }
        };
        match body.get("model").and_then(Value::as_str) {
            Some(model) => answer(self, &body, model),
            None => self.bad_request("you must provide a model parameter"),
        }
    }

    fn bad_request(&self, message: &str) -> Response<MockBody> {
        let body = match self.provider {
            Provider::OpenAi => formats::openai_error(message, "invalid_request_error", None),
            Provider::Anthropic => formats::anthropic_error("invalid_request_error", message),
        };
        json(StatusCode::BAD_REQUEST, &body)
    }

    fn reply<'b>(&'b self, prefix: &str, model: &'b str, prompt_words: usize) -> Reply<'b> {
        Reply {
            id: format!("{prefix}{:08}", self.shared.next_id()),
            created: now(),
            model,
            text: &self.behaviour.reply,
            prompt_words,
            cached: self.behaviour.cached_tokens.min(prompt_words),
        }
    }

    /// A `text/event-stream` response sending each of `events` as its own frame,
    /// `chunk_delay` apart, counted as completed or cancelled.
    fn sse(&self, events: Vec<Bytes>) -> Response<MockBody> {
        let body = MockBody {
            frames: events.into(),
            delay: self.behaviour.chunk_delay,
            sleep: None,
            stream: Some(StreamGuard {
                shared: Arc::clone(self.shared),
                finished: false,
            }),
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

fn json(status: StatusCode, body: &Value) -> Response<MockBody> {
    raw_json(status, Bytes::from(body.to_string()))
}

fn raw_json(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = Response::new(MockBody {
        frames: VecDeque::from([body]),
        delay: Duration::ZERO,
        sleep: None,
        stream: None,
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A response body sent as a fixed list of frames, optionally paced.
struct MockBody {
    frames: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Present for streamed responses, which are counted.
    stream: Option<StreamGuard>,
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let Some(frame) = this.frames.pop_front() else {
            return Poll::Ready(None);
        };
        if this.frames.is_empty() {
            if let Some(stream) = this.stream.as_mut() {
                stream.finish();
            }
        } else if !this.delay.is_zero() {
            this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.stream {
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum()),
        }
    }
}

/// Counts a streamed response as completed when its last frame goes out, or as
/// cancelled when it is dropped before that.
struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamGuard {
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.shared.completed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}
