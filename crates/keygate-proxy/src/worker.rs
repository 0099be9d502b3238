//! Which worker thread this is ([`crate::workers`]), for state kept per worker.

use std::cell::Cell;

thread_local! {
    /// This thread's worker number, from 1; 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread is: 1 for the first, 0 on a thread that is not a
/// worker. State kept per worker (an upstream's pooled connections) is picked
/// by it.
pub(crate) fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Makes this thread worker `number`; called once, as a worker thread starts.
pub(crate) fn enter(number: usize) {
    WORKER.with(|w| w.set(number));
}
