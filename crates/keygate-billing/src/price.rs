//! Prices per model and what a request costs: exact integer micro-units, rounded
//! up to the micro, never a float once the configured prices are read.
//!
//! A price is micro-units per million tokens: 2.5 credits per million input
//! tokens is `Micros(2_500_000)`. Before forwarding, [`reserve_upper_bound`] gives
//! the amount to reserve; after, [`Price::cost`] gives the amount to settle.

use std::collections::BTreeMap;

use crate::inputs::BillingInputs;
use crate::usage::Usage;
use keygate_types::{MICROS_PER_CREDIT, Micros};

/// Tokens per "million tokens", the unit prices are given in.
const TOKENS_PER_MTOK: u128 = 1_000_000;

/// Largest price accepted, in credits per million tokens.
pub const MAX_PRICE_CREDITS: f64 = 1e9;

/// Largest price accepted, in micro-units per million tokens.
pub const MAX_PRICE_PER_MTOK: Micros = Micros(1_000_000_000 * MICROS_PER_CREDIT);

/// Output tokens reserved for a request that does not cap its output.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4096;

/// A price that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// NaN or infinite.
    #[error("{0} price is not a finite number")]
    NotFinite(&'static str),
    /// Below zero.
    #[error("{0} price is negative")]
    Negative(&'static str),
    /// Above [`MAX_PRICE_CREDITS`] per million tokens.
    #[error("{0} price is above 1000000000 credits per million tokens")]
    TooLarge(&'static str),
}

/// What one model costs, in micro-units per million tokens. Every figure is
/// between zero and [`MAX_PRICE_PER_MTOK`], so costs never overflow before they
/// saturate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    input_per_mtok: Micros,
    output_per_mtok: Micros,
    cached_input_per_mtok: Option<Micros>,
}

impl Price {
    /// A price from micro-units per million tokens. Cached input without a price
    /// of its own costs as much as other input.
    pub fn new(
        input_per_mtok: Micros,
        output_per_mtok: Micros,
        cached_input_per_mtok: Option<Micros>,
    ) -> Result<Price, PriceError> {
        let check = |field: &'static str, micros: Micros| {
            if micros.0 < 0 {
                Err(PriceError::Negative(field))
            } else if micros > MAX_PRICE_PER_MTOK {
                Err(PriceError::TooLarge(field))
            } else {
                Ok(micros)
            }
        };
        Ok(Price {
            input_per_mtok: check("input", input_per_mtok)?,
            output_per_mtok: check("output", output_per_mtok)?,
            cached_input_per_mtok: cached_input_per_mtok
                .map(|micros| check("cached input", micros))
                .transpose()?,
        })
    }

    /// A price from credits per million tokens as read from configuration,
    /// rounded to the nearest micro-unit. Exact for prices with up to six
    /// decimals: below the cap, `credits * 1e6` stays under 2^53 and is off by at
    /// most a quarter of a micro-unit, so rounding lands on the intended value.
    pub fn from_credits(input: f64, output: f64, cached: Option<f64>) -> Result<Price, PriceError> {
        Price::new(
            credits_to_micros("input", input)?,
            credits_to_micros("output", output)?,
            cached
                .map(|credits| credits_to_micros("cached input", credits))
                .transpose()?,
        )
    }

    /// Micro-units per million uncached input tokens.
    pub fn input_per_mtok(&self) -> Micros {
        self.input_per_mtok
    }

    /// Micro-units per million output tokens.
    pub fn output_per_mtok(&self) -> Micros {
        self.output_per_mtok
    }

    /// Micro-units per million cached input tokens, when it has a price of its own.
    pub fn cached_input_per_mtok(&self) -> Option<Micros> {
        self.cached_input_per_mtok
    }

    /// What `usage` costs, rounded up to the micro-unit and saturating at
    /// `i64::MAX`. Cached input is billed at the cached price; the rest of the
    /// input (`input_tokens - cached_input_tokens`, never below zero) at the
    /// input price. The usage source is not looked at: the caller decides what an
    /// estimated or unknown usage is worth.
    pub fn cost(&self, usage: &Usage) -> Micros {
        let uncached = usage.input_tokens.saturating_sub(usage.cached_input_tokens);
        let cached_price = self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        ceil_micros(&[
            (uncached, self.input_per_mtok),
            (usage.cached_input_tokens, cached_price),
            (usage.output_tokens, self.output_per_mtok),
        ])
    }
}

