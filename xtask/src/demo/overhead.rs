//! The demo's overhead figure: the same sequential chat completions through
//! the gateway and straight to the mock provider, timed side by side.

use std::time::{Duration, Instant};

use anyhow::Result;
use http::{Method, StatusCode};
use keygate_test_utils::MockUpstream;

use super::client::{build, call, chat_body, http_client};
use super::progress::Demo;
use super::scenario::PROVIDER_KEY;

/// Untimed requests before each measurement, to open the connection.
const WARM_UP: usize = 20;

/// Measures `requests` requests through the gateway at `base` and as many
/// straight to `mock`, and prints both and their ratio.
pub(super) async fn compare(
    demo: &mut Demo,
    base: &str,
    key: &str,
    mock: &MockUpstream,
    requests: usize,
) -> Result<()> {
    demo.step(&format!(
        "The gateway's overhead: {requests} sequential requests over one keep-alive connection"
    ));
    let through = measure(&format!("{base}/v1/chat/completions"), key, requests).await?;
    let direct = measure(
        &format!("{}/v1/chat/completions", mock.url()),
        PROVIDER_KEY,
        requests,
    )
    .await?;
    for (label, m) in [("through keygate", &through), ("direct to mock", &direct)] {
        println!(
            "   {label:<16} {requests} requests in {:>6.2} s  {:>7.0} req/s  mean {:>6.0} µs",
            m.total.as_secs_f64(),
            m.per_second(requests),
            m.mean_micros(requests)
        );
    }
    let added = through.mean_micros(requests) - direct.mean_micros(requests);
    println!(
        "   ratio (keygate / direct): {:.2}×   added latency: {added:.0} µs per request",
        through.per_second(requests) / direct.per_second(requests)
    );
    if cfg!(debug_assertions) {
        println!(
            "   (debug build; `cargo run --release -p xtask -- demo` measures release builds)"
        );
    }
    demo.check(through.failures == 0, || {
        format!(
            "{} of {requests} requests through keygate failed",
            through.failures
        )
    });
    demo.check(direct.failures == 0, || {
        format!(
            "{} of {requests} requests to the mock failed",
            direct.failures
        )
    });
    Ok(())
}

/// One side of the overhead measurement.
#[derive(Debug)]
struct Measured {
    total: Duration,
    failures: usize,
}

impl Measured {
    fn per_second(&self, requests: usize) -> f64 {
        requests as f64 / self.total.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn mean_micros(&self, requests: usize) -> f64 {
        self.total.as_secs_f64() * 1e6 / requests.max(1) as f64
    }
}

/// Sends `requests` non-streaming chat completions to `url` one after another on
/// a fresh client, which keeps its one connection alive between them.
async fn measure(url: &str, key: &str, requests: usize) -> Result<Measured> {
    let client = http_client();
    let body = chat_body(false);
    for _ in 0..WARM_UP {
        call(&client, build(Method::POST, url, Some(key), Some(&body))?).await?;
    }
    let mut failures = 0;
    let started = Instant::now();
    for _ in 0..requests {
        let (status, _) = call(&client, build(Method::POST, url, Some(key), Some(&body))?).await?;
        if status != StatusCode::OK {
            failures += 1;
        }
    }
    Ok(Measured {
        total: started.elapsed(),
        failures,
    })
}
