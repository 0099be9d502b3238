//! `cargo xtask bench --callgrind`: instructions per request, a figure that
//! stays put on a noisy machine where timings do not.
//!
//! Each counted server (the bare baseline, the nginx proxy as one process,
//! keygate with billing; with `--observability` also keygate with metrics off
//! and keygate traced) runs alone under `valgrind --tool=callgrind`, in front of
//! the mock upstream, which runs outside valgrind as does the load generator in
//! this process. After warm-up requests (the auth cache is warm, every code path
//! translated), `callgrind_control --zero` starts a window, `REQUESTS`
//! sequential requests on one keep-alive connection run, the bench waits
//! `SETTLE` (batched usage writes land in the window), and
//! `callgrind_control --dump` ends it. A window of the same length with no
//! requests is counted too (timers, the auth cache's poll) and subtracted, so
//! the figure is the work the requests caused, all threads added up.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use keygate_test_utils::workspace_binary;

use crate::bench_load::{self, Target};
use crate::bench_nginx::{self, NginxChild, Role};
use crate::bench_report::thousands;
use crate::bench_serve::{Launch, ServerChild};
use crate::bench_setup::{
    self as bench, GatewaySpec, METRICS_OFF, PROVIDER_KEY, Upstream, chat_body, start_gateway,
    tracing_config,
};

/// The heading of the section this mode owns in `docs/benchmarks.md`.
pub(crate) const HEADING: &str = "## Instructions per request (cargo xtask bench --callgrind)";
/// Requests counted per window.
const REQUESTS: usize = 500;
/// Untimed requests of each kind before the first window.
const WARM_UP: usize = 100;
/// How long a window stays open after its last request.
const SETTLE: Duration = Duration::from_millis(1500);

/// What the count is given.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) target_dir: PathBuf,
    pub(crate) nginx: PathBuf,
    pub(crate) observability: bool,
    pub(crate) command: String,
}

/// One counted server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    Baseline,
    NginxProxy,
    Keygate,
    KeygateMetricsOff,
    KeygateTraced,
}

impl Counted {
    fn label(self) -> &'static str {
        match self {
            Counted::Baseline => "baseline",
            Counted::NginxProxy => "nginx proxy (one process)",
            Counted::Keygate => "keygate",
            Counted::KeygateMetricsOff => "keygate, metrics off",
            Counted::KeygateTraced => "keygate, traced",
        }
    }
}

/// Instructions per request of one server.
#[derive(Debug, Clone, Copy)]
struct Count {
    plain: f64,
    streamed: f64,
    /// Instructions per second with no requests (subtracted above).
    idle_per_second: f64,
}

