//! Where log lines go: appended to a buffer in memory, which a thread of its
//! own writes to stderr a few milliseconds after the first line lands in it,
//! with every line that came meanwhile in one `write`.
//!
//! tracing-appender's non-blocking writer sends each line down a channel
//! whose thread wakes for it, spins and parks again: per request line, about
//! two futex calls, four `sched_yield`s and a `write` (`strace -c -f` over
//! 2,000 requests; docs/benchmarks.md). Here a line is a copy under a lock,
//! and only a line into an empty buffer wakes the thread: under load, one
//! wake-up and one `write` carry every line of a few milliseconds.
//!
//! No line is dropped: past [`MAX_WAITING`] bytes not yet written (stderr
//! blocked), a thread logging waits until the writer has taken them.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer lets lines gather after the first one wakes it.
const GATHER: Duration = Duration::from_millis(5);

/// Bytes waiting past which a thread logging waits for the writer.
const MAX_WAITING: usize = 4 << 20;

/// The log lines not yet written, shared by every thread that logs and the
/// writer thread.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Lines landed in an empty buffer, or the guard was dropped.
    landed: Condvar,
    /// The writer took the buffer: room again under [`MAX_WAITING`].
    taken: Condvar,
}

#[derive(Default)]
struct State {
    waiting: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panicked while appending left whole lines or a torn
        // one; the rest is still worth writing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.closed {
            // After the writer's last batch (a thread still logging as the
            // process ends): written as it comes.
            drop(state);
            let _ = std::io::stderr().write_all(line);
            return;
        }
        while state.waiting.len() > MAX_WAITING && !state.closed {
            state = self
                .taken
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let first = state.waiting.is_empty();
        state.waiting.extend_from_slice(line);
        drop(state);
        if first {
            self.landed.notify_one();
        }
    }
}

/// A `MakeWriter` for tracing-subscriber; see the module's documentation.
#[derive(Clone)]
pub(crate) struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Held until the process ends: dropping it writes what is waiting and stops
/// the writer thread.
pub(crate) struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer to `out` and its guard; an error when the writer thread cannot be
/// started.
pub(crate) fn batched(
    out: impl Write + Send + 'static,
) -> std::io::Result<(BatchedWriter, LogGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("keygate-log".to_owned())
        .spawn({
            let shared = Arc::clone(&shared);
            move || write_out(&shared, out)
        })?;
    let writer = BatchedWriter {
        shared: Arc::clone(&shared),
    };
    Ok((
        writer,
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The writer thread: waits for a first line, lets more gather, writes them
/// all; at the end, writes the rest.
fn write_out(shared: &Shared, mut out: impl Write) {
    // Swapped with the waiting buffer, so neither is allocated anew.
    let mut spare = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.waiting.is_empty() && !state.closed {
            state = shared
                .landed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let closed = state.closed;
        if !closed {
            drop(state);
            std::thread::sleep(GATHER);
            state = shared.lock();
        }
        std::mem::swap(&mut state.waiting, &mut spare);
        drop(state);
        shared.taken.notify_all();
        // Nowhere to report a failed write to but stderr itself.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        spare.clear();
        if closed {
            return;
        }
    }
}

/// Longest wait at exit for the last lines to be written: a blocked stderr
/// (a stalled log collector) must not keep the process from ending.
const LAST_WRITE: Duration = Duration::from_secs(2);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.landed.notify_one();
        self.shared.taken.notify_all();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + LAST_WRITE;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

/// One log line's writer: tracing-subscriber formats a line whole and writes
/// it in one call.
pub(crate) struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `out` that keeps what it was given, and counts the writes.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut kept = self.0.lock().unwrap();
            kept.0.extend_from_slice(buf);
            kept.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_and_few_writes_carry_many_lines() {
        let kept = Kept::default();
        let (writer, guard) = batched(kept.clone()).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for n in 0..1000 {
                        let line = format!("thread={thread} n={n}\n");
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let (bytes, writes) = std::mem::take(&mut *kept.0.lock().unwrap());
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for thread in 0..4 {
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread={thread} ")))
                .collect();
            let expected: Vec<String> = (0..1000)
                .map(|n| format!("thread={thread} n={n}"))
                .collect();
            assert_eq!(own, expected, "thread {thread}: lost or reordered");
        }
        assert!(writes < 4000, "{writes} writes for 4000 lines");
    }

    #[test]
    fn a_line_is_written_soon_and_the_guard_writes_the_rest() {
        let kept = Kept::default();
        let (writer, guard) = batched(kept.clone()).unwrap();
        writer.make_writer().write_all(b"first\n").unwrap();
        let written = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            kept.0.lock().unwrap().0 == b"first\n"
        });
        assert!(written, "a lone line was never written");
        writer.make_writer().write_all(b"last\n").unwrap();
        drop(guard);
        assert_eq!(kept.0.lock().unwrap().0, b"first\nlast\n");
    }
}
