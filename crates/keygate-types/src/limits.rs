//! Length limits of stored text, each defined once. The migrations' CHECK
//! constraints bound the same columns by the same numbers, and `cargo xtask tidy`
//! fails when a migration and a constant disagree.
//!
//! SQL's `length()` counts characters. A check in Rust that counts bytes is the
//! stricter of the two, so a value it accepts always fits its column.

/// The longest id (`accounts.id`, `api_keys.id`, `reservations.id` and every
/// column that refers to one), in bytes. Generated ids are a short prefix, `_` and
/// 16 hex digits.
pub const MAX_ID_LEN: usize = 40;

/// The longest account name, key label or metadata value, in characters
/// (`accounts.name`, `api_keys.name`).
pub const MAX_NAME_LEN: usize = 200;

/// The longest account email address, in bytes (`accounts.email`; 254 is the
/// longest address SMTP carries).
pub const MAX_EMAIL_LEN: usize = 254;

/// The longest tier name (`accounts.tier`), in bytes: the name of a
/// `[tiers.NAME]` table.
pub const MAX_TIER_LEN: usize = 64;

/// The longest model name a request may ask for, in bytes
/// (`usage_records.model`).
pub const MAX_MODEL_LEN: usize = 256;

/// The longest upstream name, in bytes (`usage_records.upstream`).
pub const MAX_UPSTREAM_NAME_LEN: usize = 64;

/// The longest client name (`X-Client-Name`) a usage record keeps, in bytes
/// (`usage_records.client_name`); a longer one is truncated before it is stored.
pub const MAX_CLIENT_NAME_LEN: usize = 100;

/// The longest client address, in bytes (`usage_records.client_ip`; 45 is the
/// longest textual IPv6 address).
pub const MAX_CLIENT_IP_LEN: usize = 45;

/// The longest `Idempotency-Key` header the admin API accepts, in bytes
/// (`idempotency_keys.idem_key`).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The longest response body an idempotency record keeps, in bytes
/// (`idempotency_keys.body`); it never holds a secret.
pub const MAX_IDEMPOTENCY_BODY_LEN: usize = 8192;

/// The longest audit action name, in bytes (`audit_log.action`, e.g. `key.create`).
pub const MAX_AUDIT_ACTION_LEN: usize = 64;
