//! Getting usage out of an OpenAI stream whose client did not ask for it.
//!
//! OpenAI chat and legacy completions streams report usage only when the request
//! sets `stream_options.include_usage`. [`inject_include_usage`] sets it; the
//! upstream then ends the stream with a usage-only chunk (`"choices": []`), which
//! [`UsageChunkFilter`] removes again so the client gets the stream it asked for.
//! Responses API and Anthropic streams always report usage and need neither.

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::sse::{SseParser, find_line_end};
use crate::usage::{ApiShape, StreamUsage, present};

/// What [`inject_include_usage`] made of a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    /// A stream the client did not ask usage for: forward this body instead, and
    /// pass the response through a [`UsageChunkFilter`], one made with
    /// [`UsageChunkFilter::reading_usage`] to read the usage on the way (or read
    /// it from the unfiltered bytes first).
    Rewritten(Vec<u8>),
    /// The client asked for usage itself: forward the body and the stream as they are.
    AlreadyAsked,
    /// Not a stream, or not a JSON object read without doubt (invalid JSON, a
    /// duplicated `stream` or `stream_options` key): forward the body as it is.
    NotStreaming,
}

/// Sets `stream_options.include_usage` in a streaming OpenAI chat or completions
/// request body, changing only the bytes it must: with no `stream_options`, the
/// field is inserted right after the opening `{`; a `null` one is replaced by
/// `{"include_usage":true}`; in an object, `include_usage` is inserted after its
/// `{`, or its `false` or `null` replaced by `true`. Every other byte is kept,
/// so numbers the upstream reads (a large `seed`, a precise `temperature`)
/// reach it exactly as the client wrote them.
pub fn inject_include_usage(body: &[u8]) -> Injection {
    #[derive(Deserialize)]
    struct StreamRequest<'a> {
        stream: Option<bool>,
        /// Absent: `None`; anything else, `null` included, as written.
        #[serde(default, borrow, deserialize_with = "present")]
        stream_options: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct StreamOptions<'a> {
        /// Absent: `None`; anything else, `null` included, as written.
        #[serde(default, borrow, deserialize_with = "present")]
        include_usage: Option<&'a RawValue>,
    }

    let Some(open) = object_start(body) else {
        return Injection::NotStreaming;
    };
    // serde_json skips the strings it does not read without checking their
    // UTF-8, which JSON requires: such a body is not read without doubt.
    let Ok(text) = std::str::from_utf8(body) else {
        return Injection::NotStreaming;
    };
    let Ok(request) = serde_json::from_str::<StreamRequest<'_>>(text) else {
        return Injection::NotStreaming;
    };
    if request.stream != Some(true) {
        return Injection::NotStreaming;
    }
    let Some(options) = request.stream_options else {
        // The object has a `stream` key, so a comma after the new one is valid.
        return splice(
            text,
            open + 1..open + 1,
            r#""stream_options":{"include_usage":true},"#,
        );
    };
    let Some(at) = range_in(text, options.get()) else {
        return Injection::NotStreaming;
    };
    match options.get() {
        "null" => return splice(text, at, r#"{"include_usage":true}"#),
        raw if raw.starts_with('{') => {}
        _ => return Injection::NotStreaming,
    }
    let Ok(parsed) = serde_json::from_str::<StreamOptions<'_>>(options.get()) else {
        return Injection::NotStreaming;
    };
    match parsed
        .include_usage
        .map(|v| (v.get(), range_in(text, v.get())))
    {
        None => {
            let inner = text[at.start + 1..].trim_start();
            let field = if inner.starts_with('}') {
                r#""include_usage":true"#
            } else {
                r#""include_usage":true,"#
            };
            splice(text, at.start + 1..at.start + 1, field)
        }
        Some(("true", _)) => Injection::AlreadyAsked,
        Some(("false" | "null", Some(value))) => splice(text, value, "true"),
        Some(_) => Injection::NotStreaming,
    }
}

/// `text` with `range` replaced by `with`.
fn splice(text: &str, range: std::ops::Range<usize>, with: &str) -> Injection {
    let mut out = Vec::with_capacity(text.len() + with.len());
    out.extend_from_slice(&text.as_bytes()[..range.start]);
    out.extend_from_slice(with.as_bytes());
    out.extend_from_slice(&text.as_bytes()[range.end..]);
    Injection::Rewritten(out)
}

