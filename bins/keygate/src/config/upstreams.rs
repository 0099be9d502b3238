//! Where requests go: `[timeouts]` and `[[upstreams]]`, with each upstream's provider
//! key read from the environment. The URLs, patterns and CA files themselves are
//! checked by `ProxyConfig::validate`.

use std::path::Path;

use anyhow::bail;
use keygate_config::{RawKind, RawSigning, RawTimeouts, RawUpstream};
use keygate_proxy::{
    DEFAULT_STREAMS_PER_CONNECTION, HookSecret, ProviderKey, ProviderKind, SigningConfig,
    UpstreamConfig, UpstreamTimeouts, defaults,
};

use super::duration;

/// The upstreams to use, and those skipped for want of a key.
#[derive(Debug)]
pub(super) struct Upstreams {
    /// In routing order.
    pub(super) upstreams: Vec<UpstreamConfig>,
    /// Built-in upstreams left out because their key variable is unset, as messages.
    pub(super) skipped: Vec<String>,
}

/// `[timeouts]` over the proxy's defaults.
pub(super) fn timeouts(raw: Option<&RawTimeouts>) -> anyhow::Result<UpstreamTimeouts> {
    Ok(UpstreamTimeouts {
        connect: duration::parse(
            "timeouts.connect",
            raw.and_then(|t| t.connect.as_deref()),
            defaults::CONNECT_TIMEOUT,
        )?,
        first_byte: duration::parse(
            "timeouts.first_byte",
            raw.and_then(|t| t.first_byte.as_deref()),
            defaults::FIRST_BYTE_TIMEOUT,
        )?,
        idle: duration::parse(
            "timeouts.idle",
            raw.and_then(|t| t.idle.as_deref()),
            defaults::IDLE_TIMEOUT,
        )?,
    })
}

/// `[[upstreams]]`, with `ca_file` relative to `base_dir` and provider keys from `env`.
/// A `builtin` upstream whose key variable is unset is skipped; a configured one is
/// an error.
pub(super) fn upstreams(
    raw: Vec<RawUpstream>,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: &Path,
    builtin: bool,
) -> anyhow::Result<Upstreams> {
    let mut upstreams = Vec::new();
    let mut skipped = Vec::new();
    'upstreams: for (i, up) in raw.into_iter().enumerate() {
        let field = format!("upstreams[{i}]");
        let names = up
            .api_key_env
            .as_ref()
            .map(|e| e.names())
            .unwrap_or_default();
        if up.api_key_env.is_some() && names.is_empty() {
            bail!(
                "{field}.api_key_env: the list is empty; name at least one variable, or remove api_key_env for an upstream that needs no key"
            );
        }
        let mut provider_keys = Vec::new();
        for var in names {
            match env(var).filter(|v| !v.is_empty()) {
                Some(key) => provider_keys.push(ProviderKey::new(key)),
                None if builtin => {
                    skipped.push(format!("{} skipped: set {var} to use it", up.name));
                    continue 'upstreams;
                }
                None => bail!(
                    "{field}.api_key_env: the environment variable {var} is not set; export the provider key as {var}, or remove api_key_env for an upstream that needs no key"
                ),
            }
        }
        let signing = match up.signing {
            None => None,
            Some(raw) => Some(signing(&field, raw, env)?),
        };
        upstreams.push(UpstreamConfig {
            name: up.name,
            base_url: up.base_url,
            kind: match up.kind {
                RawKind::Openai => ProviderKind::OpenAi,
                RawKind::Anthropic => ProviderKind::Anthropic,
            },
            provider_keys,
            models: up.models,
            ca_file: up.ca_file.map(|p| base_dir.join(p)),
            priority: up.priority.unwrap_or(0),
            weight: up.weight.unwrap_or(1),
            signing,
            streams_per_connection: up
                .streams_per_connection
                .unwrap_or(DEFAULT_STREAMS_PER_CONNECTION),
        });
    }
    Ok(Upstreams { upstreams, skipped })
}

/// `[upstreams.signing]`, with the hook key from `env`.
fn signing(
    field: &str,
    raw: RawSigning,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<SigningConfig> {
    let var = &raw.secret_env;
    let Some(secret) = env(var).filter(|v| !v.is_empty()) else {
        bail!(
            "{field}.signing.secret_env: the environment variable {var} is not set; export the hook key as {var}, or remove [upstreams.signing]"
        );
    };
    Ok(SigningConfig {
        secret: HookSecret::new(secret),
        standard_webhooks: raw.standard_webhooks.unwrap_or(true),
        request_nonce: raw.request_nonce.unwrap_or(false),
    })
}
