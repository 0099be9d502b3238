//! The bench's report: each figure for every arm, the added cost (keygate −
//! direct, keygate − baseline) and the ratio, checked against the goals, as the
//! Markdown section `## Gateway overhead (cargo xtask bench)` of
//! `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hdrhistogram::Histogram;

use crate::bench_load::{Latency, OpenLoop, Streaming, Throughput};

/// The four arms, in the order of the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arm {
    Direct,
    Baseline,
    Keygate,
    KeygateZero,
}

pub(crate) const ARMS: [Arm; 4] = [Arm::Direct, Arm::Baseline, Arm::Keygate, Arm::KeygateZero];

impl Arm {
    pub(crate) fn index(self) -> usize {
        match self {
            Arm::Direct => 0,
            Arm::Baseline => 1,
            Arm::Keygate => 2,
            Arm::KeygateZero => 3,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Baseline => "baseline",
            Arm::Keygate => "keygate",
            Arm::KeygateZero => "keygate, zero prices",
        }
    }
}

/// The heading of the section this report owns.
const HEADING: &str = "## Gateway overhead (cargo xtask bench)";

/// Every figure, per arm (indexed by `Arm::index`).
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) sequential: [Latency; 4],
    /// At 1,000 and 5,000 requests per second.
    pub(crate) open_loop: [[OpenLoop; 4]; 2],
    pub(crate) closed_loop: [Throughput; 4],
    /// CPU time (user + system) the serving process used during the closed
    /// loop, in µs; the direct arm counts the mock's.
    pub(crate) closed_loop_cpu_us: [u64; 4],
    pub(crate) streaming: [Streaming; 4],
    /// None for the direct arm: there is no process between client and mock.
    pub(crate) rss: [Option<Rss>; 4],
    /// (usage records, cost in micro-credits) of the priced and zero-price keygate.
    pub(crate) billing: [(u64, i64); 2],
}

impl Results {
    pub(crate) fn new() -> Result<Results> {
        Ok(Results {
            sequential: four(Latency::new)?,
            open_loop: [four(OpenLoop::new)?, four(OpenLoop::new)?],
            closed_loop: [Throughput::default(); 4],
            closed_loop_cpu_us: [0; 4],
            streaming: four(Streaming::new)?,
            rss: [None, None, None, None],
            billing: [(0, 0); 2],
        })
    }

    /// Requests and streams that failed, over every run of every arm.
    pub(crate) fn failures(&self) -> u64 {
        ARMS.iter().map(|&arm| self.failures_of(arm)).sum()
    }

    fn failures_of(&self, arm: Arm) -> u64 {
        let i = arm.index();
        self.sequential[i].errors
            + self.open_loop[0][i].latency.errors
            + self.open_loop[1][i].latency.errors
            + self.closed_loop[i].errors
            + self.streaming[i].errors
            + self.rss[i].as_ref().map_or(0, |rss| rss.failed as u64)
    }
}

fn four<T>(new: impl Fn() -> Result<T>) -> Result<[T; 4]> {
    Ok([new()?, new()?, new()?, new()?])
}

/// A process's memory idle and with many streams open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rss {
    pub(crate) idle_kib: u64,
    pub(crate) open_kib: u64,
    /// Streams that were open when `open_kib` was read.
    pub(crate) streams: usize,
    pub(crate) failed: usize,
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

fn thousands(value: f64) -> String {
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

/// A goal from the issue, checked on the keygate arm (billing on).
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// keygate − direct at most this.
    AddedAtMost(f64),
    /// keygate ÷ baseline at least this.
    TimesBaselineAtLeast(f64),
    /// keygate's own value at most this.
    AtMost(f64),
}

#[derive(Debug)]
struct Row {
    figure: String,
    values: [Option<f64>; 4],
    unit: Unit,
    goal: Option<Goal>,
}

