//! The response body keygate sends: either a small body of its own or the upstream's
//! body streamed through frame by frame, through stages added in order: observers
//! that see each data frame and its end, and filters that rewrite the bytes.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::upstream_pool::StreamSlot;

/// The error a streamed body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// How a streamed body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// The upstream sent its last frame and the client took it.
    Complete,
    /// The client went away (or the server shut down) before the end; the upstream
    /// request was cancelled by dropping it.
    Cancelled,
    /// The upstream connection broke mid-body.
    Failed,
}

/// A tap on a streamed response body: sees every data frame, in order, as it passes
/// its point in the body's stages, then exactly one end. The billing layer reads
/// usage through this, the request log counts bytes through it, and
/// [`crate::ResponseTap`]s get one. Observers run inline on the body path, so they
/// must be quick and never block.
pub trait BodyObserver: Send + 'static {
    /// A data frame on its way to the client.
    fn on_data(&mut self, data: &Bytes);
    /// The body ended; called exactly once.
    fn on_end(&mut self, end: BodyEnd);
}

/// A rewrite of the bytes on their way to the client (billing removes the usage
/// chunk it asked for). It may hold bytes back until a later frame.
pub(crate) trait BodyFilter: Send + 'static {
    /// What of `data` (with anything held back before) goes on now.
    fn push(&mut self, data: &[u8]) -> Vec<u8>;
    /// What is still held back, at the end of the body; called at most once.
    fn finish(&mut self) -> Vec<u8>;
    /// The body ended, after any `finish`; called exactly once.
    fn on_end(&mut self, _end: BodyEnd) {}
}

/// Body of every response keygate sends.
pub struct GatewayBody {
    inner: Inner,
}

enum Inner {
    Full(Full<Bytes>),
    Stream(Stream),
}

/// One step an upstream frame passes on its way to the client, in the order
/// the steps were added: an observer sees the bytes as the steps before it left
/// them.
enum Stage {
    Observe(Box<dyn BodyObserver>),
    Filter(Box<dyn BodyFilter>),
}

struct Stream {
    body: Incoming,
    stages: Vec<Stage>,
    /// Whether a filter may change the body's length.
    filtered: bool,
    ended: bool,
    /// Longest wait for the next frame, and the timer for it.
    idle: Option<Idle>,
    /// The error the body ends with, held back for one poll: hyper's HTTP/1.1
    /// server flushes what it has written when the body is pending, but closes
    /// the connection at once on an error, so an upstream that fails right
    /// after its headers would otherwise leave the client with no answer at all
    /// rather than the head and a body that breaks off.
    failure: Option<BodyError>,
    /// The request's place on its upstream connection, freed when the body is
    /// dropped (after `body`, so after the upstream stream is closed).
    slot: Option<StreamSlot>,
}

/// The idle timer, armed only while the upstream makes the body wait: a body
/// whose frames are ready when polled never touches the timer wheel.
struct Idle {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Idle {
    /// Whether the upstream has been silent for the limit, arming the timer
    /// from now if this is the first wait since the last frame.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// The upstream sent nothing for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; stream closed")]
pub struct IdleTimeout(Duration);

impl GatewayBody {
    /// A complete body keygate produced itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            inner: Inner::Full(Full::new(bytes.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The upstream's body, streamed through frame by frame. If the upstream
    /// sends nothing for `idle`, the body ends with an error (the client sees the
    /// stream cut) and the upstream request is dropped.
    pub fn stream(body: Incoming, idle: Option<Duration>) -> Self {
        Self {
            inner: Inner::Stream(Stream {
                body,
                stages: Vec::with_capacity(4),
                filtered: false,
                ended: false,
                idle: idle.map(|limit| Idle {
                    limit,
                    timer: None,
                    armed: false,
                }),
                failure: None,
                slot: None,
            }),
        }
    }

    /// Adds an observer that sees the bytes as the stages added before it leave
    /// them. Only a streamed body has stages: keygate never observes the bodies
    /// it makes itself.
    pub(crate) fn observe(mut self, observer: Box<dyn BodyObserver>) -> Self {
        debug_assert!(matches!(self.inner, Inner::Stream(_)));
        if let Inner::Stream(stream) = &mut self.inner {
            stream.stages.push(Stage::Observe(observer));
        }
        self
    }

    /// Holds the request's place on its upstream connection until the body is
    /// dropped.
    pub(crate) fn hold(mut self, slot: StreamSlot) -> Self {
        if let Inner::Stream(stream) = &mut self.inner {
            stream.slot = Some(slot);
        }
        self
    }

