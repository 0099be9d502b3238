//! The demo's two servers: the mock provider (in this process) and the gateway
//! (a `keygate` process), started, checked from the provider's side, and the
//! gateway stopped and its request log read.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use http::header::AUTHORIZATION;
use keygate_test_utils::{GatewayProcess, MockUpstream, write_mock_config};
use tempfile::TempDir;

use super::progress::{Demo, redact};
use super::scenario::{GATEWAY_ENV, PROVIDER_KEY, REPLY};

/// The running gateway and the throwaway directory that holds its database.
pub(super) struct Gateway {
    pub(super) process: GatewayProcess,
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub(super) base: String,
    pub(super) database_url: String,
    /// Deleted, with the database in it, when this value is dropped.
    _dir: TempDir,
}

pub(super) async fn start_mock(demo: &mut Demo) -> MockUpstream {
    demo.step("Starting a mock provider (in this process)");
    let mock = MockUpstream::start().await;
    // Slow the stream down a little so its chunks arrive visibly apart.
    mock.set_chunk_delay(Duration::from_millis(40));
    // The mock answers only requests carrying the provider key, so every
    // successful request below proves the gateway swapped the keys.
    mock.require_key(PROVIDER_KEY);
    println!("   mock OpenAI + Anthropic API at {}/v1", mock.url());
    println!(
        "   it accepts only the provider key {}",
        redact(PROVIDER_KEY, 7)
    );
    mock
}

/// Writes a `keygate.toml` for `mock` with a fresh SQLite database, prints it
/// and starts the gateway with it.
pub(super) async fn start_gateway(demo: &mut Demo, mock: &MockUpstream) -> Result<Gateway> {
    demo.step("Starting the gateway");
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let database_url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let config = write_mock_config(dir.path(), &mock.url(), &database_url)
        .context("cannot write keygate.toml")?;
    let text = std::fs::read_to_string(&config)?;
    println!("   keygate.toml:");
    for line in text.lines() {
        println!("   │ {line}");
    }
    let process = spawn_gateway(config).await?;
    let base = process.base_url.clone();
    println!("   listening on {base} (database migrated at start)");
    Ok(Gateway {
        process,
        base,
        database_url,
        _dir: dir,
    })
}

/// Starts the gateway. `GatewayProcess::start` panics when the gateway does not
/// come up; running it as a task turns that into an error (the panic message,
/// with the gateway's log, is printed above it).
async fn spawn_gateway(config: PathBuf) -> Result<GatewayProcess> {
    tokio::spawn(async move { GatewayProcess::start(&config, &GATEWAY_ENV).await })
        .await
        .map_err(|_| anyhow!("the gateway did not start (see above)"))
}

/// Checks that the provider got the provider key and never the client's `key`.
pub(super) fn provider_view(demo: &mut Demo, mock: &MockUpstream, key: &str) {
    demo.step("What the provider saw");
    let requests = mock.requests();
    let Some(first) = requests.first() else {
        demo.check(false, || "the mock received no requests".to_owned());
        return;
    };
    let authorization = first
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    let shown = match authorization.strip_prefix("Bearer ") {
        Some(token) => format!("Bearer {}", redact(token, 7)),
        None => redact(authorization, 7),
    };
    let names: Vec<&str> = first.headers.keys().map(|name| name.as_str()).collect();
    println!(
        "   first request: {} {} over {:?}",
        first.method, first.path, first.version
    );
    println!("   headers: {}", names.join(", "));
    println!("   authorization: {shown}  (the gateway's provider key)");
    demo.check(authorization == format!("Bearer {PROVIDER_KEY}"), || {
        format!("the upstream got authorization {shown:?}, not the provider key")
    });
    let forwarded = requests.iter().any(|r| {
        r.headers
            .values()
            .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(key))
            || r.query.as_deref().is_some_and(|q| q.contains(key))
            || String::from_utf8_lossy(&r.body).contains(key)
    });
    println!(
        "   client key forwarded upstream: {}  (checked all {} requests: headers, queries, bodies)",
        if forwarded { "YES" } else { "no" },
        requests.len()
    );
    demo.check(!forwarded, || {
        "the client's key reached the upstream".to_owned()
    });
}

/// Stops the gateway with SIGTERM and checks it shut down cleanly; returns its
/// log.
pub(super) async fn shutdown(demo: &mut Demo, gateway: &mut GatewayProcess) -> String {
    demo.step("Stopping the gateway with SIGTERM");
    let since = Instant::now();
    gateway.terminate();
    let status = gateway.wait(Duration::from_secs(15)).await;
    match status {
        Some(status) => println!(
            "   exited ({status}) {} ms after SIGTERM",
            since.elapsed().as_millis()
        ),
        None => println!("   still running 15 s after SIGTERM"),
    }
    demo.check(status.is_some_and(|s| s.success()), || {
        format!("expected exit status 0, got {status:?}")
    });
    // The log is read by a task; give it a moment to catch the last lines.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !gateway.log().contains("shut down cleanly") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = gateway.log();
    let clean = log.contains("shut down cleanly");
    if clean {
        println!("   log: \"shut down cleanly\"");
    }
    demo.check(clean, || {
        "the gateway's log does not say \"shut down cleanly\"".to_owned()
    });
    log
}

/// Shows the first request lines of the gateway's `log` and checks that they
/// carry metadata only.
pub(super) fn request_log(demo: &mut Demo, log: &str) {
    demo.step("The gateway's request log: metadata only, never prompts or replies");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("keygate::request"))
        .collect();
    for line in lines.iter().take(5) {
        println!("   {}", line.trim());
    }
    if lines.len() > 5 {
        println!("   … and {} more like these", lines.len() - 5);
    }
    demo.check(!lines.is_empty(), || {
        "the gateway logged no request lines".to_owned()
    });
    demo.check(!log.contains(REPLY), || {
        "the gateway's log contains the reply text".to_owned()
    });
}
