//! Authentication: credential extraction, offline format check, a moka cache in front
//! of the store (unknown keys cached briefly), the change-feed follower that keeps
//! the cache true within one poll, and batched `last_used_at` writes.
//!
//! Staleness: every cache entry remembers the feed position the follower had
//! applied before its store lookup began. The follower records each changed hash
//! with its position (in `recent_changes`) before dropping it from the cache. A
//! lookup that read the old row just before a change committed, and cached it just
//! after the follower dropped it, is caught on its next use: the entry is older
//! than the change, so it is dropped and looked up again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::HeaderMap;
use keygate_keys::{
    Credential, CredentialSource, ExtractError, ExtractOptions, KeyHash, KeyPrefix, ParsedKey,
};
use keygate_store::{ApiKey, CredentialStore, KeyId, KeyStatus, StoreError};
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use tokio::task::JoinHandle;

use crate::config::AuthSettings;
use crate::error::ProxyError;

/// A key found in the store, shared by every request that presents it. It
/// holds no limiter state: limits are keyed by key id (`keygate-limits`), so a
/// refreshed entry starts no fresh allowance.
#[derive(Debug)]
pub struct CachedKey {
    /// The stored key.
    pub key: ApiKey,
    /// Its account's tier, read with the key (an account's tier change appears
    /// in the change feed as a change of each of its keys).
    pub tier: Option<String>,
    last_used_ms: AtomicI64,
    flushed_ms: AtomicI64,
}

impl CachedKey {
    fn new(key: ApiKey, tier: Option<String>) -> Self {
        Self {
            tier,
            key,
            last_used_ms: AtomicI64::new(0),
            flushed_ms: AtomicI64::new(0),
        }
    }

    fn touch(&self, now: DateTime<Utc>) {
        self.last_used_ms
            .fetch_max(now.timestamp_millis(), Ordering::Relaxed);
    }

    /// The last use not yet written, marking it written.
    fn take_unflushed(&self) -> Option<KeyUse> {
        let used = self.last_used_ms.load(Ordering::Relaxed);
        let flushed = self.flushed_ms.fetch_max(used, Ordering::Relaxed);
        if used > flushed {
            DateTime::from_timestamp_millis(used).map(|at| (self.key.id.clone(), at))
        } else {
            None
        }
    }
}

/// A request's authenticated key.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The key.
    pub key: Arc<CachedKey>,
    /// Where the credential came from.
    pub source: CredentialSource,
}

/// A cached lookup: the key, or `None` for an unknown hash, and the feed position
/// applied before the lookup began.
#[derive(Clone, Debug)]
struct Entry {
    key: Option<Arc<CachedKey>>,
    as_of: u64,
}

/// A key id and when it was last used.
type KeyUse = (KeyId, DateTime<Utc>);

struct EntryExpiry {
    found: Duration,
    unknown: Duration,
}

impl Expiry<KeyHash, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &KeyHash, value: &Entry, _: Instant) -> Option<Duration> {
        Some(match value.key {
            Some(_) => self.found,
            None => self.unknown,
        })
    }
}

