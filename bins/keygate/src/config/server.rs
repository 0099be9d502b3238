//! How the gateway listens and serves: `listen`, `[tls]`, `shutdown_grace`,
//! `log_format` and `max_body_bytes`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use keygate_config::RawTls;
use keygate_proxy::defaults;

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
