//! The mock upstream over plain HTTP/1.1 and h2c: every route, the failure
//! switches, pacing and stream accounting.

use std::time::Duration;

use http::{Method, StatusCode, Version};
use http_body_util::BodyExt as _;
use keygate_test_utils::MockUpstream;
use serde_json::{Value, json};

use crate::{eventually, h2c, http1, json_body, post, send, sse_events, timed_frames};

const DEFAULT_REPLY: &str = "The quick brown fox jumps over the lazy dog.";

fn chat_request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say something, please"}]},
        ],
    })
}

#[tokio::test]
async fn answers_a_chat_completion_and_records_the_request() {
    let mock = MockUpstream::start().await;
    let client = http1();
    let url = format!("{}/v1/chat/completions?trace=1", mock.url());
    let response = send(
        &client,
        Method::POST,
        &url,
        &chat_request(false),
        &[("authorization", "Bearer anything")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json_body(response).await;
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 0);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 9, "total_tokens": 15})
    );

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let recorded = &requests[0];
    assert_eq!(recorded.method, Method::POST);
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.query.as_deref(), Some("trace=1"));
    assert_eq!(recorded.headers["authorization"], "Bearer anything");
    assert_eq!(recorded.version, Version::HTTP_11);
    let sent: Value = serde_json::from_slice(&recorded.body).unwrap();
    assert_eq!(sent, chat_request(false));
    mock.shutdown().await;
}

#[tokio::test]
async fn serves_the_other_routes_with_or_without_the_v1_prefix() {
    let mock = MockUpstream::start().await;
    mock.set_reply("one two three");
    let client = http1();
    let base = mock.url();

    let legacy = json_body(
        post(
            &client,
            &format!("{base}/completions"),
            &json!({"model": "gpt-3.5-turbo-instruct", "prompt": "a b"}),
        )
        .await,
    )
    .await;
    assert_eq!(legacy["object"], "text_completion");
    assert_eq!(legacy["choices"][0]["text"], "one two three");
    assert_eq!(legacy["usage"]["total_tokens"], 5);

    let embeddings = json_body(
        post(
            &client,
            &format!("{base}/v1/embeddings"),
            &json!({"model": "text-embedding-3-small", "input": ["a b", "c"], "dimensions": 3}),
        )
        .await,
    )
    .await;
    assert_eq!(embeddings["model"], "text-embedding-3-small");
    assert_eq!(embeddings["data"].as_array().unwrap().len(), 2);
    assert_eq!(embeddings["data"][1]["index"], 1);
    assert_eq!(
        embeddings["data"][0]["embedding"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        embeddings["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let base64 = json_body(
        post(
            &client,
            &format!("{base}/embeddings"),
            &json!({"model": "e", "input": "a b", "encoding_format": "base64"}),
        )
        .await,
    )
    .await;
    // Eight little-endian f32s are 32 bytes, 44 base64 characters.
    assert_eq!(base64["data"][0]["embedding"].as_str().unwrap().len(), 44);

    let messages = json_body(
        post(
            &client,
            &format!("{base}/v1/messages"),
            &json!({"model": "claude-x", "max_tokens": 10, "system": "be nice",
                    "messages": [{"role": "user", "content": "hi there"}]}),
        )
        .await,
    )
    .await;
    assert!(messages["id"].as_str().unwrap().starts_with("msg_mock"));
    assert_eq!(messages["type"], "message");
    assert_eq!(messages["model"], "claude-x");
    assert_eq!(
        messages["content"],
        json!([{"type": "text", "text": "one two three"}])
    );
    assert_eq!(messages["stop_reason"], "end_turn");
    assert_eq!(messages["stop_sequence"], Value::Null);
    assert_eq!(
        messages["usage"],
        json!({"input_tokens": 4, "output_tokens": 3})
    );

    let response = json_body(
        post(
            &client,
            &format!("{base}/v1/responses"),
            &json!({"model": "gpt-4o", "input": "tell me a story"}),
        )
        .await,
    )
    .await;
    assert_eq!(response["object"], "response");
    assert_eq!(response["output"][0]["content"][0]["text"], "one two three");
    assert_eq!(response["usage"]["input_tokens"], 4);
    assert_eq!(response["usage"]["output_tokens"], 3);

    let models = json_body(
        send(
            &client,
            Method::GET,
            &format!("{base}/v1/models"),
            &Value::Null,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-4o-mini")
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn rejects_unknown_routes_and_bad_json_in_the_provider_shape() {
    let mock = MockUpstream::start().await;
    let client = http1();
    let base = mock.url();

    let response = post(&client, &format!("{base}/v1/nope"), &json!({})).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = json_body(response).await;
    assert_eq!(body["error"]["code"], "unknown_url");
    assert_eq!(body["error"]["param"], Value::Null);

    let bad = |path: &str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let request = http::Request::post(url)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"{nope",
                )))
                .unwrap();
            client.request(request).await.unwrap()
        }
    };
    let response = bad("/v1/chat/completions").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_body(response).await["error"]["type"],
        "invalid_request_error"
    );
    let response = bad("/v1/messages").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json_body(response).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response = post(
        &client,
        &format!("{base}/v1/chat/completions"),
        &json!({"messages": []}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(mock.requests().len(), 4);
    mock.shutdown().await;
}

#[tokio::test]
async fn streams_chat_chunks_paced_one_frame_each() {
    let mock = MockUpstream::start().await;
    let delay = Duration::from_millis(20);
    mock.set_chunk_delay(delay);
    let response = post(
        &http1(),
        &format!("{}/v1/chat/completions", mock.url()),
        &chat_request(true),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let frames = timed_frames(response).await;
    let events = sse_events(&frames);
    // Role chunk, nine words, finish chunk, [DONE].
    assert_eq!(events.len(), 12);
    assert_eq!(frames.len(), events.len(), "one event per frame");
    let gaps = u32::try_from(frames.len() - 1).unwrap();
    let spread = frames[frames.len() - 1].0 - frames[0].0;
    assert!(
        spread >= delay * gaps / 2,
        "frames arrived within {spread:?}, expected them paced {delay:?} apart"
    );

    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| {
            assert!(e.name.is_none());
            serde_json::from_str(&e.data).unwrap()
        })
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(chunk.get("usage").is_none(), "usage only when asked");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let text: String = chunks[1..chunks.len() - 1]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "The ");
    let last = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["delta"], json!({}));

    eventually("the stream to count as completed", || {
        mock.completed_streams() == 1
    })
    .await;
    assert_eq!(mock.cancelled_streams(), 0);
    mock.shutdown().await;
}

