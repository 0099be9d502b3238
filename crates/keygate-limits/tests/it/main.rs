//! keygate-limits against a real Redis (`KEYGATE_TEST_REDIS_URL`, a fresh key
//! prefix per test; skipped and said so when unset) and against a Redis that is
//! not there (a closed loopback port), always.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod redis;
mod unreachable;
