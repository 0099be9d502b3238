//! Token usage as the upstream reports it, read from a complete JSON body or from
//! an SSE stream fed frame by frame. Never a silent zero: a reader that saw no
//! usage says `Unknown`, and the caller decides whether to estimate.
//!
//! Input tokens are normalised to include cached ones (as OpenAI reports them):
//! for Anthropic, `input_tokens + cache_read_input_tokens +
//! cache_creation_input_tokens`; `cached_input_tokens` is the cache-read part.
//!
//! A count is trusted only as far as it is a non-negative integer of at most
//! [`MAX_REPORTED_TOKENS`]: anything else (a negative number, a fraction, a
//! string, a number past the bound or past 64 bits) is clamped into range and the
//! usage's source is [`UsageSource::Capped`], so a hostile or broken upstream
//! cannot make a count, or its cost, run away.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use keygate_types::UsageSource;

use crate::sse::{SseEvent, SseParser};

/// Tokens used by one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// The part of the input read from the provider's cache.
    pub cached_input_tokens: u64,
    /// Where the figures came from.
    pub source: UsageSource,
}

/// The response shapes usage is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiShape {
    /// OpenAI chat completions and legacy completions.
    OpenAiCompletions,
    /// OpenAI embeddings (input only).
    OpenAiEmbeddings,
    /// OpenAI Responses API.
    OpenAiResponses,
    /// Anthropic Messages API.
    AnthropicMessages,
}

/// The largest token count believed from an upstream, per count: ten billion
/// tokens, far past any real request (the largest context windows hold a few
/// million). A count past it is clamped to it and the usage is
/// [`UsageSource::Capped`].
pub const MAX_REPORTED_TOKENS: u64 = 10_000_000_000;

/// One token count as the upstream wrote it, clamped into
/// `0..=MAX_REPORTED_TOKENS`. `clamped` says the upstream's value was not a
/// non-negative integer in that range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    tokens: u64,
    clamped: bool,
}

impl Count {
    fn new(tokens: u64) -> Self {
        if tokens > MAX_REPORTED_TOKENS {
            return Count {
                tokens: MAX_REPORTED_TOKENS,
                clamped: true,
            };
        }
        Count {
            tokens,
            clamped: false,
        }
    }

    fn clamped(tokens: u64) -> Self {
        Count {
            tokens: tokens.min(MAX_REPORTED_TOKENS),
            clamped: true,
        }
    }

    /// The sum, clamped like one count.
    fn plus(self, other: Count) -> Count {
        let sum = Count::new(self.tokens.saturating_add(other.tokens));
        Count {
            tokens: sum.tokens,
            clamped: sum.clamped || self.clamped || other.clamped,
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    /// Never fails on a well-formed JSON value: a number is rounded up and
    /// clamped into range, anything else counts as zero; both are flagged.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = Count;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token count")
            }

            fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
                Ok(Count::new(v))
            }

            fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
                Ok(match u64::try_from(v) {
                    Ok(v) => Count::new(v),
                    Err(_) => Count::clamped(0),
                })
            }

            fn visit_u128<E>(self, _: u128) -> Result<Count, E> {
                Ok(Count::clamped(u64::MAX))
            }

            fn visit_i128<E>(self, v: i128) -> Result<Count, E> {
                Ok(Count::clamped(if v > 0 { u64::MAX } else { 0 }))
            }

            fn visit_f64<E>(self, v: f64) -> Result<Count, E> {
                if v.is_nan() || v <= 0.0 {
                    return Ok(Count::clamped(0));
                }
                // A fraction is rounded up; anything at or past the bound is the
                // bound (the bound is exact in a double).
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "positive and at most MAX_REPORTED_TOKENS, which a double holds exactly"
                )]
                let tokens = if v >= MAX_REPORTED_TOKENS as f64 {
                    MAX_REPORTED_TOKENS
                } else {
                    v.ceil() as u64
                };
                Ok(Count::clamped(tokens))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count::clamped(0))
            }

            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count::clamped(0))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count::clamped(0))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count::clamped(0))
            }
        }
        deserializer.deserialize_any(CountVisitor)
    }
}

