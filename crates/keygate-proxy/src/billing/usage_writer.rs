//! The usage writer: usage records leave the request path through a bounded
//! queue and reach the store in batches, written when a batch is full or a flush
//! interval passes, retried with backoff while the store is unreachable, and
//! flushed at shutdown. A record that cannot be queued is counted as dropped. A
//! record the store refuses (it never should: the store clamps every number) is
//! kept and retried, less and less often; shutdown counts (and logs) exactly the
//! records it could not write.
//! Queuing a record takes a short lock and wakes nobody, except the record that
//! fills a batch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keygate_store::{Ledger, UsageRecord};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::BillingMetrics;
use crate::backoff::Backoff;

/// How the usage writer batches.
#[derive(Clone, Copy, Debug)]
pub struct WriterSettings {
    /// Records waiting to be written, at most; past it records are dropped and
    /// counted.
    pub queue_capacity: usize,
    /// Records per store write.
    pub batch_size: usize,
    /// Longest a record waits before its batch is written.
    pub flush_interval: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 50_000,
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// The sending side, shared by [`crate::Billing`] and its charges.
#[derive(Debug)]
pub(crate) struct UsageWriter {
    queue: Arc<Queue>,
    stop: CancellationToken,
    /// The writer task; taken and awaited by [`UsageWriter::shutdown`].
    task: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<BillingMetrics>,
}

/// Records waiting for the writer. Requests push without waking it; it is
/// woken when a batch is full, and otherwise wakes every flush interval.
#[derive(Debug)]
struct Queue {
    records: std::sync::Mutex<Vec<UsageRecord>>,
    full: Notify,
    settings: WriterSettings,
}

impl Queue {
    fn take(&self) -> Vec<UsageRecord> {
        match self.records.lock() {
            Ok(mut records) => std::mem::take(&mut *records),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl UsageWriter {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(
        ledger: Arc<dyn Ledger>,
        settings: WriterSettings,
        metrics: Arc<BillingMetrics>,
    ) -> Self {
        let settings = WriterSettings {
            queue_capacity: settings.queue_capacity.max(1),
            batch_size: settings.batch_size.max(1),
            flush_interval: settings.flush_interval.max(Duration::from_millis(1)),
        };
        let queue = Arc::new(Queue {
            records: std::sync::Mutex::new(Vec::new()),
            full: Notify::new(),
            settings,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            ledger,
            Arc::clone(&queue),
            stop.clone(),
            Arc::clone(&metrics),
        ));
        Self {
            queue,
            stop,
            task: Mutex::new(Some(task)),
            metrics,
        }
    }

    /// Queues a record; never waits. A full queue (or one closed by shutdown)
    /// drops it, counted and logged.
    pub(crate) fn push(&self, record: UsageRecord) {
        let settings = self.queue.settings;
        let queued = match self.queue.records.lock() {
            Ok(mut records)
                if records.len() < settings.queue_capacity && !self.stop.is_cancelled() =>
            {
                records.push(record);
                Some(records.len())
            }
            _ => None,
        };
        match queued {
            Some(len) if len == settings.batch_size => self.queue.full.notify_one(),
            Some(_) => {}
            None => {
                let dropped = self.metrics.records_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::error!(
                        dropped,
                        "billing: usage record dropped; the usage queue is full or closed"
                    );
                }
            }
        }
    }

    /// The counters records are counted in.
    pub(crate) fn metrics(&self) -> &BillingMetrics {
        &self.metrics
    }

    /// Writes everything queued (retrying for at most `limit`) and stops.
    pub(crate) async fn shutdown(&self, limit: Duration) {
        self.stop.cancel();
        let task = self.task.lock().await.take();
        if let Some(task) = task {
            // The task bounds its own retries; this is a backstop.
            let _ = tokio::time::timeout(limit + Duration::from_secs(1), task).await;
        }
    }
}

/// Records the store refused, kept to be retried: at most a queue's worth, the
/// first retry after [`REFUSED_RETRY_FIRST`], then less often, up to
/// [`REFUSED_RETRY_MAX`] apart.
#[derive(Debug)]
struct Refused {
    records: Vec<UsageRecord>,
    capacity: usize,
    next_retry: Instant,
    interval: Duration,
}

const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(1);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(300);

impl Refused {
    fn new(capacity: usize) -> Self {
        Self {
            records: Vec::new(),
            capacity,
            next_retry: Instant::now(),
            interval: REFUSED_RETRY_FIRST,
        }
    }

    /// Keeps a refused record for a later retry, or counts it as dropped when a
    /// queue's worth is already kept.
    fn keep(&mut self, record: UsageRecord, metrics: &BillingMetrics) {
        if self.records.is_empty() {
            self.interval = REFUSED_RETRY_FIRST;
            self.next_retry = Instant::now() + self.interval;
        }
        if self.records.len() < self.capacity {
            let kept = self.records.len() + 1;
            if kept.is_power_of_two() {
                tracing::error!(
                    model_len = record.model.len(),
                    kept,
                    "billing: the store refused a usage record; kept to retry"
                );
            }
            self.records.push(record);
            return;
        }
        let dropped = metrics.records_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::error!(
                dropped,
                "billing: usage record dropped; too many refused records are kept"
            );
        }
    }

    /// Writes the kept records one by one (when due, or whatever the time with
    /// `always`); keeps those refused again. Returns false when the store
    /// is unreachable.
    async fn retry(&mut self, ledger: &dyn Ledger, metrics: &BillingMetrics, always: bool) -> bool {
        if self.records.is_empty() || (!always && Instant::now() < self.next_retry) {
            return true;
        }
        let mut kept = Vec::new();
        let mut reachable = true;
        for record in std::mem::take(&mut self.records) {
            if !reachable {
                kept.push(record);
                continue;
            }
            match ledger.record_usage(std::slice::from_ref(&record)).await {
                Ok(()) => {
                    metrics.records_written.fetch_add(1, Ordering::Relaxed);
                }
                Err(keygate_store::StoreError::Invalid { .. }) => kept.push(record),
                Err(_) => {
                    reachable = false;
                    kept.push(record);
                }
            }
        }
        self.records = kept;
        self.interval = self.interval.saturating_mul(2).min(REFUSED_RETRY_MAX);
        self.next_retry = Instant::now() + self.interval;
        reachable
    }
}

async fn run(
    ledger: Arc<dyn Ledger>,
    queue: Arc<Queue>,
    stop: CancellationToken,
    metrics: Arc<BillingMetrics>,
) {
    let settings = queue.settings;
    // Records taken from the queue but not yet written (the store failed).
    let mut pending: Vec<UsageRecord> = Vec::new();
    let mut refused = Refused::new(settings.queue_capacity);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut wait = settings.flush_interval;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = queue.full.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        // While writes fail, at most a queue's worth waits here; the rest waits
        // in the queue, which then refuses (and counts) what does not fit.
        if pending.len() < settings.queue_capacity {
            pending.append(&mut queue.take());
        }
        if write(
            &*ledger,
            &mut pending,
            settings.batch_size,
            &metrics,
            &mut refused,
        )
        .await
            && refused.retry(&*ledger, &metrics, false).await
        {
            backoff.reset();
            wait = settings.flush_interval;
        } else {
            wait = backoff.next_wait();
        }
    }
    // Shutdown: take what is queued and write it all, retrying within the limit.
    pending.append(&mut queue.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while !pending.is_empty() {
        if write(
            &*ledger,
            &mut pending,
            settings.batch_size,
            &metrics,
            &mut refused,
        )
        .await
        {
            continue;
        }
        if Instant::now() + backoff.peek() > deadline {
            break;
        }
        backoff.sleep().await;
    }
    // One last try for the refused ones; what is left now is lost, and counted.
    if pending.is_empty() {
        refused.retry(&*ledger, &metrics, true).await;
    }
    let lost = pending.len() + refused.records.len();
    if lost > 0 {
        metrics
            .records_dropped
            .fetch_add(lost as u64, Ordering::Relaxed);
        tracing::error!(
            lost,
            unreachable = pending.len(),
            refused = refused.records.len(),
            "billing: usage records not written at shutdown; lost"
        );
    }
}

/// Writes the batch in chunks; returns false (keeping what is unwritten) when
/// the store is unreachable. A chunk the store refuses is written record by
/// record, and the records refused are kept in `refused` to be retried.
async fn write(
    ledger: &dyn Ledger,
    batch: &mut Vec<UsageRecord>,
    chunk: usize,
    metrics: &BillingMetrics,
    refused: &mut Refused,
) -> bool {
    while !batch.is_empty() {
        let n = batch.len().min(chunk);
        match ledger.record_usage(&batch[..n]).await {
            Ok(()) => {
                batch.drain(..n);
                metrics
                    .records_written
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(keygate_store::StoreError::Invalid { .. }) => {
                let chunk: Vec<UsageRecord> = batch.drain(..n).collect();
                let mut rest = chunk.into_iter();
                while let Some(record) = rest.next() {
                    match ledger.record_usage(std::slice::from_ref(&record)).await {
                        Ok(()) => {
                            metrics.records_written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(keygate_store::StoreError::Invalid { .. }) => {
                            refused.keep(record, metrics);
                        }
                        Err(e) => {
                            // Unreachable mid-chunk: put the rest back in front.
                            let unwritten: Vec<UsageRecord> =
                                std::iter::once(record).chain(rest).collect();
                            batch.splice(..0, unwritten);
                            metrics.usage_write_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, pending = batch.len(), "billing: cannot write usage records; retrying");
                            return false;
                        }
                    }
                }
            }
            Err(e) => {
                metrics.usage_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, pending = batch.len(), "billing: cannot write usage records; retrying");
                return false;
            }
        }
    }
    true
}
