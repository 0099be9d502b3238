//! The key format: `{prefix}_{kind}_{64 lowercase hex}{8 lowercase hex CRC32}`.
//!
//! The 64 hex characters are 32 bytes from the OS CSPRNG. The trailing CRC32 covers
//! everything before it, so a typo or garbage is rejected without a store lookup, and
//! secret scanners can validate a leaked key offline.

use std::fmt;
use std::str::FromStr;

use rand::TryRng;
use rand::rngs::SysRng;
use zeroize::Zeroizing;

use crate::hash::KeyHash;

/// Number of hex characters of random secret (32 bytes, 256 bits).
pub const SECRET_HEX_LEN: usize = 64;
const CHECKSUM_HEX_LEN: usize = 8;
const TAIL_LEN: usize = SECRET_HEX_LEN + CHECKSUM_HEX_LEN;
const PREFIX_MAX_LEN: usize = 16;
/// Longest key any prefix can produce: prefix, `_`, kind, `_`, tail.
const KEY_MAX_LEN: usize = PREFIX_MAX_LEN + 1 + 2 + 1 + TAIL_LEN;
/// How many secret hex characters the display `start` keeps.
const START_SECRET_CHARS: usize = 4;

/// The key prefix of a deployment that sets none: [`KeyPrefix::default`].
pub const DEFAULT_KEY_PREFIX: &str = "kg";

/// A deployment's key prefix: 1 to 16 characters of `[a-z0-9]`. Defaults to
/// [`DEFAULT_KEY_PREFIX`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

/// The prefix failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key prefix must be 1 to 16 characters of a-z and 0-9, got {0:?}")]
pub struct InvalidPrefix(pub String);

impl KeyPrefix {
    /// Validates a prefix.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = !prefix.is_empty()
            && prefix.len() <= PREFIX_MAX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Self(prefix.to_owned()))
        } else {
            Err(InvalidPrefix(prefix.to_owned()))
        }
    }

    /// The prefix as written in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self(DEFAULT_KEY_PREFIX.to_owned())
    }
}

impl FromStr for KeyPrefix {
    type Err = InvalidPrefix;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Private keys live on servers; public keys are browser-safe and restricted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `sk`: server-side, full access within its scopes.
    Private,
    /// `pk`: browser-safe, limited to public routes and allowed models.
    Public,
}

impl KeyKind {
    /// The two-letter code written in the key (`sk` or `pk`).
    pub fn code(self) -> &'static str {
        match self {
            KeyKind::Private => "sk",
            KeyKind::Public => "pk",
        }
    }

    /// The word used in configuration and the CLI (`private` or `public`).
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Private => "private",
            KeyKind::Public => "public",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        match code {
            "sk" => Some(KeyKind::Private),
            "pk" => Some(KeyKind::Public),
            _ => None,
        }
    }
}

impl FromStr for KeyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "private" | "sk" => Ok(KeyKind::Private),
            "public" | "pk" => Ok(KeyKind::Public),
            other => Err(format!(
                "unknown key kind {other:?}, expected \"private\" or \"public\""
            )),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a presented string is not a well-formed key. Checked before any lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// The string is empty.
    #[error("key is empty")]
    Empty,
    /// Longer than any key can be; nothing more was looked at.
    #[error("key is too long")]
    TooLong,
    /// Not `prefix_kind_secret`.
    #[error("key is not of the form prefix_kind_secret")]
    Malformed,
    /// The prefix is not this deployment's.
    #[error("key prefix does not match this deployment")]
    WrongPrefix,
    /// The kind is neither `sk` nor `pk`.
    #[error("key kind must be sk or pk")]
    UnknownKind,
    /// The secret part does not have 72 characters.
    #[error("key secret has the wrong length")]
    BadLength,
    /// The secret part is not lowercase hex.
    #[error("key secret is not lowercase hex")]
    NotHex,
    /// The CRC32 does not match: a typo, a truncated copy or a made-up key.
    #[error("key checksum does not match")]
    BadChecksum,
}

/// The OS random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RngError(String);

/// 32 bytes from the OS CSPRNG: the secret of a key or an admin token.
pub(crate) fn random_secret() -> Result<Zeroizing<[u8; SECRET_HEX_LEN / 2]>, RngError> {
    let mut secret = Zeroizing::new([0_u8; SECRET_HEX_LEN / 2]);
    SysRng
        .try_fill_bytes(secret.as_mut_slice())
        .map_err(|e| RngError(e.to_string()))?;
    Ok(secret)
}

