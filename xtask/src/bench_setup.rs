//! The bench's processes and facts shared by the load runs (`bench`) and the
//! instruction count (`bench_callgrind`): the upstream (the mock or nginx),
//! keygate gateways with their own SQLite database, account and key, the
//! request bodies, the release build, pinning, and what the report says about
//! the machine and the build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use keygate_test_utils::{MOCK_ANTHROPIC_KEY_ENV, MOCK_OPENAI_KEY_ENV, write_mock_config};
use serde_json::{Value, json};

use crate::admin_cli::{admin_json, json_str};
use crate::bench_nginx::NginxChild;
use crate::bench_serve::{Cpu, GatewayChild, Launch, ServerChild};

/// The provider key keygate holds and the direct, baseline and nginx arms send.
pub(crate) const PROVIDER_KEY: &str = "sk-bench-provider-key";
pub(crate) const GATEWAY_ENV: [(&str, &str); 2] = [
    (MOCK_OPENAI_KEY_ENV, PROVIDER_KEY),
    (MOCK_ANTHROPIC_KEY_ENV, "sk-ant-bench"),
];
/// A priced model in `write_mock_config`.
const MODEL: &str = "gpt-4o-mini";
/// Credits on each bench account: far more than the bench can spend.
const BALANCE: &str = "1000000";
/// Why an `--observability` arm may not start.
pub(crate) const OBSERVABILITY_HINT: &str = "--observability needs a keygate whose config knows `[metrics] enabled` and `[tracing] otlp_endpoint`";
/// What the `keygate, metrics off` arm adds to its config.
pub(crate) const METRICS_OFF: &str = "[metrics]\nenabled = false\n";
/// The upstream every proxy forwards to: the mock or nginx's canned answers.
#[derive(Debug)]
pub(crate) enum Upstream {
    Mock(Box<ServerChild>),
    Nginx(NginxChild),
}

impl Upstream {
    pub(crate) fn url(&self) -> &str {
        match self {
            Upstream::Mock(mock) => &mock.url,
            Upstream::Nginx(nginx) => &nginx.url,
        }
    }

    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        match self {
            Upstream::Mock(mock) => mock.addr,
            Upstream::Nginx(nginx) => nginx.addr,
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Upstream::Mock(mock) => mock.pid(),
            Upstream::Nginx(nginx) => Some(nginx.pid()),
        }
    }

    /// A mock command (`reply`, `chunk-delay-us`); nginx's answers are fixed.
    pub(crate) async fn command(&mut self, line: &str) -> Result<()> {
        match self {
            Upstream::Mock(mock) => mock.command(line).await,
            Upstream::Nginx(_) => Ok(()),
        }
    }

    pub(crate) async fn stop(self) {
        match self {
            Upstream::Mock(mock) => mock.stop().await,
            Upstream::Nginx(nginx) => nginx.stop().await,
        }
    }
}

