//! What requests cost: `[prices]`, `[billing]` and `[privacy]` (which decides what a
//! usage record keeps), checked against the upstreams' exact model names and the
//! upstream timeouts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use keygate_billing::{DEFAULT_OUTPUT_RESERVE, Price, PriceTable, ReservationRule};
use keygate_config::{RawBilling, RawPrice, RawPrivacy};
use keygate_proxy::{BillingConfig, UpstreamConfig, UpstreamTimeouts};

use super::duration;

/// `[prices]`, `[billing]` and `[privacy]`: every price, a price for every exact
/// model name of `upstreams` unless `allow_unpriced`, the reservation and batching
/// windows (against `timeouts`), and what usage records keep.
pub(super) fn billing(
    raw_prices: &BTreeMap<String, RawPrice>,
    raw_billing: Option<&RawBilling>,
    raw_privacy: Option<&RawPrivacy>,
    upstreams: &[UpstreamConfig],
    timeouts: &UpstreamTimeouts,
) -> anyhow::Result<BillingConfig> {
    let prices = prices(raw_prices)?;
    let allow_unpriced = raw_billing.and_then(|b| b.allow_unpriced).unwrap_or(false);
    if !allow_unpriced {
        every_exact_model_priced(upstreams, &prices)?;
    }
    let mut billing = BillingConfig::new(prices);
    billing.allow_unpriced = allow_unpriced;
    billing.rule = ReservationRule {
        default_output_reserve: raw_billing
            .and_then(|b| b.default_output_reserve)
            .unwrap_or(DEFAULT_OUTPUT_RESERVE),
    };
    if let Some(days) = raw_billing.and_then(|b| b.usage_retention_days) {
        billing.usage_retention = match days {
            0 => None,
            days => Some(Duration::from_secs(u64::from(days) * 86_400)),
        };
    }
    billing.reservation_ttl = duration::parse(
        "billing.reservation_ttl",
        raw_billing.and_then(|b| b.reservation_ttl.as_deref()),
        billing.reservation_ttl,
    )?;
    billing.batch_window = match raw_billing.and_then(|b| b.batch_window.as_deref()) {
        Some("0") | Some("0s") => Duration::ZERO,
        other => duration::parse("billing.batch_window", other, billing.batch_window)?,
    };
    if billing.batch_window > Duration::from_secs(60) {
        bail!(
            "billing.batch_window: at most 60s (a crash loses up to a window of charges); \"0s\" settles every request on its own"
        );
    }
    if billing.reservation_ttl <= timeouts.first_byte {
        bail!(
            "billing.reservation_ttl: must be longer than timeouts.first_byte ({}s), or reservations of waiting requests would be swept",
            timeouts.first_byte.as_secs()
        );
    }
    billing.charge_beyond_reservation = raw_billing
        .and_then(|b| b.charge_beyond_reservation)
        .unwrap_or(false);
    billing.log_client_ip = raw_privacy.and_then(|p| p.log_client_ip).unwrap_or(false);
    Ok(billing)
}

/// `[prices]`, converted to integer micro-credits.
fn prices(raw: &BTreeMap<String, RawPrice>) -> anyhow::Result<PriceTable> {
    let mut prices = PriceTable::new();
    for (model, price) in raw {
        let price = Price::from_credits(
            price.input_per_mtok,
            price.output_per_mtok,
            price.cached_input_per_mtok,
        )
        .map_err(|e| {
            anyhow!("prices.\"{model}\": the {e}; write a number of credits per million tokens, 0 or more")
        })?;
        prices.insert(model.clone(), price);
    }
    Ok(prices)
}

/// A model named exactly must have a price; a pattern is checked per request.
fn every_exact_model_priced(
    upstreams: &[UpstreamConfig],
    prices: &PriceTable,
) -> anyhow::Result<()> {
    for (i, upstream) in upstreams.iter().enumerate() {
        for model in &upstream.models {
            if !model.ends_with('*') && prices.get(model).is_none() {
                bail!(
                    "upstreams[{i}].models: the model {model:?} has no price; add [prices.\"{model}\"] with input_per_mtok and output_per_mtok, or set [billing] allow_unpriced = true to serve unpriced models free of charge"
                );
            }
        }
    }
    Ok(())
}
