//! The machine's Redis for tests, each test under a key prefix of its own, so
//! runs and tests sharing one server never see each other's limits. Every key
//! keygate writes expires by itself, so nothing is cleaned up afterwards.

use rand::RngExt;

/// The environment variable that names the Redis server for tests, e.g.
/// `redis://127.0.0.1:6379`. When unset, Redis tests are skipped and say so.
pub const REDIS_URL_VAR: &str = "KEYGATE_TEST_REDIS_URL";

/// A Redis server and a fresh key prefix for one test.
#[derive(Debug, Clone)]
pub struct TestRedis {
    /// The server, from `KEYGATE_TEST_REDIS_URL`.
    pub url: String,
    /// A prefix no other test uses.
    pub prefix: String,
}

impl TestRedis {
    /// The server named by `KEYGATE_TEST_REDIS_URL` and a fresh prefix, or
    /// `None` (after printing that the test was skipped) when the variable is
    /// unset.
    pub fn create(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var(REDIS_URL_VAR) else {
            eprintln!("SKIPPED (Redis): {test} — set {REDIS_URL_VAR} to run it");
            return None;
        };
        let suffix: u64 = rand::rng().random();
        Some(Self {
            url,
            prefix: format!("keygate-test-{}-{suffix:016x}", std::process::id()),
        })
    }
}
