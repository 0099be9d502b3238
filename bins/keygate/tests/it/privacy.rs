//! The privacy proof, on SQLite and on PostgreSQL: the real gateway at `debug`
//! log level (every crate's debug lines, hyper's and the database driver's
//! included) serves requests carrying a random canary in the prompt, the system
//! prompt, a custom header, the query string, an invalid body, an invalid key
//! and the path, and a valid key in each place a key may be; afterwards no byte
//! of the SQLite file and its WAL, of a full `pg_dump`, or of any log line holds
//! the canary, the client key or a provider key.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_test_utils::{GatewayProcess, MockUpstream, TestPostgres, admin};

use crate::{ANTHROPIC_KEY, ENV, PROVIDER_KEY, cli_key, write_config};

/// 128 random bits as hex, after a marker: nothing else holds it by chance.
fn canary() -> String {
    let random = || RandomState::new().hash_one(std::process::id());
    format!("cnry{:016x}{:016x}", random(), random())
}

/// One request to the gateway; returns its status.
async fn send(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Sends every request of the proof; returns how many reached the upstream.
async fn traffic(base: &str, key: &str, canary: &str) -> usize {
    let bearer = format!("Bearer {key}");
    let json = ("content-type", "application/json");
    let chat = |stream: bool| {
        serde_json::json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "messages": [
                {"role": "system", "content": format!("You are {canary}.")},
                {"role": "user", "content": format!("Repeat {canary} please")},
            ],
        })
        .to_string()
    };
    let query = format!("/v1/chat/completions?note={canary}&other=1");
    let mut forwarded = 0;
    // The prompt, the system prompt, a custom header and the query string, on
    // a served request, streamed and not.
    for stream in [false, true] {
        let headers = [
            ("authorization", bearer.as_str()),
            json,
            ("x-canary", canary),
        ];
        assert_eq!(
            send(base, "POST", &query, &headers, &chat(stream)).await,
            200
        );
        forwarded += 1;
    }
    let messages = serde_json::json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": canary,
        "messages": [{"role": "user", "content": canary}],
    })
    .to_string();
    let headers = [("x-api-key", key), json, ("x-canary", canary)];
    assert_eq!(
        send(base, "POST", "/v1/messages", &headers, &messages).await,
        200
    );
    forwarded += 1;
    // The key in the query string, and in Basic and Azure headers.
    let in_query = format!("/v1/chat/completions?api-key={key}&note={canary}");
    assert_eq!(
        send(base, "POST", &in_query, &[json], &chat(false)).await,
        200
    );
    let basic = format!("Basic {}", base64_user_password(key));
    for header in [("authorization", basic.as_str()), ("api-key", key)] {
        assert_eq!(
            send(
                base,
                "POST",
                "/v1/chat/completions",
                &[header, json],
                &chat(false)
            )
            .await,
            200
        );
    }
    forwarded += 3;
    // Invalid bodies, with the canary in text and in a billed field.
    let auth = [("authorization", bearer.as_str()), json];
    let broken = format!(r#"{{"model":"gpt-4o-mini","messages":[{{"content":"{canary}"#);
    let billed = format!(r#"{{"model":"gpt-4o-mini","max_tokens":"{canary}","messages":[]}}"#);
    let model = format!(r#"{{"model":"{canary}{}","messages":[]}}"#, "x".repeat(64));
    for body in [
        broken.as_str(),
        billed.as_str(),
        "[\"",
        &format!("\u{0}{canary}"),
    ] {
        assert_eq!(
            send(base, "POST", "/v1/chat/completions", &auth, body).await,
            400,
            "{body}"
        );
    }
    assert_eq!(
        send(base, "POST", "/v1/chat/completions", &auth, &model).await,
        404
    );
    // Invalid keys, in every place a key may be.
    let made_up = format!("kg_sk_{canary}");
    let bearer_made_up = format!("Bearer {made_up}");
    for header in [
        ("authorization", bearer_made_up.as_str()),
        ("x-api-key", made_up.as_str()),
        ("api-key", canary),
        ("authorization", canary),
    ] {
        assert_eq!(
            send(
                base,
                "POST",
                "/v1/chat/completions",
                &[header, json],
                &chat(false)
            )
            .await,
            401
        );
    }
    let query_key = format!("/v1/chat/completions?api-key={made_up}");
    assert_eq!(
        send(base, "POST", &query_key, &[json], &chat(false)).await,
        401
    );
    // Paths: the canary and the key as route segments.
    for path in [
        format!("/v1/{canary}"),
        format!("/{canary}"),
        format!("/v1/chat/completions/{canary}"),
        format!("/v1/{key}"),
    ] {
        let status = send(base, "GET", &path, &[("authorization", &bearer)], "").await;
        assert!(matches!(status, 404 | 405), "{path}: {status}");
    }
    forwarded
}

/// `user:key` in base64, as an HTTP client writes Basic credentials.
fn base64_user_password(key: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("user:{key}").into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    while out.len() % 4 != 0 {
        out.push('=');
    }
    out
}

/// The requests a usage report's rows count.
fn requests_in(report: &serde_json::Value) -> u64 {
    match report {
        serde_json::Value::Object(map) if map.contains_key("group") => map
            .get("requests")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
        serde_json::Value::Object(map) => map.values().map(requests_in).sum(),
        serde_json::Value::Array(rows) => rows.iter().map(requests_in).sum(),
        _ => 0,
    }
}

/// Each secret that must be nowhere, with a name for the failure message.
fn secrets(canary: &str, key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("the canary", canary.to_owned()),
        ("the client key", key.to_owned()),
        ("the client key in Basic form", base64_user_password(key)),
        ("the OpenAI provider key", PROVIDER_KEY.to_owned()),
        ("the Anthropic provider key", ANTHROPIC_KEY.to_owned()),
    ]
}

fn assert_absent(what: &str, bytes: &[u8], secrets: &[(&str, String)]) {
    for (name, secret) in secrets {
        let found = bytes
            .windows(secret.len())
            .position(|w| w == secret.as_bytes());
        if let Some(at) = found {
            let from = at.saturating_sub(80);
            let context =
                String::from_utf8_lossy(&bytes[from..(at + secret.len() + 80).min(bytes.len())]);
            panic!("{what} holds {name} at byte {at}: …{context}…");
        }
    }
}

/// Runs the proof against `database_url`; `dump` reads every byte the database
/// holds (files or a dump), called while the gateway runs and after it exits.
async fn privacy_proof(database_url: &str, dump: impl Fn() -> Vec<(String, Vec<u8>)>) {
    let canary = canary();
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &mock, database_url);
    let mut env = ENV.to_vec();
    env.push(("KEYGATE_LOG", "debug"));
    let mut gateway = GatewayProcess::start(&config, &env).await;
    let (key, _) = cli_key(database_url, &[]).await;
    let forwarded = traffic(&gateway.base_url, &key, &canary).await;

    // The proof means something only if the canary and the key went through:
    // the upstream saw the canary in each forwarded request, never the key.
    let requests = mock.requests();
    assert_eq!(requests.len(), forwarded);
    for request in &requests {
        let seen = String::from_utf8_lossy(&request.body);
        assert!(seen.contains(&canary), "{seen}");
    }

    // Usage records written (one per answered request, 401s included), then a
    // clean stop, which writes whatever is left.
    let mut report = String::new();
    for _ in 0..100 {
        let out = admin(
            database_url,
            &["--json", "usage", "report", "--group-by", "key"],
        )
        .await;
        assert!(out.success, "{}", out.stderr);
        report = out.stdout;
        let value: serde_json::Value = serde_json::from_str(&report).unwrap();
        if requests_in(&value) >= forwarded as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let value: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(requests_in(&value) >= forwarded as u64, "{report}");
    let secrets = secrets(&canary, &key);
    assert_absent("the usage report", report.as_bytes(), &secrets);
    for (name, bytes) in dump() {
        assert_absent(&format!("{name} (gateway running)"), &bytes, &secrets);
    }
    gateway.terminate();
    let status = gateway.wait(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{}", gateway.log());
    for (name, bytes) in dump() {
        assert_absent(&format!("{name} (gateway stopped)"), &bytes, &secrets);
    }
    let log = gateway.log();
    assert!(log.contains(" DEBUG "), "not at debug level:\n{log}");
    assert!(log.contains("keygate::request"), "{log}");
    assert_absent("the gateway's log", log.as_bytes(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_or_key_in_the_sqlite_files_or_the_debug_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.db");
    let url = format!("sqlite://{}", path.display());
    let files = move || {
        ["", "-wal", "-shm", "-journal"]
            .iter()
            .filter_map(|suffix| {
                let file = format!("{}{suffix}", path.display());
                std::fs::read(&file).ok().map(|bytes| (file, bytes))
            })
            .collect::<Vec<_>>()
    };
    privacy_proof(&url, files).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_canary_or_key_in_pg_dump_or_the_debug_log() {
    let Some(db) = TestPostgres::create("privacy_proof").await else {
        return;
    };
    let url = db.url().to_owned();
    let dump = move || {
        let output = std::process::Command::new("pg_dump")
            .args(["--no-owner", "--dbname", &url])
            .output()
            .expect("pg_dump is needed for the PostgreSQL privacy proof");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("COPY public.usage_records"));
        vec![("pg_dump".to_owned(), output.stdout)]
    };
    privacy_proof(db.url(), dump).await;
}