/// Prices by exact model name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The price of `model`, matched exactly.
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.prices.get(model)
    }

    /// Sets the price of `model`; returns the one it replaces.
    pub fn insert(&mut self, model: impl Into<String>, price: Price) -> Option<Price> {
        self.prices.insert(model.into(), price)
    }

    /// Models priced.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// No model priced.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Models and prices, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.prices
            .iter()
            .map(|(model, price)| (model.as_str(), price))
    }
}

impl<S: Into<String>> FromIterator<(S, Price)> for PriceTable {
    fn from_iter<I: IntoIterator<Item = (S, Price)>>(iter: I) -> Self {
        Self {
            prices: iter
                .into_iter()
                .map(|(model, price)| (model.into(), price))
                .collect(),
        }
    }
}

/// How much to reserve before a request is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationRule {
    /// Output tokens reserved when the request sets no `max_tokens`,
    /// `max_completion_tokens` or `max_output_tokens`.
    pub default_output_reserve: u64,
}

impl Default for ReservationRule {
    fn default() -> Self {
        Self {
            default_output_reserve: DEFAULT_OUTPUT_RESERVE,
        }
    }
}

/// Input tokens reserved for each file a multipart request uploads (an image to
/// edit, audio to transcribe), instead of its bytes: a compressed file's size
/// says little about the tokens it is billed as, which follow its pixels or its
/// duration, and counting a 20 MB upload byte for byte would refuse any account
/// that could well pay for it.
pub const UPLOAD_INPUT_RESERVE: u64 = 32_768;

/// What a request asks for, as far as its cost goes: the input tokens it can
/// bring at most, and the output it allows per choice and how many choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Demand {
    /// An upper bound of the input tokens.
    pub input_tokens: u64,
    /// The output cap per choice (see [`BillingInputs::output_cap`]); `None`
    /// reserves the rule's `default_output_reserve`.
    pub output_cap: Option<u64>,
    /// Choices (or images) asked for; 0 counts as 1.
    pub n: u64,
}

impl Demand {
    /// A JSON request of `body_len` bytes: every byte counts as one input token.
    /// A token is at least one byte of the text it encodes, and the JSON around
    /// the text only adds bytes, so the body length bounds the tokens the body
    /// spells out. It does not bound input the body only points to (an image
    /// URL, a file id, a Responses `previous_response_id`), nor tokens the
    /// provider adds around each message.
    pub fn json(body_len: usize, inputs: &BillingInputs) -> Demand {
        Demand {
            input_tokens: u64::try_from(body_len).unwrap_or(u64::MAX),
            output_cap: inputs.output_cap,
            n: inputs.n,
        }
    }

    /// A multipart form whose text fields hold `text_bytes` bytes and which
    /// uploads `files` files, each counted as [`UPLOAD_INPUT_RESERVE`] input
    /// tokens, asking for `n` results.
    pub fn multipart(text_bytes: u64, files: u64, n: u64) -> Demand {
        Demand {
            input_tokens: text_bytes.saturating_add(files.saturating_mul(UPLOAD_INPUT_RESERVE)),
            output_cap: None,
            n,
        }
    }
}

