//! `keygate.toml`: read raw (the file types are `keygate-config`'s, shared with
//! `keygate-admin`), then validated section by section into the proxy's typed
//! settings. Every error names the file, the field and the fix.
//!
//! One module per section: `server` (listen, TLS, shutdown, logs, body size,
//! connections),
//! `auth` (key prefix, query parameter, auth cache), `upstreams` (timeouts and
//! upstreams with their provider keys, priorities, weights and signing),
//! `routing` (retries, affinity, breakers), `billing` (prices, billing, privacy),
//! `limits` (`[limits]`, `[public_keys]`, trusted proxies), `control` (`[admin]`, `[keys]`),
//! `metrics` (`[metrics]`), `tracing` (`[tracing]`);
//! `duration` is how they all read a duration, `builtin` the configuration without
//! a file. The sections import only `duration`, never each other or this module.

mod auth;
mod billing;
mod builtin;
mod control;
mod duration;
mod limits;
mod metrics;
mod routing;
mod server;
mod tracing;
mod upstreams;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use keygate_config::RawConfig;
use keygate_proxy::{BillingConfig, ProxyConfig, ServerOptions, TracingConfig};

pub(crate) use self::control::ControlConfig;
pub(crate) use self::limits::Backend as LimitsBackend;
pub(crate) use self::server::{LogFormat, TlsFiles};

/// The default config file, read when present.
pub(crate) const DEFAULT_FILE: &str = "keygate.toml";

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
    /// The server's options: `[server]` and the shutdown grace; its TLS is
    /// loaded at start from `tls`.
    pub(crate) server: ServerOptions,
    /// Log format.
    pub(crate) log_format: LogFormat,
    /// The proxy's settings.
    pub(crate) proxy: ProxyConfig,
    /// Upstreams skipped because their key variable is unset (built-in defaults only).
    pub(crate) skipped: Vec<String>,
    /// Billing: prices, reservations, retention.
    pub(crate) billing: BillingConfig,
    /// `[admin]` and `[keys]`.
    pub(crate) control: ControlConfig,
    /// Where rate limits are kept.
    pub(crate) limits: LimitsBackend,
    /// `/metrics` on a listener of its own, when `[metrics] listen` is set.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// `[tracing]`, when on.
    pub(crate) tracing: Option<TracingConfig>,
}

/// Variables the environment can override. `keygate-admin` applies the same two
/// for `database_url` and `key_prefix`, so one file and one environment give both
/// binaries the same database and prefix.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `KEYGATE_LISTEN`.
    pub(crate) listen: Option<String>,
    /// `KEYGATE_DATABASE_URL`.
    pub(crate) database_url: Option<String>,
    /// `KEYGATE_KEY_PREFIX`.
    pub(crate) key_prefix: Option<String>,
    /// `KEYGATE_REDIS_URL`.
    pub(crate) redis_url: Option<String>,
}

