//! `[metrics]`: whether the gateway keeps Prometheus metrics, whether they
//! carry the per-key families, and where `/metrics` is served (the gateway's
//! port, or a listener of its own).

use std::net::SocketAddr;

use anyhow::anyhow;
use keygate_config::RawMetrics;
use keygate_proxy::MetricsSettings;

/// `[metrics]`, validated.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Metrics {
    /// What the gateway keeps.
    pub(crate) settings: MetricsSettings,
    /// A listener of its own for `/metrics`, when set.
    pub(crate) listen: Option<SocketAddr>,
}

pub(super) fn metrics(raw: Option<&RawMetrics>) -> anyhow::Result<Metrics> {
    let Some(raw) = raw else {
        return Ok(Metrics::default());
    };
    let enabled = raw.enabled.unwrap_or(true);
    let listen = match raw.listen.as_deref() {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            anyhow!(
                "metrics.listen: {text:?} is not an address and port such as \"127.0.0.1:9090\""
            )
        })?),
    };
    if !enabled && (listen.is_some() || raw.per_key == Some(true)) {
        return Err(anyhow!(
            "metrics: enabled = false turns metrics off, so listen and per_key would do nothing; remove them or set enabled = true"
        ));
    }
    Ok(Metrics {
        settings: MetricsSettings {
            enabled,
            on_gateway_port: listen.is_none(),
            per_key: raw.per_key.unwrap_or(false),
        },
        listen,
    })
}
