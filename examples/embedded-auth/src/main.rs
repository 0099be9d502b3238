//! `embedded-auth`: runs the example service over the keygate database that the
//! gateway and `keygate-admin` use, until Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use embedded_auth::{DEFAULT_POLL, KeyAuth, serve};
use keygate_keys::KeyPrefix;
use keygate_store::{DatabaseUrl, DbStore};
use tokio::net::TcpListener;

/// An HTTP service of its own whose routes take keygate keys.
#[derive(Debug, Parser)]
#[command(name = "embedded-auth", about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "EMBEDDED_AUTH_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The keygate database: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "KEYGATE_DATABASE_URL",
        default_value = "sqlite://keygate.db",
        hide_env_values = true
    )]
    database_url: String,
    /// Prefix of the deployment's keys.
    #[arg(long, env = "KEYGATE_KEY_PREFIX", default_value_t = KeyPrefix::default())]
    key_prefix: KeyPrefix,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let DatabaseUrl::Sqlite(path) = DatabaseUrl::parse(&args.database_url)? {
        // Connecting would create an empty file; say what to do instead.
        if !Path::new(&path).exists() {
            bail!("no database at sqlite://{path}; run `keygate-admin migrate` first");
        }
    }
    let store = DbStore::connect(&args.database_url).await?;
    // The schema belongs to the gateway and keygate-admin; this service only reads.
    if !store.pending_migrations().await?.is_empty() {
        bail!(
            "the database {} is not migrated; run `keygate-admin migrate` first",
            store.url()
        );
    }
    let auth = KeyAuth::start(Arc::new(store), args.key_prefix, DEFAULT_POLL).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "embedded-auth listening");
    serve(listener, auth, async {
        // An error here means no signal handler; run until killed then.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await;
    Ok(())
}
