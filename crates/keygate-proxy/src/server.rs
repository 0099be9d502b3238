//! Accepting connections: plain TCP or TLS (ALPN h2 and http/1.1), HTTP/1.1 and
//! HTTP/2 (told by ALPN, or on plain TCP by a peek at the client's first bytes)
//! through hyper's HTTP/1 builder (plain HTTP/1) or hyper-util's, at most
//! `max_connections` at once, each under its idle deadlines, and graceful
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::backoff::Backoff;
use crate::conn::{Activity, ConnectionMetrics, Tracked, Watchdog};
use crate::context::PeerAddr;
use crate::error::ConfigError;
use crate::gateway::Gateway;

/// What a connection may end with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server shut down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection finished within the grace period.
    Drained,
    /// The grace period ran out; the remaining connections were closed.
    GraceExpired,
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// TLS, when the gateway terminates it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long in-flight requests and streams may take to finish after shutdown
    /// starts.
    pub grace: Duration,
    /// Connections served at once; past it, new ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// How long a connection may take, from accept (or the end of the TLS
    /// handshake), to send its first request head; for HTTP/1 also each later
    /// head, counted from the previous answer.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open after an
    /// answer.
    pub keepalive_timeout: Duration,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: how often an idle connection is pinged.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: how long a ping may go unanswered before the connection closes.
    pub http2_keepalive_timeout: Duration,
    /// Threads that serve client connections, each running a current-thread
    /// runtime of its own and accepting from the listener: a request is then
    /// served start to end on one thread, with its upstream connection, and
    /// no thread wakes another for it. 0 (the default) serves them on the
    /// runtime [`serve`](crate::serve) is called on.
    pub workers: usize,
}

impl ServerOptions {
    /// No TLS, a 30 s grace period and the [`defaults`](crate::defaults) for the
    /// rest.
    pub fn new() -> Self {
        use crate::defaults;
        Self {
            tls: None,
            grace: Duration::from_secs(30),
            max_connections: defaults::MAX_CONNECTIONS,
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            http2_max_concurrent_streams: defaults::HTTP2_MAX_CONCURRENT_STREAMS,
            http2_keepalive_interval: defaults::HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: defaults::HTTP2_KEEPALIVE_TIMEOUT,
            workers: 0,
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Loads a PEM certificate chain and private key into a rustls server config that
/// offers h2 and http/1.1 by ALPN. `field` names the config entry in errors.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ConfigError::new("tls.cert", format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::new(
                "tls.cert",
                format!("{} is not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            "tls.cert",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ConfigError::new(
            "tls.key",
            format!("{} is not a readable PEM private key: {e}", key.display()),
        )
    })?;
    server_tls(certs, key_der)
}

