//! How every duration in `keygate.toml` is written and checked: humantime text such
//! as `"30s"`, more than zero.

use std::time::Duration;

use anyhow::{anyhow, bail};

/// `value` as a duration, or `default` when it is not set; `field` names it in errors.
pub(super) fn parse(
    field: &str,
    value: Option<&str>,
    default: Duration,
) -> anyhow::Result<Duration> {
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
