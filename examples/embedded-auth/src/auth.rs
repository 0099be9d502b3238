//! `KeyAuth`: checks the key a request presents against a keygate store, through a
//! cache of found keys that the store's change feed keeps true within one poll.
//!
//! Staleness: the cache remembers the feed position it has applied. A lookup notes
//! that position before it reads the store and caches the row only if no change was
//! applied meanwhile, so a row read just before a revocation committed is never
//! cached after the follower dropped that key; the follower drops it on its next
//! poll instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use keygate_keys::{
    Credential, ExtractError, ExtractOptions, KeyHash, KeyKind, KeyPrefix, ParsedKey,
};
use keygate_store::{
    AccountId, ApiKey, CredentialStore, KeyId, KeyStatus, Scope, ScopeSet, StoreError,
};

/// How often the follower reads the change feed, as the gateway's default.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// What a handler learns about the request's key, from the request extensions.
/// Never the key itself, nor its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedKey {
    /// The key's id (`key_…`), safe to log.
    pub id: KeyId,
    /// The account the key belongs to.
    pub account_id: AccountId,
    /// The key's label.
    pub name: String,
    /// Everything the key may do.
    pub scopes: ScopeSet,
}

/// Why a request was refused. Messages never echo the presented key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key in `Authorization`, `x-api-key` or `api-key`.
    #[error("no API key provided; send it as 'Authorization: Bearer YOUR_KEY' (or x-api-key)")]
    MissingKey,
    /// Malformed, bad checksum, wrong prefix or not in the store.
    #[error("invalid API key provided")]
    InvalidKey,
    /// The key's expiry has passed.
    #[error("API key has expired")]
    Expired,
    /// The key was revoked, or its rotation grace period ended.
    #[error("API key has been revoked")]
    Revoked,
    /// A public (browser) key: this service takes secret keys only.
    #[error("public API keys are not accepted here; use a secret key")]
    PublicKey,
    /// The key lacks the route's scope.
    #[error("API key does not have required scope: {0}")]
    InsufficientScope(Scope),
    /// The store cannot be reached and the key is not cached.
    #[error("the key store is unavailable; retry shortly")]
    StoreUnavailable,
    /// Any other store failure; the cause is logged, not shown.
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for AuthError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(%error, "key store unavailable during key lookup");
            AuthError::StoreUnavailable
        } else {
            tracing::error!(%error, "key lookup failed");
            AuthError::Internal
        }
    }
}

