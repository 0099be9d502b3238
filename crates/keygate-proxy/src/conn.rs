//! What one client connection is held to: the idle deadlines its socket reads
//! run under, the count of requests in flight that suspends them, the counters
//! `/metrics` shows, and what happens to a request body left unread when the
//! answer was decided without it (drained, or the connection closed after a
//! lingering read).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Version, request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Largest unread body drained after an early answer, so that the connection
/// stays usable for the next request.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest wait for that small body.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How long the rest of a larger unread body is read and discarded after the
/// answer before the connection closes, so that the client, still sending,
/// reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(5);

/// Connection counters, shown on `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ConnectionMetrics {
    /// Connections open now.
    pub(crate) open: AtomicU64,
    /// Times the accept loop waited because `max_connections` were open.
    pub(crate) waited: AtomicU64,
}

/// The requests in flight on one connection, shared by its socket's
/// [`Watchdog`] and the service that answers them.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Requests whose answer has not been sent whole.
    busy: AtomicUsize,
    /// Whether a request has begun: until then the first deadline holds.
    begun: AtomicBool,
    /// When the last request in flight ended, in nanoseconds after `origin`.
    idle_since: AtomicU64,
    origin: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            begun: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Activity {
    /// Marks a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        Busy(Arc::clone(self))
    }

    /// When an idle connection is due to close (`first` before any request,
    /// `idle` after the last answer); `None` while a request is in flight.
    fn closes_at(&self, first: Instant, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.begun.load(Ordering::Acquire) {
            return Some(first);
        }
        let since = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
        Some(later(later(self.origin, since), idle))
    }
}

/// `at + by`, or about 30 years on (as tokio's own `sleep` does) past what an
/// `Instant` can hold: an operator's very long timeout never panics.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365 * 30))
}

/// A request in flight; dropped with its answer's body.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Noted, not signalled: the watchdog's timer reads it when it fires.
        // Waking the connection's task here (this runs inside its own poll)
        // made tokio reschedule it as a yield and wake the other worker for
        // it, on every request.
        // Before the count drops: a watchdog that sees no request in flight
        // also sees this end (an HTTP/2 stream ends on another thread). End
        // times only grow, so the latest of two ends at once is kept.
        let since = u64::try_from(self.0.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.idle_since.fetch_max(since, Ordering::AcqRel);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// An answer's body that holds its request's [`Busy`] mark until it is sent
    /// whole or dropped.
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        busy: Busy,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, busy: Busy) -> Self {
        Self { body, busy }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// A client socket whose reads fail with `TimedOut` once it has been idle
    /// (no request in flight) too long: `first` before its first request has
    /// reached the service, `idle` after an answer. A request in flight
    /// suspends the deadline; its body has its own (`body_read_timeout`).
    ///
    /// One timer for the connection's life, never set later than one `idle`
    /// after a read: when it fires, the watchdog looks at the connection's
    /// [`Activity`] and either closes it or sets the timer again (to when the
    /// idle time will be up, or one `idle` on while a request is in flight).
    /// A request's end only notes the time.
    pub(crate) struct Watchdog<IO> {
        #[pin]
        io: IO,
        activity: Arc<Activity>,
        first: Instant,
        idle: Duration,
        deadline: Pin<Box<Sleep>>,
    }
}

impl<IO> Watchdog<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>, first: Duration, idle: Duration) -> Self {
        let first = later(Instant::now(), first);
        Self {
            io,
            activity,
            first,
            idle,
            deadline: Box::pin(tokio::time::sleep_until(first)),
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Watchdog<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        // Never later than one `idle` from a read: the last answer ends after
        // this read, so the timer fires no later than that answer's idle
        // deadline and finds it (below).
        let now = Instant::now();
        let latest = later(now, *this.idle);
        if this.deadline.deadline() > latest {
            this.deadline.as_mut().reset(latest);
        }
        let read = this.io.poll_read(cx, buf);
        if read.is_pending() {
            while this.deadline.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                match this.activity.closes_at(*this.first, *this.idle) {
                    Some(at) if at <= now => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the connection was idle too long",
                        )));
                    }
                    Some(at) => this.deadline.as_mut().reset(at),
                    None => this.deadline.as_mut().reset(later(now, *this.idle)),
                }
            }
        }
        read
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watchdog<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Deals with what is left of a request body once its answer is decided. An
/// HTTP/1 body of up to [`DRAIN_LIMIT`] that arrives within [`DRAIN_TIME`] is
/// read and discarded, so the connection stays usable. Otherwise the answer says
/// `Connection: close`, and the rest of the body is read and discarded for up
/// to [`LINGER`] after it (a lingering close), so that a client still sending
/// can read the answer. HTTP/2 needs neither: the stream is reset, the
/// connection stays.
pub(crate) async fn finish_body(
    request: &request::Parts,
    mut body: Incoming,
    answer: &mut HeaderMap,
) {
    if body.is_end_stream() || request.version >= Version::HTTP_2 {
        return;
    }
    // A client waiting for `100 Continue` has sent nothing; asking for the body
    // now would only make it send what is refused.
    let waits_for_continue = request
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let small = body
        .size_hint()
        .upper()
        .is_none_or(|len| len <= DRAIN_LIMIT as u64);
    if small && !waits_for_continue {
        let drain = Limited::new(&mut body, DRAIN_LIMIT).collect();
        if let Ok(Ok(_)) = tokio::time::timeout(DRAIN_TIME, drain).await {
            return;
        }
    }
    answer.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if waits_for_continue {
        return;
    }
    // Nobody waits for this task: it ends within LINGER, and the connection
    // (which graceful shutdown watches) closes when it drops the body.
    tokio::spawn(async move {
        let discard = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, discard).await;
    });
}
