//! Connection limits over raw TCP: `max_connections`, the header, body and
//! keep-alive deadlines, answers given before the body was read, and a 413 the
//! client can read while it is still sending.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use keygate_test_utils::MockUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// The longest any test here waits for something that must happen.
const DEADLINE: Duration = Duration::from_secs(10);
/// A deadline that must not be the one that acts.
const NEVER: Duration = Duration::from_secs(600);

/// One client connection, read by hand.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// An answer read off a [`Raw`] connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn code(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        json["error"]["code"].as_str().unwrap().to_owned()
    }
}

impl Raw {
    async fn connect(gw: &TestGateway) -> Self {
        Self {
            tcp: TcpStream::connect(gw.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// Reads one answer (its body sized by `content-length`), or `None` when the
    /// server closes the connection first.
    async fn reply(&mut self) -> Option<RawReply> {
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let status = head[9..12].parse().unwrap();
        let mut reply = RawReply {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = reply
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while self.buf.len() < len {
            assert!(self.fill().await, "closed mid-body");
        }
        reply.body = self.buf.drain(..len).collect();
        Some(reply)
    }

    /// Reads more; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Waits (at most [`DEADLINE`]) for the server to close the connection.
    async fn closed_by_server(&mut self) {
        tokio::time::timeout(DEADLINE, async { while self.fill().await {} })
            .await
            .expect("the server kept the connection open");
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: keygate\r\n\r\n").into_bytes()
}

fn post_head(key: &str, len: usize) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: keygate\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
    .into_bytes()
}

/// A JSON chat body padded to exactly `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    let mut body = chat("gpt-4o-mini", false).to_string().into_bytes();
    body.pop();
    body.extend_from_slice(br#","pad":""#);
    while body.len() < len - 2 {
        body.push(b'x');
    }
    body.extend_from_slice(b"\"}");
    body
}

/// Past `max_connections` a new connection is not served until one closes, and
/// the wait is counted on `/metrics`.
#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .server(|o| {
            o.max_connections = 20;
            o.header_read_timeout = NEVER;
            o.keepalive_timeout = NEVER;
        })
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut conn = Raw::connect(&gw).await;
        conn.send(&get("/healthz")).await;
        assert_eq!(conn.reply().await.unwrap().status, 200);
        held.push(conn);
    }
    let mut waiting = Raw::connect(&gw).await;
    waiting.send(&get("/healthz")).await;
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.reply()).await;
    assert!(
        early.is_err(),
        "connection 21 was served while 20 were open"
    );
    drop(held.pop());
    let reply = tokio::time::timeout(DEADLINE, waiting.reply())
        .await
        .expect("connection 21 was not served after one closed")
        .unwrap();
    assert_eq!(reply.status, 200);
    waiting.send(&get("/metrics")).await;
    let metrics = String::from_utf8(waiting.reply().await.unwrap().body).unwrap();
    let waited: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_connections_waited_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited >= 1, "{metrics}");
    assert!(
        metrics.contains("keygate_open_connections 20\n"),
        "{metrics}"
    );
}

/// A connection that sends nothing at all, and one that stops halfway through
/// its head, are closed by the server.
#[tokio::test]
async fn silent_and_slow_header_connections_are_closed() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .server(|o| {
            o.header_read_timeout = Duration::from_millis(300);
            o.keepalive_timeout = NEVER;
        })
        .start()
        .await;
    let mut silent = Raw::connect(&gw).await;
    silent.closed_by_server().await;
    let mut partial = Raw::connect(&gw).await;
    partial.send(b"GET /healthz HTTP/1.1\r\nhost: ").await;
    partial.closed_by_server().await;
}

/// A body slower than `body_read_timeout` gets 408 in the OpenAI shape, and the
/// connection is closed after it.
#[tokio::test]
async fn a_slow_body_gets_408() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .config(|c| c.body_read_timeout = Duration::from_millis(300))
        .start()
        .await;
    let key = gw.key().await;
    let body = padded_body(200);
    let mut conn = Raw::connect(&gw).await;
    conn.send(&post_head(&key, body.len())).await;
    conn.send(&body[..10]).await;
    let reply = tokio::time::timeout(DEADLINE, conn.reply())
        .await
        .expect("no answer to a slow body")
        .unwrap();
    assert_eq!(reply.status, 408);
    assert_eq!(reply.code(), "request_timeout");
    assert_eq!(reply.header("connection"), Some("close"));
    conn.closed_by_server().await;
    assert!(mock.requests().is_empty());
}

