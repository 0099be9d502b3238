//! Limits end to end, on real gateway processes: one allowance shared by three
//! instances through Redis, tokens per minute corrected from the answers,
//! requests in flight, allowances that survive key changes and cache expiry, a
//! Redis that is not there or stops mid-run, failed logins per address, and
//! public keys.
//! Client source addresses are bound (127.0.0.2, 127.0.0.3) so the gateway sees
//! different clients on one loopback.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use keygate_test_utils::{
    GatewayProcess, MockUpstream, TestPostgres, TestRedis, admin, write_mock_config,
};
use serde_json::{Value, json};

use super::{ENV, cli_key};

type HttpClient = Client<HttpConnector, http_body_util::Full<Bytes>>;

fn client(source: Option<&str>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(source.map(|s| s.parse::<IpAddr>().unwrap()));
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// The mock config with `extra` TOML appended (and `[auth_cache]` lines added
/// when `cache` is given).
fn config(dir: &Path, mock: &MockUpstream, database_url: &str, extra: &str) -> PathBuf {
    let path = write_mock_config(dir, &mock.url(), database_url).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{extra}\n")).unwrap();
    path
}

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("keygate.db").display())
}

async fn send(
    client: &HttpClient,
    base: &str,
    key: &str,
    body: &Value,
) -> http::Response<Incoming> {
    let request = http::Request::post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(body.to_string())))
        .unwrap();
    client.request(request).await.unwrap()
}

/// Status, headers and body of a whole answer.
async fn call(
    client: &HttpClient,
    base: &str,
    key: &str,
    body: &Value,
) -> (u16, http::HeaderMap, String) {
    let response = send(client, base, key, body).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn chat() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

/// Three gateways on one PostgreSQL database share one Redis: a key with
/// `rpm = 60` hammered round-robin through all three is served at most 60
/// times, plus one per second the run took. A gateway on PostgreSQL with
/// local limits says at start that they are per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_rpm_allowance() {
    let Some(db) = TestPostgres::create("three_instances_share_one_rpm_allowance").await else {
        return;
    };
    let Some(redis) = TestRedis::create("three_instances_share_one_rpm_allowance") else {
        return;
    };
    let mock = MockUpstream::start().await;
    mock.set_recording(false);
    let dir = tempfile::tempdir().unwrap();

    let local = config(dir.path(), &mock, db.url(), "");
    let solo = GatewayProcess::start(&local, &ENV).await;
    let (key, _) = cli_key(db.url(), &["--rpm", "60"]).await;
    assert!(
        solo.log().contains("limits are per instance"),
        "{}",
        solo.log()
    );
    drop(solo);

    let shared = config(
        dir.path(),
        &mock,
        db.url(),
        &format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"{}\"\n",
            redis.url, redis.prefix
        ),
    );
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(GatewayProcess::start(&shared, &ENV).await);
    }
    for gateway in &gateways {
        assert!(
            !gateway.log().contains("limits are per instance"),
            "{}",
            gateway.log()
        );
    }
    let bases: Vec<String> = gateways.iter().map(|g| g.base_url.clone()).collect();
    let client = client(None);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (client, base, key) = (client.clone(), bases[i % 3].clone(), key.clone());
        tasks.spawn(async move {
            let (status, headers, body) = call(&client, &base, &key, &chat()).await;
            if status == 429 {
                assert!(body.contains("rate_limit_exceeded"), "{body}");
                assert!(headers.contains_key("retry-after"));
                assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "60");
            } else {
                assert_eq!(status, 200, "{body}");
            }
            status == 200
        });
    }
    let mut served = 0_u64;
    while let Some(ok) = tasks.join_next().await {
        served += u64::from(ok.unwrap());
    }
    let elapsed = started.elapsed();
    let bound = 60 + elapsed.as_secs() + 1;
    eprintln!(
        "three instances, rpm 60, 300 requests round-robin in {elapsed:?}: {served} served (bound {bound})"
    );
    assert!(served >= 60, "{served} served");
    assert!(served <= bound, "{served} served, more than {bound}");
}

