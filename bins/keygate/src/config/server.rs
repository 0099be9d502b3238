//! How the gateway listens and serves: `listen`, `[tls]`, `shutdown_grace`,
//! `log_format`, `max_body_bytes` and `[server]` (connection limits and client
//! deadlines).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use keygate_config::{RawServer, RawTls};
use keygate_proxy::{ServerOptions, defaults};

use super::duration;

/// Listen address when nothing sets one.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable key=value lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// TLS files.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// PEM certificate chain.
    pub(crate) cert: PathBuf,
    /// PEM private key.
    pub(crate) key: PathBuf,
}

/// `listen` (or its override), else [`DEFAULT_LISTEN`].
pub(super) fn listen(text: Option<&str>) -> anyhow::Result<SocketAddr> {
    let text = text.unwrap_or(DEFAULT_LISTEN);
    text.parse().map_err(|_| {
        anyhow!("listen: {text:?} is not an address; write it like \"127.0.0.1:8080\" or \"0.0.0.0:8080\"")
    })
}

/// `shutdown_grace`, 30 s by default.
pub(super) fn shutdown_grace(text: Option<&str>) -> anyhow::Result<Duration> {
    duration::parse("shutdown_grace", text, Duration::from_secs(30))
}

/// `log_format`: `"text"` (the default) or `"json"`.
pub(super) fn log_format(text: Option<&str>) -> anyhow::Result<LogFormat> {
    match text {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => bail!("log_format: {other:?} is not a format; use \"text\" or \"json\""),
    }
}

/// `[tls]`, its paths relative to the config file's directory `base_dir`. The files
/// are read at start (and by `--check`).
pub(super) fn tls(raw: Option<RawTls>, base_dir: &Path) -> Option<TlsFiles> {
    raw.map(|t| TlsFiles {
        cert: base_dir.join(t.cert),
        key: base_dir.join(t.key),
    })
}

/// `max_body_bytes`, more than 0.
pub(super) fn max_body_bytes(value: Option<usize>) -> anyhow::Result<usize> {
    let max_body_bytes = value.unwrap_or(defaults::MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        bail!("max_body_bytes: must be more than 0");
    }
    Ok(max_body_bytes)
}

/// `[server]`: the server's options (its TLS is set at start, from the files)
/// and `body_read_timeout`, which the proxy reads bodies under.
pub(super) fn connections(
    raw: Option<&RawServer>,
    grace: Duration,
) -> anyhow::Result<(ServerOptions, Duration)> {
    let empty = RawServer::default();
    let raw = raw.unwrap_or(&empty);
    let max_connections = raw.max_connections.unwrap_or_else(default_max_connections);
    if max_connections == 0 {
        bail!("server.max_connections: must be more than 0");
    }
    let http2_max_concurrent_streams = raw
        .http2_max_concurrent_streams
        .unwrap_or(defaults::HTTP2_MAX_CONCURRENT_STREAMS);
    if http2_max_concurrent_streams == 0 {
        bail!("server.http2_max_concurrent_streams: must be more than 0");
    }
    let workers = raw.workers.unwrap_or_else(default_workers);
    if !(1..=MAX_WORKERS).contains(&workers) {
        bail!("server.workers: must be from 1 to {MAX_WORKERS}");
    }
    let options = ServerOptions {
        workers,
        tls: None,
        grace,
        max_connections,
        header_read_timeout: duration::parse(
            "server.header_read_timeout",
            raw.header_read_timeout.as_deref(),
            defaults::HEADER_READ_TIMEOUT,
        )?,
        keepalive_timeout: duration::parse(
            "server.keepalive_timeout",
            raw.keepalive_timeout.as_deref(),
            defaults::KEEPALIVE_TIMEOUT,
        )?,
        http2_max_concurrent_streams,
        http2_keepalive_interval: duration::parse(
            "server.http2_keepalive_interval",
            raw.http2_keepalive_interval.as_deref(),
            defaults::HTTP2_KEEPALIVE_INTERVAL,
        )?,
        http2_keepalive_timeout: duration::parse(
            "server.http2_keepalive_timeout",
            raw.http2_keepalive_timeout.as_deref(),
            defaults::HTTP2_KEEPALIVE_TIMEOUT,
        )?,
    };
    let body_read_timeout = duration::parse(
        "server.body_read_timeout",
        raw.body_read_timeout.as_deref(),
        defaults::BODY_READ_TIMEOUT,
    )?;
    Ok((options, body_read_timeout))
}

/// Most worker threads `server.workers` takes.
const MAX_WORKERS: usize = 1024;

/// One worker thread per CPU this process may run on (1 when unknown).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
}

/// Half the process's soft descriptor limit, at most
/// [`defaults::MAX_CONNECTIONS`]: each client connection holds a descriptor and
/// its forwarded request may hold a second, upstream, while the store's pool
/// and the listener need a few more. Without a readable limit (not Linux, or
/// unlimited), the default itself.
fn default_max_connections() -> usize {
    open_files_limit().map_or(defaults::MAX_CONNECTIONS, |limit| {
        (limit / 2).clamp(1, defaults::MAX_CONNECTIONS)
    })
}

/// The soft `Max open files` limit, from `/proc/self/limits`.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
