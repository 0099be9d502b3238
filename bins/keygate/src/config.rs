//! `keygate.toml`: read raw with `deny_unknown_fields`, then validated into the
//! proxy's typed settings. Every error names the file, the field and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use keygate_billing::{DEFAULT_OUTPUT_RESERVE, Price, PriceTable, ReservationRule};
use keygate_keys::KeyPrefix;
use keygate_proxy::{
    AuthSettings, BillingConfig, ProviderKey, ProviderKind, ProxyConfig, UpstreamConfig,
    UpstreamTimeouts, defaults,
};
use serde::Deserialize;

/// The default config file, read when present.
pub(crate) const DEFAULT_FILE: &str = "keygate.toml";
/// Listen address when nothing sets one.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Database when nothing sets one.
pub(crate) const DEFAULT_DATABASE_URL: &str = "sqlite://keygate.db";

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    database_url: Option<String>,
    key_prefix: Option<String>,
    key_query_param: Option<String>,
    max_body_bytes: Option<usize>,
    shutdown_grace: Option<String>,
    log_format: Option<String>,
    tls: Option<RawTls>,
    timeouts: Option<RawTimeouts>,
    auth_cache: Option<RawAuthCache>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
    billing: Option<RawBilling>,
    privacy: Option<RawPrivacy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    allow_unpriced: Option<bool>,
    default_output_reserve: Option<u64>,
    usage_retention_days: Option<u32>,
    reservation_ttl: Option<String>,
    batch_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    log_client_ip: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    first_byte: Option<String>,
    idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthCache {
    ttl: Option<String>,
    negative_ttl: Option<String>,
    capacity: Option<u64>,
    poll_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    base_url: String,
    kind: RawKind,
    api_key_env: Option<String>,
    models: Vec<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Openai,
    Anthropic,
}

/// Prices in credits per million tokens; read by the billing layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    /// Input tokens.
    pub(crate) input_per_mtok: f64,
    /// Output tokens.
    pub(crate) output_per_mtok: f64,
    /// Cached input tokens, where the provider reports them.
    pub(crate) cached_input_per_mtok: Option<f64>,
}

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

/// The validated configuration.
#[derive(Debug)]
pub(crate) struct Config {
    /// Where it came from, for messages.
    pub(crate) source: String,
    /// Listen address.
    pub(crate) listen: SocketAddr,
    /// Database URL (may hold a password: show it only through `DatabaseUrl`).
    pub(crate) database_url: String,
    /// TLS, when set.
    pub(crate) tls: Option<TlsFiles>,
    /// Grace period for in-flight requests at shutdown.
    pub(crate) shutdown_grace: Duration,
    /// Log format.
    pub(crate) log_format: LogFormat,
    /// The proxy's settings.
    pub(crate) proxy: ProxyConfig,
    /// Upstreams skipped because their key variable is unset (built-in defaults only).
    pub(crate) skipped: Vec<String>,
    /// Billing: prices, reservations, retention.
    pub(crate) billing: BillingConfig,
}

/// Variables the environment can override.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `KEYGATE_LISTEN`.
    pub(crate) listen: Option<String>,
    /// `KEYGATE_DATABASE_URL`.
    pub(crate) database_url: Option<String>,
}

/// Loads `path` (or `keygate.toml` if present, else built-in defaults), applies the
/// overrides and validates. `env` reads provider keys.
pub(crate) fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    let (raw, source, base_dir, builtin) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {}", path.display()))?;
            (
                parse(&text, path)?,
                path.display().to_string(),
                dir_of(path),
                false,
            )
        }
        None if Path::new(DEFAULT_FILE).is_file() => {
            let path = Path::new(DEFAULT_FILE);
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the config file {DEFAULT_FILE}"))?;
            (
                parse(&text, path)?,
                DEFAULT_FILE.to_owned(),
                PathBuf::from("."),
                false,
            )
        }
        None => (
            builtin_defaults(),
            "built-in defaults".to_owned(),
            PathBuf::from("."),
            true,
        ),
    };
    validate(raw, overrides, env, &source, &base_dir, builtin).map_err(|e| anyhow!("{source}: {e}"))
}

