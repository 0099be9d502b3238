//! Criterion bench: the gateway's per-request work before a byte goes upstream —
//! a cache-hit key check through the real `Authenticator` over a `MemoryStore`
//! and the `model`/`stream` peek at a JSON body. One limit check, in process and
//! through Redis, is `keygate-limits`' bench `limit_check`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs,
    reason = "benchmark"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use keygate_keys::{Credential, ExtractOptions, KeyKind, KeyPrefix, ParsedKey, SecretKey};
use keygate_proxy::{AuthSettings, Authenticated, Authenticator, ProxyError};
use keygate_store::{CredentialStore, KeySettings, MemoryStore, Micros};
use keygate_test_utils::fixture;
use serde_json::json;
use tokio::runtime::Runtime;

/// A store with one account and a key, and an authenticator over it.
struct Fixture {
    runtime: Runtime,
    auth: Authenticator,
    unlimited: HeaderMap,
    unknown: HeaderMap,
}

fn bearer(key: &SecretKey) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = format!("Bearer {}", key.expose());
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&value).unwrap(),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("OpenAI/Python 1.68.2"),
    );
    headers
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefix = KeyPrefix::default();
    let store: Arc<dyn CredentialStore> = Arc::new(MemoryStore::new());
    let keys = runtime.block_on(async {
        let account = fixture::account(&*store, "bench", Micros(1_000_000_000)).await;
        let mut keys = Vec::new();
        for byte in [1_u8] {
            let secret = SecretKey::from_secret_bytes(&prefix, KeyKind::Private, &[byte; 32]);
            let settings = KeySettings::new(KeyKind::Private);
            fixture::key_from(&*store, &account.id, &secret, settings).await;
            keys.push(secret);
        }
        keys
    });
    let unknown = SecretKey::from_secret_bytes(&prefix, KeyKind::Private, &[9; 32]);
    let auth = Authenticator::new(store, prefix, None, &AuthSettings::default());
    Fixture {
        runtime,
        auth,
        unlimited: bearer(&keys[0]),
        unknown: bearer(&unknown),
    }
}

impl Fixture {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Authenticated, ProxyError> {
        self.auth.authenticate(headers, None, Utc::now()).await
    }

    /// Times `iters` cache-hit lookups inside one `block_on`, so the runtime's
    /// entry cost is not part of the figure.
    fn time_authenticate(&self, headers: &HeaderMap, iters: u64) -> Duration {
        let now = Utc::now();
        self.runtime.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let result = self.auth.authenticate(black_box(headers), None, now).await;
                black_box(result.is_ok());
            }
            start.elapsed()
        })
    }
}

fn auth(c: &mut Criterion) {
    let fixture = fixture();
    // Warm the cache: each key is looked up in the store once, here.
    fixture.runtime.block_on(async {
        fixture.authenticate(&fixture.unlimited).await.unwrap();
        assert!(matches!(
            fixture.authenticate(&fixture.unknown).await,
            Err(ProxyError::InvalidApiKey)
        ));
    });

    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    // The part of a cache hit done without the cache: find the credential in the
    // headers, check its format and checksum, hash it.
    let prefix = KeyPrefix::default();
    let options = ExtractOptions { query_param: None };
    group.bench_function("extract_parse_hash", |b| {
        b.iter(|| {
            let credential = Credential::extract(black_box(&fixture.unlimited), None, &options);
            credential
                .ok()
                .and_then(|c| ParsedKey::parse(c.expose(), &prefix).ok().map(|k| k.hash()))
        })
    });
    group.bench_function("cache_hit", |b| {
        b.iter_custom(|iters| fixture.time_authenticate(&fixture.unlimited, iters))
    });
    group.bench_function("unknown_key_cached", |b| {
        b.iter_custom(|iters| fixture.time_authenticate(&fixture.unknown, iters))
    });
    group.finish();
}

/// A chat-completions request body of about `target` bytes, in the order the
/// OpenAI Python SDK writes it (`messages` before `model` and `stream`).
fn chat_body(target: usize) -> Vec<u8> {
    const SYSTEM: &str =
        "You are a helpful assistant. Answer briefly and cite the \"source\" you used.\n";
    const TURN: &str = "Summarise the following paragraph in two sentences, keeping every number: \
        The quarterly report shows revenue of 4.2 million, up 12% on the previous quarter, \
        while operating costs rose 3%.\n";
    let mut messages = vec![json!({"role": "system", "content": SYSTEM})];
    let body = |messages: &Vec<serde_json::Value>| {
        serde_json::to_vec(&json!({
            "messages": messages,
            "model": "gpt-4o-mini",
            "stream": true,
            "temperature": 0.2,
            "max_tokens": 512,
        }))
        .unwrap()
    };
    let mut role = "user";
    while body(&messages).len() < target {
        messages.push(json!({"role": role, "content": TURN}));
        role = if role == "user" { "assistant" } else { "user" };
    }
    body(&messages)
}

fn peek(c: &mut Criterion) {
    let mut group = c.benchmark_group("peek");
    for (name, target) in [("1KB", 1024), ("100KB", 100 * 1024)] {
        let body = chat_body(target);
        let (model, stream) = keygate_proxy::bench::probe_json(&body).unwrap();
        assert_eq!((model.as_str(), stream), ("gpt-4o-mini", true));
        eprintln!("peek/{name}: body of {} bytes", body.len());
        group.throughput(Throughput::BytesDecimal(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| keygate_proxy::bench::probe_json(black_box(&body)).map(|(_, s)| s))
        });
    }
    group.finish();
}

criterion_group!(benches, auth, peek);
criterion_main!(benches);
