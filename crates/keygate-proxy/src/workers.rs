//! Serving on worker threads, a runtime per thread ([`ServerOptions::workers`]).
//!
//! On tokio's multi-thread runtime a request's tasks move between threads:
//! hyper's connection task, the upstream connection's task and the background
//! tickers each wake whichever thread is parked, and on two cores most
//! requests paid for a thread waking another. Here each worker thread runs a
//! current-thread runtime with its own accept loop on a copy of the
//! listener's descriptor, so a connection, its requests, and the upstream
//! connections they open (pooled per worker, see [`crate::worker::current`]) stay on the
//! thread that accepted it. All workers wait on the one listening socket: the
//! kernel wakes each of them for a new connection and the first to call
//! `accept` takes it, which favours a worker that is not busy.
//!
//! A worker's runtime keeps running after its connections are drained, for as
//! long as the [`Gateway`] lives: a store, Redis or upstream connection a
//! request opened on that runtime is driven by it, and the gateway's store may
//! still be in use (the last usage records, an admin API sharing it). When the
//! last `Arc<Gateway>` is dropped, the worker threads end by themselves.
//! Billing's money calls do not depend on them: they run on billing's own
//! runtime (see [`crate::billing`]).
//!
//! [`ServerOptions::workers`]: crate::ServerOptions::workers

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::gateway::Gateway;
use crate::server::{Listening, ServerOptions, Shutdown};

/// Serves `gateway` on `listener` until `shutdown` resolves, then stops accepting
/// and gives open connections `options.grace` to finish. The gateway's background
/// tasks are stopped, and their last batch written, before this returns.
///
/// With `options.workers` above 0 the connections are served on that many
/// threads of their own, each with a current-thread runtime accepting from the
/// same listener (see the module's docs); with 0, on the runtime this is
/// called on. The worker threads end when the last `Arc<Gateway>` is dropped,
/// not when this returns: serving one gateway again starts new threads beside
/// the parked ones.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Shutdown {
    let background = gateway.start_background().await;
    let count = options.workers;
    let lifetime = gateway.lifetime.subscribe();
    let listening = Arc::new(Listening::new(gateway, options));
    let mut workers = Workers::start(&listening, &listener, count, &lifetime).await;
    if workers.is_empty() {
        if count > 0 {
            tracing::warn!("no worker thread started: serving on the main runtime");
        }
        let outcome = listening.accept(listener, shutdown).await;
        background.stop().await;
        return outcome;
    }
    // The workers hold copies of the socket.
    drop(listener);
    shutdown.await;
    let outcome = workers.drain().await;
    background.stop().await;
    outcome
}

/// Worker threads serving one listener. Dropped (the server's future dropped),
/// the workers stop accepting and drain as on shutdown.
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    /// How each worker's connections ended.
    running: Vec<oneshot::Receiver<Shutdown>>,
}

impl Workers {
    /// Starts `count` workers accepting from copies of `listener`. A worker
    /// that cannot start (no thread, no runtime, no descriptor) is logged and
    /// left out; with none started, the caller serves on its own runtime.
    pub(crate) async fn start(
        listening: &Arc<Listening>,
        listener: &TcpListener,
        count: usize,
        lifetime: &watch::Receiver<()>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let mut running = Vec::with_capacity(count);
        for number in 1..=count {
            let started = Worker {
                number,
                listening: Arc::clone(listening),
                stop: stop_rx.clone(),
                lifetime: lifetime.clone(),
            }
            .spawn(listener)
            .await;
            match started {
                Ok(worker) => running.push(worker),
                Err(e) => {
                    tracing::error!(worker = number, error = %e, "cannot start a worker thread")
                }
            }
        }
        if !running.is_empty() {
            tracing::debug!(workers = running.len(), "serving on worker threads");
        }
        Self { stop, running }
    }

    /// No worker started.
    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Stops accepting on every worker and waits for their connections to end
    /// (each under the grace period).
    pub(crate) async fn drain(&mut self) -> Shutdown {
        let _ = self.stop.send(true);
        let mut outcome = Shutdown::Drained;
        for done in &mut self.running {
            match done.await {
                Ok(Shutdown::Drained) => {}
                Ok(Shutdown::GraceExpired) => outcome = Shutdown::GraceExpired,
                Err(_) => tracing::error!("a worker thread ended before its connections did"),
            }
        }
        outcome
    }
}

/// One worker, before it starts.
struct Worker {
    number: usize,
    listening: Arc<Listening>,
    stop: watch::Receiver<bool>,
    /// Closed when the gateway is dropped.
    lifetime: watch::Receiver<()>,
}

impl Worker {
    /// The thread, once its runtime and listener are up.
    /// The thread is detached: it ends by itself once drained and the gateway
    /// is gone, or at once when it cannot start.
    async fn spawn(self, listener: &TcpListener) -> std::io::Result<oneshot::Receiver<Shutdown>> {
        let copy = copy_listener(listener)?;
        let (started_tx, started) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("keygate-worker-{}", self.number))
            .spawn(move || self.run(copy, started_tx, done_tx))?;
        match started.await {
            Ok(Ok(())) => Ok(done),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("the worker thread ended at start")),
        }
    }

    /// The worker thread's body.
    fn run(
        self,
        listener: std::net::TcpListener,
        started: oneshot::Sender<std::io::Result<()>>,
        done: oneshot::Sender<Shutdown>,
    ) {
        crate::worker::enter(self.number);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let Self {
            listening,
            mut stop,
            mut lifetime,
            ..
        } = self;
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            // A dropped sender (the server's future dropped) stops it too.
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let outcome = listening.accept(listener, stopped).await;
            let _ = done.send(outcome);
            // Nothing sends: this ends when the gateway is dropped.
            while lifetime.changed().await.is_ok() {}
        });
    }
}

/// A second descriptor for the listening socket, non-blocking as tokio needs.
fn copy_listener(listener: &TcpListener) -> std::io::Result<std::net::TcpListener> {
    #[cfg(unix)]
    let copy =
        std::net::TcpListener::from(std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?);
    #[cfg(windows)]
    let copy = std::net::TcpListener::from(
        std::os::windows::io::AsSocket::as_socket(listener).try_clone_to_owned()?,
    );
    copy.set_nonblocking(true)?;
    Ok(copy)
}
