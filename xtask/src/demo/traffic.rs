//! The demo's requests through the gateway with a valid key and without one: a
//! chat completion, a stream read chunk by chunk, the model list and the
//! refusals.

use std::io::Write as _;
use std::time::Instant;

use anyhow::{Context as _, Result};
use http::{Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;

use super::client::{HttpClient, build, call, chat_body, error_code};
use super::progress::Demo;
use super::scenario::{MODEL, REPLY};

pub(super) async fn chat(
    demo: &mut Demo,
    client: &HttpClient,
    base: &str,
    key: &str,
) -> Result<()> {
    demo.step("A chat completion through the gateway");
    println!("   POST {base}/v1/chat/completions  (model {MODEL}, Authorization: Bearer <key>)");
    let request = build(
        Method::POST,
        &format!("{base}/v1/chat/completions"),
        Some(key),
        Some(&chat_body(false)),
    )?;
    let (status, body) = call(client, request).await?;
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    println!("   {status}  assistant: {content:?}");
    if let Some(usage) = body.get("usage") {
        println!(
            "   usage: {} prompt + {} completion tokens",
            usage["prompt_tokens"], usage["completion_tokens"]
        );
    }
    demo.check(status == StatusCode::OK, || {
        format!("chat completion: expected 200, got {status}: {body}")
    });
    demo.check(content == REPLY, || {
        format!("chat completion: expected {REPLY:?}, got {content:?}")
    });
    Ok(())
}

pub(super) async fn stream(
    demo: &mut Demo,
    client: &HttpClient,
    base: &str,
    key: &str,
) -> Result<()> {
    demo.step("A streamed chat completion (\"stream\": true), chunks as they arrive");
    let request = build(
        Method::POST,
        &format!("{base}/v1/chat/completions"),
        Some(key),
        Some(&chat_body(true)),
    )?;
    let started = Instant::now();
    let response = client
        .request(request)
        .await
        .context("streamed request failed")?;
    let status = response.status();
    println!(
        "   {status} after {} ms, then:",
        started.elapsed().as_millis()
    );
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut text = String::new();
    let mut done = false;
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the stream broke off")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    println!("   +{:>4} ms  [DONE]", started.elapsed().as_millis());
                    continue;
                }
                let chunk: Value = serde_json::from_str(data)
                    .with_context(|| format!("not a JSON chunk: {data}"))?;
                let piece = chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default();
                if !piece.is_empty() {
                    text.push_str(piece);
                    println!("   +{:>4} ms  {piece:?}", started.elapsed().as_millis());
                    stdout.flush()?;
                }
            }
        }
    }
    println!("   assembled: {text:?}");
    demo.check(status == StatusCode::OK, || {
        format!("stream: expected 200, got {status}")
    });
    demo.check(text == REPLY, || {
        format!("stream: expected {REPLY:?}, got {text:?}")
    });
    demo.check(done, || "stream: no final `data: [DONE]`".to_owned());
    Ok(())
}

pub(super) async fn models(
    demo: &mut Demo,
    client: &HttpClient,
    base: &str,
    key: &str,
) -> Result<()> {
    demo.step("The models this key may use");
    let request = build(Method::GET, &format!("{base}/v1/models"), Some(key), None)?;
    let (status, body) = call(client, request).await?;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .map(|models| models.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    println!("   GET /v1/models → {status}: {}", ids.join(", "));
    demo.check(status == StatusCode::OK, || {
        format!("models: expected 200, got {status}: {body}")
    });
    demo.check(ids.contains(&MODEL), || {
        format!("models: {MODEL} is not listed")
    });
    Ok(())
}

pub(super) async fn refusals(demo: &mut Demo, client: &HttpClient, base: &str) -> Result<()> {
    demo.step("Requests the gateway refuses");
    let url = format!("{base}/v1/chat/completions");
    let cases = [
        ("no key", None, "missing_api_key"),
        (
            "a made-up key",
            Some("kg_sk_madeupmadeupmadeupmadeup"),
            "invalid_api_key",
        ),
    ];
    for (what, key, expected) in cases {
        let request = build(Method::POST, &url, key, Some(&chat_body(false)))?;
        let (status, body) = call(client, request).await?;
        let code = error_code(&body);
        println!("   {what:<14} → {status}  code {code}");
        demo.check(
            status == StatusCode::UNAUTHORIZED && code == expected,
            || format!("{what}: expected 401 {expected}, got {status} {body}"),
        );
    }
    Ok(())
}
