//! The bench's load generator, on hyper's HTTP/1.1 client connections (one per
//! worker, kept alive): sequential requests, an open loop at a fixed rate whose
//! latencies run from each request's scheduled send time (so a stall is counted
//! for every request it delayed: no coordinated omission), a closed loop at full
//! speed, paced streams, many streams held open at once, and a fixed count of
//! sequential requests (for the instruction count).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;

/// No single request may take longer than this; one that does is an error.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Untimed requests on a fresh connection before a sequential run.
const WARM_UP: usize = 20;
/// How long an open loop may run past its schedule to send what is queued;
/// requests still unsent then are counted as missed.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Streams set up at once while opening many.
const OPENING_AT_ONCE: usize = 64;

/// One endpoint to drive: where it listens and the credential it wants.
#[derive(Debug)]
pub(crate) struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    authorization: HeaderValue,
}

impl Target {
    /// A target at `addr` that is sent `Authorization: Bearer TOKEN`.
    pub(crate) fn new(addr: SocketAddr, token: &str) -> Result<Target> {
        Ok(Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))?,
        })
    }

    /// A chat completion request; a streamed one (`"stream":true`) also says
    /// `Accept: text/event-stream`, which picks the nginx upstream's canned
    /// stream and which every proxy forwards.
    fn request(&self, body: &Bytes) -> Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if find(body, b"\"stream\":true").is_some() {
            request = request.header(ACCEPT, HeaderValue::from_static("text/event-stream"));
        }
        Ok(request.body(Full::new(body.clone()))?)
    }
}

/// A latency histogram in nanoseconds (1 ns to 100 s, 3 significant figures).
pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3)
        .map_err(|e| anyhow!("cannot create a histogram: {e:?}"))
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.max(1));
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from)
        .map_err(|e| anyhow!("cannot merge histograms: {e:?}"))
}

/// One kept-alive HTTP/1.1 connection, reopened after a failure.
struct Worker {
    target: Arc<Target>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Worker {
    async fn connect(target: Arc<Target>) -> Result<Worker> {
        let mut worker = Worker {
            target,
            sender: None,
        };
        worker.sender = Some(worker.open().await?);
        Ok(worker)
    }

    async fn open(&self) -> Result<http1::SendRequest<Full<Bytes>>> {
        let addr = self.target.addr;
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // Who waits: nobody; the task ends when the connection closes, which
        // dropping the sender (with its worker) does.
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends a request and returns its response head, reconnecting first if the
    /// last exchange failed.
    async fn send(&mut self, body: &Bytes) -> Result<http::Response<Incoming>> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => self.open().await?,
        };
        sender.ready().await?;
        let response = sender.send_request(self.target.request(body)?).await?;
        self.sender = Some(sender);
        Ok(response)
    }

    /// One whole exchange, bounded by `REQUEST_LIMIT`; `true` for a 200 whose
    /// body was read to the end.
    async fn exchange(&mut self, body: &Bytes) -> bool {
        let exchange = async {
            let response = self.send(body).await?;
            let status = response.status();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            anyhow::Ok(status == StatusCode::OK)
        };
        match tokio::time::timeout(REQUEST_LIMIT, exchange).await {
            Ok(Ok(ok)) => ok,
            _ => {
                self.sender = None;
                false
            }
        }
    }
}