/// Where `part`, a slice borrowed from `whole`, lies in it.
fn range_in(whole: &str, part: &str) -> Option<std::ops::Range<usize>> {
    range_in_bytes(whole.as_bytes(), part.as_bytes())
}

/// Whether `bytes` start, after whitespace, with `{`. Serde reads a struct from
/// a JSON array too; probes check this first so `[true]` is not read as an object.
pub(crate) fn is_json_object(bytes: &[u8]) -> bool {
    object_start(bytes).is_some()
}

/// Removes the usage-only chunk from an OpenAI SSE stream, passing every other
/// byte through unchanged, however the stream is split into frames.
///
/// The usage-only chunk is an event whose `data:` is a JSON object with
/// `"choices": []` and a non-null `usage`; it is removed with all its lines and
/// the blank line that ends it. A chunk carrying usage and choices is kept. Only
/// the current, unfinished event is held back, and only while it is no longer
/// than [`MAX_HELD_EVENT_BYTES`]; a longer one cannot be a usage chunk and is
/// passed through as it arrives. Lines end in `\n`, `\r\n` or `\r`, as for
/// [`SseParser`].
///
/// Made with [`UsageChunkFilter::reading_usage`], it also reads the usage from
/// the stream as a [`StreamUsage`] fed the upstream's bytes would, in the same
/// pass: each event is parsed once, for both.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    /// The current event so far, while it may still be a usage-only chunk.
    held: Vec<u8>,
    /// The current event outgrew `MAX_HELD_EVENT_BYTES` and is being passed through.
    passing: bool,
    /// No byte of the current line seen yet.
    at_line_start: bool,
    /// The previous byte was `\r`, so a following `\n` belongs to the same ending.
    after_cr: bool,
    /// The previous byte was the `\r` that ended an event; a `\n` next goes where
    /// that event went.
    ended_on_cr: Option<Fate>,
    removed: u64,
    /// The usage read from the stream, before the filter's cuts.
    reader: Option<Box<StreamUsage>>,
}

/// Longest event [`UsageChunkFilter`] holds back to look at. A usage-only chunk
/// is a few hundred bytes.
pub const MAX_HELD_EVENT_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Sent,
    Removed,
}

