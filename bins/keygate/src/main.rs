//! `keygate`: the gateway binary. Thin by design: it reads the config, sets up
//! logging, opens and migrates the store, builds the proxy, serves until SIGTERM or
//! Ctrl-C, and maps failure to an exit code.

#![allow(
    clippy::print_stderr,
    reason = "start-up failures are reported on stderr"
)]

mod config;
mod control;
mod log_fields;
mod log_writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use keygate_proxy::{Billing, Gateway, Limits, RedisLimiter, ServerOptions, Shutdown, Tracing};
use keygate_store::{CredentialStore as _, DatabaseUrl, DbStore, Ledger};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::{Config, LimitsBackend, LogFormat, Overrides};

/// keygate: an OpenAI-compatible, privacy-first API gateway for AI models.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Default: ./keygate.toml when present, else built-in
    /// defaults (127.0.0.1:8080, sqlite://keygate.db).
    #[arg(long, short, env = keygate_config::CONFIG_ENV, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // An empty variable counts as unset, in keygate-admin too.
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let overrides = Overrides {
        listen: set("KEYGATE_LISTEN"),
        database_url: set(keygate_config::DATABASE_URL_ENV),
        key_prefix: set(keygate_config::KEY_PREFIX_ENV),
        redis_url: set("KEYGATE_REDIS_URL"),
    };
    let config = match config::load(cli.config.as_deref(), &overrides, &|name| {
        std::env::var(name).ok()
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("keygate: {}", one_line(&format!("{e:#}")));
            return ExitCode::from(2);
        }
    };
    if cli.check {
        return check(&config);
    }
    // Held to the end of `main`: dropping it writes the last log lines.
    let _log_writer = init_tracing(config.log_format);
    // The main runtime runs start-up, the control plane, the metrics listener,
    // the background tasks and billing's store calls (a lease per key and
    // batch window, and its settlement); client connections are served on
    // worker threads of their own (`[server] workers`), so one thread is
    // enough here. With `[billing] batch_window = "0s"` every billed request
    // reserves and settles through this thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keygate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = one_line(&format!("{e:#}"));
            tracing::error!("{line}");
            eprintln!("keygate: {line}");
            ExitCode::FAILURE
        }
    }
}