/// `tpm`: a request debits its estimate (input bytes / 4 + its output cap),
/// corrected to what the upstream reports; after a large answer the bucket
/// owes and the next request is refused with the token headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_refuses_after_large_answers() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, ""), &ENV).await;
    let (key, _) = cli_key(&url, &["--tpm", "1000"]).await;
    let client = client(None);
    let small = json!({"model": "gpt-4o-mini", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}]});
    mock.set_usage(json!(10), json!(20));
    let (status, headers, body) = call(&client, &gateway.base_url, &key, &small).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "1000");
    let first_left: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(first_left < 1000 - 100, "{first_left}");
    // The small answer gave most of its estimate back.
    let (status, headers, _) = call(&client, &gateway.base_url, &key, &small).await;
    assert_eq!(status, 200);
    let second_left: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(
        second_left + 200 > first_left,
        "{first_left} then {second_left}"
    );
    // A large answer: the bucket owes.
    mock.set_usage(json!(50), json!(5000));
    let (status, _, body) = call(&client, &gateway.base_url, &key, &small).await;
    assert_eq!(status, 200, "{body}");
    // The correction lands when the gateway sees the body end, which may be
    // just after the client has it: one more request may pass. Without the
    // debt, six more would.
    let mut refused = None;
    for _ in 0..2 {
        let answer = call(&client, &gateway.base_url, &key, &small).await;
        if answer.0 == 429 {
            refused = Some(answer);
            break;
        }
        assert_eq!(answer.0, 200, "{}", answer.2);
    }
    let (status, headers, body) = refused.expect("no refusal after a 5000-token answer");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("tokens per minute"), "{body}");
    assert_eq!(header(&headers, "x-ratelimit-remaining-tokens"), "0");
    let retry: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!(retry > 1, "{retry}");
}

/// `max_parallel = 2`: two streams run at once, a third is refused while they
/// do, and a client that leaves gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_lets_exactly_two_streams_run() {
    let mock = MockUpstream::start().await;
    mock.set_reply("one two three four five six seven eight nine ten eleven twelve");
    mock.set_chunk_delay(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, ""), &ENV).await;
    let (key, _) = cli_key(&url, &["--max-parallel", "2"]).await;
    let client = client(None);
    let stream = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "count"}]});
    let first = send(&client, &gateway.base_url, &key, &stream).await;
    let second = send(&client, &gateway.base_url, &key, &stream).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let (status, _, body) = call(&client, &gateway.base_url, &key, &chat()).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("2 requests in flight"), "{body}");
    // The first client leaves: its slot comes back.
    drop(first);
    let mut third = None;
    for _ in 0..100 {
        let (status, _, _) = call(&client, &gateway.base_url, &key, &chat()).await;
        if status == 200 {
            third = Some(status);
            break;
        }
        assert_eq!(status, 429);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        third,
        Some(200),
        "the slot of a client that left never came back"
    );
    // The second stream still runs to its end.
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("[DONE]"));
}

/// An allowance is kept by key id: neither a key update nor the cache entry
/// expiring hands out a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowance_survives_key_update_and_cache_expiry() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let path = write_mock_config(dir.path(), &mock.url(), &url).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[auth_cache]\n", "[auth_cache]\nttl = \"1s\"\n");
    std::fs::write(&path, text).unwrap();
    let gateway = GatewayProcess::start(&path, &ENV).await;
    let (key, id) = cli_key(&url, &["--rpm", "3"]).await;
    let client = client(None);
    for _ in 0..3 {
        assert_eq!(call(&client, &gateway.base_url, &key, &chat()).await.0, 200);
    }
    assert_eq!(call(&client, &gateway.base_url, &key, &chat()).await.0, 429);
    let updated = admin(&url, &["key", "update", &id, "--name", "renamed"]).await;
    assert!(updated.success, "{}", updated.stderr);
    // Past a change-feed poll (200 ms) and the cache's 1 s life.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, headers, body) = call(&client, &gateway.base_url, &key, &chat()).await;
    assert_eq!(status, 429, "a fresh allowance after the update: {body}");
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "0");
}

/// A Redis that is not there: with `on_backend_error = "local"` the limits
/// hold in the instance (and the fallback is counted); with `"deny"` limited
/// requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_follows_on_backend_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let client = client(None);
    let (key, _) = {
        let migrate = admin(&url, &["migrate"]).await;
        assert!(migrate.success, "{}", migrate.stderr);
        cli_key(&url, &["--rpm", "2"]).await
    };
    for (policy, expect) in [("local", [200, 200, 429]), ("deny", [503, 503, 503])] {
        let extra = format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{port}\"\n\
             redis_timeout = \"200ms\"\non_backend_error = \"{policy}\"\nauth_failures_per_minute = 0\n"
        );
        let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, &extra), &ENV).await;
        for want in expect {
            let (status, _, body) = call(&client, &gateway.base_url, &key, &chat()).await;
            assert_eq!(status, want, "{policy}: {body}");
            if want == 503 {
                assert!(body.contains("limits_unavailable"), "{body}");
            }
        }
        let metrics = client
            .request(
                http::Request::get(format!("{}/metrics", gateway.base_url))
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let counter = if policy == "local" {
            "keygate_limit_fallbacks_total 3"
        } else {
            "keygate_limit_denied_total 3"
        };
        assert!(metrics.contains(counter), "{metrics}");
        // The outage's line comes before the first request's line, so once the
        // three request lines are in, so is any second outage line.
        let log = gateway
            .log_when(Duration::from_secs(10), |log| {
                log.matches("keygate::request").count() >= 3
            })
            .await;
        assert_eq!(
            log.matches("rate-limit backend unavailable").count(),
            1,
            "one line per outage:\n{log}"
        );
    }
}

