//! How the gateway bills: prices, the reservation rule, leases' batch window,
//! the sweep, retention and the usage writer's batching.

use std::time::Duration;

use keygate_billing::{PriceTable, ReservationRule};

use super::usage_writer::WriterSettings;

/// How the gateway bills.
#[derive(Clone, Debug)]
pub struct BillingConfig {
    /// Prices by exact model name.
    pub prices: PriceTable,
    /// Forward models without a price, charging nothing for them.
    pub allow_unpriced: bool,
    /// How much to reserve before forwarding.
    pub rule: ReservationRule,
    /// Charge a request its full cost even past what its reservation held.
    /// Off (the default), a request is charged at most its reservation and the
    /// rest is recorded as `capped`; on, the full cost is charged, still never
    /// past what the account's balance and the key's spend limit can pay.
    pub charge_beyond_reservation: bool,
    /// How long a reservation lives before a sweep may release it. Longer than
    /// any request should take: a request still running when its reservation is
    /// swept is charged all the same when it ends.
    pub reservation_ttl: Duration,
    /// How long a key's requests share one store reservation (a lease) before
    /// it is settled and renewed; zero gives every request its own reservation.
    /// A crash loses at most this much of the charges.
    pub batch_window: Duration,
    /// How often expired reservations are swept.
    pub sweep_interval: Duration,
    /// Usage records older than this are purged; `None` keeps them.
    pub usage_retention: Option<Duration>,
    /// Store the client address in usage records.
    pub log_client_ip: bool,
    /// The usage writer's batching.
    pub writer: WriterSettings,
}

impl BillingConfig {
    /// Defaults for everything but the prices.
    pub fn new(prices: PriceTable) -> Self {
        Self {
            prices,
            allow_unpriced: false,
            rule: ReservationRule::default(),
            charge_beyond_reservation: false,
            reservation_ttl: Duration::from_secs(3600),
            batch_window: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(60),
            usage_retention: Some(Duration::from_secs(90 * 86_400)),
            log_client_ip: false,
            writer: WriterSettings::default(),
        }
    }
}
