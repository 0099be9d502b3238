//! The properties the cargo-fuzz targets `extract_credential` and `parse_key`
//! in `fuzz/` check, as proptests in the normal suite: header sets and query
//! strings built from the fuzz seeds with random edits, and keys with one
//! character changed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate_keys::{
    Credential, DEFAULT_QUERY_PARAM, ExtractOptions, KeyHash, KeyKind, KeyPrefix, ParsedKey,
    SecretKey, strip_query_param,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// What an edit may insert besides a random byte.
const TOKENS: &[&str] = &[
    "&",
    "=",
    "%2D",
    "%",
    "+",
    "api-key=",
    "api%2dkey=",
    "Bearer ",
    "Basic ",
    "\n",
    ":",
    " ",
    "\nx-api-key: ",
    "\nauthorization: ",
    "\n?",
];

/// The seeds of the `extract_credential` fuzz target: header lines, and a
/// query string after `?`.
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/extract_credential");
    let mut seeds: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    seeds
}

/// A seed with up to eight edits: a token or a printable character
/// inserted, a character removed.
fn mutated() -> impl Strategy<Value = String> {
    let edit = (any::<Index>(), 0x20u8..0x7f, 0..3u8, any::<Index>());
    (
        prop::sample::select(seeds()),
        prop::collection::vec(edit, 0..8),
    )
        .prop_map(|(mut text, edits)| {
            for (at, byte, op, token) in edits {
                let i = at.index(text.len() + 1);
                match op {
                    0 => text.insert(i, char::from(byte)),
                    1 => text.insert_str(i, TOKENS[token.index(TOKENS.len())]),
                    _ if i < text.len() => {
                        text.remove(i);
                    }
                    _ => {}
                }
            }
            text
        })
}

/// The fuzz target's reading of its input: `name: value` lines, `?query`.
fn request(input: &str) -> (HeaderMap, Option<&str>) {
    let mut headers = HeaderMap::new();
    let mut query = None;
    for line in input.split('\n') {
        if let Some(q) = line.strip_prefix('?') {
            query = Some(q);
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    (headers, query)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// fuzz target `extract_credential`.
    #[test]
    fn extraction_is_printable_redacted_and_stripped(input in mutated()) {
        let (headers, query) = request(&input);
        if let Ok(credential) = Credential::extract(&headers, query, &ExtractOptions::default()) {
            let text = credential.expose();
            prop_assert!(!text.is_empty());
            prop_assert!(text.bytes().all(|b| b.is_ascii_graphic()));
            if text.len() >= 16 {
                let shown = format!("{credential:?}");
                prop_assert!(!shown.contains(text));
            }
        }
        if let Some(query) = query {
            let expected: Vec<_> = form_urlencoded::parse(query.as_bytes())
                .filter(|(name, _)| name != DEFAULT_QUERY_PARAM)
                .collect();
            let stripped = strip_query_param(query, DEFAULT_QUERY_PARAM).unwrap_or_default();
            let kept: Vec<_> = form_urlencoded::parse(stripped.as_bytes()).collect();
            prop_assert_eq!(kept, expected);
        }
    }

    /// fuzz target `parse_key`: a generated key parses, and no key with one
    /// character changed does.
    #[test]
    fn one_changed_character_is_always_refused(
        secret in any::<[u8; 32]>(),
        public in any::<bool>(),
        at in any::<Index>(),
        replacement in 0x21u8..0x7f,
    ) {
        let prefix = KeyPrefix::default();
        let kind = if public { KeyKind::Public } else { KeyKind::Private };
        let key = SecretKey::from_secret_bytes(&prefix, kind, &secret);
        let parsed = ParsedKey::parse(key.expose(), &prefix).unwrap();
        prop_assert_eq!(parsed.kind(), kind);
        prop_assert_eq!(parsed.hash(), KeyHash::of(key.expose()));
        let shown = format!("{parsed:?}");
        prop_assert!(!shown.contains(key.expose()));
        let mut changed = key.expose().as_bytes().to_vec();
        let i = at.index(changed.len());
        prop_assume!(changed[i] != replacement);
        changed[i] = replacement;
        let changed = String::from_utf8(changed).unwrap();
        prop_assert!(ParsedKey::parse(&changed, &prefix).is_err());
    }
}
