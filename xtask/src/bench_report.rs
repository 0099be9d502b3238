//! The bench's report: each figure for every arm, the added cost and the ratio
//! of keygate over the nginx proxy and over the bare baseline, checked against
//! issue 16's goals, as the Markdown section
//! `## Gateway overhead (cargo xtask bench)` of `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;

use crate::bench_load::{Latency, OpenLoop, Streaming, Throughput};

/// The arms, in the order of the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arm {
    Direct,
    Baseline,
    NginxProxy,
    Keygate,
    KeygateZero,
    /// keygate with `[metrics] enabled = false` (`--observability`).
    KeygateMetricsOff,
    /// keygate exporting spans to the OTLP sink (`--observability`).
    KeygateTraced,
}

/// How many arms there are; per-arm arrays have this length.
pub(crate) const ARM_COUNT: usize = 7;

/// The arms every run drives.
pub(crate) const ARMS: [Arm; 5] = [
    Arm::Direct,
    Arm::Baseline,
    Arm::NginxProxy,
    Arm::Keygate,
    Arm::KeygateZero,
];

/// The arms `--observability` adds.
pub(crate) const OBSERVABILITY_ARMS: [Arm; 2] = [Arm::KeygateMetricsOff, Arm::KeygateTraced];

impl Arm {
    pub(crate) fn index(self) -> usize {
        match self {
            Arm::Direct => 0,
            Arm::Baseline => 1,
            Arm::NginxProxy => 2,
            Arm::Keygate => 3,
            Arm::KeygateZero => 4,
            Arm::KeygateMetricsOff => 5,
            Arm::KeygateTraced => 6,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Baseline => "baseline",
            Arm::NginxProxy => "nginx proxy",
            Arm::Keygate => "keygate",
            Arm::KeygateZero => "keygate, zero prices",
            Arm::KeygateMetricsOff => "keygate, metrics off",
            Arm::KeygateTraced => "keygate, traced",
        }
    }
}

/// The heading of the section this report owns.
pub(crate) const HEADING: &str = "## Gateway overhead (cargo xtask bench)";

/// Every figure, per arm (indexed by `Arm::index`; arms not run stay empty).
#[derive(Debug)]
pub(crate) struct Results {
    /// The arms run, in column order.
    pub(crate) arms: Vec<Arm>,
    pub(crate) sequential: [Latency; ARM_COUNT],
    /// At 1,000 and 5,000 requests per second.
    pub(crate) open_loop: [[OpenLoop; ARM_COUNT]; 2],
    pub(crate) closed_loop: [Throughput; ARM_COUNT],
    /// CPU time (user + system) the serving process (with its children: nginx's
    /// workers) used during the closed loop, in µs; the direct arm counts the
    /// upstream's.
    pub(crate) closed_loop_cpu_us: [u64; ARM_COUNT],
    pub(crate) streaming: [Streaming; ARM_COUNT],
    /// None for the direct arm: there is no process between client and upstream.
    pub(crate) rss: [Option<Rss>; ARM_COUNT],
    /// The priced keygate's memory with an HTTP/2 upstream (the mock over TLS).
    pub(crate) rss_h2_upstream: Option<Rss>,
    /// (usage records, cost in micro-credits) of the priced and zero-price keygate.
    pub(crate) billing: [(u64, i64); 2],
}

impl Results {
    pub(crate) fn new(arms: Vec<Arm>) -> Result<Results> {
        Ok(Results {
            arms,
            sequential: each(Latency::new)?,
            open_loop: [each(OpenLoop::new)?, each(OpenLoop::new)?],
            closed_loop: [Throughput::default(); ARM_COUNT],
            closed_loop_cpu_us: [0; ARM_COUNT],
            streaming: each(Streaming::new)?,
            rss: [None; ARM_COUNT],
            rss_h2_upstream: None,
            billing: [(0, 0); 2],
        })
    }

    /// Requests and streams that failed, over every run of every arm.
    pub(crate) fn failures(&self) -> u64 {
        self.arms.iter().map(|&arm| self.failures_of(arm)).sum()
    }