/// A rustls server config (ring) with ALPN h2 and http/1.1.
pub fn server_tls(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ConfigError::new(
                "tls.key",
                format!("the key does not fit the certificate: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What every accept loop of one server shares.
pub(crate) struct Listening {
    gateway: Arc<Gateway>,
    protocols: Protocols,
    acceptor: Option<TlsAcceptor>,
    /// Slots under `max_connections`, for all the server's loops together.
    slots: Arc<Semaphore>,
    /// Every slot was taken when a loop last looked (one pause counted however
    /// many loops wait through it).
    paused: std::sync::atomic::AtomicBool,
    grace: Duration,
    first: Duration,
    idle: Duration,
}

impl Listening {
    pub(crate) fn new(gateway: Arc<Gateway>, options: ServerOptions) -> Self {
        Self {
            gateway,
            protocols: Protocols::new(&options),
            acceptor: options.tls.map(TlsAcceptor::from),
            slots: Arc::new(Semaphore::new(options.max_connections)),
            paused: std::sync::atomic::AtomicBool::new(false),
            grace: options.grace,
            first: options.header_read_timeout,
            idle: options.keepalive_timeout,
        }
    }

    /// Accepts on `listener` until `shutdown`, serving each connection in a
    /// task on the current runtime, then drains them under the grace period.
    pub(crate) async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Shutdown {
        let graceful = GracefulShutdown::new();
        let metrics = Arc::clone(&self.gateway.local.connections);
        let mut accept_backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        // Connection tasks: watched by `graceful` for the drain, and aborted here
        // if the grace period runs out.
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while connections.try_join_next().is_some() {}
            // A slot first: past `max_connections` nothing is accepted, so new
            // connections wait in the kernel's backlog until one closes.
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if !self.paused.swap(true, Ordering::AcqRel) {
                        metrics.waited.fetch_add(1, Ordering::Relaxed);
                    }
                    let slot = tokio::select! {
                        () = &mut shutdown => break,
                        slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    };
                    self.paused.store(false, Ordering::Release);
                    slot
                }
            };
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        accept_backoff.reset();
                        accepted
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait longer each
                        // time rather than spin, while open connections may close.
                        let wait = accept_backoff.next_wait();
                        tracing::warn!(error = %e, wait_ms = wait.as_millis(), "accept failed");
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                },
            };
            let open = OpenConnection::new(slot, Arc::clone(&metrics));
            let connection = Arc::clone(&self).connection(tcp, peer, graceful.watcher());
            connections.spawn(async move {
                let _open = open;
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        let open = graceful.count();
        tracing::info!(
            open_connections = open,
            grace_secs = self.grace.as_secs_f64(),
            "shutting down: no longer accepting"
        );
        let outcome = tokio::select! {
            () = graceful.shutdown() => Shutdown::Drained,
            () = tokio::time::sleep(self.grace) => Shutdown::GraceExpired,
        };
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        outcome
    }

    /// Serves one accepted connection to its end.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        watcher: Watcher,
    ) -> Result<(), BoxError> {
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let service = {
            let gateway = Arc::clone(&self.gateway);
            let activity = Arc::clone(&activity);
            service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                let busy = activity.begin();
                request.extensions_mut().insert(PeerAddr(peer));
                let gateway = Arc::clone(&gateway);
                async move {
                    let response = gateway.handle(request).await;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
                }
            })
        };
        let (first, idle) = (self.first, self.idle);
        match &self.acceptor {
            None => {
                // The first request head is due `first` after the accept, the
                // peek included.
                let deadline = Instant::now() + first;
                let Ok(protocol) = tokio::time::timeout_at(deadline, sniff(&tcp)).await else {
                    tracing::debug!("no request within the header read timeout");
                    return Ok(());
                };
                let first = deadline.saturating_duration_since(Instant::now());
                let io = TokioIo::new(Watchdog::new(tcp, activity, first, idle));
                match protocol {
                    // Inline: the common connection's task holds hyper's HTTP/1
                    // connection and nothing bigger.
                    Protocol::Http1 => watcher
                        .watch(self.protocols.http1.serve_connection(io, service))
                        .await
                        .map_err(Into::into),
                    other => {
                        let connection = self.protocols.pick(other).serve_connection(io, service);
                        Box::pin(watcher.watch(connection.into_owned())).await
                    }
                }
            }
            // Boxed: a TLS stream and its handshake are larger than the rest of
            // the task, which would otherwise be as large for every connection.
            Some(acceptor) => {
                let connection = TlsConnection {
                    acceptor: acceptor.clone(),
                    tcp,
                    activity,
                    first,
                    idle,
                };
                Box::pin(connection.serve(&self.protocols, service, watcher)).await
            }
        }
    }
}

/// An accepted connection to serve over TLS.
struct TlsConnection {
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    activity: Arc<Activity>,
    first: Duration,
    idle: Duration,
}

impl TlsConnection {
    /// The handshake, then the connection in the protocol ALPN chose.
    async fn serve<S>(
        self,
        protocols: &Protocols,
        service: S,
        watcher: Watcher,
    ) -> Result<(), BoxError>
    where
        S: hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = hyper::Response<Tracked<crate::GatewayBody>>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let handshake = self.acceptor.accept(self.tcp);
        let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return Ok(());
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return Ok(());
            }
        };
        let protocol = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Unknown,
        };
        let io = TokioIo::new(Watchdog::new(tls, self.activity, self.first, self.idle));
        let connection = protocols.pick(protocol).serve_connection(io, service);
        watcher.watch(connection.into_owned()).await
    }
}

