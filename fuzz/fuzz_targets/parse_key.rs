//! Key parsing: arbitrary text, and real keys with one character changed.
//!
//! Properties: no panic; a parsed key hashes to the SHA-256 of its text, its
//! display start begins the text and its `Debug` never shows the text; a key
//! made from the input's first 32 bytes parses, and the same key with any one
//! character changed does not (CRC32 catches every single-character error).
#![no_main]

use keygate_keys::{KeyHash, KeyKind, KeyPrefix, ParsedKey, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let prefix = KeyPrefix::default();
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = ParsedKey::parse(&text, &prefix) {
        assert_eq!(parsed.hash(), KeyHash::of(&text));
        assert!(text.starts_with(parsed.start()));
        assert!(!format!("{parsed:?}").contains(&*text));
    }
    if data.len() >= 34 {
        let secret: [u8; 32] = data[..32].try_into().unwrap();
        let kind = if data[32] % 2 == 0 { KeyKind::Private } else { KeyKind::Public };
        let key = SecretKey::from_secret_bytes(&prefix, kind, &secret);
        let parsed = ParsedKey::parse(key.expose(), &prefix).expect("a generated key parses");
        assert_eq!(parsed.kind(), kind);
        assert_eq!(parsed.hash(), key.hash());
        let mut changed = key.expose().as_bytes().to_vec();
        let at = usize::from(data[33]) % changed.len();
        let replacement = data.get(34).copied().unwrap_or(b'0');
        if replacement != changed[at] && replacement.is_ascii() {
            changed[at] = replacement;
            let changed = String::from_utf8(changed).unwrap();
            assert!(ParsedKey::parse(&changed, &prefix).is_err(), "one character changed");
        }
    }
});