/// `{prefix}_{code}_{64 lowercase hex}{8 lowercase hex CRC32 of what precedes}`:
/// the text of a key (`sk`, `pk`) or an admin token (`ak`).
pub(crate) fn compose(prefix: &KeyPrefix, code: &str, secret: &[u8; 32]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(prefix.as_str().len() + 4 + TAIL_LEN));
    text.push_str(prefix.as_str());
    text.push('_');
    text.push_str(code);
    text.push('_');
    let mut hex_buf = Zeroizing::new([0_u8; SECRET_HEX_LEN]);
    // Both lengths are fixed, so encoding cannot fail.
    if hex::encode_to_slice(secret, hex_buf.as_mut_slice()).is_ok() {
        text.extend(hex_buf.iter().map(|&b| char::from(b)));
    }
    let crc = crc32fast::hash(text.as_bytes());
    text.push_str(&format!("{crc:08x}"));
    text
}

/// Validates a presented text's length, prefix, kind (`kind_of` its code),
/// secret length, hex and checksum, in that order, without IO.
pub(crate) fn check_format<K>(
    text: &str,
    expected_prefix: &KeyPrefix,
    kind_of: impl FnOnce(&str) -> Option<K>,
) -> Result<K, KeyFormatError> {
    if text.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if text.len() > KEY_MAX_LEN {
        return Err(KeyFormatError::TooLong);
    }
    let (prefix, rest) = text.split_once('_').ok_or(KeyFormatError::Malformed)?;
    let (kind, tail) = rest.split_once('_').ok_or(KeyFormatError::Malformed)?;
    if prefix != expected_prefix.as_str() {
        return Err(KeyFormatError::WrongPrefix);
    }
    let kind = kind_of(kind).ok_or(KeyFormatError::UnknownKind)?;
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
    Ok(kind)
}

/// A full API key held in memory. Its `Debug` and `Display` show only the display
/// start (`kg_sk_3f9a…`); [`SecretKey::expose`] is the one way to the full text, for
/// the single moment it is shown to its owner. The memory is zeroed on drop.
pub struct SecretKey {
    text: Zeroizing<String>,
    kind: KeyKind,
    prefix_len: usize,
}

impl SecretKey {
    /// Generates a new key from 32 bytes of the OS CSPRNG.
    pub fn generate(prefix: &KeyPrefix, kind: KeyKind) -> Result<Self, RngError> {
        Ok(Self::from_secret_bytes(prefix, kind, &*random_secret()?))
    }

    /// Builds the key for given secret bytes. Public for tests and fixtures that
    /// need a deterministic key; production code calls [`SecretKey::generate`].
    pub fn from_secret_bytes(prefix: &KeyPrefix, kind: KeyKind, secret: &[u8; 32]) -> Self {
        let text = compose(prefix, kind.code(), secret);
        Self {
            text,
            kind,
            prefix_len: prefix.as_str().len(),
        }
    }

    /// The full key. Show it to its owner once; never log or store it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// SHA-256 of the full key, the only form that is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.text)
    }

    /// The display start, e.g. `kg_sk_3f9a`: safe to store and show.
    pub fn start(&self) -> String {
        self.text[..self.prefix_len + 4 + START_SECRET_CHARS].to_owned()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}…)", self.start())
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.start())
    }
}

/// A presented key whose format and checksum are valid. It borrows the presented
/// text and redacts it in `Debug`.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    text: &'a str,
    kind: KeyKind,
    prefix_len: usize,
}

impl<'a> ParsedKey<'a> {
    /// Validates prefix, kind, length, hex and checksum, in that order, without IO.
    pub fn parse(text: &'a str, expected_prefix: &KeyPrefix) -> Result<Self, KeyFormatError> {
        let kind = check_format(text, expected_prefix, KeyKind::from_code)?;
        Ok(Self {
            text,
            kind,
            prefix_len: expected_prefix.as_str().len(),
        })
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// SHA-256 of the full key, used to look it up.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.text)
    }

