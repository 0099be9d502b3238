//! Key queries on SQLite and PostgreSQL: accounts, keys and the key change feed,
//! written once in `sql_ops!` and compiled for each connection type, and the
//! [`CredentialStore`] impl that dispatches to them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
#[cfg(feature = "postgres")]
use diesel_async::AsyncPgConnection;
use diesel_async::{AsyncConnection, RunQueryDsl};
use keygate_keys::KeyHash;
use keygate_types::{AccountId, KeyId, Micros};

use super::DbStore;
use super::limit::limited;
#[cfg(feature = "sqlite")]
use super::pool::SqliteConn;
use super::rows::{AccountRow, KeyChangeRow, KeyRow, KeySettingsRow, NewKeyChangeRow, millis};
use super::schema::{accounts, api_keys, key_changes};
use crate::error::{Result, StoreError};
use crate::store::CredentialStore;
use crate::types::{Account, ApiKey, KeyChange, KeyUpdate, NewAccount, NewApiKey, ReplacementKey};
use crate::validate::{check_rotatable, check_top_up, validate_tier};

/// The store's operations, written once and compiled per connection type.
/// `$begin_key_change` is the statement every key-changing transaction starts with:
/// on SQLite a write that takes the write lock up front (so a read-then-write
/// transaction never fails with a stale snapshot when another process writes), on
/// PostgreSQL a lock that serialises key changes so `key_changes.seq` grows in
/// commit order and a poller never skips a change.
macro_rules! sql_ops {
    ($module:ident, $conn:ty, $begin_key_change:literal) => {
        mod $module {
            use super::*;

            type C = $conn;

            pub(super) async fn ping(c: &mut C) -> Result<()> {
                diesel::sql_query("SELECT 1").execute(c).await?;
                Ok(())
            }

            async fn begin_key_change(c: &mut C) -> Result<()> {
                diesel::sql_query($begin_key_change).execute(c).await?;
                Ok(())
            }

            async fn record_change(c: &mut C, key: &KeyRow, now: i64) -> Result<()> {
                diesel::insert_into(key_changes::table)
                    .values(NewKeyChangeRow {
                        key_id: &key.id,
                        key_hash: &key.key_hash,
                        changed_at: now,
                    })
                    .execute(c)
                    .await?;
                Ok(())
            }

            pub(super) async fn create_account(c: &mut C, new: NewAccount) -> Result<Account> {
                new.validate()?;
                let row = AccountRow {
                    id: AccountId::generate().to_string(),
                    name: new.name,
                    email: new.email,
                    balance_micros: new.balance.0,
                    reserved_micros: 0,
                    created_at: millis(Utc::now()),
                    tier: None,
                };
                diesel::insert_into(accounts::table)
                    .values(&row)
                    .execute(c)
                    .await?;
                row.try_into()
            }

            pub(super) async fn get_account(c: &mut C, id: &AccountId) -> Result<Account> {
                accounts::table
                    .find(id.as_str())
                    .select(AccountRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::account_not_found(id))?
                    .try_into()
            }

            pub(super) async fn list_accounts(c: &mut C) -> Result<Vec<Account>> {
                accounts::table
                    .select(AccountRow::as_select())
                    .order((accounts::created_at.asc(), accounts::id.asc()))
                    .load(c)
                    .await?
                    .into_iter()
                    .map(Account::try_from)
                    .collect()
            }

            pub(super) async fn top_up(
                c: &mut C,
                id: &AccountId,
                amount: Micros,
            ) -> Result<Account> {
                check_top_up(amount)?;
                let updated = diesel::update(accounts::table.find(id.as_str()))
                    .filter(accounts::balance_micros.le(i64::MAX - amount.0))
                    .set(accounts::balance_micros.eq(accounts::balance_micros + amount.0))
                    .execute(c)
                    .await?;
                let account = get_account(c, id).await?;
                if updated == 0 {
                    return Err(StoreError::Conflict(format!(
                        "account {id}: the balance would overflow"
                    )));
                }
                Ok(account)
            }

            pub(super) async fn set_account_tier(
                c: &mut C,
                id: &AccountId,
                tier: Option<String>,
            ) -> Result<Account> {
                validate_tier(tier.as_deref())?;
                let id = id.clone();
                c.transaction::<_, StoreError, _>(async move |c| {
                    begin_key_change(c).await?;
                    let updated = diesel::update(accounts::table.find(id.as_str()))
                        .set(accounts::tier.eq(tier))
                        .execute(c)
                        .await?;
                    if updated == 0 {
                        return Err(StoreError::account_not_found(&id));
                    }
                    let keys: Vec<KeyRow> = api_keys::table
                        .filter(api_keys::account_id.eq(id.as_str()))
                        .select(KeyRow::as_select())
                        .load(c)
                        .await?;
                    let now = millis(Utc::now());
                    for key in &keys {
                        record_change(c, key, now).await?;
                    }
                    get_account(c, &id).await
                })
                .await
            }

            async fn key_row(c: &mut C, id: &KeyId) -> Result<KeyRow> {
                api_keys::table
                    .find(id.as_str())
                    .select(KeyRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .ok_or_else(|| StoreError::key_not_found(id))
            }

            /// Inserts a key whose settings are already validated.
            async fn insert_key(c: &mut C, new: NewApiKey, now: DateTime<Utc>) -> Result<KeyRow> {
                let exists: i64 = accounts::table
                    .filter(accounts::id.eq(new.account_id.as_str()))
                    .count()
                    .get_result(c)
                    .await?;
                if exists == 0 {
                    return Err(StoreError::account_not_found(&new.account_id));
                }
                let row = KeyRow::from_key(&ApiKey::new(KeyId::generate(), new, now))?;
                diesel::insert_into(api_keys::table)
                    .values(&row)
                    .execute(c)
                    .await?;
                record_change(c, &row, millis(now)).await?;
                Ok(row)
            }

            pub(super) async fn create_key(c: &mut C, new: NewApiKey) -> Result<ApiKey> {
                new.settings.validate()?;
                let row = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        insert_key(c, new, Utc::now()).await
                    })
                    .await?;
                row.try_into()
            }

            pub(super) async fn get_key(c: &mut C, id: &KeyId) -> Result<ApiKey> {
                key_row(c, id).await?.try_into()
            }

            pub(super) async fn find_key_by_hash(
                c: &mut C,
                hash: &KeyHash,
            ) -> Result<Option<ApiKey>> {
                api_keys::table
                    .filter(api_keys::key_hash.eq(hash.to_hex()))
                    .select(KeyRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                    .map(ApiKey::try_from)
                    .transpose()
            }

            pub(super) async fn list_keys(
                c: &mut C,
                account: Option<&AccountId>,
            ) -> Result<Vec<ApiKey>> {
                let mut query = api_keys::table
                    .select(KeyRow::as_select())
                    .order((api_keys::created_at.asc(), api_keys::id.asc()))
                    .into_boxed();
                if let Some(account) = account {
                    query = query.filter(api_keys::account_id.eq(account.as_str()));
                }
                query
                    .load(c)
                    .await?
                    .into_iter()
                    .map(ApiKey::try_from)
                    .collect()
            }

            pub(super) async fn update_key(
                c: &mut C,
                id: &KeyId,
                update: KeyUpdate,
            ) -> Result<ApiKey> {
                let id = id.clone();
                let row = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        let key = ApiKey::try_from(key_row(c, &id).await?)?;
                        let settings = update.apply(&key)?;
                        diesel::update(api_keys::table.find(id.as_str()))
                            .set(KeySettingsRow::new(&settings)?)
                            .execute(c)
                            .await?;
                        let row = key_row(c, &id).await?;
                        record_change(c, &row, millis(Utc::now())).await?;
                        Ok(row)
                    })
                    .await?;
                row.try_into()
            }

            /// Sets `revoked_at` to the earlier of its current value and `at`.
            async fn revoke_row(c: &mut C, id: &KeyId, at: i64) -> Result<KeyRow> {
                let mut row = key_row(c, id).await?;
                let revoked_at = row.revoked_at.map_or(at, |earlier| earlier.min(at));
                diesel::update(api_keys::table.find(id.as_str()))
                    .set(api_keys::revoked_at.eq(revoked_at))
                    .execute(c)
                    .await?;
                row.revoked_at = Some(revoked_at);
                record_change(c, &row, millis(Utc::now())).await?;
                Ok(row)
            }

            pub(super) async fn revoke_key(
                c: &mut C,
                id: &KeyId,
                at: DateTime<Utc>,
            ) -> Result<ApiKey> {
                let id = id.clone();
                let row = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        revoke_row(c, &id, millis(at)).await
                    })
                    .await?;
                row.try_into()
            }

            pub(super) async fn rotate_key(
                c: &mut C,
                id: &KeyId,
                replacement: ReplacementKey,
                old_revoked_at: DateTime<Utc>,
            ) -> Result<(ApiKey, ApiKey)> {
                let id = id.clone();
                let (new, old) = c
                    .transaction::<_, StoreError, _>(async move |c| {
                        begin_key_change(c).await?;
                        let now = Utc::now();
                        let old = ApiKey::try_from(key_row(c, &id).await?)?;
                        check_rotatable(&old, now)?;
                        let new = NewApiKey {
                            account_id: old.account_id.clone(),
                            key_hash: replacement.key_hash,
                            start: replacement.start,
                            settings: old.settings(),
                        };
                        let new = insert_key(c, new, now).await?;
                        let old = revoke_row(c, &id, millis(old_revoked_at)).await?;
                        Ok((new, old))
                    })
                    .await?;
                Ok((new.try_into()?, old.try_into()?))
            }

            pub(super) async fn record_key_use(
                c: &mut C,
                uses: &[(KeyId, DateTime<Utc>)],
            ) -> Result<()> {
                let uses: Vec<(String, i64)> = uses
                    .iter()
                    .map(|(id, at)| (id.to_string(), millis(*at)))
                    .collect();
                c.transaction::<_, StoreError, _>(async move |c| {
                    for (id, at) in &uses {
                        diesel::update(api_keys::table.find(id.as_str()))
                            .filter(
                                api_keys::last_used_at
                                    .is_null()
                                    .or(api_keys::last_used_at.lt(*at)),
                            )
                            .set(api_keys::last_used_at.eq(*at))
                            .execute(c)
                            .await?;
                    }
                    Ok(())
                })
                .await
            }

            pub(super) async fn key_changes_since(
                c: &mut C,
                after: u64,
                limit: u32,
            ) -> Result<Vec<KeyChange>> {
                let after = i64::try_from(after).unwrap_or(i64::MAX);
                limited(
                    key_changes::table
                        .filter(key_changes::seq.gt(after))
                        .order(key_changes::seq.asc())
                        .select(KeyChangeRow::as_select()),
                    limit,
                )
                .load(c)
                .await?
                .into_iter()
                .map(KeyChange::try_from)
                .collect()
            }

            pub(super) async fn latest_key_change(c: &mut C) -> Result<u64> {
                let latest: Option<i64> = key_changes::table
                    .select(diesel::dsl::max(key_changes::seq))
                    .first(c)
                    .await?;
                Ok(latest.and_then(|seq| u64::try_from(seq).ok()).unwrap_or(0))
            }
        }
    };
}

