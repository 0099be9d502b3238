//! The SSE parser fed an arbitrary stream whole and in arbitrary pieces.
//!
//! Properties: no panic; the same events (and overflow count) either way; no
//! event is larger than `MAX_EVENT_BYTES`.
#![no_main]

use keygate_billing::{MAX_EVENT_BYTES, SseParser};
use keygate_fuzz::{pieces, seed_and_rest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((seed, stream)) = seed_and_rest(data) else {
        return;
    };
    let mut whole = Vec::new();
    let mut parser = SseParser::new();
    parser.push(stream, |e| whole.push(e));
    let mut split = Vec::new();
    let mut pieced = SseParser::new();
    for piece in pieces(seed, stream) {
        pieced.push(piece, |e| split.push(e));
    }
    assert_eq!(whole, split);
    assert_eq!(parser.overflows(), pieced.overflows());
    assert!(whole.iter().all(|e| e.data.len() <= MAX_EVENT_BYTES));
});
