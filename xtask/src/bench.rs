//! `bench`: what keygate adds to a request, run by
//! `cargo xtask bench [--quick] [--pin] [--no-write]`.
//!
//! It builds release binaries (re-running itself as the release build), starts
//! the mock upstream and a bare hyper passthrough proxy (the baseline) as
//! processes of this binary, and two `keygate` processes with SQLite databases
//! and real keys: one with billing on a priced model, one with every price at
//! zero. The load generator in this process drives four arms — direct to the
//! mock, baseline, keygate, keygate with zero prices — through the same figures,
//! interleaving them round by round so machine noise hits every arm alike, and
//! prints a Markdown table that it also writes into `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use keygate_test_utils::{
    MOCK_ANTHROPIC_KEY_ENV, MOCK_OPENAI_KEY_ENV, workspace_binary, write_mock_config,
};
use serde_json::{Value, json};

use crate::admin_cli::{admin_json, json_str};
use crate::bench_load::{self, Latency, OpenLoop, Streaming, Target, Throughput};
use crate::bench_report::{self, ARMS, Arm, Meta, Results, Rss};
use crate::bench_serve::{self, Cpu, GatewayChild, ServerChild, rss_kib};

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Default)]
struct Options {
    /// About a minute instead of about five.
    quick: bool,
    /// Pin the processes to CPUs with `taskset`.
    pin: bool,
    /// Print the table without writing `docs/benchmarks.md`.
    no_write: bool,
    /// Hidden: run one of the bench's servers instead.
    serve: Option<Serve>,
}

#[derive(Debug)]
enum Serve {
    Mock,
    Baseline(String),
}

const USAGE: &str = "usage: cargo xtask bench [--quick] [--pin] [--no-write]";

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--pin" => options.pin = true,
                "--no-write" => options.no_write = true,
                "--serve-mock" => options.serve = Some(Serve::Mock),
                "--serve-baseline" => {
                    let upstream = args.next().context("--serve-baseline needs a URL")?;
                    options.serve = Some(Serve::Baseline(upstream.clone()));
                }
                other => bail!("unknown argument {other:?} ({USAGE})"),
            }
        }
        Ok(options)
    }
}

/// How long each figure is measured: every arm runs `rounds` times per figure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rounds: usize,
    sequential: Duration,
    open_loop: Duration,
    closed_loop: Duration,
    streaming: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 2,
                sequential: Duration::from_millis(750),
                open_loop: Duration::from_secs(1),
                closed_loop: Duration::from_secs(1),
                streaming: Duration::from_secs(1),
            }
        } else {
            Plan {
                rounds: 4,
                sequential: Duration::from_secs(2),
                open_loop: Duration::from_secs(4),
                closed_loop: Duration::from_secs(3),
                streaming: Duration::from_secs(3),
            }
        }
    }
}

