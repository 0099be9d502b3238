//! keygate-types: the vocabulary that keygate's billing and storage share, with no
//! IO and no database: money as integer micro-units ([`Micros`]), the ids of
//! accounts, keys and reservations, where a request's usage came from
//! ([`UsageSource`]), and the length limits of stored text ([`limits`]).
//!
//! Amounts typed by people are decimal credits, parsed exactly (never through a
//! float) and shown with trailing zeros trimmed:
//!
//! ```
//! use keygate_types::{AmountError, MICROS_PER_CREDIT, Micros};
//!
//! let top_up: Micros = "10.5".parse()?;
//! assert_eq!(top_up, Micros(10 * MICROS_PER_CREDIT + 500_000));
//! assert_eq!(top_up.to_string(), "10.5");
//! assert_eq!(Micros(1).to_string(), "0.000001");
//!
//! let total = top_up.checked_add(Micros::parse_credits("0.25")?);
//! assert_eq!(total.map(|m| m.to_string()).as_deref(), Some("10.75"));
//! assert!(matches!(
//!     "0.0000001".parse::<Micros>(),
//!     Err(AmountError::TooPrecise(_))
//! ));
//! # Ok::<(), AmountError>(())
//! ```

mod id;
pub mod limits;
mod money;
mod usage;

pub use id::{AccountId, AdminTokenId, IdError, KeyId, ReservationId};
pub use money::{AmountError, MICROS_PER_CREDIT, Micros};
pub use usage::UsageSource;
