//! Ids: `AccountId`, `KeyId`, `AdminTokenId` and `ReservationId`, each a prefix, `_` and 16
//! random hex digits. They are not secret, and an id that fails to parse is never
//! echoed whole (a pasted API key must not be printed back).

use std::fmt;
use std::str::FromStr;

use rand::RngExt;

use crate::limits::MAX_ID_LEN;

/// Text that is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id: {reason}")]
pub struct IdError {
    reason: String,
}

impl IdError {
    /// What is wrong with the text, without the text itself when it looks like a
    /// key.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            pub fn generate() -> Self {
                let bits: u64 = rand::rng().random();
                Self(format!(concat!($prefix, "_{:016x}"), bits))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let s = s.trim();
                let valid = s.len() <= MAX_ID_LEN
                    && s
                        .strip_prefix(concat!($prefix, "_"))
                        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
                if valid {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError { reason: not_an_id(s, $prefix) })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account's id, `acct_` and 16 hex.
    AccountId,
    "acct"
);
id_type!(
    /// An API key's id, `key_` and 16 hex. Not secret; not the key.
    KeyId,
    "key"
);
id_type!(
    /// An admin token's id, `adm_` and 16 hex. Not secret; not the token.
    AdminTokenId,
    "adm"
);
id_type!(
    /// A reservation's id, `res_` and 16 hex.
    ReservationId,
    "res"
);

/// Says why `text` is not an id without echoing it whole: a pasted API key must not
/// be printed back.
fn not_an_id(text: &str, prefix: &str) -> String {
    let looks_like_a_key = text.contains("_sk_") || text.contains("_pk_") || text.contains("_ak_");
    if looks_like_a_key {
        return format!(
            "that looks like an API key, not a {prefix}_… id; `keygate-admin key list` shows ids"
        );
    }
    let shown: String = text.chars().take(24).collect();
    let ellipsis = if text.chars().count() > 24 { "…" } else { "" };
    format!("{shown:?}{ellipsis} is not a {prefix}_… id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_generate_and_parse() {
        let id = AccountId::generate();
        assert!(id.as_str().starts_with("acct_"));
        assert_eq!(id.as_str().parse::<AccountId>().unwrap(), id);
        assert!("key_abc".parse::<AccountId>().is_err());
        assert!("acct_".parse::<AccountId>().is_err());
        assert!("acct_a;b".parse::<AccountId>().is_err());
        let pasted = format!("kg_sk_{}", "ab".repeat(36));
        let err = pasted.parse::<KeyId>().unwrap_err().to_string();
        assert!(!err.contains(&"ab".repeat(4)), "{err}");
        assert!(err.contains("API key"), "{err}");
        assert!(KeyId::generate().as_str().parse::<KeyId>().is_ok());
    }

    #[test]
    fn ids_longer_than_the_column_are_refused() {
        let longest = format!("key_{}", "a".repeat(MAX_ID_LEN - 4));
        assert!(longest.parse::<KeyId>().is_ok());
        let err = format!("{longest}a").parse::<KeyId>().unwrap_err();
        assert!(err.reason().contains("is not a key_… id"), "{err}");
        assert!(err.to_string().starts_with("invalid id: "), "{err}");
    }
}
