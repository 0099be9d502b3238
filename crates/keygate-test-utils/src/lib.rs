//! Helpers shared by keygate's tests. A dev-dependency only: nothing here ships.
//!
//! [`TestPostgres`] gives each test its own freshly created PostgreSQL database
//! (dropped afterwards), so test runs never collide.

#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "test support: failing loudly and saying what was skipped is the point"
)]

mod postgres;

pub use postgres::{POSTGRES_URL_VAR, TestPostgres};