/// Loads `path` (or `keygate.toml` if present, else built-in defaults), applies the
/// overrides and validates. `env` reads provider keys.
pub(crate) fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    let (raw, source, base_dir, builtin) = match path {
        Some(path) => (
            keygate_config::read(path)?,
            path.display().to_string(),
            dir_of(path),
            false,
        ),
        None if Path::new(DEFAULT_FILE).is_file() => (
            keygate_config::read(Path::new(DEFAULT_FILE))?,
            DEFAULT_FILE.to_owned(),
            PathBuf::from("."),
            false,
        ),
        None => (
            builtin::builtin_defaults(),
            "built-in defaults".to_owned(),
            PathBuf::from("."),
            true,
        ),
    };
    validate(raw, overrides, env, &source, &base_dir, builtin).map_err(|e| anyhow!("{source}: {e}"))
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Validates each section, in the order the fields were always checked, so a file
/// with several mistakes reports the same one first.
fn validate(
    raw: RawConfig,
    overrides: &Overrides,
    env: &dyn Fn(&str) -> Option<String>,
    source: &str,
    base_dir: &Path,
    builtin: bool,
) -> anyhow::Result<Config> {
    let listen = server::listen(overrides.listen.as_deref().or(raw.listen.as_deref()))?;
    let database_url = database_url(overrides.database_url.clone().or(raw.database_url))?;
    let key_prefix = auth::key_prefix(
        overrides
            .key_prefix
            .as_deref()
            .or(raw.key_prefix.as_deref()),
    )?;
    let query_param = auth::query_param(raw.key_query_param)?;
    let shutdown_grace = server::shutdown_grace(raw.shutdown_grace.as_deref())?;
    let log_format = server::log_format(raw.log_format.as_deref())?;
    let tls = server::tls(raw.tls, base_dir);
    let timeouts = upstreams::timeouts(raw.timeouts.as_ref())?;
    let auth = auth::cache(raw.auth_cache.as_ref())?;
    let max_body_bytes = server::max_body_bytes(raw.max_body_bytes)?;
    let (server, body_read_timeout) = server::connections(raw.server.as_ref(), shutdown_grace)?;
    let upstreams::Upstreams { upstreams, skipped } =
        upstreams::upstreams(raw.upstreams, env, base_dir, builtin)?;
    let routing = routing::routing(raw.routing.as_ref())?;
    let billing = billing::billing(
        &raw.prices,
        raw.billing.as_ref(),
        raw.privacy.as_ref(),
        &upstreams,
        &timeouts,
    )?;
    let control = control::control(raw.admin.as_ref(), raw.keys.as_ref())?;
    let limits::Limits {
        backend: limits,
        settings: limit_settings,
    } = limits::limits(
        raw.limits.as_ref(),
        raw.public_keys.as_ref(),
        &raw.tiers,
        overrides.redis_url.as_deref(),
    )?;
    let trusted_proxies = limits::trusted_proxies(raw.server.as_ref())?;
    let metrics = metrics::metrics(raw.metrics.as_ref())?;
    let tracing = tracing::tracing(raw.tracing.as_ref())?;
    let mut proxy = ProxyConfig::new(key_prefix, upstreams);
    proxy.limits = limit_settings;
    proxy.trusted_proxies = trusted_proxies;
    proxy.metrics = metrics.settings;
    proxy.query_param = query_param;
    proxy.max_body_bytes = max_body_bytes;
    proxy.body_read_timeout = body_read_timeout;
    proxy.timeouts = timeouts;
    proxy.auth = auth;
    proxy.routing = routing;
    proxy.listed_models = raw.prices.into_keys().collect();
    Ok(Config {
        source: source.to_owned(),
        listen,
        database_url,
        tls,
        server,
        log_format,
        proxy,
        skipped,
        billing,
        control,
        limits,
        metrics_listen: metrics.listen,
        tracing,
    })
}

