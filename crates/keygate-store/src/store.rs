//! The `CredentialStore` trait: everything the gateway and the CLI need from
//! storage, behind one object-safe interface (`Arc<dyn CredentialStore>`).

use chrono::{DateTime, Utc};
use keygate_keys::KeyHash;

use keygate_types::{AccountId, KeyId, Micros};

use crate::error::Result;
use crate::types::{Account, ApiKey, KeyChange, KeyUpdate, NewAccount, NewApiKey, ReplacementKey};

/// Accounts, keys and the key change feed.
///
/// Every method validates its input the same way on every backend (see
/// [`crate::KeySettings::validate`]), and every change to a key appends to the
/// change feed in the same transaction.
#[async_trait::async_trait]
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    /// Which backend this is: `memory`, `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Succeeds when the store can serve queries (used by readiness checks).
    async fn ping(&self) -> Result<()>;

    /// Creates an account.
    async fn create_account(&self, new: NewAccount) -> Result<Account>;

    /// One account.
    async fn get_account(&self, id: &AccountId) -> Result<Account>;

    /// All accounts, oldest first.
    async fn list_accounts(&self) -> Result<Vec<Account>>;

    /// Adds `amount` (more than zero, at most [`crate::MAX_TOP_UP`]) to the balance,
    /// atomically.
    async fn top_up(&self, id: &AccountId, amount: Micros) -> Result<Account>;

    /// Sets (or with `None` clears) the account's tier: a name of 1 to
    /// 64 letters, digits, `-` and `_` (`MAX_TIER_LEN`). Every key of the
    /// account appends to the change feed, so caches pick the tier up.
    async fn set_account_tier(&self, id: &AccountId, tier: Option<String>) -> Result<Account>;

    /// Stores a new key for an existing account.
    async fn create_key(&self, new: NewApiKey) -> Result<ApiKey>;

    /// One key by id.
    async fn get_key(&self, id: &KeyId) -> Result<ApiKey>;

    /// The key with this hash, whatever its status; `None` if there is none.
    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>>;

    /// Keys, oldest first, optionally of one account.
    async fn list_keys(&self, account: Option<&AccountId>) -> Result<Vec<ApiKey>>;

    /// Changes a key's settings.
    async fn update_key(&self, id: &KeyId, update: KeyUpdate) -> Result<ApiKey>;

    /// Revokes a key as of `at`. Revoking an already revoked key keeps the earlier
    /// time.
    async fn revoke_key(&self, id: &KeyId, at: DateTime<Utc>) -> Result<ApiKey>;

    /// Creates a replacement key with the same account and settings, and revokes
    /// the old one as of `old_revoked_at` (now, or the end of a grace period).
    /// Returns `(new, old)`.
    async fn rotate_key(
        &self,
        id: &KeyId,
        replacement: ReplacementKey,
        old_revoked_at: DateTime<Utc>,
    ) -> Result<(ApiKey, ApiKey)>;

    /// Records when keys were last used; each entry only ever moves a key's
    /// `last_used_at` forward. Unknown ids are ignored.
    async fn record_key_use(&self, uses: &[(KeyId, DateTime<Utc>)]) -> Result<()>;

    /// Up to `limit` key changes with `seq > after`, in order.
    async fn key_changes_since(&self, after: u64, limit: u32) -> Result<Vec<KeyChange>>;

    /// The newest change's `seq`, or 0 when there is none. A cache starts
    /// following the feed from here.
    async fn latest_key_change(&self) -> Result<u64>;
}
