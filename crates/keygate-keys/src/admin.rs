//! Admin tokens and console session tokens: secrets of the control plane.
//!
//! An admin token has the key format with the kind code `ak`:
//! `{prefix}_ak_{64 lowercase hex}{8 lowercase hex CRC32}`, 32 bytes from the OS
//! CSPRNG, stored only as its SHA-256 ([`KeyHash`]) like an API key. It is never an
//! API key: [`crate::ParsedKey::parse`] refuses the `ak` kind, and
//! [`parse_admin_token`] refuses `sk` and `pk`.

use std::fmt;

use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

use crate::format::{KeyFormatError, KeyPrefix, RngError, SECRET_HEX_LEN};
use crate::hash::KeyHash;

/// The kind code of an admin token.
pub const ADMIN_TOKEN_CODE: &str = "ak";
const CHECKSUM_HEX_LEN: usize = 8;
const TAIL_LEN: usize = SECRET_HEX_LEN + CHECKSUM_HEX_LEN;
/// Longest admin token any prefix can produce.
const TOKEN_MAX_LEN: usize = 16 + 1 + 2 + 1 + TAIL_LEN;
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
        let hex = random_hex()?;
        let mut text = Zeroizing::new(String::with_capacity(prefix.as_str().len() + 4 + TAIL_LEN));
        text.push_str(prefix.as_str());
        text.push('_');
        text.push_str(ADMIN_TOKEN_CODE);
        text.push('_');
        text.push_str(&hex);
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("{crc:08x}"));
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
    if text.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if text.len() > TOKEN_MAX_LEN {
        return Err(KeyFormatError::TooLong);
    }
    let (given_prefix, rest) = text.split_once('_').ok_or(KeyFormatError::Malformed)?;
    let (kind, tail) = rest.split_once('_').ok_or(KeyFormatError::Malformed)?;
    if given_prefix != prefix.as_str() {
        return Err(KeyFormatError::WrongPrefix);
    }
    if kind != ADMIN_TOKEN_CODE {
        return Err(KeyFormatError::UnknownKind);
    }
    if tail.len() != TAIL_LEN {
        return Err(KeyFormatError::BadLength);
    }
    if !tail.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(KeyFormatError::NotHex);
    }
    let (body, checksum) = text.split_at(text.len() - CHECKSUM_HEX_LEN);
    let expected = u32::from_str_radix(checksum, 16).map_err(|_| KeyFormatError::NotHex)?;
    if crc32fast::hash(body.as_bytes()) != expected {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(KeyHash::of(text))
}

/// 64 lowercase hex characters (32 bytes) from the OS CSPRNG: a console session
/// token or a CSRF token. Stored, if at all, only as its [`KeyHash`].
pub fn random_token() -> Result<Zeroizing<String>, RngError> {
    random_hex()
}

fn random_hex() -> Result<Zeroizing<String>, RngError> {
    let mut secret = Zeroizing::new([0_u8; SECRET_HEX_LEN / 2]);
    SysRng
        .try_fill_bytes(secret.as_mut_slice())
        .map_err(|e| RngError::new(e.to_string()))?;
    Ok(Zeroizing::new(hex::encode(secret.as_slice())))
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
