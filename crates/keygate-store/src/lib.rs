//! keygate storage: domain types (accounts, API keys, scopes, money), the
//! [`CredentialStore`] trait, and three backends: [`MemoryStore`], and
//! [`DbStore`] on SQLite or PostgreSQL with embedded migrations.
//!
//! No table has a column that can hold a key, a prompt or a response: keys are
//! stored as their SHA-256 ([`keygate_keys::KeyHash`]) and every text column is
//! bounded by a CHECK constraint.

mod error;
mod ledger;
mod memory;
mod money;
mod scope;
mod sql;
mod store;
mod types;

pub use error::{Result, StoreError};
pub use ledger::{
    KeySpend, Ledger, NewReservation, Reservation, Reserve, UsageGroup, UsageQuery, UsageRecord,
    UsageSource, UsageTotals,
};
pub use memory::MemoryStore;
pub use money::{AmountError, MICROS_PER_CREDIT, Micros};
pub use scope::{Scope, ScopeSet, UnknownScope};
pub use sql::{DatabaseUrl, DbOptions, DbStore};
pub use store::CredentialStore;
pub use types::{
    Account, AccountId, ApiKey, KeyChange, KeyId, KeySettings, KeyStatus, KeyUpdate,
    MAX_METADATA_ENTRIES, MAX_MODELS, MAX_NAME_LEN, MAX_ORIGINS, MAX_TOP_UP, NewAccount, NewApiKey,
    ReplacementKey, ReservationId,
};

/// The database of a deployment that names none: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db";
