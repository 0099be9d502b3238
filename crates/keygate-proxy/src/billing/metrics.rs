//! Billing's counters: what an operator watches on `/metrics`, all monotonic.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters an operator watches; all monotonic.
#[derive(Debug, Default)]
pub struct BillingMetrics {
    /// Requests that held their upper bound (from a lease).
    pub holds: AtomicU64,
    /// Store reservations (leases) that ended: settled or released.
    pub leases_ended: AtomicU64,
    /// Leases settled with a charge.
    pub settled: AtomicU64,
    /// Leases released without a charge.
    pub released: AtomicU64,
    /// Settlements or releases that could not reach the store (the sweep frees
    /// the money later, uncharged).
    pub settle_failures: AtomicU64,
    /// Requests refused with 402.
    pub refused: AtomicU64,
    /// Usage records stored.
    pub records_written: AtomicU64,
    /// Usage records lost: the queue was full, or the store stayed unreachable
    /// through shutdown. Stays 0 in a healthy deployment.
    pub records_dropped: AtomicU64,
    /// Successful responses whose usage was estimated.
    pub usage_estimated: AtomicU64,
    /// Successful responses with no usage reported or estimated.
    pub usage_unknown: AtomicU64,
    /// Requests charged less than the upstream's figures would cost: a count
    /// was clamped, or the cost was cut to the reservation (recorded as
    /// `capped`).
    pub usage_capped: AtomicU64,
    /// Lease settlements the store charged less than asked: the account or the
    /// key could not pay it all (only with `charge_beyond_reservation`), or a
    /// retried settlement found its first attempt had gone through.
    pub settlements_capped: AtomicU64,
    /// Usage-record writes the store failed (retried; nothing is dropped
    /// unless `records_dropped` says so).
    pub usage_write_errors: AtomicU64,
    /// Settlements or releases the store failed (retried, then left to the
    /// sweep).
    pub settle_errors: AtomicU64,
    /// Sweeps and purges the store failed.
    pub sweep_errors: AtomicU64,
}

/// A snapshot of [`BillingMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BillingSnapshot {
    /// See [`BillingMetrics::holds`].
    pub holds: u64,
    /// See [`BillingMetrics::leases_ended`].
    pub leases_ended: u64,
    /// See [`BillingMetrics::settled`].
    pub settled: u64,
    /// See [`BillingMetrics::released`].
    pub released: u64,
    /// See [`BillingMetrics::settle_failures`].
    pub settle_failures: u64,
    /// See [`BillingMetrics::refused`].
    pub refused: u64,
    /// See [`BillingMetrics::records_written`].
    pub records_written: u64,
    /// See [`BillingMetrics::records_dropped`].
    pub records_dropped: u64,
    /// See [`BillingMetrics::usage_estimated`].
    pub usage_estimated: u64,
    /// See [`BillingMetrics::usage_unknown`].
    pub usage_unknown: u64,
    /// See [`BillingMetrics::usage_capped`].
    pub usage_capped: u64,
    /// See [`BillingMetrics::settlements_capped`].
    pub settlements_capped: u64,
    /// See [`BillingMetrics::usage_write_errors`].
    pub usage_write_errors: u64,
    /// See [`BillingMetrics::settle_errors`].
    pub settle_errors: u64,
    /// See [`BillingMetrics::sweep_errors`].
    pub sweep_errors: u64,
}

impl BillingMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> BillingSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BillingSnapshot {
            holds: get(&self.holds),
            leases_ended: get(&self.leases_ended),
            settled: get(&self.settled),
            released: get(&self.released),
            settle_failures: get(&self.settle_failures),
            refused: get(&self.refused),
            records_written: get(&self.records_written),
            records_dropped: get(&self.records_dropped),
            usage_estimated: get(&self.usage_estimated),
            usage_unknown: get(&self.usage_unknown),
            usage_capped: get(&self.usage_capped),
            settlements_capped: get(&self.settlements_capped),
            usage_write_errors: get(&self.usage_write_errors),
            settle_errors: get(&self.settle_errors),
            sweep_errors: get(&self.sweep_errors),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
