//! The mock upstream's responses: whole JSON bodies, and event streams sent one
//! frame at a time, paced, and counted as completed or cancelled; and the
//! [`Fault`]s that change a response's body (cut, broken, padded, dripped).

use std::collections::VecDeque;
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

use super::state::{Fault, Shared};

/// A response body sent as a fixed list of frames, optionally paced.
pub(super) struct MockBody {
    frames: VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Present for streamed responses, which are counted.
    stream: Option<StreamGuard>,
    /// Fail the body (a reset) once this many frames are sent.
    reset_after: Option<usize>,
    sent: usize,
}

/// The error a body fails with under [`Fault::ResetAfterHeaders`] and
/// [`Fault::ResetMidStream`]: hyper resets the connection (HTTP/1.1) or the
/// stream (HTTP/2).
#[derive(Debug)]
pub(super) struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the mock upstream resets this response (test fault)")
    }
}

impl std::error::Error for Reset {}

/// How long a body under a reset fault waits before it fails.
const RESET_PAUSE: Duration = Duration::from_millis(20);

/// The frame size of a [`Fault::Huge`] body.
const HUGE_FRAME: usize = 64 * 1024;

/// `response` changed by `fault`, for the faults that act on a body.
pub(super) fn with_fault(response: Response<MockBody>, fault: &Fault) -> Response<MockBody> {
    let (mut parts, mut body) = response.into_parts();
    match fault {
        Fault::Refuse => {}
        Fault::ResetAfterHeaders => body.reset_after = Some(0),
        Fault::ResetMidStream { frames } => body.reset_after = Some(*frames),
        Fault::BrokenJson => {
            body.frames = body.frames.drain(..).map(|f| broken(&f)).collect();
        }
        Fault::NoDone => body
            .frames
            .retain(|f| !f.starts_with(b"data: [DONE]") && !f.starts_with(b"event: message_stop")),
        Fault::Huge { bytes } => {
            if let Some(padded) = body.frames.front().and_then(|f| padded(f, *bytes)) {
                parts.headers.remove(http::header::CONTENT_LENGTH);
                body.frames = padded
                    .chunks(HUGE_FRAME)
                    .map(Bytes::copy_from_slice)
                    .collect();
            }
        }
        Fault::Drip { interval } => {
            let all: Vec<u8> = body.frames.drain(..).flat_map(|f| f.to_vec()).collect();
            body.frames = all.into_iter().map(|b| Bytes::from(vec![b])).collect();
            body.delay = *interval;
        }
    }
    Response::from_parts(parts, body)
}

/// An SSE event with the JSON of its `data:` line cut in half (`[DONE]` kept),
/// or a JSON body cut in half.
fn broken(frame: &Bytes) -> Bytes {
    let Some(at) = frame.windows(7).position(|w| w == b"data: {") else {
        if frame.starts_with(b"data:") || frame.starts_with(b"event:") {
            return frame.clone();
        }
        return frame.slice(..frame.len() / 2);
    };
    let json_start = at + 6;
    let json_end = frame[json_start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(frame.len(), |n| json_start + n);
    let cut = json_start + (json_end - json_start) / 2;
    let mut out = frame[..cut].to_vec();
    out.extend_from_slice(&frame[json_end..]);
    Bytes::from(out)
}

/// A chat completion whose reply text is padded so the body is at least
/// `bytes` long; `None` for a body that is not one.
fn padded(body: &[u8], bytes: usize) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let content = value.pointer_mut("/choices/0/message/content")?;
    let mut text = content.as_str()?.to_owned();
    text.push(' ');
    text.extend(std::iter::repeat_n('x', bytes.saturating_sub(body.len())));
    *content = Value::String(text);
    serde_json::to_vec(&value).ok()
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
        reset_after: None,
        sent: 0,
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
        reset_after: None,
        sent: 0,
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Reset;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Reset>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        if this.reset_after == Some(this.sent) {
            // Waits a moment first, so hyper flushes what was sent (the head,
            // the frames before) and the reset comes after it.
            if !this.frames.is_empty() {
                this.frames.clear();
                let mut sleep = Box::pin(tokio::time::sleep(RESET_PAUSE));
                if sleep.as_mut().poll(cx).is_pending() {
                    this.sleep = Some(sleep);
                    return Poll::Pending;
                }
            }
            return Poll::Ready(Some(Err(Reset)));
        }
        this.sent += 1;
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
        self.frames.is_empty() && self.reset_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.stream {
            Some(_) => SizeHint::default(),
            // A body that will fail: no length to promise.
            None if self.reset_after.is_some() => SizeHint::default(),
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
