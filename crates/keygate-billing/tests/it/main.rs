//! Usage readers against recorded provider bodies: exact tokens for each shape,
//! streamed and not, and the same answer however a stream is split into frames.
//! Costs of those bodies at real prices, worked out by hand. The usage-chunk
//! filter: the same bytes out however the stream is split.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use keygate_billing::Micros;
use keygate_billing::{
    ApiShape, BillingInputs, Demand, Injection, MAX_PRICE_PER_MTOK, MAX_REPORTED_TOKENS, Price,
    ReservationRule, StreamUsage, Usage, UsageChunkFilter, UsageSource, inject_include_usage,
    read_json, reserve_upper_bound,
};
use proptest::prelude::*;

mod fuzz_properties;

const CHAT_STREAM: &str = concat!(
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    ": a comment\n\n",
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":2,\"total_tokens\":1202,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\n",
    "data: [DONE]\n\n",
);

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n",
    "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
    "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
    "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n",
    "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\r\n\r\n",
    "event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
    "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\r\n\r\n",
    "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
    "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
);

const RESPONSES_STREAM: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r1\",\"usage\":null}}\n\n",
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r1\",\"usage\":{\"input_tokens\":40,\"input_tokens_details\":{\"cached_tokens\":8},\"output_tokens\":12,\"total_tokens\":52}}}\n\n",
);

fn reported(input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
        source: UsageSource::Reported,
    }
}

fn stream(shape: ApiShape, chunks: &[&[u8]]) -> StreamUsage {
    let mut reader = StreamUsage::new(shape);
    for chunk in chunks {
        reader.push(chunk);
    }
    reader
}

#[test]
fn json_bodies_of_every_shape() {
    let chat = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":4}}}"#;
    assert_eq!(
        read_json(ApiShape::OpenAiCompletions, chat),
        reported(12, 9, 4)
    );
    let embeddings = br#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    assert_eq!(
        read_json(ApiShape::OpenAiEmbeddings, embeddings),
        reported(8, 0, 0)
    );
    let responses = br#"{"id":"r","usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":8},"output_tokens":12}}"#;
    assert_eq!(
        read_json(ApiShape::OpenAiResponses, responses),
        reported(40, 12, 8)
    );
    let anthropic = br#"{"id":"m","usage":{"input_tokens":25,"cache_read_input_tokens":100,"cache_creation_input_tokens":5,"output_tokens":15}}"#;
    assert_eq!(
        read_json(ApiShape::AnthropicMessages, anthropic),
        reported(130, 15, 100)
    );
}

#[test]
fn no_usage_is_unknown_never_a_silent_zero() {
    for body in [&b"{}"[..], b"not json", br#"{"usage":null}"#, b""] {
        assert_eq!(
            read_json(ApiShape::OpenAiCompletions, body).source,
            UsageSource::Unknown
        );
    }
    let cut = &CHAT_STREAM[..CHAT_STREAM.find("\"usage\":{").unwrap()];
    let reader = stream(ApiShape::OpenAiCompletions, &[cut.as_bytes()]);
    assert_eq!(reader.usage().source, UsageSource::Unknown);
    assert_eq!(reader.content_events(), 2);
    let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: message_delta").unwrap()];
    let reader = stream(ApiShape::AnthropicMessages, &[cut.as_bytes()]);
    assert_eq!(reader.usage().source, UsageSource::Unknown);
    assert_eq!(
        reader.usage().input_tokens,
        130,
        "input is known from message_start"
    );
}

#[test]
fn streams_of_every_shape() {
    let chat = stream(ApiShape::OpenAiCompletions, &[CHAT_STREAM.as_bytes()]);
    assert_eq!(chat.usage(), reported(1200, 2, 1024));
    assert_eq!(chat.content_events(), 2);
    let anthropic = stream(ApiShape::AnthropicMessages, &[ANTHROPIC_STREAM.as_bytes()]);
    assert_eq!(
        anthropic.usage(),
        reported(130, 15, 100),
        "message_delta is cumulative"
    );
    assert_eq!(anthropic.content_events(), 2);
    let responses = stream(ApiShape::OpenAiResponses, &[RESPONSES_STREAM.as_bytes()]);
    assert_eq!(responses.usage(), reported(40, 12, 8));
}

#[test]
fn a_usage_chunk_that_still_carries_choices_counts() {
    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
    assert_eq!(
        stream(ApiShape::OpenAiCompletions, &[body.as_bytes()]).usage(),
        reported(3, 1, 0)
    );
}

