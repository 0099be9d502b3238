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
    /// Whether the filters have given up what they held back (`finish`), which
    /// they do once, at the body's last data frame or its trailers.
    flushed: bool,
    /// The upstream's trailers, held for one poll while the bytes the filters
    /// held back go out first: nothing may follow trailers.
    trailers: Option<Frame<Bytes>>,
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
                flushed: false,
                trailers: None,
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
    /// it is left for the client. `last` flushes the filters, unless they were
    /// flushed before.
    fn pass(&mut self, mut data: Bytes, last: bool) -> Option<Bytes> {
        let flush = last && !self.flushed;
        self.flushed |= last;
        for stage in &mut self.stages {
            match stage {
                Stage::Observe(observer) => {
                    if !data.is_empty() {
                        observer.on_data(&data);
                    }
                }
                Stage::Filter(filter) => {
                    let mut out = filter.push(&data);
                    if flush {
                        out.extend_from_slice(&filter.finish());
                    }
                    data = Bytes::from(out);
                }
            }
        }
        (!data.is_empty()).then_some(data)
    }
}

impl Stream {
    /// The upstream's trailers, on their way out: the body's end.
    fn trailers_out(&mut self, trailers: Frame<Bytes>) -> Frame<Bytes> {
        self.end(BodyEnd::Complete);
        trailers
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
                if let Some(trailers) = stream.trailers.take() {
                    return Poll::Ready(Some(Ok(stream.trailers_out(trailers))));
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
                        let data = match frame.into_data() {
                            Ok(data) => data,
                            // Trailers, the last frame: after what the filters
                            // still hold back.
                            Err(trailers) => match stream.pass(Bytes::new(), true) {
                                Some(tail) => {
                                    stream.trailers = Some(trailers);
                                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                                }
                                None => {
                                    return Poll::Ready(Some(Ok(stream.trailers_out(trailers))));
                                }
                            },
                        };
                        match stream.pass(data, last) {
                            Some(data) => {
                                if last {
                                    stream.end(BodyEnd::Complete);
                                }
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            None if last => {
                                stream.end(BodyEnd::Complete);
                                return Poll::Ready(None);
                            }
                            None => continue,
                        }
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
                stream.failure.is_none()
                    && stream.trailers.is_none()
                    && (stream.ended || stream.body.is_end_stream())
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    /// Holds every byte back until `finish`, and notes what it was called with.
    struct HoldAll {
        held: Vec<u8>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl BodyFilter for HoldAll {
        fn push(&mut self, data: &[u8]) -> Vec<u8> {
            self.held.extend_from_slice(data);
            Vec::new()
        }

        fn finish(&mut self) -> Vec<u8> {
            self.calls.lock().unwrap().push("finish".to_owned());
            std::mem::take(&mut self.held)
        }

        fn on_end(&mut self, end: BodyEnd) {
            self.calls.lock().unwrap().push(format!("{end:?}"));
        }
    }

    /// A real HTTP/2 response whose body is `data` then trailers, as an
    /// [`Incoming`] on the client side of an in-memory connection.
    async fn with_trailers(data: &'static [&'static str]) -> Incoming {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames: Vec<_> = data
                    .iter()
                    .copied()
                    .map(|chunk: &'static str| Frame::data(Bytes::from_static(chunk.as_bytes())))
                    .chain([Frame::trailers(trailers)])
                    .map(Ok::<_, std::convert::Infallible>)
                    .collect();
                let body = StreamBody::new(futures_util::stream::iter(frames));
                Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::new(http_body_util::Empty::<Bytes>::new());
        sender.send_request(request).await.unwrap().into_body()
    }

    #[tokio::test]
    async fn trailers_come_after_what_a_filter_held_back_which_is_flushed_once() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let filter = HoldAll {
            held: Vec::new(),
            calls: Arc::clone(&calls),
        };
        let upstream = with_trailers(&["data: one\n\n", "data: tw"]).await;
        let mut body = GatewayBody::stream(upstream, None).filter(Box::new(filter));
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(trailers.is_none(), "a frame after the trailers");
            match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert_eq!(data, b"data: one\n\ndata: tw");
        let trailers = trailers.expect("the upstream's trailers reach the client");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(body.is_end_stream());
        assert_eq!(*calls.lock().unwrap(), ["finish", "Complete"]);
    }

    #[tokio::test]
    async fn trailers_with_nothing_held_back_pass_at_once() {
        let upstream = with_trailers(&["data: one\n\n"]).await;
        let mut body = GatewayBody::stream(upstream, None);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "data: one\n\n");
        let second = body.frame().await.unwrap().unwrap();
        assert!(second.is_trailers());
        assert!(body.frame().await.is_none());
    }
}