/// What a client speaks, as far as is known before hyper reads from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Not told yet: hyper-util reads the first bytes to find out.
    Unknown,
}

/// How a connection is served, one builder per [`Protocol`]: the same settings,
/// and for a known protocol no detection. hyper-util's detection reads the first
/// 24 bytes apart and hands them to hyper as a first read of their own, which
/// makes hyper grow the connection's read buffer from 8 to 16 KB for the rest of
/// the request; an open stream then holds the larger buffer.
///
/// A plain-TCP HTTP/1 connection, the common one, is served by hyper's own
/// HTTP/1 builder rather than hyper-util's: its connection is an enum sized for
/// HTTP/2 as well, which made every connection's task about 3 KB larger.
struct Protocols {
    any: auto::Builder<TokioExecutor>,
    http1_auto: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    http1: hyper::server::conn::http1::Builder,
}

impl Protocols {
    fn new(options: &ServerOptions) -> Self {
        let mut any = auto::Builder::new(TokioExecutor::new());
        any.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        any.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(256 * 1024)
            .max_concurrent_streams(options.http2_max_concurrent_streams)
            .keep_alive_interval(options.http2_keepalive_interval)
            .keep_alive_timeout(options.http2_keepalive_timeout);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        Self {
            http1_auto: any.clone().http1_only(),
            http2: any.clone().http2_only(),
            any,
            http1,
        }
    }

    fn pick(&self, protocol: Protocol) -> &auto::Builder<TokioExecutor> {
        match protocol {
            Protocol::Http1 => &self.http1_auto,
            Protocol::Http2 => &self.http2,
            Protocol::Unknown => &self.any,
        }
    }
}

/// HTTP/2's connection preface, which a plain-TCP client with prior knowledge
/// sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells a plain-TCP client's protocol from its first bytes, peeked, so that
/// hyper still reads them as they came. `Unknown` while they are only the start
/// of the preface (a client sending a byte at a time), or when the peek finds
/// the connection closed or failing: hyper-util then reads to find out, as it
/// would have.
async fn sniff(tcp: &TcpStream) -> Protocol {
    let mut first = [0u8; H2_PREFACE.len()];
    match tcp.peek(&mut first).await {
        Ok(0) | Err(_) => Protocol::Unknown,
        Ok(n) if first[..n] != H2_PREFACE[..n] => Protocol::Http1,
        Ok(n) if n == H2_PREFACE.len() => Protocol::Http2,
        Ok(_) => Protocol::Unknown,
    }
}

/// One accepted connection's slot under `max_connections`, counted as open
/// until the connection's task ends.
struct OpenConnection {
    _slot: tokio::sync::OwnedSemaphorePermit,
    metrics: Arc<ConnectionMetrics>,
}

impl OpenConnection {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, metrics: Arc<ConnectionMetrics>) -> Self {
        metrics.open.fetch_add(1, Ordering::Relaxed);
        Self {
            _slot: slot,
            metrics,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections the metrics listener serves at once.
const METRICS_CONNECTIONS: usize = 16;
/// How long a scraper has to send its request head.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` (the gateway's exposition, see
/// [`Gateway::metrics_text`]) on `listener` until `shutdown`, over plain
/// HTTP/1.1: for `[metrics] listen`, a port that only the scraper reaches.
/// Anything else is 404; at most 16 connections at once.
pub async fn serve_metrics(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let response = metrics_answer(&gateway, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(METRICS_HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(tcp), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
    drop(listener);
    // A scrape takes milliseconds: a short wait, then the rest are closed.
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

fn metrics_answer<B>(
    gateway: &Gateway,
    request: &hyper::Request<B>,
) -> hyper::Response<crate::GatewayBody> {
    let text = (request.method() == hyper::Method::GET && request.uri().path() == "/metrics")
        .then(|| gateway.metrics_text())
        .flatten();
    match text {
        Some(text) => {
            let mut response = hyper::Response::new(crate::GatewayBody::full(text));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            response
        }
        None => crate::ProxyError::UnknownRoute.into_response(),
    }
}
