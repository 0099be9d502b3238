//! How the mock upstream answers one request: record it, apply the failure or
//! latency the test asked for, check the key, and route it to the wire format
//! of its endpoint (or a 404 or 400 in the provider's error shape), changed by
//! the fault the test set.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::Value;

use super::body::{MockBody, json, raw_json, sse, with_fault};
use super::formats::{self, Reply};
use super::state::{Behaviour, Failure, RecordedRequest, Shared, lock};

/// Answers `request`, with the behaviour in `shared` at the time it arrived.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if shared.recording.load(Ordering::Relaxed) {
        lock(&shared.requests).push(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
            version: parts.version,
            connection: parts
                .extensions
                .get::<super::state::ConnectionNumber>()
                .map_or(0, |n| n.0),
        });
    }
    let behaviour = shared.behaviour().clone();
    if let Some(Failure::Hang) = behaviour.failure {
        std::future::pending::<()>().await;
    }
    if !behaviour.latency.is_zero() {
        tokio::time::sleep(behaviour.latency).await;
    }
    if let Some(Failure::Status(status, body)) = behaviour.failure {
        return Ok(raw_json(status, body));
    }
    let response = route(&shared, &behaviour, &parts, &body);
    Ok(match &behaviour.fault {
        Some(fault) => with_fault(response, fault),
        None => response,
    })
}

/// Which error shape a route answers in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Provider {
    OpenAi,
    Anthropic,
}

fn route(
    shared: &Arc<Shared>,
    behaviour: &Behaviour,
    parts: &http::request::Parts,
    body: &[u8],
) -> Response<MockBody> {
    let path = parts.uri.path();
    let route = path
        .strip_prefix("/v1")
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(path);
    let provider = if route == "/messages" {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    };
    let authorized = match &behaviour.key {
        Some(key) => authorized(&parts.headers, provider, key),
        None => true,
    };
    if !authorized {
        return match provider {
            Provider::OpenAi => json(
                StatusCode::UNAUTHORIZED,
                &formats::openai_error(
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                ),
            ),
            Provider::Anthropic => json(
                StatusCode::UNAUTHORIZED,
                &formats::anthropic_error("authentication_error", "invalid x-api-key"),
            ),
        };
    }
    let ctx = Ctx {
        shared,
        behaviour,
        provider,
    };
    match (&parts.method, route) {
        (&Method::POST, "/chat/completions") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("chatcmpl-mock", model, formats::chat_prompt_words(body));
            match stream_options(body) {
                Some(include_usage) => {
                    ctx.sse(formats::chat_completion_stream(&reply, include_usage))
                }
                None => json(StatusCode::OK, &formats::chat_completion(&reply)),
            }
        }),
        (&Method::POST, "/completions") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("cmpl-mock", model, formats::completion_prompt_words(body));
            match stream_options(body) {
                Some(include_usage) => {
                    ctx.sse(formats::text_completion_stream(&reply, include_usage))
                }
                None => json(StatusCode::OK, &formats::text_completion(&reply)),
            }
        }),
        (&Method::POST, "/embeddings") => ctx.with_json(body, |ctx, body, model| {
            match formats::embeddings(body, model) {
                Ok(reply) => json(StatusCode::OK, &reply),
                Err(message) => ctx.bad_request(&message),
            }
        }),
        (&Method::POST, "/messages") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("msg_mock", model, formats::anthropic_prompt_words(body));
            match stream_options(body) {
                Some(_) => ctx.sse(formats::message_stream(&reply)),
                None => json(StatusCode::OK, &formats::message(&reply)),
            }
        }),
        (&Method::POST, "/responses") => ctx.with_json(body, |ctx, body, model| {
            let reply = ctx.reply("resp_mock", model, formats::responses_prompt_words(body));
            let message_id = format!("msg_mock{:08}", ctx.shared.next_id());
            match stream_options(body) {
                Some(_) => ctx.sse(formats::response_stream(&reply, &message_id)),
                None => json(StatusCode::OK, &formats::response(&reply, &message_id)),
            }
        }),
        (&Method::GET, "/models") => json(StatusCode::OK, &formats::models(now())),
        (method, _) => json(
            StatusCode::NOT_FOUND,
            &formats::openai_error(
                &format!("Unknown request URL: {method} {path}."),
                "invalid_request_error",
                Some("unknown_url"),
            ),
        ),
    }
}

fn authorized(headers: &HeaderMap, provider: Provider, key: &str) -> bool {
    match provider {
        Provider::OpenAi => headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == key),
        Provider::Anthropic => headers
            .get("x-api-key")
            .is_some_and(|v| v.as_bytes() == key.as_bytes()),
    }
}

/// `None` for a non-streaming request; `Some(include_usage)` for a streaming one.
fn stream_options(body: &Value) -> Option<bool> {
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    Some(
        body.pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
    )
}

/// What a route handler needs besides the request.
struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    behaviour: &'a Behaviour,
    provider: Provider,
}

impl Ctx<'_> {
    /// Parses `body` as a JSON object with a string `model` and hands both to
    /// `answer`; a 400 otherwise.
    fn with_json(
        &self,
        body: &[u8],
        answer: impl FnOnce(&Self, &Value, &str) -> Response<MockBody>,
    ) -> Response<MockBody> {
        let body: Value = match serde_json::from_slice(body) {
            Ok(body @ Value::Object(_)) => body,
            Ok(_) => return self.bad_request("the request body must be a JSON object"),
            Err(e) => {
                return self.bad_request(&format!(
                    "We could not parse the JSON body of your request: {e}"
                ));
            }
        };
        match body.get("model").and_then(Value::as_str) {
            Some(model) => answer(self, &body, model),
            None => self.bad_request("you must provide a model parameter"),
        }
    }

    fn bad_request(&self, message: &str) -> Response<MockBody> {
        let body = match self.provider {
            Provider::OpenAi => formats::openai_error(message, "invalid_request_error", None),
            Provider::Anthropic => formats::anthropic_error("invalid_request_error", message),
        };
        json(StatusCode::BAD_REQUEST, &body)
    }

    fn reply<'b>(&'b self, prefix: &str, model: &'b str, prompt_words: usize) -> Reply<'b> {
        Reply {
            id: format!("{prefix}{:08}", self.shared.next_id()),
            created: now(),
            model,
            text: &self.behaviour.reply,
            prompt_words,
            cached: self.behaviour.cached_tokens.min(prompt_words),
            reported: self.behaviour.reported_usage.as_ref(),
        }
    }

    /// A `text/event-stream` response sending each of `events` as its own frame,
    /// `chunk_delay` apart, counted as completed or cancelled.
    fn sse(&self, events: Vec<Bytes>) -> Response<MockBody> {
        sse(events, self.behaviour.chunk_delay, self.shared)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