/// The amount to reserve for a request, rounded up to the micro-unit and
/// saturating at `i64::MAX`.
///
/// Input: the demand's input tokens, at the higher of the input and cached
/// input prices. Output: the output cap or, when the request sets none, the
/// rule's `default_output_reserve`, times `n`, at the output price. Settling
/// charges the actual cost.
pub fn reserve_upper_bound(price: &Price, demand: &Demand, rule: &ReservationRule) -> Micros {
    let input_price = price
        .input_per_mtok
        .max(price.cached_input_per_mtok.unwrap_or(price.input_per_mtok));
    let output_tokens = demand
        .output_cap
        .unwrap_or(rule.default_output_reserve)
        .saturating_mul(demand.n.max(1));
    ceil_micros(&[
        (demand.input_tokens, input_price),
        (output_tokens, price.output_per_mtok),
    ])
}

fn credits_to_micros(field: &'static str, credits: f64) -> Result<Micros, PriceError> {
    if !credits.is_finite() {
        return Err(PriceError::NotFinite(field));
    }
    if credits < 0.0 {
        return Err(PriceError::Negative(field));
    }
    if credits > MAX_PRICE_CREDITS {
        return Err(PriceError::TooLarge(field));
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "finite, non-negative and at most 1e15 after the checks above"
    )]
    let micros = (credits * MICROS_PER_CREDIT as f64).round() as i64;
    Ok(Micros(micros))
}