impl AuthError {
    /// The HTTP status and the stable `code` of the JSON body.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingKey => (StatusCode::UNAUTHORIZED, "missing_api_key"),
            Self::InvalidKey => (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            Self::Expired => (StatusCode::UNAUTHORIZED, "api_key_expired"),
            Self::Revoked => (StatusCode::UNAUTHORIZED, "api_key_revoked"),
            Self::PublicKey => (StatusCode::FORBIDDEN, "public_key_not_allowed"),
            Self::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Self::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The refusal as a JSON response, `{"error":{"message","code"}}`, with the
    /// RFC 6750 `WWW-Authenticate` challenge on 401 and on a missing scope.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let (status, code) = self.status_and_code();
        let challenge = match &self {
            Self::MissingKey => Some("Bearer realm=\"keygate\"".to_owned()),
            Self::InvalidKey | Self::Expired | Self::Revoked => {
                Some("Bearer realm=\"keygate\", error=\"invalid_token\"".to_owned())
            }
            Self::InsufficientScope(scope) => Some(format!(
                "Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            Self::PublicKey | Self::StoreUnavailable | Self::Internal => None,
        };
        let mut response = json_error(status, code, &self.to_string());
        let headers = response.headers_mut();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON error response, `{"error":{"message","code"}}`.
pub(crate) fn json_error<B: From<Bytes>>(
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<B> {
    let body = serde_json::json!({ "error": { "message": message, "code": code } });
    let mut response = Response::new(B::from(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Checks presented keys. Cheap to clone: clones share one cache and one follower.
#[derive(Clone)]
pub struct KeyAuth {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn CredentialStore>,
    prefix: KeyPrefix,
    cache: Mutex<Cache>,
}

/// Found keys by hash. Unknown hashes are not cached (they would let anyone grow
/// the map), so each costs one store lookup.
struct Cache {
    /// Every change up to this feed position has been applied.
    applied: u64,
    keys: HashMap<KeyHash, Arc<ApiKey>>,
}

impl fmt::Debug for KeyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAuth")
            .field("store", &self.inner.store.backend())
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl KeyAuth {
    /// Reads the change feed's position and starts following it every `poll`, so
    /// a key changed in the store (by this process or `keygate-admin`) is seen
    /// within one poll. Fails when the store cannot be reached.
    ///
    /// The follower holds only a weak reference: it ends by itself within one poll
    /// after the last clone of this value (and every layer made from it) is
    /// dropped, and holds nothing to flush, so nobody waits for it.
    pub async fn start(
        store: Arc<dyn CredentialStore>,
        prefix: KeyPrefix,
        poll: Duration,
    ) -> Result<Self, StoreError> {
        let applied = store.latest_key_change().await?;
        let inner = Arc::new(Inner {
            store,
            prefix,
            cache: Mutex::new(Cache {
                applied,
                keys: HashMap::new(),
            }),
        });
        tokio::spawn(follow_changes(Arc::downgrade(&inner), poll));
        Ok(Self { inner })
    }

    /// Finds the key in `headers`, checks its format without IO, looks it up by
    /// hash, and checks its status at `now` and that it has `scope`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        scope: Scope,
        now: DateTime<Utc>,
    ) -> Result<AuthenticatedKey, AuthError> {
        let hash = self.presented_hash(headers)?;
        let key = self
            .inner
            .lookup(&hash)
            .await?
            .ok_or(AuthError::InvalidKey)?;
        match key.status(now) {
            KeyStatus::Active => {}
            KeyStatus::Expired => return Err(AuthError::Expired),
            KeyStatus::Revoked => return Err(AuthError::Revoked),
        }
        if key.kind == KeyKind::Public {
            return Err(AuthError::PublicKey);
        }
        if !key.scopes.contains(scope) {
            return Err(AuthError::InsufficientScope(scope));
        }
        Ok(AuthenticatedKey {
            id: key.id.clone(),
            account_id: key.account_id.clone(),
            name: key.name.clone(),
            scopes: key.scopes,
        })
    }

    /// The hash of the presented key, once its format and checksum are valid. The
    /// presented text is dropped here, before any await.
    fn presented_hash(&self, headers: &HeaderMap) -> Result<KeyHash, AuthError> {
        // A key in a query string ends up in access logs, so only headers count.
        let options = ExtractOptions { query_param: None };
        let credential = Credential::extract(headers, None, &options).map_err(|e| match e {
            ExtractError::Missing => AuthError::MissingKey,
            _ => AuthError::InvalidKey,
        })?;
        let parsed = ParsedKey::parse(credential.expose(), &self.inner.prefix)
            .map_err(|_| AuthError::InvalidKey)?;
        Ok(parsed.hash())
    }
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Nothing panics while holding the lock, so a poisoned cache is still whole.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key with `hash`, from the cache or the store.
    async fn lookup(&self, hash: &KeyHash) -> Result<Option<Arc<ApiKey>>, AuthError> {
        let as_of = {
            let cache = self.cache();
            if let Some(key) = cache.keys.get(hash) {
                return Ok(Some(Arc::clone(key)));
            }
            cache.applied
        };
        let found = self.store.find_key_by_hash(hash).await?.map(Arc::new);
        if let Some(key) = &found {
            let mut cache = self.cache();
            // A change applied during the read may be newer than this row.
            if cache.applied == as_of {
                cache.keys.insert(*hash, Arc::clone(key));
            }
        }
        Ok(found)
    }

    /// Drops every key changed after the applied position.
    async fn apply_changes(&self) -> Result<(), StoreError> {
        const BATCH: u32 = 500;
        loop {
            let after = self.cache().applied;
            let changes = self.store.key_changes_since(after, BATCH).await?;
            let mut cache = self.cache();
            for change in &changes {
                cache.keys.remove(&change.key_hash);
                cache.applied = cache.applied.max(change.seq);
            }
            if changes.len() < BATCH as usize {
                return Ok(());
            }
        }
    }
}

/// Applies the change feed every `poll` while anyone still holds the `KeyAuth`.
/// While the store is unreachable, cached keys keep working, as in the gateway.
async fn follow_changes(inner: Weak<Inner>, poll: Duration) {
    let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.apply_changes().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("key store reachable again; change feed resumed");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot read the key change feed; serving cached keys until the store is back");
            }
            Err(_) => {}
        }
    }
}