/// Runs the count and returns the Markdown section and whether every server
/// could be counted.
pub(crate) async fn run(setup: Setup) -> Result<(String, bool)> {
    let valgrind = ensure_valgrind()?;
    let perf = perf_counters();
    let load_before = bench::loadavg();
    let started = Instant::now();
    let out_dir = setup.target_dir.join("bench").join("callgrind");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut mock = ServerChild::start(&["--serve-mock"], &Launch::default()).await?;
    mock.command("reply 0").await?;
    mock.command("chunk-delay-us 0").await?;
    let upstream = Upstream::Mock(Box::new(mock));
    let mut counted = vec![Counted::Baseline, Counted::NginxProxy, Counted::Keygate];
    if setup.observability {
        counted.extend([Counted::KeygateMetricsOff, Counted::KeygateTraced]);
    }
    let mut counts = Vec::new();
    let mut failures = Vec::new();
    for server in counted {
        println!("Counting {} under callgrind", server.label());
        match count(&setup, &valgrind, &out_dir, &upstream, server).await {
            Ok(count) => {
                println!(
                    "  {:.0} instructions per request, {:.0} per streamed request",
                    count.plain, count.streamed
                );
                counts.push((server, count));
            }
            Err(e) => {
                println!("  not counted: {e:#}");
                failures.push((server, format!("{e:#}")));
            }
        }
    }
    upstream.stop().await;
    let load_after = bench::loadavg();
    let mut out = String::new();
    let _ = writeln!(out, "{HEADING}\n");
    let _ = writeln!(
        out,
        "Command: `{}` (release builds; {:.0} s in all). Machine: {} cores, `/proc/loadavg` {load_before} before and {load_after} after, commit {}, rustc {}, {}, {}.\n",
        setup.command,
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, usize::from),
        bench::commit(),
        bench::rustc(),
        valgrind_version(&valgrind),
        bench::nginx_version(&setup.nginx),
    );
    let _ = writeln!(
        out,
        "Instructions (callgrind's `Ir`, user space, every thread of the server added up) per request, for {REQUESTS} sequential requests on one keep-alive connection after {WARM_UP} warm-up requests of each kind, the window held open {:.1} s after the last request (so batched usage writes are in it) and an equally long idle window subtracted. The mock upstream and the load generator run outside valgrind and are not counted. Plain: a non-streamed chat completion (keygate: a real key from a warm auth cache, billing on a priced model, a usage record). Streamed: `\"stream\": true`, a role chunk, 9 one-word chunks, a usage chunk (keygate: its usage tap reads the stream).\n",
        SETTLE.as_secs_f64()
    );
    let base = counts
        .iter()
        .find(|(server, _)| *server == Counted::Baseline)
        .map(|(_, count)| *count);
    let nginx = counts
        .iter()
        .find(|(server, _)| *server == Counted::NginxProxy)
        .map(|(_, count)| *count);
    let ratio = |value: f64, of: Option<f64>| {
        of.filter(|of| *of > 0.0)
            .map_or_else(|| "—".to_owned(), |of| format!("{:.2}×", value / of))
    };
    let _ = writeln!(
        out,
        "| server | plain: instructions per request | ÷ baseline | ÷ nginx proxy | streamed: instructions per request | ÷ baseline | ÷ nginx proxy | idle instructions/s (subtracted) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (server, count) in &counts {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            server.label(),
            thousands(count.plain),
            ratio(count.plain, base.map(|b| b.plain)),
            ratio(count.plain, nginx.map(|n| n.plain)),
            thousands(count.streamed),
            ratio(count.streamed, base.map(|b| b.streamed)),
            ratio(count.streamed, nginx.map(|n| n.streamed)),
            thousands(count.idle_per_second),
        );
    }
    let _ = writeln!(out);
    for (server, error) in &failures {
        let first = error.lines().next().unwrap_or_default();
        let why = bench::refusal(error);
        let why = if why == first {
            why
        } else {
            format!("{first} {why}")
        };
        let _ = writeln!(out, "- {} could not be counted: {why}", server.label());
    }
    let _ = writeln!(
        out,
        "- nginx runs as one process here (`master_process off`, one worker), so callgrind follows it; the load runs use a master and one worker per core."
    );
    let _ = writeln!(
        out,
        "- Valgrind runs a program's threads one at a time, so the count does not include contention between threads; it is the work, not the time. The kernel's share (system calls, wake-ups) is not in it either, which is why these ratios are larger than the load runs' server CPU per request, which counts both."
    );
    let _ = writeln!(out, "- Hardware counters: {perf}");
    Ok((out, failures.is_empty()))
}