impl UsageChunkFilter {
    /// A filter at the start of a stream.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            ..Self::default()
        }
    }

    /// A filter at the start of a stream that also reads its usage, as
    /// [`StreamUsage::new`]`(shape)` would from the bytes before the filter.
    pub fn reading_usage(shape: ApiShape) -> Self {
        Self {
            reader: Some(Box::new(StreamUsage::new(shape))),
            ..Self::new()
        }
    }

    /// The usage read so far, for a filter made with
    /// [`UsageChunkFilter::reading_usage`].
    pub fn reader(&self) -> Option<&StreamUsage> {
        self.reader.as_deref()
    }

    /// Feeds the next piece of the upstream stream; returns the bytes to send to
    /// the client now.
    pub fn push(&mut self, input: &[u8]) -> Vec<u8> {
        // Empty until something goes out: the common frame, one event, goes
        // out as the held buffer itself (`end_event`), not a copy of it.
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(&byte) = input.get(at) {
            if self.ended_on_cr.is_none() && !matches!(byte, b'\n' | b'\r') {
                // A run of bytes up to the next line ending: the same steps as
                // for one such byte, taken for the whole run at once.
                let end = find_line_end(&input[at..]).map_or(input.len(), |n| at + n);
                self.after_cr = false;
                self.at_line_start = false;
                self.keep_run(&input[at..end], &mut out);
                at = end;
                continue;
            }
            at += 1;
            if let Some(fate) = self.ended_on_cr.take() {
                if byte == b'\n' {
                    self.after_cr = false;
                    if fate == Fate::Sent {
                        out.push(byte);
                    }
                    continue;
                }
            }
            match byte {
                b'\n' if self.after_cr => {
                    self.after_cr = false;
                    self.keep(byte, &mut out);
                }
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.keep(byte, &mut out);
                    if self.at_line_start {
                        let fate = self.end_event(&mut out);
                        if byte == b'\r' {
                            self.ended_on_cr = Some(fate);
                        }
                    }
                    self.at_line_start = true;
                }
                _ => {
                    self.after_cr = false;
                    self.at_line_start = false;
                    self.keep(byte, &mut out);
                }
            }
        }
        out
    }

    /// Ends the stream; returns what is left of an unfinished last event (nothing
    /// if that event is a usage-only chunk). Nothing is pushed after it.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.held);
        if is_usage_only(&held) {
            self.removed += 1;
            return Vec::new();
        }
        held
    }

    /// Usage-only chunks removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    fn keep(&mut self, byte: u8, out: &mut Vec<u8>) {
        if self.passing {
            self.pass(std::slice::from_ref(&byte), out);
            return;
        }
        self.held.push(byte);
        if self.held.len() > MAX_HELD_EVENT_BYTES {
            self.start_passing(out);
        }
    }

    /// The held event is too long to be a usage chunk: it goes out, and the
    /// rest of it as it comes.
    fn start_passing(&mut self, out: &mut Vec<u8>) {
        if let Some(reader) = &mut self.reader {
            // A passing event is read as the stream reader reads any bytes; the
            // reader's parser is between events here.
            reader.push(&self.held);
        }
        out.append(&mut self.held);
        self.passing = true;
    }

    /// Bytes of a passing event.
    fn pass(&mut self, run: &[u8], out: &mut Vec<u8>) {
        if let Some(reader) = &mut self.reader {
            reader.push(run);
        }
        out.extend_from_slice(run);
    }

    /// [`UsageChunkFilter::keep`] for each byte of `run`, none of them a line
    /// ending.
    fn keep_run(&mut self, run: &[u8], out: &mut Vec<u8>) {
        if self.passing {
            self.pass(run, out);
            return;
        }
        // `held` is never longer than `MAX_HELD_EVENT_BYTES` between bytes.
        let room = MAX_HELD_EVENT_BYTES + 1 - self.held.len();
        if run.len() < room {
            if self.held.is_empty() {
                // An event's first line: room for its line ending and the
                // blank line after it too (`\r\n\r\n` at most), so the usual
                // event is one allocation, which then goes out as its frame.
                self.held.reserve_exact(run.len() + 4);
            }
            self.held.extend_from_slice(run);
            return;
        }
        let (head, rest) = run.split_at(room);
        self.held.extend_from_slice(head);
        self.start_passing(out);
        self.pass(rest, out);
    }

    fn end_event(&mut self, out: &mut Vec<u8>) -> Fate {
        if std::mem::replace(&mut self.passing, false) {
            return Fate::Sent;
        }
        match self.classify() {
            Verdict::UsageOnly => {
                self.held = Vec::new();
                self.removed += 1;
                return Fate::Removed;
            }
            Verdict::Keep => {}
            Verdict::Cut(range) => {
                self.held.drain(range);
            }
            Verdict::Scan => strip_null_usage(&mut self.held),
        }
        if out.is_empty() {
            // The common case, an event to a frame: the held bytes go out as
            // they are, and no buffer is kept between events (an open stream
            // would hold one as long as its longest event).
            *out = std::mem::take(&mut self.held);
        } else {
            out.append(&mut self.held);
        }
        Fate::Sent
    }

    /// What to do with the held event, complete; a reading filter reads its
    /// usage on the way. Each event is parsed once where it is one `data:`
    /// line of a JSON object, as upstreams send them; any other is parsed as
    /// before, by each reader.
    fn classify(&mut self) -> Verdict {
        let Some(reader) = &mut self.reader else {
            return Verdict::of(is_usage_only(&self.held));
        };
        if let Some(data) = single_data_line(&self.held) {
            return match reader.read_event("", data) {
                Some(chunk) if is_json_object(data.as_bytes()) => {
                    if chunk.usage_only {
                        Verdict::UsageOnly
                    } else if !chunk.null_usage {
                        Verdict::Keep
                    } else if let Some(cut) = trailing_null_usage(&self.held, data) {
                        Verdict::Cut(cut)
                    } else {
                        Verdict::Scan
                    }
                }
                _ => Verdict::of(is_usage_only_data(data)),
            };
        }
        // The held event is one event: the parser dispatches it at most once.
        let mut parser = SseParser::new();
        let mut usage_only = None;
        for bytes in [&self.held[..], b"\n\n"] {
            parser.push_borrowed(bytes, |e| {
                reader.read_event(&e.event, &e.data);
                usage_only.get_or_insert_with(|| is_usage_only_data(&e.data));
            });
        }
        Verdict::of(usage_only.unwrap_or(false))
    }
}