/// `database_url` (or its override), else `keygate_store::DEFAULT_DATABASE_URL`.
fn database_url(url: Option<String>) -> anyhow::Result<String> {
    let url = url.unwrap_or_else(|| keygate_store::DEFAULT_DATABASE_URL.to_owned());
    keygate_store::DatabaseUrl::parse(&url).map_err(|e| anyhow!("database_url: {e}"))?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keygate_proxy::ProviderKind;

    use super::builtin::builtin_defaults;
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
    fn routing_pools_priorities_and_signing_load() {
        let text = format!(
            "{ISSUE_SHAPE}\n[[upstreams]]\nname = \"backup\"\nbase_url = \"https://backup.example/v1\"\n\
             kind = \"openai\"\napi_key_env = [\"K1\", \"K2\"]\nmodels = [\"gpt-4o*\"]\npriority = 1\nweight = 2\n\
             streams_per_connection = 50\n\
             [upstreams.signing]\nsecret_env = \"HOOK\"\nrequest_nonce = true\n\
             [routing]\nretry_on = [\"429\", \"5xx\"]\nmax_attempts = 2\naffinity = \"key\"\n\
             breaker_failures = 3\nbreaker_window = \"10s\"\nbreaker_cooldown = \"1m\"\n"
        );
        let env = [
            ("OPENAI_API_KEY", "sk-a"),
            ("K1", "sk-pool-1"),
            ("K2", "sk-pool-2"),
            ("HOOK", "hook-secret"),
        ];
        let config = load_text(&text, &env).unwrap();
        let backup = &config.proxy.upstreams[1];
        assert_eq!((backup.priority, backup.weight), (1, 2));
        assert_eq!(backup.streams_per_connection, 50);
        assert_eq!(
            config.proxy.upstreams[0].streams_per_connection,
            keygate_proxy::DEFAULT_STREAMS_PER_CONNECTION
        );
        assert_eq!(backup.provider_keys.len(), 2);
        let signing = backup.signing.as_ref().unwrap();
        assert!(signing.standard_webhooks && signing.request_nonce);
        let routing = config.proxy.routing;
        assert_eq!(routing.max_attempts, 2);
        assert_eq!(routing.affinity, keygate_proxy::Affinity::Key);
        assert!(!routing.retry_on.connection && routing.retry_on.server_error);
        assert_eq!(routing.breaker.cooldown, Duration::from_secs(60));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("sk-pool") && !shown.contains("hook-secret"),
            "{shown}"
        );

        let missing = load_text(&text, &env[..3]).unwrap_err().to_string();
        assert!(
            missing.contains("upstreams[1].signing.secret_env"),
            "{missing}"
        );
        let unset_pool = load_text(&text, &[env[0], env[1], env[3]])
            .unwrap_err()
            .to_string();
        assert!(unset_pool.contains("K2"), "{unset_pool}");
        let zero = text.replace("max_attempts = 2", "max_attempts = 0");
        assert!(
            load_text(&zero, &env)
                .unwrap_err()
                .to_string()
                .contains("routing.max_attempts")
        );
        let weightless = text.replace("weight = 2", "weight = 0");
        let err = load_text(&weightless, &env)
            .unwrap()
            .proxy
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreams[1].weight"), "{err}");
        let streamless = text.replace("streams_per_connection = 50", "streams_per_connection = 0");
        let err = load_text(&streamless, &env)
            .unwrap()
            .proxy
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreams[1].streams_per_connection"), "{err}");
    }

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
    fn tracing_is_off_by_default_and_loads_from_its_section() {
        let env = [("OPENAI_API_KEY", "sk-test")];
        assert!(load_text(ISSUE_SHAPE, &env).unwrap().tracing.is_none());
        let text = format!(
            "{ISSUE_SHAPE}[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.1\n\
             headers = {{ authorization = \"Bearer otlp-secret\" }}\n"
        );
        let config = load_text(&text, &env).unwrap();
        let tracing = config.tracing.as_ref().unwrap();
        assert_eq!(tracing.otlp_endpoint, "http://127.0.0.1:4318");
        assert_eq!(tracing.sample_ratio, 0.1);
        assert!(!format!("{config:?}").contains("otlp-secret"));
        let bad = text.replace("sample_ratio = 0.1", "sample_ratio = 2.0");
        let err = load_text(&bad, &env).unwrap_err().to_string();
        assert!(err.contains("keygate.toml: tracing.sample_ratio"), "{err}");
    }

    #[test]
    fn limits_sections_validate_and_name_the_field() {
        let config = load_text(ISSUE_SHAPE, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
        assert!(matches!(config.limits, LimitsBackend::Local));
        assert_eq!(config.proxy.limits.auth_failures_per_minute, 30);
        let text = format!(
            "{ISSUE_SHAPE}[limits]\nbackend = \"redis\"\nredis_url = \"redis://:pw@127.0.0.1:6379\"\n\
             on_backend_error = \"deny\"\nauth_failures_per_minute = 5\n\
             [public_keys]\nrpm_per_address = 3\nmax_output_tokens = 64\n\
             [server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n"
        );
        let config = load_text(&text, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
        match &config.limits {
            LimitsBackend::Redis(settings, on_error) => {
                assert_eq!(settings.prefix, "keygate");
                assert_eq!(*on_error, keygate_proxy::OnBackendError::Deny);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !format!("{config:?}").contains(":pw@"),
            "redis password in Debug"
        );
        assert_eq!(config.proxy.limits.auth_failures_per_minute, 5);
        assert_eq!(config.proxy.limits.public_keys.rpm_per_address, Some(3));
        assert_eq!(config.proxy.trusted_proxies.len(), 2);
        for (section, bad, field) in [
            ("limits", "backend = \"memcached\"", "limits.backend"),
            ("limits", "default_tier = \"gold\"", "limits.default_tier"),
            ("tiers.free", "rpm = 0", "tiers.free.rpm"),
            ("limits", "backend = \"redis\"", "limits.redis_url"),
            ("limits", "redis_url = \"redis://x\"", "limits.redis_url"),
            (
                "limits",
                "on_backend_error = \"maybe\"",
                "limits.on_backend_error",
            ),
            (
                "public_keys",
                "max_output_tokens = 0",
                "public_keys.max_output_tokens",
            ),
            (
                "server",
                "trusted_proxies = [\"10.0.0.0/33\"]",
                "server.trusted_proxies",
            ),
        ] {
            let err = load_text(&format!("[{section}]\n{bad}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn server_section_sets_connection_limits() {
        let config = load_text(ISSUE_SHAPE, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
        assert!(config.server.max_connections >= 1);
        assert!(config.server.max_connections <= keygate_proxy::defaults::MAX_CONNECTIONS);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config.server.workers, cpus, "a worker per CPU by default");
        assert_eq!(
            config.proxy.body_read_timeout,
            keygate_proxy::defaults::BODY_READ_TIMEOUT
        );
        let text = format!(
            "{ISSUE_SHAPE}[server]\nmax_connections = 20\nheader_read_timeout = \"300ms\"\n\
             body_read_timeout = \"2s\"\nkeepalive_timeout = \"5s\"\n\
             http2_max_concurrent_streams = 8\nhttp2_keepalive_interval = \"1m\"\n\
             http2_keepalive_timeout = \"3s\"\nworkers = 3\n"
        );
        let config = load_text(&text, &[("OPENAI_API_KEY", "sk-test")]).unwrap();
        let s = &config.server;
        assert_eq!(s.max_connections, 20);
        assert_eq!(s.header_read_timeout, Duration::from_millis(300));
        assert_eq!(s.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(s.http2_max_concurrent_streams, 8);
        assert_eq!(s.http2_keepalive_interval, Duration::from_secs(60));
        assert_eq!(s.http2_keepalive_timeout, Duration::from_secs(3));
        assert_eq!(s.workers, 3);
        assert_eq!(config.proxy.body_read_timeout, Duration::from_secs(2));
        for (field, value) in [
            ("max_connections", "0"),
            ("http2_max_concurrent_streams", "0"),
            ("body_read_timeout", "\"0s\""),
            ("workers", "0"),
            ("workers", "1025"),
        ] {
            let text = format!("[server]\n{field} = {value}\n");
            let err = load_text(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("server.{field}")), "{err}");
        }
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
        let doc = include_str!("../../../../docs/configuration.md");
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
    fn environment_overrides_listen_database_and_prefix() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            database_url: Some("sqlite://other.db".into()),
            key_prefix: Some("acme".into()),
            redis_url: None,
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
        assert_eq!(config.proxy.key_prefix.as_str(), "acme");
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
    fn the_environment_wins_over_the_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(
            &path,
            "database_url = \"sqlite://file.db\"\nkey_prefix = \"file\"\n",
        )
        .unwrap();
        let from_file = load(Some(&path), &Overrides::default(), &|_| None).unwrap();
        assert_eq!(from_file.database_url, "sqlite://file.db");
        assert_eq!(from_file.proxy.key_prefix.as_str(), "file");
        let overrides = Overrides {
            database_url: Some("sqlite://env.db".into()),
            key_prefix: Some("env".into()),
            ..Overrides::default()
        };
        let from_env = load(Some(&path), &overrides, &|_| None).unwrap();
        assert_eq!(from_env.database_url, "sqlite://env.db");
        assert_eq!(from_env.proxy.key_prefix.as_str(), "env");

        std::fs::write(&path, "").unwrap();
        let defaults = load(Some(&path), &Overrides::default(), &|_| None).unwrap();
        assert_eq!(defaults.database_url, keygate_store::DEFAULT_DATABASE_URL);
        assert_eq!(
            defaults.proxy.key_prefix,
            keygate_keys::KeyPrefix::default()
        );
        assert_eq!(
            defaults.proxy.query_param.as_deref(),
            Some(keygate_keys::DEFAULT_QUERY_PARAM)
        );

        let bad = Overrides {
            key_prefix: Some("NO".into()),
            ..Overrides::default()
        };
        let err = load(Some(&path), &bad, &|_| None).unwrap_err().to_string();
        assert!(err.contains("keygate.toml: key_prefix: "), "{err}");
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