fn parse(text: &str, path: &Path) -> anyhow::Result<RawConfig> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().to_owned();
        let at = e
            .span()
            .map(|span| {
                let line = text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        anyhow!("{}{at}: {message}", path.display())
    })
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// With no config file: OpenAI and Anthropic, each used when its key variable is set.
fn builtin_defaults() -> RawConfig {
    let upstream = |name: &str, base_url: &str, kind, env: &str, models: &[&str]| RawUpstream {
        name: name.to_owned(),
        base_url: base_url.to_owned(),
        kind,
        api_key_env: Some(env.to_owned()),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        ca_file: None,
    };
    RawConfig {
        upstreams: vec![
            upstream(
                "openai",
                "https://api.openai.com/v1",
                RawKind::Openai,
                "OPENAI_API_KEY",
                &[
                    "gpt-*",
                    "o1*",
                    "o3*",
                    "o4*",
                    "chatgpt-*",
                    "text-embedding-*",
                    "dall-e-*",
                    "tts-*",
                    "whisper-*",
                ],
            ),
            upstream(
                "anthropic",
                "https://api.anthropic.com/v1",
                RawKind::Anthropic,
                "ANTHROPIC_API_KEY",
                &["claude-*"],
            ),
        ],
        prices: BUILTIN_PRICES
            .iter()
            .map(|&(model, input, output, cached)| {
                let price = RawPrice {
                    input_per_mtok: input,
                    output_per_mtok: output,
                    cached_input_per_mtok: Some(cached),
                };
                (model.to_owned(), price)
            })
            .collect(),
        ..RawConfig::default()
    }
}

/// Prices used without a config file: the providers' list prices in US dollars
/// per million tokens (input, output, cached input) as published in 2025, so a
/// first run bills in dollars. A `keygate.toml` sets its own `[prices]`.
const BUILTIN_PRICES: &[(&str, f64, f64, f64)] = &[
    ("gpt-4o", 2.5, 10.0, 1.25),
    ("gpt-4o-mini", 0.15, 0.6, 0.075),
    ("gpt-4.1", 2.0, 8.0, 0.5),
    ("gpt-4.1-mini", 0.4, 1.6, 0.1),
    ("gpt-4.1-nano", 0.1, 0.4, 0.025),
    ("o3", 2.0, 8.0, 0.5),
    ("o4-mini", 1.1, 4.4, 0.275),
    ("text-embedding-3-small", 0.02, 0.0, 0.02),
    ("text-embedding-3-large", 0.13, 0.0, 0.13),
    ("claude-sonnet-4-5", 3.0, 15.0, 0.3),
    ("claude-haiku-4-5", 1.0, 5.0, 0.1),
    ("claude-opus-4-1", 15.0, 75.0, 1.5),
];

fn duration(field: &str, value: Option<&str>, default: Duration) -> anyhow::Result<Duration> {
    match value {
        None => Ok(default),
        Some(text) => {
            let parsed = humantime::parse_duration(text).map_err(|_| {
                anyhow!("{field}: {text:?} is not a duration; write it like \"30s\", \"500ms\" or \"10m\"")
            })?;
            if parsed.is_zero() {
                bail!("{field}: must be more than zero");
            }
            Ok(parsed)
        }
    }
}

