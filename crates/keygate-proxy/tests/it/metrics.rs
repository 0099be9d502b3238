//! `/metrics` after a known mix of traffic — JSON and streamed chats, a model
//! the config does not name, refused keys, a rate-limited key, a failover and a
//! key's own `/v1/models` — parsed with a Prometheus text parser: every family
//! counts it exactly, tokens and cost agree with the usage records, and no key
//! id or account id is a label unless `per_key` asks for it.

use std::collections::BTreeMap;

use http::{Method, StatusCode};
use keygate_billing::{Price, PriceTable};
use keygate_keys::KeyKind;
use keygate_proxy::{ProviderKey, ProviderKind, UpstreamConfig};
use keygate_store::{KeySettings, UsageRecord};
use keygate_test_utils::MockUpstream;
use prometheus_parse::{Sample, Scrape, Value};
use tokio::net::TcpListener;

use crate::harness::{
    GatewayBuilder, PROVIDER_KEY, TestGateway, chat, json_request, post, prefix, request, send,
    stream_frames,
};

const CHAT: &str = "/v1/chat/completions";

fn prices() -> PriceTable {
    PriceTable::from_iter([
        ("gpt-4o", Price::from_credits(2.5, 10.0, None).unwrap()),
        ("gpt-4o-mini", Price::from_credits(0.15, 0.6, None).unwrap()),
    ])
}

fn upstream(name: &str, url: String, priority: i32, models: &[&str]) -> UpstreamConfig {
    UpstreamConfig {
        provider_keys: vec![ProviderKey::new(PROVIDER_KEY.into())],
        priority,
        ..UpstreamConfig::new(
            name,
            &url,
            ProviderKind::OpenAi,
            models.iter().map(|m| (*m).to_owned()).collect(),
        )
    }
}

/// "main" serves `gpt-4o` and any `gpt-4o-2…` snapshot; `gpt-4o-mini` goes
/// to "down" (a closed port) first, then "backup".
async fn gateway(mock: &MockUpstream, per_key: bool) -> GatewayBuilder {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let url = format!("{}/v1", mock.url());
    let upstreams = vec![
        upstream("main", url.clone(), 0, &["gpt-4o", "gpt-4o-2*"]),
        upstream("down", down, 0, &["gpt-4o-mini"]),
        upstream("backup", url, 1, &["gpt-4o-mini"]),
    ];
    TestGateway::builder(mock)
        .billed(prices())
        .billing(|billing| billing.allow_unpriced = true)
        .config(move |config| {
            config.upstreams = upstreams;
            config.listed_models = vec!["gpt-4o-mini".into()];
            config.metrics.per_key = per_key;
        })
}

/// What the traffic below leaves behind: the keys it used.
struct Traffic {
    key: String,
    key_id: String,
    limited_id: String,
    account_id: String,
}

/// The known mix: 3 JSON and 2 streamed chats, 1 chat with a model the
/// config does not name, 3 refused keys, a key past its rpm (1 served, 1
/// refused), 1 failover, 1 `/v1/models`.
async fn run_traffic(gw: &TestGateway) -> Traffic {
    let account = gw.account_with(keygate_store::Micros(1_000_000_000)).await;
    let (key, key_id) = gw
        .key_for(&account, KeySettings::new(KeyKind::Private))
        .await;
    let mut limited = KeySettings::new(KeyKind::Private);
    limited.rpm = Some(1);
    let (limited_key, limited_id) = gw.key_for(&account, limited).await;
    let url = gw.url(CHAT);
    for _ in 0..3 {
        assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let (status, frames) = stream_frames(json_request(&url, &key, &chat("gpt-4o", true))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!frames.is_empty());
    }
    let snapshot = gw.chat(&key, "gpt-4o-2024-08-06").await;
    assert_eq!(snapshot.status, StatusCode::OK);

    let unknown = keygate_keys::SecretKey::generate(&prefix(), KeyKind::Private).unwrap();
    for bad in ["garbage", unknown.expose()] {
        assert_eq!(post(&url, bad, &chat("gpt-4o", false)).await.status, 401);
    }
    let missing = send(request(
        Method::POST,
        &url,
        &[],
        chat("gpt-4o", false).to_string(),
    ))
    .await;
    assert_eq!(missing.status, 401);

    assert_eq!(gw.chat(&limited_key, "gpt-4o").await.status, StatusCode::OK);
    assert_eq!(gw.chat(&limited_key, "gpt-4o").await.status, 429);

    assert_eq!(gw.chat(&key, "gpt-4o-mini").await.status, StatusCode::OK);

    let models = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &format!("Bearer {key}"))],
        "",
    ))
    .await;
    assert_eq!(models.status, StatusCode::OK);
    Traffic {
        key,
        key_id: key_id.as_str().to_owned(),
        limited_id: limited_id.as_str().to_owned(),
        account_id: account.as_str().to_owned(),
    }
}

