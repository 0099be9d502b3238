//! The gateway's runtime settings, already typed. Reading them from TOML and the
//! environment is the binary's job; checking them is done once, at start.

use std::collections::HashSet;
use std::time::Duration;

use ipnet::IpNet;
use keygate_keys::KeyPrefix;

use crate::error::ConfigError;
use crate::metrics::MetricsSettings;
use crate::routing::RoutingSettings;
use crate::upstream::{UpstreamConfig, UpstreamTimeouts};

/// Failed authentications one address may make per minute by default.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 30;

/// `[tiers.NAME]`: limits every key of an account on the tier is held to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tier {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub max_parallel: Option<u32>,
    /// Whether the limits hold for all the account's keys together (else for
    /// each key: a key's own limits can only tighten them).
    pub account_wide: bool,
}

/// The limits besides each key's own.
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// Failed authentications one client address may make per minute before
    /// it gets 429 for the rest of the minute; 0 turns the check off.
    pub auth_failures_per_minute: u32,
    /// What public keys are held to.
    pub public_keys: PublicKeyLimits,
    /// Named tiers.
    pub tiers: std::collections::BTreeMap<String, Tier>,
    /// The tier of an account that has none (or names one not configured).
    pub default_tier: Option<String>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            auth_failures_per_minute: DEFAULT_AUTH_FAILURES_PER_MINUTE,
            public_keys: PublicKeyLimits::default(),
            tiers: std::collections::BTreeMap::new(),
            default_tier: None,
        }
    }
}

/// `[public_keys]`: limits per client address, and the output ceiling.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicKeyLimits {
    /// Requests per minute one client address may send with one public key.
    pub rpm_per_address: Option<u32>,
    /// Tokens per minute one client address may use with one public key.
    pub tpm_per_address: Option<u32>,
    /// The most output tokens a public key's request may ask for; set on a
    /// request that asks for no limit.
    pub max_output_tokens: Option<u64>,
}

/// Everything the proxy service needs besides the store.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Key prefix of this deployment (`kg`).
    pub key_prefix: KeyPrefix,
    /// Query parameter that may carry a key; `None` turns that source off.
    pub query_param: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive whole; a slower one is 408.
    pub body_read_timeout: Duration,
    /// Upstreams in routing order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstream timeouts.
    pub timeouts: UpstreamTimeouts,
    /// How requests are spread over candidate upstreams, retried and kept off
    /// failing ones.
    pub routing: RoutingSettings,
    /// Auth cache settings.
    pub auth: AuthSettings,
    /// Concrete model names to list on `GET /v1/models` when an upstream pattern
    /// serves them (the binary passes the `[prices]` table's models), besides the
    /// exact names in the upstreams' `models`.
    pub listed_models: Vec<String>,
    /// Limits besides each key's own: failed authentications, public keys.
    pub limits: LimitSettings,
    /// Peers whose `X-Forwarded-For` / `Forwarded` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether and where the gateway keeps Prometheus metrics.
    pub metrics: MetricsSettings,
}

/// The auth cache in front of the store.
#[derive(Clone, Copy, Debug)]
pub struct AuthSettings {
    /// How long a found key stays cached. The change feed drops it sooner when the
    /// key changes, so this only bounds staleness while the store is unreachable.
    pub cache_ttl: Duration,
    /// How long an unknown key stays cached.
    pub negative_ttl: Duration,
    /// Most keys cached.
    pub cache_capacity: u64,
    /// How often the change feed is polled.
    pub poll_interval: Duration,
    /// How often `last_used_at` is written, in one batch.
    pub last_used_flush: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            poll_interval: Duration::from_millis(250),
            last_used_flush: Duration::from_secs(10),
        }
    }
}

/// Defaults shared by the binary and tests.
pub mod defaults {
    use std::time::Duration;

    /// 10 MiB: large enough for long chats with images as URLs.
    pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
    /// Upstream TCP connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Upstream time to response headers. Reasoning models can think for minutes
    /// before the first byte of a non-streaming answer.
    pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);
    /// Longest silence between two frames of a streamed answer.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Connections served at once when the descriptor limit says nothing
    /// smaller: each connection holds a descriptor, and a forwarded request a
    /// second one, upstream.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Time for a connection to send a request head.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// Time for a request body to arrive whole: 10 MiB at about 175 KB/s.
    pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
    /// Time a connection with no request in flight stays open.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);
    /// HTTP/2 streams open at once on one connection.
    pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
    /// How often an idle HTTP/2 connection is pinged.
    pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
    /// How long an HTTP/2 ping may go unanswered.
    pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
}

impl ProxyConfig {
    /// A configuration with defaults for everything but the upstreams.
    pub fn new(key_prefix: KeyPrefix, upstreams: Vec<UpstreamConfig>) -> Self {
        Self {
            key_prefix,
            query_param: Some(keygate_keys::DEFAULT_QUERY_PARAM.to_owned()),
            max_body_bytes: defaults::MAX_BODY_BYTES,
            body_read_timeout: defaults::BODY_READ_TIMEOUT,
            upstreams,
            timeouts: UpstreamTimeouts {
                connect: defaults::CONNECT_TIMEOUT,
                first_byte: defaults::FIRST_BYTE_TIMEOUT,
                idle: defaults::IDLE_TIMEOUT,
            },
            auth: AuthSettings::default(),
            routing: RoutingSettings::default(),
            listed_models: Vec::new(),
            limits: LimitSettings::default(),
            trusted_proxies: Vec::new(),
            metrics: MetricsSettings::default(),
        }
    }

    /// Checks every setting [`Gateway::new`](crate::Gateway::new) relies on, without
    /// building anything: the body limit, that no duration is zero, that upstream
    /// names are unique, and each upstream's own settings
    /// ([`UpstreamConfig::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be more than 0"));
        }
        for (field, value) in [
            ("auth_cache.poll_interval", self.auth.poll_interval),
            ("auth_cache.ttl", self.auth.cache_ttl),
            ("auth_cache.negative_ttl", self.auth.negative_ttl),
            ("auth_cache.last_used_flush", self.auth.last_used_flush),
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.first_byte", self.timeouts.first_byte),
            ("timeouts.idle", self.timeouts.idle),
            ("server.body_read_timeout", self.body_read_timeout),
            ("routing.breaker_window", self.routing.breaker.window),
            ("routing.breaker_cooldown", self.routing.breaker.cooldown),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be more than zero"));
            }
        }
        if self.routing.max_attempts == 0 {
            return Err(ConfigError::new(
                "routing.max_attempts",
                "must be at least 1 (1 turns retries off)",
            ));
        }
        if self.routing.breaker.failures == 0 {
            return Err(ConfigError::new(
                "routing.breaker_failures",
                "must be at least 1",
            ));
        }
        let mut names = HashSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let field = format!("upstreams[{i}]");
            if !names.insert(upstream.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!("the name {:?} is used by two upstreams", upstream.name),
                ));
            }
            upstream.validate(&field)?;
        }
        Ok(())
    }
}
