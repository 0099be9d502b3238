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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(enabled: Option<bool>, listen: Option<&str>, per_key: Option<bool>) -> RawMetrics {
        RawMetrics {
            enabled,
            listen: listen.map(str::to_owned),
            per_key,
        }
    }

    #[test]
    fn metrics_are_on_the_gateway_port_by_default() {
        let m = metrics(None).unwrap();
        assert_eq!(m.settings, MetricsSettings::default());
        assert!(m.settings.enabled && m.settings.on_gateway_port && !m.settings.per_key);
        assert_eq!(m.listen, None);
    }

    #[test]
    fn listen_moves_them_off_the_gateway_port() {
        let m = metrics(Some(&raw(None, Some("127.0.0.1:9090"), Some(true)))).unwrap();
        assert_eq!(m.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(!m.settings.on_gateway_port);
        assert!(m.settings.per_key);
    }

    #[test]
    fn bad_settings_are_named() {
        let e = metrics(Some(&raw(None, Some("localhost"), None))).unwrap_err();
        assert!(e.to_string().starts_with("metrics.listen:"), "{e}");
        let e = metrics(Some(&raw(Some(false), None, Some(true)))).unwrap_err();
        assert!(e.to_string().contains("enabled = false"), "{e}");
        let off = metrics(Some(&raw(Some(false), None, None))).unwrap();
        assert!(!off.settings.enabled);
    }
}