/// Counts one server: starts it under callgrind, warms it, counts the plain,
/// streamed and idle windows, stops it.
async fn count(
    setup: &Setup,
    valgrind: &Path,
    out_dir: &Path,
    upstream: &Upstream,
    server: Counted,
) -> Result<Count> {
    let tag = match server {
        Counted::Baseline => "baseline",
        Counted::NginxProxy => "nginx",
        Counted::Keygate => "keygate",
        Counted::KeygateMetricsOff => "metrics-off",
        Counted::KeygateTraced => "traced",
    };
    let out_file = out_dir.join(format!("callgrind.out.{tag}"));
    for entry in std::fs::read_dir(out_dir)?.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("callgrind.out.{tag}"))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let launch = Launch {
        cpu: None,
        wrapper: vec![
            valgrind.display().to_string(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out_file.display()),
            format!(
                "--log-file={}",
                out_dir.join(format!("valgrind.{tag}.log")).display()
            ),
            "--fair-sched=yes".to_owned(),
            // Every dump names its functions in full, so `callgrind_annotate`
            // reads each window's file on its own (compressed names refer
            // back to the first dump).
            "--compress-strings=no".to_owned(),
        ],
    };
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let gateway = |name: &'static str, extra: String| GatewaySpec {
        bin: workspace_binary("keygate"),
        dir: dir.path().to_path_buf(),
        name,
        upstream_url: upstream.url().to_owned(),
        zero_prices: false,
        extra,
        ca_file: None,
    };
    let mut sink = None;
    let (target, process): (Target, Running) = match server {
        Counted::Baseline => {
            let child = ServerChild::start(&["--serve-baseline", upstream.url()], &launch).await?;
            (
                Target::new(child.addr, PROVIDER_KEY)?,
                Running::Server(Box::new(child)),
            )
        }
        Counted::NginxProxy => {
            let role = Role::Proxy {
                upstream: upstream.addr(),
            };
            let child = NginxChild::start(&setup.nginx, &setup.target_dir, &role, &launch)?;
            (
                Target::new(child.addr, PROVIDER_KEY)?,
                Running::Nginx(child),
            )
        }
        Counted::Keygate | Counted::KeygateMetricsOff | Counted::KeygateTraced => {
            let extra = match server {
                Counted::KeygateMetricsOff => METRICS_OFF.to_owned(),
                Counted::KeygateTraced => {
                    let otlp =
                        ServerChild::start(&["--serve-otlp-sink"], &Launch::default()).await?;
                    let config = tracing_config(&otlp.url);
                    sink = Some(otlp);
                    config
                }
                _ => String::new(),
            };
            let started = start_gateway(gateway(tag_name(server), extra), &launch).await;
            let gateway = match server {
                Counted::Keygate => started?,
                _ => started.context(bench::OBSERVABILITY_HINT)?,
            };
            let target = Target::new(gateway.process.addr, &gateway.key)?;
            (target, Running::Gateway(Box::new(gateway)))
        }
    };
    let pid = process.pid().context("the counted process has no pid")?;
    let target = std::sync::Arc::new(target);
    let plain = Bytes::from(chat_body(false).to_string());
    let streamed = Bytes::from(chat_body(true).to_string());
    let result = async {
        bench_load::check(std::sync::Arc::clone(&target), &plain, "chat.completion").await?;
        bench_load::check(std::sync::Arc::clone(&target), &streamed, "[DONE]").await?;
        for body in [&plain, &streamed] {
            bench_load::fixed(std::sync::Arc::clone(&target), body, WARM_UP).await?;
        }
        // Let the warm-up's usage writes and lease renewals land first.
        tokio::time::sleep(SETTLE).await;
        let mut windows = Vec::new();
        for body in [&plain, &streamed] {
            control(pid, "--zero")?;
            let started = Instant::now();
            bench_load::fixed(std::sync::Arc::clone(&target), body, REQUESTS).await?;
            tokio::time::sleep(SETTLE).await;
            let instructions = dump(pid, out_dir, tag)?;
            windows.push((instructions, started.elapsed()));
        }
        let idle_length = windows
            .iter()
            .map(|(_, length)| *length)
            .max()
            .unwrap_or(SETTLE);
        control(pid, "--zero")?;
        let idle_started = Instant::now();
        tokio::time::sleep(idle_length).await;
        let idle = dump(pid, out_dir, tag)?;
        let idle_per_second = idle / idle_started.elapsed().as_secs_f64();
        let per_request = |(instructions, length): (f64, Duration)| {
            (instructions - idle_per_second * length.as_secs_f64()).max(0.0) / REQUESTS as f64
        };
        anyhow::Ok(Count {
            plain: per_request(windows[0]),
            streamed: per_request(windows[1]),
            idle_per_second,
        })
    }
    .await;
    process.stop().await;
    if let Some(sink) = sink {
        sink.stop().await;
    }
    result
}

