//! `bench`: what keygate adds to a request, run by `cargo xtask bench [--quick]
//! [--pin] [--no-write] [--upstream mock|nginx] [--observability] [--callgrind]`.
//!
//! It builds release binaries (re-running itself as the release build), starts
//! the upstream (the mock, a process of this binary, or nginx with canned
//! answers), a bare hyper passthrough proxy (the baseline, a process of this
//! binary), nginx as a reverse proxy with upstream keep-alive, and two
//! `keygate` processes with SQLite databases and real keys: one with billing on
//! a priced model, one with every price at zero (`--observability` adds one
//! with metrics off and one exporting spans to an OTLP sink). The load
//! generator in this process drives the arms through the same figures,
//! interleaving them round by round so machine noise hits every arm alike, and
//! prints a Markdown table that it also writes into `docs/benchmarks.md`.
//! `--callgrind` instead counts instructions per request (`bench_callgrind`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use keygate_test_utils::workspace_binary;

mod runs;

use crate::bench_load::{self, Target};
use crate::bench_memory::{self, OPEN_STREAM_INTERVAL, OPEN_STREAM_TOKENS, OPEN_STREAMS};
use crate::bench_nginx::{self, NginxChild, Role};
use crate::bench_report::{self, ARM_COUNT, ARMS, Arm, Meta, OBSERVABILITY_ARMS, Results, Rss};
use crate::bench_serve::{self, Launch, ServerChild};
use crate::bench_setup::{
    Gateway, GatewaySpec, METRICS_OFF, OBSERVABILITY_HINT, PROVIDER_KEY, Pins, Upstream, build,
    chat_body, commit, loadavg, nginx_version, refusal, rustc, start_gateway, tracing_config,
    usage,
};

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Default)]
struct Options {
    /// About a minute instead of about five.
    quick: bool,
    /// Pin the processes to CPUs with `taskset`.
    pin: bool,
    /// Print the table without writing `docs/benchmarks.md`.
    no_write: bool,
    /// `--upstream nginx`: nginx's canned answers instead of the mock.
    nginx_upstream: bool,
    /// Add the `keygate, metrics off` and `keygate, traced` arms.
    pub(crate) observability: bool,
    /// Count instructions per request under callgrind instead of the load runs.
    callgrind: bool,
    /// Only the memory figures (RSS idle and with open streams), printed and
    /// never written: about 20 seconds.
    memory: bool,
    /// `KEYGATE_BENCH_WRAP`, split at spaces: a program (and its arguments) the
    /// priced keygate runs under with `--memory`, e.g. `valgrind --tool=dhat`
    /// for a heap profile.
    wrap: Vec<String>,
    /// Hidden: run one of the bench's servers instead.
    serve: Option<Serve>,
}

#[derive(Debug)]
enum Serve {
    /// The mock upstream; over TLS when it names a directory for its CA.
    Mock(Option<PathBuf>),
    Baseline(String),
    OtlpSink,
}

pub(crate) const USAGE: &str = "usage: cargo xtask bench [--quick] [--pin] [--no-write] [--upstream mock|nginx] [--observability] [--callgrind] [--memory]";

