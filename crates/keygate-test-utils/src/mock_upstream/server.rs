//! The mock upstream's server: the accept loop, one HTTP/1.1-or-HTTP/2
//! connection per accepted socket (plain or TLS), and an executor whose
//! HTTP/2 stream tasks end when the mock stops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::routes::handle;
use super::state::{ConnectionNumber, Fault, Shared};

/// Accepts connections until `stopped`'s sender is dropped, then aborts every
/// connection task it started.
pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // The sender is only ever dropped, which ends `changed` with an error.
            _ = stopped.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let fault = shared.behaviour().fault.clone();
                if fault == Some(Fault::Refuse) {
                    // Dropped with SO_LINGER 0: the peer sees RST.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                }
                if matches!(fault, Some(Fault::ResetAfterHeaders | Fault::ResetMidStream { .. })) {
                    // A failed body closes the connection with RST, not FIN.
                    let _ = stream.set_zero_linger();
                }
                if shared.nodelay.load(Ordering::Relaxed) {
                    let _ = stream.set_nodelay(true);
                }
                connections.spawn(serve_connection(
                    stream,
                    tls.clone(),
                    Arc::clone(&shared),
                    stopped.clone(),
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stopped: watch::Receiver<()>,
) {
    let mut builder = auto::Builder::new(StoppableExecutor { stopped });
    // No cap on HTTP/2 streams unless a test sets one (hyper's server default
    // is 200): the bench holds 1,000 streams open on one connection.
    let max_streams = shared.max_streams.load(Ordering::Relaxed);
    builder
        .http2()
        .max_concurrent_streams((max_streams > 0).then_some(max_streams));
    let counter = Arc::clone(&shared);
    // Each request is told which connection it came on (numbered from 1 in
    // order of acceptance, after the TLS handshake).
    let service = move |connection: usize| {
        let shared = Arc::clone(&shared);
        service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectionNumber(connection));
            with_extra_headers(Arc::clone(&shared), request)
        })
    };
    let number = || counter.connections.fetch_add(1, Ordering::SeqCst) + 1;
    match tls {
        None => {
            let connection = number();
            let _ = builder
                .serve_connection(TokioIo::new(stream), service(connection))
                .await;
        }
        Some(acceptor) => {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let connection = number();
            let _ = builder
                .serve_connection(TokioIo::new(stream), service(connection))
                .await;
        }
    }
}

/// Runs hyper's HTTP/2 stream tasks until they finish or the mock stops.
#[derive(Clone)]
struct StoppableExecutor {
    stopped: watch::Receiver<()>,
}

impl<F> hyper::rt::Executor<F> for StoppableExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut stopped = self.stopped.clone();
        // Who waits: nobody; the task ends with its HTTP/2 stream, or when the
        // mock's stop sender is dropped.
        tokio::spawn(async move {
            tokio::select! {
                _ = future => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

/// [`handle`], then the headers `set_response_header` asked for, on every
/// answer, failures included.
async fn with_extra_headers(
    shared: Arc<Shared>,
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<super::body::MockBody>, std::convert::Infallible> {
    let mut response = handle(Arc::clone(&shared), request).await?;
    let extra = shared.behaviour().extra_headers.clone();
    for (name, value) in extra {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}
