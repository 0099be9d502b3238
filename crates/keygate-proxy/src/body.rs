//! The response body keygate sends: either a small body of its own or the upstream's
//! body streamed through frame by frame, with observers tapping each data frame.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use keygate_billing::UsageChunkFilter;
use tokio::time::Sleep;

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
/// to the client, then exactly one end. The billing layer reads usage through this.
/// Observers run inline on the body path, so they must be quick and never block.
pub trait BodyObserver: Send + 'static {
    /// A data frame on its way to the client.
    fn on_data(&mut self, data: &Bytes);
    /// The body ended; called exactly once.
    fn on_end(&mut self, end: BodyEnd);
}

/// Body of every response keygate sends.
pub struct GatewayBody {
    inner: Inner,
}

enum Inner {
    Full(Full<Bytes>),
    Stream(Stream),
}

struct Stream {
    body: Incoming,
    /// Observers of the upstream's own bytes (billing reads usage here).
    raw: Option<Box<dyn BodyObserver>>,
    /// Removes the usage-only chunk keygate asked for from what the client gets.
    filter: Option<Box<UsageChunkFilter>>,
    /// Observers of the bytes the client gets.
    observers: Vec<Box<dyn BodyObserver>>,
    ended: bool,
    /// Longest wait for the next frame, and the timer for it.
    idle: Option<Idle>,
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

    /// The upstream's body, streamed through with `observers` tapping it. If the
    /// upstream sends nothing for `idle`, the body ends with an error (the client
    /// sees the stream cut) and the upstream request is dropped.
    pub fn stream(
        body: Incoming,
        observers: Vec<Box<dyn BodyObserver>>,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            inner: Inner::Stream(Stream {
                body,
                raw: None,
                filter: None,
                observers,
                ended: false,
                idle: idle.map(|limit| Idle {
                    limit,
                    timer: None,
                    armed: false,
                }),
            }),
        }
    }

    /// Adds an observer of the upstream's bytes as they arrive, before any filter.
    pub(crate) fn with_raw_observer(mut self, observer: Box<dyn BodyObserver>) -> Self {
        if let Inner::Stream(stream) = &mut self.inner {
            stream.raw = Some(observer);
        }
        self
    }

    /// Passes the stream through `filter` on its way to the client.
    pub(crate) fn with_filter(mut self, filter: Option<UsageChunkFilter>) -> Self {
        if let Inner::Stream(stream) = &mut self.inner {
            stream.filter = filter.map(Box::new);
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
            if let Some(raw) = &mut self.raw {
                raw.on_end(end);
            }
            for observer in &mut self.observers {
                observer.on_end(end);
            }
        }
    }
}

impl Stream {
    /// Shows an upstream data frame to the observers, through the filter; `None`
    /// when nothing of it is left for the client. `last` flushes the filter.
    fn pass(&mut self, data: Bytes, last: bool) -> Option<Bytes> {
        if let Some(raw) = &mut self.raw {
            if !data.is_empty() {
                raw.on_data(&data);
            }
        }
        let data = match &mut self.filter {
            None => data,
            Some(filter) => {
                let mut out = filter.push(&data);
                if last {
                    if let Some(filter) = self.filter.take() {
                        out.extend_from_slice(&filter.finish());
                    }
                }
                Bytes::from(out)
            }
        };
        if data.is_empty() {
            return None;
        }
        for observer in &mut self.observers {
            observer.on_data(&data);
        }
        Some(data)
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
                if stream.ended {
                    return Poll::Ready(None);
                }
                let polled = match Pin::new(&mut stream.body).poll_frame(cx) {
                    Poll::Ready(polled) => polled,
                    Poll::Pending => {
                        if let Some(idle) = &mut stream.idle {
                            if idle.expired(cx) {
                                let limit = idle.limit;
                                stream.end(BodyEnd::Failed);
                                return Poll::Ready(Some(Err(Box::new(IdleTimeout(limit)))));
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
                    Some(Err(error)) => {
                        stream.end(BodyEnd::Failed);
                        return Poll::Ready(Some(Err(Box::new(error))));
                    }
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
            Inner::Stream(stream) => stream.ended || stream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(full) => full.size_hint(),
            // A filter changes the length.
            Inner::Stream(stream) if stream.filter.is_some() => SizeHint::default(),
            Inner::Stream(stream) => stream.body.size_hint(),
        }
    }
}
