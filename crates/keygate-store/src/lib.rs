//! keygate storage: domain types (accounts, API keys, scopes), the
//! [`CredentialStore`] and [`Ledger`] traits, and their backends: [`MemoryStore`],
//! always built, and [`DbStore`] on SQLite (cargo feature `sqlite`) or
//! PostgreSQL (feature `postgres`), both on by default, with embedded migrations.
//! Money, ids and length limits come from `keygate-types` and are re-exported here.
//!
//! No table has a column that can hold a key, a prompt or a response: keys are
//! stored as their SHA-256 ([`keygate_keys::KeyHash`]) and every text column is
//! bounded by a CHECK constraint.
//!
//! What an embedder writes: open a store, create an account and a key (the store
//! keeps only its hash), then look a presented key up by its hash and check what it
//! may do. [`MemoryStore::new`] works the same way, without a file.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use chrono::Utc;
//! use keygate_keys::{KeyHash, KeyKind, KeyPrefix, ParsedKey, SecretKey};
//! use keygate_store::{
//!     CredentialStore, DbStore, KeySettings, KeyStatus, Micros, NewAccount, NewApiKey, Scope,
//! };
//!
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("keygate.db");
//! let store = DbStore::connect(&format!("sqlite://{}", path.display())).await?;
//! store.migrate().await?;
//!
//! let account = store
//!     .create_account(NewAccount {
//!         name: "Acme".into(),
//!         email: None,
//!         balance: "25".parse::<Micros>()?,
//!     })
//!     .await?;
//! let prefix = KeyPrefix::default();
//! let secret = SecretKey::generate(&prefix, KeyKind::Private)?;
//! store
//!     .create_key(NewApiKey {
//!         account_id: account.id.clone(),
//!         key_hash: secret.hash(),
//!         start: secret.start(),
//!         settings: KeySettings::new(KeyKind::Private),
//!     })
//!     .await?;
//!
//! // A request presents `secret.expose()`: check its format without IO, then look
//! // up its hash.
//! let presented: KeyHash = ParsedKey::parse(secret.expose(), &prefix)?.hash();
//! let key = store.find_key_by_hash(&presented).await?.ok_or("unknown key")?;
//! assert_eq!(key.account_id, account.id);
//! assert_eq!(key.status(Utc::now()), KeyStatus::Active);
//! assert!(key.scopes.contains(Scope::Chat));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

mod control;
mod error;
pub mod json;
mod ledger;
mod memory;
mod memory_control;
mod scope;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
mod store;
mod types;
mod validate;

pub use control::{
    AccountUpdate, Actor, AdminRole, AdminToken, AuditEntry, ConsoleSession, ControlStore,
    IdempotencyClaim, IdempotencyRequest, IdempotentOutcome, NewAdminToken, NewAuditEntry,
};
pub use error::{Result, StoreError};
pub use keygate_types::limits::{self, MAX_NAME_LEN};
pub use keygate_types::{
    AccountId, AdminTokenId, AmountError, IdError, KeyId, MICROS_PER_CREDIT, Micros, ReservationId,
    UsageSource,
};
pub use ledger::{
    KeySpend, Ledger, NewReservation, Reservation, Reserve, UsageGroup, UsageQuery, UsageRecord,
    UsageTotals,
};
pub use memory::MemoryStore;
pub use scope::{Scope, ScopeSet, UnknownScope};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::{DatabaseUrl, DbOptions, DbStore};
pub use store::CredentialStore;
pub use types::{
    Account, ApiKey, KeyChange, KeySettings, KeyStatus, KeyUpdate, NewAccount, NewApiKey,
    ReplacementKey,
};
pub use validate::{MAX_METADATA_ENTRIES, MAX_MODELS, MAX_ORIGINS, MAX_TOP_UP, validate_tier};

/// The database of a deployment that names none: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db";
