//! keygate-proxy integration tests: a real gateway on 127.0.0.1:0 in front of the
//! mock upstream from keygate-test-utils, over real sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub,
    reason = "tests"
)]

mod billing;
mod conn;
mod failover;
mod faults;
mod harness;
mod inputs;
mod metrics;
mod objects;
mod proxy;
mod signing;
mod tls;
mod traces;
mod upstream_faults;
mod workers;
