//! How every duration in `keygate.toml` is written and checked: humantime text such
//! as `"30s"`, more than zero and at most ten years (past what a clock can add,
//! a timeout would end the process rather than the wait).

use std::time::Duration;

use anyhow::{anyhow, bail};

/// The longest duration accepted.
const MAX: Duration = Duration::from_secs(10 * 366 * 86_400);

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
            if parsed > MAX {
                bail!("{field}: {text:?} is longer than ten years; write a shorter duration");
            }
            Ok(parsed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_is_more_than_zero_and_at_most_ten_years() {
        let default = Duration::from_secs(1);
        assert_eq!(
            parse("f", Some("30s"), default).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(parse("f", None, default).unwrap(), default);
        assert!(parse("f", Some("3650days"), default).is_ok());
        for refused in ["0s", "11years", "300000000000y", "soon"] {
            let error = parse("server.keepalive_timeout", Some(refused), default).unwrap_err();
            assert!(
                error.to_string().starts_with("server.keepalive_timeout: "),
                "{refused}: {error}"
            );
        }
    }
}