fn split_at(text: &str, cuts: &[usize]) -> Vec<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for cut in cuts {
        out.push(bytes[at..cut].to_vec());
        at = cut;
    }
    out.push(bytes[at..].to_vec());
    out
}

#[test]
fn every_two_way_split_gives_the_same_usage() {
    for (shape, text) in [
        (ApiShape::OpenAiCompletions, CHAT_STREAM),
        (ApiShape::AnthropicMessages, ANTHROPIC_STREAM),
        (ApiShape::OpenAiResponses, RESPONSES_STREAM),
    ] {
        let whole = stream(shape, &[text.as_bytes()]).usage();
        for cut in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            assert_eq!(
                stream(shape, &[a, b]).usage(),
                whole,
                "{shape:?} split at {cut}"
            );
        }
    }
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_usage(cuts in proptest::collection::vec(0usize..4096, 0..40)) {
        for (shape, text) in [
            (ApiShape::OpenAiCompletions, CHAT_STREAM),
            (ApiShape::AnthropicMessages, ANTHROPIC_STREAM),
            (ApiShape::OpenAiResponses, RESPONSES_STREAM),
        ] {
            let whole = stream(shape, &[text.as_bytes()]);
            let chunks = split_at(text, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let split = stream(shape, &refs);
            prop_assert_eq!(split.usage(), whole.usage());
            prop_assert_eq!(split.content_events(), whole.content_events());
        }
    }
}

fn gpt_4o() -> Price {
    Price::from_credits(2.5, 10.0, Some(1.25)).unwrap()
}

#[test]
fn costs_of_every_shape_worked_by_hand() {
    // OpenAI chat, streamed: 1200 input of which 1024 cached, 2 output, at
    // 2.5 / 10 / 1.25 credits per Mtok:
    // 176 × 2.5 + 1024 × 1.25 + 2 × 10 = 440 + 1280 + 20 = 1740 micro-units.
    let chat = stream(ApiShape::OpenAiCompletions, &[CHAT_STREAM.as_bytes()]).usage();
    assert_eq!(gpt_4o().cost(&chat), Micros(1740));
    assert_eq!(Micros(1740).to_string(), "0.00174");

    // Embeddings at 0.02 credits per Mtok: 8 × 0.02 = 0.16 micro-units, rounded
    // up to 1; 1000 tokens are exactly 20.
    let small = Price::from_credits(0.02, 0.0, None).unwrap();
    let embeddings = br#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    assert_eq!(
        small.cost(&read_json(ApiShape::OpenAiEmbeddings, embeddings)),
        Micros(1)
    );
    let embeddings =
        br#"{"object":"list","data":[],"usage":{"prompt_tokens":1000,"total_tokens":1000}}"#;
    assert_eq!(
        small.cost(&read_json(ApiShape::OpenAiEmbeddings, embeddings)),
        Micros(20)
    );

    // Responses, streamed, gpt-4o-mini at 0.15 / 0.6 / 0.075: 40 input of which
    // 8 cached, 12 output: 32 × 0.15 + 8 × 0.075 + 12 × 0.6 = 4.8 + 0.6 + 7.2 =
    // 12.6, rounded up to 13.
    let mini = Price::from_credits(0.15, 0.6, Some(0.075)).unwrap();
    let responses = stream(ApiShape::OpenAiResponses, &[RESPONSES_STREAM.as_bytes()]).usage();
    assert_eq!(mini.cost(&responses), Micros(13));

    // Anthropic, streamed, at 3 / 15 / 0.3: 25 uncached + 5 cache-creation input
    // at the input price, 100 cache reads, 15 output:
    // 30 × 3 + 100 × 0.3 + 15 × 15 = 90 + 30 + 225 = 345.
    let sonnet = Price::from_credits(3.0, 15.0, Some(0.3)).unwrap();
    let anthropic = stream(ApiShape::AnthropicMessages, &[ANTHROPIC_STREAM.as_bytes()]).usage();
    assert_eq!(sonnet.cost(&anthropic), Micros(345));

    // The same figures from complete JSON bodies.
    let chat = br#"{"choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1024}}}"#;
    assert_eq!(
        gpt_4o().cost(&read_json(ApiShape::OpenAiCompletions, chat)),
        Micros(1740)
    );
    let anthropic = br#"{"usage":{"input_tokens":25,"cache_read_input_tokens":100,"cache_creation_input_tokens":5,"output_tokens":15}}"#;
    assert_eq!(
        sonnet.cost(&read_json(ApiShape::AnthropicMessages, anthropic)),
        Micros(345)
    );
}

