//! `MemoryStore`: the in-memory backend, for tests and for embedding keygate in a
//! process that keeps its keys elsewhere. Nothing survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use keygate_keys::KeyHash;

use keygate_types::{AccountId, KeyId, Micros, ReservationId};

use crate::control::{
    AdminToken, AuditEntry, ConsoleSession, ControlStore, IdempotencyClaim, IdempotencyRequest,
    IdempotentOutcome, NewAdminToken, NewAuditEntry,
};
use crate::error::{Result, StoreError};
use crate::ledger::{
    KeySpend, Ledger, MILLIS_PER_DAY, NewReservation, Reservation, Reserve, UsageGroup, UsageQuery,
    UsageRecord, UsageTotals, day_label, payable,
};
use crate::memory_control::MemoryControl;
use crate::store::CredentialStore;
use crate::types::{Account, ApiKey, KeyChange, KeyUpdate, NewAccount, NewApiKey, ReplacementKey};
use crate::validate::{
    check_reservation, check_rotatable, check_top_up, check_usage_record, stored_usage_record,
    validate_tier,
};

/// An in-memory [`CredentialStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Admin tokens, audit log, idempotency records and sessions.
    control: MemoryControl,
}

#[derive(Debug, Default)]
struct State {
    accounts: Vec<Account>,
    keys: Vec<ApiKey>,
    by_hash: HashMap<KeyHash, usize>,
    changes: Vec<KeyChange>,
    spend: HashMap<KeyId, KeySpend>,
    reservations: HashMap<ReservationId, Reservation>,
    /// Swept reservations, released but not yet settled.
    swept: std::collections::HashSet<ReservationId>,
    usage: Vec<UsageRecord>,
}

impl State {
    fn account_mut(&mut self, id: &AccountId) -> Result<&mut Account> {
        self.accounts
            .iter_mut()
            .find(|a| &a.id == id)
            .ok_or_else(|| StoreError::account_not_found(id))
    }

    fn key_index(&self, id: &KeyId) -> Result<usize> {
        self.keys
            .iter()
            .position(|k| &k.id == id)
            .ok_or_else(|| StoreError::key_not_found(id))
    }

    /// Removes a reservation and returns its money to the account and the key.
    fn release(&mut self, id: &ReservationId) -> Option<Reservation> {
        let held = self.reservations.remove(id)?;
        if let Some(account) = self.accounts.iter_mut().find(|a| a.id == held.account_id) {
            account.reserved = Micros(account.reserved.0.saturating_sub(held.amount.0).max(0));
        }
        if let Some(spend) = self.spend.get_mut(&held.key_id) {
            spend.reserved = Micros(spend.reserved.0.saturating_sub(held.amount.0).max(0));
        }
        Some(held)
    }

    fn record_change(&mut self, key: usize) {
        let seq = self.changes.last().map_or(1, |c| c.seq + 1);
        let key = &self.keys[key];
        self.changes.push(KeyChange {
            seq,
            key_id: key.id.clone(),
            key_hash: key.key_hash,
            changed_at: Utc::now(),
        });
    }

    fn insert_key(&mut self, new: NewApiKey) -> Result<usize> {
        new.settings.validate()?;
        if !self.accounts.iter().any(|a| a.id == new.account_id) {
            return Err(StoreError::account_not_found(&new.account_id));
        }
        if self.by_hash.contains_key(&new.key_hash) {
            return Err(StoreError::Conflict(
                "a key with this hash already exists".into(),
            ));
        }
        let key = ApiKey::new(KeyId::generate(), new, Utc::now());
        self.by_hash.insert(key.key_hash, self.keys.len());
        self.keys.push(key);
        let index = self.keys.len() - 1;
        self.record_change(index);
        Ok(index)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent
        // per operation, so a poisoned lock is taken over rather than propagated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes keys revoked or expired before `before` that hold no reservation,
    /// each through the change feed (`ControlStore::purge_keys`).
    fn purge_keys_before(&self, before: DateTime<Utc>) -> Vec<KeyId> {
        let mut state = self.state();
        let held: std::collections::HashSet<KeyId> = state
            .reservations
            .values()
            .map(|r| r.key_id.clone())
            .collect();
        let dead: Vec<usize> = (0..state.keys.len())
            .filter(|&i| {
                let k = &state.keys[i];
                let gone = k.revoked_at.is_some_and(|t| t < before)
                    || k.expires_at.is_some_and(|t| t < before);
                gone && !held.contains(&k.id)
            })
            .collect();
        for &i in &dead {
            state.record_change(i);
        }
        let mut purged = Vec::new();
        for &i in dead.iter().rev() {
            let key = state.keys.remove(i);
            state.spend.remove(&key.id);
            purged.push(key.id);
        }
        let by_hash = state
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.key_hash, i))
            .collect();
        state.by_hash = by_hash;
        purged.reverse();
        purged
    }
}

