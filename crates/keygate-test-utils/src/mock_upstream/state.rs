//! What the mock upstream shares between its handle and its connections: the
//! behaviour the test asked for, the requests it recorded and its stream
//! counters.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};

/// The reply text until [`MockUpstream::set_reply`](super::MockUpstream::set_reply)
/// changes it.
const DEFAULT_REPLY: &str = "The quick brown fox jumps over the lazy dog.";

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
    /// The connection it came on: the mock's connections are numbered from 1
    /// in the order they were accepted (see [`super::MockUpstream::connections`]).
    pub connection: usize,
}

/// Which of the mock's connections a request came on, in the request's
/// extensions.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnectionNumber(pub(super) usize);

/// State shared by the handle and every connection.
pub(super) struct Shared {
    behaviour: Mutex<Behaviour>,
    pub(super) requests: Mutex<Vec<RecordedRequest>>,
    /// Off after `set_recording(false)`: requests are no longer pushed.
    pub(super) recording: AtomicBool,
    /// On after `set_nodelay(true)`: accepted sockets set `TCP_NODELAY`.
    pub(super) nodelay: AtomicBool,
    pub(super) cancelled: AtomicUsize,
    pub(super) completed: AtomicUsize,
    /// Connections accepted (and, over TLS, handshaken).
    pub(super) connections: AtomicUsize,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` of HTTP/2 connections accepted from
    /// now on; 0 for no cap.
    pub(super) max_streams: AtomicU32,
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
            connections: AtomicUsize::new(0),
            max_streams: AtomicU32::new(0),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub(super) fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        lock(&self.behaviour)
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What the test asked the mock to do; each request works on a snapshot.
#[derive(Clone)]
pub(super) struct Behaviour {
    pub(super) key: Option<String>,
    pub(super) reply: String,
    pub(super) latency: Duration,
    pub(super) chunk_delay: Duration,
    pub(super) failure: Option<Failure>,
    pub(super) fault: Option<Fault>,
    pub(super) cached_tokens: usize,
    /// Prompt and completion counts to report instead of the real ones, as
    /// raw JSON values.
    pub(super) reported_usage: Option<(serde_json::Value, serde_json::Value)>,
    /// Headers added to every answer, failures included.
    pub(super) extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            key: None,
            reply: DEFAULT_REPLY.to_owned(),
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            failure: None,
            fault: None,
            cached_tokens: 0,
            reported_usage: None,
            extra_headers: Vec::new(),
        }
    }
}

/// How every following request fails, until the test clears it.
#[derive(Clone)]
pub(super) enum Failure {
    /// Answer with this status and JSON body.
    Status(StatusCode, Bytes),
    /// Never send response headers.
    Hang,
}

/// A way for the mock to misbehave on every following request (or connection),
/// until [`MockUpstream::clear_failure`](super::MockUpstream::clear_failure):
/// the faults a gateway must survive. Set with
/// [`MockUpstream::set_fault`](super::MockUpstream::set_fault); the usage an
/// answer reports (wrong types, huge or negative counts) is set with
/// [`MockUpstream::set_usage`](super::MockUpstream::set_usage) instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every connection accepted from now on is reset (closed with `SO_LINGER`
    /// 0, so the peer sees RST) before a byte is read: what a client sees of an
    /// upstream whose port refuses or whose process just died. Connections
    /// already open are not touched.
    Refuse,
    /// The status line and headers are sent, then the body fails: on HTTP/1.1
    /// the connection is reset, on HTTP/2 the stream gets `RST_STREAM`.
    ResetAfterHeaders,
    /// The first `frames` body frames (SSE events, or the one JSON body) are
    /// sent, then the body fails as for [`Fault::ResetAfterHeaders`].
    ResetMidStream {
        /// Frames sent before the reset.
        frames: usize,
    },
    /// Every event's JSON (or the JSON body) is cut in half, `[DONE]` kept.
    BrokenJson,
    /// Streams end without their terminator: no `data: [DONE]` (OpenAI), no
    /// `message_stop` (Anthropic); the usage events are still sent.
    NoDone,
    /// A non-streaming chat completion's reply text is padded so that the body
    /// is at least `bytes` long, sent in 64 KiB frames with its `usage` at the
    /// end as usual.
    Huge {
        /// The body's least size.
        bytes: usize,
    },
    /// The answer is sent one byte per frame, `interval` apart (the first byte
    /// at once); it is as long as the ordinary answer, so the drip ends.
    Drip {
        /// Time between two bytes.
        interval: Duration,
    },
}

/// Locks a mutex, ignoring poisoning: a panicking test must not hide the state
/// from the next assertion.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
