//! A store that delegates every call to another and fails or stalls on command:
//! the one wrapper the gateway tests use for store outages and slow answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keygate_keys::KeyHash;
use keygate_store::{
    Account, AccountId, ApiKey, CredentialStore, KeyChange, KeyId, KeySpend, KeyUpdate, Ledger,
    Micros, NewAccount, NewApiKey, NewReservation, ReplacementKey, Reservation, Reserve,
    StoreError, UsageQuery, UsageRecord, UsageTotals,
};

/// A store that is both key store and ledger, as the gateway's backends are.
pub trait Store: CredentialStore + Ledger {}
impl<T: CredentialStore + Ledger> Store for T {}

/// `inner` with switches. Everything is off until a test turns it on.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    /// The key store is unavailable: ping, key lookups, last-used writes and the
    /// change feed fail.
    keys_down: AtomicBool,
    /// Usage writes fail as unavailable.
    usage_down: AtomicBool,
    /// Usage writes holding a record of this model are refused as invalid.
    refused_model: std::sync::Mutex<Option<String>>,
    /// Sleep between reading a key and returning it, in milliseconds.
    lookup_delay_ms: AtomicU64,
    /// Answers a reservation this long after it committed, in milliseconds.
    reserve_reply_delay_ms: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            keys_down: AtomicBool::new(false),
            usage_down: AtomicBool::new(false),
            refused_model: std::sync::Mutex::new(None),
            lookup_delay_ms: AtomicU64::new(0),
            reserve_reply_delay_ms: AtomicU64::new(0),
        }
    }

    /// Switches the key store off (`true`) or back on.
    pub fn set_keys_down(&self, down: bool) {
        self.keys_down.store(down, Ordering::SeqCst);
    }

    /// Makes usage writes fail (`true`) or succeed again.
    pub fn set_usage_down(&self, down: bool) {
        self.usage_down.store(down, Ordering::SeqCst);
    }

    /// Refuses (as invalid) every usage write holding a record of `model`, or
    /// none again.
    pub fn set_usage_refused_for(&self, model: Option<&str>) {
        *self.refused_model.lock().unwrap() = model.map(str::to_owned);
    }

    /// Delays each key lookup's answer by `delay` after the key was read.
    pub fn set_lookup_delay(&self, delay: Duration) {
        self.lookup_delay_ms.store(millis(delay), Ordering::SeqCst);
    }

    /// Delays each reservation's answer by `delay` after it committed.
    pub fn set_reserve_reply_delay(&self, delay: Duration) {
        self.reserve_reply_delay_ms
            .store(millis(delay), Ordering::SeqCst);
    }

    fn keys_up(&self) -> keygate_store::Result<()> {
        if self.keys_down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test: store switched off".into()))
        } else {
            Ok(())
        }
    }
}

fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap()
}

/// Sleeps for `ms` milliseconds, if any.
async fn stall(ms: &AtomicU64) {
    let ms = ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait]
impl CredentialStore for FaultyStore {
    fn backend(&self) -> &'static str {
        "faulty"
    }
    async fn ping(&self) -> keygate_store::Result<()> {
        self.keys_up()?;
        self.inner.ping().await
    }
    async fn create_account(&self, new: NewAccount) -> keygate_store::Result<Account> {
        self.inner.create_account(new).await
    }
    async fn get_account(&self, id: &AccountId) -> keygate_store::Result<Account> {
        self.inner.get_account(id).await
    }
    async fn list_accounts(&self) -> keygate_store::Result<Vec<Account>> {
        self.inner.list_accounts().await
    }
    async fn top_up(&self, id: &AccountId, amount: Micros) -> keygate_store::Result<Account> {
        self.inner.top_up(id, amount).await
    }
    async fn set_account_tier(
        &self,
        id: &AccountId,
        tier: Option<String>,
    ) -> keygate_store::Result<Account> {
        self.inner.set_account_tier(id, tier).await
    }
    async fn create_key(&self, new: NewApiKey) -> keygate_store::Result<ApiKey> {
        self.inner.create_key(new).await
    }
    async fn get_key(&self, id: &KeyId) -> keygate_store::Result<ApiKey> {
        self.inner.get_key(id).await
    }
    async fn find_key_by_hash(&self, hash: &KeyHash) -> keygate_store::Result<Option<ApiKey>> {
        self.keys_up()?;
        let found = self.inner.find_key_by_hash(hash).await;
        stall(&self.lookup_delay_ms).await;
        found
    }
    async fn list_keys(&self, account: Option<&AccountId>) -> keygate_store::Result<Vec<ApiKey>> {
        self.inner.list_keys(account).await
    }
    async fn update_key(&self, id: &KeyId, update: KeyUpdate) -> keygate_store::Result<ApiKey> {
        self.inner.update_key(id, update).await
    }
    async fn revoke_key(&self, id: &KeyId, at: DateTime<Utc>) -> keygate_store::Result<ApiKey> {
        self.inner.revoke_key(id, at).await
    }
    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: ReplacementKey,
        old_key_stops_at: DateTime<Utc>,
    ) -> keygate_store::Result<(ApiKey, ApiKey)> {
        self.inner
            .rotate_key(id, replacement, old_key_stops_at)
            .await
    }
    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> keygate_store::Result<()> {
        self.keys_up()?;
        self.inner.record_key_use(uses).await
    }
    async fn key_changes_since(
        &self,
        after: u64,
        limit: u32,
    ) -> keygate_store::Result<Vec<KeyChange>> {
        self.keys_up()?;
        self.inner.key_changes_since(after, limit).await
    }
    async fn latest_key_change(&self) -> keygate_store::Result<u64> {
        self.keys_up()?;
        self.inner.latest_key_change().await
    }
}

#[async_trait]
impl Ledger for FaultyStore {
    async fn reserve(&self, new: NewReservation) -> keygate_store::Result<Reserve> {
        let reserved = self.inner.reserve(new).await;
        stall(&self.reserve_reply_delay_ms).await;
        reserved
    }
    async fn settle(&self, r: &Reservation, cost: Micros) -> keygate_store::Result<Micros> {
        self.inner.settle(r, cost).await
    }
    async fn release(&self, r: &Reservation) -> keygate_store::Result<()> {
        self.inner.release(r).await
    }
    async fn sweep_reservations(&self, now: DateTime<Utc>) -> keygate_store::Result<u64> {
        self.inner.sweep_reservations(now).await
    }
    async fn key_spend(&self, key: &KeyId) -> keygate_store::Result<KeySpend> {
        self.inner.key_spend(key).await
    }
    async fn record_usage(&self, records: &[UsageRecord]) -> keygate_store::Result<()> {
        if self.usage_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("test: store switched off".into()));
        }
        let refused = self.refused_model.lock().unwrap().clone();
        if refused.is_some_and(|model| records.iter().any(|r| r.model == model)) {
            return Err(StoreError::Invalid {
                field: "model",
                reason: "test: refused".into(),
            });
        }
        self.inner.record_usage(records).await
    }
    async fn usage_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> keygate_store::Result<Vec<UsageRecord>> {
        self.inner.usage_between(since, until).await
    }
    async fn purge_usage(&self, before: DateTime<Utc>) -> keygate_store::Result<u64> {
        self.inner.purge_usage(before).await
    }
    async fn usage_report(&self, query: &UsageQuery) -> keygate_store::Result<Vec<UsageTotals>> {
        self.inner.usage_report(query).await
    }
}
