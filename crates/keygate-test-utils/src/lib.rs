//! Helpers shared by keygate's tests. A dev-dependency only: nothing here ships.
//!
//! [`TestPostgres`] gives each test its own freshly created PostgreSQL database
//! (dropped afterwards), so test runs never collide; [`TestRedis`] a fresh key
//! prefix on the machine's Redis. [`MockUpstream`] is a real
//! HTTP server that speaks just enough OpenAI and Anthropic to stand in for a
//! provider, over plain HTTP or TLS with [`TestCerts`]. [`GatewayProcess`] and
//! [`admin`] run the real binaries. With the `fixture` feature, [`fixture`] makes
//! accounts and keys in a store. With the `otlp` feature, [`OtlpCollector`] is a
//! small OTLP/HTTP trace collector.

#![allow(
    clippy::panic,
    clippy::print_stderr,
    reason = "test support: failing loudly and saying what was skipped is the point"
)]

#[cfg(feature = "fixture")]
pub mod fixture;
mod mock_upstream;
#[cfg(feature = "otlp")]
mod otlp_collector;
mod postgres;
mod process;
mod redis;
mod tls;

pub use mock_upstream::{Fault, MockUpstream, RecordedRequest};
#[cfg(feature = "otlp")]
pub use opentelemetry_proto;
#[cfg(feature = "otlp")]
pub use otlp_collector::{CollectedSpan, Export, OtlpCollector};
pub use postgres::{POSTGRES_URL_VAR, TestPostgres};
pub use process::{
    AdminOutput, GatewayProcess, MOCK_ANTHROPIC_KEY_ENV, MOCK_OPENAI_KEY_ENV, admin,
    workspace_binary, write_mock_config,
};
pub use redis::{REDIS_URL_VAR, TestRedis};
pub use tls::TestCerts;