/// A 401 decided before the body was read: a small body is drained and the
/// connection serves the next request; a large one is answered with
/// `Connection: close`.
#[tokio::test]
async fn an_early_401_leaves_the_connection_usable_or_says_close() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let body = padded_body(4 * 1024);
    let mut conn = Raw::connect(&gw).await;
    for _ in 0..3 {
        conn.send(&post_head("kg_sk_not_a_real_key", body.len()))
            .await;
        conn.send(&body).await;
        let reply = conn.reply().await.unwrap();
        assert_eq!(reply.status, 401);
        assert_eq!(reply.header("connection"), None);
    }
    conn.send(&get("/healthz")).await;
    assert_eq!(conn.reply().await.unwrap().status, 200);

    let large = padded_body(200 * 1024);
    let mut conn = Raw::connect(&gw).await;
    conn.send(&post_head("kg_sk_not_a_real_key", large.len()))
        .await;
    conn.send(&large).await;
    let reply = conn.reply().await.unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("connection"), Some("close"));
    conn.closed_by_server().await;
}

/// A client sending 11.5 MB against the 10 MiB limit reads the 413: a hyper
/// client, a raw client that reads only once it has sent everything, and a
/// chunked body.
#[tokio::test]
async fn an_oversized_body_gets_a_readable_413() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::start(&mock).await;
    let key = gw.key().await;
    let body = Bytes::from(padded_body(11_500_000));
    let auth = format!("Bearer {key}");
    let url = gw.url("/v1/chat/completions");
    let request = request(
        Method::POST,
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.clone(),
    );
    let reply = tokio::time::timeout(DEADLINE, send(request))
        .await
        .expect("no answer to an oversized body");
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.code(), "request_too_large");

    // A client that sends its whole body before it reads: the rest of the body
    // is read and discarded, not reset under it.
    let mut conn = Raw::connect(&gw).await;
    conn.send(&post_head(&key, body.len())).await;
    let sent = tokio::time::timeout(DEADLINE, conn.tcp.write_all(&body)).await;
    assert!(matches!(sent, Ok(Ok(()))), "the body was cut off: {sent:?}");
    let reply = conn.reply().await.expect("the 413 was lost");
    assert_eq!(reply.status, 413);
    assert_eq!(reply.code(), "request_too_large");
    assert_eq!(reply.header("connection"), Some("close"));

    let chunks = body
        .chunks(64 * 1024)
        .map(|c| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::copy_from_slice(c)))
        })
        .collect::<Vec<_>>();
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let request = http::Request::post(&url)
        .header("authorization", &auth)
        .body(streamed)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .expect("no answer to an oversized chunked body")
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(mock.requests().is_empty());
}

