//! What each command does: open the store, call it, print the result.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use keygate_keys::{KeyPrefix, SecretKey};
use keygate_store::{
    AccountId, CredentialStore, DatabaseUrl, DbStore, KeyId, KeySettings, KeyUpdate, Ledger,
    NewAccount, NewApiKey, ReplacementKey, UsageQuery,
};

use crate::cli::{
    AccountCommand, Cli, Command, KeyCommand, KeyCreate, KeyUpdateArgs, UsageCommand,
    UsageReportArgs,
};
use crate::control::{self, audit};
use crate::output::Output;
use keygate_store::json::time;

pub(crate) async fn run(cli: Cli) -> Result<()> {
    let out = Output { json: cli.json };
    let is_migrate = matches!(cli.command, Command::Migrate);
    if let DatabaseUrl::Sqlite(path) = DatabaseUrl::parse(&cli.database_url)? {
        // Only `migrate` creates a database: a mistyped path must not leave an empty
        // file behind and send the operator to migrate the wrong one.
        if !is_migrate && !std::path::Path::new(&path).exists() {
            bail!(
                "no database at sqlite://{path}; check --database-url, or run `keygate-admin migrate` to create it"
            );
        }
    }
    let store = DbStore::connect(&cli.database_url).await?;
    if let Command::Migrate = cli.command {
        let applied = store.migrate().await?;
        return out.migrated(&applied, store.url());
    }
    let pending = store.pending_migrations().await?;
    if !pending.is_empty() {
        bail!(
            "the database {} is not migrated ({} pending migration{}); run `keygate-admin migrate` first",
            store.url(),
            pending.len(),
            if pending.len() == 1 { "" } else { "s" }
        );
    }
    match cli.command {
        Command::Migrate => Ok(()),
        Command::Account(command) => account(&store, command, &out).await,
        Command::Key(KeyCommand::Purge { older_than }) => {
            control::purge_keys(&store, older_than, &out).await
        }
        Command::Key(command) => key(&store, command, &cli.key_prefix, &out).await,
        Command::Usage(command) => usage(&store, command, &out).await,
        Command::AdminToken(command) => {
            control::admin_token(&store, command, &cli.key_prefix, &out).await
        }
        Command::Audit(command) => control::audit_log(&store, command, &out).await,
    }
}

async fn account(store: &DbStore, command: AccountCommand, out: &Output) -> Result<()> {
    match command {
        AccountCommand::Create {
            name,
            balance,
            email,
            tier,
        } => {
            // Checked before anything is written.
            if let Some(tier) = &tier {
                keygate_store::validate_tier(Some(tier))?;
            }
            let account = store
                .create_account(NewAccount {
                    name,
                    email,
                    balance,
                })
                .await?;
            let account = match tier {
                Some(tier) => store.set_account_tier(&account.id, Some(tier)).await?,
                None => account,
            };
            audit(store, "account.create", account.id.to_string()).await?;
            out.account(&account)
        }
        AccountCommand::Update { id, tier } => {
            let tier = (!tier.eq_ignore_ascii_case("none")).then_some(tier);
            let account = store.set_account_tier(&id.parse()?, tier).await?;
            audit(store, "account.update", account.id.to_string()).await?;
            out.account(&account)
        }
        AccountCommand::List => out.accounts(&store.list_accounts().await?),
        AccountCommand::Show { id } => out.account(&store.get_account(&id.parse()?).await?),
        AccountCommand::TopUp { id, amount } => {
            let account = store.top_up(&id.parse()?, amount).await?;
            audit(store, "account.top_up", account.id.to_string()).await?;
            out.account(&account)
        }
    }
}

async fn key(store: &DbStore, command: KeyCommand, prefix: &KeyPrefix, out: &Output) -> Result<()> {
    match command {
        KeyCommand::Create(args) => create_key(store, args, prefix, out).await,
        KeyCommand::List { account } => {
            let account: Option<AccountId> = account.map(|id| id.parse()).transpose()?;
            if let Some(account) = &account {
                // Say "not found" rather than print an empty list for a typo.
                store.get_account(account).await?;
            }
            out.keys(&store.list_keys(account.as_ref()).await?)
        }
        KeyCommand::Show { id } => out.key(&store.get_key(&id.parse()?).await?),
        KeyCommand::Update(args) => update_key(store, args, out).await,
        KeyCommand::Revoke { id } => {
            let key = store.revoke_key(&id.parse()?, Utc::now()).await?;
            audit(store, "key.revoke", key.id.to_string()).await?;
            out.key(&key)
        }
        KeyCommand::Purge { older_than } => control::purge_keys(store, older_than, out).await,
        KeyCommand::Rotate { id, grace } => {
            let id: KeyId = id.parse()?;
            let old = store.get_key(&id).await?;
            let secret = generate(prefix, old.kind)?;
            let replacement = ReplacementKey {
                key_hash: secret.hash(),
                start: secret.start(),
            };
            let old_revoked_at = Utc::now()
                .checked_add_signed(grace.unwrap_or_default())
                .context("--grace is too long")?;
            let (new, old) = store.rotate_key(&id, replacement, old_revoked_at).await?;
            show_new_key(store, out, &new, &secret, Some(&old)).await?;
            audit(store, "key.rotate", old.id.to_string()).await?;
            audit(store, "key.create", new.id.to_string()).await
        }
    }
}

fn generate(prefix: &KeyPrefix, kind: keygate_keys::KeyKind) -> Result<SecretKey> {
    SecretKey::generate(prefix, kind).context("cannot generate a key")
}