    fn failures_of(&self, arm: Arm) -> u64 {
        let i = arm.index();
        self.sequential[i].errors
            + self.open_loop[0][i].latency.errors
            + self.open_loop[1][i].latency.errors
            + self.closed_loop[i].errors
            + self.streaming[i].errors
            + self.rss[i].as_ref().map_or(0, |rss| rss.failed as u64)
            + match arm {
                Arm::Keygate => self.rss_h2_upstream.map_or(0, |rss| rss.failed as u64),
                _ => 0,
            }
    }
}

fn each<T>(new: impl Fn() -> Result<T>) -> Result<[T; ARM_COUNT]> {
    Ok([new()?, new()?, new()?, new()?, new()?, new()?, new()?])
}

/// The HTTP/2 stream cap of the mock's connections in the HTTP/2 memory run:
/// the `SETTINGS_MAX_CONCURRENT_STREAMS` hosted providers set.
pub(crate) const UPSTREAM_STREAM_CAP: u32 = 100;

/// A process's memory idle and with many streams open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rss {
    pub(crate) idle_kib: u64,
    pub(crate) open_kib: u64,
    /// Streams that were open when `open_kib` was read.
    pub(crate) streams: usize,
    pub(crate) failed: usize,
}

impl Rss {
    /// (open − idle) ÷ streams, in KB (10^3 bytes); `None` with no stream open.
    pub(crate) fn per_stream_kb(&self) -> Option<f64> {
        (self.streams > 0)
            .then(|| (self.open_kib as f64 - self.idle_kib as f64) * 1.024 / self.streams as f64)
    }
}

/// Where and how the figures were taken.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) command: String,
    pub(crate) cpus: usize,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) commit: String,
    pub(crate) rustc: String,
    /// `nginx version: …`.
    pub(crate) nginx: String,
    /// `true` with `--upstream nginx`.
    pub(crate) nginx_upstream: bool,
    pub(crate) measured: Duration,
    pub(crate) rounds: usize,
    pub(crate) pinned: bool,
    pub(crate) notes: Vec<String>,
}

/// KiB (as `/proc` counts) to MB (10^6 bytes).
pub(crate) fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Micros,
    PerSecond,
    Megabytes,
    Kilobytes,
    Count,
}

impl Unit {
    fn show(self, value: f64) -> String {
        match self {
            Unit::Micros => format!("{value:.1} µs"),
            Unit::PerSecond => format!("{}/s", thousands(value)),
            Unit::Megabytes => format!("{value:.1} MB"),
            Unit::Kilobytes => format!("{value:.1} KB"),
            Unit::Count => thousands(value),
        }
    }

    fn show_difference(self, value: f64) -> String {
        let shown = self.show(value.abs());
        if value < 0.0 {
            format!("−{shown}")
        } else {
            format!("+{shown}")
        }
    }
}

pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 {
        format!("−{out}")
    } else {
        out
    }
}

/// A goal from issue 16, checked on the keygate arm (billing on).
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// keygate − that arm at most this.
    AddedOverAtMost(Arm, f64),
    /// keygate ÷ that arm at least this.
    TimesAtLeast(Arm, f64),
    /// keygate's own value at most this.
    AtMost(f64),
}

#[derive(Debug)]
struct Row {
    figure: String,
    values: [Option<f64>; ARM_COUNT],
    unit: Unit,
    goal: Option<Goal>,
}

impl Row {
    fn new(figure: impl Into<String>, values: [Option<f64>; ARM_COUNT], unit: Unit) -> Row {
        Row {
            figure: figure.into(),
            values,
            unit,
            goal: None,
        }
    }

    fn goal(mut self, goal: Goal) -> Row {
        self.goal = Some(goal);
        self
    }

    fn value(&self, arm: Arm) -> Option<f64> {
        self.values[arm.index()]
    }

    /// `arm` − `other`.
    fn minus(&self, arm: Arm, other: Arm) -> Option<f64> {
        Some(self.value(arm)? - self.value(other)?)
    }

    /// `arm` ÷ `other`, when both are there and `other` is not 0.
    fn ratio(&self, arm: Arm, other: Arm) -> Option<f64> {
        let other = self.value(other)?;
        let ratio = self.value(arm)? / other;
        (other != 0.0 && ratio.is_finite()).then_some(ratio)
    }