#[async_trait::async_trait]
impl CredentialStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn create_account(&self, new: NewAccount) -> Result<Account> {
        new.validate()?;
        let account = Account {
            id: AccountId::generate(),
            name: new.name,
            email: new.email,
            balance: new.balance,
            reserved: Micros::ZERO,
            tier: None,
            created_at: Utc::now(),
        };
        self.state().accounts.push(account.clone());
        Ok(account)
    }

    async fn get_account(&self, id: &AccountId) -> Result<Account> {
        self.state().account_mut(id).map(|a| a.clone())
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        Ok(self.state().accounts.clone())
    }

    async fn top_up(&self, id: &AccountId, amount: Micros) -> Result<Account> {
        check_top_up(amount)?;
        let mut state = self.state();
        let account = state.account_mut(id)?;
        account.balance = account
            .balance
            .checked_add(amount)
            .ok_or_else(|| StoreError::Conflict("the balance would overflow".into()))?;
        Ok(account.clone())
    }

    async fn set_account_tier(&self, id: &AccountId, tier: Option<String>) -> Result<Account> {
        validate_tier(tier.as_deref())?;
        let mut state = self.state();
        state.account_mut(id)?.tier = tier;
        let keys: Vec<usize> = (0..state.keys.len())
            .filter(|i| state.keys[*i].account_id == *id)
            .collect();
        for key in keys {
            state.record_change(key);
        }
        state.account_mut(id).map(|a| a.clone())
    }

    async fn create_key(&self, new: NewApiKey) -> Result<ApiKey> {
        let mut state = self.state();
        let index = state.insert_key(new)?;
        Ok(state.keys[index].clone())
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        let state = self.state();
        let index = state.key_index(id)?;
        Ok(state.keys[index].clone())
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        let state = self.state();
        Ok(state.by_hash.get(hash).map(|&i| state.keys[i].clone()))
    }

    async fn list_keys(&self, account: Option<&AccountId>) -> Result<Vec<ApiKey>> {
        let state = self.state();
        Ok(state
            .keys
            .iter()
            .filter(|k| account.is_none_or(|a| &k.account_id == a))
            .cloned()
            .collect())
    }

    async fn update_key(&self, id: &KeyId, update: KeyUpdate) -> Result<ApiKey> {
        let mut state = self.state();
        let index = state.key_index(id)?;
        let s = update.apply(&state.keys[index])?;
        let key = &mut state.keys[index];
        key.name = s.name;
        key.scopes = s.scopes;
        key.models = s.models;
        key.origins = s.origins;
        key.expires_at = s.expires_at;
        key.rpm = s.rpm;
        key.tpm = s.tpm;
        key.max_parallel = s.max_parallel;
        key.spend_limit = s.spend_limit;
        key.metadata = s.metadata;
        state.record_change(index);
        Ok(state.keys[index].clone())
    }

    async fn revoke_key(&self, id: &KeyId, at: DateTime<Utc>) -> Result<ApiKey> {
        let mut state = self.state();
        let index = state.key_index(id)?;
        let key = &mut state.keys[index];
        key.revoked_at = Some(key.revoked_at.map_or(at, |earlier| earlier.min(at)));
        state.record_change(index);
        Ok(state.keys[index].clone())
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: ReplacementKey,
        old_revoked_at: DateTime<Utc>,
    ) -> Result<(ApiKey, ApiKey)> {
        let mut state = self.state();
        let old = state.key_index(id)?;
        let now = Utc::now();
        check_rotatable(&state.keys[old], now)?;
        let settings = state.keys[old].settings();
        let account_id = state.keys[old].account_id.clone();
        let new = state.insert_key(NewApiKey {
            account_id,
            key_hash: replacement.key_hash,
            start: replacement.start,
            settings,
        })?;
        let key = &mut state.keys[old];
        key.revoked_at = Some(
            key.revoked_at
                .map_or(old_revoked_at, |t| t.min(old_revoked_at)),
        );
        state.record_change(old);
        Ok((state.keys[new].clone(), state.keys[old].clone()))
    }

    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> Result<()> {
        let mut state = self.state();
        for (id, at) in uses {
            if let Some(key) = state.keys.iter_mut().find(|k| &k.id == id) {
                key.last_used_at = Some(key.last_used_at.map_or(*at, |t| t.max(*at)));
            }
        }
        Ok(())
    }

    async fn key_changes_since(&self, after: u64, limit: u32) -> Result<Vec<KeyChange>> {
        let state = self.state();
        Ok(state
            .changes
            .iter()
            .filter(|c| c.seq > after)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn latest_key_change(&self) -> Result<u64> {
        Ok(self.state().changes.last().map_or(0, |c| c.seq))
    }
}

#[async_trait::async_trait]
impl ControlStore for MemoryStore {
    async fn create_admin_token(&self, new: NewAdminToken) -> Result<AdminToken> {
        self.control.create_admin_token(new)
    }
    async fn find_admin_token_by_hash(&self, hash: &KeyHash) -> Result<Option<AdminToken>> {
        self.control.find_admin_token_by_hash(hash)
    }
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        self.control.list_admin_tokens()
    }
    async fn revoke_admin_token(
        &self,
        id: &keygate_types::AdminTokenId,
        at: DateTime<Utc>,
    ) -> Result<AdminToken> {
        self.control.revoke_admin_token(id, at)
    }
    async fn append_audit(&self, entry: NewAuditEntry) -> Result<AuditEntry> {
        self.control.append_audit(entry)
    }
    async fn list_audit(&self, before: Option<u64>, limit: u32) -> Result<Vec<AuditEntry>> {
        self.control.list_audit(before, limit)
    }
    async fn claim_idempotency(
        &self,
        request: &IdempotencyRequest,
        now: DateTime<Utc>,
    ) -> Result<IdempotencyClaim> {
        self.control.claim_idempotency(request, now)
    }
    async fn finish_idempotency(
        &self,
        request: &IdempotencyRequest,
        outcome: &IdempotentOutcome,
    ) -> Result<()> {
        self.control.finish_idempotency(request, outcome)
    }
    async fn abandon_idempotency(&self, request: &IdempotencyRequest) -> Result<()> {
        self.control.abandon_idempotency(request)
    }
    async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64> {
        self.control.purge_idempotency(before)
    }
    async fn create_session(&self, session: &ConsoleSession) -> Result<()> {
        self.control.create_session(session)
    }
    async fn find_session(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<ConsoleSession>> {
        self.control.find_session(hash, now)
    }
    async fn delete_session(&self, hash: &KeyHash) -> Result<()> {
        self.control.delete_session(hash)
    }
    async fn purge_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
        self.control.purge_sessions(now)
    }
    async fn purge_keys(&self, before: DateTime<Utc>) -> Result<Vec<KeyId>> {
        Ok(self.purge_keys_before(before))
    }
    async fn update_account(
        &self,
        id: &AccountId,
        update: crate::control::AccountUpdate,
    ) -> Result<Account> {
        let mut state = self.state();
        let account = state.account_mut(id)?;
        let (name, email) = update.apply(account)?;
        account.name = name;
        account.email = email;
        Ok(account.clone())
    }
}

