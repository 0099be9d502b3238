//! `--config FILE`: the gateway's `keygate.toml` as the source of `database_url` and
//! `key_prefix`, so the admin issues keys with the gateway's prefix into the
//! gateway's database without an operator copying them.
//!
//! For each of the two, the first that is set wins: the flag (`--database-url`,
//! `--key-prefix`), its variable (`KEYGATE_DATABASE_URL`, `KEYGATE_KEY_PREFIX`; empty
//! counts as unset), the config file, the default (`sqlite://keygate.db`, `kg`). The
//! gateway applies the same variables over the same file, so one file and one
//! environment give both binaries the same database and prefix.
//!
//! The file is parsed by `keygate-config`, as the gateway parses it: a file the
//! gateway accepts is accepted here whatever its other sections hold, and a
//! misspelt field is refused by both.

use std::path::Path;

use anyhow::anyhow;
use clap::ArgMatches;
use clap::parser::ValueSource;
use keygate_keys::KeyPrefix;
use keygate_store::DatabaseUrl;

use crate::cli::Cli;

/// Takes `database_url` and `key_prefix` from `cli.config`, if given, where
/// `matches` shows neither the command line nor the environment set them.
pub(crate) fn apply(cli: &mut Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    let Some(path) = cli.config.as_deref() else {
        return Ok(());
    };
    let raw = keygate_config::read(path)?;
    if let Some(url) = raw
        .database_url
        .filter(|_| defaulted(matches, "database_url"))
    {
        DatabaseUrl::parse(&url).map_err(|e| in_file(path, "database_url", e))?;
        cli.database_url = url;
    }
    if let Some(prefix) = raw.key_prefix.filter(|_| defaulted(matches, "key_prefix")) {
        cli.key_prefix = KeyPrefix::new(&prefix).map_err(|e| in_file(path, "key_prefix", e))?;
    }
    Ok(())
}

/// Whether the argument `id` holds its default: no flag, no variable.
fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    !matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// An error in `field` of the file at `path`, worded like the gateway's.
fn in_file(path: &Path, field: &str, error: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}: {field}: {error}", path.display())
}
