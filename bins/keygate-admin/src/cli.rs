//! The command line, as operators' scripts rely on it.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::error::ErrorKind;
use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use keygate_config::{CONFIG_ENV, DATABASE_URL_ENV, KEY_PREFIX_ENV};
use keygate_keys::{DEFAULT_KEY_PREFIX, KeyKind, KeyPrefix};
use keygate_store::{DEFAULT_DATABASE_URL, Micros, ScopeSet, UsageGroup};

/// Manage a keygate deployment: migrations, accounts, API keys and usage.
#[derive(Debug, Parser)]
#[command(name = "keygate-admin", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    /// The gateway's config file (keygate.toml). Its database_url and key_prefix are
    /// used unless --database-url / --key-prefix or their variables are set; its
    /// other sections are read but not used.
    #[arg(long, short, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(
        long,
        global = true,
        env = DATABASE_URL_ENV,
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub(crate) database_url: String,

    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Prefix of generated keys ([a-z0-9]{1,16}).
    #[arg(
        long,
        global = true,
        env = KEY_PREFIX_ENV,
        default_value = DEFAULT_KEY_PREFIX
    )]
    pub(crate) key_prefix: KeyPrefix,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Parses the command line, keeping the matches so that [`crate::config`] can tell a
/// value given from a default. Like the gateway, it takes an empty
/// `KEYGATE_DATABASE_URL` or `KEYGATE_KEY_PREFIX` as unset.
pub(crate) fn parse() -> Result<(Cli, ArgMatches), clap::Error> {
    let mut command = Cli::command();
    for (id, var) in [
        ("database_url", DATABASE_URL_ENV),
        ("key_prefix", KEY_PREFIX_ENV),
    ] {
        if std::env::var_os(var).is_some_and(|value| value.is_empty()) {
            command = command.mut_arg(id, |arg| arg.env(None::<&str>));
        }
    }
    let matches = command.try_get_matches()?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut Cli::command()))?;
    Ok((cli, matches))
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Create, list, show and top up accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Create, list, show, update, revoke and rotate API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Report and purge usage records.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Create, list and revoke admin tokens (for the admin API and console).
    #[command(subcommand)]
    AdminToken(AdminTokenCommand),
    /// Read the audit log of changes.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminTokenCommand {
    /// Create an admin token and print it once.
    Create {
        /// Label.
        #[arg(long)]
        name: String,
        /// owner (everything), operator (keys and top-ups) or viewer (reads).
        #[arg(long, value_parser = PossibleValuesParser::new(["owner", "operator", "viewer"])
            .try_map(|role| role.parse::<keygate_store::AdminRole>().map_err(|e| e.to_string())))]
        role: keygate_store::AdminRole,
    },
    /// List admin tokens (never the tokens themselves).
    List,
    /// Revoke an admin token now; its console sessions end.
    Revoke {
        /// Admin token id (adm_…).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Audit log entries, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only entries older than this sequence number (the `seq` of the last one
        /// shown), to page back.
        #[arg(long)]
        before: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AccountCommand {
    /// Create an account.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Opening balance in credits, e.g. 10.5.
        #[arg(long, default_value = "0", value_parser = credits)]
        balance: Micros,
        /// Contact email.
        #[arg(long)]
        email: Option<String>,
        /// Tier: a [tiers.NAME] of the gateway's config.
        #[arg(long)]
        tier: Option<String>,
    },
    /// Change an account's tier.
    Update {
        /// Account id (acct_…).
        id: String,
        /// Tier: a [tiers.NAME] of the gateway's config, or "none".
        #[arg(long)]
        tier: String,
    },
    /// List accounts.
    List,
    /// Show one account.
    Show {
        /// Account id (acct_…).
        id: String,
    },
    /// Add credits to an account's balance.
    TopUp {
        /// Account id (acct_…).
        id: String,
        /// Credits to add, e.g. 10.5.
        #[arg(long, value_parser = credits)]
        amount: Micros,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key and print it once.
    Create(KeyCreate),
    /// List keys.
    List {
        /// Only the keys of this account.
        #[arg(long)]
        account: Option<String>,
    },
    /// Show one key (never the key itself).
    Show {
        /// Key id (key_…).
        id: String,
    },
    /// Change a key's settings.
    Update(KeyUpdateArgs),
    /// Revoke a key now.
    Revoke {
        /// Key id (key_…).
        id: String,
    },
    /// Replace a key with a new one with the same account and settings; print the
    /// new key once.
    Rotate {
        /// Key id (key_…).
        id: String,
        /// Keep the old key working this long, e.g. 24h (default: revoke now).
        #[arg(long, value_parser = duration)]
        grace: Option<chrono::TimeDelta>,
    },
    /// Delete keys revoked or expired longer ago than a duration (their usage
    /// records stay).
    Purge {
        /// Delete keys dead for longer than this, e.g. 30d (at least 1d).
        #[arg(long, default_value = "30d", value_parser = retention)]
        older_than: chrono::TimeDelta,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsageCommand {
    /// Requests, tokens and cost per model, key or day, with a total.
    Report(UsageReportArgs),
    /// Delete usage records older than a duration.
    Purge {
        /// Delete records older than this, e.g. 90d (at least 1d).
        #[arg(long, value_parser = retention)]
        older_than: chrono::TimeDelta,
    },
}

#[derive(Debug, Args)]
pub(crate) struct UsageReportArgs {
    /// Only this account's usage (acct_…).
    #[arg(long)]
    pub(crate) account: Option<String>,
    /// Only this key's usage (key_…).
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Start, inclusive: a duration ago (7d, 24h, 90m) or an RFC 3339 time.
    #[arg(long, default_value = "7d", value_parser = when)]
    pub(crate) since: When,
    /// End, exclusive: an RFC 3339 time or a duration ago (default: now).
    #[arg(long, value_parser = when)]
    pub(crate) until: Option<When>,
    /// What one row totals.
    #[arg(
        long,
        default_value = "model",
        value_parser = PossibleValuesParser::new(["model", "key", "day"])
            .try_map(|name| UsageGroup::parse(&name).ok_or("unknown group"))
    )]
    pub(crate) group_by: UsageGroup,
}

/// A point in time as typed: a duration ago, or an absolute time.
#[derive(Clone, Debug)]
pub(crate) enum When {
    /// This long before now.
    Ago(String, chrono::TimeDelta),
    /// This time.
    At(DateTime<Utc>),
}

impl When {
    /// The time this names, relative to `now`; `flag` names it in errors.
    pub(crate) fn resolve(&self, flag: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
        match self {
            When::Ago(text, ago) => now
                .checked_sub_signed(*ago)
                .with_context(|| format!("{flag} {text} reaches too far into the past")),
            When::At(at) => Ok(*at),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct KeyCreate {
    /// Owning account id (acct_…).
    #[arg(long)]
    pub(crate) account: String,
    /// Label.
    #[arg(long, default_value = "")]
    pub(crate) name: String,
    /// private (server-side) or public (browser-safe).
    #[arg(long, default_value = "private")]
    pub(crate) kind: KeyKind,
    /// Comma-separated scopes or groups: models, chat, embeddings, image, image_edit,
    /// tts, stt, usage, read, write, * (default: * for private keys, chat,models for
    /// public keys).
    #[arg(long, value_parser = scopes)]
    pub(crate) scopes: Option<ScopeSet>,
    /// Comma-separated allowed models or prefixes ending in * (default: all; public
    /// keys must list them).
    #[arg(long, value_parser = list)]
    pub(crate) models: Option<List>,
    /// Comma-separated allowed browser origins, e.g. https://app.example.
    #[arg(long, value_parser = list)]
    pub(crate) origins: Option<List>,
    #[command(flatten)]
    pub(crate) expiry: Expiry,
    /// Requests per minute.
    #[arg(long)]
    pub(crate) rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    pub(crate) tpm: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    pub(crate) max_parallel: Option<u32>,
    /// Most this key may spend, in credits.
    #[arg(long, value_parser = credits)]
    pub(crate) spend_limit: Option<Micros>,
    /// Metadata label NAME=VALUE; repeat for more.
    #[arg(long = "meta", value_parser = meta)]
    pub(crate) metadata: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct KeyUpdateArgs {
    /// Key id (key_…).
    pub(crate) id: String,
    /// New label.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// New scopes (replaces the old set).
    #[arg(long, value_parser = scopes)]
    pub(crate) scopes: Option<ScopeSet>,
    /// New allowed models; "" allows all (not for public keys).
    #[arg(long, value_parser = list)]
    pub(crate) models: Option<List>,
    /// New allowed origins; "" clears them.
    #[arg(long, value_parser = list)]
    pub(crate) origins: Option<List>,
    #[command(flatten)]
    pub(crate) expiry: Expiry,
    /// Remove the expiry.
    #[arg(long, conflicts_with_all = ["expires_in", "expires_at"])]
    pub(crate) no_expiry: bool,
    /// Requests per minute, or "none".
    #[arg(long, value_parser = optional_limit)]
    pub(crate) rpm: Option<Limit>,
    /// Tokens per minute, or "none".
    #[arg(long, value_parser = optional_limit)]
    pub(crate) tpm: Option<Limit>,
    /// Requests in flight at once, or "none".
    #[arg(long, value_parser = optional_limit)]
    pub(crate) max_parallel: Option<Limit>,
    /// Spend limit in credits, or "none".
    #[arg(long, value_parser = optional_credits)]
    pub(crate) spend_limit: Option<OptionalCredits>,
    /// Metadata label NAME=VALUE; repeat for more. Replaces all labels.
    #[arg(long = "meta", value_parser = meta)]
    pub(crate) metadata: Option<Vec<(String, String)>>,
    /// Remove all metadata labels.
    #[arg(long, conflicts_with = "metadata")]
    pub(crate) no_meta: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Expiry {
    /// Expire after this long: 30d, 12h, 90s, 1w.
    #[arg(long, value_parser = duration, conflicts_with = "expires_at")]
    pub(crate) expires_in: Option<chrono::TimeDelta>,
    /// Expire at this time (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_parser = timestamp)]
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

impl Expiry {
    /// The expiry these flags name, if any; refuses a time already past.
    pub(crate) fn resolve(&self, now: DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>> {
        let at = match (self.expires_in, self.expires_at) {
            (Some(after), _) => Some(
                now.checked_add_signed(after)
                    .context("--expires-in is too far in the future")?,
            ),
            (None, at) => at,
        };
        if let Some(at) = at {
            anyhow::ensure!(
                at > now,
                "expiry {} is in the past",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        Ok(at)
    }
}

/// A comma-separated list; empty items are dropped, so "" is the empty list.
#[derive(Clone, Debug)]
pub(crate) struct List(pub(crate) Vec<String>);

/// A whole-number limit or "none".
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limit(pub(crate) Option<u32>);

/// Decimal credits or "none".
#[derive(Clone, Copy, Debug)]
pub(crate) struct OptionalCredits(pub(crate) Option<Micros>);

fn credits(text: &str) -> Result<Micros, String> {
    Micros::parse_credits(text).map_err(|e| e.to_string())
}

fn optional_credits(text: &str) -> Result<OptionalCredits, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(OptionalCredits(None));
    }
    credits(text).map(|c| OptionalCredits(Some(c)))
}

fn optional_limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(Limit(None));
    }
    text.trim()
        .parse()
        .map(|n| Limit(Some(n)))
        .map_err(|_| format!("{text:?} is not a whole number or \"none\""))
}

fn scopes(text: &str) -> Result<ScopeSet, String> {
    text.parse()
        .map_err(|e: keygate_store::UnknownScope| e.to_string())
}

fn list(text: &str) -> Result<List, String> {
    Ok(List(
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

fn meta(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(name, value)| (name.trim().to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

fn duration(text: &str) -> Result<chrono::TimeDelta, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 30d, 12h or 90s: {e}"))?;
    if parsed.is_zero() {
        return Err(format!(
            "{text:?} is zero; give a duration such as 30d, 12h or 90s"
        ));
    }
    chrono::TimeDelta::from_std(parsed).map_err(|_| format!("{text:?} is too long"))
}

/// The shortest retention `usage purge` accepts: a shorter one is more likely a
/// typo (90m for 90d) than a wish to delete nearly all usage.
const MIN_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(1);

fn retention(text: &str) -> Result<chrono::TimeDelta, String> {
    let age = duration(text)?;
    if age < MIN_RETENTION {
        return Err(format!(
            "{text:?} would delete all usage but the last {}; give 1d or more, such as 90d",
            text.trim()
        ));
    }
    Ok(age)
}

/// A duration ago (`7d`) or an RFC 3339 time.
fn when(text: &str) -> Result<When, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(When::At(at.with_timezone(&Utc)));
    }
    if humantime::parse_duration(text.trim()).is_err() {
        return Err(format!(
            "{text:?} is neither a duration such as 7d, 24h or 90m nor an RFC 3339 time such as 2027-01-31T00:00:00Z"
        ));
    }
    duration(text).map(|ago| When::Ago(text.trim().to_owned(), ago))
}

fn timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z: {e}"))
}

/// Prints a clap error as one line (help and version print as usual) and returns
/// the exit code.
pub(crate) fn report_usage_error(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let rendered = err.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let _ = writeln!(
        std::io::stderr(),
        "keygate-admin: {message} (see keygate-admin --help)"
    );
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("30d").unwrap(), chrono::TimeDelta::days(30));
        assert_eq!(duration("12h").unwrap(), chrono::TimeDelta::hours(12));
        assert_eq!(duration("90s").unwrap(), chrono::TimeDelta::seconds(90));
        assert!(duration("3x").is_err());
        assert!(duration("0s").is_err());
        assert!(duration("").is_err());
    }

    #[test]
    fn points_in_time() {
        let now: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
        let resolve = |text: &str| when(text).unwrap().resolve("--since", now).unwrap();
        assert_eq!(
            resolve("7d"),
            "2026-03-03T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            resolve("90m"),
            "2026-03-10T10:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            resolve("2026-01-01T01:00:00+01:00"),
            "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(when("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(when("0d").unwrap_err().contains("zero"));
        let far = when("1000000y")
            .unwrap()
            .resolve("--since", now)
            .unwrap_err();
        assert!(far.to_string().contains("too far"), "{far}");
    }

    #[test]
    fn retentions() {
        assert_eq!(retention("90d").unwrap(), chrono::TimeDelta::days(90));
        assert_eq!(retention("24h").unwrap(), chrono::TimeDelta::days(1));
        assert!(retention("0d").unwrap_err().contains("zero"));
        assert!(retention("90m").unwrap_err().contains("1d or more"));
        assert!(retention("soon").is_err());
    }

    #[test]
    fn lists_and_limits() {
        assert_eq!(list("a, b,,c").unwrap().0, vec!["a", "b", "c"]);
        assert!(list("").unwrap().0.is_empty());
        assert_eq!(optional_limit("none").unwrap().0, None);
        assert_eq!(optional_limit("60").unwrap().0, Some(60));
        assert!(optional_limit("-1").is_err());
        assert_eq!(meta("team=a=b").unwrap(), ("team".into(), "a=b".into()));
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