#[async_trait::async_trait]
impl Ledger for MemoryStore {
    async fn reserve(&self, new: NewReservation) -> Result<Reserve> {
        check_reservation(&new)?;
        let mut state = self.state();
        let key = &state.keys[state.key_index(&new.key_id)?];
        if key.account_id != new.account_id {
            return Err(StoreError::key_not_found(&new.key_id));
        }
        let limit = key.spend_limit;
        let spend = state.spend.get(&new.key_id).copied().unwrap_or_default();
        let account = state.account_mut(&new.account_id)?;
        if account.balance.0.saturating_sub(account.reserved.0) < new.amount.0 {
            return Ok(Reserve::InsufficientBalance);
        }
        if limit.is_some_and(|limit| {
            spend
                .spent
                .0
                .saturating_add(spend.reserved.0)
                .saturating_add(new.amount.0)
                > limit.0
        }) {
            return Ok(Reserve::SpendLimitExceeded);
        }
        account.reserved = Micros(account.reserved.0.saturating_add(new.amount.0));
        let entry = state.spend.entry(new.key_id.clone()).or_default();
        entry.reserved = Micros(entry.reserved.0.saturating_add(new.amount.0));
        let reservation = Reservation {
            id: ReservationId::generate(),
            account_id: new.account_id,
            key_id: new.key_id,
            amount: new.amount,
            expires_at: new.expires_at,
        };
        state
            .reservations
            .insert(reservation.id.clone(), reservation.clone());
        Ok(Reserve::Held(reservation))
    }

