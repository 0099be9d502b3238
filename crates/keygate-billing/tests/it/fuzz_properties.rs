//! The properties the cargo-fuzz targets in `fuzz/` check, as proptests in the
//! normal suite: inputs are the fuzz seeds (`fuzz/seeds/<target>/`, real-shaped
//! requests and responses) with random edits, so a change that breaks a
//! property fails here without a fuzzer.

use std::path::Path;

use keygate_billing::{
    ApiShape, BillingInputs, Injection, JsonUsage, MAX_EVENT_BYTES, MAX_REPORTED_TOKENS, SseParser,
    StreamUsage, UsageChunkFilter, inject_include_usage, read_json,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// What an edit may insert besides a random byte: the tokens that move a JSON
/// or SSE parser somewhere else.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\\",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"stream\":true,",
    b"\"max_tokens\":5,",
    b"\"usage\":",
    b"\xda",
    b"\r",
    b"\n",
    b"\n\n",
    b"data: ",
    b"event: ",
    b"[DONE]",
];

/// The seeds of a fuzz target.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// A seed of `target` with up to eight edits: a byte or a token inserted, a
/// byte removed or replaced.
fn mutated(target: &str) -> impl Strategy<Value = Vec<u8>> + use<> {
    let edit = (any::<Index>(), any::<u8>(), 0..4u8, any::<Index>());
    (
        prop::sample::select(seeds(target)),
        prop::collection::vec(edit, 0..8),
    )
        .prop_map(|(mut bytes, edits)| {
            for (at, byte, op, token) in edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 => bytes.insert(i, byte),
                    1 => {
                        let token = TOKENS[token.index(TOKENS.len())];
                        bytes.splice(i..i, token.iter().copied());
                    }
                    2 if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ if i < bytes.len() => bytes[i] = byte,
                    _ => {}
                }
            }
            bytes
        })
}

