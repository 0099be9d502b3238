//! `[tracing]`: OpenTelemetry traces over OTLP/HTTP, off unless `otlp_endpoint`
//! is set. Header values are secrets: never in a message or in `Debug`.

use anyhow::anyhow;
use keygate_config::RawTracing;
use keygate_proxy::TracingConfig;

use super::duration;

/// `[tracing]`, checked: `None` when tracing is off (no section, or no
/// `otlp_endpoint`).
pub(super) fn tracing(raw: Option<&RawTracing>) -> anyhow::Result<Option<TracingConfig>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(endpoint) = raw.otlp_endpoint.as_deref() else {
        if raw.service_name.is_some()
            || raw.sample_ratio.is_some()
            || raw.timeout.is_some()
            || !raw.headers.is_empty()
        {
            return Err(anyhow!(
                "tracing.otlp_endpoint: not set, so tracing is off and the other [tracing] keys do nothing; set it to the collector's base URL, like \"http://127.0.0.1:4318\", or remove the section"
            ));
        }
        return Ok(None);
    };
    let mut config = TracingConfig::new(endpoint);
    if let Some(name) = &raw.service_name {
        config.service_name.clone_from(name);
    }
    if let Some(ratio) = raw.sample_ratio {
        config.sample_ratio = ratio;
    }
    config.timeout = duration::parse(
        "tracing.timeout",
        raw.timeout.as_deref(),
        TracingConfig::DEFAULT_TIMEOUT,
    )?;
    config.headers = raw
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    config
        .validate()
        .map_err(|e| anyhow!("{}: {}", e.field, e.message))?;
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn raw(endpoint: Option<&str>) -> RawTracing {
        RawTracing {
            otlp_endpoint: endpoint.map(str::to_owned),
            service_name: None,
            sample_ratio: None,
            timeout: None,
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn off_without_a_section_or_an_endpoint() {
        assert!(tracing(None).unwrap().is_none());
        assert!(tracing(Some(&raw(None))).unwrap().is_none());
        let stray = RawTracing {
            sample_ratio: Some(0.5),
            ..raw(None)
        };
        let err = tracing(Some(&stray)).unwrap_err().to_string();
        assert!(err.starts_with("tracing.otlp_endpoint"), "{err}");
    }

    #[test]
    fn defaults_and_values() {
        let config = tracing(Some(&raw(Some("http://127.0.0.1:4318"))))
            .unwrap()
            .unwrap();
        assert_eq!(config.service_name, "keygate");
        assert_eq!(config.sample_ratio, 1.0);
        assert_eq!(config.timeout, TracingConfig::DEFAULT_TIMEOUT);
        let mut headers = BTreeMap::new();
        headers.insert("x-honeycomb-team".to_owned(), "otlp-secret-1".to_owned());
        let full = RawTracing {
            service_name: Some("gw-eu".into()),
            sample_ratio: Some(0.25),
            timeout: Some("2s".into()),
            headers,
            ..raw(Some("https://otel.example:4318/"))
        };
        let config = tracing(Some(&full)).unwrap().unwrap();
        assert_eq!(config.service_name, "gw-eu");
        assert_eq!(config.sample_ratio, 0.25);
        assert_eq!(config.timeout.as_secs(), 2);
        let shown = format!("{config:?}");
        assert!(
            shown.contains("x-honeycomb-team") && !shown.contains("otlp-secret-1"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            (raw(Some("127.0.0.1:4318")), "tracing.otlp_endpoint"),
            (raw(Some("ftp://c:4318")), "tracing.otlp_endpoint"),
            (raw(Some("http://u:pw@c:4318")), "tracing.otlp_endpoint"),
            (raw(Some("http://c:4318/?k=v")), "tracing.otlp_endpoint"),
            (
                RawTracing {
                    sample_ratio: Some(1.5),
                    ..raw(Some("http://c:4318"))
                },
                "tracing.sample_ratio",
            ),
            (
                RawTracing {
                    sample_ratio: Some(f64::NAN),
                    ..raw(Some("http://c:4318"))
                },
                "tracing.sample_ratio",
            ),
            (
                RawTracing {
                    service_name: Some(" ".into()),
                    ..raw(Some("http://c:4318"))
                },
                "tracing.service_name",
            ),
            (
                RawTracing {
                    timeout: Some("soon".into()),
                    ..raw(Some("http://c:4318"))
                },
                "tracing.timeout",
            ),
        ];
        for (raw, key) in cases {
            let err = tracing(Some(&raw)).unwrap_err().to_string();
            assert!(err.starts_with(key), "{key}: {err}");
            assert!(!err.contains("pw"), "{err}");
        }
        let mut headers = BTreeMap::new();
        headers.insert("bad header".to_owned(), "v".to_owned());
        let bad = RawTracing {
            headers,
            ..raw(Some("http://c:4318"))
        };
        let err = tracing(Some(&bad)).unwrap_err().to_string();
        assert!(err.starts_with("tracing.headers.bad header"), "{err}");
        let mut headers = BTreeMap::new();
        headers.insert("authorization".to_owned(), "Bearer a\nb-secret".to_owned());
        let bad = RawTracing {
            headers,
            ..raw(Some("http://c:4318"))
        };
        let err = tracing(Some(&bad)).unwrap_err().to_string();
        assert!(
            err.starts_with("tracing.headers.authorization") && !err.contains("b-secret"),
            "{err}"
        );
    }
}