    /// The goal's text and whether it is met (`None` without a goal or a value).
    fn verdict(&self) -> Option<(String, Option<bool>)> {
        let goal = self.goal?;
        Some(match goal {
            Goal::AddedOverAtMost(over, limit) => (
                format!("≤ {} over {}", self.unit.show(limit), over.label()),
                self.minus(Arm::Keygate, over).map(|added| added <= limit),
            ),
            Goal::TimesAtLeast(of, limit) => (
                format!("≥ {limit:.2}× {}", of.label()),
                self.ratio(Arm::Keygate, of).map(|ratio| ratio >= limit),
            ),
            Goal::AtMost(limit) => (
                format!("≤ {}", self.unit.show(limit)),
                self.value(Arm::Keygate).map(|value| value <= limit),
            ),
        })
    }
}

fn quantile(histogram: &Histogram<u64>, q: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64 / 1000.0)
}

fn per_arm(value: impl Fn(usize) -> Option<f64>) -> [Option<f64>; ARM_COUNT] {
    std::array::from_fn(value)
}

fn rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let seq = &results.sequential;
    for (label, q, goal) in [
        (
            "p50",
            0.5,
            Some(Goal::AddedOverAtMost(Arm::NginxProxy, 50.0)),
        ),
        ("p90", 0.9, None),
        (
            "p99",
            0.99,
            Some(Goal::AddedOverAtMost(Arm::NginxProxy, 100.0)),
        ),
        ("p99.9", 0.999, None),
    ] {
        let row = Row::new(
            format!("sequential latency {label}"),
            per_arm(|i| quantile(&seq[i].histogram, q)),
            Unit::Micros,
        );
        rows.push(match goal {
            Some(goal) => row.goal(goal),
            None => row,
        });
    }
    for (runs, rate) in results.open_loop.iter().zip(["1k", "5k"]) {
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            rows.push(Row::new(
                format!("open loop {rate} req/s, latency {label}"),
                per_arm(|i| quantile(&runs[i].latency.histogram, q)),
                Unit::Micros,
            ));
        }
    }
    rows.push(
        Row::new(
            "closed loop throughput",
            per_arm(|i| {
                let run = &results.closed_loop[i];
                (run.completed > 0).then(|| run.per_second())
            }),
            Unit::PerSecond,
        )
        .goal(Goal::TimesAtLeast(Arm::NginxProxy, 0.9)),
    );
    rows.push(Row::new(
        "closed loop: server CPU per request",
        per_arm(|i| {
            let done = results.closed_loop[i].completed;
            (done > 0 && results.closed_loop_cpu_us[i] > 0)
                .then(|| results.closed_loop_cpu_us[i] as f64 / done as f64)
        }),
        Unit::Micros,
    ));
    let streams = &results.streaming;
    rows.push(
        Row::new(
            "stream: first event p50",
            per_arm(|i| quantile(&streams[i].first_event, 0.5)),
            Unit::Micros,
        )
        .goal(Goal::AddedOverAtMost(Arm::Baseline, 50.0)),
    );
    rows.push(Row::new(
        "stream: first event p99",
        per_arm(|i| quantile(&streams[i].first_event, 0.99)),
        Unit::Micros,
    ));
    for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(Row::new(
            format!("stream: gap between tokens {label}"),
            per_arm(|i| quantile(&streams[i].token_gaps, q)),
            Unit::Micros,
        ));
    }
    let rss = &results.rss;
    rows.push(
        Row::new(
            "RSS idle",
            per_arm(|i| rss[i].map(|r| kib_to_mb(r.idle_kib))),
            Unit::Megabytes,
        )
        .goal(Goal::AtMost(30.0)),
    );
    rows.push(Row::new(
        "RSS with 1,000 open streams",
        per_arm(|i| rss[i].map(|r| kib_to_mb(r.open_kib))),
        Unit::Megabytes,
    ));
    rows.push(
        Row::new(
            "RSS per open stream",
            per_arm(|i| rss[i].and_then(|r| r.per_stream_kb())),
            Unit::Kilobytes,
        )
        .goal(Goal::AtMost(32.0)),
    );
    rows.push(Row::new(
        "failed requests (all runs)",
        per_arm(|i| {
            let arm = results.arms.iter().find(|arm| arm.index() == i)?;
            Some(results.failures_of(*arm) as f64)
        }),
        Unit::Count,
    ));
    rows.push(Row::new(
        "open loop: requests not sent in time",
        per_arm(|i| {
            results.arms.iter().find(|arm| arm.index() == i)?;
            Some((results.open_loop[0][i].missed + results.open_loop[1][i].missed) as f64)
        }),
        Unit::Count,
    ));
    rows
}

