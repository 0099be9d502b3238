//! Criterion bench: the billing work done on every byte of a streamed response —
//! the SSE parser alone, `StreamUsage` (usage read from the upstream's stream) and
//! `UsageChunkFilter` (the injected usage chunk removed again), the two in turn and
//! in one pass (`UsageChunkFilter::reading_usage`) — over a recorded-
//! shape OpenAI chat stream and an Anthropic messages stream of 500 content
//! events, fed one event per frame as upstreams send them; the per-request
//! `inject_include_usage` rewrite of a request body; and `JsonUsage` over a
//! non-streamed chat completion as OpenAI sends it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use keygate_billing::{
    ApiShape, Injection, JsonUsage, SseParser, StreamUsage, UsageChunkFilter, UsageSource,
    inject_include_usage,
};

/// Content events per stream.
const CONTENT_EVENTS: usize = 500;

/// Token texts cycled through, as a model emits them: mostly short words with a
/// leading space, now and then punctuation, a newline or a quote (escaped in JSON).
const TOKENS: &[&str] = &[
    " The",
    " quarterly",
    " report",
    " shows",
    " revenue",
    " of",
    " 4",
    ".",
    "2",
    " million",
    ",",
    " up",
    " 12",
    "%",
    " on",
    " the",
    " previous",
    " quarter",
    ".\n\n",
    "-",
    " Operating",
    " costs",
    " rose",
    " \"",
    "modestly",
    "\"",
    " (",
    "3",
    "%).",
    " Café",
    " naïve",
    " résumé",
    "\n",
];

fn token(i: usize) -> String {
    serde_json::to_string(TOKENS[i % TOKENS.len()]).unwrap()
}

/// An OpenAI chat-completions stream as gpt-4o sends it with
/// `stream_options.include_usage` set (as keygate asks): `"usage":null` on every
/// chunk, then the usage-only chunk and `[DONE]`. One event per frame.
fn openai_stream() -> Vec<Vec<u8>> {
    let chunk = |choices: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_fc9f1d7035\",\"choices\":{choices},\"usage\":{usage}}}\n\n"
        )
        .into_bytes()
    };
    let choice = |delta: &str, finish: &str| {
        format!("[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]")
    };
    let mut frames = vec![chunk(
        &choice(
            r#"{"role":"assistant","content":"","refusal":null}"#,
            "null",
        ),
        "null",
    )];
    for i in 0..CONTENT_EVENTS {
        let delta = format!("{{\"content\":{}}}", token(i));
        frames.push(chunk(&choice(&delta, "null"), "null"));
    }
    frames.push(chunk(&choice("{}", "\"stop\""), "null"));
    frames.push(chunk(
        "[]",
        r#"{"prompt_tokens":1843,"completion_tokens":500,"total_tokens":2343,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
    ));
    frames.push(b"data: [DONE]\n\n".to_vec());
    frames
}

