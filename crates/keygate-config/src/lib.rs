//! `keygate.toml` as written: the raw file types, read with `deny_unknown_fields`
//! and nothing else checked. The gateway (`bins/keygate`) validates every section
//! into the proxy's typed settings; `keygate-admin --config` takes `database_url`
//! and `key_prefix` from the same file. Both read it through [`read`], so a file
//! one of them accepts the other parses too, and a misspelt field stops both.
//!
//! Field by field, the file is described in `docs/configuration.md`.
//!
//! ```
//! let text = "database_url = \"sqlite://keygate.db\"\n[[upstreams]]\nname = \"openai\"\n\
//!             base_url = \"https://api.openai.com/v1\"\nkind = \"openai\"\nmodels = [\"gpt-*\"]\n";
//! let raw = keygate_config::parse(text, std::path::Path::new("keygate.toml")).unwrap();
//! assert_eq!(raw.database_url.as_deref(), Some("sqlite://keygate.db"));
//! assert_eq!(raw.key_prefix, None);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The variable naming the config file, read by both binaries as `--config`.
pub const CONFIG_ENV: &str = "KEYGATE_CONFIG";
/// The variable that overrides the file's `database_url` in both binaries.
pub const DATABASE_URL_ENV: &str = "KEYGATE_DATABASE_URL";
/// The variable that overrides the file's `key_prefix` in both binaries.
pub const KEY_PREFIX_ENV: &str = "KEYGATE_KEY_PREFIX";

/// Reads and parses the file at `path`.
pub fn read(path: &Path) -> Result<RawConfig, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses `text`, read from `path` (which errors name).
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, FileError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| {
            text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        });
        FileError::Parse {
            path: path.to_path_buf(),
            line,
            message: e.message().to_owned(),
        }
    })
}

/// The file could not be read or is not a keygate config.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Missing, unreadable or not UTF-8.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of `keygate.toml` (an unknown field, a wrong type).
    #[error("{}{}: {message}", path.display(), line.map(|line| format!(" (line {line})")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line the parser stopped at, when it knows.
        line: Option<usize>,
        /// The parser's message, which names the field.
        message: String,
    },
}

/// The whole file. Every field is optional; what is left out takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `listen`: address and port.
    pub listen: Option<String>,
    /// `database_url`: `sqlite://PATH` or `postgres://…`.
    pub database_url: Option<String>,
    /// `key_prefix`: the prefix keys are issued with.
    pub key_prefix: Option<String>,
    /// `key_query_param`: the query parameter that may carry a key; `""` turns it off.
    pub key_query_param: Option<String>,
    /// `max_body_bytes`: the largest request body.
    pub max_body_bytes: Option<usize>,
    /// `shutdown_grace`: a duration.
    pub shutdown_grace: Option<String>,
    /// `log_format`: `"text"` or `"json"`.
    pub log_format: Option<String>,
    /// `[tls]`.
    pub tls: Option<RawTls>,
    /// `[server]`: connection limits and client deadlines.
    pub server: Option<RawServer>,
    /// `[timeouts]`.
    pub timeouts: Option<RawTimeouts>,
    /// `[auth_cache]`.
    pub auth_cache: Option<RawAuthCache>,
    /// `[[upstreams]]`, in configuration order.
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    /// `[routing]`: retries, failover, affinity and breakers.
    pub routing: Option<RawRouting>,
    /// `[prices."MODEL"]`.
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    /// `[billing]`.
    pub billing: Option<RawBilling>,
    /// `[privacy]`.
    pub privacy: Option<RawPrivacy>,
    /// `[admin]`: the admin API and console listener.
    pub admin: Option<RawAdmin>,
    /// `[keys]`: key lifecycle.
    pub keys: Option<RawKeys>,
    /// `[limits]`: where rate limits are kept, failed authentications.
    pub limits: Option<RawLimits>,
    /// `[public_keys]`: limits per client address, output ceiling.
    pub public_keys: Option<RawPublicKeys>,
    /// `[tiers.NAME]`: named limit sets for accounts.
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTier>,
    /// `[metrics]`.
    pub metrics: Option<RawMetrics>,
    /// `[tracing]`: OpenTelemetry traces over OTLP/HTTP; off unless
    /// `otlp_endpoint` is set.
    pub tracing: Option<RawTracing>,
}