/// The provider key keygate holds and the direct and baseline arms send.
const PROVIDER_KEY: &str = "sk-bench-provider-key";
const GATEWAY_ENV: [(&str, &str); 2] = [
    (MOCK_OPENAI_KEY_ENV, PROVIDER_KEY),
    (MOCK_ANTHROPIC_KEY_ENV, "sk-ant-bench"),
];
/// A priced model in `write_mock_config`.
const MODEL: &str = "gpt-4o-mini";
/// Credits on each bench account: far more than the bench can spend.
const BALANCE: &str = "1000000";
/// Open-loop rates, requests per second.
const RATES: [u64; 2] = [1_000, 5_000];
const OPEN_LOOP_CONNECTIONS: usize = 50;
const CLOSED_LOOP_CONNECTIONS: usize = 32;
const STREAM_CONNECTIONS: usize = 4;
/// Streamed replies: this many one-word chunks, this far apart.
const STREAM_TOKENS: u64 = 10;
const STREAM_INTERVAL: Duration = Duration::from_millis(5);
/// Streams held open for the memory figure, and how they are paced (long
/// enough that none ends while they are counted).
const OPEN_STREAMS: usize = 1_000;
const OPEN_STREAM_TOKENS: u64 = 150;
const OPEN_STREAM_INTERVAL: Duration = Duration::from_millis(200);
const OPEN_STREAMS_LIMIT: Duration = Duration::from_secs(20);
/// A pause between runs so one arm's tail does not land in the next one's run.
const PAUSE: Duration = Duration::from_millis(200);
/// Set in the release build's environment when the debug build already built it.
const BUILT_ENV: &str = "KEYGATE_BENCH_BUILT";
/// Variables `cargo run` sets for the binary it runs (besides `CARGO_PKG_*`).
const CARGO_RUN_VARS: [&str; 5] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// Runs `cargo xtask bench ARGS`; `Ok(false)` when a run saw failed requests.
pub(crate) fn main(root: &Path, args: &[String]) -> Result<bool> {
    let options = Options::parse(args)?;
    match &options.serve {
        Some(Serve::Mock) => return bench_serve::serve_mock().map(|()| true),
        Some(Serve::Baseline(upstream)) => {
            return bench_serve::serve_baseline(upstream).map(|()| true);
        }
        None => {}
    }
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let profile_dir = exe
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    if !profile_dir.ends_with("release") {
        // Measure release builds only: build them, then run this command again
        // as the release build of this binary.
        build(root, &["xtask", "keygate", "keygate-admin"])?;
        let release = profile_dir
            .parent()
            .context("no target directory")?
            .join("release")
            .join(exe.file_name().context("this binary has no name")?);
        let status = Command::new(&release)
            .arg("bench")
            .args(args)
            .env(BUILT_ENV, "1")
            .status()
            .with_context(|| format!("cannot run {}", release.display()))?;
        return Ok(status.success());
    }
    if std::env::var_os(BUILT_ENV).is_none() {
        build(root, &["keygate", "keygate-admin"])?;
    }
    // Before pinning, which narrows what this process may use.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pins = Pins::new(options.pin, cpus)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let plan = Plan::new(options.quick);
    let mut command = String::from("cargo xtask bench");
    if options.quick {
        command.push_str(" --quick");
    }
    if options.pin {
        command.push_str(" --pin");
    }
    let (results, meta) = runtime.block_on(run(plan, pins, command, cpus))?;
    let markdown = bench_report::markdown(&results, &meta);
    println!("\n{markdown}");
    if options.no_write {
        println!("(--no-write: docs/benchmarks.md left as it was)");
    } else {
        let path = root.join("docs").join("benchmarks.md");
        bench_report::write_section(&path, &markdown)?;
        println!("Written to {}", path.display());
    }
    Ok(results.failures() == 0)
}

