//! Billing on the request path: reserve before forwarding, read usage from the
//! response as it streams past, settle the actual cost when it ends, and release
//! the reservation on every other path.
//!
//! [`Billing::admit`] prices a request and holds its upper bound in a lease (see
//! [`leases`]): a store reservation a key's requests share for a batch window.
//! The [`Charge`] it returns is the request's one billing object: it attaches
//! itself to the response, settles with the actual cost when the body ends, and
//! dropped earlier (an early return, an upstream error, a client that leaves
//! before the answer, a panic) returns its hold uncharged. Settling a lease in
//! the store runs in tasks tracked by [`Billing`] ([`settler`]), so the request
//! path never waits on a settlement; [`Billing::shutdown`] waits for them. Usage
//! records go to the batching [`usage_writer`].

mod charge;
mod config;
mod leases;
mod metrics;
mod settler;
mod tasks;
mod usage_writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use keygate_billing::{Demand, Injection, Price, inject_include_usage, reserve_upper_bound};
use keygate_store::{ApiKey, Ledger, Micros, UsageRecord, UsageSource};
use tokio::task::JoinHandle;

use charge::ChargeParts;
pub use charge::ESTIMATE_BYTES_PER_TOKEN;
pub(crate) use charge::{Charge, SettledWithUsage, shape_of};
pub use config::BillingConfig;
use leases::{LeaseHold, Leased, Leases};
use metrics::bump;
pub use metrics::{BillingMetrics, BillingSnapshot};
use settler::StoreSettler;
use tasks::HomeTasks;
use usage_writer::UsageWriter;
pub use usage_writer::WriterSettings;

use crate::endpoint::{Endpoint, ProviderKind};
use crate::error::ProxyError;

/// The billing layer of one gateway.
#[derive(Debug)]
pub struct Billing {
    config: BillingConfig,
    ledger: Arc<dyn Ledger>,
    metrics: Arc<BillingMetrics>,
    leases: Arc<Leases>,
    /// Settlement tasks; waited for at shutdown.
    tasks: HomeTasks,
    writer: Arc<UsageWriter>,
}

/// What the request path knows about a request when it admits it for billing.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) provider: ProviderKind,
    pub(crate) key: &'a ApiKey,
    pub(crate) model: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) stream: bool,
    /// What the request asks for, read strictly by the probe.
    pub(crate) demand: Demand,
    pub(crate) client_name: Option<String>,
    /// The client's address; kept only when the operator turned that on.
    pub(crate) client_ip: Option<std::net::IpAddr>,
}