/// An address guessing keys is answered 429 once it has failed
/// `auth_failures_per_minute` times, valid key or not, before any lookup;
/// another address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_guessing_keys_is_throttled_alone() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let extra = "[limits]\nauth_failures_per_minute = 5\n";
    let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, extra), &ENV).await;
    let (key, _) = cli_key(&url, &[]).await;
    let guesser = client(Some("127.0.0.2"));
    let other = client(Some("127.0.0.3"));
    let guess = format!("kg_sk_{}", "0".repeat(72));
    for _ in 0..5 {
        assert_eq!(
            call(&guesser, &gateway.base_url, &guess, &chat()).await.0,
            401
        );
    }
    let (status, headers, body) = call(&guesser, &gateway.base_url, &guess, &chat()).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("failed authentication"), "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        call(&guesser, &gateway.base_url, &key, &chat()).await.0,
        429
    );
    assert_eq!(call(&other, &gateway.base_url, &key, &chat()).await.0, 200);
    assert_eq!(
        call(&other, &gateway.base_url, &guess, &chat()).await.0,
        401
    );
}

/// A public key: only DESIGN's parameters reach the upstream, its output cap
/// does, and its per-address limits count each client address apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_are_restricted_and_limited_per_address() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let extra = "[public_keys]\nrpm_per_address = 2\nmax_output_tokens = 64\n";
    let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, extra), &ENV).await;
    let (key, _) = cli_key(&url, &["--kind", "public", "--models", "gpt-4o-mini"]).await;
    let a = client(Some("127.0.0.2"));
    let b = client(Some("127.0.0.3"));
    let body = json!({"model": "gpt-4o-mini", "temperature": 0.5, "max_tokens": 5000,
        "messages": [{"role": "user", "content": "hi"}],
        "frequency_penalty": 1, "logit_bias": {"50256": -100}, "user": "visitor",
        "metadata": {"a": "b"}, "n": 4});
    let (status, headers, reply) = call(&a, &gateway.base_url, &key, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "2");
    let sent = mock.requests().pop().unwrap();
    let sent: Value = serde_json::from_slice(&sent.body).unwrap();
    for stripped in ["frequency_penalty", "logit_bias", "user", "metadata", "n"] {
        assert!(
            sent.get(stripped).is_none(),
            "{stripped} reached the upstream: {sent}"
        );
    }
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["messages"][0]["content"], "hi");
    assert_eq!(call(&a, &gateway.base_url, &key, &chat()).await.0, 200);
    let (status, _, reply) = call(&a, &gateway.base_url, &key, &chat()).await;
    assert_eq!(status, 429, "{reply}");
    assert!(reply.contains("from one address"), "{reply}");
    // Another address has its own allowance; the cap is set when none is asked.
    assert_eq!(call(&b, &gateway.base_url, &key, &chat()).await.0, 200);
    let sent: Value = serde_json::from_slice(&mock.requests().pop().unwrap().body).unwrap();
    assert_eq!(sent["max_completion_tokens"], 64);
    assert_eq!(call(&b, &gateway.base_url, &key, &chat()).await.0, 200);
    assert_eq!(call(&b, &gateway.base_url, &key, &chat()).await.0, 429);
}