fn validate(
    raw: RawConfig,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    source: &str,
    base_dir: &Path,
    builtin: bool,
) -> anyhow::Result<Config> {
    let listen_text = overrides
        .listen
        .clone()
        .or(raw.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        anyhow!("listen: {listen_text:?} is not an address; write it like \"127.0.0.1:8080\" or \"0.0.0.0:8080\"")
    })?;
    let database_url = overrides
        .database_url
        .clone()
        .or(raw.database_url)
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    keygate_store::DatabaseUrl::parse(&database_url).map_err(|e| anyhow!("database_url: {e}"))?;
    let prefix_text = raw.key_prefix.unwrap_or_else(|| "kg".to_owned());
    let key_prefix = KeyPrefix::new(&prefix_text).map_err(|e| {
        anyhow!("key_prefix: {e}; it must match the prefix keygate-admin issues keys with")
    })?;
    let query_param = match raw.key_query_param {
        None => Some("api-key".to_owned()),
        Some(p) if p.is_empty() => None,
        Some(p)
            if p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(p)
        }
        Some(p) => bail!(
            "key_query_param: {p:?} may only hold letters, digits, '-' and '_' (or be \"\" to turn query keys off)"
        ),
    };
    let shutdown_grace = duration(
        "shutdown_grace",
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(30),
    )?;
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => bail!("log_format: {other:?} is not a format; use \"text\" or \"json\""),
    };
    let tls = raw.tls.map(|t| TlsFiles {
        cert: base_dir.join(t.cert),
        key: base_dir.join(t.key),
    });
    let timeouts = raw.timeouts.as_ref();
    let timeouts = UpstreamTimeouts {
        connect: duration(
            "timeouts.connect",
            timeouts.and_then(|t| t.connect.as_deref()),
            defaults::CONNECT_TIMEOUT,
        )?,
        first_byte: duration(
            "timeouts.first_byte",
            timeouts.and_then(|t| t.first_byte.as_deref()),
            defaults::FIRST_BYTE_TIMEOUT,
        )?,
        idle: duration(
            "timeouts.idle",
            timeouts.and_then(|t| t.idle.as_deref()),
            defaults::IDLE_TIMEOUT,
        )?,
    };
    let mut auth = AuthSettings::default();
    if let Some(cache) = &raw.auth_cache {
        auth.cache_ttl = duration("auth_cache.ttl", cache.ttl.as_deref(), auth.cache_ttl)?;
        auth.negative_ttl = duration(
            "auth_cache.negative_ttl",
            cache.negative_ttl.as_deref(),
            auth.negative_ttl,
        )?;
        auth.poll_interval = duration(
            "auth_cache.poll_interval",
            cache.poll_interval.as_deref(),
            auth.poll_interval,
        )?;
        if auth.poll_interval > Duration::from_secs(1) {
            bail!(
                "auth_cache.poll_interval: at most 1s, so a revocation takes effect within a second"
            );
        }
        if let Some(capacity) = cache.capacity {
            if capacity == 0 {
                bail!("auth_cache.capacity: must be more than 0");
            }
            auth.cache_capacity = capacity;
        }
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        bail!("max_body_bytes: must be more than 0");
    }

    let mut upstreams = Vec::new();
    let mut skipped = Vec::new();
    for (i, up) in raw.upstreams.into_iter().enumerate() {
        let field = format!("upstreams[{i}]");
        let provider_key = match &up.api_key_env {
            None => None,
            Some(var) => match env(var).filter(|v| !v.is_empty()) {
                Some(key) => Some(ProviderKey::new(key)),
                None if builtin => {
                    skipped.push(format!("{} skipped: set {var} to use it", up.name));
                    continue;
                }
                None => bail!(
                    "{field}.api_key_env: the environment variable {var} is not set; export the provider key as {var}, or remove api_key_env for an upstream that needs no key"
                ),
            },
        };
        upstreams.push(UpstreamConfig {
            name: up.name,
            base_url: up.base_url,
            kind: match up.kind {
                RawKind::Openai => ProviderKind::OpenAi,
                RawKind::Anthropic => ProviderKind::Anthropic,
            },
            provider_key,
            models: up.models,
            ca_file: up.ca_file.map(|p| base_dir.join(p)),
        });
    }
    let mut prices = PriceTable::new();
    for (model, price) in &raw.prices {
        let price = Price::from_credits(
            price.input_per_mtok,
            price.output_per_mtok,
            price.cached_input_per_mtok,
        )
        .map_err(|e| {
            anyhow!("prices.\"{model}\": the {e}; write a number of credits per million tokens, 0 or more")
        })?;
        prices.insert(model.clone(), price);
    }
    let raw_billing = raw.billing.as_ref();
    let allow_unpriced = raw_billing.and_then(|b| b.allow_unpriced).unwrap_or(false);
    if !allow_unpriced {
        // A model named exactly must have a price; a pattern is checked per request.
        for (i, upstream) in upstreams.iter().enumerate() {
            for model in &upstream.models {
                if !model.ends_with('*') && prices.get(model).is_none() {
                    bail!(
                        "upstreams[{i}].models: the model {model:?} has no price; add [prices.\"{model}\"] with input_per_mtok and output_per_mtok, or set [billing] allow_unpriced = true to serve unpriced models free of charge"
                    );
                }
            }
        }
    }
    let mut billing = BillingConfig::new(prices);
    billing.allow_unpriced = allow_unpriced;
    billing.rule = ReservationRule {
        default_output_reserve: raw_billing
            .and_then(|b| b.default_output_reserve)
            .unwrap_or(DEFAULT_OUTPUT_RESERVE),
    };
    if let Some(days) = raw_billing.and_then(|b| b.usage_retention_days) {
        billing.usage_retention = match days {
            0 => None,
            days => Some(Duration::from_secs(u64::from(days) * 86_400)),
        };
    }
    billing.reservation_ttl = duration(
        "billing.reservation_ttl",
        raw_billing.and_then(|b| b.reservation_ttl.as_deref()),
        billing.reservation_ttl,
    )?;
    billing.batch_window = match raw_billing.and_then(|b| b.batch_window.as_deref()) {
        Some("0") | Some("0s") => Duration::ZERO,
        other => duration("billing.batch_window", other, billing.batch_window)?,
    };
    if billing.batch_window > Duration::from_secs(60) {
        bail!(
            "billing.batch_window: at most 60s (a crash loses up to a window of charges); \"0s\" settles every request on its own"
        );
    }
    if billing.reservation_ttl <= timeouts.first_byte {
        bail!(
            "billing.reservation_ttl: must be longer than timeouts.first_byte ({}s), or reservations of waiting requests would be swept",
            timeouts.first_byte.as_secs()
        );
    }
    billing.log_client_ip = raw
        .privacy
        .as_ref()
        .and_then(|p| p.log_client_ip)
        .unwrap_or(false);
    let _ = source;
    let mut proxy = ProxyConfig::new(key_prefix, upstreams);
    proxy.query_param = query_param;
    proxy.max_body_bytes = max_body_bytes;
    proxy.timeouts = timeouts;
    proxy.auth = auth;
    proxy.listed_models = raw.prices.keys().cloned().collect();
    Ok(Config {
        source: source.to_owned(),
        listen,
        database_url,
        tls,
        shutdown_grace,
        log_format,
        proxy,
        skipped,
        billing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        load(Some(&path), &Overrides::default(), &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    const ISSUE_SHAPE: &str = r#"
listen = "127.0.0.1:8080"
database_url = "sqlite://keygate.db"
key_prefix = "kg"
[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
kind = "openai"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o*", "o3"]
[prices."gpt-4o"]
input_per_mtok = 2.5
output_per_mtok = 10.0
[prices."o3"]
input_per_mtok = 2.0
output_per_mtok = 8.0
"#;

    #[test]
    fn the_documented_shape_loads() {
        let config = load_text(ISSUE_SHAPE, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.proxy.upstreams.len(), 1);
        assert_eq!(config.proxy.upstreams[0].kind, ProviderKind::OpenAi);
        assert_eq!(
            config
                .billing
                .prices
                .get("gpt-4o")
                .unwrap()
                .output_per_mtok(),
            keygate_store::Micros(10_000_000)
        );
        assert!(
            !format!("{config:?}").contains("sk-test"),
            "provider key in Debug"
        );
    }

    #[test]
    fn errors_name_file_field_and_fix() {
        let err = load_text(ISSUE_SHAPE, &[]).unwrap_err().to_string();
        assert!(
            err.contains("keygate.toml: upstreams[0].api_key_env"),
            "{err}"
        );
        assert!(err.contains("OPENAI_API_KEY"), "{err}");

        let err = load_text("listen = \"127.0.0.1:8080\"\nlisten_addr = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keygate.toml") && err.contains("listen_addr") && err.contains("line 2"),
            "{err}"
        );

        let err = load_text("listen = \"localhost\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listen:") && err.contains("127.0.0.1:8080"),
            "{err}"
        );

        let err = load_text("shutdown_grace = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shutdown_grace") && err.contains("30s"),
            "{err}"
        );

        let err = load_text("[auth_cache]\npoll_interval = \"5s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth_cache.poll_interval"), "{err}");

        let bad_kind = ISSUE_SHAPE.replace("kind = \"openai\"", "kind = \"azure\"");
        let err = load_text(&bad_kind, &[("OPENAI_API_KEY", "k")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("azure") && err.contains("openai"), "{err}");

        let bad_price = ISSUE_SHAPE.replace("output_per_mtok = 10.0", "output_per_mtok = -1.0");
        let err = load_text(&bad_price, &[("OPENAI_API_KEY", "k")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prices.\"gpt-4o\"") && err.contains("negative"),
            "{err}"
        );

        let unpriced = ISSUE_SHAPE.replace("\"gpt-4o*\", \"o3\"]", "\"gpt-4o*\", \"o3\", \"o1\"]");
        let err = load_text(&unpriced, &[("OPENAI_API_KEY", "k")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("upstreams[0].models") && err.contains("allow_unpriced"),
            "{err}"
        );
        let allowed = format!("{unpriced}\n[billing]\nallow_unpriced = true\n");
        assert!(load_text(&allowed, &[("OPENAI_API_KEY", "k")]).is_ok());
    }

    #[test]
    fn the_documented_example_loads() {
        let doc = include_str!("../../../docs/configuration.md");
        let example = doc
            .split("## Example")
            .nth(1)
            .and_then(|rest| rest.split("```toml").nth(1))
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let env = [("OPENAI_API_KEY", "k"), ("ANTHROPIC_API_KEY", "k")];
        let config = load_text(example, &env).unwrap();
        assert!(config.billing.prices.get("o3").is_some());
        assert_eq!(config.billing.rule.default_output_reserve, 4096);
    }

    #[test]
    fn environment_overrides_listen_and_database() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            database_url: Some("sqlite://other.db".into()),
        };
        let config = validate(
            builtin_defaults(),
            &overrides,
            &|_| None,
            "x",
            Path::new("."),
            true,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.database_url, "sqlite://other.db");
        assert!(config.proxy.upstreams.is_empty());
        assert_eq!(config.skipped.len(), 2);
        // Without a file, list prices bill the common models.
        assert_eq!(
            config
                .billing
                .prices
                .get("gpt-4o-mini")
                .unwrap()
                .input_per_mtok(),
            keygate_store::Micros(150_000)
        );
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let text = ISSUE_SHAPE.replace("models = [", "ca_file = \"ca.pem\"\nmodels = [")
            + "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let config = load_text(&text, &[("OPENAI_API_KEY", "k")]).unwrap();
        let ca = config.proxy.upstreams[0].ca_file.clone().unwrap();
        assert!(ca.ends_with("ca.pem") && ca.is_absolute(), "{ca:?}");
        assert!(config.tls.unwrap().cert.is_absolute());
    }
}