#[test]
fn the_reservation_covers_the_cost() {
    let body = br#"{"model":"gpt-4o","stream":true,"max_completion_tokens":2,"messages":[{"role":"user","content":"Say hello."}]}"#;
    let inputs = BillingInputs::read(body).unwrap();
    assert_eq!(inputs.output_cap, Some(2));
    let demand = Demand::json(body.len(), &inputs);
    let reserved = reserve_upper_bound(&gpt_4o(), &demand, &ReservationRule::default());
    // body.len() × 2.5 + 2 × 10, rounded up.
    let expected = (body.len() as u64 * 2_500_000 + 20_000_000).div_ceil(1_000_000);
    assert_eq!(reserved, Micros(expected as i64));
    let usage = reported(20, 2, 0);
    assert!(gpt_4o().cost(&usage) <= reserved);
}

/// `CHAT_STREAM` with its line endings replaced.
fn with_line_endings(text: &str, end: &str) -> String {
    text.replace('\n', end)
}

fn filter(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut filter = UsageChunkFilter::new();
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(filter.push(chunk));
    }
    out.extend(filter.finish());
    out
}

/// What `include_usage` adds to every chunk before the usage-only one.
const NULL_USAGE: &str = ",\"usage\":null";

const USAGE_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":2,\"total_tokens\":1202,\"prompt_tokens_details\":{\"cached_tokens\":1024}}}\n\n";

#[test]
fn the_injected_request_and_the_filtered_stream_fit_together() {
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let Injection::Rewritten(forwarded) = inject_include_usage(body) else {
        panic!("not rewritten");
    };
    assert_eq!(
        inject_include_usage(&forwarded),
        Injection::AlreadyAsked,
        "the rewritten body asks for usage"
    );
    // Usage is read from the upstream bytes; the client gets them without the chunk.
    let reader = stream(ApiShape::OpenAiCompletions, &[CHAT_STREAM.as_bytes()]);
    assert_eq!(reader.usage(), reported(1200, 2, 1024));
    let out = filter(&[CHAT_STREAM.as_bytes().to_vec()]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        CHAT_STREAM.replace(USAGE_EVENT, "").replace(NULL_USAGE, "")
    );
}

#[test]
fn every_two_way_split_filters_the_same() {
    for end in ["\n", "\r\n", "\r"] {
        let text = with_line_endings(CHAT_STREAM, end);
        let whole = filter(&[text.as_bytes().to_vec()]);
        for cut in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(cut);
            assert_eq!(
                filter(&[a.to_vec(), b.to_vec()]),
                whole,
                "{end:?} split at {cut}"
            );
        }
        let bytewise: Vec<Vec<u8>> = text.bytes().map(|b| vec![b]).collect();
        assert_eq!(filter(&bytewise), whole, "{end:?} byte by byte");
    }
}

proptest! {
    #[test]
    fn any_chunking_filters_the_same(cuts in proptest::collection::vec(0usize..4096, 0..40)) {
        assert!(CHAT_STREAM.contains(USAGE_EVENT));
        for end in ["\n", "\r\n", "\r"] {
            let text = with_line_endings(CHAT_STREAM, end);
            let expected = text
                .replace(&with_line_endings(USAGE_EVENT, end), "")
                .replace(NULL_USAGE, "");
            prop_assert_eq!(
                expected.len() + USAGE_EVENT.len() - 2 + 2 * end.len() + 4 * NULL_USAGE.len(),
                text.len()
            );
            let whole = filter(&[text.as_bytes().to_vec()]);
            prop_assert_eq!(String::from_utf8(whole.clone()).unwrap(), expected.clone());
            prop_assert_eq!(&filter(&split_at(&text, &cuts)), &whole);

            // Without the injection's additions, every byte passes.
            let plain = expected;
            prop_assert_eq!(filter(&split_at(&plain, &cuts)), plain.as_bytes());
        }
        for text in [ANTHROPIC_STREAM, RESPONSES_STREAM] {
            prop_assert_eq!(filter(&split_at(text, &cuts)), text.as_bytes());
        }
    }
}

fn capped(input: u64, output: u64, cached: u64) -> Usage {
    Usage {
        source: UsageSource::Capped,
        ..reported(input, output, cached)
    }
}