    /// The display start, e.g. `kg_sk_3f9a`.
    pub fn start(&self) -> &'a str {
        &self.text[..self.prefix_len + 4 + START_SECRET_CHARS]
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}…)", self.start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix() -> KeyPrefix {
        KeyPrefix::default()
    }

    #[test]
    fn generated_key_has_the_documented_shape() {
        let key = SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
        let text = key.expose();
        assert_eq!(text.len(), 2 + 1 + 2 + 1 + 72);
        assert!(text.starts_with("kg_sk_"));
        let tail = &text[6..];
        assert!(
            tail.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        let crc = crc32fast::hash(&text.as_bytes()[..text.len() - 8]);
        assert_eq!(&text[text.len() - 8..], format!("{crc:08x}"));
    }

    #[test]
    fn public_keys_use_pk() {
        let key = SecretKey::generate(&prefix(), KeyKind::Public).unwrap();
        assert!(key.expose().starts_with("kg_pk_"));
        assert_eq!(
            ParsedKey::parse(key.expose(), &prefix()).unwrap().kind(),
            KeyKind::Public
        );
    }

    #[test]
    fn two_keys_differ() {
        let a = SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
        let b = SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_and_display_redact() {
        let key = SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
        let secret_tail = &key.expose()[20..];
        for shown in [format!("{key:?}"), format!("{key}")] {
            assert!(!shown.contains(secret_tail), "{shown}");
            assert!(shown.contains(&key.start()));
        }
        let parsed = ParsedKey::parse(key.expose(), &prefix()).unwrap();
        assert!(!format!("{parsed:?}").contains(secret_tail));
        assert_eq!(key.start().len(), "kg_sk_".len() + 4);
    }

    #[test]
    fn prefix_validation() {
        for good in ["kg", "a", "acme2", "abcdefghijklmnop"] {
            assert!(KeyPrefix::new(good).is_ok(), "{good}");
        }
        for bad in ["", "KG", "k_g", "k-g", "abcdefghijklmnopq", "ké"] {
            assert!(KeyPrefix::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_errors_are_distinct() {
        let p = prefix();
        let good = SecretKey::from_secret_bytes(&p, KeyKind::Private, &[7; 32]);
        let good = good.expose();
        let tail = &good[6..];
        let cases = [
            (String::new(), KeyFormatError::Empty),
            ("x".repeat(500), KeyFormatError::TooLong),
            ("kgsk".to_owned(), KeyFormatError::Malformed),
            (format!("kg_{tail}"), KeyFormatError::Malformed),
            (format!("zz_sk_{tail}"), KeyFormatError::WrongPrefix),
            (format!("kg_xk_{tail}"), KeyFormatError::UnknownKind),
            (format!("kg_sk_{}", &tail[1..]), KeyFormatError::BadLength),
            (
                good.to_uppercase().replacen("KG_SK", "kg_sk", 1),
                KeyFormatError::NotHex,
            ),
            (
                format!("kg_sk_{}0", &tail[..71]),
                KeyFormatError::BadChecksum,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                ParsedKey::parse(&input, &p).unwrap_err(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn deterministic_key_matches_a_known_vector() {
        // Pinned so that a change to the format is a conscious, reviewed change.
        let key = SecretKey::from_secret_bytes(&prefix(), KeyKind::Private, &[0; 32]);
        let body = format!("kg_sk_{}", "0".repeat(64));
        let crc = crc32fast::hash(body.as_bytes());
        assert_eq!(key.expose(), format!("{body}{crc:08x}"));
        assert_eq!(key.start(), "kg_sk_0000");
    }

    proptest! {
        #[test]
        fn generate_parse_round_trip(
            secret in any::<[u8; 32]>(),
            public in any::<bool>(),
            prefix in "[a-z0-9]{1,16}",
        ) {
            let prefix = KeyPrefix::new(&prefix).unwrap();
            let kind = if public { KeyKind::Public } else { KeyKind::Private };
            let key = SecretKey::from_secret_bytes(&prefix, kind, &secret);
            let parsed = ParsedKey::parse(key.expose(), &prefix).unwrap();
            prop_assert_eq!(parsed.kind(), kind);
            prop_assert_eq!(parsed.hash(), key.hash());
            prop_assert_eq!(parsed.start(), key.start());
        }

        #[test]
        fn any_single_character_change_is_rejected(
            secret in any::<[u8; 32]>(),
            position in 0_usize..78,
            replacement in prop::char::any(),
        ) {
            let p = prefix();
            let key = SecretKey::from_secret_bytes(&p, KeyKind::Private, &secret);
            let text = key.expose();
            let mut chars: Vec<char> = text.chars().collect();
            prop_assume!(chars[position] != replacement);
            chars[position] = replacement;
            let changed: String = chars.into_iter().collect();
            prop_assert!(ParsedKey::parse(&changed, &p).is_err());
        }

        #[test]
        fn any_hex_digit_change_is_a_checksum_failure(
            secret in any::<[u8; 32]>(),
            position in 6_usize..78,
            digit in 0_u32..16,
        ) {
            let p = prefix();
            let key = SecretKey::from_secret_bytes(&p, KeyKind::Private, &secret);
            let mut bytes = key.expose().as_bytes().to_vec();
            let replacement = char::from_digit(digit, 16).unwrap() as u8;
            prop_assume!(bytes[position] != replacement);
            bytes[position] = replacement;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(ParsedKey::parse(&changed, &p).unwrap_err(), KeyFormatError::BadChecksum);
        }

        #[test]
        fn parse_never_panics(input in ".{0,200}") {
            let _ = ParsedKey::parse(&input, &prefix());
        }
    }
}
