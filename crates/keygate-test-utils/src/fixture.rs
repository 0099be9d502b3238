//! The one way tests make "an account and a key": an account with a balance and
//! keys on it, written straight into a store, with the plaintext key handed back.
//! Every function works on any store (`MemoryStore`, `DbStore`, a trait object or
//! a test wrapper) and panics when the store refuses, since a fixture that cannot
//! be set up fails its test.

use keygate_keys::{KeyKind, KeyPrefix, SecretKey};
use keygate_store::{
    Account, AccountId, ApiKey, CredentialStore, KeySettings, Micros, NewAccount, NewApiKey,
};

/// The prefix fixture keys carry: keygate's default, `kg`.
pub fn prefix() -> KeyPrefix {
    KeyPrefix::default()
}

/// Creates an account called `name` holding `balance`.
pub async fn account<S>(store: &S, name: &str, balance: Micros) -> Account
where
    S: CredentialStore + ?Sized,
{
    let new = NewAccount {
        name: name.to_owned(),
        email: None,
        balance,
    };
    store
        .create_account(new)
        .await
        .unwrap_or_else(|e| panic!("fixture: cannot create account {name:?}: {e}"))
}

/// Creates a key with `settings` on `account`, from a fresh secret of the kind the
/// settings name. Returns the secret (its plaintext is `expose()`) and the stored key.
pub async fn key<S>(store: &S, account: &AccountId, settings: KeySettings) -> (SecretKey, ApiKey)
where
    S: CredentialStore + ?Sized,
{
    let secret = SecretKey::generate(&prefix(), settings.kind)
        .unwrap_or_else(|e| panic!("fixture: cannot generate a key: {e}"));
    let stored = key_from(store, account, &secret, settings).await;
    (secret, stored)
}

/// Creates a private key with every scope and no limits on `account`.
pub async fn private_key<S>(store: &S, account: &AccountId) -> (SecretKey, ApiKey)
where
    S: CredentialStore + ?Sized,
{
    key(store, account, KeySettings::new(KeyKind::Private)).await
}

/// Stores `secret` (made by the caller, say from fixed bytes) as a key with
/// `settings` on `account`.
pub async fn key_from<S>(
    store: &S,
    account: &AccountId,
    secret: &SecretKey,
    settings: KeySettings,
) -> ApiKey
where
    S: CredentialStore + ?Sized,
{
    let new = NewApiKey {
        account_id: account.clone(),
        key_hash: secret.hash(),
        start: secret.start(),
        settings,
    };
    store
        .create_key(new)
        .await
        .unwrap_or_else(|e| panic!("fixture: cannot create a key on {account}: {e}"))
}

/// An account holding `balance` with one private key with every scope: the usual
/// start of a test that needs someone to pay and something to authenticate with.
pub async fn account_and_key<S>(store: &S, balance: Micros) -> (Account, SecretKey, ApiKey)
where
    S: CredentialStore + ?Sized,
{
    let account = account(store, "test account", balance).await;
    let (secret, key) = private_key(store, &account.id).await;
    (account, secret, key)
}
