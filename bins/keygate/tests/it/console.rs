//! The web console driven in a real headless Chromium through Selenium
//! (`tests/console/console_test.py`), against the real binary. `.ci/run`
//! installs Debian's chromium and chromium-driver and Selenium into a venv, and
//! sets `KEYGATE_TEST_CONSOLE_PYTHON` to its python. `KEYGATE_CONSOLE_SCREENSHOTS`
//! names a directory for screenshots (docs/ keeps the README's).

use std::time::Instant;

use keygate_test_utils::{GatewayProcess, MockUpstream, admin};

use crate::{ENV, PROVIDER_KEY, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let Ok(python) = std::env::var("KEYGATE_TEST_CONSOLE_PYTHON") else {
        eprintln!(
            "SKIPPED (console): set KEYGATE_TEST_CONSOLE_PYTHON to a python with selenium to run it"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let mock = MockUpstream::start().await;
    mock.require_key(PROVIDER_KEY);
    let config = write_config(dir.path(), &mock, &url);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::start(&config, &ENV).await;
    let log = gateway.log();
    let admin_url = log
        .split("admin API on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let out = admin(
        &url,
        &[
            "--json",
            "admin-token",
            "create",
            "--name",
            "console",
            "--role",
            "owner",
        ],
    )
    .await;
    assert!(out.success, "{}", out.stderr);
    let token: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/console/console_test.py"
    );
    let shots = std::env::var("KEYGATE_CONSOLE_SCREENSHOTS")
        .unwrap_or_else(|_| dir.path().display().to_string());
    let started = Instant::now();
    let run = tokio::process::Command::new(python)
        .arg(script)
        .env("KG_ADMIN_URL", &admin_url)
        .env("KG_GATEWAY_URL", &gateway.base_url)
        .env("KG_TOKEN", token["token"].as_str().unwrap())
        .env("KG_SCREENSHOTS", shots)
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "console test failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        gateway.log()
    );
    eprintln!(
        "{} (with Chromium start-up: {:?})",
        String::from_utf8_lossy(&run.stdout).trim(),
        started.elapsed()
    );
}
