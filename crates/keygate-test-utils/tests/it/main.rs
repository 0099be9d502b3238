//! Integration tests for keygate-test-utils: the mock upstream driven by real
//! hyper clients over plain HTTP/1.1, h2c and TLS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

mod mock_upstream;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_test_utils::TestCerts;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio_rustls::TlsConnector;

/// A plain-TCP client speaking HTTP/1.1.
fn http1() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A plain-TCP client speaking HTTP/2 with prior knowledge (h2c).
fn h2c() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A request with a JSON body (or none for `Value::Null`) and extra headers.
fn request(
    method: Method,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Value::Null => Bytes::new(),
        body => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
    };
    builder.body(Full::new(body)).unwrap()
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    client
        .request(request(method, url, body, headers))
        .await
        .unwrap()
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &Value,
) -> Response<Incoming> {
    send(client, Method::POST, url, body, &[]).await
}

async fn json_body(response: Response<Incoming>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Every data frame of a body with the moment it arrived.
async fn timed_frames(response: Response<Incoming>) -> Vec<(Instant, Bytes)> {
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push((Instant::now(), data));
        }
    }
    frames
}

/// An SSE event: its `event:` name, if any, and its `data:`.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

fn sse_events(frames: &[(Instant, Bytes)]) -> Vec<Event> {
    let text: String = frames
        .iter()
        .map(|(_, data)| String::from_utf8(data.to_vec()).unwrap())
        .collect();
    assert!(text.ends_with("\n\n"), "stream ends mid-event: {text:?}");
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut event = Event {
                name: None,
                data: String::new(),
            };
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data = data.to_owned();
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            event
        })
        .collect()
}

/// Waits (up to five seconds) for `condition` to hold.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TLS connector trusting only `certs`' CA, offering `alpn`.
fn tls_connector(certs: &TestCerts, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Opens a TLS connection to `addr` verifying `server_name`.
async fn tls_connect(
    certs: &TestCerts,
    alpn: &[&[u8]],
    addr: std::net::SocketAddr,
    server_name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    tls_connector(certs, alpn).connect(name, tcp).await.unwrap()
}
