//! The mock upstream's wire formats: OpenAI and Anthropic JSON bodies, SSE events,
//! error shapes, token (word) counting and deterministic embeddings.
//!
//! Everything here is a pure function of its inputs; `routes` decides which one
//! answers a request.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

/// The model ids `GET /v1/models` lists.
const MODELS: &[(&str, &str)] = &[
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1-mini", "openai"),
    ("text-embedding-3-small", "openai"),
    ("text-embedding-3-large", "openai"),
];

/// How many floats an embedding has when the request names no `dimensions`.
const DEFAULT_DIMENSIONS: usize = 8;

/// What every generated reply needs: its id, creation time, model and text, and
/// the prompt's size in words.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) text: &'a str,
    pub(crate) prompt_words: usize,
    /// How many prompt tokens to report as read from the provider's cache (at
    /// most `prompt_words`).
    pub(crate) cached: usize,
    /// Prompt and completion counts to report instead of the real ones.
    pub(crate) reported: Option<&'a (Value, Value)>,
}

impl Reply<'_> {
    fn completion_words(&self) -> usize {
        words(self.text)
    }

    /// The reply split the way the streams send it: each word followed by a
    /// space, except the last.
    fn pieces(&self) -> Vec<String> {
        let words: Vec<&str> = self.text.split_whitespace().collect();
        let last = words.len().saturating_sub(1);
        words
            .iter()
            .enumerate()
            .map(|(i, word)| {
                if i == last {
                    (*word).to_owned()
                } else {
                    format!("{word} ")
                }
            })
            .collect()
    }

    /// The output count to report.
    fn output_tokens(&self) -> Value {
        match self.reported {
            Some((_, completion)) => completion.clone(),
            None => json!(self.completion_words()),
        }
    }

    fn openai_usage(&self) -> Value {
        if let Some((prompt, completion)) = self.reported {
            return json!({"prompt_tokens": prompt, "completion_tokens": completion});
        }
        let completion = self.completion_words();
        let mut usage = json!({
            "prompt_tokens": self.prompt_words,
            "completion_tokens": completion,
            "total_tokens": self.prompt_words + completion,
        });
        if self.cached > 0 {
            usage["prompt_tokens_details"] = json!({"cached_tokens": self.cached});
        }
        usage
    }

    /// Anthropic's input usage: `input_tokens` excludes cache reads, which come
    /// as `cache_read_input_tokens`.
    fn anthropic_input(&self, output_tokens: Value) -> Value {
        if let Some((prompt, _)) = self.reported {
            return json!({"input_tokens": prompt, "output_tokens": output_tokens});
        }
        let cached = self.cached.min(self.prompt_words);
        let mut usage = json!({
            "input_tokens": self.prompt_words - cached,
            "output_tokens": output_tokens,
        });
        if cached > 0 {
            usage["cache_read_input_tokens"] = json!(cached);
        }
        usage
    }
}

/// The number of whitespace-separated words in `text`.
pub(crate) fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Words in a content value: a string, or an array of strings or parts with a
/// `text` field (OpenAI content parts, Anthropic content blocks).
fn content_words(content: &Value) -> usize {
    match content {
        Value::String(text) => words(text),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part {
                Value::String(text) => words(text),
                Value::Object(part) => part.get("text").and_then(Value::as_str).map_or(0, words),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Words across every message's `content` in a request's `messages` array.
fn messages_words(body: &Value) -> usize {
    body.get("messages")
        .and_then(Value::as_array)
        .map_or(0, |messages| {
            messages
                .iter()
                .map(|m| m.get("content").map_or(0, content_words))
                .sum()
        })
}

/// Prompt words of a chat completion request: all message contents.
pub(crate) fn chat_prompt_words(body: &Value) -> usize {
    messages_words(body)
}

/// Prompt words of a legacy completion request: `prompt`, a string or an array
/// of strings.
pub(crate) fn completion_prompt_words(body: &Value) -> usize {
    body.get("prompt").map_or(0, content_words)
}

/// Prompt words of an Anthropic messages request: all message contents plus
/// `system`.
pub(crate) fn anthropic_prompt_words(body: &Value) -> usize {
    messages_words(body) + body.get("system").map_or(0, content_words)
}

/// Prompt words of a Responses API request: `input` (a string or a list of
/// items with `content`) plus `instructions`.
pub(crate) fn responses_prompt_words(body: &Value) -> usize {
    let input = match body.get("input") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => words(text),
                item => item.get("content").map_or(0, content_words),
            })
            .sum(),
        Some(input) => content_words(input),
        None => 0,
    };
    input + body.get("instructions").map_or(0, content_words)
}

/// A non-streaming `chat.completion`.
pub(crate) fn chat_completion(reply: &Reply<'_>) -> Value {
    json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.text, "refusal": null, "annotations": []},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": reply.openai_usage(),
        "system_fingerprint": null,
    })
}

