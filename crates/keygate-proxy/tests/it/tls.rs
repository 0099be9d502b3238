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
/// past `streams_per_connection`, keygate opens another connection rather than
/// queueing the request behind a stream that may last minutes.
#[tokio::test]
async fn streams_past_a_connections_cap_open_another_connection() {
    let certs = TestCerts::generate();
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, _, _) = certs.write_to(dir.path()).unwrap();
    let mock = MockUpstream::start_tls(&certs).await;
    mock.set_max_streams(Some(2));
    // Streams that last far longer than the test waits for them to start.
    mock.set_chunk_delay(Duration::from_secs(30));
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
    let streams: Vec<_> = (0..5)
        .map(|_| {
            let request = json_request(&url, &key, &chat("gpt-4o", true));
            tokio::spawn(async move { client().request(request).await })
        })
        .collect();
    // All five reach the upstream while the first two are still streaming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mock.requests().len() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let versions: Vec<_> = mock.requests().iter().map(|r| r.version).collect();
    assert_eq!(
        versions,
        [Version::HTTP_2; 5],
        "requests that reached the upstream"
    );
    assert_eq!(mock.completed_streams(), 0);
    assert!(
        mock.connections() >= 3,
        "{} connections",
        mock.connections()
    );
    for stream in streams {
        let response = stream.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
