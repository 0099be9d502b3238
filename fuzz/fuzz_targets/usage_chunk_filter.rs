//! `UsageChunkFilter` on arbitrary streams, whole and in pieces.
//!
//! Properties: no panic; the same output and removal count either way; nothing
//! is added; a stream with no usage-only event and no `"usage"` member passes
//! byte for byte (but for an unfinished usage-only last event); a filter that
//! reads usage passes the same bytes and reads what `StreamUsage` reads from
//! the unfiltered stream.
#![no_main]

use keygate_billing::{ApiShape, StreamUsage, UsageChunkFilter};
use keygate_fuzz::{pieces, seed_and_rest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((seed, stream)) = seed_and_rest(data) else {
        return;
    };
    let mut whole = UsageChunkFilter::new();
    let mut out = whole.push(stream);
    let removed = whole.removed();
    let finished = whole.finish();
    out.extend_from_slice(&finished);
    let mut pieced = UsageChunkFilter::new();
    let mut split = Vec::new();
    for piece in pieces(seed, stream) {
        split.extend(pieced.push(piece));
    }
    let split_removed = pieced.removed();
    split.extend(pieced.finish());
    assert_eq!(out, split);
    assert_eq!(removed, split_removed);
    // Only whole usage-only events and `"usage": null` members are removed, so
    // nothing is added; with neither, at most an unfinished usage-only last
    // event is missing.
    assert!(out.len() <= stream.len());
    if removed == 0 && !stream.windows(7).any(|w| w == b"\"usage\"") {
        assert!(stream.starts_with(&out));
    }
    let shape = match seed % 4 {
        0 => ApiShape::OpenAiCompletions,
        1 => ApiShape::OpenAiEmbeddings,
        2 => ApiShape::OpenAiResponses,
        _ => ApiShape::AnthropicMessages,
    };
    let mut unfiltered = StreamUsage::new(shape);
    unfiltered.push(stream);
    let mut reading = UsageChunkFilter::reading_usage(shape);
    let mut read_out = Vec::new();
    for piece in pieces(seed.rotate_left(7), stream) {
        read_out.extend(reading.push(piece));
    }
    read_out.extend(reading.finish());
    assert_eq!(read_out, out);
    // Counted after `finish` on both: an unfinished usage-only last event is
    // removed (and counted) there.
    assert_eq!(reading.removed(), whole.removed());
    let read = reading.reader().expect("a reading filter has a reader");
    assert_eq!(read.usage(), unfiltered.usage());
    assert_eq!(read.content_events(), unfiltered.content_events());
});
