//! The memory figure: a server's RSS idle and with many streams held open
//! through it, and the same for a priced keygate whose upstream speaks HTTP/2.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;

use crate::bench_load::{self, Target};
use crate::bench_report::{self, Results, Rss, kib_to_mb};
use crate::bench_serve::{self, Launch, ServerChild};
use crate::bench_setup::{GatewaySpec, start_gateway};

/// Streams held open for the memory figure, and how they are paced (long
/// enough that none ends while they are counted).
pub(crate) const OPEN_STREAMS: usize = 1_000;
pub(crate) const OPEN_STREAM_TOKENS: u64 = 150;
pub(crate) const OPEN_STREAM_INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const OPEN_STREAMS_LIMIT: Duration = Duration::from_secs(20);

/// The memory figure of a priced keygate whose upstream is the mock over TLS with
/// HTTP/2 (ALPN h2), as hosted providers are reached: its streams share upstream
/// connections (each capped at [`bench_report::UPSTREAM_STREAM_CAP`] streams, so keygate opens
/// one per 100) instead of holding one each, as they do over the plain HTTP/1.1
/// mock of the other arms. Only memory is measured for it.
pub(crate) async fn h2_upstream_memory(
    mut spec: GatewaySpec,
    mock_launch: &Launch,
    launch: &Launch,
    body: &Bytes,
) -> Result<Rss> {
    let certs = spec.dir.join("h2-upstream-certs");
    std::fs::create_dir_all(&certs)?;
    let certs_arg = certs
        .to_str()
        .context("the temporary directory is not UTF-8")?;
    let mut mock = ServerChild::start(&["--serve-mock-tls", certs_arg], mock_launch).await?;
    // As a hosted provider caps each connection's streams.
    mock.command(&format!(
        "max-streams {}",
        bench_report::UPSTREAM_STREAM_CAP
    ))
    .await?;
    spec.upstream_url = mock.url.clone();
    spec.ca_file = Some(certs.join("ca.pem"));
    let gateway = start_gateway(spec, launch).await?;
    let target = Arc::new(Target::new(gateway.process.addr, &gateway.key)?);
    let pid = gateway.process.pid().context("the process has no pid")?;
    bench_load::check(Arc::clone(&target), body, "[DONE]")
        .await
        .context("it does not stream as expected")?;
    mock.command(&format!("reply {OPEN_STREAM_TOKENS}")).await?;
    mock.command(&format!(
        "chunk-delay-us {}",
        OPEN_STREAM_INTERVAL.as_micros()
    ))
    .await?;
    let rss = memory_of(target, pid, "keygate, h2 upstream", body).await;
    gateway.process.stop().await;
    mock.stop().await;
    rss
}

/// RSS of process `pid` (with its children) idle and with `OPEN_STREAMS`
/// streams open through `target`.
pub(crate) async fn memory_of(
    target: Arc<Target>,
    pid: u32,
    label: &str,
    body: &Bytes,
) -> Result<Rss> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = bench_serve::rss_kib_with_children(pid)?;
    let streams = bench_load::open_streams(target, body, OPEN_STREAMS, OPEN_STREAMS_LIMIT).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open_kib = bench_serve::rss_kib_with_children(pid)?;
    let rss = Rss {
        idle_kib,
        open_kib,
        streams: streams.ready,
        failed: OPEN_STREAMS - streams.ready,
    };
    streams.close().await;
    println!(
        "  {:<22} idle {:.1} MB, {} streams open {:.1} MB ({} failed)",
        label,
        bench_report::kib_to_mb(idle_kib),
        rss.streams,
        bench_report::kib_to_mb(open_kib),
        rss.failed
    );
    // Let the gateway settle the hung-up streams before the next arm runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(rss)
}

/// The memory figures alone, one line an arm (`cargo xtask bench --memory`).
pub(crate) fn memory_summary(results: &Results) -> String {
    let rows = results
        .arms
        .iter()
        .filter_map(|arm| Some((arm.label(), results.rss[arm.index()]?)))
        .chain(
            results
                .rss_h2_upstream
                .map(|rss| ("keygate, h2 upstream", rss)),
        );
    let mut out = String::from(
        "| arm | RSS idle | RSS open | per open stream | failed |\n|---|---:|---:|---:|---:|\n",
    );
    for (label, rss) in rows {
        let per_stream = rss
            .per_stream_kb()
            .map_or_else(|| "—".to_owned(), |kb| format!("{kb:.1} KB"));
        out.push_str(&format!(
            "| {label} | {:.1} MB | {:.1} MB | {per_stream} | {} |\n",
            kib_to_mb(rss.idle_kib),
            kib_to_mb(rss.open_kib),
            rss.failed
        ));
    }
    out
}
