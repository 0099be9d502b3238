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
//! A worker's runtime keeps running after its connections are drained, until
//! the server's background work (the last usage records, the last
//! `last_used_at` batch) is done: a store or Redis connection a request opened
//! on that runtime is driven by it.
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
/// called on.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) -> Shutdown {
    let background = gateway.start_background().await;
    let count = options.workers;
    let listening = Arc::new(Listening::new(gateway, options));
    let mut workers = Workers::start(&listening, &listener, count).await;
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
    workers.release().await;
    outcome
}

/// Worker threads serving one listener.
pub(crate) struct Workers {
    stop: watch::Sender<bool>,
    release: watch::Sender<bool>,
    running: Vec<Running>,
}

struct Running {
    thread: std::thread::JoinHandle<()>,
    /// How the worker's connections ended.
    done: oneshot::Receiver<Shutdown>,
}

impl Workers {
    /// Starts `count` workers accepting from copies of `listener`. A worker
    /// that cannot start (no thread, no runtime, no descriptor) is logged and
    /// left out; with none started, the caller serves on its own runtime.
    pub(crate) async fn start(
        listening: &Arc<Listening>,
        listener: &TcpListener,
        count: usize,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let (release, release_rx) = watch::channel(false);
        let mut running = Vec::with_capacity(count);
        for number in 1..=count {
            let started = Worker {
                number,
                listening: Arc::clone(listening),
                stop: stop_rx.clone(),
                release: release_rx.clone(),
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
        Self {
            stop,
            release,
            running,
        }
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
        for worker in &mut self.running {
            match (&mut worker.done).await {
                Ok(Shutdown::Drained) => {}
                Ok(Shutdown::GraceExpired) => outcome = Shutdown::GraceExpired,
                Err(_) => tracing::error!("a worker thread ended before its connections did"),
            }
        }
        outcome
    }

    /// Lets the drained workers' runtimes end, and waits for their threads.
    pub(crate) async fn release(self) {
        let _ = self.release.send(true);
        let threads: Vec<_> = self.running.into_iter().map(|w| w.thread).collect();
        let joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join())
                .filter(Result::is_err)
                .count()
        })
        .await;
        match joined {
            Ok(0) => {}
            Ok(panicked) => tracing::error!(panicked, "worker threads panicked"),
            Err(e) => tracing::error!(error = %e, "cannot wait for the worker threads"),
        }
    }
}

/// One worker, before it starts.
struct Worker {
    number: usize,
    listening: Arc<Listening>,
    stop: watch::Receiver<bool>,
    release: watch::Receiver<bool>,
}

impl Worker {
    /// The thread, once its runtime and listener are up.
    async fn spawn(self, listener: &TcpListener) -> std::io::Result<Running> {
        let copy = copy_listener(listener)?;
        let (started_tx, started) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("keygate-worker-{}", self.number))
            .spawn(move || self.run(copy, started_tx, done_tx))?;
        match started.await {
            Ok(Ok(())) => Ok(Running { thread, done }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(std::io::Error::other("the worker thread ended at start"))
            }
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
            mut release,
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
            let _ = release.wait_for(|release| *release).await;
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
