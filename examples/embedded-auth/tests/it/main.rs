//! The example service end to end: started on 127.0.0.1:0 over a `MemoryStore`, a
//! SQLite file, and PostgreSQL when `KEYGATE_TEST_POSTGRES_URL` is set, with an
//! account and keys created through the store API and requests over real HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step fails the test"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use embedded_auth::{KeyAuth, serve};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_keys::{KeyKind, KeyPrefix, SecretKey};
use keygate_store::{
    AccountId, ApiKey, CredentialStore, DbStore, KeySettings, MemoryStore, Micros, NewAccount,
    NewApiKey, ReplacementKey, ScopeSet,
};
use keygate_test_utils::TestPostgres;
use serde_json::Value;
use tokio::sync::oneshot;

/// How often the service under test follows the change feed.
const POLL: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread")]
async fn memory() {
    let store = Arc::new(MemoryStore::new());
    the_example_authenticates_its_routes(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let store = DbStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    // A second handle revokes, as `keygate-admin` would from another process.
    let admin = DbStore::connect(&url).await.unwrap();
    the_example_authenticates_its_routes(Arc::new(store), Arc::new(admin)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres() {
    let Some(db) = TestPostgres::create("embedded_auth").await else {
        return;
    };
    let store = DbStore::connect(db.url()).await.unwrap();
    store.migrate().await.unwrap();
    let admin = DbStore::connect(db.url()).await.unwrap();
    the_example_authenticates_its_routes(Arc::new(store), Arc::new(admin)).await;
}

async fn the_example_authenticates_its_routes(
    store: Arc<dyn CredentialStore>,
    admin: Arc<dyn CredentialStore>,
) {
    let mut service = Service::start(store).await;
    let (reader, reader_key) = service
        .key(&admin, KeySettings::new(KeyKind::Private), "usage")
        .await;
    let (writer, writer_key) = service
        .key(&admin, KeySettings::new(KeyKind::Private), "chat")
        .await;

    // The right scope: the handler sees the key.
    let (status, _, body) = service
        .send(Method::GET, "/reports", Some(&bearer(&reader)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], reader_key.id.as_str());
    assert_eq!(body["account_id"], service.account.as_str());
    let (status, _, body) = service
        .send(
            Method::POST,
            "/jobs",
            Some(&("x-api-key", writer.expose().to_owned())),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["key_id"], writer_key.id.as_str());

    // No key, malformed keys and an unknown key.
    let (status, headers, body) = service.send(Method::GET, "/reports", None).await;
    assert_refused(
        status,
        &headers,
        &body,
        StatusCode::UNAUTHORIZED,
        "missing_api_key",
    );
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let mut bad_checksum = reader.expose().to_owned();
    let last = if bad_checksum.ends_with('0') {
        "1"
    } else {
        "0"
    };
    bad_checksum.replace_range(bad_checksum.len() - 1.., last);
    let unknown = SecretKey::generate(&KeyPrefix::default(), KeyKind::Private).unwrap();
    for header in [
        ("authorization", "Bearer kg_sk_nothex".to_owned()),
        ("authorization", "Basic !!".to_owned()),
        ("x-api-key", bad_checksum),
        bearer(&unknown),
    ] {
        let (status, headers, body) = service.send(Method::GET, "/reports", Some(&header)).await;
        assert_refused(
            status,
            &headers,
            &body,
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        );
    }

    // The wrong scope, named in the answer.
    let (status, headers, body) = service
        .send(Method::POST, "/jobs", Some(&bearer(&reader)))
        .await;
    assert_refused(
        status,
        &headers,
        &body,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with(": chat")
    );
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"chat\"")
    );

    // An expired key, and a public (browser) key.
    let mut settings = KeySettings::new(KeyKind::Private);
    settings.expires_at = Some(Utc::now() - chrono::Duration::minutes(1));
    let (expired, _) = service.key(&admin, settings, "usage").await;
    let (status, headers, body) = service
        .send(Method::GET, "/reports", Some(&bearer(&expired)))
        .await;
    assert_refused(
        status,
        &headers,
        &body,
        StatusCode::UNAUTHORIZED,
        "api_key_expired",
    );
    let mut settings = KeySettings::new(KeyKind::Public);
    settings.models = vec!["gpt-4o-mini".to_owned()];
    let (public, _) = service.key(&admin, settings, "chat").await;
    let (status, headers, body) = service
        .send(Method::POST, "/jobs", Some(&bearer(&public)))
        .await;
    assert_refused(
        status,
        &headers,
        &body,
        StatusCode::FORBIDDEN,
        "public_key_not_allowed",
    );

    // A rotation with a grace period: the old key works until it ends, the new one at once.
    let rotated = SecretKey::generate(&KeyPrefix::default(), KeyKind::Private).unwrap();
    let replacement = ReplacementKey {
        key_hash: rotated.hash(),
        start: rotated.start(),
    };
    let grace_end = Utc::now() + chrono::Duration::hours(1);
    admin
        .rotate_key(&writer_key.id, replacement, grace_end)
        .await
        .unwrap();
    for key in [&writer, &rotated] {
        let (status, _, body) = service
            .send(Method::POST, "/jobs", Some(&bearer(key)))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    // A revocation of a cached key is followed within a poll.
    admin.revoke_key(&reader_key.id, Utc::now()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, headers, body) = loop {
        let answer = service
            .send(Method::GET, "/reports", Some(&bearer(&reader)))
            .await;
        if answer.0 != StatusCode::OK || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(POLL / 5).await;
    };
    assert_refused(
        status,
        &headers,
        &body,
        StatusCode::UNAUTHORIZED,
        "api_key_revoked",
    );

    // Routes without a key.
    let (status, _, _) = service.send(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = service
        .send(Method::GET, "/nowhere", Some(&bearer(&writer)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // No answer ever carried a key, whole or in part.
    for key in [&reader, &writer, &expired, &public, &rotated] {
        let secret = &key.expose()[key.start().len()..];
        for body in &service.bodies {
            assert!(!body.contains(secret), "a key leaked into {body}");
        }
    }
    service.stop().await;
}

/// The example service on 127.0.0.1:0, an HTTP client, an account, and every
/// response body seen.
#[allow(missing_debug_implementations, reason = "test fixture")]
struct Service {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    account: AccountId,
    bodies: Vec<String>,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(store: Arc<dyn CredentialStore>) -> Self {
        let account = store
            .create_account(NewAccount {
                name: "embedder".to_owned(),
                email: None,
                balance: Micros::ZERO,
            })
            .await
            .unwrap();
        let auth = KeyAuth::start(store, KeyPrefix::default(), POLL)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, auth, async {
            let _ = stopped.await;
        }));
        Self {
            base,
            client: Client::builder(TokioExecutor::new()).build_http(),
            account: account.id,
            bodies: Vec::new(),
            stop,
            served,
        }
    }

    /// A new key of the account with `scopes`, created through `admin`.
    async fn key(
        &self,
        admin: &Arc<dyn CredentialStore>,
        mut settings: KeySettings,
        scopes: &str,
    ) -> (SecretKey, ApiKey) {
        settings.scopes = scopes.parse::<ScopeSet>().unwrap();
        let secret = SecretKey::generate(&KeyPrefix::default(), settings.kind).unwrap();
        let stored = admin
            .create_key(NewApiKey {
                account_id: self.account.clone(),
                key_hash: secret.hash(),
                start: secret.start(),
                settings,
            })
            .await
            .unwrap();
        (secret, stored)
    }

    /// Sends a request with at most one credential header; returns the status,
    /// the headers and the JSON body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        credential: Option<&(&str, String)>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some((name, value)) = credential {
            request = request.header(*name, value);
        }
        let response = self
            .client
            .request(request.body(Full::default()).unwrap())
            .await
            .unwrap();
        let (head, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        self.bodies.push(text);
        (head.status, head.headers, json)
    }

    async fn stop(self) {
        drop(self.client);
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.served)
            .await
            .unwrap()
            .unwrap();
    }
}

fn bearer(key: &SecretKey) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", key.expose()))
}

fn assert_refused(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Value,
    expected: StatusCode,
    code: &str,
) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    if expected == StatusCode::UNAUTHORIZED {
        assert!(headers.contains_key("www-authenticate"), "{headers:?}");
    }
}
