//! The JSON usage readers (every API shape) on arbitrary bodies.
//!
//! Input: a shape byte, a seed, the body. Properties: no panic; every count is
//! at most `MAX_REPORTED_TOKENS`; `JsonUsage` fed in pieces reads what
//! `read_json` reads from the whole body.
#![no_main]

use keygate_billing::{ApiShape, JsonUsage, MAX_REPORTED_TOKENS, read_json};
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
    let Some((seed, body)) = seed_and_rest(rest) else {
        return;
    };
    let shape = SHAPES[usize::from(shape) % SHAPES.len()];
    let usage = read_json(shape, body);
    for count in [usage.input_tokens, usage.output_tokens, usage.cached_input_tokens] {
        assert!(count <= MAX_REPORTED_TOKENS);
    }
    let mut reader = JsonUsage::new(shape);
    for piece in pieces(seed, body) {
        reader.push(piece);
    }
    assert_eq!(reader.usage(), usage);
});