/// The exposition, and the parsed scrape.
async fn scrape(gw: &TestGateway) -> (String, Scrape) {
    let reply = send(request(Method::GET, &gw.url("/metrics"), &[], "")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = reply.text();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert!(!text.contains(".."), "one period after each help text");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = Scrape::parse(lines).expect("the exposition parses");
    (text, parsed)
}

/// Every sample of `name` as (labels, value), labels sorted.
fn samples(scrape: &Scrape, name: &str) -> BTreeMap<Vec<(String, String)>, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s: &Sample| {
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            };
            (labels, value)
        })
        .collect()
}

/// The value of `name` with exactly `labels` (0 when absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    samples(scrape, name).get(&want).copied().unwrap_or(0.0)
}

/// The sum over every series of `name`.
fn total(scrape: &Scrape, name: &str) -> f64 {
    samples(scrape, name).values().sum()
}

/// The `_count` of a histogram family for `route`, from its text (the
/// parser folds buckets; the count line is the plain one).
fn histogram_count(text: &str, name: &str, route: &str) -> u64 {
    let line = format!("{name}_count{{route=\"{route}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.parse().unwrap())
}

fn sum_by_model(records: &[UsageRecord], model: &str, f: impl Fn(&UsageRecord) -> u64) -> f64 {
    records
        .iter()
        .filter(|r| r.model == model)
        .map(f)
        .sum::<u64>() as f64
}

#[tokio::test]
async fn a_known_mix_of_traffic_is_counted_exactly() {
    let mock = MockUpstream::start().await;
    mock.set_cached_tokens(3);
    let gw = gateway(&mock, false).await.start().await;
    let traffic = run_traffic(&gw).await;
    // 3 + 2 + 1 on main, 1 for the limited key, 1 through the failover.
    let records = gw.records(8).await;
    assert_eq!(records.len(), 8);
    let (text, m) = scrape(&gw).await;

    let requests = "keygate_requests_total";
    let chat200 = |upstream| {
        value(
            &m,
            requests,
            &[("route", CHAT), ("status", "200"), ("upstream", upstream)],
        )
    };
    assert_eq!(chat200("main"), 7.0);
    assert_eq!(chat200("backup"), 1.0);
    assert_eq!(
        value(
            &m,
            requests,
            &[("route", CHAT), ("status", "401"), ("upstream", "none")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            requests,
            &[("route", CHAT), ("status", "429"), ("upstream", "none")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            requests,
            &[
                ("route", "/v1/models"),
                ("status", "200"),
                ("upstream", "none")
            ]
        ),
        1.0
    );
    assert_eq!(total(&m, requests), 13.0, "{text}");

    // Every chat has a duration; the 8 forwarded ones a first byte.
    assert_eq!(
        histogram_count(&text, "keygate_request_duration_seconds", CHAT),
        12
    );
    assert_eq!(
        histogram_count(&text, "keygate_request_duration_seconds", "/v1/models"),
        1
    );
    assert_eq!(
        histogram_count(&text, "keygate_time_to_first_byte_seconds", CHAT),
        8
    );
    assert_eq!(value(&m, "keygate_in_flight_requests", &[]), 0.0);
    assert_eq!(total(&m, "keygate_responses_incomplete_total"), 0.0);

    // Tokens and cost agree with the usage records, by model; the snapshot
    // model the config does not name is "other".
    for (model, label) in [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "other"),
    ] {
        let tokens = |direction| {
            value(
                &m,
                "keygate_tokens_total",
                &[("model", label), ("direction", direction)],
            )
        };
        let input = sum_by_model(&records, model, |r| r.input_tokens);
        assert!(input > 0.0, "{model} has input tokens");
        assert_eq!(tokens("input"), input, "{model} input");
        assert_eq!(
            tokens("output"),
            sum_by_model(&records, model, |r| r.output_tokens),
            "{model} output"
        );
        assert_eq!(
            tokens("cached_input"),
            sum_by_model(&records, model, |r| r.cached_tokens),
            "{model} cached"
        );
        let cost = sum_by_model(&records, model, |r| u64::try_from(r.cost.0).unwrap());
        assert_eq!(
            value(&m, "keygate_cost_micros_total", &[("model", label)]),
            cost,
            "{model} cost"
        );
    }
    assert!(value(&m, "keygate_cost_micros_total", &[("model", "gpt-4o")]) > 0.0);
    assert_eq!(
        value(&m, "keygate_cost_micros_total", &[("model", "other")]),
        0.0,
        "unpriced"
    );

    // Upstream attempts: the failover's refused connection, then the backup.
    let attempts = |upstream, outcome| {
        value(
            &m,
            "keygate_upstream_attempts_total",
            &[("upstream", upstream), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("main", "answered"), 7.0);
    assert_eq!(attempts("down", "connect_error"), 1.0);
    assert_eq!(attempts("backup", "answered"), 1.0);
    assert_eq!(total(&m, "keygate_upstream_attempts_total"), 9.0);
    assert_eq!(value(&m, "keygate_upstream_retries_total", &[]), 1.0);
    for upstream in ["main", "down", "backup"] {
        let state = value(
            &m,
            "keygate_upstream_breaker_state",
            &[("upstream", upstream)],
        );
        assert_eq!(
            state, 0.0,
            "{upstream}: one failure leaves the breaker closed"
        );
        assert_eq!(
            value(&m, "keygate_upstream_up", &[("upstream", upstream)]),
            1.0
        );
    }

    assert_eq!(
        value(
            &m,
            "keygate_auth_failures_total",
            &[("reason", "invalid_api_key")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "keygate_auth_failures_total",
            &[("reason", "missing_api_key")]
        ),
        1.0
    );
    assert_eq!(total(&m, "keygate_auth_failures_total"), 3.0);
    assert_eq!(
        value(&m, "keygate_rate_limited_total", &[("limit", "requests")]),
        1.0
    );
    assert_eq!(total(&m, "keygate_rate_limited_total"), 1.0);

    assert_eq!(total(&m, "keygate_store_errors_total"), 0.0);
    assert_eq!(value(&m, "keygate_usage_records_written_total", &[]), 8.0);
    assert_eq!(value(&m, "keygate_usage_records_dropped_total", &[]), 0.0);
    assert_eq!(
        value(&m, "keygate_billed_requests_total", &[]),
        7.0,
        "the unpriced one holds nothing"
    );
    assert!(value(&m, "keygate_open_connections", &[]) >= 0.0);

    // No key, key id or account id anywhere, and no per-key family.
    for secret in [
        &traffic.key,
        &traffic.key_id,
        &traffic.limited_id,
        &traffic.account_id,
    ] {
        assert!(!text.contains(secret.as_str()), "{secret} is in /metrics");
    }
    assert!(
        !text.contains("keygate_key_"),
        "per-key families are off by default"
    );
}

#[tokio::test]
async fn per_key_adds_the_key_families() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, true).await.start().await;
    let traffic = run_traffic(&gw).await;
    let records = gw.records(8).await;
    let (text, m) = scrape(&gw).await;
    let key = [
        ("key_id", traffic.key_id.as_str()),
        ("account_id", traffic.account_id.as_str()),
    ];
    let limited = [
        ("key_id", traffic.limited_id.as_str()),
        ("account_id", traffic.account_id.as_str()),
    ];
    // 3 + 2 + 1 + 1 chats and /v1/models; the limited key's 200 and 429.
    assert_eq!(value(&m, "keygate_key_requests_total", &key), 8.0);
    assert_eq!(value(&m, "keygate_key_requests_total", &limited), 2.0);
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.key_id.as_str() == traffic.key_id)
        .collect();
    let input: u64 = mine.iter().map(|r| r.input_tokens).sum();
    let mut with_direction = key.to_vec();
    with_direction.push(("direction", "input"));
    assert_eq!(
        value(&m, "keygate_key_tokens_total", &with_direction),
        input as f64
    );
    let cost: i64 = mine.iter().map(|r| r.cost.0).sum();
    assert_eq!(
        value(&m, "keygate_key_cost_micros_total", &key),
        cost as f64
    );
    assert!(!text.contains(traffic.key.as_str()), "never the key itself");
}

#[tokio::test]
async fn metrics_off_records_nothing_and_hides_the_route() {
    let mock = MockUpstream::start().await;
    let gw = TestGateway::builder(&mock)
        .config(|config| config.metrics.enabled = false)
        .start()
        .await;
    let key = gw.key().await;
    assert_eq!(gw.chat(&key, "gpt-4o").await.status, StatusCode::OK);
    let reply = send(request(Method::GET, &gw.url("/metrics"), &[], "")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code(), "unknown_route");
}