/// What [`UsageChunkFilter`] does with a complete event.
enum Verdict {
    /// Remove it: a usage-only chunk.
    UsageOnly,
    /// Send it as it is: it has no `"usage": null`.
    Keep,
    /// Send it without these bytes, its `"usage": null` member.
    Cut(std::ops::Range<usize>),
    /// Send it without a `"usage": null` member [`strip_null_usage`] finds.
    Scan,
}

impl Verdict {
    fn of(usage_only: bool) -> Self {
        if usage_only {
            Verdict::UsageOnly
        } else {
            Verdict::Scan
        }
    }
}

/// Where, in `event`, the `,"usage":null` that ends `data` (a JSON object,
/// borrowed from `event`, whose top-level `usage` is `null`) lies, as OpenAI
/// writes it: last, without spaces. It is the top-level member, as
/// [`strip_null_usage`] would find it: the last `}` of a valid object closes
/// it, and the quote after a comma opens a key, never an escaped quote.
fn trailing_null_usage(event: &[u8], data: &str) -> Option<std::ops::Range<usize>> {
    const MEMBER: &str = r#","usage":null"#;
    let body = data.strip_suffix('}')?;
    if !body.ends_with(MEMBER) {
        return None;
    }
    let end = range_in_bytes(event, body.as_bytes())?.end;
    Some(end - MEMBER.len()..end)
}