/// A `*_details` object; one of the wrong type counts as absent.
#[derive(Debug, Default)]
struct Details {
    cached_tokens: Option<Count>,
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The one member read; the rest are skipped by name.
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Member {
            CachedTokens,
            #[serde(other)]
            Other,
        }
        /// An object read in place (no buffered copy, as an untagged enum
        /// would make); anything else is absent, as is an object naming
        /// `cached_tokens` twice.
        struct DetailsVisitor;
        impl<'de> Visitor<'de> for DetailsVisitor {
            type Value = Details;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a usage details object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
                let mut cached_tokens = None;
                let (mut seen, mut twice) = (false, false);
                while let Some(member) = map.next_key::<Member>()? {
                    match member {
                        Member::CachedTokens => {
                            twice |= std::mem::replace(&mut seen, true);
                            // `null` is absent.
                            cached_tokens = map.next_value::<Option<Count>>()?;
                        }
                        Member::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(if twice {
                    Details::default()
                } else {
                    Details { cached_tokens }
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Details, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Details::default())
            }

            fn visit_bool<E>(self, _: bool) -> Result<Details, E> {
                Ok(Details::default())
            }

            fn visit_i64<E>(self, _: i64) -> Result<Details, E> {
                Ok(Details::default())
            }

            fn visit_u64<E>(self, _: u64) -> Result<Details, E> {
                Ok(Details::default())
            }

            fn visit_f64<E>(self, _: f64) -> Result<Details, E> {
                Ok(Details::default())
            }

            fn visit_str<E>(self, _: &str) -> Result<Details, E> {
                Ok(Details::default())
            }

            fn visit_unit<E>(self) -> Result<Details, E> {
                Ok(Details::default())
            }
        }
        deserializer.deserialize_any(DetailsVisitor)
    }
}

/// Every provider's usage fields in one struct; each shape fills some.
#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<Count>,
    completion_tokens: Option<Count>,
    input_tokens: Option<Count>,
    output_tokens: Option<Count>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<Count>,
    cache_creation_input_tokens: Option<Count>,
}

impl RawUsage {
    fn into_usage(self, shape: ApiShape) -> Usage {
        let (input, cached) = match shape {
            ApiShape::AnthropicMessages => {
                let cached = self.cache_read_input_tokens.unwrap_or_default();
                let input = self
                    .input_tokens
                    .unwrap_or_default()
                    .plus(cached)
                    .plus(self.cache_creation_input_tokens.unwrap_or_default());
                (input, cached)
            }
            _ => {
                let details = self.prompt_tokens_details.or(self.input_tokens_details);
                (
                    self.prompt_tokens.or(self.input_tokens).unwrap_or_default(),
                    details.and_then(|d| d.cached_tokens).unwrap_or_default(),
                )
            }
        };
        let output = self
            .completion_tokens
            .or(self.output_tokens)
            .unwrap_or_default();
        let clamped = input.clamped || cached.clamped || output.clamped;
        Usage {
            input_tokens: input.tokens,
            output_tokens: output.tokens,
            cached_input_tokens: cached.tokens,
            source: if clamped {
                UsageSource::Capped
            } else {
                UsageSource::Reported
            },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct WithUsage {
    usage: Option<RawUsage>,
}

/// Deserialises a field that is present, `null` included, as `Some`.
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Usage from a complete JSON response body.
pub fn read_json(shape: ApiShape, body: &[u8]) -> Usage {
    match serde_json::from_slice::<WithUsage>(body) {
        Ok(WithUsage { usage: Some(raw) }) => raw.into_usage(shape),
        _ => Usage::default(),
    }
}

/// The parts of a streamed event usage is read from.
#[derive(Debug, Default, Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    /// Absent: `None`; `null`: `Some(None)`.
    #[serde(default, deserialize_with = "present")]
    usage: Option<Option<RawUsage>>,
    /// Anthropic `message_start`.
    message: Option<WithUsage>,
    /// Responses API `response.completed`.
    response: Option<WithUsage>,
    /// OpenAI chunks.
    choices: Option<AnyContent>,
}

/// Whether any of a chunk's `choices` carries content, and whether there are
/// none. Every choice is read (and must be valid) as for a `Vec<Choice>`, but
/// none is kept.
#[derive(Debug, Default)]
struct AnyContent {
    content: bool,
    empty: bool,
}

impl<'de> Deserialize<'de> for AnyContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Choices;
        impl<'de> Visitor<'de> for Choices {
            type Value = AnyContent;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyContent, A::Error> {
                let mut any = AnyContent {
                    content: false,
                    empty: true,
                };
                while let Some(choice) = seq.next_element::<Choice<'de>>()? {
                    any.content |= choice.has_content();
                    any.empty = false;
                }
                Ok(any)
            }
        }
        deserializer.deserialize_seq(Choices)
    }
}

#[derive(Debug, Default, Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    /// Legacy completions.
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
}

impl Choice<'_> {
    fn has_content(&self) -> bool {
        let delta = self.delta.as_ref().and_then(|d| d.content.as_deref());
        delta
            .or(self.text.as_deref())
            .is_some_and(|t| !t.is_empty())
    }
}