/// An idle keep-alive connection is closed after `keepalive_timeout`.
#[tokio::test]
async fn an_idle_keepalive_connection_is_closed() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .server(|o| {
            o.header_read_timeout = NEVER;
            o.keepalive_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let mut conn = Raw::connect(&gw).await;
    conn.send(&get("/healthz")).await;
    assert_eq!(conn.reply().await.unwrap().status, 200);
    conn.closed_by_server().await;
}

/// The value of an unlabelled metric in `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// Reads `/metrics` on `conn` until `name` is `want` (at most [`DEADLINE`]):
/// a connection the server closed is counted out just after the close.
async fn metric_becomes(conn: &mut Raw, name: &str, want: u64) {
    let mut text = String::new();
    for _ in 0..100 {
        conn.send(&get("/metrics")).await;
        text = String::from_utf8(conn.reply().await.unwrap().body).unwrap();
        if metric(&text, name) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {want}: {text}");
}

/// Idle connections the listener's backlog holds (128 from tokio) past those
/// served, with room to spare: more would not wait in the backlog but have
/// their SYN dropped and retried by the kernel, a second later.
const BACKLOGGED: usize = 110;

/// 150 idle connections against `max_connections = 40`: 40 are served and the
/// rest wait in the backlog, counted on `/metrics`; when the clients give up,
/// the count goes back down and the first connection is still served.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_past_the_limit_wait_in_the_backlog() {
    const LIMIT: usize = 40;
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .server(|o| {
            o.max_connections = LIMIT;
            o.header_read_timeout = NEVER;
            o.keepalive_timeout = NEVER;
        })
        .start()
        .await;
    // Served first, it keeps its place and reads `/metrics` later.
    let mut watcher = Raw::connect(&gw).await;
    watcher.send(&get("/healthz")).await;
    assert_eq!(watcher.reply().await.unwrap().status, 200);
    let mut idle = Vec::new();
    for _ in 0..LIMIT + BACKLOGGED {
        idle.push(Raw::connect(&gw).await);
    }
    metric_becomes(&mut watcher, "keygate_open_connections", LIMIT as u64).await;
    watcher.send(&get("/metrics")).await;
    let text = String::from_utf8(watcher.reply().await.unwrap().body).unwrap();
    assert!(
        metric(&text, "keygate_connections_waited_total") >= 1,
        "{text}"
    );
    drop(idle);
    metric_becomes(&mut watcher, "keygate_open_connections", 1).await;
}

/// 150 connections that never send a byte, against `max_connections = 40` and
/// a 200 ms `header_read_timeout`: each one the server takes in is closed
/// silent, which lets the waiting ones in turn, until the server has closed
/// every one; then a new client is served, with nothing else left open.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_past_the_limit_are_all_closed() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .server(|o| {
            o.max_connections = 40;
            o.header_read_timeout = Duration::from_millis(200);
            o.keepalive_timeout = NEVER;
        })
        .start()
        .await;
    let mut idle = Vec::new();
    for _ in 0..40 + BACKLOGGED {
        idle.push(Raw::connect(&gw).await);
    }
    let closed = futures_util::future::join_all(
        idle.iter_mut()
            .map(|conn| tokio::time::timeout(DEADLINE * 3, async { while conn.fill().await {} })),
    )
    .await;
    let kept = closed.iter().filter(|c| c.is_err()).count();
    assert_eq!(kept, 0, "{kept} silent connections were never closed");
    drop(idle);
    let mut fresh = Raw::connect(&gw).await;
    fresh.send(&get("/healthz")).await;
    assert_eq!(fresh.reply().await.unwrap().status, 200);
    metric_becomes(&mut fresh, "keygate_open_connections", 1).await;
}

/// A client's writes with the first `sent` bytes of the HTTP/2 preface
/// dropped: they went out by hand before the client took over the socket.
struct SentAlready {
    tcp: TcpStream,
    sent: usize,
    dropped: usize,
}

impl tokio::io::AsyncRead for SentAlready {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SentAlready {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let (sent, dropped) = (self.sent, self.dropped);
        if dropped < sent {
            let n = (sent - dropped).min(buf.len());
            assert_eq!(&buf[..n], &H2_PREFACE[dropped..dropped + n]);
            self.dropped += n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `GET /healthz` over HTTP/2 with prior knowledge on a plain connection whose
/// first `sent` bytes of the preface went out on their own, a pause before the
/// rest.
async fn h2_healthz(gw: &TestGateway, sent: usize) -> StatusCode {
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if sent > 0 {
        tcp.write_all(&H2_PREFACE[..sent]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let io = hyper_util::rt::TokioIo::new(SentAlready {
        tcp,
        sent,
        dropped: 0,
    });
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/healthz", gw.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("no HTTP/2 answer")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    response.status()
}

/// On a plain connection the protocol is told from the client's first bytes:
/// HTTP/2 with prior knowledge, HTTP/1.1, and either arriving a piece at a time
/// (a first byte of an HTTP/1.1 `POST` is also the preface's first) are served.
#[tokio::test]
async fn plain_connections_serve_http2_prior_knowledge_and_http1_sent_piecemeal() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock).start().await;
    for sent in [0, 1, 16, 23] {
        assert_eq!(
            h2_healthz(&gw, sent).await,
            StatusCode::OK,
            "{sent} bytes first"
        );
    }
    let key = gw.key().await;
    let body = padded_body(200);
    let mut request = post_head(&key, body.len());
    request.extend_from_slice(&body);
    for first in [request.len(), 1, 3] {
        let mut conn = Raw::connect(&gw).await;
        conn.tcp.set_nodelay(true).unwrap();
        conn.send(&request[..first]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.send(&request[first..]).await;
        let reply = tokio::time::timeout(DEADLINE, conn.reply())
            .await
            .expect("no HTTP/1.1 answer")
            .unwrap();
        assert_eq!(reply.status, 200, "{first} bytes first");
        assert!(reply.head.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(mock.requests().len(), 3);
}
