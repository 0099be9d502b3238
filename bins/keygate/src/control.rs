//! The control plane's parts of the gateway process: the admin API listener
//! (`[admin] listen`) and the daily cleanup of long-dead keys
//! (`[keys] delete_after`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use keygate_admin_api::{AdminApi, Stores};
use keygate_keys::KeyPrefix;
use keygate_store::{Actor, ControlStore, DbStore, NewAuditEntry};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::ControlConfig;

/// How often the key cleanup runs.
const CLEANUP_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How often expired console sessions and old idempotency records are deleted.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);
/// How long an idempotency record is kept: a retry after this runs again.
const IDEMPOTENCY_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// The running control plane tasks; `main` stops them after the gateway.
#[derive(Debug)]
pub(crate) struct Control {
    admin: Option<JoinHandle<()>>,
    cleanup: Option<JoinHandle<()>>,
    housekeeping: Option<JoinHandle<()>>,
}

impl Control {
    /// Waits for the admin listener to drain (it stops on the shared shutdown
    /// signal) and ends the cleanup loop between runs.
    pub(crate) async fn stop(self) {
        for task in [self.cleanup, self.housekeeping].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
    }
}

/// Binds the admin listener (when configured) and starts the cleanup (when
/// `delete_after` is set).
pub(crate) async fn start(
    config: &ControlConfig,
    store: &Arc<DbStore>,
    prefix: KeyPrefix,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Control> {
    let admin = match config.admin_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin.listen)"))?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(
                "keygate admin API on {scheme}://{}",
                listener.local_addr().unwrap_or(addr)
            );
            let stores = Stores {
                credentials: Arc::clone(store) as _,
                ledger: Arc::clone(store) as _,
                control: Arc::clone(store) as _,
            };
            let api = Arc::new(AdminApi::new(stores, prefix));
            Some(tokio::spawn(keygate_admin_api::serve_admin(
                listener, api, tls, shutdown,
            )))
        }
    };
    let cleanup = config.delete_after.map(|after| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CLEANUP_EVERY);
            loop {
                every.tick().await;
                purge(&*store, after).await;
            }
        })
    });
    let housekeeping = admin.is_some().then(|| {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                every.tick().await;
                let now = Utc::now();
                if let Err(e) = store.purge_sessions(now).await {
                    tracing::warn!(error = %e, "expired console sessions not deleted");
                }
                if let Err(e) = store.purge_idempotency(now - IDEMPOTENCY_KEPT).await {
                    tracing::warn!(error = %e, "old idempotency records not deleted");
                }
            }
        })
    });
    Ok(Control {
        admin,
        cleanup,
        housekeeping,
    })
}

/// One cleanup run: deletes keys dead longer than `after`, each in the audit log.
async fn purge(store: &dyn ControlStore, after: Duration) {
    let Some(before) = chrono::TimeDelta::from_std(after)
        .ok()
        .and_then(|after| Utc::now().checked_sub_signed(after))
    else {
        return;
    };
    match store.purge_keys(before).await {
        Ok(purged) => {
            for id in &purged {
                let entry = NewAuditEntry::new(&Actor::Cleanup, "key.purge", Some(id.to_string()));
                if let Err(e) = store.append_audit(entry).await {
                    tracing::warn!(error = %e, key_id = %id, "key purged but not audited");
                }
            }
            tracing::info!(deleted = purged.len(), "key cleanup");
        }
        Err(e) => tracing::warn!(error = %e, "key cleanup failed; retried tomorrow"),
    }
}