/// Reads usage from an SSE stream fed frame by frame.
#[derive(Debug)]
pub struct StreamUsage {
    parser: SseParser,
    state: StreamState,
}

/// What a [`StreamUsage`] has read so far.
#[derive(Debug)]
struct StreamState {
    shape: ApiShape,
    usage: Usage,
    /// Anthropic: `message_start` seen (input known); `message_delta` completes it.
    anthropic_started: bool,
    /// Anthropic: `message_start`'s counts were clamped.
    anthropic_input_clamped: bool,
    content_events: u64,
}

impl StreamUsage {
    /// A reader for `shape`.
    pub fn new(shape: ApiShape) -> Self {
        Self {
            parser: SseParser::new(),
            state: StreamState {
                shape,
                usage: Usage::default(),
                anthropic_started: false,
                anthropic_input_clamped: false,
                content_events: 0,
            },
        }
    }

    /// Feeds the next piece of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        let state = &mut self.state;
        self.parser
            .push_borrowed(bytes, |event| state.on_event(event));
    }

    /// Events that carried content (deltas), for estimating a cut-short stream.
    pub fn content_events(&self) -> u64 {
        self.state.content_events
    }

    /// The usage seen so far; `Unknown` unless the stream reported its final usage.
    pub fn usage(&self) -> Usage {
        self.state.usage
    }

    /// Reads one whole event, its `event` field and its `data`, without the
    /// parser: as if the event's bytes had been pushed (between events).
    pub(crate) fn read_event(&mut self, event: &str, data: &str) -> Option<ChunkKind> {
        self.state.read(event, data)
    }
}

/// What [`StreamUsage::read_event`] saw of an event's `choices` and `usage`,
/// for the usage-chunk filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChunkKind {
    /// `"choices": []` and a `usage` that is not `null`.
    pub(crate) usage_only: bool,
    /// `"usage": null`.
    pub(crate) null_usage: bool,
}

impl StreamState {
    fn on_event(&mut self, event: &SseEvent) {
        self.read(&event.event, &event.data);
    }

    /// Reads one event; `None` when its data is not JSON it reads (`[DONE]`
    /// is `Some`: nothing).
    fn read(&mut self, event: &str, data: &str) -> Option<ChunkKind> {
        if data == "[DONE]" {
            return Some(ChunkKind::default());
        }
        let parsed = serde_json::from_str::<StreamEvent>(data).ok()?;
        let kind = parsed.kind.as_deref().unwrap_or(event);
        let chunk = ChunkKind {
            usage_only: parsed.choices.as_ref().is_some_and(|c| c.empty)
                && matches!(parsed.usage, Some(Some(_))),
            null_usage: matches!(parsed.usage, Some(None)),
        };
        let usage = parsed.usage.flatten();
        match self.shape {
            ApiShape::OpenAiCompletions | ApiShape::OpenAiEmbeddings => {
                if parsed.choices.is_some_and(|c| c.content) {
                    self.content_events = self.content_events.saturating_add(1);
                }
                if let Some(raw) = usage {
                    self.usage = raw.into_usage(self.shape);
                }
            }
            ApiShape::OpenAiResponses => match kind {
                "response.output_text.delta" => {
                    self.content_events = self.content_events.saturating_add(1)
                }
                "response.completed" => {
                    if let Some(raw) = parsed.response.and_then(|r| r.usage) {
                        self.usage = raw.into_usage(self.shape);
                    }
                }
                _ => {}
            },
            ApiShape::AnthropicMessages => match kind {
                "message_start" => {
                    if let Some(raw) = parsed.message.and_then(|m| m.usage) {
                        let start = raw.into_usage(self.shape);
                        self.usage.input_tokens = start.input_tokens;
                        self.usage.cached_input_tokens = start.cached_input_tokens;
                        self.anthropic_input_clamped = start.source == UsageSource::Capped;
                        self.anthropic_started = true;
                    }
                }
                "content_block_delta" => {
                    self.content_events = self.content_events.saturating_add(1)
                }
                "message_delta" => {
                    if let Some(output) = usage.and_then(|u| u.output_tokens) {
                        // Cumulative: the last one is the total.
                        self.usage.output_tokens = output.tokens;
                        if self.anthropic_started {
                            self.usage.source = if output.clamped || self.anthropic_input_clamped {
                                UsageSource::Capped
                            } else {
                                UsageSource::Reported
                            };
                        }
                    }
                }
                _ => {}
            },
        }
        Some(chunk)
    }
}

