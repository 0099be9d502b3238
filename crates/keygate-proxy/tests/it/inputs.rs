//! Strict billing inputs through a real gateway: a body whose `model`, `stream`,
//! output caps, `n` or `stream_options` could be read one way by keygate and
//! another by the upstream is refused with 400 naming the parameter, before
//! anything is forwarded or reserved; `n` multiplies the reservation; a multipart
//! upload reserves a fixed allowance, not its bytes.

use std::time::Duration;

use http::{Method, StatusCode};
use keygate_billing::{Price, PriceTable, UPLOAD_INPUT_RESERVE};
use keygate_keys::KeyKind;
use keygate_store::{AccountId, KeySettings, Micros};
use keygate_test_utils::MockUpstream;
use serde_json::json;

use crate::harness::{Backend, PROMPT, Reply, TestGateway, post, request, send};

/// 2.5 credits per million input tokens and 10 per million output tokens.
fn prices() -> PriceTable {
    let price = Price::from_credits(2.5, 10.0, None).unwrap();
    PriceTable::from_iter([("gpt-4o", price), ("gpt-4o-transcribe", price)])
}

/// A gateway billing at [`prices`], each request with its own store
/// reservation (so an account's `reserved` is exactly the request's bound).
async fn gateway(mock: &MockUpstream) -> TestGateway {
    TestGateway::builder(mock)
        .backend(Backend::Memory)
        .billed(prices())
        .billing(|billing| billing.batch_window = Duration::ZERO)
        .start()
        .await
}

async fn key_on(gw: &TestGateway, balance: Micros) -> (String, AccountId) {
    let account = gw.account_with(balance).await;
    let (key, _) = gw
        .key_for(&account, KeySettings::new(KeyKind::Private))
        .await;
    (key, account)
}

/// A chat body for gpt-4o with `fields` (JSON text, without braces) appended.
fn chat_with(fields: &str) -> String {
    format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{PROMPT}"}}],{fields}}}"#)
}

async fn post_text(gw: &TestGateway, key: &str, path: &str, body: String) -> Reply {
    let auth = format!("Bearer {key}");
    send(request(
        Method::POST,
        &gw.url(path),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    ))
    .await
}

