//! TLS: inbound with a generated certificate (h2 and HTTP/1.1 by ALPN), and an
//! upstream whose certificate is signed by a custom CA.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_store::MemoryStore;
use keygate_test_utils::{MockUpstream, TestCerts};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::harness::*;

fn https_client(
    ca_pem: &str,
    http2_only: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if http2_only {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(http2_only);
    client.build(connector)
}

#[tokio::test]
async fn inbound_tls_serves_h2_and_http1() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (_, cert_path, key_path) = certs.write_to(dir.path()).unwrap();
    let tls = keygate_proxy::load_tls(&cert_path, &key_path).unwrap();
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .tls(tls)
        .grace(Duration::from_secs(2))
        .start()
        .await;
    let key = gw.key().await;
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    for (h2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(chat("gpt-4o", true).to_string())))
            .unwrap();
        let response = https_client(&certs.ca_pem, h2)
            .request(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("[DONE]"));
    }
    // Plain HTTP on the TLS port gets nowhere.
    let plain = send_plain(&format!("http://127.0.0.1:{}/healthz", gw.addr.port())).await;
    assert!(plain.is_err());

    let missing = keygate_proxy::load_tls(&dir.path().join("nope.pem"), &key_path).unwrap_err();
    assert_eq!(missing.field, "tls.cert");
    let swapped = keygate_proxy::load_tls(&key_path, &cert_path).unwrap_err();
    assert!(swapped.field.starts_with("tls"), "{swapped}");
}

async fn send_plain(url: &str) -> Result<StatusCode, ()> {
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let client = client();
    match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
        Ok(Ok(response)) => Ok(response.status()),
        _ => Err(()),
    }
}

#[tokio::test]
async fn upstream_tls_with_a_custom_ca() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, _, _) = certs.write_to(dir.path()).unwrap();
    let mock = MockUpstream::start_tls(&certs).await;
    mock.require_key(PROVIDER_KEY);

    // Without the CA the upstream's certificate is not trusted: 502.
    let untrusted = TestGateway::builder(&mock)
        .grace(Duration::from_secs(2))
        .start()
        .await;
    let key = untrusted.key().await;
    let reply = post(
        &untrusted.url("/v1/chat/completions"),
        &key,
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());

    let gw = TestGateway::builder(&mock)
        .config(|c| {
            for upstream in &mut c.upstreams {
                upstream.ca_file = Some(ca_path.clone());
            }
        })
        .grace(Duration::from_secs(2))
        .start()
        .await;
    let key = gw.key().await;
    let reply = post(
        &gw.url("/v1/chat/completions"),
        &key,
        &chat("gpt-4o", false),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // The upstream offered h2 by ALPN, and keygate took it.
    assert_eq!(mock.requests().last().unwrap().version, Version::HTTP_2);

    let mut config = keygate_proxy::ProxyConfig::new(prefix(), upstreams(&mock));
    config.upstreams[0].ca_file = Some(dir.path().join("missing.pem"));
    let err = keygate_proxy::Gateway::new(config, Arc::new(MemoryStore::new())).unwrap_err();
    assert_eq!(err.field, "upstreams[0].ca_file");
}

/// A provider caps each HTTP/2 connection's streams (`SETTINGS_MAX_CONCURRENT_STREAMS`):
/// past `streams_per_connection` requests in flight, keygate opens another
/// connection rather than queueing the request behind streams that may last
/// minutes; a stream's place is held until its body ends, and is taken again
/// once it has.
#[tokio::test]
async fn streams_past_a_connections_cap_open_another_connection() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, _, _) = certs.write_to(dir.path()).unwrap();
    let mock = MockUpstream::start_tls(&certs).await;
    mock.set_max_streams(Some(2));
    // Streams that last far longer than the test.
    mock.set_chunk_delay(Duration::from_secs(60));
    let gw = TestGateway::builder(&mock)
        .config(|c| {
            for upstream in &mut c.upstreams {
                upstream.ca_file = Some(ca_path.clone());
                upstream.streams_per_connection = 2;
            }
        })
        .grace(Duration::from_millis(200))
        .start()
        .await;
    let key = gw.key().await;
    let url = gw.url("/v1/chat/completions");
    // One stream at a time, each with its head back before the next is sent:
    // a place freed at the head (not at the body's end) would send the third
    // to the first connection, where it would wait for a stream.
    let mut open = Vec::new();
    for n in 0..4 {
        let request = json_request(&url, &key, &chat("gpt-4o", true));
        let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
            .await
            .unwrap_or_else(|_| panic!("stream {n} got no head"))
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let connections = |mock: &MockUpstream| -> Vec<usize> {
        mock.requests().iter().map(|r| r.connection).collect()
    };
    let seen = connections(&mock);
    assert_eq!(seen.len(), 4);
    assert!(mock.requests().iter().all(|r| r.version == Version::HTTP_2));
    assert_eq!(seen[0], seen[1], "{seen:?}");
    assert_eq!(seen[2], seen[3], "{seen:?}");
    assert_ne!(seen[0], seen[2], "{seen:?}");

    // The first stream's client leaves: its place on the first connection is
    // free again, and the next stream takes it.
    drop(open.remove(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mock.cancelled_streams() < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.cancelled_streams(), 1);
    let request = json_request(&url, &key, &chat("gpt-4o", true));
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(request))
        .await
        .expect("the fifth stream got no head")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = connections(&mock);
    assert_eq!(seen[4], seen[0], "{seen:?}");
}