#[tokio::test]
async fn sends_a_usage_chunk_only_when_asked() {
    let mock = MockUpstream::start().await;
    mock.set_reply("a b");
    let mut request = chat_request(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = post(
        &http1(),
        &format!("{}/v1/chat/completions", mock.url()),
        &request,
    )
    .await;
    let events = sse_events(&timed_frames(response).await);
    // Role chunk, two words, finish chunk, usage chunk, [DONE].
    assert_eq!(events.len(), 6);
    assert_eq!(events[5].data, "[DONE]");
    let chunks: Vec<Value> = events[..5]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    for chunk in &chunks[..4] {
        assert_eq!(chunk["usage"], Value::Null);
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8})
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn streams_anthropic_events_in_order() {
    let mock = MockUpstream::start().await;
    mock.set_reply("Hello there, world");
    mock.set_chunk_delay(Duration::from_millis(5));
    let response = post(
        &http1(),
        &format!("{}/v1/messages", mock.url()),
        &json!({"model": "claude-x", "max_tokens": 100, "stream": true,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi you"}]}]}),
    )
    .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let frames = timed_frames(response).await;
    let events = sse_events(&frames);
    assert_eq!(frames.len(), events.len(), "one event per frame");
    let names: Vec<&str> = events.iter().map(|e| e.name.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    for (name, data) in names.iter().zip(&data) {
        assert_eq!(data["type"], *name);
    }
    let start = &data[0]["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["model"], "claude-x");
    assert_eq!(
        start["usage"],
        json!({"input_tokens": 2, "output_tokens": 1})
    );
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = data[3..6]
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "Hello there, world");
    assert_eq!(data[7]["delta"]["stop_reason"], "end_turn");
    assert_eq!(data[7]["usage"], json!({"output_tokens": 3}));
    eventually("the stream to count as completed", || {
        mock.completed_streams() == 1
    })
    .await;
    mock.shutdown().await;
}

#[tokio::test]
async fn require_key_answers_401_in_each_provider_shape() {
    let mock = MockUpstream::start().await;
    mock.require_key("sk-right");
    let client = http1();
    let chat = format!("{}/v1/chat/completions", mock.url());
    let messages = format!("{}/v1/messages", mock.url());
    let anthropic_body = json!({"model": "claude-x", "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hi"}]});

    for headers in [
        &[][..],
        &[("authorization", "Bearer sk-wrong")][..],
        &[("x-api-key", "sk-right")][..],
    ] {
        let response = send(&client, Method::POST, &chat, &chat_request(false), headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body = json_body(response).await;
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let response = send(
        &client,
        Method::POST,
        &chat,
        &chat_request(false),
        &[("authorization", "Bearer sk-right")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    for headers in [
        &[("authorization", "Bearer sk-right")][..],
        &[("x-api-key", "sk-wrong")][..],
    ] {
        let response = send(&client, Method::POST, &messages, &anthropic_body, headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body = json_body(response).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let response = send(
        &client,
        Method::POST,
        &messages,
        &anthropic_body,
        &[("x-api-key", "sk-right")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(mock.requests().len(), 7);
    mock.shutdown().await;
}

#[tokio::test]
async fn fail_with_answers_every_request_until_cleared() {
    let mock = MockUpstream::start().await;
    let client = http1();
    let chat = format!("{}/v1/chat/completions", mock.url());
    let failure = r#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#;
    mock.fail_with(429, failure);
    for url in [chat.clone(), format!("{}/v1/nope", mock.url())] {
        let response = post(&client, &url, &chat_request(false)).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, failure.as_bytes());
    }
    mock.clear_failure();
    let response = post(&client, &chat, &chat_request(false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(mock.requests().len(), 3);
    mock.shutdown().await;
}

#[tokio::test]
async fn hang_never_answers_and_shutdown_closes_the_connection() {
    for client in [http1(), h2c()] {
        let mock = MockUpstream::start().await;
        mock.hang();
        let chat = format!("{}/v1/chat/completions", mock.url());
        let pending = tokio::spawn({
            let client = client.clone();
            let request = crate::request(Method::POST, &chat, &chat_request(false), &[]);
            async move { client.request(request).await }
        });
        eventually("the hung request to be recorded", || {
            mock.requests().len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pending.is_finished(), "a hung request got an answer");

        mock.clear_failure();
        let response = post(&client, &chat, &chat_request(false)).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_body(response).await;

        // Shutting down closes the hung connection, so the client sees an error.
        mock.shutdown().await;
        let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the hung request still waits after shutdown")
            .unwrap();
        assert!(outcome.is_err());
    }
}

#[tokio::test]
async fn latency_delays_the_response_headers() {
    let mock = MockUpstream::start().await;
    let latency = Duration::from_millis(100);
    mock.set_latency(latency);
    let started = std::time::Instant::now();
    let response = post(
        &http1(),
        &format!("{}/v1/chat/completions", mock.url()),
        &chat_request(false),
    )
    .await;
    assert!(started.elapsed() >= latency);
    assert_eq!(response.status(), StatusCode::OK);
    mock.shutdown().await;
}

#[tokio::test]
async fn counts_streams_the_client_abandons() {
    for client in [http1(), h2c()] {
        let mock = MockUpstream::start().await;
        mock.set_chunk_delay(Duration::from_millis(50));
        let response = post(
            &client,
            &format!("{}/v1/chat/completions", mock.url()),
            &chat_request(true),
        )
        .await;
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        eventually("the abandoned stream to count as cancelled", || {
            mock.cancelled_streams() == 1
        })
        .await;
        assert_eq!(mock.completed_streams(), 0);
        mock.shutdown().await;
    }
}

#[tokio::test]
async fn speaks_h2c() {
    let mock = MockUpstream::start().await;
    let client = h2c();
    let response = post(
        &client,
        &format!("{}/v1/messages", mock.url()),
        &json!({
            "model": "claude-x", "max_tokens": 5, "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        }),
    )
    .await;
    assert_eq!(response.version(), Version::HTTP_2);
    let events = sse_events(&timed_frames(response).await);
    assert_eq!(events.last().unwrap().name.as_deref(), Some("message_stop"));
    assert_eq!(mock.requests()[0].version, Version::HTTP_2);
    eventually("the stream to count as completed", || {
        mock.completed_streams() == 1
    })
    .await;
    mock.shutdown().await;
}

#[tokio::test]
async fn dropping_the_mock_stops_it() {
    let mock = MockUpstream::start().await;
    let addr = mock.addr();
    assert_eq!(mock.url(), format!("http://127.0.0.1:{}", addr.port()));
    assert!(format!("{mock:?}").contains("MockUpstream"));
    drop(mock);
    eventually("the listener to close", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
}

#[tokio::test]
async fn recording_can_be_turned_off_for_load_tests() {
    let mock = MockUpstream::start().await;
    let client = http1();
    let url = format!("{}/v1/chat/completions", mock.url());
    assert_eq!(
        post(&client, &url, &chat_request(false)).await.status(),
        StatusCode::OK
    );
    mock.set_recording(false);
    for _ in 0..3 {
        let response = post(&client, &url, &chat_request(false)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            json_body(response).await["choices"][0]["message"]["content"],
            DEFAULT_REPLY
        );
    }
    assert_eq!(mock.requests().len(), 1);
    mock.set_recording(true);
    assert_eq!(
        post(&client, &url, &chat_request(false)).await.status(),
        StatusCode::OK
    );
    assert_eq!(mock.requests().len(), 2);
    mock.shutdown().await;
}
