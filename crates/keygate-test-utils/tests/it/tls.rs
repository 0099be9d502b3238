//! Test certificates and the mock upstream over TLS, with HTTP/2 and HTTP/1.1
//! negotiated by ALPN.

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate_test_utils::{MockUpstream, TestCerts};
use serde_json::{Value, json};

use crate::{sse_events, timed_frames, tls_connect};

fn chat_body(stream: bool) -> Full<Bytes> {
    Full::new(Bytes::from(
        json!({"model": "gpt-4o", "stream": stream,
               "messages": [{"role": "user", "content": "hello"}]})
        .to_string(),
    ))
}

#[test]
fn debug_hides_the_private_key() {
    let certs = TestCerts::generate();
    assert!(certs.key_pem.contains("PRIVATE KEY"));
    let debug = format!("{certs:?}");
    assert!(!debug.contains(&certs.key_pem));
    assert!(!debug.contains("PRIVATE KEY"));
}

#[test]
fn writes_the_three_pem_files() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certs.write_to(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(ca).unwrap(), certs.ca_pem);
    assert_eq!(std::fs::read_to_string(cert).unwrap(), certs.cert_pem);
    assert_eq!(std::fs::read_to_string(key).unwrap(), certs.key_pem);
}

#[tokio::test]
async fn serves_http2_over_tls_to_clients_trusting_the_ca() {
    let certs = TestCerts::generate();
    let mock = MockUpstream::start_tls(&certs).await;
    assert_eq!(
        mock.url(),
        format!("https://localhost:{}", mock.addr().port())
    );
    let tls = tls_connect(&certs, &[b"h2", b"http/1.1"], mock.addr(), "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);

    let request = Request::post(format!("{}/v1/chat/completions", mock.url()))
        .body(chat_body(true))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let events = sse_events(&timed_frames(response).await);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(mock.requests()[0].version, Version::HTTP_2);

    drop(sender);
    mock.shutdown().await;
    let _ = driver.await;
}

#[tokio::test]
async fn serves_http1_over_tls_and_the_ip_address() {
    let certs = TestCerts::generate();
    let mock = MockUpstream::start_tls(&certs).await;
    let tls = tls_connect(&certs, &[b"http/1.1"], mock.addr(), "127.0.0.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);

    let request = Request::post("/chat/completions")
        .header("host", "127.0.0.1")
        .body(chat_body(false))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 1);
    let recorded = &mock.requests()[0];
    assert_eq!(recorded.version, Version::HTTP_11);
    assert_eq!(recorded.path, "/chat/completions");

    drop(sender);
    mock.shutdown().await;
    let _ = driver.await;
}