async fn create_key(
    store: &DbStore,
    args: KeyCreate,
    prefix: &KeyPrefix,
    out: &Output,
) -> Result<()> {
    let mut settings = KeySettings::new(args.kind);
    settings.name = args.name;
    if let Some(scopes) = args.scopes {
        settings.scopes = scopes;
    }
    settings.models = args.models.map(|l| l.0).unwrap_or_default();
    settings.origins = args.origins.map(|l| l.0).unwrap_or_default();
    settings.expires_at = args.expiry.resolve(Utc::now())?;
    settings.rpm = args.rpm;
    settings.tpm = args.tpm;
    settings.max_parallel = args.max_parallel;
    settings.spend_limit = args.spend_limit;
    settings.metadata = metadata(args.metadata)?;
    // Check before generating, so a bad flag never costs a key.
    settings.validate()?;
    let secret = generate(prefix, args.kind)?;
    let key = store
        .create_key(NewApiKey {
            account_id: args.account.parse()?,
            key_hash: secret.hash(),
            start: secret.start(),
            settings,
        })
        .await?;
    show_new_key(store, out, &key, &secret, None).await?;
    audit(store, "key.create", key.id.to_string()).await
}

/// Prints a new key once. If it cannot be printed (stdout closed), nobody will
/// ever see it, so it is revoked rather than left working and unknown.
async fn show_new_key(
    store: &dyn CredentialStore,
    out: &Output,
    key: &keygate_store::ApiKey,
    secret: &SecretKey,
    replaces: Option<&keygate_store::ApiKey>,
) -> Result<()> {
    let Err(err) = out.new_key(key, secret, replaces) else {
        return Ok(());
    };
    let undo = match store.revoke_key(&key.id, Utc::now()).await {
        Ok(_) => format!("key {} was revoked", key.id),
        Err(revoke) => format!("revoking key {} failed too ({revoke}); revoke it", key.id),
    };
    Err(err.context(format!("the new key could not be shown, so {undo}")))
}

/// Collects NAME=VALUE pairs, refusing a name given twice.
fn metadata(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (name, value) in pairs {
        if map.insert(name.clone(), value).is_some() {
            bail!("--meta {name} is given more than once");
        }
    }
    Ok(map)
}

async fn update_key(store: &DbStore, args: KeyUpdateArgs, out: &Output) -> Result<()> {
    let expires_at = if args.no_expiry {
        Some(None)
    } else {
        args.expiry.resolve(Utc::now())?.map(Some)
    };
    let update = KeyUpdate {
        name: args.name,
        scopes: args.scopes,
        models: args.models.map(|l| l.0),
        origins: args.origins.map(|l| l.0),
        expires_at,
        rpm: args.rpm.map(|l| l.0),
        tpm: args.tpm.map(|l| l.0),
        max_parallel: args.max_parallel.map(|l| l.0),
        spend_limit: args.spend_limit.map(|c| c.0),
        metadata: if args.no_meta {
            Some(BTreeMap::new())
        } else {
            args.metadata.map(metadata).transpose()?
        },
    };
    if update.is_empty() {
        bail!(
            "nothing to update: give at least one of --name, --scopes, --models, --origins, --expires-in, --expires-at, --no-expiry, --rpm, --tpm, --max-parallel, --spend-limit, --meta, --no-meta"
        );
    }
    let key = store.update_key(&args.id.parse()?, update).await?;
    audit(store, "key.update", key.id.to_string()).await?;
    out.key(&key)
}

async fn usage(store: &DbStore, command: UsageCommand, out: &Output) -> Result<()> {
    match command {
        UsageCommand::Report(args) => usage_report(store, args, out).await,
        UsageCommand::Purge { older_than } => {
            let before = purge_cutoff(older_than, Utc::now())?;
            let deleted = store.purge_usage(before).await?;
            audit(store, "usage.purge", None).await?;
            out.purged(deleted, before)
        }
    }
}

async fn usage_report(store: &DbStore, args: UsageReportArgs, out: &Output) -> Result<()> {
    let now = Utc::now();
    let since = args.since.resolve("--since", now)?;
    let until = match &args.until {
        Some(until) => until.resolve("--until", now)?,
        None => now,
    };
    ensure!(
        since < until,
        "--since {} is not before --until {}",
        time(since),
        time(until)
    );
    let account: Option<AccountId> = args.account.as_deref().map(str::parse).transpose()?;
    let key: Option<KeyId> = args.key.as_deref().map(str::parse).transpose()?;
    // Say "not found" rather than print an empty report for a typo.
    if let Some(account) = &account {
        store.get_account(account).await?;
    }
    if let Some(key) = &key {
        let owner = store.get_key(key).await?.account_id;
        match &account {
            Some(account) if *account != owner => {
                bail!("key {key} belongs to account {owner}, not {account}")
            }
            _ => {}
        }
    }
    let query = UsageQuery {
        since,
        until,
        account,
        key,
        group_by: args.group_by,
    };
    let rows = store.usage_report(&query).await?;
    out.usage_report(&query, &rows)
}

/// The time before which `usage purge --older-than` deletes records. Refuses one
/// before 1970: nothing was recorded then, so the duration is a mistake.
fn purge_cutoff(older_than: TimeDelta, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    now.checked_sub_signed(older_than)
        .filter(|before| *before >= DateTime::UNIX_EPOCH)
        .with_context(|| {
            let shown = older_than
                .to_std()
                .map(|d| humantime::format_duration(d).to_string())
                .unwrap_or_default();
            format!(
                "--older-than {shown} reaches back before 1970, when nothing was recorded; give a retention such as 90d"
            )
        })
}
