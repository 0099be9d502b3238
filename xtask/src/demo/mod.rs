//! `demo`: an offline round trip through the real gateway, run by `cargo xtask demo`.
//!
//! It builds `keygate` and `keygate-admin`, starts a mock provider inside this
//! process, starts the gateway against it with a throwaway SQLite database, and
//! walks through a key's life: chat, streaming, refusals, what the provider saw,
//! the gateway's overhead, revocation and a graceful shutdown. It needs no network
//! and no API keys, and exits 1 if any step does not behave as expected.
//!
//! This module parses the options, builds the binaries and names the steps in
//! order; the steps live in `servers` (the mock and the gateway), `account`
//! (`keygate-admin`: the key, its cost, its revocation), `traffic` (requests
//! through the gateway) and `overhead` (the timing), and print through
//! `progress`.

mod account;
mod client;
mod overhead;
mod progress;
mod scenario;
mod servers;
mod traffic;

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use client::http_client;
use progress::Demo;

/// What `cargo xtask demo` was asked to do.
#[derive(Debug)]
pub(crate) struct Options {
    /// Sequential requests per side in the overhead measurement; 0 skips it.
    pub(crate) requests: usize,
}

impl Options {
    /// Parses the arguments after `demo`: `[--requests N]`.
    pub(crate) fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            requests: DEFAULT_REQUESTS,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let value = match arg.strip_prefix("--requests") {
                Some("") => args.next().map(String::as_str),
                Some(rest) => rest.strip_prefix('='),
                None => bail!("unknown argument {arg:?} (usage: cargo xtask demo [--requests N])"),
            };
            let value = value.context("--requests needs a number")?;
            options.requests = value
                .parse()
                .with_context(|| format!("--requests: {value:?} is not a number"))?;
        }
        Ok(options)
    }
}

/// Runs the demo; `Ok(false)` when a step misbehaved (already reported).
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    build_binaries(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(walk(options))
}

const DEFAULT_REQUESTS: usize = 500;

/// Variables `cargo run` sets for the binary it runs (besides `CARGO_PKG_*`).
const CARGO_RUN_VARS: [&str; 5] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// Builds the two binaries next to this one, where `workspace_binary` looks.
fn build_binaries(root: &Path) -> Result<()> {
    println!("1. Building keygate and keygate-admin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        .current_dir(root)
        .args(["build", "--bin", "keygate", "--bin", "keygate-admin"]);
    // `cargo run` gave this process its package's variables. Passed on, they
    // change build-script fingerprints (ring reruns on CARGO_MANIFEST_DIR), so
    // every demo and every later plain `cargo build` would rebuild half the tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || CARGO_RUN_VARS.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    let release = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .is_some_and(|dir| dir.ends_with("release"));
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {cargo} build"))?;
    if !status.success() {
        bail!("cargo build --bin keygate --bin keygate-admin failed ({status})");
    }
    Ok(())
}

/// The steps after the build, in order; `Ok(false)` when a check failed.
async fn walk(options: &Options) -> Result<bool> {
    let mut demo = Demo::default();
    let mock = servers::start_mock(&mut demo).await;
    let mut gateway = servers::start_gateway(&mut demo, &mock).await?;
    let (base, database_url) = (&gateway.base, &gateway.database_url);
    let key = account::create_key(&mut demo, database_url).await?;

    let client = http_client();
    traffic::chat(&mut demo, &client, base, &key.secret).await?;
    traffic::stream(&mut demo, &client, base, &key.secret).await?;
    traffic::models(&mut demo, &client, base, &key.secret).await?;
    traffic::refusals(&mut demo, &client, base).await?;
    if options.requests > 0 {
        overhead::compare(&mut demo, base, &key.secret, &mock, options.requests).await?;
    }
    let answered = 2 + options.requests;
    account::billing(&mut demo, database_url, &key.account_id, answered).await?;
    account::revoke(&mut demo, &client, base, &key, database_url).await?;
    servers::provider_view(&mut demo, &mock, &key.secret);
    let log = servers::shutdown(&mut demo, &mut gateway.process).await;
    servers::request_log(&mut demo, &log);
    Ok(demo.finish())
}