/// `nginx -v`'s answer, e.g. `nginx/1.22.1`.
pub(crate) fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .and_then(|text| {
            text.split_whitespace()
                .find(|word| word.starts_with("nginx/"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "nginx (version unknown)".to_owned())
}

/// The line of a start failure that says why (keygate's `unknown field …`
/// without the config's temporary path), else its first line.
pub(crate) fn refusal(error: &str) -> String {
    error
        .lines()
        .find_map(|line| line.find("unknown field").map(|at| &line[at..]))
        .or_else(|| error.lines().next())
        .unwrap_or_default()
        .to_owned()
}

/// What the `keygate, traced` arm adds to its config: spans to the sink at `url`.
pub(crate) fn tracing_config(url: &str) -> String {
    format!("[tracing]\notlp_endpoint = \"{url}\"\n")
}

/// A running gateway with its own database, account and key.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) name: &'static str,
    pub(crate) process: GatewayChild,
    pub(crate) database_url: String,
    pub(crate) account: String,
    pub(crate) key: String,
}

/// What a gateway is started with.
#[derive(Debug)]
pub(crate) struct GatewaySpec {
    pub(crate) bin: PathBuf,
    /// Its directory is `dir/name`.
    pub(crate) dir: PathBuf,
    pub(crate) name: &'static str,
    pub(crate) upstream_url: String,
    pub(crate) zero_prices: bool,
    /// Appended to the config (`[metrics]`, `[tracing]`).
    pub(crate) extra: String,
    /// The CA the upstreams' certificates are checked against (`ca_file`), for
    /// an upstream over TLS.
    pub(crate) ca_file: Option<PathBuf>,
}

pub(crate) async fn start_gateway(spec: GatewaySpec, launch: &Launch) -> Result<Gateway> {
    let name = spec.name;
    let dir = spec.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let database_url = format!("sqlite://{}", dir.join("keygate.db").display());
    let config = write_mock_config(&dir, &spec.upstream_url, &database_url)
        .with_context(|| format!("cannot write {name}/keygate.toml"))?;
    if spec.zero_prices {
        set_prices_to_zero(&config)?;
    }
    if let Some(ca_file) = &spec.ca_file {
        // A JSON string is a valid TOML basic string.
        let ca_file = serde_json::Value::String(ca_file.display().to_string());
        let text = std::fs::read_to_string(&config)?;
        let text = text.replace(
            "\nbase_url = ",
            &format!("\nca_file = {ca_file}\nbase_url = "),
        );
        std::fs::write(&config, text)?;
    }
    if !spec.extra.is_empty() {
        let mut text = std::fs::read_to_string(&config)?;
        text.push('\n');
        text.push_str(&spec.extra);
        std::fs::write(&config, text)?;
    }
    let log: PathBuf = dir.join("keygate.log");
    let process = GatewayChild::start(&spec.bin, &config, &GATEWAY_ENV, log, launch)
        .await
        .with_context(|| format!("the {name} gateway did not start"))?;
    let account = admin_json(
        &database_url,
        &["account", "create", "--name", "bench", "--balance", BALANCE],
    )
    .await?;
    let account = json_str(&account, "id")?;
    let key = admin_json(
        &database_url,
        &["key", "create", "--account", &account, "--name", "bench"],
    )
    .await?;
    let key = json_str(&key, "key")?;
    Ok(Gateway {
        name,
        process,
        database_url,
        account,
        key,
    })
}

/// Rewrites every `*_per_mtok` price in the config `write_mock_config` wrote to
/// 0.0, so the zero-price gateway differs from the priced one in prices only.
fn set_prices_to_zero(config: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config)?;
    let mut changed = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once(" = ") {
            Some((name, _)) if name.trim().ends_with("_per_mtok") => {
                out.push_str(name);
                out.push_str(" = 0.0");
                changed += 1;
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    if changed == 0 {
        bail!("found no prices to zero in {}", config.display());
    }
    std::fs::write(config, out)?;
    Ok(())
}

pub(crate) fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something about a fox."}],
    })
}

/// Usage records and their cost for `account`, from `keygate-admin usage report`.
pub(crate) async fn usage(database_url: &str, account: &str) -> Result<(u64, i64)> {
    let report = admin_json(database_url, &["usage", "report", "--account", account]).await?;
    Ok((
        report["total"]["requests"].as_u64().unwrap_or_default(),
        report["total"]["cost_micros"].as_i64().unwrap_or_default(),
    ))
}

/// The three load averages from `/proc/loadavg`.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

pub(crate) fn commit() -> String {
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    match head {
        Some(head) if dirty => format!("{head} (with uncommitted changes)"),
        Some(head) => head,
        None => "unknown".to_owned(),
    }
}

pub(crate) fn rustc() -> String {
    Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Variables `cargo run` sets for the binary it runs (besides `CARGO_PKG_*`).
const CARGO_RUN_VARS: [&str; 5] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// `cargo build --release --bin …` for `bins`, without the variables `cargo
/// run` gave this process (passed on, they change build-script fingerprints and
/// make every later plain build rebuild half the tree).
pub(crate) fn build(root: &Path, bins: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command.current_dir(root).args(["build", "--release"]);
    for bin in bins {
        command.args(["--bin", bin]);
    }
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || CARGO_RUN_VARS.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    println!("Building release binaries: {}", bins.join(", "));
    let status = command
        .status()
        .with_context(|| format!("cannot run {cargo} build"))?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

/// Which CPU each process runs on with `--pin`: the load generator and the mock
/// share the first, the proxy under test gets the second.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pins {
    pub(crate) mock: Cpu,
    pub(crate) proxy: Cpu,
}

impl Pins {
    pub(crate) fn new(pin: bool, cpus: usize) -> Result<Pins> {
        if !pin {
            return Ok(Pins::default());
        }
        let taskset = Command::new("taskset")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !taskset || cpus < 2 {
            println!("--pin: needs taskset and 2 CPUs; running unpinned");
            return Ok(Pins::default());
        }
        // Before the runtime starts, so every worker thread inherits it.
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .output()
            .context("cannot run taskset")?;
        if !status.status.success() {
            bail!("taskset could not pin the load generator");
        }
        Ok(Pins {
            mock: Some(0),
            proxy: Some(1),
        })
    }
}