/// Checks credentials against the store through a cache.
pub struct Authenticator {
    store: Arc<dyn CredentialStore>,
    cache: Cache<KeyHash, Entry>,
    /// Hashes changed recently, with the feed position of their latest change. Kept
    /// as long as a cache entry can live.
    recent_changes: moka::sync::Cache<KeyHash, u64>,
    /// The highest feed position ever put in `recent_changes`, raised before the
    /// insert: an entry cached as of this position or later has no newer change
    /// to look for.
    newest_change: AtomicU64,
    /// The feed position the follower has applied.
    applied: AtomicU64,
    prefix: KeyPrefix,
    query_param: Option<String>,
    /// Uses not yet written: from keys that left the cache, and from failed writes.
    pending_uses: Arc<Mutex<HashMap<KeyId, DateTime<Utc>>>>,
    /// Change-feed reads the store failed.
    feed_errors: AtomicU64,
    /// `last_used_at` writes the store failed.
    key_use_errors: AtomicU64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("prefix", &self.prefix)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

fn merge_use(pending: &Mutex<HashMap<KeyId, DateTime<Utc>>>, (id, at): KeyUse) {
    if let Ok(mut pending) = pending.lock() {
        let slot = pending.entry(id).or_insert(at);
        *slot = (*slot).max(at);
    }
}

impl Authenticator {
    /// An authenticator for keys with `prefix`.
    pub fn new(
        store: Arc<dyn CredentialStore>,
        prefix: KeyPrefix,
        query_param: Option<String>,
        settings: &AuthSettings,
    ) -> Self {
        let pending_uses = Arc::new(Mutex::new(HashMap::new()));
        let sink = Arc::clone(&pending_uses);
        let cache = Cache::builder()
            .max_capacity(settings.cache_capacity)
            .expire_after(EntryExpiry {
                found: settings.cache_ttl,
                unknown: settings.negative_ttl,
            })
            .eviction_listener(move |_, entry: Entry, cause: RemovalCause| {
                if cause == RemovalCause::Replaced {
                    return;
                }
                if let Some(use_) = entry.key.and_then(|k| k.take_unflushed()) {
                    merge_use(&sink, use_);
                }
            })
            .build();
        let recent_changes = moka::sync::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .time_to_live(settings.cache_ttl.max(settings.negative_ttl) + Duration::from_secs(1))
            .build();
        Self {
            store,
            cache,
            recent_changes,
            newest_change: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            prefix,
            query_param,
            pending_uses,
            feed_errors: AtomicU64::new(0),
            key_use_errors: AtomicU64::new(0),
        }
    }

    /// Store failures in the background so far: change-feed reads, and
    /// `last_used_at` writes.
    pub(crate) fn store_errors(&self) -> (u64, u64) {
        (
            self.feed_errors.load(Ordering::Relaxed),
            self.key_use_errors.load(Ordering::Relaxed),
        )
    }

    /// Finds and checks the key a request presents. Malformed keys are refused
    /// before any lookup; expiry and revocation are checked against `now` on every
    /// call, cached or not.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Authenticated, ProxyError> {
        let options = ExtractOptions {
            query_param: self.query_param.as_deref(),
        };
        let credential = Credential::extract(headers, query, &options).map_err(|e| match e {
            ExtractError::Missing => ProxyError::MissingApiKey,
            other => {
                tracing::debug!(reason = %other, "credential refused");
                ProxyError::InvalidApiKey
            }
        })?;
        let source = credential.source();
        let parsed = ParsedKey::parse(credential.expose(), &self.prefix).map_err(|e| {
            // The error names a category (bad checksum, wrong prefix), never the key.
            tracing::debug!(reason = %e, source = source.as_str(), "malformed key refused");
            ProxyError::InvalidApiKey
        })?;
        let hash = parsed.hash();
        let mut entry = self.lookup(hash).await?;
        if self.newest_change.load(Ordering::Acquire) > entry.as_of
            && self
                .recent_changes
                .get(&hash)
                .is_some_and(|changed| changed > entry.as_of)
        {
            // Cached from a read that may predate the latest change: read again.
            self.cache.invalidate(&hash).await;
            entry = self.lookup(hash).await?;
        }
        let Some(cached) = entry.key else {
            return Err(ProxyError::InvalidApiKey);
        };
        // The cache is keyed by this hash; compare again in constant time anyway.
        if cached.key.key_hash != hash {
            return Err(ProxyError::InvalidApiKey);
        }
        match cached.key.status(now) {
            KeyStatus::Active => {}
            KeyStatus::Expired => return Err(ProxyError::ApiKeyExpired),
            KeyStatus::Revoked => return Err(ProxyError::ApiKeyRevoked),
        }
        cached.touch(now);
        Ok(Authenticated {
            key: cached,
            source,
        })
    }