/// `[metrics]`: Prometheus metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Keep metrics at all (default true).
    pub enabled: Option<bool>,
    /// Serve `/metrics` on this address and port instead of the gateway's.
    pub listen: Option<String>,
    /// Add the per-key families, labelled by key id and account id (default false).
    pub per_key: Option<bool>,
}

/// `[tracing]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The collector's base URL; spans go to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute (default `keygate`).
    pub service_name: Option<String>,
    /// The share of new traces sampled, `0.0..=1.0` (default 1.0).
    pub sample_ratio: Option<f64>,
    /// Longest wait for one export (a duration).
    pub timeout: Option<String>,
    /// Headers sent with every export; their values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for RawTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are credentials: names only.
        f.debug_struct("RawTracing")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `[admin]`: the admin API's own listener; off unless `listen` is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address and port, e.g. `"127.0.0.1:8081"`.
    pub listen: Option<String>,
}

/// `[keys]`: key lifecycle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Delete keys revoked or expired this long ago (a duration such as `"30d"`), daily.
    pub delete_after: Option<String>,
}

/// One `[tiers.NAME]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub max_parallel: Option<u32>,
    /// The limits hold for all the account's keys together.
    pub account_wide: Option<bool>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// `backend`: `"local"` (this instance) or `"redis"` (shared).
    pub backend: Option<String>,
    /// `redis_url`: `redis://…` (may hold a password).
    pub redis_url: Option<String>,
    /// `redis_prefix`: put before every key keygate writes in Redis.
    pub redis_prefix: Option<String>,
    /// `redis_timeout`: deadline for each Redis call (a duration).
    pub redis_timeout: Option<String>,
    /// `on_backend_error`: `"local"` or `"deny"`.
    pub on_backend_error: Option<String>,
    /// `auth_failures_per_minute`: failed authentications per client address
    /// before 429; `0` turns it off.
    pub auth_failures_per_minute: Option<u32>,
    /// `default_tier`: the `[tiers.NAME]` of accounts without one.
    pub default_tier: Option<String>,
}

/// `[public_keys]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublicKeys {
    /// `rpm_per_address`: requests per minute per client address and key.
    pub rpm_per_address: Option<u32>,
    /// `tpm_per_address`: tokens per minute per client address and key.
    pub tpm_per_address: Option<u32>,
    /// `max_output_tokens`: the output ceiling of a public key's request.
    pub max_output_tokens: Option<u64>,
}

/// `[server]`: how many client connections are served at once and how long a
/// client may take. Durations are humantime text (`"30s"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `max_connections`: client connections served at once.
    pub max_connections: Option<usize>,
    /// `header_read_timeout`: time to send a request head.
    pub header_read_timeout: Option<String>,
    /// `body_read_timeout`: time to send a request body whole.
    pub body_read_timeout: Option<String>,
    /// `keepalive_timeout`: time an idle connection stays open.
    pub keepalive_timeout: Option<String>,
    /// `http2_max_concurrent_streams`: HTTP/2 streams open at once per connection.
    pub http2_max_concurrent_streams: Option<u32>,
    /// `http2_keepalive_interval`: how often an idle HTTP/2 connection is pinged.
    pub http2_keepalive_interval: Option<String>,
    /// `http2_keepalive_timeout`: how long a ping may go unanswered.
    pub http2_keepalive_timeout: Option<String>,
    /// `trusted_proxies`: CIDR blocks whose forwarding headers name the client.
    pub trusted_proxies: Option<Vec<String>>,
    /// `workers`: threads serving client connections, each with its own runtime.
    pub workers: Option<usize>,
}

