//! Token usage as the upstream reports it, read from a complete JSON body or from
//! an SSE stream fed frame by frame. Never a silent zero: a reader that saw no
//! usage says `Unknown`, and the caller decides whether to estimate.
//!
//! Input tokens are normalised to include cached ones (as OpenAI reports them):
//! for Anthropic, `input_tokens + cache_read_input_tokens +
//! cache_creation_input_tokens`; `cached_input_tokens` is the cache-read part.

use std::borrow::Cow;

use serde::de::{SeqAccess, Visitor};
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

#[derive(Debug, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
}

/// Every provider's usage fields in one struct; each shape fills some.
#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl RawUsage {
    fn into_usage(self, shape: ApiShape) -> Usage {
        let (input_tokens, cached_input_tokens) = match shape {
            ApiShape::AnthropicMessages => {
                let cached = self.cache_read_input_tokens.unwrap_or(0);
                let input = self.input_tokens.unwrap_or(0)
                    + cached
                    + self.cache_creation_input_tokens.unwrap_or(0);
                (input, cached)
            }
            _ => {
                let details = self.prompt_tokens_details.or(self.input_tokens_details);
                (
                    self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
                    details.and_then(|d| d.cached_tokens).unwrap_or(0),
                )
            }
        };
        Usage {
            input_tokens,
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached_input_tokens,
            source: UsageSource::Reported,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct WithUsage {
    usage: Option<RawUsage>,
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
    usage: Option<RawUsage>,
    /// Anthropic `message_start`.
    message: Option<WithUsage>,
    /// Responses API `response.completed`.
    response: Option<WithUsage>,
    /// OpenAI chunks.
    choices: Option<AnyContent>,
}

/// Whether any of a chunk's `choices` carries content. Every choice is read (and
/// must be valid) as for a `Vec<Choice>`, but none is kept.
#[derive(Debug, Default)]
struct AnyContent(bool);

impl<'de> Deserialize<'de> for AnyContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Choices;
        impl<'de> Visitor<'de> for Choices {
            type Value = AnyContent;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyContent, A::Error> {
                let mut any = false;
                while let Some(choice) = seq.next_element::<Choice<'de>>()? {
                    any |= choice.has_content();
                }
                Ok(AnyContent(any))
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
}

impl StreamState {
    fn on_event(&mut self, event: &SseEvent) {
        if event.data == "[DONE]" {
            return;
        }
        let Ok(parsed) = serde_json::from_str::<StreamEvent>(&event.data) else {
            return;
        };
        let kind = parsed.kind.as_deref().unwrap_or(event.event.as_str());
        match self.shape {
            ApiShape::OpenAiCompletions | ApiShape::OpenAiEmbeddings => {
                if parsed.choices.is_some_and(|c| c.0) {
                    self.content_events += 1;
                }
                if let Some(raw) = parsed.usage {
                    self.usage = raw.into_usage(self.shape);
                }
            }
            ApiShape::OpenAiResponses => match kind {
                "response.output_text.delta" => self.content_events += 1,
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
                        self.anthropic_started = true;
                    }
                }
                "content_block_delta" => self.content_events += 1,
                "message_delta" => {
                    if let Some(output) = parsed.usage.and_then(|u| u.output_tokens) {
                        // Cumulative: the last one is the total.
                        self.usage.output_tokens = output;
                        if self.anthropic_started {
                            self.usage.source = UsageSource::Reported;
                        }
                    }
                }
                _ => {}
            },
        }
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
}