/// A derived column: `arm` − `other` or `arm` ÷ `other`.
#[derive(Debug, Clone, Copy)]
enum Derived {
    Minus(Arm, Arm),
    Ratio(Arm, Arm),
}

impl Derived {
    fn heading(self) -> String {
        match self {
            Derived::Minus(a, b) => format!("{} − {}", a.label(), b.label()),
            Derived::Ratio(a, b) => format!("{} ÷ {}", a.label(), b.label()),
        }
    }

    fn cell(self, row: &Row) -> String {
        let none = || "—".to_owned();
        match self {
            Derived::Minus(a, b) => row
                .minus(a, b)
                .map_or_else(none, |v| row.unit.show_difference(v)),
            Derived::Ratio(_, _) if matches!(row.unit, Unit::Count) => none(),
            Derived::Ratio(a, b) => row.ratio(a, b).map_or_else(none, |r| format!("{r:.2}×")),
        }
    }
}

/// The whole section, heading included.
pub(crate) fn markdown(results: &Results, meta: &Meta) -> String {
    let rows = rows(results);
    let arms = &results.arms;
    let mut derived = vec![
        Derived::Minus(Arm::Keygate, Arm::NginxProxy),
        Derived::Ratio(Arm::Keygate, Arm::NginxProxy),
        Derived::Minus(Arm::Keygate, Arm::Baseline),
        Derived::Ratio(Arm::Keygate, Arm::Baseline),
    ];
    if arms.contains(&Arm::KeygateMetricsOff) {
        derived.push(Derived::Ratio(Arm::Keygate, Arm::KeygateMetricsOff));
    }
    if arms.contains(&Arm::KeygateTraced) {
        derived.push(Derived::Ratio(Arm::KeygateTraced, Arm::Keygate));
    }
    let upstream = if meta.nginx_upstream {
        "the nginx upstream"
    } else {
        "the mock"
    };
    let mut out = String::new();
    let _ = writeln!(out, "{HEADING}\n");
    let _ = writeln!(
        out,
        "Command: `{}` (release builds; {:.0} s of measurement, {} rounds per figure{}).",
        meta.command,
        meta.measured.as_secs_f64(),
        meta.rounds,
        if meta.pinned {
            ", upstream and load generator pinned to CPU 0, proxies to CPU 1"
        } else {
            ", unpinned"
        }
    );
    let _ = writeln!(
        out,
        "Machine: {} cores (`nproc`), `/proc/loadavg` {} before and {} after, commit {}, rustc {}, {}.\n",
        meta.cpus, meta.load_before, meta.load_after, meta.commit, meta.rustc, meta.nginx
    );
    let _ = writeln!(
        out,
        "Arms, all driven by the same load generator (hyper HTTP/1.1 keep-alive connections in the xtask process) and run in turn, round by round in rotating order:\n"
    );
    if meta.nginx_upstream {
        let _ = writeln!(
            out,
            "- **direct**: straight to the upstream, an nginx server (`--upstream nginx`) answering `return 200` with a canned chat completion with `usage`, or a canned SSE stream of 10 tokens and a usage chunk (all at once) for `Accept: text/event-stream`;"
        );
    } else {
        let _ = writeln!(
            out,
            "- **direct**: straight to the upstream, the mock (`MockUpstream` in its own process, recording off, instant answers; the default `--upstream mock`);"
        );
    }
    let _ = writeln!(
        out,
        "- **baseline**: a bare passthrough proxy on keygate's stack (hyper-util server and pooled legacy client, keep-alive; no auth, no billing, body streamed) in front of {upstream};"
    );
    let _ = writeln!(
        out,
        "- **nginx proxy**: Debian's nginx as a reverse proxy in front of {upstream} (`proxy_pass` to an `upstream` block with `keepalive 64`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, `proxy_buffering off`, `access_log off`, `worker_processes auto`: one worker per core, as keygate runs one worker thread per core, `[server] workers`);"
    );
    let _ = writeln!(
        out,
        "- **keygate**: the `keygate` binary with a SQLite database, a real key and billing on with the default `[billing]` settings (`gpt-4o-mini` is priced, so every request is held against the balance, settled and written as a usage record), request log at `info` to a file;"
    );
    let mut described = vec![(
        Arm::KeygateZero,
        "the same with every price at 0.0 (nothing to hold; usage still recorded)",
    )];
    if arms.contains(&Arm::KeygateMetricsOff) {
        described.push((
            Arm::KeygateMetricsOff,
            "keygate with `[metrics] enabled = false` (`--observability`; the keygate arm keeps the default, metrics on)",
        ));
    }
    if arms.contains(&Arm::KeygateTraced) {
        described.push((
            Arm::KeygateTraced,
            "keygate with `[tracing] otlp_endpoint` at the bench's OTLP sink (`--observability`; a process that answers every POST 200 with an empty body and counts bytes)",
        ));
    }
    let last = described.len() - 1;
    for (i, (arm, text)) in described.into_iter().enumerate() {
        let end = if i == last { ".\n" } else { ";" };
        let _ = writeln!(out, "- **{}**: {text}{end}", arm.label());
    }
    let mut heading = String::from("| figure |");
    let mut rule = String::from("|---|");
    for arm in arms {
        let _ = write!(heading, " {} |", arm.label());
        rule.push_str("---:|");
    }
    for column in &derived {
        let _ = write!(heading, " {} |", column.heading());
        rule.push_str("---:|");
    }
    heading.push_str(" goal (keygate) |");
    rule.push_str("---|");
    let _ = writeln!(out, "{heading}\n{rule}");
    let mut met = 0;
    let mut missed = Vec::new();
    for row in &rows {
        let goal = match row.verdict() {
            None => String::new(),
            Some((text, Some(true))) => {
                met += 1;
                format!("{text}: pass")
            }
            Some((text, Some(false))) => {
                missed.push(format!("{} ({text})", row.figure));
                format!("{text}: **FAIL**")
            }
            Some((text, None)) => {
                missed.push(format!("{} ({text}, not measured)", row.figure));
                format!("{text}: not measured")
            }
        };
        let mut line = format!("| {} |", row.figure);
        for &arm in arms {
            let cell = row
                .value(arm)
                .map_or_else(|| "—".to_owned(), |v| row.unit.show(v));
            let _ = write!(line, " {cell} |");
        }
        for column in &derived {
            let _ = write!(line, " {} |", column.cell(row));
        }
        let _ = writeln!(out, "{line} {goal} |");
    }
    let _ = writeln!(out);
    if missed.is_empty() {
        let _ = writeln!(out, "Goals: all {met} met.");
    } else {
        let _ = writeln!(
            out,
            "Goals: {met} of {} met; not met: {}.",
            met + missed.len(),
            missed.join("; ")
        );
    }
    let priced = results.closed_loop[Arm::Keygate.index()].per_second();
    let zero = results.closed_loop[Arm::KeygateZero.index()].per_second();
    let [(priced_records, priced_cost), (zero_records, zero_cost)] = results.billing;
    let _ = writeln!(
        out,
        "\nBilling's throughput cost (closed loop, same run): keygate with billing on serves {:.2}× the requests/s of keygate with zero prices ({} vs {} req/s). The priced gateway recorded {} usage records costing {} micro-credits; the zero-price one {} records costing {}.",
        if zero > 0.0 { priced / zero } else { f64::NAN },
        thousands(priced),
        thousands(zero),
        thousands(priced_records as f64),
        thousands(priced_cost as f64),
        thousands(zero_records as f64),
        thousands(zero_cost as f64),
    );
    if let Some(rss) = results.rss_h2_upstream {
        let per_stream = rss.per_stream_kb().unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "\nWith an HTTP/2 upstream (same run, measured after the arms above): the priced keygate with the mock served over TLS with ALPN h2, so that its streams share upstream connections, as they do with a hosted provider, instead of each holding its own as on the plain HTTP/1.1 mock of the table; the mock caps each connection at {} streams, as providers do, and keygate opens another past its default `streams_per_connection` of 100: RSS per open stream **{per_stream:.1} KB** (idle {:.1} MB, {} streams open {:.1} MB, {} failed); goal ≤ 32.0 KB: {}.",
            UPSTREAM_STREAM_CAP,
            kib_to_mb(rss.idle_kib),
            thousands(rss.streams as f64),
            kib_to_mb(rss.open_kib),
            rss.failed,
            if per_stream <= 32.0 {
                "pass"
            } else {
                "**FAIL**"
            },
        );
    }
    let _ = writeln!(out, "\nHow the figures are taken:\n");
    let stream_note = if meta.nginx_upstream {
        "Streams: chat completions with `\"stream\": true` (and `Accept: text/event-stream`, which the nginx upstream answers with its canned stream, all events at once, so the gaps between tokens are not measured); 4 connections, all driven by one client thread (as for sequential requests). First event: from sending the request to the first SSE event."
    } else {
        "Streams: chat completions with `\"stream\": true`; the mock (with `TCP_NODELAY`) sends a role chunk at once, then 10 one-word chunks 5 ms apart; 4 connections, all driven by one client thread (as for sequential requests). First event: from sending the request to the first SSE event. Gap between tokens: between consecutive content chunks."
    };
    let rss_note = if meta.nginx_upstream {
        "RSS: not measured with `--upstream nginx` (its canned stream ends at once, so no stream can be held open)."
    } else {
        "RSS: `VmRSS` from `/proc/PID/status` of the proxy process (nginx: master and workers added up), idle after start and a few requests, then with 1,000 streams open at once (each on its own connection, chunks 200 ms apart), read before any other load; per open stream = (open − idle) ÷ streams. MB and KB are 10^6 and 10^3 bytes."
    };
    for note in [
        "Each ratio and difference is between two arms of this one run. Latencies are percentiles of each arm's own distribution; the difference columns subtract percentiles (the added latency at that percentile), they are not percentiles of per-request differences. Histograms are HdrHistogram at nanosecond resolution, shown in µs.",
        "Sequential: one keep-alive connection, the next request sent when the last answer has been read (20 warm-up requests first). The client runs on a thread of its own with a current-thread runtime, so the connection's hyper task and the request waiting on it are polled by one thread: no wake-up between two of the load generator's threads is in the latency.",
        "Open loop: requests are scheduled at a fixed rate by a timer thread and taken by the first free of 50 connections; latency runs from the scheduled send time, so queueing behind a stall is counted (no coordinated omission). It includes the load generator's own lateness (the timer thread's wake-up and the hand-over to a connection's task), alike for every arm.",
        "Closed loop: 32 connections (as the issue's wrk), each sending its next request as soon as the last is answered; the first tenth of each run is not counted. Server CPU per request: user + system time of the serving process (nginx: master and workers) from `/proc/PID/stat` over the run ÷ requests answered.",
        stream_note,
        rss_note,
        "The load generator, the upstream and the proxy share the machine's cores, so absolute figures include their contention; compare arms within a run.",
    ] {
        let _ = writeln!(out, "- {note}");
    }
    let mut lateness = crate::bench_load::histogram().ok();
    if let Some(lateness) = lateness.as_mut() {
        for runs in &results.open_loop {
            for run in runs {
                let _ = lateness.add(&run.dispatch_lateness);
            }
        }
    }
    if let Some(lateness) = lateness.filter(|l| !l.is_empty()) {
        let _ = writeln!(
            out,
            "- In this run the open loop's timer thread queued requests {:.1} µs (p50) and {:.1} µs (p99) after their scheduled time: the load generator's own share of the open-loop latencies.",
            lateness.value_at_quantile(0.5) as f64 / 1000.0,
            lateness.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    for note in &meta.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(Unit::Micros.show_difference(-3.26), "−3.3 µs");
        assert_eq!(Unit::PerSecond.show(12345.0), "12,345/s");
    }
}
