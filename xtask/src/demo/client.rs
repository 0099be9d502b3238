//! The demo's HTTP client: building requests with a key and a JSON body, and
//! reading whole JSON responses.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::scenario::MODEL;

/// A plain-HTTP client that keeps its connections alive.
pub(super) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(super) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A one-message chat completion request for [`MODEL`].
pub(super) fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something about a fox."}],
    })
}

/// A request to `url`, with `Authorization: Bearer KEY` when there is a key and
/// a JSON body when there is one.
pub(super) fn build(
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    let body = match body {
        Some(body) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    Ok(builder.body(Full::new(body))?)
}

/// Sends `request` and reads the whole response as JSON (`Null` if it is not).
pub(super) async fn call(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Value)> {
    let uri = request.uri().clone();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("request to {uri} failed"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the response from {uri} failed"))?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The `error.code` of an OpenAI-shaped error body, or `(none)`.
pub(super) fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(none)")
}