/// Where `part`, a slice borrowed from `whole`, lies in it.
fn range_in_bytes(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// With `include_usage` set, OpenAI adds `"usage":null` to every chunk before
/// the usage-only one. A client that did not ask for usage never sees that
/// member: it is cut from each `data:` line of `event`, with its comma, leaving
/// every other byte as the upstream sent it.
fn strip_null_usage(event: &mut Vec<u8>) {
    let mut start = 0;
    while start < event.len() {
        let end = find_line_end(&event[start..]).map_or(event.len(), |at| start + at);
        if let Some(data) = event[start..end].strip_prefix(b"data:") {
            let offset = end - data.len();
            if let Some(cut) = null_usage_member(data) {
                event.drain(offset + cut.start..offset + cut.end);
                return;
            }
        }
        start = end + 1;
    }
}

/// Where the top-level `"usage": null` member of a JSON object is, with the
/// comma that joins it to its neighbour.
fn null_usage_member(json: &[u8]) -> Option<std::ops::Range<usize>> {
    let skip_ws = |mut i: usize| {
        while json.get(i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            i += 1;
        }
        i
    };
    let mut depth = 0_u32;
    let mut comma = None;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let key_start = i;
                i += 1;
                // To the closing quote, stepping over escaped characters.
                while i < json.len() {
                    let Some(n) = memchr::memchr2(b'"', b'\\', &json[i..]) else {
                        i = json.len();
                        break;
                    };
                    i += n;
                    if json[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
                i += 1;
                if depth != 1 || json.get(key_start..i) != Some(&b"\"usage\""[..]) {
                    continue;
                }
                let colon = skip_ws(i);
                if json.get(colon) != Some(&b':') {
                    continue;
                }
                let value = skip_ws(colon + 1);
                if json.get(value..value + 4) != Some(&b"null"[..]) {
                    return None;
                }
                let after = skip_ws(value + 4);
                return match (json.get(after), comma) {
                    (Some(b','), _) => Some(key_start..skip_ws(after + 1)),
                    (Some(b'}'), Some(comma)) => Some(comma..value + 4),
                    (Some(b'}'), None) => Some(key_start..value + 4),
                    _ => None,
                };
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => comma = Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod null_usage_tests {
    use super::*;

    fn strip(text: &str) -> String {
        let mut bytes = text.as_bytes().to_vec();
        strip_null_usage(&mut bytes);
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_null_usage_member_is_cut_with_its_comma() {
        assert_eq!(
            strip("data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n"),
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}]}\n\n"
        );
        assert_eq!(
            strip("data: {\"usage\": null, \"id\":\"c\"}\n\n"),
            "data: {\"id\":\"c\"}\n\n"
        );
        assert_eq!(strip("data: {\"usage\":null}\n\n"), "data: {}\n\n");
    }

    #[test]
    fn anything_else_is_left_alone() {
        for text in [
            "data: {\"choices\":[{\"usage\":null}]}\n\n",
            "data: {\"text\":\"\\\"usage\\\":null\"}\n\n",
            "data: {\"usage\":{\"prompt_tokens\":1}}\n\n",
            "event: x\ndata: [DONE]\n\n",
            ": usage null\n\n",
        ] {
            assert_eq!(strip(text), text);
        }
    }
}

/// The index of the `{` a JSON object starts at, after leading whitespace.
fn object_start(bytes: &[u8]) -> Option<usize> {
    let at = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    (bytes.get(at) == Some(&b'{')).then_some(at)
}

/// Whether an event's bytes (terminated or not) are a usage-only chunk.
fn is_usage_only(event: &[u8]) -> bool {
    if event.is_empty() {
        return false;
    }
    if let Some(data) = single_data_line(event) {
        return is_usage_only_data(data);
    }
    let mut parser = SseParser::new();
    let mut usage_only = None;
    // The blank line ends an unterminated event; after a terminated one it is
    // only more blank lines.
    for bytes in [event, b"\n\n"] {
        parser.push_borrowed(bytes, |e| {
            usage_only.get_or_insert_with(|| is_usage_only_data(&e.data));
        });
    }
    usage_only.unwrap_or(false)
}

/// The data of an event that is one `data:` line in UTF-8 and the blank line
/// that ends it, as an upstream writes each chunk; `None` for any other event,
/// which [`SseParser`] reads instead.
fn single_data_line(event: &[u8]) -> Option<&str> {
    let end = find_line_end(event)?;
    let mut next = end + 1;
    if event[end] == b'\r' && event.get(next) == Some(&b'\n') {
        next += 1;
    }
    // The held event stops at the first byte of its blank line's ending.
    if !matches!(event[next..], [b'\n' | b'\r']) {
        return None;
    }
    let value = event[..end].strip_prefix(b"data:")?;
    let value = value.strip_prefix(b" ").unwrap_or(value);
    std::str::from_utf8(value).ok()
}

/// Whether an event's `data` is a usage-only chunk: a JSON object with
/// `"choices": []` and a non-null `usage`.
fn is_usage_only_data(data: &str) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        choices: Option<EmptySeq>,
        usage: Option<IgnoredAny>,
    }
    // An empty `choices` is written `[`, JSON whitespace, `]`; data without such
    // a pair anywhere is not worth parsing.
    if !is_json_object(data.as_bytes()) || !has_empty_array(data.as_bytes()) {
        return false;
    }
    matches!(
        serde_json::from_str::<Chunk>(data),
        Ok(Chunk {
            choices: Some(EmptySeq(true)),
            usage: Some(_),
        })
    )
}

/// Whether `json` has a `[` followed by nothing but JSON whitespace and `]`.
fn has_empty_array(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(open) = memchr::memchr(b'[', rest) {
        rest = &rest[open + 1..];
        let next = rest
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if next == Some(&b']') {
            return true;
        }
    }
    false
}

/// Whether a sequence is empty. Every element is read (and must be valid JSON),
/// as for a `Vec<IgnoredAny>`, but none is kept.
struct EmptySeq(bool);

impl<'de> Deserialize<'de> for EmptySeq {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Elements;
        impl<'de> Visitor<'de> for Elements {
            type Value = EmptySeq;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EmptySeq, A::Error> {
                let mut empty = true;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    empty = false;
                }
                Ok(EmptySeq(empty))
            }
        }
        deserializer.deserialize_seq(Elements)
    }
}

#[cfg(test)]
mod tests;