    /// The cached entry for `hash`, loading it on a miss. Concurrent misses for one
    /// hash share one store lookup.
    async fn lookup(&self, hash: KeyHash) -> Result<Entry, ProxyError> {
        if let Some(entry) = self.cache.get(&hash).await {
            return Ok(entry);
        }
        let as_of = self.applied.load(Ordering::Acquire);
        let store = Arc::clone(&self.store);
        self.cache
            .try_get_with(hash, async move {
                let key = match store.find_key_by_hash(&hash).await? {
                    Some(key) => {
                        let tier = store.get_account(&key.account_id).await?.tier;
                        Some(Arc::new(CachedKey::new(key, tier)))
                    }
                    None => None,
                };
                Ok::<_, StoreError>(Entry { key, as_of })
            })
            .await
            .map_err(ProxyError::from)
    }

    /// The feed position to follow from: read before the first request is served,
    /// so nothing cached can predate it. `None` when the store is unreachable.
    pub async fn feed_start(&self) -> Option<u64> {
        match self.store.latest_key_change().await {
            Ok(seq) => {
                self.applied.store(seq, Ordering::Release);
                Some(seq)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the key change feed at start; will retry");
                None
            }
        }
    }

    /// Starts the change-feed follower (polling every `poll`) and the
    /// `last_used_at` writer (every `flush`). Who waits for them: the gateway's
    /// `Background::stop` aborts both, then calls [`Authenticator::flush_key_uses`]
    /// for the last batch.
    pub(crate) async fn start_background(
        self: &Arc<Self>,
        poll: Duration,
        flush: Duration,
    ) -> [JoinHandle<()>; 2] {
        let start = self.feed_start().await;
        let follower = tokio::spawn(Arc::clone(self).follow_changes(start, poll));
        let auth = Arc::clone(self);
        let flusher = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(flush);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                auth.flush_key_uses().await;
            }
        });
        [follower, flusher]
    }

    /// Follows the store's change feed from `start` until the task is aborted,
    /// dropping changed keys from the cache. Started once by the gateway, which
    /// aborts it at shutdown.
    pub async fn follow_changes(self: Arc<Self>, start: Option<u64>, poll: Duration) {
        let mut cursor = start;
        let mut failing = false;
        let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = match cursor {
                None => match self.store.latest_key_change().await {
                    // The store was down at start, so keys may have been cached
                    // without a feed position: start clean.
                    Ok(seq) => {
                        self.cache.invalidate_all();
                        self.cache.run_pending_tasks().await;
                        self.applied.store(seq, Ordering::Release);
                        cursor = Some(seq);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Some(after) => self.poll_once(after).await.map(|next| {
                    cursor = Some(next);
                }),
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("key store reachable again; change feed resumed");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    self.feed_errors.fetch_add(1, Ordering::Relaxed);
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the key change feed; serving cached keys until the store is back");
                }
                Err(_) => {
                    self.feed_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Applies every change after `after`; returns the new position.
    async fn poll_once(&self, mut after: u64) -> Result<u64, StoreError> {
        const BATCH: u32 = 1000;
        loop {
            let changes = self.store.key_changes_since(after, BATCH).await?;
            for change in &changes {
                // Recorded before the drop, so a racing lookup is caught either way.
                self.newest_change.fetch_max(change.seq, Ordering::AcqRel);
                self.recent_changes.insert(change.key_hash, change.seq);
                self.cache.invalidate(&change.key_hash).await;
                after = after.max(change.seq);
            }
            self.applied.store(after, Ordering::Release);
            if changes.len() < BATCH as usize {
                return Ok(after);
            }
        }
    }

    /// Writes every key use not yet written, in one batch. Run periodically and
    /// once at shutdown.
    pub async fn flush_key_uses(&self) {
        // Delivers pending eviction notifications, so their uses are in the batch.
        self.cache.run_pending_tasks().await;
        let mut batch: HashMap<KeyId, DateTime<Utc>> = match self.pending_uses.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => HashMap::new(),
        };
        for (_, entry) in &self.cache {
            if let Some((id, at)) = entry.key.as_ref().and_then(|k| k.take_unflushed()) {
                let slot = batch.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
        }
        if batch.is_empty() {
            return;
        }
        let batch: Vec<KeyUse> = batch.into_iter().collect();
        if let Err(e) = self.store.record_key_use(&batch).await {
            self.key_use_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, keys = batch.len(), "could not record key use; will retry");
            for use_ in batch {
                merge_use(&self.pending_uses, use_);
            }
        }
    }
}
