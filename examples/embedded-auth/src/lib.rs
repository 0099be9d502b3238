//! Embedding keygate: a small HTTP service of its own that authenticates its
//! routes with keygate keys, using only `keygate-keys` (find the presented key,
//! check its format and checksum without IO, hash it) and `keygate-store` (look the
//! hash up, check the key's status and scopes, follow the change feed). It does not
//! use the gateway (`keygate-proxy`).
//!
//! - [`KeyAuth`] checks a request's headers: `Credential::extract` (Bearer, Basic,
//!   `x-api-key`, `api-key`; never the query string), `ParsedKey::parse`,
//!   `CredentialStore::find_key_by_hash`, `ApiKey::status` against the clock
//!   (expired, revoked, or past its rotation grace), secret keys only, and the
//!   route's scope. Found keys are cached, and the cache follows
//!   `CredentialStore::key_changes_since` every poll (1 s by default), so a key
//!   revoked through the store or `keygate-admin key revoke` is refused within one
//!   poll. While the store is unreachable, cached keys keep working and unknown
//!   ones get 503.
//! - [`KeyAuthLayer`] is the `tower::Layer` around one route's service. It answers
//!   refusals itself with JSON errors (401 with `WWW-Authenticate`, 403
//!   `insufficient_scope` naming the scope), never echoing the key, and gives the
//!   handler an [`AuthenticatedKey`] (id, account, name, scopes) in the request
//!   extensions.
//! - [`serve`] runs the routes in `app.rs` (`GET /reports` needs `usage`,
//!   `POST /jobs` needs `chat`) on hyper 1 and hyper-util.
//!
//! What the gateway does and this example does not: per-key `rpm`, model and
//! origin lists, spend limits and billing, and `last_used_at` (the gateway batches
//! `CredentialStore::record_key_use`). Unknown but well-formed keys are not
//! cached, so each costs a store lookup.
//!
//! The layer lives in this example, not in a library crate: it is the gateway's
//! authentication reduced to the store's public API, and a second supported
//! authenticator beside `keygate-proxy`'s would be two implementations of one
//! rule to keep in step. Copy `auth.rs` and `layer.rs` (about 400 lines); if
//! they should become a crate (`keygate-auth`), it should be the one the gateway
//! uses too.
//!
//! Run it against the gateway's database (see `README.md` next to `Cargo.toml`):
//!
//! ```sh
//! cargo run -p embedded-auth -- --database-url sqlite://keygate.db
//! ```

mod app;
mod auth;
mod layer;

pub use app::{Body, serve};
pub use auth::{AuthError, AuthenticatedKey, DEFAULT_POLL, KeyAuth};
pub use layer::{KeyAuthLayer, KeyAuthService};
