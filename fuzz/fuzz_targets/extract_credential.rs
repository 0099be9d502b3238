//! Credential extraction from arbitrary headers and a query string.
//!
//! Input: lines; `?` starts the query string, any other line is `name: value`.
//! Properties: no panic; a found credential is non-empty printable ASCII and its
//! `Debug` never shows it; `strip_query_param` leaves no `api-key` pair and
//! every other pair as it was.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use keygate_keys::{Credential, DEFAULT_QUERY_PARAM, ExtractOptions, strip_query_param};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut query = None;
    for line in data.split(|&b| b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            query = std::str::from_utf8(q).ok();
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        headers.append(name, value);
    }
    if let Ok(credential) = Credential::extract(&headers, query, &ExtractOptions::default()) {
        let text = credential.expose();
        assert!(!text.is_empty());
        assert!(text.bytes().all(|b| b.is_ascii_graphic()));
        if text.len() >= 16 {
            assert!(!format!("{credential:?}").contains(text));
        }
    }
    if let Some(query) = query {
        let param = DEFAULT_QUERY_PARAM;
        let expected: Vec<_> = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name != param)
            .collect();
        let stripped = strip_query_param(query, param).unwrap_or_default();
        let kept: Vec<_> = form_urlencoded::parse(stripped.as_bytes()).collect();
        assert_eq!(kept, expected);
    }
});
