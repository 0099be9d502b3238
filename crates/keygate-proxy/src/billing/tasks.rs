//! Billing's store calls (settlements, and the lease takes in [`super::leases`])
//! run as [`HomeTasks`]: on the runtime billing was built on, not on whichever
//! runtime the request that started them runs. A server's worker runtime may
//! end (its thread panicked, or the server's future was dropped) while such a
//! call is pending; money must not go with it.
//!
//! What stays tied to a worker is the store pool's connections: on PostgreSQL a
//! connection is driven by the runtime that opened it. A call on a connection
//! whose worker ended fails and is retried (settlements are idempotent in the
//! store, see `settle_once`); in the binary the workers outlive billing's
//! shutdown, so this happens only after a worker panicked.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// Tasks tracked for shutdown, spawned on billing's own runtime.
#[derive(Debug, Clone)]
pub(crate) struct HomeTasks {
    tracker: TaskTracker,
    home: Handle,
}

impl HomeTasks {
    /// Tasks on the runtime this is called on.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` would.
    pub(crate) fn new() -> Self {
        Self {
            tracker: TaskTracker::new(),
            home: Handle::current(),
        }
    }

    /// Runs `task` on the home runtime (once that runtime has shut down, the
    /// task is dropped unrun and its handle says so).
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(task, &self.home)
    }

    /// Lets [`HomeTasks::wait`] end once no task is left (tasks may still be
    /// spawned).
    pub(crate) fn close(&self) {
        self.tracker.close();
    }

    /// Ends once closed and every task has ended.
    pub(crate) async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Tasks not yet ended.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }
}