/// Pieces of `data` whose lengths come from `seed`, as the fuzz targets split.
fn pieces(seed: u32, data: &[u8]) -> Vec<&[u8]> {
    let mut state = seed | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let (head, tail) = rest.split_at(((state % 64) as usize + 1).min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The fuzz input's leading seed bytes: a shape byte (for the usage targets)
/// and four seed bytes, as the targets read them.
fn split_seed(data: &[u8], shape_byte: bool) -> Option<(ApiShape, u32, &[u8])> {
    const SHAPES: [ApiShape; 4] = [
        ApiShape::OpenAiCompletions,
        ApiShape::OpenAiEmbeddings,
        ApiShape::OpenAiResponses,
        ApiShape::AnthropicMessages,
    ];
    let (shape, rest) = if shape_byte {
        let (&shape, rest) = data.split_first()?;
        (SHAPES[usize::from(shape) % 4], rest)
    } else {
        (SHAPES[0], data)
    };
    if rest.len() < 4 {
        return None;
    }
    let (seed, rest) = rest.split_at(4);
    Some((shape, u32::from_le_bytes(seed.try_into().ok()?), rest))
}

/// A filter that reads usage passes the bytes the plain filter passes, and reads
/// the usage a `StreamUsage` reads from the unfiltered stream, however the
/// stream is split.
fn reading_filter_agrees(shape: ApiShape, seed: u32, stream: &[u8]) -> Result<(), TestCaseError> {
    let mut plain = UsageChunkFilter::new();
    let mut expected = plain.push(stream);
    expected.extend(plain.finish());
    let mut unfiltered = StreamUsage::new(shape);
    unfiltered.push(stream);
    for split in [vec![stream], pieces(seed, stream)] {
        let mut reading = UsageChunkFilter::reading_usage(shape);
        let mut out = Vec::new();
        for piece in split {
            out.extend(reading.push(piece));
        }
        out.extend(reading.finish());
        prop_assert_eq!(&out, &expected);
        prop_assert_eq!(reading.removed(), plain.removed());
        let read = reading.reader().expect("a reading filter has a reader");
        prop_assert_eq!(read.usage(), unfiltered.usage());
        prop_assert_eq!(read.content_events(), unfiltered.content_events());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// fuzz target `usage_chunk_filter`, reading.
    #[test]
    fn a_reading_filter_filters_and_reads_as_the_two_readers_do(
        data in mutated("usage_chunk_filter"),
    ) {
        let Some((shape, seed, stream)) = split_seed(&data, false) else { return Ok(()) };
        reading_filter_agrees(shape, seed, stream)?;
    }

    /// fuzz target `usage_stream`, through a reading filter.
    #[test]
    fn a_reading_filter_reads_every_shape_as_the_stream_reader_does(
        data in mutated("usage_stream"),
    ) {
        let Some((shape, seed, stream)) = split_seed(&data, true) else { return Ok(()) };
        reading_filter_agrees(shape, seed, stream)?;
    }

    /// fuzz target `billing_inputs`.
    #[test]
    fn billing_inputs_agree_with_serde_json(data in mutated("billing_inputs")) {
        if let Ok(inputs) = BillingInputs::read(&data) {
            prop_assert!(std::str::from_utf8(&data).is_ok());
            if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&data) {
                prop_assert_eq!(inputs.model.as_deref(), body.get("model").and_then(Value::as_str));
                prop_assert_eq!(inputs.stream, body.get("stream").and_then(Value::as_bool).unwrap_or(false));
                prop_assert_eq!(inputs.n, body.get("n").and_then(Value::as_u64).unwrap_or(1));
                let cap = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                    .iter()
                    .filter_map(|f| body.get(*f).and_then(Value::as_u64))
                    .max();
                prop_assert_eq!(inputs.output_cap, cap);
            }
        }
    }

    /// fuzz target `inject_include_usage`.
    #[test]
    fn injection_changes_only_include_usage(data in mutated("inject_include_usage")) {
        match inject_include_usage(&data) {
            Injection::NotStreaming => {}
            Injection::AlreadyAsked => {
                let body: Value = serde_json::from_slice(&data).unwrap();
                prop_assert_eq!(&body["stream_options"]["include_usage"], &Value::Bool(true));
            }
            Injection::Rewritten(new) => {
                let asks: Value = serde_json::from_slice(&new).unwrap_or(Value::Null);
                let parses = serde_json::from_slice::<Value>(&data).is_ok();
                if parses {
                    prop_assert_eq!(&asks["stream_options"]["include_usage"], &Value::Bool(true));
                }
                // One contiguous change: `null` or `false` replaced, the field inserted.
                let prefix = data.iter().zip(&new).take_while(|(a, b)| a == b).count();
                let room = data.len().min(new.len()) - prefix;
                let suffix = data
                    .iter()
                    .rev()
                    .zip(new.iter().rev())
                    .take(room)
                    .take_while(|(a, b)| a == b)
                    .count();
                let removed = &data[prefix..data.len() - suffix];
                let inserted = &new[prefix..new.len() - suffix];
                prop_assert!(removed.len() <= 5 && removed.iter().all(|b| b"nullfalse".contains(b)));
                let allowed = br#""stream_options":{"include_usage":true},"#;
                prop_assert!(inserted.iter().all(|b| allowed.contains(b)));
                // serde_json cannot build numbers past a double's range as a
                // value; keygate forwards them as written.
                if let (Ok(Value::Object(mut before)), Value::Object(mut after)) =
                    (serde_json::from_slice::<Value>(&data), asks)
                {
                    let mut options = after.remove("stream_options").unwrap();
                    if let (Some(Value::Object(mut b)), Value::Object(a)) =
                        (before.remove("stream_options"), &mut options)
                    {
                        a.remove("include_usage");
                        b.remove("include_usage");
                        prop_assert_eq!(&b, &*a);
                    }
                    prop_assert_eq!(before, after);
                }
            }
        }
    }

    /// fuzz target `sse_parser`.
    #[test]
    fn sse_events_do_not_depend_on_the_pieces(data in mutated("sse_parser")) {
        let Some((_, seed, stream)) = split_seed(&data, false) else { return Ok(()) };
        let (mut whole, mut split) = (Vec::new(), Vec::new());
        let mut parser = SseParser::new();
        parser.push(stream, |e| whole.push(e));
        let mut pieced = SseParser::new();
        for piece in pieces(seed, stream) {
            pieced.push(piece, |e| split.push(e));
        }
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(parser.overflows(), pieced.overflows());
        prop_assert!(whole.iter().all(|e| e.data.len() <= MAX_EVENT_BYTES));
    }

    /// fuzz target `usage_json`.
    #[test]
    fn json_usage_is_bounded_and_does_not_depend_on_the_pieces(data in mutated("usage_json")) {
        let Some((shape, seed, body)) = split_seed(&data, true) else { return Ok(()) };
        let usage = read_json(shape, body);
        for count in [usage.input_tokens, usage.output_tokens, usage.cached_input_tokens] {
            prop_assert!(count <= MAX_REPORTED_TOKENS);
        }
        let mut reader = JsonUsage::new(shape);
        for piece in pieces(seed, body) {
            reader.push(piece);
        }
        prop_assert_eq!(reader.usage(), usage);
    }

    /// fuzz target `usage_stream`.
    #[test]
    fn stream_usage_is_bounded_and_does_not_depend_on_the_pieces(data in mutated("usage_stream")) {
        let Some((shape, seed, stream)) = split_seed(&data, true) else { return Ok(()) };
        let mut whole = StreamUsage::new(shape);
        whole.push(stream);
        let usage = whole.usage();
        for count in [usage.input_tokens, usage.output_tokens, usage.cached_input_tokens] {
            prop_assert!(count <= MAX_REPORTED_TOKENS);
        }
        let mut pieced = StreamUsage::new(shape);
        for piece in pieces(seed, stream) {
            pieced.push(piece);
        }
        prop_assert_eq!(pieced.usage(), usage);
        prop_assert_eq!(pieced.content_events(), whole.content_events());
    }

    /// fuzz target `usage_chunk_filter`.
    #[test]
    fn the_usage_filter_does_not_depend_on_the_pieces(data in mutated("usage_chunk_filter")) {
        let Some((_, seed, stream)) = split_seed(&data, false) else { return Ok(()) };
        let mut whole = UsageChunkFilter::new();
        let mut out = whole.push(stream);
        let removed = whole.removed();
        out.extend(whole.finish());
        let mut pieced = UsageChunkFilter::new();
        let mut split = Vec::new();
        for piece in pieces(seed, stream) {
            split.extend(pieced.push(piece));
        }
        prop_assert_eq!(removed, pieced.removed());
        split.extend(pieced.finish());
        prop_assert_eq!(&out, &split);
        prop_assert!(out.len() <= stream.len());
        if removed == 0 && !stream.windows(7).any(|w| w == b"\"usage\"") {
            prop_assert!(stream.starts_with(&out));
        }
    }
}