/// Reads usage from a complete JSON body fed frame by frame, holding at most
/// [`MAX_JSON_BODY_BYTES`] of it. A larger body (a big embeddings batch) keeps
/// only its last [`JSON_TAIL_BYTES`], where OpenAI and Anthropic put `usage`, and
/// the last `"usage"` object found there is read.
#[derive(Debug)]
pub struct JsonUsage {
    shape: ApiShape,
    held: Vec<u8>,
    /// The body outgrew `MAX_JSON_BODY_BYTES`: `held` is only its tail.
    truncated: bool,
}

/// Largest JSON response body held whole to read its usage.
pub const MAX_JSON_BODY_BYTES: usize = 1 << 20;

/// How much of the end of a larger body is kept.
pub const JSON_TAIL_BYTES: usize = 64 * 1024;

impl JsonUsage {
    /// A reader for `shape`.
    pub fn new(shape: ApiShape) -> Self {
        Self {
            shape,
            held: Vec::new(),
            truncated: false,
        }
    }

    /// Feeds the next piece of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        if self.held.len() > MAX_JSON_BODY_BYTES {
            let cut = self.held.len() - JSON_TAIL_BYTES;
            self.held.drain(..cut);
            self.truncated = true;
        }
    }

    /// The usage in the body; `Unknown` when it has none.
    pub fn usage(&self) -> Usage {
        if !self.truncated {
            return read_json(self.shape, &self.held);
        }
        let needle = b"\"usage\"";
        let Some(at) = self.held.windows(needle.len()).rposition(|w| w == needle) else {
            return Usage::default();
        };
        let rest = &self.held[at + needle.len()..];
        let Some(open) = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b':'))
        else {
            return Usage::default();
        };
        let mut values =
            serde_json::Deserializer::from_slice(&rest[open..]).into_iter::<RawUsage>();
        match values.next() {
            Some(Ok(raw)) => raw.into_usage(self.shape),
            _ => Usage::default(),
        }
    }
}

#[cfg(test)]
mod json_usage_tests {
    use super::*;

    #[test]
    fn a_large_body_keeps_its_tail_usage() {
        let mut reader = JsonUsage::new(ApiShape::OpenAiEmbeddings);
        reader.push(br#"{"object":"list","data":["#);
        let item = br#"{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3,0.4]},"#;
        for _ in 0..(2 * MAX_JSON_BODY_BYTES / item.len()) {
            reader.push(item);
        }
        reader.push(br#"{"index":1}],"usage":{"prompt_tokens":77,"total_tokens":77}}"#);
        let usage = reader.usage();
        assert_eq!(usage.input_tokens, 77);
        assert_eq!(usage.source, UsageSource::Reported);
        assert!(reader.held.len() <= MAX_JSON_BODY_BYTES);
    }

    #[test]
    fn a_small_body_is_read_whole_and_no_usage_is_unknown() {
        let mut reader = JsonUsage::new(ApiShape::OpenAiCompletions);
        reader.push(br#"{"id":"x","usage":{"prompt_tokens":3,"#);
        reader.push(br#""completion_tokens":4}}"#);
        assert_eq!(reader.usage().output_tokens, 4);
        let mut reader = JsonUsage::new(ApiShape::OpenAiCompletions);
        reader.push(br#"{"id":"x"}"#);
        assert_eq!(reader.usage().source, UsageSource::Unknown);
    }

    #[test]
    fn details_of_the_wrong_kind_count_as_absent_and_the_usage_stands() {
        let read = |details: &str| {
            let body = format!(
                r#"{{"usage":{{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{details}}}}}"#
            );
            read_json(ApiShape::OpenAiCompletions, body.as_bytes())
        };
        let full = read(r#"{"audio_tokens":0,"cached_tokens":4,"x":{"y":[1,{"z":2}]}}"#);
        assert_eq!((full.input_tokens, full.cached_input_tokens), (10, 4));
        assert_eq!(full.source, UsageSource::Reported);
        for absent in [
            r#"{}"#,
            r#"{"cached_tokens":4,"cached_tokens":5}"#,
            r#"{"cached_tokens":null}"#,
            r#"[4]"#,
            r#""4""#,
            r#"4"#,
            r#"true"#,
            r#"null"#,
        ] {
            let usage = read(absent);
            assert_eq!(usage.input_tokens, 10, "{absent}");
            assert_eq!(usage.output_tokens, 2, "{absent}");
            assert_eq!(usage.cached_input_tokens, 0, "{absent}");
            assert_eq!(usage.source, UsageSource::Reported, "{absent}");
        }
    }
}