/// Tiers: `default_tier` holds an account's keys together when account-wide;
/// `account update --tier` moves the account to another tier within a poll;
/// a key's own limit only tightens a per-key tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_bound_an_account_and_its_keys() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let extra = "[limits]\ndefault_tier = \"free\"\n\
                 [tiers.free]\nrpm = 3\naccount_wide = true\n\
                 [tiers.pro]\nrpm = 100\nmax_parallel = 10\n";
    let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, extra), &ENV).await;
    let client = client(None);
    // Two keys of one account on the default, account-wide tier: 3 in all.
    let account = admin(
        &url,
        &[
            "--json",
            "account",
            "create",
            "--name",
            "t",
            "--balance",
            "100",
        ],
    )
    .await;
    assert!(account.success, "{}", account.stderr);
    let account: Value = serde_json::from_str(&account.stdout).unwrap();
    let account = account["id"].as_str().unwrap().to_owned();
    let mut keys = Vec::new();
    for extra in [&[][..], &["--rpm", "1"][..]] {
        let mut args = vec!["--json", "key", "create", "--account", &account];
        args.extend_from_slice(extra);
        let key = admin(&url, &args).await;
        assert!(key.success, "{}", key.stderr);
        let key: Value = serde_json::from_str(&key.stdout).unwrap();
        keys.push(key["key"].as_str().unwrap().to_owned());
    }
    let (a, b) = (&keys[0], &keys[1]);
    let mut statuses = Vec::new();
    for key in [a, b, a, b, a] {
        statuses.push(call(&client, &gateway.base_url, key, &chat()).await.0);
    }
    // b's own rpm of 1 refuses its second request; the account's 3 the fifth.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // On the per-key "pro" tier: a has 100 a minute, b its own 1 (already used).
    let moved = admin(
        &url,
        &["--json", "account", "update", &account, "--tier", "pro"],
    )
    .await;
    assert!(moved.success, "{}", moved.stderr);
    assert!(
        moved.stdout.contains("\"tier\": \"pro\""),
        "{}",
        moved.stdout
    );
    let mut a_ok = false;
    for _ in 0..50 {
        if call(&client, &gateway.base_url, a, &chat()).await.0 == 200 {
            a_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a_ok, "the pro tier never reached the gateway");
    let (status, headers, _) = call(&client, &gateway.base_url, a, &chat()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "100");
    assert_eq!(call(&client, &gateway.base_url, b, &chat()).await.0, 429);
}

/// A Redis server of this test's own on a free port, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// `None` (and a SKIPPED line) when `redis-server` is not installed.
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        if !redis.spawn() {
            eprintln!("SKIPPED (Redis): redis-server is not installed");
            return None;
        }
        Some(redis)
    }

    fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        // Bounded: up to 5 s for the server to listen.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis stopped in the middle of a run, then started again: with
/// `on_backend_error = "local"` requests go on being served by the in-process
/// limiter (one log line for the outage); with `"deny"` they get 503
/// `limits_unavailable` while it is down; either way the gateway goes back to
/// Redis once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_follows_on_backend_error_and_recovers() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite(dir.path());
    let client = client(None);
    let (key, _) = {
        let migrate = admin(&url, &["migrate"]).await;
        assert!(migrate.success, "{}", migrate.stderr);
        cli_key(&url, &["--rpm", "1000"]).await
    };
    for policy in ["local", "deny"] {
        let extra = format!(
            "[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\n\
             redis_prefix = \"kg-outage-{policy}:\"\nredis_timeout = \"200ms\"\n\
             on_backend_error = \"{policy}\"\nauth_failures_per_minute = 0\n",
            redis.port
        );
        let gateway = GatewayProcess::start(&config(dir.path(), &mock, &url, &extra), &ENV).await;
        for _ in 0..3 {
            let (status, _, body) = call(&client, &gateway.base_url, &key, &chat()).await;
            assert_eq!(status, 200, "{policy}, Redis up: {body}");
        }
        redis.stop();
        let want = if policy == "local" { 200 } else { 503 };
        for _ in 0..3 {
            let (status, _, body) = call(&client, &gateway.base_url, &key, &chat()).await;
            assert_eq!(status, want, "{policy}, Redis down: {body}");
            if want == 503 {
                assert!(body.contains("limits_unavailable"), "{body}");
            }
        }
        // The outage's line comes before the first request line logged while
        // Redis is down, so once all six request lines are in, so is any second
        // outage line.
        let log = gateway
            .log_when(Duration::from_secs(10), |log| {
                log.matches("keygate::request").count() >= 6
            })
            .await;
        assert_eq!(
            log.matches("rate-limit backend unavailable").count(),
            1,
            "one line per outage:\n{log}"
        );
        assert!(redis.spawn());
        // Bounded: the connection manager reconnects within a few tries.
        let mut served = false;
        for _ in 0..50 {
            let (status, _, _) = call(&client, &gateway.base_url, &key, &chat()).await;
            if status == 200 && gateway.log().contains("reachable again") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(served, "{policy}: back on Redis:\n{}", gateway.log());
    }
}