/// `[billing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBilling {
    /// Serve models without a price, free of charge.
    pub allow_unpriced: Option<bool>,
    /// Output tokens reserved for a request that sets no cap.
    pub default_output_reserve: Option<u64>,
    /// Days usage records are kept; `0` keeps them.
    pub usage_retention_days: Option<u32>,
    /// How long a reservation lives before the sweep may release it (a duration).
    pub reservation_ttl: Option<String>,
    /// How long a key's requests share one store reservation (a duration).
    pub batch_window: Option<String>,
    /// Charge a request its full cost even past what its reservation held.
    pub charge_beyond_reservation: Option<bool>,
}

/// `[privacy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    /// Store the client address in usage records.
    pub log_client_ip: Option<bool>,
}

/// `[tls]`: paths relative to the file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[timeouts]`: durations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to an upstream.
    pub connect: Option<String>,
    /// From sending the request to the response headers.
    pub first_byte: Option<String>,
    /// Longest silence between two frames of a response body.
    pub idle: Option<String>,
}

/// `[auth_cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthCache {
    /// How long a found key stays cached (a duration).
    pub ttl: Option<String>,
    /// How long an unknown key stays cached (a duration).
    pub negative_ttl: Option<String>,
    /// Most keys cached.
    pub capacity: Option<u64>,
    /// How often the change feed is polled (a duration).
    pub poll_interval: Option<String>,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Unique name.
    pub name: String,
    /// Base URL including the API version.
    pub base_url: String,
    /// Provider API.
    pub kind: RawKind,
    /// The environment variable holding the provider key, or a list of them
    /// (a pool used in rotation).
    pub api_key_env: Option<RawKeyEnv>,
    /// Exact names and trailing-`*` patterns.
    pub models: Vec<String>,
    /// Extra PEM CA certificates, relative to the file's directory.
    pub ca_file: Option<PathBuf>,
    /// Priority tier, lower first (default 0).
    pub priority: Option<i32>,
    /// Weight within the tier (default 1).
    pub weight: Option<u32>,
    /// Most requests at once on one connection before another is opened
    /// (default 100).
    pub streams_per_connection: Option<u32>,
    /// `[upstreams.signing]`.
    pub signing: Option<RawSigning>,
}

/// `api_key_env`: one variable or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawKeyEnv {
    /// `"OPENAI_API_KEY"`.
    One(String),
    /// `["OPENAI_KEY_1", "OPENAI_KEY_2"]`.
    Pool(Vec<String>),
}

impl RawKeyEnv {
    /// The variable names, in order.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Self::One(name) => vec![name.as_str()],
            Self::Pool(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

/// `[upstreams.signing]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// The environment variable holding the hook key.
    pub secret_env: String,
    /// Standard Webhooks headers (default true).
    pub standard_webhooks: Option<bool>,
    /// `X-Request-Nonce` (default false).
    pub request_nonce: Option<bool>,
}

/// `[routing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Failures retried on the next candidate.
    pub retry_on: Option<Vec<RawRetryOn>>,
    /// Most attempts per request.
    pub max_attempts: Option<u32>,
    /// `"none"` or `"key"`.
    pub affinity: Option<RawAffinity>,
    /// Failures within the window that open a breaker.
    pub breaker_failures: Option<u32>,
    /// How far back failures count (a duration).
    pub breaker_window: Option<String>,
    /// How long an open breaker keeps its upstream or key out (a duration).
    pub breaker_cooldown: Option<String>,
}

/// One `retry_on` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RawRetryOn {
    /// A refused or reset connection.
    #[serde(rename = "connection")]
    Connection,
    /// The first-byte timeout.
    #[serde(rename = "timeout")]
    Timeout,
    /// A 429 answer.
    #[serde(rename = "429")]
    RateLimited,
    /// A 5xx answer.
    #[serde(rename = "5xx")]
    ServerError,
}

/// `affinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawAffinity {
    /// Spread by weight.
    None,
    /// One upstream and provider key per keygate key.
    Key,
}

/// An upstream's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawKind {
    /// `"openai"`.
    Openai,
    /// `"anthropic"`.
    Anthropic,
}

