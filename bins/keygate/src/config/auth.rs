//! How clients present keys and how they are looked up: `key_prefix`,
//! `key_query_param` and `[auth_cache]`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use keygate_config::RawAuthCache;
use keygate_keys::{DEFAULT_KEY_PREFIX, DEFAULT_QUERY_PARAM, KeyPrefix};
use keygate_proxy::AuthSettings;

use super::duration;

/// `key_prefix` (or its override), else [`DEFAULT_KEY_PREFIX`].
pub(super) fn key_prefix(text: Option<&str>) -> anyhow::Result<KeyPrefix> {
    KeyPrefix::new(text.unwrap_or(DEFAULT_KEY_PREFIX)).map_err(|e| {
        anyhow!("key_prefix: {e}; it must match the prefix keygate-admin issues keys with")
    })
}

/// `key_query_param`: [`DEFAULT_QUERY_PARAM`] when unset, `None` when `""`.
pub(super) fn query_param(text: Option<String>) -> anyhow::Result<Option<String>> {
    match text {
        None => Ok(Some(DEFAULT_QUERY_PARAM.to_owned())),
        Some(p) if p.is_empty() => Ok(None),
        Some(p)
            if p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(Some(p))
        }
        Some(p) => bail!(
            "key_query_param: {p:?} may only hold letters, digits, '-' and '_' (or be \"\" to turn query keys off)"
        ),
    }
}

/// `[auth_cache]` over the proxy's defaults.
pub(super) fn cache(raw: Option<&RawAuthCache>) -> anyhow::Result<AuthSettings> {
    let mut auth = AuthSettings::default();
    let Some(cache) = raw else {
        return Ok(auth);
    };
    auth.cache_ttl = duration::parse("auth_cache.ttl", cache.ttl.as_deref(), auth.cache_ttl)?;
    auth.negative_ttl = duration::parse(
        "auth_cache.negative_ttl",
        cache.negative_ttl.as_deref(),
        auth.negative_ttl,
    )?;
    auth.poll_interval = duration::parse(
        "auth_cache.poll_interval",
        cache.poll_interval.as_deref(),
        auth.poll_interval,
    )?;
    if auth.poll_interval > Duration::from_secs(1) {
        bail!("auth_cache.poll_interval: at most 1s, so a revocation takes effect within a second");
    }
    if let Some(capacity) = cache.capacity {
        if capacity == 0 {
            bail!("auth_cache.capacity: must be more than 0");
        }
        auth.cache_capacity = capacity;
    }
    Ok(auth)
}