/// Sends one request on a fresh connection; an error unless it is answered 200
/// with a body that contains `expect`.
pub(crate) async fn check(target: Arc<Target>, body: &Bytes, expect: &str) -> Result<()> {
    let mut worker = Worker::connect(target).await?;
    let exchange = async {
        let response = worker.send(body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(REQUEST_LIMIT, exchange)
        .await
        .context("no answer in time")??;
    if status != StatusCode::OK || find(&body, expect.as_bytes()).is_none() {
        bail!(
            "answered {status} without {expect:?}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Sends `count` requests one after another on one keep-alive connection (the
/// callgrind count's load); an error when any fails. Returns how long it took.
pub(crate) async fn fixed(target: Arc<Target>, body: &Bytes, count: usize) -> Result<Duration> {
    let mut worker = Worker::connect(target).await?;
    let started = Instant::now();
    for i in 0..count {
        if !worker.exchange(body).await {
            bail!("request {} of {count} failed", i + 1);
        }
    }
    Ok(started.elapsed())
}

/// Latencies of answered requests and the count of failed ones.
#[derive(Debug)]
pub(crate) struct Latency {
    pub(crate) histogram: Histogram<u64>,
    pub(crate) errors: u64,
}

impl Latency {
    pub(crate) fn new() -> Result<Latency> {
        Ok(Latency {
            histogram: histogram()?,
            errors: 0,
        })
    }

    pub(crate) fn merge(&mut self, other: &Latency) -> Result<()> {
        self.errors += other.errors;
        merge(&mut self.histogram, &other.histogram)
    }
}

/// Sends requests one after another on one connection for `run`.
pub(crate) async fn sequential(
    target: Arc<Target>,
    body: &Bytes,
    run: Duration,
) -> Result<Latency> {
    let mut worker = Worker::connect(target).await?;
    for _ in 0..WARM_UP {
        if !worker.exchange(body).await {
            bail!("a warm-up request failed");
        }
    }
    let mut latency = Latency::new()?;
    let end = Instant::now() + run;
    while Instant::now() < end {
        let started = Instant::now();
        if worker.exchange(body).await {
            record(&mut latency.histogram, started.elapsed());
        } else {
            latency.errors += 1;
        }
    }
    Ok(latency)
}

/// What an open-loop run did.
#[derive(Debug)]
pub(crate) struct OpenLoop {
    /// From each request's scheduled send time to the end of its answer.
    pub(crate) latency: Latency,
    /// Requests scheduled.
    pub(crate) scheduled: u64,
    /// Requests still unsent `DRAIN_LIMIT` after the schedule ended.
    pub(crate) missed: u64,
    /// How late the timer thread queued each request: the load generator's own
    /// share of every latency above.
    pub(crate) dispatch_lateness: Histogram<u64>,
}

impl OpenLoop {
    pub(crate) fn new() -> Result<OpenLoop> {
        Ok(OpenLoop {
            latency: Latency::new()?,
            scheduled: 0,
            missed: 0,
            dispatch_lateness: histogram()?,
        })
    }

    pub(crate) fn merge(&mut self, other: &OpenLoop) -> Result<()> {
        self.scheduled += other.scheduled;
        self.missed += other.missed;
        merge(&mut self.dispatch_lateness, &other.dispatch_lateness)?;
        self.latency.merge(&other.latency)
    }
}

/// Sends `rate` requests per second for `run` on `connections` connections.
///
/// A thread (OS sleeps are finer than tokio's millisecond timer) puts each
/// request's scheduled time in a queue at that time; the first free connection
/// takes it. When every connection is busy, requests wait in the queue and their
/// wait counts in their latency, as a client with a fixed arrival rate would see.
pub(crate) async fn open_loop(
    target: Arc<Target>,
    body: &Bytes,
    rate: u64,
    run: Duration,
    connections: usize,
) -> Result<OpenLoop> {
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut worker = Worker::connect(Arc::clone(&target)).await?;
        worker.exchange(body).await;
        workers.push(worker);
    }
    let scheduled = (rate as f64 * run.as_secs_f64()) as u64;
    let (tickets, queue) = mpsc::unbounded_channel::<Instant>();
    let queue = Arc::new(Mutex::new(queue));
    let start = Instant::now() + Duration::from_millis(5);
    let end = start + run + DRAIN_LIMIT;
    let stop = Arc::new(AtomicBool::new(false));
    let mut lateness = histogram()?;
    let dispatcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for i in 0..scheduled {
                let at = start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rate);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                record(&mut lateness, at.elapsed());
                if stop.load(Ordering::Relaxed) || tickets.send(at).is_err() {
                    break;
                }
            }
            lateness
        })
    };
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        let queue = Arc::clone(&queue);
        let body = body.clone();
        tasks.spawn(async move {
            let mut done = OpenLoop::new()?;
            loop {
                let ticket = queue.lock().await.recv().await;
                let Some(at) = ticket else { break };
                if Instant::now() > end {
                    done.missed += 1;
                    continue;
                }
                if worker.exchange(&body).await {
                    record(&mut done.latency.histogram, at.elapsed());
                } else {
                    done.latency.errors += 1;
                }
            }
            anyhow::Ok(done)
        });
    }
    let mut total = OpenLoop::new()?;
    total.scheduled = scheduled;
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(done)) => {
                total.missed += done.missed;
                total.latency.merge(&done.latency)?;
            }
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow!("a load task failed: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    match dispatcher.join() {
        Ok(lateness) => total.dispatch_lateness = lateness,
        Err(_) => bail!("the open-loop dispatcher thread panicked"),
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Requests answered per second by a closed loop.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Throughput {
    pub(crate) completed: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
}

impl Throughput {
    pub(crate) fn per_second(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub(crate) fn merge(&mut self, other: &Throughput) {
        self.completed += other.completed;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }
}

/// Runs `connections` connections that each send their next request as soon as
/// the last one is answered, for `run`; the first tenth is a warm-up and is not
/// counted.
pub(crate) async fn closed_loop(
    target: Arc<Target>,
    body: &Bytes,
    run: Duration,
    connections: usize,
) -> Result<Throughput> {
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        workers.push(Worker::connect(Arc::clone(&target)).await?);
    }
    let start = Instant::now();
    let counted_from = start + run / 10;
    let end = start + run;
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        let body = body.clone();
        tasks.spawn(async move {
            let mut done = Throughput::default();
            while Instant::now() < end {
                let ok = worker.exchange(&body).await;
                let now = Instant::now();
                if now >= counted_from && now <= end {
                    if ok {
                        done.completed += 1;
                    } else {
                        done.errors += 1;
                    }
                }
            }
            done
        });
    }
    let mut total = Throughput {
        elapsed: end - counted_from,
        ..Throughput::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let done = joined.map_err(|e| anyhow!("a load task failed: {e}"))?;
        total.completed += done.completed;
        total.errors += done.errors;
    }
    Ok(total)
}