#[cfg(feature = "sqlite")]
sql_ops!(
    sqlite_ops,
    SqliteConn,
    "DELETE FROM key_changes WHERE seq < 0"
);
#[cfg(feature = "postgres")]
sql_ops!(
    pg_ops,
    AsyncPgConnection,
    "LOCK TABLE key_changes IN SHARE ROW EXCLUSIVE MODE"
);

#[async_trait::async_trait]
impl CredentialStore for DbStore {
    fn backend(&self) -> &'static str {
        self.url().backend()
    }

    async fn ping(&self) -> Result<()> {
        dispatch!(self.read().await?, sqlite_ops | pg_ops, ping())
    }

    async fn create_account(&self, new: NewAccount) -> Result<Account> {
        dispatch!(
            self.write().await?,
            sqlite_ops | pg_ops,
            create_account(new)
        )
    }

    async fn get_account(&self, id: &AccountId) -> Result<Account> {
        dispatch!(self.read().await?, sqlite_ops | pg_ops, get_account(id))
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        dispatch!(self.read().await?, sqlite_ops | pg_ops, list_accounts())
    }

    async fn top_up(&self, id: &AccountId, amount: Micros) -> Result<Account> {
        dispatch!(self.write().await?, sqlite_ops | pg_ops, top_up(id, amount))
    }

    async fn set_account_tier(&self, id: &AccountId, tier: Option<String>) -> Result<Account> {
        dispatch!(
            self.write().await?,
            sqlite_ops | pg_ops,
            set_account_tier(id, tier)
        )
    }

    async fn create_key(&self, new: NewApiKey) -> Result<ApiKey> {
        dispatch!(self.write().await?, sqlite_ops | pg_ops, create_key(new))
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        dispatch!(self.read().await?, sqlite_ops | pg_ops, get_key(id))
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        dispatch!(
            self.read().await?,
            sqlite_ops | pg_ops,
            find_key_by_hash(hash)
        )
    }

    async fn list_keys(&self, account: Option<&AccountId>) -> Result<Vec<ApiKey>> {
        dispatch!(self.read().await?, sqlite_ops | pg_ops, list_keys(account))
    }

    async fn update_key(&self, id: &KeyId, update: KeyUpdate) -> Result<ApiKey> {
        dispatch!(
            self.write().await?,
            sqlite_ops | pg_ops,
            update_key(id, update)
        )
    }

    async fn revoke_key(&self, id: &KeyId, at: DateTime<Utc>) -> Result<ApiKey> {
        dispatch!(self.write().await?, sqlite_ops | pg_ops, revoke_key(id, at))
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: ReplacementKey,
        old_revoked_at: DateTime<Utc>,
    ) -> Result<(ApiKey, ApiKey)> {
        dispatch!(
            self.write().await?,
            sqlite_ops | pg_ops,
            rotate_key(id, replacement, old_revoked_at)
        )
    }

    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> Result<()> {
        // One row per key, latest time, in id order: concurrent batches from several
        // gateways then lock rows in the same order and cannot deadlock.
        let mut latest: std::collections::BTreeMap<&KeyId, DateTime<Utc>> = Default::default();
        for (id, at) in uses {
            let entry = latest.entry(id).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let uses: Vec<(KeyId, DateTime<Utc>)> = latest
            .into_iter()
            .map(|(id, at)| (id.clone(), at))
            .collect();
        dispatch!(
            self.write().await?,
            sqlite_ops | pg_ops,
            record_key_use(&uses)
        )
    }

    async fn key_changes_since(&self, after: u64, limit: u32) -> Result<Vec<KeyChange>> {
        dispatch!(
            self.read().await?,
            sqlite_ops | pg_ops,
            key_changes_since(after, limit)
        )
    }

    async fn latest_key_change(&self) -> Result<u64> {
        dispatch!(self.read().await?, sqlite_ops | pg_ops, latest_key_change())
    }
}
