//! `KeyHash`: the SHA-256 of a full key, the only form of a key that is stored.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of a full key. Stored and compared as 64 lowercase hex characters;
/// equality is constant-time.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

/// A stored hash is not 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key hash must be 64 lowercase hex characters")]
pub struct InvalidKeyHash;

impl KeyHash {
    /// Hashes a full key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-character lowercase hex form that is stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for KeyHash {}

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl FromStr for KeyHash {
    type Err = InvalidKeyHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidKeyHash);
        }
        let mut out = [0_u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidKeyHash)?;
        Ok(Self(out))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but a short form keeps logs readable.
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256_test_vector() {
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trip_and_equality() {
        let h = KeyHash::of("kg_sk_x");
        let back: KeyHash = h.to_hex().parse().unwrap();
        assert_eq!(h, back);
        assert_ne!(h, KeyHash::of("kg_sk_y"));
    }

    #[test]
    fn rejects_bad_hex() {
        let upper = KeyHash::of("a").to_hex().to_uppercase();
        for bad in ["", "00", upper.as_str(), &"g".repeat(64)] {
            assert_eq!(bad.parse::<KeyHash>().unwrap_err(), InvalidKeyHash, "{bad}");
        }
    }
}
