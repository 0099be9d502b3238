//! Admin tokens and console session tokens: secrets of the control plane.
//!
//! An admin token has the key format with the kind code `ak`:
//! `{prefix}_ak_{64 lowercase hex}{8 lowercase hex CRC32}`, 32 bytes from the OS
//! CSPRNG, stored only as its SHA-256 ([`KeyHash`]) like an API key. It is never an
//! API key: [`crate::ParsedKey::parse`] refuses the `ak` kind, and
//! [`parse_admin_token`] refuses `sk` and `pk`.

use std::fmt;

use zeroize::Zeroizing;

use crate::format::{KeyFormatError, KeyPrefix, RngError, check_format, compose, random_secret};
use crate::hash::KeyHash;

/// The kind code of an admin token.
pub const ADMIN_TOKEN_CODE: &str = "ak";
const START_SECRET_CHARS: usize = 4;

/// A freshly generated admin token. `Debug` and `Display` show only its start;
/// [`AdminSecret::expose`] is for the one moment it is shown. Zeroed on drop.
pub struct AdminSecret {
    text: Zeroizing<String>,
    prefix_len: usize,
}

impl AdminSecret {
    /// Generates a new token from 32 bytes of the OS CSPRNG.
    pub fn generate(prefix: &KeyPrefix) -> Result<Self, RngError> {
        let text = compose(prefix, ADMIN_TOKEN_CODE, &*random_secret()?);
        Ok(Self {
            text,
            prefix_len: prefix.as_str().len(),
        })
    }

    /// The full token. Show it once; never log or store it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// SHA-256 of the token, the only form that is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.text)
    }

    /// The display start, e.g. `kg_ak_3f9a`.
    pub fn start(&self) -> String {
        self.text[..self.prefix_len + 4 + START_SECRET_CHARS].to_owned()
    }
}

impl fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminSecret({}…)", self.start())
    }
}

impl fmt::Display for AdminSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.start())
    }
}

/// Checks a presented admin token's prefix, kind, length, hex and checksum without
/// IO, and returns its hash for the lookup.
pub fn parse_admin_token(text: &str, prefix: &KeyPrefix) -> Result<KeyHash, KeyFormatError> {
    check_format(text, prefix, |kind| {
        (kind == ADMIN_TOKEN_CODE).then_some(())
    })?;
    Ok(KeyHash::of(text))
}

/// 64 lowercase hex characters (32 bytes) from the OS CSPRNG: a console session
/// token or a CSRF token. Stored, if at all, only as its [`KeyHash`].
pub fn random_token() -> Result<Zeroizing<String>, RngError> {
    Ok(Zeroizing::new(hex::encode(random_secret()?.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParsedKey;

    #[test]
    fn admin_tokens_round_trip_and_are_not_api_keys() {
        let prefix = KeyPrefix::default();
        let token = AdminSecret::generate(&prefix).unwrap();
        assert!(token.expose().starts_with("kg_ak_"));
        assert_eq!(token.expose().len(), 6 + 72);
        assert_eq!(
            parse_admin_token(token.expose(), &prefix).unwrap(),
            token.hash()
        );
        assert_eq!(token.start().len(), 10);
        assert!(!format!("{token:?} {token}").contains(token.expose()));
        assert_eq!(
            ParsedKey::parse(token.expose(), &prefix).unwrap_err(),
            KeyFormatError::UnknownKind
        );
        let key = crate::SecretKey::generate(&prefix, crate::KeyKind::Private).unwrap();
        assert_eq!(
            parse_admin_token(key.expose(), &prefix).unwrap_err(),
            KeyFormatError::UnknownKind
        );
        let mut typo = token.expose().to_owned();
        typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
        assert_eq!(
            parse_admin_token(&typo, &prefix).unwrap_err(),
            KeyFormatError::BadChecksum
        );
        assert_eq!(
            parse_admin_token(token.expose(), &"other".parse().unwrap()).unwrap_err(),
            KeyFormatError::WrongPrefix
        );
    }

    #[test]
    fn random_tokens_are_64_hex_and_differ() {
        let a = random_token().unwrap();
        let b = random_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(*a, *b);
    }
}