/// A usage object of `shape` whose input, cached and output counts are the given
/// JSON texts, as a complete body and as an event stream.
fn bodies_with_counts(
    shape: ApiShape,
    input: &str,
    cached: &str,
    output: &str,
) -> (String, String) {
    match shape {
        ApiShape::OpenAiCompletions | ApiShape::OpenAiEmbeddings => {
            let usage = format!(
                r#"{{"prompt_tokens":{input},"completion_tokens":{output},"prompt_tokens_details":{{"cached_tokens":{cached}}}}}"#
            );
            (
                format!(r#"{{"id":"x","choices":[],"usage":{usage}}}"#),
                format!(
                    "data: {{\"choices\":[{{\"delta\":{{\"content\":\"hi\"}}}}]}}\n\ndata: {{\"choices\":[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n"
                ),
            )
        }
        ApiShape::OpenAiResponses => {
            let usage = format!(
                r#"{{"input_tokens":{input},"input_tokens_details":{{"cached_tokens":{cached}}},"output_tokens":{output}}}"#
            );
            (
                format!(r#"{{"id":"r","usage":{usage}}}"#),
                format!(
                    "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"usage\":{usage}}}}}\n\n"
                ),
            )
        }
        ApiShape::AnthropicMessages => (
            format!(
                r#"{{"id":"m","usage":{{"input_tokens":{input},"cache_read_input_tokens":{cached},"output_tokens":{output}}}}}"#
            ),
            format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{input},\"cache_read_input_tokens\":{cached}}}}}}}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{output}}}}}\n\n"
            ),
        ),
    }
}

const SHAPES: [ApiShape; 4] = [
    ApiShape::OpenAiCompletions,
    ApiShape::OpenAiEmbeddings,
    ApiShape::OpenAiResponses,
    ApiShape::AnthropicMessages,
];

/// Both readers of `shape` on the given counts.
fn read_both(shape: ApiShape, input: &str, cached: &str, output: &str) -> [Usage; 2] {
    let (json, sse) = bodies_with_counts(shape, input, cached, output);
    [
        read_json(shape, json.as_bytes()),
        stream(shape, &[sse.as_bytes()]).usage(),
    ]
}

/// What a shape reports as input for `input` uncached-or-total and `cached`
/// cache-read tokens: Anthropic adds the cache reads to the input.
fn input_of(shape: ApiShape, input: u64, cached: u64) -> u64 {
    match shape {
        ApiShape::AnthropicMessages => input.saturating_add(cached).min(MAX_REPORTED_TOKENS),
        _ => input,
    }
}

#[test]
fn counts_past_the_bound_are_clamped_and_flagged_in_every_shape() {
    let max = MAX_REPORTED_TOKENS;
    for shape in SHAPES {
        for usage in read_both(shape, "18446744073709551615", "0", "1000000000") {
            assert_eq!(usage, capped(max, 1_000_000_000, 0), "{shape:?}");
        }
        // Past 64 bits, and past the bound by one.
        for usage in read_both(shape, "5", "0", "184467440737095516150") {
            assert_eq!(usage, capped(input_of(shape, 5, 0), max, 0), "{shape:?}");
        }
        for usage in read_both(shape, &(max + 1).to_string(), "0", "1") {
            assert_eq!(usage, capped(max, 1, 0), "{shape:?}");
        }
        // At the bound exactly the figures are believed.
        for usage in read_both(shape, &max.to_string(), "0", &max.to_string()) {
            assert_eq!(usage, reported(max, max, 0), "{shape:?}");
        }
    }
}

#[test]
fn counts_that_are_not_non_negative_integers_are_clamped_and_flagged() {
    for shape in SHAPES {
        for (input, expected) in [
            ("-1", 0),
            ("-9223372036854775808", 0),
            ("1.5", 2),
            ("2.0", 2),
            ("1e3", 1000),
            ("1e300", MAX_REPORTED_TOKENS),
            ("-0.5", 0),
            ("\"100\"", 0),
            ("true", 0),
            ("[1,2]", 0),
            ("{\"a\":1}", 0),
        ] {
            for usage in read_both(shape, input, "1", "3") {
                assert_eq!(
                    usage,
                    capped(input_of(shape, expected, 1), 3, 1),
                    "{shape:?} {input}"
                );
            }
        }
        // A wrong-typed cached count is flagged too.
        for usage in read_both(shape, "10", "-4", "3") {
            assert_eq!(usage, capped(input_of(shape, 10, 0), 3, 0), "{shape:?}");
        }
        // Null is absent, as before: no flag.
        for usage in read_both(shape, "7", "null", "3") {
            assert_eq!(usage, reported(input_of(shape, 7, 0), 3, 0), "{shape:?}");
        }
    }
}

#[test]
fn an_anthropic_sum_past_the_bound_is_clamped() {
    let max = MAX_REPORTED_TOKENS;
    let body = format!(
        r#"{{"usage":{{"input_tokens":{max},"cache_read_input_tokens":{max},"cache_creation_input_tokens":{max},"output_tokens":1}}}}"#
    );
    assert_eq!(
        read_json(ApiShape::AnthropicMessages, body.as_bytes()),
        capped(max, 1, max)
    );
}

#[test]
fn the_cost_of_the_largest_counts_saturates_without_overflow() {
    let top = Price::new(MAX_PRICE_PER_MTOK, MAX_PRICE_PER_MTOK, Some(Micros(0))).unwrap();
    let max = MAX_REPORTED_TOKENS;
    assert_eq!(top.cost(&capped(max, max, 0)), Micros(i64::MAX));
    assert_eq!(top.cost(&capped(max, 0, max)), Micros(0));
    assert_eq!(
        top.cost(&capped(u64::MAX, u64::MAX, u64::MAX)),
        Micros(i64::MAX)
    );
}

/// `ceil(sum(tokens × price) / 1e6)`, the definition, in 128 bits.
fn exact_cost(price: &Price, usage: &Usage) -> u128 {
    let uncached = usage.input_tokens.saturating_sub(usage.cached_input_tokens);
    let cached_price = price
        .cached_input_per_mtok()
        .unwrap_or(price.input_per_mtok());
    let micros = |m: Micros| u128::try_from(m.0).unwrap();
    let total = u128::from(uncached) * micros(price.input_per_mtok())
        + u128::from(usage.cached_input_tokens) * micros(cached_price)
        + u128::from(usage.output_tokens) * micros(price.output_per_mtok());
    total.div_ceil(1_000_000)
}

fn any_price() -> impl Strategy<Value = Price> {
    let micros = 0..=MAX_PRICE_PER_MTOK.0;
    (micros.clone(), micros.clone(), proptest::option::of(micros)).prop_map(
        |(input, output, cached)| {
            Price::new(Micros(input), Micros(output), cached.map(Micros)).unwrap()
        },
    )
}

fn any_count() -> impl Strategy<Value = u64> {
    prop_oneof![0..=MAX_REPORTED_TOKENS, any::<u64>(), Just(u64::MAX)]
}

/// A JSON text in a count's place: integers of every size and sign, fractions,
/// and other types.
fn any_count_json() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0..=MAX_REPORTED_TOKENS).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("\"12\"".to_owned()),
        Just("null".to_owned()),
        Just("false".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ]
}

