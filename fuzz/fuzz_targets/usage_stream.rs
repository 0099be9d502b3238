//! The streamed usage readers (every API shape) on arbitrary event streams.
//!
//! Input: a shape byte, a seed, the stream. Properties: no panic; every count
//! is at most `MAX_REPORTED_TOKENS`; the stream fed whole and in pieces gives
//! the same usage and content-event count.
#![no_main]

use keygate_billing::{ApiShape, MAX_REPORTED_TOKENS, StreamUsage};
use keygate_fuzz::{pieces, seed_and_rest};
use libfuzzer_sys::fuzz_target;

const SHAPES: [ApiShape; 4] = [
    ApiShape::OpenAiCompletions,
    ApiShape::OpenAiEmbeddings,
    ApiShape::OpenAiResponses,
    ApiShape::AnthropicMessages,
];

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    let Some((seed, stream)) = seed_and_rest(rest) else {
        return;
    };
    let shape = SHAPES[usize::from(shape) % SHAPES.len()];
    let mut whole = StreamUsage::new(shape);
    whole.push(stream);
    let usage = whole.usage();
    for count in [usage.input_tokens, usage.output_tokens, usage.cached_input_tokens] {
        assert!(count <= MAX_REPORTED_TOKENS);
    }
    let mut pieced = StreamUsage::new(shape);
    for piece in pieces(seed, stream) {
        pieced.push(piece);
    }
    assert_eq!(pieced.usage(), usage);
    assert_eq!(pieced.content_events(), whole.content_events());
});
