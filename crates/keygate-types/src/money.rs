//! `Micros`: money as integer micro-units of the operator's currency.
//!
//! Amounts typed by people are decimal credits (`10.5`); they are parsed exactly,
//! never through a float.

use std::fmt;
use std::str::FromStr;

/// Micro-units per credit.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;

/// An amount of money in micro-units (one millionth of a credit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

/// A decimal amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a decimal number.
    #[error("{0:?} is not a decimal amount such as 10 or 10.5")]
    NotDecimal(String),
    /// More than six digits after the point.
    #[error("{0:?} has more than 6 decimal places")]
    TooPrecise(String),
    /// Too large to hold.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

impl Micros {
    /// Zero.
    pub const ZERO: Micros = Micros(0);

    /// Parses decimal credits such as `10`, `10.5`, `0.000001` or `-3`.
    pub fn parse_credits(text: &str) -> Result<Self, AmountError> {
        let not_decimal = || AmountError::NotDecimal(text.to_owned());
        let trimmed = text.trim();
        let (negative, digits) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction)
        {
            return Err(not_decimal());
        }
        if fraction.len() > 6 {
            return Err(AmountError::TooPrecise(text.to_owned()));
        }
        let too_large = || AmountError::TooLarge(text.to_owned());
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let fraction: i64 = format!("{fraction:0<6}")
            .parse()
            .map_err(|_| not_decimal())?;
        let value = whole
            .checked_mul(MICROS_PER_CREDIT)
            .and_then(|w| w.checked_add(fraction))
            .ok_or_else(too_large)?;
        Ok(Micros(if negative { -value } else { value }))
    }

    /// Adds, or `None` on overflow.
    pub fn checked_add(self, other: Micros) -> Option<Micros> {
        self.0.checked_add(other.0).map(Micros)
    }
}

impl FromStr for Micros {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_credits(s)
    }
}

/// Shows decimal credits with trailing zeros trimmed: `10.5`, `0.000001`, `-3`.
impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = MICROS_PER_CREDIT.unsigned_abs();
        let (whole, fraction) = (abs / per, abs % per);
        if fraction == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let fraction = format!("{fraction:06}");
            write!(f, "{sign}{whole}.{}", fraction.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_amount(micros in any::<i64>()) {
            prop_assume!(micros != i64::MIN);
            let shown = Micros(micros).to_string();
            prop_assert_eq!(Micros::parse_credits(&shown), Ok(Micros(micros)));
        }
    }

    #[test]
    fn parses_decimal_credits_exactly() {
        let cases = [
            ("10", 10_000_000),
            ("10.5", 10_500_000),
            ("0.000001", 1),
            (".5", 500_000),
            ("5.", 5_000_000),
            ("-3", -3_000_000),
            ("+2.25", 2_250_000),
            (" 1 ", 1_000_000),
        ];
        for (text, micros) in cases {
            assert_eq!(Micros::parse_credits(text), Ok(Micros(micros)), "{text}");
        }
    }

    #[test]
    fn rejects_bad_amounts() {
        for bad in ["", ".", "abc", "1e5", "1,5", "--1", "1.2.3", "NaN"] {
            assert!(
                matches!(Micros::parse_credits(bad), Err(AmountError::NotDecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Micros::parse_credits("0.0000001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(
            Micros::parse_credits("99999999999999999999"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            Micros::parse_credits("9300000000000"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_trimmed_credits() {
        for (micros, shown) in [
            (0, "0"),
            (10_500_000, "10.5"),
            (1, "0.000001"),
            (-3_000_000, "-3"),
            (-1, "-0.000001"),
            (i64::MIN, "-9223372036854.775808"),
        ] {
            assert_eq!(Micros(micros).to_string(), shown);
        }
    }
}
