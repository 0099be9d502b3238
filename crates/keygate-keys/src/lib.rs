//! keygate API keys: the key format, generation from the OS CSPRNG, parsing and
//! checksum validation, SHA-256 hashing, and extracting a presented credential
//! from request headers.
//!
//! This crate does no IO. It is the only place that knows what a key looks like:
//! the store sees [`KeyHash`]es, the proxy sees [`Credential`]s.
//!
//! ```
//! use keygate_keys::{KeyKind, KeyPrefix, SecretKey, ParsedKey};
//!
//! let prefix = KeyPrefix::default(); // "kg"
//! let key = SecretKey::generate(&prefix, KeyKind::Private).unwrap();
//! let parsed = ParsedKey::parse(key.expose(), &prefix).unwrap();
//! assert_eq!(parsed.hash(), key.hash());
//! assert!(format!("{key:?}").contains('…')); // Debug never shows the secret.
//! ```

mod extract;
mod format;
mod hash;

pub use extract::{
    Credential, CredentialSource, DEFAULT_QUERY_PARAM, ExtractError, ExtractOptions,
    strip_query_param,
};
pub use format::{
    DEFAULT_KEY_PREFIX, InvalidPrefix, KeyFormatError, KeyKind, KeyPrefix, ParsedKey, RngError,
    SECRET_HEX_LEN, SecretKey,
};
pub use hash::{InvalidKeyHash, KeyHash};