/// `cargo build --release --bin …` for `bins`, without the variables `cargo
/// run` gave this process (passed on, they change build-script fingerprints and
/// make every later plain build rebuild half the tree).
fn build(root: &Path, bins: &[&str]) -> Result<()> {
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
struct Pins {
    mock: Cpu,
    proxy: Cpu,
}

impl Pins {
    fn new(pin: bool, cpus: usize) -> Result<Pins> {
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

/// Everything the runs drive.
struct Arms {
    targets: [Arc<Target>; 4],
    pids: [Option<u32>; 4],
}

async fn run(plan: Plan, pins: Pins, command: String, cpus: usize) -> Result<(Results, Meta)> {
    let started = Instant::now();
    let load_before = loadavg();
    println!("Starting the mock upstream, the baseline proxy and two gateways");
    let mut mock = ServerChild::start(&["--serve-mock"], pins.mock).await?;
    let baseline = ServerChild::start(&["--serve-baseline", &mock.url], pins.proxy).await?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let keygate_bin = workspace_binary("keygate");
    let priced = start_gateway(&keygate_bin, dir.path(), "priced", &mock.url, false, pins).await?;
    let zero = start_gateway(&keygate_bin, dir.path(), "zero", &mock.url, true, pins).await?;
    println!(
        "  mock {}, baseline {}, keygate {}, keygate with zero prices {}",
        mock.url, baseline.url, priced.process.url, zero.process.url
    );
    let arms = Arms {
        targets: [
            Arc::new(Target::new(mock.addr, PROVIDER_KEY)?),
            Arc::new(Target::new(baseline.addr, PROVIDER_KEY)?),
            Arc::new(Target::new(priced.process.addr, &priced.key)?),
            Arc::new(Target::new(zero.process.addr, &zero.key)?),
        ],
        pids: [
            None,
            baseline.pid(),
            priced.process.pid(),
            zero.process.pid(),
        ],
    };
    let plain = Bytes::from(chat_body(false).to_string());
    let streamed = Bytes::from(chat_body(true).to_string());
    for arm in ARMS {
        let target = || arm_target(&arms, arm);
        let checked = async {
            bench_load::check(target(), &plain, "chat.completion").await?;
            bench_load::check(target(), &streamed, "[DONE]").await
        };
        checked
            .await
            .with_context(|| format!("the {} arm does not answer as expected", arm.label()))?;
    }
    let mut results = Results::new()?;

    // Memory first, before load has grown any allocator's free lists.
    println!("\nRSS idle and with {OPEN_STREAMS} open streams");
    mock.command(&format!("reply {OPEN_STREAM_TOKENS}")).await?;
    mock.command(&format!(
        "chunk-delay-us {}",
        OPEN_STREAM_INTERVAL.as_micros()
    ))
    .await?;
    for arm in [Arm::Baseline, Arm::Keygate, Arm::KeygateZero] {
        results.rss[arm.index()] = Some(memory(&arms, arm, &streamed).await?);
    }

    mock.command("reply 0").await?;
    mock.command("chunk-delay-us 0").await?;
    println!("\nSequential requests on one keep-alive connection");
    for round in 0..plan.rounds {
        for arm in order(round) {
            let run = bench_load::sequential(arm_target(&arms, arm), &plain, plan.sequential);
            let run: Latency = run.await?;
            progress(round, arm, &format!("p50 {}", micros(&run.histogram, 0.5)));
            results.sequential[arm.index()].merge(&run)?;
            tokio::time::sleep(PAUSE).await;
        }
    }
    for (i, rate) in RATES.into_iter().enumerate() {
        println!("\nOpen loop at {rate} requests/s");
        for round in 0..plan.rounds {
            for arm in order(round) {
                let run: OpenLoop = bench_load::open_loop(
                    arm_target(&arms, arm),
                    &plain,
                    rate,
                    plan.open_loop,
                    OPEN_LOOP_CONNECTIONS,
                )
                .await?;
                progress(
                    round,
                    arm,
                    &format!(
                        "p50 {}  p99 {}  missed {}",
                        micros(&run.latency.histogram, 0.5),
                        micros(&run.latency.histogram, 0.99),
                        run.missed
                    ),
                );
                results.open_loop[i][arm.index()].merge(&run)?;
                tokio::time::sleep(PAUSE).await;
            }
        }
    }
    println!("\nClosed loop, {CLOSED_LOOP_CONNECTIONS} connections");
    for round in 0..plan.rounds {
        for arm in order(round) {
            let server = arms.pids[arm.index()].or(mock.pid());
            let cpu_before = server.map(bench_serve::cpu_micros).transpose()?;
            let run: Throughput = bench_load::closed_loop(
                arm_target(&arms, arm),
                &plain,
                plan.closed_loop,
                CLOSED_LOOP_CONNECTIONS,
            )
            .await?;
            if let (Some(pid), Some(before)) = (server, cpu_before) {
                let used = bench_serve::cpu_micros(pid)?.saturating_sub(before);
                results.closed_loop_cpu_us[arm.index()] += used;
            }
            progress(round, arm, &format!("{:.0} req/s", run.per_second()));
            results.closed_loop[arm.index()].merge(&run);
            tokio::time::sleep(PAUSE).await;
        }
    }
    println!(
        "\nStreams of {STREAM_TOKENS} chunks {} ms apart, {STREAM_CONNECTIONS} connections",
        STREAM_INTERVAL.as_millis()
    );
    mock.command(&format!("reply {STREAM_TOKENS}")).await?;
    mock.command(&format!("chunk-delay-us {}", STREAM_INTERVAL.as_micros()))
        .await?;
    for round in 0..plan.rounds {
        for arm in order(round) {
            let run: Streaming = bench_load::streaming(
                arm_target(&arms, arm),
                &streamed,
                usize::try_from(STREAM_TOKENS)?,
                plan.streaming,
                STREAM_CONNECTIONS,
            )
            .await?;
            progress(
                round,
                arm,
                &format!(
                    "first event p50 {}  token gap p50 {}",
                    micros(&run.first_event, 0.5),
                    micros(&run.token_gaps, 0.5)
                ),
            );
            results.streaming[arm.index()].merge(&run)?;
            tokio::time::sleep(PAUSE).await;
        }
    }
    let measured = started.elapsed();

    // Usage records are written in batches, at most about a second late.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    results.billing = [
        usage(&priced.database_url, &priced.account).await?,
        usage(&zero.database_url, &zero.account).await?,
    ];
    let load_after = loadavg();
    let mut notes = Vec::new();
    for gateway in [&priced, &zero] {
        let log = std::fs::read_to_string(&gateway.process.log).unwrap_or_default();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        if !warnings.is_empty() {
            println!(
                "{} logged {} warning(s) or error(s), e.g.:",
                gateway.name,
                warnings.len()
            );
            for line in warnings.iter().take(3) {
                println!("  {line}");
            }
            notes.push(format!(
                "The {} gateway logged {} warnings or errors.",
                gateway.name,
                warnings.len()
            ));
        }
    }
    for (gateway, name) in [(priced.process, "keygate"), (zero.process, "zero-price")] {
        if !gateway.stop().await {
            notes.push(format!(
                "The {name} gateway did not exit cleanly on SIGTERM."
            ));
        }
    }
    baseline.stop().await;
    mock.stop().await;
    let meta = Meta {
        command,
        cpus,
        load_before,
        load_after,
        commit: commit(),
        rustc: rustc(),
        measured,
        rounds: plan.rounds,
        pinned: pins.proxy.is_some(),
        notes,
    };
    Ok((results, meta))
}

/// A running gateway with its own database, account and key.
struct Gateway {
    name: &'static str,
    process: GatewayChild,
    database_url: String,
    account: String,
    key: String,
}

async fn start_gateway(
    bin: &Path,
    dir: &Path,
    name: &'static str,
    mock_url: &str,
    zero_prices: bool,
    pins: Pins,
) -> Result<Gateway> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let database_url = format!("sqlite://{}", dir.join("keygate.db").display());
    let config = write_mock_config(&dir, mock_url, &database_url)
        .with_context(|| format!("cannot write {name}/keygate.toml"))?;
    if zero_prices {
        set_prices_to_zero(&config)?;
    }
    let log: PathBuf = dir.join("keygate.log");
    let process = GatewayChild::start(bin, &config, &GATEWAY_ENV, log, pins.proxy).await?;
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

/// RSS of `arm`'s process idle and with `OPEN_STREAMS` streams open.
async fn memory(arms: &Arms, arm: Arm, body: &Bytes) -> Result<Rss> {
    let pid = arms.pids[arm.index()].context("the process has no pid")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = rss_kib(pid)?;
    let streams = bench_load::open_streams(
        arm_target(arms, arm),
        body,
        OPEN_STREAMS,
        OPEN_STREAMS_LIMIT,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open_kib = rss_kib(pid)?;
    let rss = Rss {
        idle_kib,
        open_kib,
        streams: streams.ready,
        failed: OPEN_STREAMS - streams.ready,
    };
    streams.close().await;
    println!(
        "  {:<22} idle {:.1} MB, {} streams open {:.1} MB ({} failed)",
        arm.label(),
        bench_report::kib_to_mb(idle_kib),
        rss.streams,
        bench_report::kib_to_mb(open_kib),
        rss.failed
    );
    // Let the gateway settle the hung-up streams before the next arm runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(rss)
}

/// The arms in round `round`'s order: rotated, so no arm always runs first.
fn order(round: usize) -> [Arm; 4] {
    let mut arms = ARMS;
    arms.rotate_left(round % ARMS.len());
    arms
}

fn arm_target(arms: &Arms, arm: Arm) -> Arc<Target> {
    Arc::clone(&arms.targets[arm.index()])
}

fn progress(round: usize, arm: Arm, what: &str) {
    println!("  round {} {:<22} {what}", round + 1, arm.label());
}

fn micros(histogram: &hdrhistogram::Histogram<u64>, quantile: f64) -> String {
    format!(
        "{:.1} µs",
        histogram.value_at_quantile(quantile) as f64 / 1000.0
    )
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something about a fox."}],
    })
}

/// Usage records and their cost for `account`, from `keygate-admin usage report`.
async fn usage(database_url: &str, account: &str) -> Result<(u64, i64)> {
    let report = admin_json(database_url, &["usage", "report", "--account", account]).await?;
    Ok((
        report["total"]["requests"].as_u64().unwrap_or_default(),
        report["total"]["cost_micros"].as_i64().unwrap_or_default(),
    ))
}

/// The three load averages from `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn commit() -> String {
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

fn rustc() -> String {
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