/// One `[prices."MODEL"]` entry, in credits per million tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Input tokens.
    pub input_per_mtok: f64,
    /// Output tokens.
    pub output_per_mtok: f64,
    /// Cached input tokens, where the provider reports them.
    pub cached_input_per_mtok: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_names_the_file_and_the_line() {
        let err = parse(
            "listen = \"127.0.0.1:8080\"\nlisten_port = 1\n",
            Path::new("k.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("k.toml (line 2): "), "{err}");
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = read(&path).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot read the config file {}", path.display())
        );
    }

    #[test]
    fn every_section_parses() {
        let text = r#"
listen = "0.0.0.0:8080"
database_url = "postgres://keygate@db/keygate"
key_prefix = "acme"
key_query_param = ""
max_body_bytes = 1024
shutdown_grace = "5s"
log_format = "json"
[tls]
cert = "c.pem"
key = "k.pem"
[timeouts]
connect = "1s"
first_byte = "2s"
idle = "3s"
[auth_cache]
ttl = "1m"
negative_ttl = "1s"
capacity = 10
poll_interval = "100ms"
[[upstreams]]
name = "a"
base_url = "https://api.anthropic.com/v1"
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
models = ["claude-*"]
ca_file = "ca.pem"
priority = 1
weight = 3
[upstreams.signing]
secret_env = "HOOK_SECRET"
standard_webhooks = true
request_nonce = true
[[upstreams]]
name = "b"
base_url = "https://api.openai.com/v1"
kind = "openai"
api_key_env = ["K1", "K2"]
models = ["gpt-*"]
[routing]
retry_on = ["connection", "timeout", "429", "5xx"]
max_attempts = 2
affinity = "key"
breaker_failures = 3
breaker_window = "10s"
breaker_cooldown = "5s"
[prices."claude-haiku-4-5"]
input_per_mtok = 1.0
output_per_mtok = 5.0
[billing]
allow_unpriced = true
default_output_reserve = 10
usage_retention_days = 0
reservation_ttl = "1h"
batch_window = "0s"
charge_beyond_reservation = true
[privacy]
log_client_ip = true
[limits]
backend = "redis"
redis_url = "redis://127.0.0.1:6379"
redis_prefix = "kg"
redis_timeout = "200ms"
on_backend_error = "deny"
auth_failures_per_minute = 10
[public_keys]
rpm_per_address = 5
tpm_per_address = 1000
max_output_tokens = 256
[tracing]
otlp_endpoint = "http://127.0.0.1:4318"
service_name = "gw"
sample_ratio = 0.5
timeout = "5s"
headers = { authorization = "Bearer otlp-secret" }
"#;
        let raw = parse(text, Path::new("keygate.toml")).unwrap();
        assert_eq!(raw.key_prefix.as_deref(), Some("acme"));
        assert_eq!(raw.upstreams[0].kind, RawKind::Anthropic);
        assert_eq!(raw.upstreams[0].weight, Some(3));
        assert_eq!(
            raw.upstreams[1].api_key_env.as_ref().unwrap().names(),
            ["K1", "K2"]
        );
        assert_eq!(
            raw.routing.as_ref().and_then(|r| r.affinity),
            Some(RawAffinity::Key)
        );
        assert_eq!(raw.prices["claude-haiku-4-5"].output_per_mtok, 5.0);
        assert_eq!(raw.privacy.and_then(|p| p.log_client_ip), Some(true));
        assert_eq!(raw.limits.and_then(|l| l.backend).as_deref(), Some("redis"));
        assert_eq!(raw.public_keys.and_then(|p| p.max_output_tokens), Some(256));
        assert_eq!(
            raw.billing.and_then(|b| b.charge_beyond_reservation),
            Some(true)
        );
        let tracing = raw.tracing.unwrap();
        assert_eq!(
            tracing.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(tracing.sample_ratio, Some(0.5));
        let shown = format!("{tracing:?}");
        assert!(
            shown.contains("authorization") && !shown.contains("otlp-secret"),
            "{shown}"
        );
    }

    #[test]
    fn an_unknown_tracing_key_is_refused() {
        let err = parse(
            "[tracing]\notlp_endpoint = \"http://c:4318\"\nendpoint = \"x\"\n",
            Path::new("k.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("endpoint") && err.contains("line 3"), "{err}");
    }
}