/// An Anthropic messages stream as claude-sonnet-4 sends it. One event per frame.
fn anthropic_stream() -> Vec<Vec<u8>> {
    let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n").into_bytes();
    let mut frames = vec![
        event(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":819,"cache_creation_input_tokens":0,"cache_read_input_tokens":1024,"output_tokens":1,"service_tier":"standard"}}}"#,
        ),
        event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        event("ping", r#"{"type": "ping"}"#),
    ];
    for i in 0..CONTENT_EVENTS {
        let data = format!(
            "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}",
            token(i)
        );
        frames.push(event("content_block_delta", &data));
    }
    frames.push(event(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    frames.push(event(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":500}}"#,
    ));
    frames.push(event("message_stop", r#"{"type":"message_stop"}"#));
    frames
}

fn total_bytes(frames: &[Vec<u8>]) -> u64 {
    frames.iter().map(|f| f.len() as u64).sum()
}

fn parse(frames: &[Vec<u8>]) -> u64 {
    let mut parser = SseParser::new();
    let mut events = 0;
    for frame in frames {
        parser.push(black_box(frame), |e| {
            black_box(&e);
            events += 1;
        });
    }
    events
}

fn read_usage(shape: ApiShape, frames: &[Vec<u8>]) -> StreamUsage {
    let mut reader = StreamUsage::new(shape);
    for frame in frames {
        reader.push(black_box(frame));
    }
    reader
}

fn filter(frames: &[Vec<u8>]) -> usize {
    let mut filter = UsageChunkFilter::new();
    let mut sent = 0;
    for frame in frames {
        sent += filter.push(black_box(frame)).len();
    }
    sent + filter.finish().len()
}

/// The usage read and the usage chunk removed in one pass, as keygate does for
/// a client that did not ask for usage.
fn read_and_filter(shape: ApiShape, frames: &[Vec<u8>]) -> (usize, u64) {
    let mut filter = UsageChunkFilter::reading_usage(shape);
    let mut sent = 0;
    for frame in frames {
        sent += filter.push(black_box(frame)).len();
    }
    sent += filter.finish().len();
    let output = filter.reader().map_or(0, |r| r.usage().output_tokens);
    (sent, output)
}

fn stream_group(
    group: &mut BenchmarkGroup<'_, WallTime>,
    shape: ApiShape,
    frames: &[Vec<u8>],
    with_filter: bool,
) {
    group.throughput(Throughput::BytesDecimal(total_bytes(frames)));
    group.bench_function("sse_parser", |b| b.iter(|| parse(frames)));
    group.bench_function("stream_usage", |b| {
        b.iter(|| read_usage(shape, frames).usage())
    });
    if with_filter {
        group.bench_function("usage_chunk_filter", |b| b.iter(|| filter(frames)));
        group.bench_function("stream_usage_then_filter", |b| {
            b.iter(|| (read_usage(shape, frames).usage(), filter(frames)))
        });
        group.bench_function("reading_filter", |b| {
            b.iter(|| read_and_filter(shape, frames))
        });
    }
}

fn streams(c: &mut Criterion) {
    let openai = openai_stream();
    let usage = read_usage(ApiShape::OpenAiCompletions, &openai);
    assert_eq!(usage.usage().source, UsageSource::Reported);
    assert_eq!(usage.usage().output_tokens, 500);
    assert_eq!(usage.content_events(), CONTENT_EVENTS as u64);
    // The filter drops the usage-only chunk and `"usage":null` from every other chunk.
    let usage_chunk = openai[openai.len() - 2].len();
    let null_usage = (openai.len() - 2) * ",\"usage\":null".len();
    assert_eq!(
        filter(&openai) as u64,
        total_bytes(&openai) - (usage_chunk + null_usage) as u64
    );
    assert_eq!(
        read_and_filter(ApiShape::OpenAiCompletions, &openai),
        (filter(&openai), 500)
    );
    eprintln!(
        "openai stream: {} frames, {} bytes",
        openai.len(),
        total_bytes(&openai)
    );

    let anthropic = anthropic_stream();
    let usage = read_usage(ApiShape::AnthropicMessages, &anthropic);
    assert_eq!(usage.usage().source, UsageSource::Reported);
    assert_eq!(usage.usage().input_tokens, 1843);
    assert_eq!(usage.content_events(), CONTENT_EVENTS as u64);
    eprintln!(
        "anthropic stream: {} frames, {} bytes",
        anthropic.len(),
        total_bytes(&anthropic)
    );

    let mut group = c.benchmark_group("openai_chat_stream");
    stream_group(&mut group, ApiShape::OpenAiCompletions, &openai, true);
    group.finish();
    let mut group = c.benchmark_group("anthropic_stream");
    stream_group(&mut group, ApiShape::AnthropicMessages, &anthropic, false);
    group.finish();
}

/// A streaming chat-completions request body of about `target` bytes.
fn request_body(target: usize) -> Vec<u8> {
    let turn = "Summarise the following paragraph in two sentences, keeping every number: \
        The quarterly report shows revenue of 4.2 million, up 12% on the previous quarter.\n";
    let mut messages = Vec::new();
    loop {
        let body = serde_json::to_vec(&serde_json::json!({
            "messages": messages,
            "model": "gpt-4o-mini",
            "stream": true,
        }))
        .unwrap();
        if body.len() >= target {
            return body;
        }
        messages.push(serde_json::json!({"role": "user", "content": turn}));
    }
}

fn inject(c: &mut Criterion) {
    let mut group = c.benchmark_group("inject_include_usage");
    for (name, target) in [("1KB", 1024), ("100KB", 100 * 1024)] {
        let body = request_body(target);
        assert!(matches!(
            inject_include_usage(&body),
            Injection::Rewritten(_)
        ));
        group.throughput(Throughput::BytesDecimal(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| inject_include_usage(black_box(&body))));
    }
    group.finish();
}

/// A non-streamed chat completion of OpenAI's shape (its usage with both
/// `*_details` objects), about 1 KB.
const CHAT_COMPLETION: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The quarterly report shows revenue of 4.2 million, up 12% on the year, with operating costs flat. The largest gain came from the \"enterprise\" tier; churn fell to 2.1%.\nNext quarter's outlook is cautious.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1843,"completion_tokens":52,"total_tokens":1895,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;

fn json_usage(c: &mut Criterion) {
    let mut group = c.benchmark_group("json_usage");
    let body = CHAT_COMPLETION.as_bytes();
    let read = || {
        let mut reader = JsonUsage::new(ApiShape::OpenAiCompletions);
        reader.push(black_box(body));
        reader.usage()
    };
    let usage = read();
    assert_eq!(usage.source, UsageSource::Reported);
    assert_eq!(usage.cached_input_tokens, 1024);
    group.throughput(Throughput::BytesDecimal(body.len() as u64));
    group.bench_function("chat_completion", |b| b.iter(read));
    group.finish();
}

criterion_group!(benches, streams, inject, json_usage);
criterion_main!(benches);