/// `--check`: everything the start checks short of opening the database and the
/// port. Loading the config has checked every section, prices and billing included,
/// and read the provider keys; `ProxyConfig::validate` checks what `Gateway::new`
/// checks (upstream URLs, patterns, CA files) without building a gateway; then the
/// TLS files are read.
fn check(config: &Config) -> ExitCode {
    let checked = config.proxy.validate().and_then(|()| match &config.tls {
        Some(files) => keygate_proxy::load_tls(&files.cert, &files.key).map(|_| ()),
        None => Ok(()),
    });
    match checked {
        Ok(()) => {
            for (i, upstream) in config.proxy.upstreams.iter().enumerate() {
                if upstream.sends_key_in_clear() {
                    eprintln!(
                        "keygate: warning: upstreams[{i}].base_url uses http:// to a host that is not loopback: the provider key travels unencrypted"
                    );
                }
            }
            eprintln!(
                "keygate: {} is valid ({} upstreams)",
                config.source,
                config.proxy.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keygate: {}: {e}", config.source);
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let shown_url = DatabaseUrl::parse(&config.database_url)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "<invalid>".to_owned());
    let store = DbStore::connect(&config.database_url)
        .await
        .with_context(|| format!("cannot open the database {shown_url}"))?;
    let applied = store
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the database {shown_url}"))?;
    tracing::info!(database = %shown_url, backend = store.backend(), migrations_applied = applied.len(), "store ready");

    tracing::info!(
        config = %config.source,
        priced_models = config.billing.prices.len(),
        allow_unpriced = config.billing.allow_unpriced,
        "configuration loaded"
    );
    for skipped in &config.skipped {
        tracing::warn!("upstream {skipped}");
    }
    if config.proxy.upstreams.is_empty() {
        tracing::warn!(
            "no upstream is configured: every model request gets 404 model_not_found; write a keygate.toml (see docs/configuration.md)"
        );
    }
    let tls = match &config.tls {
        Some(files) => Some(
            keygate_proxy::load_tls(&files.cert, &files.key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.source))?,
        ),
        None => None,
    };
    let backend = store.backend();
    let store = Arc::new(store);
    let ledger: Arc<dyn Ledger> = Arc::clone(&store) as Arc<dyn Ledger>;
    // One shutdown signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let control = control::start(
        &config.control,
        &store,
        config.proxy.key_prefix.clone(),
        tls.clone(),
        stopped(stop_rx.clone()),
    )
    .await?;
    let billing = Arc::new(Billing::new(config.billing, ledger));
    let gateway = Gateway::new(config.proxy, store)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.source))?
        .with_billing(billing);
    let gateway = with_limits(gateway, &config.limits, backend).await?;
    let gateway = match &config.tracing {
        Some(settings) => {
            let tracing =
                Tracing::otlp(settings).map_err(|e| anyhow::anyhow!("{}: {e}", config.source))?;
            tracing::info!(
                endpoint = %settings.shown_endpoint(),
                service_name = %settings.service_name,
                sample_ratio = settings.sample_ratio,
                "traces exported over OTLP/HTTP"
            );
            gateway.with_tracing(Arc::new(tracing))
        }
        None => gateway,
    };
    for upstream in gateway.router().upstreams() {
        tracing::info!(
            upstream = upstream.name(),
            kind = upstream.kind().name(),
            "upstream configured"
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        workers = config.server.workers,
        "keygate listening on {scheme}://{}",
        listener.local_addr().unwrap_or(config.listen)
    );
    let options = ServerOptions {
        tls,
        ..config.server
    };
    // Ends on the signal, or with the process.
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let gateway = Arc::new(gateway);
    let metrics = match config.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics ([metrics] listen)")
            })?;
            tracing::info!(
                "metrics on http://{}/metrics",
                listener.local_addr().unwrap_or(addr)
            );
            Some(tokio::spawn(keygate_proxy::serve_metrics(
                listener,
                Arc::clone(&gateway),
                stopped(stop_rx.clone()),
            )))
        }
    };
    let shutdown =
        keygate_proxy::serve(listener, Arc::clone(&gateway), options, stopped(stop_rx)).await;
    control.stop().await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    // Last: the worker runtimes end with the gateway, and the control plane may
    // have used store connections opened on them until it stopped.
    drop(gateway);
    match shutdown {
        Shutdown::Drained => tracing::info!("shut down cleanly"),
        Shutdown::GraceExpired => {
            tracing::warn!("shutdown grace period ran out; remaining connections closed")
        }
    }
    Ok(())
}

/// The gateway's limits: in this instance (said at start when other instances
/// may share the database), or shared through Redis.
async fn with_limits(
    gateway: Gateway,
    limits: &LimitsBackend,
    store_backend: &str,
) -> anyhow::Result<Gateway> {
    match limits {
        LimitsBackend::Local => {
            if store_backend == "postgres" {
                tracing::warn!(
                    "limits are per instance: [limits] backend = \"local\" counts rpm, tpm, max_parallel and failed authentications in this instance only; with several instances on this database set backend = \"redis\""
                );
            }
            Ok(gateway)
        }
        LimitsBackend::Redis(settings, on_error) => {
            let redis = RedisLimiter::new(settings).map_err(|e| anyhow::anyhow!("{e}"))?;
            match redis.ping().await {
                Ok(()) => {
                    tracing::info!(prefix = %settings.prefix, "rate limits shared through Redis")
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    on_backend_error = ?on_error,
                    "Redis is not answering at start; limits follow on_backend_error until it does"
                ),
            }
            Ok(gateway.with_limits(Limits::shared(Arc::new(redis), *on_error)))
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// Logs go to stderr through a writer thread of their own (`log_writer`), so
/// no request waits on a `write` to the terminal or a pipe, or wakes a thread
/// for each line. When the writer falls behind, lines wait rather than being
/// dropped. Should that thread not start, lines are written as they come.
fn init_tracing(format: LogFormat) -> Option<log_writer::LogGuard> {
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = match log_writer::batched(std::io::stderr()) {
        Ok((writer, guard)) => (BoxMakeWriter::new(writer), Some(guard)),
        Err(e) => {
            eprintln!("keygate: cannot start the log writer thread ({e}); writing logs directly");
            (BoxMakeWriter::new(std::io::stderr), None)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(log_fields::LogTime)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(log_fields::PlainFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    guard
}

/// Folds a message onto one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
