//! Tests of the include_usage injection and the usage-chunk filter.

use super::*;
use keygate_types::UsageSource;

fn rewritten(body: &str) -> String {
    match inject_include_usage(body.as_bytes()) {
        Injection::Rewritten(bytes) => String::from_utf8(bytes).unwrap(),
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn inserts_stream_options_keeping_every_other_byte() {
    assert_eq!(
        rewritten(
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
        ),
        r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#
    );
    assert_eq!(
        rewritten(" \n{ \"stream\" : true }\n"),
        " \n{\"stream_options\":{\"include_usage\":true}, \"stream\" : true }\n"
    );
}

#[test]
fn completes_existing_stream_options() {
    assert_eq!(
        rewritten(r#"{"stream":true,"model":"m","stream_options":{"include_usage":false,"x":1}}"#),
        r#"{"stream":true,"model":"m","stream_options":{"include_usage":true,"x":1}}"#
    );
    assert_eq!(
        rewritten(r#"{"stream":true,"stream_options":null}"#),
        r#"{"stream":true,"stream_options":{"include_usage":true}}"#
    );
    assert_eq!(
        rewritten(r#"{"stream":true,"stream_options":{ }}"#),
        r#"{"stream":true,"stream_options":{"include_usage":true }}"#
    );
    assert_eq!(
        rewritten(r#"{"stream":true,"stream_options":{"x":1,"include_usage":null}}"#),
        r#"{"stream":true,"stream_options":{"x":1,"include_usage":true}}"#
    );
    // Found by cargo fuzz: serialising the body again changed numbers.
    let precise = r#"{"stream":true,"seed":18446744073709551616,"t":0.30000000000000004,"stream_options":{"x":8833007770000000000000000000000000031203651324448.6}}"#;
    assert_eq!(
        rewritten(precise),
        precise.replace(r#"{"x""#, r#"{"include_usage":true,"x""#)
    );
}

#[test]
fn a_client_that_asked_is_left_alone() {
    assert_eq!(
        inject_include_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
        Injection::AlreadyAsked
    );
}

#[test]
fn everything_else_is_not_streaming() {
    for body in [
        &br#"{"model":"m"}"#[..],
        br#"{"stream":false}"#,
        br#"{"stream":null}"#,
        br#"{"stream":"true"}"#,
        br#"{"stream":true,"stream":true}"#,
        br#"{"stream":true,"stream_options":{},"stream_options":{}}"#,
        br#"{"stream":true,"stream_options":"yes"}"#,
        br#"[true]"#,
        br#"{"stream":true"#,
        // Invalid UTF-8 in a key it does not read (found by cargo fuzz).
        b"{\"stream\":true,\"\xda\xda\":1}",
        b"",
    ] {
        assert_eq!(
            inject_include_usage(body),
            Injection::NotStreaming,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

const USAGE: &str =
    r#"data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;

fn filter_bytewise(input: &[u8]) -> (Vec<u8>, u64) {
    let mut filter = UsageChunkFilter::new();
    let mut out = Vec::new();
    for byte in input {
        out.extend(filter.push(std::slice::from_ref(byte)));
    }
    let removed = filter.removed();
    out.extend(filter.finish());
    (out, removed)
}

#[test]
fn removes_the_usage_chunk_with_every_line_ending() {
    for end in ["\n", "\r\n", "\r"] {
        let keep = format!("data: {{\"choices\":[{{\"delta\":{{}}}}]}}{end}{end}");
        let done = format!(": c{end}{end}data: [DONE]{end}{end}");
        let input = format!("{keep}{USAGE}{end}{end}{done}");
        let expected = format!("{keep}{done}");
        let mut filter = UsageChunkFilter::new();
        let mut whole = filter.push(input.as_bytes());
        assert_eq!(filter.removed(), 1);
        whole.extend(filter.finish());
        assert_eq!(String::from_utf8(whole).unwrap(), expected, "{end:?}");
        let (bytewise, removed) = filter_bytewise(input.as_bytes());
        assert_eq!(String::from_utf8(bytewise).unwrap(), expected, "{end:?}");
        assert_eq!(removed, 1);
    }
}

#[test]
fn the_lf_of_a_split_crlf_follows_its_event() {
    let mut filter = UsageChunkFilter::new();
    let mut out = filter.push(format!("{USAGE}\r\n\r").as_bytes());
    assert!(out.is_empty());
    out.extend(filter.push(b"\ndata: x\r"));
    out.extend(filter.push(b"\n\r"));
    assert_eq!(out, b"data: x\r\n\r");
    out.extend(filter.push(b"\n"));
    assert_eq!(out, b"data: x\r\n\r\n");
}

#[test]
fn complete_events_go_out_at_once() {
    let mut filter = UsageChunkFilter::new();
    assert_eq!(filter.push(b"data: a\n\ndata: b"), b"data: a\n\n");
    assert_eq!(filter.push(b"\n"), b"");
    assert_eq!(filter.push(b"\n"), b"data: b\n\n");
}

#[test]
fn keeps_chunks_that_are_not_usage_only() {
    for data in [
        r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":3}}"#,
        r#"{"choices":[]}"#,
        r#"{"usage":{"prompt_tokens":3}}"#,
        r#"[[],{"prompt_tokens":3}]"#,
        r#"{"choices":[],"choices":[],"usage":{}}"#,
        "[DONE]",
    ] {
        let input = format!("data: {data}\n\n");
        let (out, removed) = filter_bytewise(input.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), input);
        assert_eq!(removed, 0);
    }
    // A chunk is kept, but without the `"usage":null` the injection added.
    let (out, removed) = filter_bytewise(b"data: {\"choices\":[],\"usage\":null}\n\n");
    assert_eq!(out, b"data: {\"choices\":[]}\n\n");
    assert_eq!(removed, 0);
}

#[test]
fn an_unterminated_usage_chunk_at_the_end_is_removed() {
    for tail in ["", "\n", "\r", "\r\n"] {
        let input = format!("data: a\n\n{USAGE}{tail}");
        let (out, removed_before_finish) = filter_bytewise(input.as_bytes());
        assert_eq!(out, b"data: a\n\n", "{tail:?}");
        assert_eq!(removed_before_finish, 0);
    }
    let (out, _) = filter_bytewise(b"data: a\n\ndata: {\"choices\":[");
    assert_eq!(out, b"data: a\n\ndata: {\"choices\":[");
}

#[test]
fn a_long_event_streams_through_without_being_held() {
    let mut filter = UsageChunkFilter::new();
    let big = vec![b'x'; MAX_HELD_EVENT_BYTES];
    assert!(filter.push(b"data: ").is_empty());
    let first = filter.push(&big);
    assert_eq!(first.len(), MAX_HELD_EVENT_BYTES + 6);
    assert_eq!(filter.push(b"yz"), b"yz");
    assert_eq!(filter.push(b"\n\n"), b"\n\n");
    assert!(filter.push(USAGE.as_bytes()).is_empty());
    assert!(filter.push(b"\n\n").is_empty());
    assert_eq!(filter.removed(), 1);
    assert!(filter.finish().is_empty());
}

/// The reading filter fed `input` in pieces of `size`: what it sends, and what
/// it read.
fn read_filtered(input: &[u8], size: usize) -> (Vec<u8>, crate::Usage, u64) {
    let mut filter = UsageChunkFilter::reading_usage(crate::ApiShape::OpenAiCompletions);
    let mut out = Vec::new();
    for piece in input.chunks(size) {
        out.extend(filter.push(piece));
    }
    out.extend(filter.finish());
    let reader = filter.reader().unwrap();
    (out, reader.usage(), reader.content_events())
}

#[test]
fn a_reading_filter_reads_every_kind_of_event_once() {
    let long = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}],\"usage\":null}}\n\n",
        "x".repeat(MAX_HELD_EVENT_BYTES)
    );
    let short = "data: {\"choices\":[{\"delta\":{\"content\":\"y\"}}],\"usage\":null}\r\n\r\n";
    // The usage chunk split over two `data:` lines, as SSE allows.
    let usage = "data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    let input = format!("{long}{short}{usage}data: [DONE]\n\n");
    for size in [1, 7, 4096, input.len()] {
        let (out, usage, content) = read_filtered(input.as_bytes(), size);
        // The long chunk passes as it came (it is not held, so not cut); the
        // short one loses its `"usage":null`; the usage chunk is gone.
        let expected = format!(
            "{long}data: {{\"choices\":[{{\"delta\":{{\"content\":\"y\"}}}}]}}\r\n\r\ndata: [DONE]\n\n"
        );
        assert!(out == expected.as_bytes(), "pieces of {size}");
        assert_eq!((usage.input_tokens, usage.output_tokens), (3, 2), "{size}");
        assert_eq!(usage.source, UsageSource::Reported);
        assert_eq!(content, 2, "pieces of {size}");
    }
}

/// The reading filter agrees with the plain filter (bytes sent, chunks removed)
/// and with a `StreamUsage` fed the unfiltered stream (usage, content events),
/// for `input` split in pieces of every size in `sizes`.
fn reading_agrees(shape: crate::ApiShape, input: &[u8], sizes: &[usize]) {
    let mut plain = UsageChunkFilter::new();
    let mut expected = plain.push(input);
    expected.extend(plain.finish());
    let mut unfiltered = crate::StreamUsage::new(shape);
    unfiltered.push(input);
    for &size in sizes {
        let mut reading = UsageChunkFilter::reading_usage(shape);
        let mut out = Vec::new();
        for piece in input.chunks(size) {
            out.extend(reading.push(piece));
        }
        out.extend(reading.finish());
        assert!(out == expected, "{shape:?}, pieces of {size}: other bytes");
        assert_eq!(reading.removed(), plain.removed(), "{shape:?}, {size}");
        let reader = reading.reader().unwrap();
        assert_eq!(reader.usage(), unfiltered.usage(), "{shape:?}, {size}");
        assert_eq!(
            reader.content_events(),
            unfiltered.content_events(),
            "{shape:?}, {size}"
        );
    }
}

#[test]
fn long_events_are_read_as_the_stream_reader_reads_them() {
    use crate::ApiShape::{AnthropicMessages, OpenAiCompletions};
    let text = |n: usize| "w".repeat(n);
    let chunk = |content: &str, end: &str| {
        format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":null}}{end}{end}"
        )
    };
    let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9}}";
    // Held to one byte past the limit, so the blank line's first byte starts
    // the passing: `data: ` and `\n` are 7 bytes.
    let exact = format!("data: {}\n\n", text(MAX_HELD_EVENT_BYTES - 6));
    let streams = [
        // Long events with every line ending, between short ones, then usage.
        format!(
            "{}{}{}{}{usage}\r\n\r\n",
            chunk(&text(MAX_HELD_EVENT_BYTES), "\r\n"),
            chunk("a", "\r\n"),
            chunk(&text(MAX_HELD_EVENT_BYTES + 3), "\r"),
            chunk("b", "\n"),
        ),
        format!("{exact}{}{usage}\n\n", chunk("c", "\n")),
        // Past the SSE parser's own limit, with invalid UTF-8 in it.
        format!(
            "{}{}{usage}\n\n",
            chunk(&format!("{}\u{fffd}", text(crate::MAX_EVENT_BYTES)), "\n"),
            chunk("d", "\n"),
        ),
        // A long event the stream ends in.
        format!(
            "{}{}",
            chunk("e", "\n"),
            &chunk(&text(MAX_HELD_EVENT_BYTES + 9), "\n")[..MAX_HELD_EVENT_BYTES + 40]
        ),
    ];
    let sizes = [1 << 20, 65_537, 4096, 333, 7];
    for stream in &streams {
        reading_agrees(OpenAiCompletions, stream.as_bytes(), &sizes);
    }
    let mut invalid = streams[2].clone().into_bytes();
    let at = invalid.len() / 2;
    invalid[at] = 0xff;
    reading_agrees(OpenAiCompletions, &invalid, &sizes);
    // An Anthropic stream, named events included, read under its own shape.
    let anthropic = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":4}}}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"text\":\"{}\"}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"text\":\"x\"}}}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":7}}}}\n\n",
        text(MAX_HELD_EVENT_BYTES)
    );
    reading_agrees(AnthropicMessages, anthropic.as_bytes(), &sizes);
    let mut reading = UsageChunkFilter::reading_usage(AnthropicMessages);
    reading.push(anthropic.as_bytes());
    let read = reading.reader().unwrap();
    assert_eq!(
        (read.usage().input_tokens, read.usage().output_tokens),
        (4, 7)
    );
    assert_eq!(read.content_events(), 2);
}
