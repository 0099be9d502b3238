//! `[admin]` (the admin API's listener, off unless `listen` is set) and `[keys]`
//! (`delete_after`: the daily cleanup of long-dead keys).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::anyhow;
use keygate_config::{RawAdmin, RawKeys};

/// The control plane's settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct ControlConfig {
    /// Where the admin API listens, when it is on.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Keys revoked or expired longer ago than this are deleted, daily.
    pub(crate) delete_after: Option<Duration>,
}

/// The shortest `delete_after`: a shorter one is more likely a typo (30m for 30d).
const MIN_DELETE_AFTER: Duration = Duration::from_secs(24 * 3600);

pub(super) fn control(
    admin: Option<&RawAdmin>,
    keys: Option<&RawKeys>,
) -> anyhow::Result<ControlConfig> {
    let admin_listen = match admin.and_then(|a| a.listen.as_deref()) {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            anyhow!("admin.listen: {text:?} is not an address and port such as \"127.0.0.1:8081\"")
        })?),
    };
    let delete_after = match keys.and_then(|k| k.delete_after.as_deref()) {
        None => None,
        Some(text) => {
            let after = super::duration::parse("keys.delete_after", Some(text), MIN_DELETE_AFTER)?;
            if after < MIN_DELETE_AFTER {
                return Err(anyhow!(
                    "keys.delete_after: {text:?} is shorter than a day; write it like \"30d\""
                ));
            }
            Some(after)
        }
    };
    Ok(ControlConfig {
        admin_listen,
        delete_after,
    })
}