/// `ceil(sum(tokens * price_per_mtok) / 1e6)` in micro-units, saturating.
fn ceil_micros(terms: &[(u64, Micros)]) -> Micros {
    let total = terms.iter().fold(0u128, |total, &(tokens, price)| {
        // Prices are never negative (see `Price::new`); a negative one counts as zero.
        let price = u128::try_from(price.0).unwrap_or(0);
        total.saturating_add(u128::from(tokens).saturating_mul(price))
    });
    Micros(i64::try_from(total.div_ceil(TOKENS_PER_MTOK)).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::MAX_N;
    use keygate_types::UsageSource;
    use proptest::prelude::*;

    fn usage(input: u64, cached: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            source: UsageSource::Reported,
        }
    }

    fn demand(input_tokens: u64, output_cap: Option<u64>, n: u64) -> Demand {
        Demand {
            input_tokens,
            output_cap,
            n,
        }
    }

    fn price(input: i64, output: i64, cached: Option<i64>) -> Price {
        Price::new(Micros(input), Micros(output), cached.map(Micros)).unwrap()
    }

    proptest! {
        #[test]
        fn six_decimal_credits_convert_exactly(micros in 0i64..=MAX_PRICE_PER_MTOK.0) {
            // The nearest double to the decimal, as a config parser reads it.
            let credits = micros as f64 / 1e6;
            let price = Price::from_credits(credits, credits, Some(credits)).unwrap();
            prop_assert_eq!(price.input_per_mtok(), Micros(micros));
            prop_assert_eq!(price.cached_input_per_mtok(), Some(Micros(micros)));
        }
    }

    #[test]
    fn every_small_and_every_top_price_converts_exactly() {
        let top = MAX_PRICE_PER_MTOK.0;
        for micros in (0..=2_000_000).chain(top - 100_000..=top) {
            let credits = micros as f64 / 1e6;
            assert_eq!(
                credits_to_micros("input", credits),
                Ok(Micros(micros)),
                "{credits}"
            );
        }
    }

    #[test]
    fn converts_typical_prices() {
        let gpt4o = Price::from_credits(2.5, 10.0, Some(1.25)).unwrap();
        assert_eq!(gpt4o.input_per_mtok(), Micros(2_500_000));
        assert_eq!(gpt4o.output_per_mtok(), Micros(10_000_000));
        assert_eq!(gpt4o.cached_input_per_mtok(), Some(Micros(1_250_000)));
        let tiny = Price::from_credits(0.000001, 0.075, None).unwrap();
        assert_eq!(tiny.input_per_mtok(), Micros(1));
        assert_eq!(tiny.output_per_mtok(), Micros(75_000));
        assert_eq!(tiny.cached_input_per_mtok(), None);
        let rounded = Price::from_credits(0.0000004, 0.0000006, None).unwrap();
        assert_eq!(rounded.input_per_mtok(), Micros(0));
        assert_eq!(rounded.output_per_mtok(), Micros(1));
        let top = Price::from_credits(MAX_PRICE_CREDITS, 0.0, None).unwrap();
        assert_eq!(top.input_per_mtok(), MAX_PRICE_PER_MTOK);
        assert_eq!(
            Price::from_credits(-0.0, 0.0, None)
                .unwrap()
                .input_per_mtok(),
            Micros(0)
        );
    }

    #[test]
    fn rejects_unusable_prices() {
        assert_eq!(
            Price::from_credits(f64::NAN, 1.0, None),
            Err(PriceError::NotFinite("input"))
        );
        assert_eq!(
            Price::from_credits(1.0, f64::INFINITY, None),
            Err(PriceError::NotFinite("output"))
        );
        assert_eq!(
            Price::from_credits(1.0, 1.0, Some(-0.5)),
            Err(PriceError::Negative("cached input"))
        );
        assert_eq!(
            Price::from_credits(1e9 + 1.0, 1.0, None),
            Err(PriceError::TooLarge("input"))
        );
        assert_eq!(
            Price::new(Micros(-1), Micros(0), None),
            Err(PriceError::Negative("input"))
        );
        assert_eq!(
            Price::new(Micros(0), Micros(MAX_PRICE_PER_MTOK.0 + 1), None),
            Err(PriceError::TooLarge("output"))
        );
        assert_eq!(
            PriceError::TooLarge("input").to_string(),
            "input price is above 1000000000 credits per million tokens"
        );
    }

    #[test]
    fn cost_rounds_up_to_the_micro() {
        // 1 token at 0.4 credits per Mtok is 0.4 micro-units.
        let p = price(400_000, 0, None);
        assert_eq!(p.cost(&usage(1, 0, 0)), Micros(1));
        // Exactly 1 micro-unit stays 1; a hair more is 2.
        let p = price(1_000_000, 1, None);
        assert_eq!(p.cost(&usage(1, 0, 0)), Micros(1));
        assert_eq!(p.cost(&usage(1, 0, 1)), Micros(2));
        assert_eq!(p.cost(&usage(0, 0, 0)), Micros(0));
    }

    #[test]
    fn cached_input_falls_back_to_the_input_price() {
        let p = price(2_000_000, 0, None);
        assert_eq!(p.cost(&usage(10, 4, 0)), Micros(20));
        let p = price(2_000_000, 0, Some(500_000));
        assert_eq!(p.cost(&usage(10, 4, 0)), Micros(12 + 2));
    }

    #[test]
    fn more_cached_than_input_bills_the_cached_tokens_only() {
        let p = price(2_000_000, 0, Some(1_000_000));
        assert_eq!(p.cost(&usage(3, 5, 0)), Micros(5));
    }

    #[test]
    fn zero_price_is_free_whatever_the_usage() {
        let free = price(0, 0, Some(0));
        assert_eq!(free.cost(&usage(u64::MAX, 7, u64::MAX)), Micros(0));
        assert_eq!(
            reserve_upper_bound(
                &free,
                &demand(u64::MAX, None, MAX_N),
                &ReservationRule::default()
            ),
            Micros(0)
        );
    }

    #[test]
    fn huge_usage_saturates() {
        let top = price(MAX_PRICE_PER_MTOK.0, MAX_PRICE_PER_MTOK.0, None);
        assert_eq!(top.cost(&usage(u64::MAX, 0, u64::MAX)), Micros(i64::MAX));
        assert_eq!(
            reserve_upper_bound(
                &top,
                &demand(u64::MAX, Some(u64::MAX), MAX_N),
                &ReservationRule::default()
            ),
            Micros(i64::MAX)
        );
        // Just below saturation the arithmetic is still exact.
        let p = price(1_000_000, 0, None);
        assert_eq!(p.cost(&usage(i64::MAX as u64, 0, 0)), Micros(i64::MAX));
    }

    #[test]
    fn reserve_counts_body_bytes_and_the_output_cap() {
        let gpt4o = price(2_500_000, 10_000_000, Some(1_250_000));
        let rule = ReservationRule::default();
        // 1000 × 2.5 + 100 × 10 credits per Mtok.
        assert_eq!(
            reserve_upper_bound(&gpt4o, &demand(1000, Some(100), 1), &rule),
            Micros(3500)
        );
        // 1000 × 2.5 + 4096 × 10.
        assert_eq!(
            reserve_upper_bound(&gpt4o, &demand(1000, None, 1), &rule),
            Micros(43_460)
        );
        let rule = ReservationRule {
            default_output_reserve: 0,
        };
        assert_eq!(
            reserve_upper_bound(&gpt4o, &demand(1, None, 1), &rule),
            Micros(3)
        );
        // A cached price above the input price is the bound.
        let odd = price(1_000_000, 0, Some(3_000_000));
        assert_eq!(
            reserve_upper_bound(&odd, &demand(10, None, 1), &rule),
            Micros(30)
        );
    }

    #[test]
    fn reserve_multiplies_the_output_by_n() {
        let gpt4o = price(2_500_000, 10_000_000, None);
        let rule = ReservationRule::default();
        // 1000 × 2.5 + 3 × 100 × 10 credits per Mtok; the input is sent once.
        assert_eq!(
            reserve_upper_bound(&gpt4o, &demand(1000, Some(100), 3), &rule),
            Micros(5500)
        );
        // 3 × 4096 × 10 without a cap.
        assert_eq!(
            reserve_upper_bound(&gpt4o, &demand(0, None, 3), &rule),
            Micros(122_880)
        );
        // 0 counts as 1.
        assert_eq!(
            reserve_upper_bound(&gpt4o, &demand(0, Some(100), 0), &rule),
            reserve_upper_bound(&gpt4o, &demand(0, Some(100), 1), &rule)
        );
    }

    #[test]
    fn demand_of_json_and_multipart_requests() {
        let inputs = BillingInputs {
            output_cap: Some(64),
            n: 2,
            ..BillingInputs::default()
        };
        assert_eq!(Demand::json(500, &inputs), demand(500, Some(64), 2));
        // Uploads count a fixed allowance each, whatever their size.
        assert_eq!(
            Demand::multipart(40, 2, 4),
            demand(40 + 2 * UPLOAD_INPUT_RESERVE, None, 4)
        );
        assert_eq!(
            Demand::multipart(u64::MAX, u64::MAX, 1).input_tokens,
            u64::MAX
        );
    }

    #[test]
    fn table_matches_exact_names() {
        let table: PriceTable = [
            ("gpt-4o", price(2_500_000, 10_000_000, Some(1_250_000))),
            ("gpt-4o-mini", price(150_000, 600_000, Some(75_000))),
        ]
        .into_iter()
        .collect();
        assert_eq!(table.len(), 2);
        assert!(!table.is_empty());
        assert_eq!(
            table.get("gpt-4o").map(Price::input_per_mtok),
            Some(Micros(2_500_000))
        );
        assert_eq!(table.get("GPT-4o"), None);
        assert_eq!(table.get("gpt-4o-2024-08-06"), None);
        assert_eq!(
            table.iter().map(|(model, _)| model).collect::<Vec<_>>(),
            ["gpt-4o", "gpt-4o-mini"]
        );
        let mut table = PriceTable::new();
        assert!(table.is_empty());
        assert_eq!(table.insert("m", price(1, 1, None)), None);
        assert_eq!(
            table.insert(String::from("m"), price(2, 2, None)),
            Some(price(1, 1, None))
        );
    }
}