    /// Passes the bytes through `filter` after the stages added before it. The
    /// body's length is then unknown: remove any `Content-Length` it had.
    pub(crate) fn filter(mut self, filter: Box<dyn BodyFilter>) -> Self {
        if let Inner::Stream(stream) = &mut self.inner {
            stream.stages.push(Stage::Filter(filter));
            stream.filtered = true;
        }
        self
    }
}

impl std::fmt::Debug for GatewayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content: only which kind of body this is.
        match &self.inner {
            Inner::Full(_) => f.write_str("GatewayBody::Full"),
            Inner::Stream(s) => write!(f, "GatewayBody::Stream(ended: {})", s.ended),
        }
    }
}

impl Stream {
    fn end(&mut self, end: BodyEnd) {
        if !self.ended {
            self.ended = true;
            for stage in &mut self.stages {
                match stage {
                    Stage::Observe(observer) => observer.on_end(end),
                    Stage::Filter(filter) => filter.on_end(end),
                }
            }
        }
    }

    /// Ends the body as failed with `error`, which the next poll returns (see
    /// [`Stream::failure`]); this one is pending and wakes at once.
    fn fail(
        &mut self,
        error: BodyError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.end(BodyEnd::Failed);
        self.failure = Some(error);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Passes an upstream data frame through the stages; `None` when nothing of
    /// it is left for the client. `last` flushes the filters.
    fn pass(&mut self, mut data: Bytes, last: bool) -> Option<Bytes> {
        for stage in &mut self.stages {
            match stage {
                Stage::Observe(observer) => {
                    if !data.is_empty() {
                        observer.on_data(&data);
                    }
                }
                Stage::Filter(filter) => {
                    let mut out = filter.push(&data);
                    if last {
                        out.extend_from_slice(&filter.finish());
                    }
                    data = Bytes::from(out);
                }
            }
        }
        (!data.is_empty()).then_some(data)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A body with nothing left (an empty or bodiless response, which an
        // HTTP/1.1 server drops unpolled) is complete. Otherwise it was dropped
        // before the end: the client went away. Dropping `body` here resets the
        // upstream stream (HTTP/2) or closes its connection (HTTP/1.1).
        if self.body.is_end_stream() {
            self.end(BodyEnd::Complete);
        } else {
            self.end(BodyEnd::Cancelled);
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().inner {
            Inner::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Inner::Stream(stream) => loop {
                if let Some(error) = stream.failure.take() {
                    return Poll::Ready(Some(Err(error)));
                }
                if stream.ended {
                    return Poll::Ready(None);
                }
                let polled = match Pin::new(&mut stream.body).poll_frame(cx) {
                    Poll::Ready(polled) => polled,
                    Poll::Pending => {
                        if let Some(idle) = &mut stream.idle {
                            if idle.expired(cx) {
                                let limit = idle.limit;
                                return stream.fail(Box::new(IdleTimeout(limit)), cx);
                            }
                        }
                        return Poll::Pending;
                    }
                };
                if let Some(idle) = &mut stream.idle {
                    idle.armed = false;
                }
                match polled {
                    Some(Ok(frame)) => {
                        // With a known length the server stops polling after the
                        // last byte, so the end is seen here, not as a `None`.
                        let last = stream.body.is_end_stream();
                        let frame = match frame.into_data() {
                            Ok(data) => match stream.pass(data, last) {
                                Some(data) => Frame::data(data),
                                None if last => {
                                    stream.end(BodyEnd::Complete);
                                    return Poll::Ready(None);
                                }
                                None => continue,
                            },
                            Err(frame) => frame,
                        };
                        if last {
                            stream.end(BodyEnd::Complete);
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Some(Err(error)) => return stream.fail(Box::new(error), cx),
                    None => {
                        let tail = stream.pass(Bytes::new(), true);
                        stream.end(BodyEnd::Complete);
                        return Poll::Ready(tail.map(|data| Ok(Frame::data(data))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(full) => full.is_end_stream(),
            // A failure still to report is not an end.
            Inner::Stream(stream) => {
                stream.failure.is_none() && (stream.ended || stream.body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(full) => full.size_hint(),
            // A filter changes the length.
            Inner::Stream(stream) if stream.filtered => SizeHint::default(),
            Inner::Stream(stream) => stream.body.size_hint(),
        }
    }
}