impl Billing {
    /// The billing layer over `ledger`, with its usage writer started. Must be
    /// called inside a tokio runtime: billing's store calls (the usage writer,
    /// lease takes, settlements) run on that runtime, whichever runtime serves
    /// the requests, so it must outlive the server.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: BillingConfig, ledger: Arc<dyn Ledger>) -> Self {
        let metrics = Arc::new(BillingMetrics::default());
        let writer = Arc::new(UsageWriter::start(
            Arc::clone(&ledger),
            config.writer,
            Arc::clone(&metrics),
        ));
        let tasks = HomeTasks::new();
        let settler = Arc::new(StoreSettler {
            ledger: Arc::clone(&ledger),
            metrics: Arc::clone(&metrics),
            tasks: tasks.clone(),
            give_up: config.reservation_ttl,
        });
        let leases = Arc::new(Leases::new(
            Arc::clone(&ledger),
            settler,
            config.batch_window,
            config.reservation_ttl,
            tasks.clone(),
            config.charge_beyond_reservation,
        ));
        Self {
            config,
            ledger,
            metrics,
            leases,
            tasks,
            writer,
        }
    }

    /// The ledger billing writes to (the key holders' own view reads it).
    pub(crate) fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The configuration.
    pub fn config(&self) -> &BillingConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> BillingSnapshot {
        self.metrics.snapshot()
    }

    /// Waits for every settlement started so far (at most `limit`), then flushes
    /// and stops the usage writer. Called once the server stops serving.
    pub async fn shutdown(&self, limit: Duration) {
        let started = Instant::now();
        self.leases.retire_all();
        // Requests still in flight (an HTTP/2 stream's task outlives its
        // connection by a moment) end, and settle, before the wait below.
        let open = self.leases.settled(limit).await;
        if open > 0 {
            tracing::warn!(
                open_leases = open,
                "billing: requests still in flight at shutdown; the sweep releases their reservations"
            );
        }
        self.tasks.close();
        let left = limit.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                pending = self.tasks.len(),
                "billing: settlements still pending at shutdown; the sweep releases their reservations"
            );
        }
        self.writer.shutdown(limit).await;
    }

    /// Releases expired reservations; logs, never fails.
    pub async fn sweep(&self) {
        match self.ledger.sweep_reservations(Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(released = n, "billing: expired reservations released"),
            Err(e) => {
                bump(&self.writer.metrics().sweep_errors);
                tracing::warn!(error = %e, "billing: reservation sweep failed");
            }
        }
    }

    /// Purges usage records past the retention period; logs, never fails.
    pub async fn purge(&self) {
        let Some(retention) = self.config.usage_retention else {
            return;
        };
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let Some(before) = Utc::now().checked_sub_signed(retention) else {
            return;
        };
        match self.ledger.purge_usage(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "billing: old usage records purged"),
            Err(e) => {
                bump(&self.writer.metrics().sweep_errors);
                tracing::warn!(error = %e, "billing: usage purge failed");
            }
        }
    }

    /// Admits a request: prices it, reserves the upper bound of its cost (its
    /// input, and its output cap or the default reserve times `n`, as the probe
    /// read them strictly) and decides how to read its usage. The body comes back rewritten where the
    /// upstream must be asked for usage.
    pub(crate) async fn admit(
        &self,
        request: Admission<'_>,
        mut body: Bytes,
        started_at: DateTime<Utc>,
        started: Instant,
    ) -> Result<(Charge, Bytes), ProxyError> {
        let price = match self.config.prices.get(request.model) {
            Some(price) => Some(*price),
            None if self.config.allow_unpriced => None,
            None => return Err(ProxyError::ModelNotPriced(request.model.to_owned())),
        };
        let mut demand = request.demand;
        let mut filter_usage_chunk = false;
        if request.stream
            && request.provider == ProviderKind::OpenAi
            && matches!(
                request.endpoint,
                Endpoint::ChatCompletions | Endpoint::Completions
            )
        {
            if let Injection::Rewritten(rewritten) = inject_include_usage(&body) {
                body = Bytes::from(rewritten);
                filter_usage_chunk = true;
                // The forwarded body is the longer one: its bytes bound the input.
                demand.input_tokens = body.len() as u64;
            }
        }
        let input_bytes = body.len() as u64;
        let free = |price: &Price| {
            price.input_per_mtok() == Micros::ZERO
                && price.output_per_mtok() == Micros::ZERO
                && price.cached_input_per_mtok().unwrap_or(Micros::ZERO) == Micros::ZERO
        };
        let hold = match &price {
            // A free model holds nothing.
            Some(price) if !free(price) => {
                let amount = reserve_upper_bound(price, &demand, &self.config.rule);
                if amount > Micros::ZERO {
                    Some(self.reserve(request.key, amount).await?)
                } else {
                    None
                }
            }
            _ => None,
        };
        let record = UsageRecord {
            at: started_at,
            key_id: request.key.id.clone(),
            account_id: request.key.account_id.clone(),
            model: request.model.to_owned(),
            upstream: request.upstream.to_owned(),
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cost: Micros::ZERO,
            latency_ms: 0,
            ttfb_ms: 0,
            stream: request.stream,
            status: 0,
            client_name: request.client_name,
            usage_source: UsageSource::Unknown,
            client_ip: request
                .client_ip
                .filter(|_| self.config.log_client_ip)
                .map(|ip| ip.to_string()),
            attempts: 0,
        };
        let charge = Charge::new(
            Arc::clone(&self.writer),
            ChargeParts {
                hold,
                price,
                endpoint: request.endpoint,
                filter_usage_chunk,
                input_bytes,
                started,
                record,
            },
        );
        Ok((charge, body))
    }

    async fn reserve(&self, key: &ApiKey, amount: Micros) -> Result<LeaseHold, ProxyError> {
        match self.leases.hold(&key.account_id, &key.id, amount).await? {
            Leased::Held(hold) => {
                bump(&self.metrics.holds);
                Ok(hold)
            }
            Leased::InsufficientBalance => {
                bump(&self.metrics.refused);
                Err(ProxyError::InsufficientBalance)
            }
            Leased::SpendLimitExceeded => {
                bump(&self.metrics.refused);
                Err(ProxyError::SpendLimitExceeded)
            }
        }
    }

    /// Retires leases past the batch window. Called periodically.
    pub fn renew_leases(&self) {
        self.leases.renew();
    }

    /// Sweeps (money a crash left reserved) and purges old usage now, then
    /// starts the task that does both periodically and renews leases past their
    /// batch window. Who waits for it: the gateway's `Background::stop` aborts
    /// it, then calls [`Billing::shutdown`].
    pub(crate) async fn start_background(self: &Arc<Self>) -> JoinHandle<()> {
        self.sweep().await;
        self.purge().await;
        let billing = Arc::clone(self);
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(billing.config.sweep_interval);
            let mut purge = tokio::time::interval(Duration::from_secs(86_400));
            let mut renew = tokio::time::interval(Duration::from_millis(100));
            for ticker in [&mut sweep, &mut purge, &mut renew] {
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
            }
            loop {
                tokio::select! {
                    _ = sweep.tick() => billing.sweep().await,
                    _ = purge.tick() => billing.purge().await,
                    _ = renew.tick() => billing.renew_leases(),
                }
            }
        })
    }
}