/// Time to the first event of each stream, and the gaps between token events.
#[derive(Debug)]
pub(crate) struct Streaming {
    pub(crate) first_event: Histogram<u64>,
    pub(crate) token_gaps: Histogram<u64>,
    pub(crate) streams: u64,
    pub(crate) errors: u64,
}

impl Streaming {
    pub(crate) fn new() -> Result<Streaming> {
        Ok(Streaming {
            first_event: histogram()?,
            token_gaps: histogram()?,
            streams: 0,
            errors: 0,
        })
    }

    pub(crate) fn merge(&mut self, other: &Streaming) -> Result<()> {
        self.streams += other.streams;
        self.errors += other.errors;
        merge(&mut self.first_event, &other.first_event)?;
        merge(&mut self.token_gaps, &other.token_gaps)
    }
}

/// Runs streamed requests back to back on `connections` connections for `run`.
/// A stream counts when it answers 200 with at least `tokens` token events.
pub(crate) async fn streaming(
    target: Arc<Target>,
    body: &Bytes,
    tokens: usize,
    run: Duration,
    connections: usize,
) -> Result<Streaming> {
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut worker = Worker::connect(Arc::clone(&target)).await?;
        let mut warm = Streaming::new()?;
        one_stream(&mut worker, body, tokens, &mut warm).await;
        workers.push(worker);
    }
    let end = Instant::now() + run;
    let mut tasks = JoinSet::new();
    for mut worker in workers {
        let body = body.clone();
        tasks.spawn(async move {
            let mut done = Streaming::new()?;
            while Instant::now() < end {
                one_stream(&mut worker, &body, tokens, &mut done).await;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = Streaming::new()?;
    while let Some(joined) = tasks.join_next().await {
        let done = joined.map_err(|e| anyhow!("a load task failed: {e}"))??;
        total.merge(&done)?;
    }
    Ok(total)
}

async fn one_stream(worker: &mut Worker, body: &Bytes, tokens: usize, into: &mut Streaming) {
    let started = Instant::now();
    let mut first_event = None;
    let mut gaps = Vec::with_capacity(tokens);
    let exchange = async {
        let response = worker.send(body).await?;
        if response.status() != StatusCode::OK {
            bail!("status {}", response.status());
        }
        let mut body = response.into_body();
        let mut events = SseEvents::default();
        let mut last_token: Option<Instant> = None;
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let now = Instant::now();
            events.push(data);
            while let Some(event) = events.next_event() {
                if first_event.is_none() {
                    first_event = Some(now - started);
                }
                if is_token(&event) {
                    seen += 1;
                    if let Some(last) = last_token {
                        gaps.push(now - last);
                    }
                    last_token = Some(now);
                }
            }
        }
        if seen < tokens {
            bail!("{seen} token events, expected {tokens}");
        }
        anyhow::Ok(())
    };
    let ok = matches!(
        tokio::time::timeout(REQUEST_LIMIT, exchange).await,
        Ok(Ok(()))
    );
    match (ok, first_event) {
        (true, Some(first)) => {
            into.streams += 1;
            record(&mut into.first_event, first);
            for gap in gaps {
                record(&mut into.token_gaps, gap);
            }
        }
        _ => {
            into.errors += 1;
            worker.sender = None;
        }
    }
}

/// Splits a server-sent event stream into events (at blank lines).
#[derive(Default)]
struct SseEvents {
    buffer: Vec<u8>,
}

impl SseEvents {
    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    fn next_event(&mut self) -> Option<Vec<u8>> {
        let end = find(&self.buffer, b"\n\n")?;
        let event = self.buffer[..end].to_vec();
        self.buffer.drain(..end + 2);
        Some(event)
    }
}

/// An event carrying a piece of the reply: a non-empty `content` string.
fn is_token(event: &[u8]) -> bool {
    const CONTENT: &[u8] = b"\"content\":\"";
    find(event, CONTENT)
        .and_then(|at| event.get(at + CONTENT.len()))
        .is_some_and(|&next| next != b'"')
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Streams held open at once; dropping or closing them hangs them all up.
#[derive(Debug)]
pub(crate) struct OpenStreams {
    tasks: JoinSet<()>,
    /// Streams that answered 200 and sent their first event.
    pub(crate) ready: usize,
    /// Streams that failed to open.
    pub(crate) failed: usize,
}

impl OpenStreams {
    /// Hangs up every stream and waits until their tasks are gone.
    pub(crate) async fn close(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Opens `count` streams, each on its own connection, at most
/// `OPENING_AT_ONCE` at a time, and returns once each has sent its first event
/// or failed (or `limit` passed). The streams keep reading until closed.
pub(crate) async fn open_streams(
    target: Arc<Target>,
    body: &Bytes,
    count: usize,
    limit: Duration,
) -> Result<OpenStreams> {
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let (opened, mut reports) = mpsc::unbounded_channel::<bool>();
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let target = Arc::clone(&target);
        let body = body.clone();
        let opening = Arc::clone(&opening);
        let opened = opened.clone();
        tasks.spawn(async move {
            let Ok(permit) = opening.acquire_owned().await else {
                return;
            };
            let first = async {
                let mut worker = Worker::connect(target).await?;
                let response = worker.send(&body).await?;
                if response.status() != StatusCode::OK {
                    bail!("status {}", response.status());
                }
                let mut body = response.into_body();
                match body.frame().await {
                    Some(Ok(_)) => anyhow::Ok((worker, body)),
                    _ => bail!("the stream ended before its first event"),
                }
            };
            let Ok(Ok((worker, mut body))) = tokio::time::timeout(REQUEST_LIMIT, first).await
            else {
                let _ = opened.send(false);
                return;
            };
            drop(permit);
            let _ = opened.send(true);
            // Read like a client would, until the stream ends or is closed.
            while let Some(Ok(_)) = body.frame().await {}
            drop(worker);
        });
    }
    drop(opened);
    let mut streams = OpenStreams {
        tasks,
        ready: 0,
        failed: 0,
    };
    let deadline = Instant::now() + limit;
    while streams.ready + streams.failed < count {
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(true)) => streams.ready += 1,
            Ok(Some(false)) => streams.failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_frames_and_finds_tokens() {
        let mut events = SseEvents::default();
        events.push(b"data: {\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}\n\ndata: {\"de");
        let role = events.next_event().unwrap();
        assert!(!is_token(&role));
        assert!(events.next_event().is_none());
        events.push(b"lta\":{\"content\":\"w1\"}}\n\ndata: [DONE]\n\n");
        assert!(is_token(&events.next_event().unwrap()));
        assert!(!is_token(&events.next_event().unwrap()));
        assert!(events.next_event().is_none());
    }
}