    async fn settle(&self, reservation: &Reservation, cost: Micros) -> Result<Micros> {
        let mut state = self.state();
        let held = state.release(&reservation.id).is_some();
        let swept = state.swept.remove(&reservation.id);
        if !held && !swept {
            // Settled before: settling again changes nothing.
            return Ok(Micros::ZERO);
        }
        let limit = state.keys[state.key_index(&reservation.key_id)?].spend_limit;
        let spend = state
            .spend
            .get(&reservation.key_id)
            .copied()
            .unwrap_or_default();
        let account = state.account_mut(&reservation.account_id)?;
        let charged = payable(
            cost.0,
            account.balance.0,
            account.reserved.0,
            spend.spent.0,
            limit.map(|limit| (limit.0, spend.reserved.0)),
        );
        account.balance = Micros(account.balance.0.saturating_sub(charged));
        let entry = state.spend.entry(reservation.key_id.clone()).or_default();
        entry.spent = Micros(entry.spent.0.saturating_add(charged));
        Ok(Micros(charged))
    }

    async fn release(&self, reservation: &Reservation) -> Result<()> {
        let mut state = self.state();
        state.release(&reservation.id);
        state.swept.remove(&reservation.id);
        Ok(())
    }

    async fn sweep_reservations(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut state = self.state();
        let expired: Vec<ReservationId> = state
            .reservations
            .values()
            .filter(|r| r.expires_at < now)
            .map(|r| r.id.clone())
            .collect();
        for id in &expired {
            state.release(id);
            state.swept.insert(id.clone());
        }
        Ok(expired.len() as u64)
    }

    async fn key_spend(&self, key: &KeyId) -> Result<KeySpend> {
        let state = self.state();
        state.key_index(key)?;
        Ok(state.spend.get(key).copied().unwrap_or_default())
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()> {
        for record in records {
            check_usage_record(record)?;
        }
        self.state()
            .usage
            .extend(records.iter().map(stored_usage_record));
        Ok(())
    }

    async fn usage_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>> {
        let mut found: Vec<UsageRecord> = self
            .state()
            .usage
            .iter()
            .filter(|r| r.at >= since && r.at < until)
            .cloned()
            .collect();
        found.sort_by_key(|r| r.at);
        Ok(found)
    }

    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageTotals>> {
        let state = self.state();
        let matching = state.usage.iter().filter(|r| {
            r.at >= query.since
                && r.at < query.until
                && query.account.as_ref().is_none_or(|a| &r.account_id == a)
                && query.key.as_ref().is_none_or(|k| &r.key_id == k)
        });
        let labelled = |groups: BTreeMap<String, UsageTotals>| {
            groups
                .into_iter()
                .map(|(group, totals)| UsageTotals { group, ..totals })
                .collect()
        };
        match query.group_by {
            UsageGroup::Model => Ok(labelled(totals_by(matching, |r| r.model.clone())?)),
            UsageGroup::Key => Ok(labelled(totals_by(matching, |r| r.key_id.to_string())?)),
            UsageGroup::Day => totals_by(matching, |r| {
                r.at.timestamp_millis().div_euclid(MILLIS_PER_DAY)
            })?
            .into_iter()
            .map(|(day, totals)| {
                Ok(UsageTotals {
                    group: day_label(day)?,
                    ..totals
                })
            })
            .collect(),
        }
    }

    async fn purge_usage(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut state = self.state();
        let was = state.usage.len();
        state.usage.retain(|r| r.at >= before);
        Ok((was - state.usage.len()) as u64)
    }
}

/// Totals of `records` per group, groups in order. Like the SQL backends, refuses
/// totals that do not fit in 63 bits.
fn totals_by<'a, K: Ord>(
    records: impl Iterator<Item = &'a UsageRecord>,
    group: impl Fn(&UsageRecord) -> K,
) -> Result<BTreeMap<K, UsageTotals>> {
    let mut groups: BTreeMap<K, UsageTotals> = BTreeMap::new();
    for record in records {
        let totals = groups.entry(group(record)).or_default();
        add_record(totals, record)
            .ok_or_else(|| StoreError::Database("usage totals do not fit in 63 bits".into()))?;
    }
    Ok(groups)
}

fn add_record(totals: &mut UsageTotals, record: &UsageRecord) -> Option<()> {
    let add = |sum: u64, n: u64| sum.checked_add(n).filter(|s| i64::try_from(*s).is_ok());
    totals.requests = add(totals.requests, 1)?;
    totals.input_tokens = add(totals.input_tokens, record.input_tokens)?;
    totals.output_tokens = add(totals.output_tokens, record.output_tokens)?;
    totals.cached_tokens = add(totals.cached_tokens, record.cached_tokens)?;
    totals.cost = totals.cost.checked_add(record.cost)?;
    Some(())
}
