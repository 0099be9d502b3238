//! Settling retired leases in the store: one tracked task per lease, retried
//! with backoff while the store is unreachable, for as long as the reservation
//! could live.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_store::{Ledger, Micros, Reservation};

use super::leases::Settler;
use super::metrics::{BillingMetrics, bump};
use super::tasks::HomeTasks;
use crate::backoff::Backoff;

/// Settles retired leases in the store, in tasks tracked for shutdown, retrying
/// while the store is unreachable.
#[derive(Debug)]
pub(crate) struct StoreSettler {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) metrics: Arc<BillingMetrics>,
    pub(crate) tasks: HomeTasks,
    /// How long a settlement is retried: the reservation's lifetime.
    pub(crate) give_up: Duration,
}

impl Settler for StoreSettler {
    fn settle(&self, reservation: Reservation, cost: Micros) {
        bump(&self.metrics.leases_ended);
        let ledger = Arc::clone(&self.ledger);
        let metrics = Arc::clone(&self.metrics);
        let give_up = self.give_up;
        // Who waits: `Billing::shutdown`, through the task tracker, for a
        // bounded time; a settlement still failing then is logged below.
        // Counts the settlement failed unless it ends: also when the task is
        // dropped unrun or mid-call (billing's runtime shut down, the process
        // is ending); the sweep then releases the reservation.
        let failed = Failed(Some(Arc::clone(&self.metrics)));
        self.tasks.spawn(async move {
            let failed = failed;
            if settle(&*ledger, &reservation, cost, give_up, &metrics).await {
                failed.disarm();
            }
        });
    }
}

/// Bumps `settle_failures` when dropped armed.
struct Failed(Option<Arc<BillingMetrics>>);

impl Failed {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Failed {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            bump(&metrics.settle_failures);
        }
    }
}

/// Charges `cost` against `reservation` (or releases it when nothing is owed),
/// retrying until the store answers or `give_up` passes. A store outage (a
/// failover) must not cost a lease's charges.
async fn settle(
    ledger: &dyn Ledger,
    reservation: &Reservation,
    cost: Micros,
    give_up: Duration,
    metrics: &BillingMetrics,
) -> bool {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut warned = false;
    loop {
        let done = if cost > Micros::ZERO {
            ledger.settle(reservation, cost).await
        } else {
            ledger.release(reservation).await.map(|()| Micros::ZERO)
        };
        match done {
            Ok(charged) => {
                if charged < cost {
                    // Settled before (a retry whose first answer was lost), or
                    // more than the account or the key could pay.
                    bump(&metrics.settlements_capped);
                    tracing::warn!(
                        reservation = %reservation.id,
                        cost_micros = cost.0,
                        charged_micros = charged.0,
                        "billing: the store charged less than the lease's cost"
                    );
                }
                bump(if cost > Micros::ZERO {
                    &metrics.settled
                } else {
                    &metrics.released
                });
                if warned {
                    tracing::info!(reservation = %reservation.id, "billing: settled after the store came back");
                }
                return true;
            }
            Err(e) if started.elapsed() > give_up => {
                bump(&metrics.settle_errors);
                tracing::error!(
                    error = %e,
                    reservation = %reservation.id,
                    cost_micros = cost.0,
                    "billing: cannot settle; the sweep will release the reservation uncharged"
                );
                return false;
            }
            Err(e) => {
                bump(&metrics.settle_errors);
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, reservation = %reservation.id, "billing: cannot settle yet; retrying");
                }
                backoff.sleep().await;
            }
        }
    }
}
