//! Where rate limits are kept and what they cover besides each key's own:
//! `[limits]` (backend, Redis, failed authentications), `[public_keys]`
//! (per-address limits, output ceiling), `[tiers.NAME]` and `[server]
//! trusted_proxies`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use ipnet::IpNet;
use keygate_config::{RawLimits, RawPublicKeys, RawServer, RawTier};
use keygate_proxy::{
    DEFAULT_AUTH_FAILURES_PER_MINUTE, LimitSettings, OnBackendError, PublicKeyLimits,
    RedisSettings, Tier,
};

use super::duration;

/// The prefix of every Redis key when `redis_prefix` is not set.
pub(crate) const DEFAULT_REDIS_PREFIX: &str = "keygate";

/// Deadline of each Redis call when `redis_timeout` is not set.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Where the limits live.
#[derive(Debug)]
pub(crate) enum Backend {
    /// In this instance.
    Local,
    /// On a Redis every instance shares.
    Redis(RedisSettings, OnBackendError),
}

/// `[limits]` and `[public_keys]`, validated.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) backend: Backend,
    pub(crate) settings: LimitSettings,
}

/// `[limits]` and `[public_keys]`; `redis_url` is the `KEYGATE_REDIS_URL`
/// override, if set.
pub(super) fn limits(
    raw: Option<&RawLimits>,
    public: Option<&RawPublicKeys>,
    tiers: &std::collections::BTreeMap<String, RawTier>,
    redis_url: Option<&str>,
) -> anyhow::Result<Limits> {
    let empty = RawLimits::default();
    let raw = raw.unwrap_or(&empty);
    let on_error = match raw.on_backend_error.as_deref() {
        None | Some("local") => OnBackendError::Local,
        Some("deny") => OnBackendError::Deny,
        Some(other) => bail!(
            "limits.on_backend_error: {other:?} is not a policy; use \"local\" (check in this instance while Redis is down) or \"deny\" (refuse)"
        ),
    };
    let redis_url = redis_url.or(raw.redis_url.as_deref());
    let backend = match raw.backend.as_deref() {
        None | Some("local") => {
            if raw.redis_url.is_some() {
                bail!(
                    "limits.redis_url: set, but limits.backend is \"local\"; add backend = \"redis\" or remove redis_url"
                );
            }
            Backend::Local
        }
        Some("redis") => {
            let Some(url) = redis_url else {
                bail!(
                    "limits.redis_url: backend = \"redis\" needs it (redis://host:6379), or the KEYGATE_REDIS_URL variable"
                );
            };
            if !url.starts_with("redis://") {
                bail!("limits.redis_url: must start with redis://");
            }
            let prefix = raw
                .redis_prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_owned());
            if prefix.is_empty()
                || prefix.len() > 64
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                bail!(
                    "limits.redis_prefix: {prefix:?} must be 1 to 64 letters, digits, '-', '_', '.' or ':'"
                );
            }
            let timeout = duration::parse(
                "limits.redis_timeout",
                raw.redis_timeout.as_deref(),
                DEFAULT_REDIS_TIMEOUT,
            )?;
            Backend::Redis(
                RedisSettings {
                    url: url.to_owned(),
                    prefix,
                    timeout,
                },
                on_error,
            )
        }
        Some(other) => {
            bail!("limits.backend: {other:?} is not a backend; use \"local\" or \"redis\"")
        }
    };
    let empty = RawPublicKeys::default();
    let public = public.unwrap_or(&empty);
    for (field, value) in [
        (
            "public_keys.rpm_per_address",
            public.rpm_per_address.map(u64::from),
        ),
        (
            "public_keys.tpm_per_address",
            public.tpm_per_address.map(u64::from),
        ),
        ("public_keys.max_output_tokens", public.max_output_tokens),
    ] {
        if value == Some(0) {
            bail!("{field}: must be at least 1 (leave it out for no limit)");
        }
    }
    let mut named = std::collections::BTreeMap::new();
    for (name, tier) in tiers {
        if keygate_store::validate_tier(Some(name)).is_err() {
            bail!("tiers.{name}: a tier name is 1 to 64 letters, digits, '-' and '_'");
        }
        for (field, value) in [
            ("rpm", tier.rpm),
            ("tpm", tier.tpm),
            ("max_parallel", tier.max_parallel),
        ] {
            if value == Some(0) {
                bail!("tiers.{name}.{field}: must be at least 1 (leave it out for no limit)");
            }
        }
        named.insert(
            name.clone(),
            Tier {
                rpm: tier.rpm,
                tpm: tier.tpm,
                max_parallel: tier.max_parallel,
                account_wide: tier.account_wide.unwrap_or(false),
            },
        );
    }
    if let Some(default) = &raw.default_tier
        && !named.contains_key(default)
    {
        bail!("limits.default_tier: {default:?} is not a [tiers.NAME] table of this file");
    }
    Ok(Limits {
        backend,
        settings: LimitSettings {
            auth_failures_per_minute: raw
                .auth_failures_per_minute
                .unwrap_or(DEFAULT_AUTH_FAILURES_PER_MINUTE),
            public_keys: PublicKeyLimits {
                rpm_per_address: public.rpm_per_address,
                tpm_per_address: public.tpm_per_address,
                max_output_tokens: public.max_output_tokens,
            },
            tiers: named,
            default_tier: raw.default_tier.clone(),
        },
    })
}

/// `[server] trusted_proxies`: CIDR blocks (a bare address is one host).
pub(super) fn trusted_proxies(raw: Option<&RawServer>) -> anyhow::Result<Vec<IpNet>> {
    let Some(list) = raw.and_then(|s| s.trusted_proxies.as_ref()) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    anyhow!(
                        "server.trusted_proxies: {text:?} is not a CIDR block; write it like \"10.0.0.0/8\" or \"127.0.0.1\""
                    )
                })
        })
        .collect()
}