proptest! {
    #[test]
    fn cost_is_exact_or_saturated_and_never_overflows(
        price in any_price(),
        input in any_count(),
        cached in any_count(),
        output in any_count(),
    ) {
        let usage = reported(input, output, cached);
        let cost = price.cost(&usage);
        prop_assert!(cost >= Micros::ZERO);
        let exact = exact_cost(&price, &usage);
        prop_assert_eq!(cost.0, i64::try_from(exact).unwrap_or(i64::MAX));
        // More tokens never cost less.
        let more = reported(input.saturating_add(1), output.saturating_add(1), cached);
        prop_assert!(price.cost(&more) >= cost);
    }

    #[test]
    fn read_counts_are_within_the_bound_and_flagged_unless_believed(
        input in any_count_json(),
        cached in any_count_json(),
        output in any_count_json(),
    ) {
        let believed = |text: &str| {
            text == "null" || text.parse::<u64>().is_ok_and(|n| n <= MAX_REPORTED_TOKENS)
        };
        for shape in SHAPES {
            for (streamed, usage) in read_both(shape, &input, &cached, &output).into_iter().enumerate() {
                // An Anthropic stream whose `message_delta` has no output count
                // never completes its usage.
                if streamed == 1 && shape == ApiShape::AnthropicMessages && output == "null" {
                    prop_assert_eq!(usage.source, UsageSource::Unknown);
                    continue;
                }
                prop_assert!(usage.input_tokens <= MAX_REPORTED_TOKENS);
                prop_assert!(usage.output_tokens <= MAX_REPORTED_TOKENS);
                prop_assert!(usage.cached_input_tokens <= MAX_REPORTED_TOKENS);
                let all_believed = believed(&input) && believed(&cached) && believed(&output);
                let anthropic_sum_fits = shape != ApiShape::AnthropicMessages
                    || usage.input_tokens < MAX_REPORTED_TOKENS;
                if all_believed && anthropic_sum_fits {
                    prop_assert_eq!(usage.source, UsageSource::Reported, "{:?} {} {} {}", shape, &input, &cached, &output);
                } else if !all_believed {
                    prop_assert_eq!(usage.source, UsageSource::Capped, "{:?} {} {} {}", shape, &input, &cached, &output);
                }
            }
        }
    }
}