/// The SSE events of a streamed chat completion, one frame each, ending with
/// `data: [DONE]`.
pub(crate) fn chat_completion_stream(reply: &Reply<'_>, include_usage: bool) -> Vec<Bytes> {
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |delta: Value, finish_reason: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);
    let mut events = vec![chunk(choice(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ))];
    for piece in reply.pieces() {
        events.push(chunk(choice(json!({"content": piece}), Value::Null)));
    }
    events.push(chunk(choice(json!({}), json!("stop"))));
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = reply.openai_usage();
        events.push(last);
    }
    openai_sse(events)
}

/// A non-streaming legacy `text_completion`.
pub(crate) fn text_completion(reply: &Reply<'_>) -> Value {
    json!({
        "id": reply.id,
        "object": "text_completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{"text": reply.text, "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": reply.openai_usage(),
    })
}

/// The SSE events of a streamed legacy completion, ending with `data: [DONE]`.
pub(crate) fn text_completion_stream(reply: &Reply<'_>, include_usage: bool) -> Vec<Bytes> {
    let chunk = |text: &str, finish_reason: Value| {
        let mut chunk = json!({
            "id": reply.id,
            "object": "text_completion",
            "created": reply.created,
            "model": reply.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut events: Vec<Value> = reply
        .pieces()
        .iter()
        .map(|piece| chunk(piece, Value::Null))
        .collect();
    events.push(chunk("", json!("stop")));
    if include_usage {
        let mut last = chunk("", Value::Null);
        last["choices"] = json!([]);
        last["usage"] = reply.openai_usage();
        events.push(last);
    }
    openai_sse(events)
}

fn openai_sse(events: Vec<Value>) -> Vec<Bytes> {
    events
        .into_iter()
        .map(|event| Bytes::from(format!("data: {event}\n\n")))
        .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
        .collect()
}

/// An embeddings response for the request's `input`: one deterministic vector per
/// input, `dimensions` floats long (8 by default), as float lists or, when
/// `encoding_format` is `"base64"`, as base64 of little-endian `f32`s. `Err` holds
/// the message for a 400 when the input has no usable shape.
pub(crate) fn embeddings(body: &Value, model: &str) -> Result<Value, String> {
    let inputs = embedding_inputs(body.get("input"))?;
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => value
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=65_536).contains(d))
            .ok_or_else(|| format!("invalid dimensions: {value}"))?,
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(other) => return Err(format!("invalid encoding_format: {other}")),
    };
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, (seed, count))| {
            tokens += count;
            let vector = embedding_vector(seed, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// Each input as (seed bytes for its vector, its token count).
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<(Vec<u8>, usize)>, String> {
    let one = |value: &Value| -> Option<(Vec<u8>, usize)> {
        match value {
            Value::String(text) => Some((text.as_bytes().to_vec(), words(text))),
            Value::Array(tokens) if tokens.iter().all(Value::is_u64) => Some((
                Value::Array(tokens.clone()).to_string().into_bytes(),
                tokens.len(),
            )),
            _ => None,
        }
    };
    let invalid = || "input must be a string, an array of strings, or token arrays".to_owned();
    match input {
        Some(value @ Value::String(_)) => one(value).map(|i| vec![i]).ok_or_else(invalid),
        Some(Value::Array(items)) if items.is_empty() => Err("input must not be empty".to_owned()),
        Some(value @ Value::Array(items)) if items.iter().all(Value::is_u64) => {
            one(value).map(|i| vec![i]).ok_or_else(invalid)
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| one(item).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

/// A deterministic vector in [-1, 1) derived from `seed`.
fn embedding_vector(seed: &[u8], dimensions: usize) -> Vec<f32> {
    // FNV-1a over the seed, then SplitMix64 per component.
    let mut state = seed.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // The top 24 bits make an exactly representable f32 in [0, 1).
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            unit * 2.0 - 1.0
        })
        .collect()
}

/// A non-streaming Anthropic `message`.
pub(crate) fn message(reply: &Reply<'_>) -> Value {
    json!({
        "id": reply.id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": reply.anthropic_input(reply.output_tokens()),
    })
}

/// The SSE events of a streamed Anthropic message, one frame each.
pub(crate) fn message_stream(reply: &Reply<'_>) -> Vec<Bytes> {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut events = vec![
        event(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": reply.id,
                    "type": "message",
                    "role": "assistant",
                    "model": reply.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": reply.anthropic_input(json!(1)),
                },
            }),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for piece in reply.pieces() {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": reply.output_tokens()},
        }),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

/// A minimal completed Responses API `response`.
pub(crate) fn response(reply: &Reply<'_>, message_id: &str) -> Value {
    let output = reply.completion_words();
    json!({
        "id": reply.id,
        "object": "response",
        "created_at": reply.created,
        "status": "completed",
        "error": null,
        "incomplete_details": null,
        "model": reply.model,
        "output": [{
            "type": "message",
            "id": message_id,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
        }],
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": match reply.reported {
            Some((prompt, completion)) => json!({"input_tokens": prompt, "output_tokens": completion}),
            None => json!({
                "input_tokens": reply.prompt_words,
                "input_tokens_details": {"cached_tokens": reply.cached},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": reply.prompt_words + output,
            }),
        },
    })
}