/// Every shape the issue lists (and the other fields keygate reads) is refused
/// for an account that could not pay for the large value, without forwarding.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_billing_fields_are_refused_naming_the_param() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let (key, account) = key_on(&gw, Micros(1_000_000)).await;

    // The large value itself is a 402: the account holds 1 credit.
    let reply = post_text(
        &gw,
        &key,
        "/v1/chat/completions",
        chat_with(r#""max_tokens":1000000"#),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        reply.text()
    );

    let mut cases = Vec::new();
    for param in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
        for value in [
            r#""1000000""#,
            "1000000.0",
            "1e6",
            "-1",
            "18446744073709551616",
            "1e999",
            "0",
        ] {
            cases.push((
                "/v1/chat/completions",
                chat_with(&format!(r#""{param}":{value}"#)),
                param,
            ));
        }
        for twice in [
            format!(r#""{param}":1,"{param}":1000000"#),
            format!(r#""{param}":1000000,"{param}":1"#),
        ] {
            cases.push(("/v1/chat/completions", chat_with(&twice), param));
        }
    }
    for (fields, param) in [
        (r#""n":3.0"#, "n"),
        (r#""n":"3""#, "n"),
        (r#""n":0"#, "n"),
        (r#""n":1000"#, "n"),
        (r#""n":1,"n":100"#, "n"),
        (r#""stream":"true""#, "stream"),
        (r#""stream":false,"stream":true"#, "stream"),
        (r#""stream":true,"stream_options":"yes""#, "stream_options"),
        (
            r#""stream":true,"stream_options":{"include_usage":"no"}"#,
            "stream_options.include_usage",
        ),
        (r#""model":"gpt-4o-mini""#, "model"),
    ] {
        cases.push(("/v1/chat/completions", chat_with(fields), param));
    }
    // Anthropic's `max_tokens` and the Responses API's cap.
    cases.push((
        "/v1/messages",
        r#"{"model":"gpt-4o","max_tokens":"1000000","messages":[]}"#.to_owned(),
        "max_tokens",
    ));
    cases.push((
        "/v1/responses",
        r#"{"model":"gpt-4o","input":"hi","max_output_tokens":1e6}"#.to_owned(),
        "max_output_tokens",
    ));

    for (path, body, param) in cases {
        let reply = post_text(&gw, &key, path, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text()
        );
        let error = &reply.json()["error"];
        assert_eq!(error["param"], param, "{body}");
        assert_eq!(error["code"], "invalid_request", "{body}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(param), "{message}");
        assert!(
            !message.contains("1000000") && !message.contains("yes"),
            "{message}"
        );
    }
    assert!(
        mock.requests().is_empty(),
        "a refused request was forwarded"
    );
    assert_eq!(
        gw.balance(&account).await,
        (Micros(1_000_000), Micros::ZERO)
    );
    assert_eq!(gw.billing().metrics().holds, 0);

    // Nested objects may use the same names: this one is served.
    let nested = chat_with(r#""max_tokens":5,"metadata":{"max_tokens":"x","n":-1,"model":"y"}"#);
    let reply = post_text(&gw, &key, "/v1/chat/completions", nested).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(mock.requests().len(), 1);
}

/// The reservation, while the upstream is still answering, of a request with
/// `max_tokens: 100000` and `n`.
async fn reserved_for(gw: &TestGateway, mock: &MockUpstream, n: u64) -> (Micros, usize) {
    let (key, account) = key_on(gw, Micros(1_000_000_000)).await;
    let body = json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 100_000,
        "n": n,
    });
    let len = body.to_string().len();
    mock.set_latency(Duration::from_millis(400));
    let url = gw.url("/v1/chat/completions");
    let call = tokio::spawn(async move { post(&url, &key, &body).await });
    let mut reserved = Micros::ZERO;
    for _ in 0..200 {
        reserved = gw.balance(&account).await.1;
        if reserved > Micros::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reply = call.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    mock.set_latency(Duration::ZERO);
    gw.settled(&account).await;
    (reserved, len)
}

/// `n: 3` reserves three times the output of `n: 1`; the input once.
#[tokio::test(flavor = "multi_thread")]
async fn n_multiplies_the_reserved_output() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let (one, len_one) = reserved_for(&gw, &mock, 1).await;
    let (three, len_three) = reserved_for(&gw, &mock, 3).await;
    let bound = |len: usize, n: u64| {
        // Body bytes × 2.5 + n × 100000 × 10 credits per million tokens.
        Micros((len as u64 * 2_500_000 + n * 100_000 * 10_000_000).div_ceil(1_000_000) as i64)
    };
    assert_eq!(one, bound(len_one, 1));
    assert_eq!(three, bound(len_three, 3));

    // An account that can pay for one choice but not for three.
    let (key, _) = key_on(&gw, Micros(2_000_000)).await;
    let one = chat_with(r#""max_tokens":100000,"n":1"#);
    let reply = post_text(&gw, &key, "/v1/chat/completions", one).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let three = chat_with(r#""max_tokens":100000,"n":3"#);
    let reply = post_text(&gw, &key, "/v1/chat/completions", three).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        reply.text()
    );
    assert_eq!(reply.code(), "insufficient_balance");
}

/// A multipart upload reserves a fixed allowance per file, not its bytes: a
/// 1 MB audio file would have reserved 2.5 credits byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_multipart_upload_reserves_by_what_it_asks_for() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock).await;
    let (key, account) = key_on(&gw, Micros(1_000_000)).await;
    let boundary = "XBOUNDARYX";
    let audio = "R".repeat(1_000_000);
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n{audio}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--{boundary}--\r\n"
    );
    let auth = format!("Bearer {key}");
    let content_type = format!("multipart/form-data; boundary={boundary}");
    mock.set_latency(Duration::from_millis(400));
    let url = gw.url("/v1/audio/transcriptions");
    let call = tokio::spawn(send(request(
        Method::POST,
        &url,
        &[("authorization", &auth), ("content-type", &content_type)],
        form,
    )));
    let mut reserved = Micros::ZERO;
    for _ in 0..200 {
        reserved = gw.balance(&account).await.1;
        if reserved > Micros::ZERO {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reply = call.await.unwrap();
    assert_ne!(
        reply.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        reply.text()
    );
    assert_eq!(mock.requests().len(), 1);
    // "gpt-4o-transcribe" (17 bytes) and one upload × 2.5, 4096 output × 10.
    let input = 17 + UPLOAD_INPUT_RESERVE;
    let expected = (input * 2_500_000 + 4096 * 10_000_000).div_ceil(1_000_000);
    assert_eq!(reserved, Micros(expected as i64));

    // A malformed `n` part is refused by name, and not forwarded.
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n2.5\r\n--{boundary}--\r\n"
    );
    let reply = send(request(
        Method::POST,
        &url,
        &[("authorization", &auth), ("content-type", &content_type)],
        form,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.json()["error"]["param"], "n");
    assert_eq!(mock.requests().len(), 1);
}
