//! keygate API keys: the key format, generation from the OS CSPRNG, parsing and
//! checksum validation, SHA-256 hashing, extracting a presented credential
//! from request headers, and signing outbound requests (Standard Webhooks HMAC,
//! a bcrypt `X-Request-Nonce`) with the receiver's verification.
//!
//! This crate does no IO. It is the only place that knows what a key looks like:
//! the store sees [`KeyHash`]es, the proxy sees [`Credential`]s.
//!
//! What an embedder writes: issue a key (show it once, store only its hash), and
//! check the one a request presents (find it, check its format without IO, hash
//! it, then look the hash up with `keygate_store::CredentialStore::find_key_by_hash`).
//!
//! ```
//! use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
//! use keygate_keys::{
//!     Credential, ExtractOptions, KeyHash, KeyKind, KeyPrefix, ParsedKey, SecretKey,
//! };
//!
//! // Issue: generate from the OS CSPRNG; `key.expose()` is shown to its owner once.
//! let prefix = KeyPrefix::default(); // "kg"
//! let key = SecretKey::generate(&prefix, KeyKind::Private)?;
//! let stored: KeyHash = key.hash(); // with `key.start()` for display, e.g. "kg_sk_3f9a"
//!
//! // Check: find the presented key (Bearer, Basic, x-api-key, api-key; no query here)…
//! let mut headers = HeaderMap::new();
//! let bearer = HeaderValue::from_str(&format!("Bearer {}", key.expose()))?;
//! headers.insert(AUTHORIZATION, bearer);
//! let credential = Credential::extract(&headers, None, &ExtractOptions { query_param: None })?;
//! // …check prefix, kind, length and checksum without IO (typos stop here)…
//! let parsed = ParsedKey::parse(credential.expose(), &prefix)?;
//! // …and look it up by its hash.
//! assert_eq!(parsed.hash(), stored);
//!
//! assert!(ParsedKey::parse("kg_sk_0123", &prefix).is_err());
//! // Debug never shows the secret.
//! assert!(format!("{key:?}").contains('…'));
//! assert!(!format!("{key:?} {credential:?} {parsed:?}").contains(key.expose()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admin;
mod extract;
mod format;
mod hash;
mod signing;

pub use admin::{ADMIN_TOKEN_CODE, AdminSecret, parse_admin_token, random_token};
pub use extract::{
    Credential, CredentialSource, DEFAULT_QUERY_PARAM, ExtractError, ExtractOptions,
    strip_query_param,
};
pub use format::{
    DEFAULT_KEY_PREFIX, InvalidPrefix, KeyFormatError, KeyKind, KeyPrefix, ParsedKey, RngError,
    SECRET_HEX_LEN, SecretKey,
};
pub use hash::{InvalidKeyHash, KeyHash};
pub use signing::{
    MAX_NONCE_COST, NONCE_COST, REQUEST_NONCE, SignatureError, WEBHOOK_ID, WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP, request_nonce, sign_standard_webhook, standard_webhook_headers,
    verify_request_nonce, verify_standard_webhook, verify_standard_webhook_at,
};