/// The SSE events of a streamed Responses API reply: `response.created`, one
/// `response.output_text.delta` per word, then `response.completed` carrying the
/// whole response with its usage.
pub(crate) fn response_stream(reply: &Reply<'_>, message_id: &str) -> Vec<Bytes> {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut created = response(reply, message_id);
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let mut events = vec![event(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0, "response": created}),
    )];
    for (i, piece) in reply.pieces().into_iter().enumerate() {
        events.push(event(
            "response.output_text.delta",
            json!({
                "type": "response.output_text.delta",
                "sequence_number": i + 1,
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
            }),
        ));
    }
    events.push(event(
        "response.completed",
        json!({
            "type": "response.completed",
            "sequence_number": events.len(),
            "response": response(reply, message_id),
        }),
    ));
    events
}

/// The `GET /v1/models` list.
pub(crate) fn models(created: u64) -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": created, "owned_by": owner}))
        .collect();
    json!({"object": "list", "data": data})
}

/// An OpenAI error body.
pub(crate) fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// An Anthropic error body.
pub(crate) fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Reply<'_> {
        Reply {
            id: "x".to_owned(),
            created: 1,
            model: "m",
            text,
            prompt_words: 3,
            cached: 0,
            reported: None,
        }
    }

    #[test]
    fn pieces_rebuild_the_reply() {
        let reply = reply("one two  three");
        assert_eq!(reply.pieces(), ["one ", "two ", "three"]);
        assert!(self::reply("").pieces().is_empty());
    }

    #[test]
    fn counts_words_in_every_content_shape() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there you"}, {"type": "image_url"}]},
        ]});
        assert_eq!(chat_prompt_words(&body), 5);
        assert_eq!(completion_prompt_words(&json!({"prompt": ["a b", "c"]})), 3);
        assert_eq!(
            anthropic_prompt_words(
                &json!({"system": "s t", "messages": [{"role": "user", "content": "u"}]})
            ),
            3
        );
        assert_eq!(
            responses_prompt_words(
                &json!({"instructions": "i", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a b"}]}]})
            ),
            3
        );
        assert_eq!(responses_prompt_words(&json!({"input": "a b c d"})), 4);
    }

    #[test]
    fn embeddings_are_deterministic_and_shaped() {
        let body = json!({"input": ["a b", "c"], "dimensions": 4});
        let first = embeddings(&body, "e").unwrap();
        assert_eq!(first, embeddings(&body, "e").unwrap());
        assert_eq!(first["data"].as_array().unwrap().len(), 2);
        assert_eq!(first["data"][1]["embedding"].as_array().unwrap().len(), 4);
        assert_ne!(first["data"][0]["embedding"], first["data"][1]["embedding"]);
        assert_eq!(first["usage"]["prompt_tokens"], 3);

        let tokens = embeddings(&json!({"input": [1, 2, 3]}), "e").unwrap();
        assert_eq!(tokens["data"].as_array().unwrap().len(), 1);
        assert_eq!(tokens["usage"]["total_tokens"], 3);
        let token_lists = embeddings(&json!({"input": [[1, 2], [3]]}), "e").unwrap();
        assert_eq!(token_lists["data"].as_array().unwrap().len(), 2);

        assert!(embeddings(&json!({"input": []}), "e").is_err());
        assert!(embeddings(&json!({"input": [true]}), "e").is_err());
        assert!(embeddings(&json!({}), "e").is_err());
    }

    #[test]
    fn base64_embeddings_decode_to_the_float_ones() {
        let floats = embeddings(&json!({"input": "hi"}), "e").unwrap();
        let encoded =
            embeddings(&json!({"input": "hi", "encoding_format": "base64"}), "e").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<Value> = bytes
            .chunks_exact(4)
            .map(|c| json!(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        assert_eq!(Value::Array(decoded), floats["data"][0]["embedding"]);
    }

    #[test]
    fn chat_stream_carries_usage_only_when_asked() {
        let plain = chat_completion_stream(&reply("a b"), false);
        assert_eq!(plain.len(), 1 + 2 + 1 + 1);
        assert!(
            plain
                .iter()
                .all(|f| !String::from_utf8_lossy(f).contains("usage"))
        );
        let with_usage = chat_completion_stream(&reply("a b"), true);
        assert_eq!(with_usage.len(), 1 + 2 + 1 + 1 + 1);
        let usage: Value = serde_json::from_slice(&with_usage[4][b"data: ".len()..]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
    }
}