impl Row {
    fn new(figure: impl Into<String>, values: [Option<f64>; 4], unit: Unit) -> Row {
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

    fn minus(&self, other: Arm) -> Option<f64> {
        Some(self.value(Arm::Keygate)? - self.value(other)?)
    }

    fn ratio(&self) -> Option<f64> {
        let baseline = self.value(Arm::Baseline)?;
        (baseline != 0.0).then(|| self.value(Arm::Keygate).unwrap_or(f64::NAN) / baseline)
    }

    /// The goal's text and whether it is met (`None` without a goal or a value).
    fn verdict(&self) -> Option<(String, Option<bool>)> {
        let goal = self.goal?;
        Some(match goal {
            Goal::AddedAtMost(limit) => (
                format!("added ≤ {}", self.unit.show(limit)),
                self.minus(Arm::Direct).map(|added| added <= limit),
            ),
            Goal::TimesBaselineAtLeast(limit) => (
                format!("≥ {limit:.2}× baseline"),
                self.ratio().map(|ratio| ratio >= limit),
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

fn per_arm(value: impl Fn(usize) -> Option<f64>) -> [Option<f64>; 4] {
    [value(0), value(1), value(2), value(3)]
}

fn rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let seq = &results.sequential;
    for (label, q, goal) in [
        ("p50", 0.5, Some(Goal::AddedAtMost(50.0))),
        ("p90", 0.9, None),
        ("p99", 0.99, Some(Goal::AddedAtMost(200.0))),
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
            per_arm(|i| Some(results.closed_loop[i].per_second())),
            Unit::PerSecond,
        )
        .goal(Goal::TimesBaselineAtLeast(0.9)),
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
        .goal(Goal::AddedAtMost(100.0)),
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
            per_arm(|i| {
                rss[i]
                    .filter(|r| r.streams > 0)
                    .map(|r| (r.open_kib as f64 - r.idle_kib as f64) * 1.024 / r.streams as f64)
            }),
            Unit::Kilobytes,
        )
        .goal(Goal::AtMost(32.0)),
    );
    rows.push(Row::new(
        "failed requests (all runs)",
        per_arm(|i| Some(results.failures_of(ARMS[i]) as f64)),
        Unit::Count,
    ));
    rows.push(Row::new(
        "open loop: requests not sent in time",
        per_arm(|i| Some((results.open_loop[0][i].missed + results.open_loop[1][i].missed) as f64)),
        Unit::Count,
    ));
    rows
}

/// The whole section, heading included.
pub(crate) fn markdown(results: &Results, meta: &Meta) -> String {
    let rows = rows(results);
    let mut out = String::new();
    let _ = writeln!(out, "{HEADING}\n");
    let _ = writeln!(
        out,
        "Command: `{}` (release builds; {:.0} s of measurement, {} rounds per figure{}).",
        meta.command,
        meta.measured.as_secs_f64(),
        meta.rounds,
        if meta.pinned {
            ", mock and load generator pinned to CPU 0, proxies to CPU 1"
        } else {
            ", unpinned"
        }
    );
    let _ = writeln!(
        out,
        "Machine: {} cores (`nproc`), load average {} before and {} after, commit {}, rustc {}.\n",
        meta.cpus, meta.load_before, meta.load_after, meta.commit, meta.rustc
    );
    let _ = writeln!(
        out,
        "Arms, all driven by the same load generator (hyper HTTP/1.1 keep-alive connections in the xtask process) and run in turn, round by round in rotating order:\n"
    );
    let _ = writeln!(
        out,
        "- **direct**: straight to the mock upstream (`MockUpstream` in its own process, recording off, instant answers);"
    );
    let _ = writeln!(
        out,
        "- **baseline**: a bare passthrough proxy on keygate's stack (hyper-util server and pooled legacy client, keep-alive; no auth, no billing, body streamed) in front of the mock;"
    );
    let _ = writeln!(
        out,
        "- **keygate**: the `keygate` binary with a SQLite database, a real key and billing on with the default `[billing]` settings (`gpt-4o-mini` is priced, so every request is held against the balance, settled and written as a usage record), request log at `info` to a file;"
    );
    let _ = writeln!(
        out,
        "- **keygate, zero prices**: the same with every price at 0.0 (nothing to hold; usage still recorded).\n"
    );
    let _ = writeln!(
        out,
        "| figure | direct | baseline | keygate | keygate, zero prices | keygate − direct | keygate − baseline | keygate ÷ baseline | goal (keygate) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut met = 0;
    let mut missed = Vec::new();
    for row in &rows {
        let cell = |value: Option<f64>| value.map_or_else(|| "—".to_owned(), |v| row.unit.show(v));
        let difference = |value: Option<f64>| {
            value.map_or_else(|| "—".to_owned(), |v| row.unit.show_difference(v))
        };
        let ratio = match row.unit {
            Unit::Count => "—".to_owned(),
            _ => row
                .ratio()
                .filter(|r| r.is_finite())
                .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×")),
        };
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
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {ratio} | {goal} |",
            row.figure,
            cell(row.value(Arm::Direct)),
            cell(row.value(Arm::Baseline)),
            cell(row.value(Arm::Keygate)),
            cell(row.value(Arm::KeygateZero)),
            difference(row.minus(Arm::Direct)),
            difference(row.minus(Arm::Baseline)),
        );
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
    let _ = writeln!(out, "\nHow the figures are taken:\n");
    for note in [
        "Latencies are percentiles of each arm's own distribution; the difference columns subtract percentiles (the added latency at that percentile), they are not percentiles of per-request differences. Histograms are HdrHistogram at nanosecond resolution, shown in µs.",
        "Sequential: one keep-alive connection, the next request sent when the last answer has been read (20 warm-up requests first).",
        "Open loop: requests are scheduled at a fixed rate by a timer thread and taken by the first free of 50 connections; latency runs from the scheduled send time, so queueing behind a stall is counted (no coordinated omission). It includes the load generator's own lateness (the timer thread's wake-up and the hand-over to a connection's task), alike for every arm.",
        "Closed loop: 32 connections, each sending its next request as soon as the last is answered; the first tenth of each run is not counted.",
        "Streams: chat completions with `\"stream\": true`; the mock (with `TCP_NODELAY`) sends a role chunk at once, then 10 one-word chunks 5 ms apart; 4 connections. First event: from sending the request to the first SSE event. Gap between tokens: between consecutive content chunks.",
        "RSS: `VmRSS` from `/proc/PID/status` of the proxy process, idle after start and a few requests, then with 1,000 streams open at once (each on its own connection, chunks 200 ms apart), read before any other load; per open stream = (open − idle) ÷ streams. MB and KB are 10^6 and 10^3 bytes.",
        "The load generator, the mock and the proxy share the machine's cores, so absolute figures include their contention; compare arms within a run.",
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

/// Replaces this report's section in the file at `path` (from its heading to
/// the next `## ` heading), or appends it; other sections stay as they are.
pub(crate) fn write_section(path: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let updated = replace_section(&text, section);
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))
}

fn replace_section(text: &str, section: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|line| line.trim_end() == HEADING);
    let section = section.trim_end();
    match start {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|line| line.starts_with("## "))
                .map_or(lines.len(), |offset| start + 1 + offset);
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(section);
            out.push('\n');
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].join("\n"));
                out.push('\n');
            }
            out
        }
        None => {
            let mut out = text.trim_end().to_owned();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(section);
            out.push('\n');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_own_section() {
        let doc = "# Benchmarks\n\n## Other\n\nkeep\n\n## Gateway overhead (cargo xtask bench)\n\nold\n\n## Later\n\nkeep too\n";
        let new = "## Gateway overhead (cargo xtask bench)\n\nnew\n";
        let out = replace_section(doc, new);
        assert_eq!(
            out,
            "# Benchmarks\n\n## Other\n\nkeep\n\n## Gateway overhead (cargo xtask bench)\n\nnew\n\n## Later\n\nkeep too\n"
        );
        assert_eq!(replace_section(&out, new), out);
    }

    #[test]
    fn appends_when_missing() {
        let out = replace_section(
            "# Benchmarks\n\n## Other\n\nkeep\n",
            "## Gateway overhead (cargo xtask bench)\n\nnew\n",
        );
        assert_eq!(
            out,
            "# Benchmarks\n\n## Other\n\nkeep\n\n## Gateway overhead (cargo xtask bench)\n\nnew\n"
        );
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(Unit::Micros.show_difference(-3.26), "−3.3 µs");
        assert_eq!(Unit::PerSecond.show(12345.0), "12,345/s");
    }
}