fn tag_name(server: Counted) -> &'static str {
    match server {
        Counted::KeygateMetricsOff => "metrics-off",
        Counted::KeygateTraced => "traced",
        _ => "priced",
    }
}

/// A counted process, whichever kind.
#[derive(Debug)]
enum Running {
    Server(Box<ServerChild>),
    Nginx(NginxChild),
    Gateway(Box<bench::Gateway>),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Server(child) => child.pid(),
            Running::Nginx(child) => Some(child.pid()),
            Running::Gateway(gateway) => gateway.process.pid(),
        }
    }

    async fn stop(self) {
        match self {
            Running::Server(child) => child.stop().await,
            Running::Nginx(child) => child.stop().await,
            Running::Gateway(gateway) => {
                gateway.process.stop().await;
            }
        }
    }
}

/// `callgrind_control ARG PID`.
fn control(pid: u32, arg: &str) -> Result<()> {
    let output = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot run callgrind_control")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {arg} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Dumps the counters since the last zero and returns the `Ir` total of the
/// newest dump file.
fn dump(pid: u32, out_dir: &Path, tag: &str) -> Result<f64> {
    let before = dump_files(out_dir, tag)?;
    control(pid, "--dump")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = dump_files(out_dir, tag)?;
        if let Some(new) = files.iter().find(|file| !before.contains(file)) {
            // The file may still be being written: read it until it has totals.
            if let Some(total) = std::fs::read_to_string(new).ok().and_then(|t| totals(&t)) {
                return Ok(total);
            }
        }
        if Instant::now() > deadline {
            bail!("callgrind wrote no dump for {tag} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dump_files(out_dir: &Path, tag: &str) -> Result<Vec<PathBuf>> {
    let prefix = format!("callgrind.out.{tag}");
    Ok(std::fs::read_dir(out_dir)?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect())
}

/// The first number of a callgrind file's `totals:` (or `summary:`) line.
fn totals(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// valgrind: on `PATH`, or installed now with `apt-get install -y valgrind`.
fn ensure_valgrind() -> Result<PathBuf> {
    let found = || {
        Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !found() {
        eprintln!(
            "bench: valgrind not found; installing Debian's package (apt-get install -y valgrind)"
        );
        bench_nginx::install_package("valgrind")?;
        if !found() {
            bail!("apt-get installed valgrind but `valgrind --version` does not run");
        }
    }
    Ok(PathBuf::from("valgrind"))
}

fn valgrind_version(valgrind: &Path) -> String {
    Command::new(valgrind)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "valgrind (version unknown)".to_owned())
}

/// Whether `perf stat -e instructions true` counts on this machine, as a
/// sentence for the report.
fn perf_counters() -> String {
    let output = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "instructions", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output();
    match output {
        Err(_) => "`perf` is not installed, so only callgrind counts.".to_owned(),
        Ok(output) => {
            let text = String::from_utf8_lossy(&output.stderr);
            let counted = text
                .lines()
                .find(|line| line.contains("instructions"))
                .and_then(|line| line.split(',').next())
                .is_some_and(|value| value.trim().parse::<u64>().is_ok());
            if counted {
                "`perf stat -e instructions true` counts on this machine; this mode still reports callgrind's count, which does not depend on the CPU model.".to_owned()
            } else {
                "`perf stat -e instructions true` answers `<not supported>` on this machine (no hardware counters in this VM), so callgrind is the count.".to_owned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        let text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n1 5\nsummary: 1234\n\ntotals: 987654\n";
        assert_eq!(totals(text), Some(1234.0));
        assert_eq!(totals("events: Ir\ntotals: 42\n"), Some(42.0));
        assert_eq!(totals("events: Ir\n"), None);
    }
}