impl Options {
    /// `args` after `bench`; `wrap` is `KEYGATE_BENCH_WRAP`'s value.
    fn parse(args: &[String], wrap: Option<&str>) -> Result<Options> {
        let mut options = Options {
            wrap: wrap.map_or_else(Vec::new, |wrap| {
                wrap.split_whitespace().map(str::to_owned).collect()
            }),
            ..Options::default()
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--pin" => options.pin = true,
                "--no-write" => options.no_write = true,
                "--observability" => options.observability = true,
                "--callgrind" => options.callgrind = true,
                "--memory" => options.memory = true,
                "--upstream" => match args.next().map(String::as_str) {
                    Some("mock") => options.nginx_upstream = false,
                    Some("nginx") => options.nginx_upstream = true,
                    other => bail!("--upstream takes mock or nginx, not {other:?} ({USAGE})"),
                },
                "--serve-mock" => options.serve = Some(Serve::Mock(None)),
                "--serve-mock-tls" => {
                    let dir = args.next().context("--serve-mock-tls needs a directory")?;
                    options.serve = Some(Serve::Mock(Some(PathBuf::from(dir))));
                }
                "--serve-otlp-sink" => options.serve = Some(Serve::OtlpSink),
                "--serve-baseline" => {
                    let upstream = args.next().context("--serve-baseline needs a URL")?;
                    options.serve = Some(Serve::Baseline(upstream.clone()));
                }
                other => bail!("unknown argument {other:?} ({USAGE})"),
            }
        }
        if options.memory && options.callgrind {
            bail!("--memory and --callgrind are two different runs: pick one ({USAGE})");
        }
        if options.memory && options.nginx_upstream {
            bail!(
                "--memory measures streams over the mock, which nginx's canned answers cannot hold open: drop --upstream nginx"
            );
        }
        if options.serve.is_some() {
            // A server of the run's (the mock, the baseline) inherits the
            // run's environment; the wrapper is the gateway's, not its.
            options.wrap.clear();
        } else if !options.wrap.is_empty() && !options.memory {
            bail!(
                "KEYGATE_BENCH_WRAP is for --memory runs: a wrapped keygate's load figures would be the wrapper's"
            );
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

/// Open-loop rates, requests per second.
const RATES: [u64; 2] = [1_000, 5_000];
const OPEN_LOOP_CONNECTIONS: usize = 50;
const CLOSED_LOOP_CONNECTIONS: usize = 32;
const STREAM_CONNECTIONS: usize = 4;
/// Streamed replies: this many one-word chunks, this far apart.
const STREAM_TOKENS: u64 = 10;
const STREAM_INTERVAL: Duration = Duration::from_millis(5);
/// A pause between runs so one arm's tail does not land in the next one's run.
const PAUSE: Duration = Duration::from_millis(200);
/// Set in the release build's environment when the debug build already built it.
const BUILT_ENV: &str = "KEYGATE_BENCH_BUILT";
/// Runs `cargo xtask bench ARGS`; `Ok(false)` when a run saw failed requests.
pub(crate) fn main(root: &Path, args: &[String]) -> Result<bool> {
    let wrap = std::env::var("KEYGATE_BENCH_WRAP").ok();
    let options = Options::parse(args, wrap.as_deref())?;
    match &options.serve {
        Some(Serve::Mock(tls)) => return bench_serve::serve_mock(tls.as_deref()).map(|()| true),
        Some(Serve::Baseline(upstream)) => {
            return bench_serve::serve_baseline(upstream).map(|()| true);
        }
        Some(Serve::OtlpSink) => return bench_serve::serve_otlp_sink().map(|()| true),
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
    let target_dir = profile_dir
        .parent()
        .context("no target directory")?
        .to_path_buf();
    // Before pinning, which narrows what this process may use.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pins = Pins::new(options.pin, cpus)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let plan = Plan::new(options.quick);
    let mut command = String::from("cargo xtask bench");
    for (set, flag) in [
        (options.quick, " --quick"),
        (options.pin, " --pin"),
        (options.nginx_upstream, " --upstream nginx"),
        (options.observability, " --observability"),
        (options.callgrind, " --callgrind"),
    ] {
        if set {
            command.push_str(flag);
        }
    }
    let nginx = bench_nginx::ensure_installed()?;
    let path = root.join("docs").join("benchmarks.md");
    if options.callgrind {
        let setup = crate::bench_callgrind::Setup {
            target_dir,
            nginx,
            observability: options.observability,
            command,
        };
        let (markdown, ok) = runtime.block_on(crate::bench_callgrind::run(setup))?;
        println!("\n{markdown}");
        if options.no_write {
            println!("(--no-write: docs/benchmarks.md left as it was)");
        } else {
            crate::bench_doc::write_section(&path, crate::bench_callgrind::HEADING, &markdown)?;
            println!("Written to {}", path.display());
        }
        return Ok(ok);
    }
    let setup = Setup {
        plan,
        pins,
        command,
        cpus,
        target_dir,
        nginx,
        nginx_upstream: options.nginx_upstream,
        observability: options.observability,
        memory_only: options.memory,
        wrap: options.wrap.clone(),
    };
    let (results, meta) = runtime.block_on(run(setup))?;
    if options.memory {
        println!("\n{}", bench_memory::memory_summary(&results));
        println!("(--memory: docs/benchmarks.md left as it was)");
        return Ok(results.failures() == 0);
    }
    let markdown = bench_report::markdown(&results, &meta);
    println!("\n{markdown}");
    if options.no_write {
        println!("(--no-write: docs/benchmarks.md left as it was)");
    } else {
        crate::bench_doc::write_section(&path, bench_report::HEADING, &markdown)?;
        println!("Written to {}", path.display());
    }
    Ok(results.failures() == 0)
}

/// What one load run is given.
#[derive(Debug)]
struct Setup {
    plan: Plan,
    pins: Pins,
    command: String,
    cpus: usize,
    target_dir: PathBuf,
    nginx: PathBuf,
    nginx_upstream: bool,
    observability: bool,
    /// Skip the load runs: memory only.
    memory_only: bool,
    /// What the priced keygate runs under (empty: nothing).
    wrap: Vec<String>,
}

/// Everything the runs drive, per arm (indexed by `Arm::index`).
#[derive(Debug)]
struct Arms {
    active: Vec<Arm>,
    targets: [Option<Arc<Target>>; ARM_COUNT],
    pids: [Option<u32>; ARM_COUNT],
}

async fn run(setup: Setup) -> Result<(Results, Meta)> {
    let Setup {
        plan,
        pins,
        command,
        cpus,
        target_dir,
        nginx,
        nginx_upstream,
        observability,
        memory_only,
        wrap,
    } = setup;
    let started = Instant::now();
    let load_before = loadavg();
    println!("Starting the upstream, the baseline proxy, the nginx proxy and the gateways");
    let mut upstream = if nginx_upstream {
        let role = Role::Upstream {
            tokens: STREAM_TOKENS,
        };
        Upstream::Nginx(NginxChild::start(
            &nginx,
            &target_dir,
            &role,
            &Launch::pinned(pins.mock),
        )?)
    } else {
        Upstream::Mock(Box::new(
            ServerChild::start(&["--serve-mock"], &Launch::pinned(pins.mock)).await?,
        ))
    };
    let proxy_launch = Launch::pinned(pins.proxy);
    let baseline = ServerChild::start(&["--serve-baseline", upstream.url()], &proxy_launch).await?;
    let nginx_proxy = NginxChild::start(
        &nginx,
        &target_dir,
        &Role::Proxy {
            upstream: upstream.addr(),
        },
        &proxy_launch,
    )?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let keygate_bin = workspace_binary("keygate");
    let upstream_url = upstream.url().to_owned();
    let gateway = |name: &'static str, zero: bool, extra: String| GatewaySpec {
        bin: keygate_bin.clone(),
        dir: dir.path().to_path_buf(),
        name,
        upstream_url: upstream_url.clone(),
        zero_prices: zero,
        extra,
        ca_file: None,
    };
    let priced_launch = Launch {
        wrapper: wrap,
        ..proxy_launch.clone()
    };
    let priced = start_gateway(gateway("priced", false, String::new()), &priced_launch).await?;
    let zero = start_gateway(gateway("zero", true, String::new()), &proxy_launch).await?;
    let mut sink = None;
    let mut observed = Vec::new();
    let mut skipped = Vec::new();
    if observability {
        let otlp = ServerChild::start(&["--serve-otlp-sink"], &Launch::pinned(pins.mock)).await?;
        let metrics_off = gateway("metrics-off", false, METRICS_OFF.to_owned());
        let traced = gateway("traced", false, tracing_config(&otlp.url));
        for (arm, spec) in OBSERVABILITY_ARMS.into_iter().zip([metrics_off, traced]) {
            // An arm whose config keys this keygate does not know yet is left
            // out with a note; the other arms still run.
            match start_gateway(spec, &proxy_launch).await {
                Ok(gateway) => observed.push((arm, gateway)),
                Err(e) => {
                    let first = refusal(&format!("{e:#}"));
                    println!("  the {} arm is left out: {first}", arm.label());
                    skipped.push(format!(
                        "The {} arm did not run: {OBSERVABILITY_HINT}, and this one refused its config ({first}).",
                        arm.label()
                    ));
                }
            }
        }
        sink = Some(otlp);
    }
    println!(
        "  upstream {}, baseline {}, nginx proxy {}, keygate {}, keygate with zero prices {}",
        upstream.url(),
        baseline.url,
        nginx_proxy.url,
        priced.process.url,
        zero.process.url
    );
    let mut arms = Arms {
        active: ARMS.to_vec(),
        targets: Default::default(),
        pids: [None; ARM_COUNT],
    };
    let mut add = |arm: Arm, addr, token: &str, pid: Option<u32>| -> Result<()> {
        arms.targets[arm.index()] = Some(Arc::new(Target::new(addr, token)?));
        arms.pids[arm.index()] = pid;
        Ok(())
    };
    add(Arm::Direct, upstream.addr(), PROVIDER_KEY, None)?;
    add(Arm::Baseline, baseline.addr, PROVIDER_KEY, baseline.pid())?;
    add(
        Arm::NginxProxy,
        nginx_proxy.addr,
        PROVIDER_KEY,
        Some(nginx_proxy.pid()),
    )?;
    add(
        Arm::Keygate,
        priced.process.addr,
        &priced.key,
        priced.process.pid(),
    )?;
    add(
        Arm::KeygateZero,
        zero.process.addr,
        &zero.key,
        zero.process.pid(),
    )?;
    for (arm, gateway) in &observed {
        add(
            *arm,
            gateway.process.addr,
            &gateway.key,
            gateway.process.pid(),
        )?;
    }
    arms.active.extend(observed.iter().map(|(arm, _)| *arm));
    let plain = Bytes::from(chat_body(false).to_string());
    let streamed = Bytes::from(chat_body(true).to_string());
    for &arm in &arms.active {
        let target = || arm_target(&arms, arm);
        let checked = async {
            bench_load::check(target()?, &plain, "chat.completion").await?;
            bench_load::check(target()?, &streamed, "[DONE]").await
        };
        checked
            .await
            .with_context(|| format!("the {} arm does not answer as expected", arm.label()))?;
    }
    let mut results = Results::new(arms.active.clone())?;

    // Memory first, before load has grown any allocator's free lists.
    if !nginx_upstream {
        println!("\nRSS idle and with {OPEN_STREAMS} open streams");
        upstream
            .command(&format!("reply {OPEN_STREAM_TOKENS}"))
            .await?;
        upstream
            .command(&format!(
                "chunk-delay-us {}",
                OPEN_STREAM_INTERVAL.as_micros()
            ))
            .await?;
        for &arm in &arms.active {
            if arm != Arm::Direct {
                results.rss[arm.index()] = Some(memory(&arms, arm, &streamed).await?);
            }
        }
        let spec = gateway("h2-upstream", false, String::new());
        results.rss_h2_upstream = Some(
            bench_memory::h2_upstream_memory(
                spec,
                &Launch::pinned(pins.mock),
                &proxy_launch,
                &streamed,
            )
            .await
            .context("the keygate arm with an HTTP/2 upstream")?,
        );
    }

    if !memory_only {
        let mut load = runs::Load {
            plan,
            arms: &arms,
            upstream: &mut upstream,
            plain: &plain,
            streamed: &streamed,
            nginx_upstream,
        };
        load.measure(&mut results).await?;
    }
    let measured = started.elapsed();

    // Usage records are written in batches, at most about a second late.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    results.billing = [
        usage(&priced.database_url, &priced.account).await?,
        usage(&zero.database_url, &zero.account).await?,
    ];
    let load_after = loadavg();
    let mut notes = skipped;
    for gateway in [&priced, &zero]
        .into_iter()
        .chain(observed.iter().map(|(_, gateway)| gateway))
    {
        notes.extend(gateway_warnings(gateway));
    }
    for (name, errors) in [
        ("nginx proxy", nginx_proxy.errors()),
        (
            "nginx upstream",
            match &upstream {
                Upstream::Nginx(nginx) => nginx.errors(),
                Upstream::Mock(_) => Vec::new(),
            },
        ),
    ] {
        if !errors.is_empty() {
            println!("The {name} logged {} error(s), e.g.:", errors.len());
            for line in errors.iter().take(3) {
                println!("  {line}");
            }
            notes.push(format!("The {name} logged {} errors.", errors.len()));
        }
    }
    if let Some(mut sink) = sink {
        let stats = sink.ask("stats").await?;
        let traced = results.arms.contains(&Arm::KeygateTraced);
        if let (true, Some((requests, bytes))) = (traced, parse_sink_stats(&stats)) {
            notes.push(format!(
                "The OTLP sink received {} export requests, {} bytes in all, from the traced gateway.",
                bench_report::thousands(requests as f64),
                bench_report::thousands(bytes as f64)
            ));
        }
        sink.stop().await;
    }
    for gateway in [priced, zero]
        .into_iter()
        .chain(observed.into_iter().map(|(_, gateway)| gateway))
    {
        let name = gateway.name;
        if !gateway.process.stop().await {
            notes.push(format!(
                "The {name} gateway did not exit cleanly on SIGTERM."
            ));
        }
    }
    nginx_proxy.stop().await;
    baseline.stop().await;
    upstream.stop().await;
    let meta = Meta {
        command,
        cpus,
        load_before,
        load_after,
        commit: commit(),
        rustc: rustc(),
        nginx: nginx_version(&nginx),
        nginx_upstream,
        measured,
        rounds: plan.rounds,
        pinned: pins.proxy.is_some(),
        notes,
    };
    Ok((results, meta))
}

/// `ok REQUESTS BYTES` → (requests, bytes).
fn parse_sink_stats(line: &str) -> Option<(u64, u64)> {
    let mut words = line.split_whitespace();
    (words.next()? == "ok").then_some(())?;
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// The warnings and errors in a gateway's log, printed and as a note.
fn gateway_warnings(gateway: &Gateway) -> Option<String> {
    let log = std::fs::read_to_string(&gateway.process.log).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if warnings.is_empty() {
        return None;
    }
    println!(
        "{} logged {} warning(s) or error(s), e.g.:",
        gateway.name,
        warnings.len()
    );
    for line in warnings.iter().take(3) {
        println!("  {line}");
    }
    Some(format!(
        "The {} gateway logged {} warnings or errors.",
        gateway.name,
        warnings.len()
    ))
}

/// RSS of `arm`'s process (with its children) idle and with `OPEN_STREAMS`
/// streams open.
async fn memory(arms: &Arms, arm: Arm, body: &Bytes) -> Result<Rss> {
    let pid = arms.pids[arm.index()].context("the process has no pid")?;
    bench_memory::memory_of(arm_target(arms, arm)?, pid, arm.label(), body).await
}

/// The arms in round `round`'s order: rotated, so no arm always runs first.
fn order(active: &[Arm], round: usize) -> Vec<Arm> {
    let mut arms = active.to_vec();
    let len = arms.len();
    if len > 0 {
        arms.rotate_left(round % len);
    }
    arms
}

fn arm_target(arms: &Arms, arm: Arm) -> Result<Arc<Target>> {
    arms.targets[arm.index()]
        .as_ref()
        .map(Arc::clone)
        .with_context(|| format!("the {} arm has no target", arm.label()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], wrap: Option<&str>) -> Result<Options> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Options::parse(&args, wrap)
    }

    #[test]
    fn memory_runs_take_a_wrapper_and_refuse_what_they_cannot_measure() {
        let options = parse(&["--memory"], Some("valgrind  --tool=dhat")).unwrap();
        assert!(options.memory);
        assert_eq!(options.wrap, ["valgrind", "--tool=dhat"]);
        assert!(parse(&["--memory"], None).unwrap().wrap.is_empty());
        for refused in [
            parse(&["--memory", "--callgrind"], None),
            parse(&["--memory", "--upstream", "nginx"], None),
            parse(&["--quick"], Some("valgrind --tool=dhat")),
        ] {
            assert!(refused.is_err());
        }
        // The run's servers inherit its environment: they ignore the wrapper.
        let mock = parse(&["--serve-mock"], Some("valgrind --tool=dhat")).unwrap();
        assert!(mock.wrap.is_empty());
    }
}
