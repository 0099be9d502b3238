//! keygate's control plane: the admin HTTP API over the store, on a listener of
//! its own. Admin tokens (`{prefix}_ak_…`, stored as SHA-256) authenticate; their
//! role (viewer, operator, owner) decides what they may do; every change goes to
//! the audit log; creates and top-ups honour `Idempotency-Key`; the OpenAPI 3.1
//! document is served at `/openapi.json`. Bodies have the shape
//! `keygate-admin --json` prints, errors the OpenAI error shape.
//!
//! It also serves the web console at `/` (assets compiled in, sessions as
//! hashed cookies with CSRF tokens).
//!
//! This crate does no proxying and no SQL: it works on the store's traits.

mod api;
mod console;
mod context;
mod error;
mod handlers;
mod inputs;
mod openapi;
mod routes;
mod server;
mod session;

pub use api::{AdminApi, MAX_BODY_BYTES};
pub use console::page_cost;
pub use context::Stores;
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use routes::{Op, ROUTES, Route};
pub use server::serve_admin;
