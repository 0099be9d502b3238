//! The mock upstream's responses: whole JSON bodies, and event streams sent one
//! frame at a time, paced, and counted as completed or cancelled.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;
use tokio::time::Sleep;

use super::state::Shared;

/// A response body sent as a fixed list of frames, optionally paced.
pub(super) struct MockBody {
    frames: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Present for streamed responses, which are counted.
    stream: Option<StreamGuard>,
}

/// An `application/json` response with `body`.
pub(super) fn json(status: StatusCode, body: &Value) -> Response<MockBody> {
    raw_json(status, Bytes::from(body.to_string()))
}

/// An `application/json` response whose body is sent as given.
pub(super) fn raw_json(status: StatusCode, body: Bytes) -> Response<MockBody> {
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

/// A `text/event-stream` response sending each of `events` as its own frame,
/// `delay` apart, counted in `shared` as completed or cancelled.
pub(super) fn sse(events: Vec<Bytes>, delay: Duration, shared: &Arc<Shared>) -> Response<MockBody> {
    let body = MockBody {
        frames: events.into(),
        delay,
        sleep: None,
        stream: Some(StreamGuard {
            shared: Arc::clone(shared),
            finished: false,
        }),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
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
