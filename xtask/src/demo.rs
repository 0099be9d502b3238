//! `demo`: an offline round trip through the real gateway, run by `cargo xtask demo`.
//!
//! It builds `keygate` and `keygate-admin`, starts a mock provider inside this
//! process, starts the gateway against it with a throwaway SQLite database, and
//! walks through a key's life: chat, streaming, refusals, what the provider saw,
//! the gateway's overhead, revocation and a graceful shutdown. It needs no network
//! and no API keys, and exits 1 if any step does not behave as expected.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_test_utils::{
    GatewayProcess, MOCK_ANTHROPIC_KEY_ENV, MOCK_OPENAI_KEY_ENV, MockUpstream, admin,
    write_mock_config,
};
use serde_json::{Value, json};

/// What `cargo xtask demo` was asked to do.
#[derive(Debug)]
pub(crate) struct Options {
    /// Sequential requests per side in the overhead measurement; 0 skips it.
    pub(crate) requests: usize,
}

impl Options {
    /// Parses the arguments after `demo`: `[--requests N]`.
    pub(crate) fn parse(args: &[String]) -> Result<Options> {
        let mut options = Options {
            requests: DEFAULT_REQUESTS,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let value = match arg.strip_prefix("--requests") {
                Some("") => args.next().map(String::as_str),
                Some(rest) => rest.strip_prefix('='),
                None => bail!("unknown argument {arg:?} (usage: cargo xtask demo [--requests N])"),
            };
            let value = value.context("--requests needs a number")?;
            options.requests = value
                .parse()
                .with_context(|| format!("--requests: {value:?} is not a number"))?;
        }
        Ok(options)
    }
}

/// Runs the demo; `Ok(false)` when a step misbehaved (already reported).
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    build_binaries(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(Demo::default().run(options))
}

/// The provider key the gateway holds; clients never see it.
const PROVIDER_KEY: &str = "sk-demo-provider-key";
/// The Anthropic upstream's key (configured, not used by the demo's requests).
const ANTHROPIC_KEY: &str = "sk-ant-demo";
/// The gateway's environment: where its provider keys come from.
const GATEWAY_ENV: [(&str, &str); 2] = [
    (MOCK_OPENAI_KEY_ENV, PROVIDER_KEY),
    (MOCK_ANTHROPIC_KEY_ENV, ANTHROPIC_KEY),
];
/// The mock provider's default answer.
const REPLY: &str = "The quick brown fox jumps over the lazy dog.";
const MODEL: &str = "gpt-4o-mini";
const DEFAULT_REQUESTS: usize = 500;
/// Untimed requests before each measurement, to open the connection.
const WARM_UP: usize = 20;
/// A revocation must reach the gateway within this long.
const REVOCATION_LIMIT: Duration = Duration::from_secs(1);

/// Variables `cargo run` sets for the binary it runs (besides `CARGO_PKG_*`).
const CARGO_RUN_VARS: [&str; 5] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the two binaries next to this one, where `workspace_binary` looks.
fn build_binaries(root: &Path) -> Result<()> {
    println!("1. Building keygate and keygate-admin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(&cargo);
    command
        .current_dir(root)
        .args(["build", "--bin", "keygate", "--bin", "keygate-admin"]);
    // `cargo run` gave this process its package's variables. Passed on, they
    // change build-script fingerprints (ring reruns on CARGO_MANIFEST_DIR), so
    // every demo and every later plain `cargo build` would rebuild half the tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || CARGO_RUN_VARS.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    let release = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .is_some_and(|dir| dir.ends_with("release"));
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {cargo} build"))?;
    if !status.success() {
        bail!("cargo build --bin keygate --bin keygate-admin failed ({status})");
    }
    Ok(())
}

/// The demo's progress: the current step and what went wrong so far.
#[derive(Debug, Default)]
struct Demo {
    step: u32,
    failures: Vec<String>,
}

impl Demo {
    fn step(&mut self, title: &str) {
        // Step 1 (building) ran before the demo started.
        self.step = self.step.max(1) + 1;
        println!("\n{}. {title}", self.step);
    }

    /// Records a failure unless `ok`; returns `ok`.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            let what = what();
            println!("   ✗ {what}");
            self.failures.push(format!("step {}: {what}", self.step));
        }
        ok
    }

    async fn run(mut self, options: &Options) -> Result<bool> {
        self.step("Starting a mock provider (in this process)");
        let mock = MockUpstream::start().await;
        // Slow the stream down a little so its chunks arrive visibly apart.
        mock.set_chunk_delay(Duration::from_millis(40));
        // The mock answers only requests carrying the provider key, so every
        // successful request below proves the gateway swapped the keys.
        mock.require_key(PROVIDER_KEY);
        println!("   mock OpenAI + Anthropic API at {}/v1", mock.url());
        println!(
            "   it accepts only the provider key {}",
            redact(PROVIDER_KEY, 7)
        );

        self.step("Starting the gateway");
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let database_url = format!("sqlite://{}", dir.path().join("keygate.db").display());
        let config = write_mock_config(dir.path(), &mock.url(), &database_url)
            .context("cannot write keygate.toml")?;
        let text = std::fs::read_to_string(&config)?;
        println!("   keygate.toml:");
        for line in text.lines() {
            println!("   │ {line}");
        }
        let mut gateway = start_gateway(config).await?;
        let base = gateway.base_url.clone();
        println!("   listening on {base} (database migrated at start)");

        self.step("Creating an account and an API key with keygate-admin");
        let (key, key_id, account_id) = self.create_key(&database_url).await?;

        let client = http_client();
        self.chat(&client, &base, &key).await?;
        self.stream(&client, &base, &key).await?;
        self.models(&client, &base, &key).await?;
        self.refusals(&client, &base).await?;
        if options.requests > 0 {
            self.overhead(&base, &key, &mock, options.requests).await?;
        }
        let answered = 2 + options.requests;
        self.billing(&database_url, &account_id, answered).await?;
        self.revoke(&client, &base, &key, &key_id, &database_url)
            .await?;
        self.provider_view(&mock, &key);
        self.shutdown(&mut gateway).await;

        println!();
        if self.failures.is_empty() {
            println!("All steps behaved as expected. The temporary database is deleted now.");
            println!("Next: write your own keygate.toml and run `keygate --config keygate.toml`.");
            Ok(true)
        } else {
            println!("The demo found {} problem(s):", self.failures.len());
            for failure in &self.failures {
                println!("  - {failure}");
            }
            Ok(false)
        }
    }

    async fn create_key(&mut self, database_url: &str) -> Result<(String, String, String)> {
        let account = admin_json(
            database_url,
            &["account", "create", "--name", "demo", "--balance", "10"],
        )
        .await?;
        let account_id = json_str(&account, "id")?;
        println!("   $ keygate-admin account create --name demo --balance 10");
        println!("     account {account_id}, balance 10 credits");
        let key = admin_json(
            database_url,
            &[
                "key",
                "create",
                "--account",
                &account_id,
                "--name",
                "demo-key",
            ],
        )
        .await?;
        let secret = json_str(&key, "key")?;
        let key_id = json_str(&key, "id")?;
        println!("   $ keygate-admin key create --account {account_id} --name demo-key");
        println!(
            "     key {key_id}: {}  (redacted here; keygate-admin prints the full key once,",
            redact(&secret, 10)
        );
        println!("     and keygate stores only its hash)");
        Ok((secret, key_id, account_id))
    }

    /// What the answered requests cost, from the usage records and the balance.
    async fn billing(
        &mut self,
        database_url: &str,
        account_id: &str,
        answered: usize,
    ) -> Result<()> {
        self.step("What it cost: the account's balance and the usage report");
        // Usage records are written in batches, and a key's charges reach the
        // balance when its lease is settled: both within about a second.
        let mut report = Value::Null;
        let mut account = Value::Null;
        for _ in 0..50 {
            report =
                admin_json(database_url, &["usage", "report", "--account", account_id]).await?;
            account = admin_json(database_url, &["account", "show", account_id]).await?;
            let charged = 10_000_000 - account["balance_micros"].as_i64().unwrap_or_default();
            if report["total"]["requests"].as_u64() >= Some(answered as u64)
                && report["total"]["cost_micros"].as_i64() == Some(charged)
                && account["reserved_micros"].as_i64() == Some(0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("   $ keygate-admin usage report --account {account_id}");
        for row in report["rows"].as_array().into_iter().flatten() {
            println!(
                "     {:<12} {:>5} requests  {:>7} input + {:>7} output tokens  {:>8} micro-credits",
                row["group"].as_str().unwrap_or("?"),
                row["requests"],
                row["input_tokens"],
                row["output_tokens"],
                row["cost_micros"]
            );
        }
        let balance = account["balance_micros"].as_i64().unwrap_or_default();
        let reserved = account["reserved_micros"].as_i64().unwrap_or_default();
        let cost = report["total"]["cost_micros"].as_i64().unwrap_or_default();
        println!("   $ keygate-admin account show {account_id}");
        println!("     balance {balance} micro-credits (10 credits - {cost}), reserved {reserved}");
        // The overhead step also sends a few warm-up requests.
        self.check(
            report["total"]["requests"].as_u64() >= Some(answered as u64),
            || {
                format!(
                    "expected {answered} usage records, the report has {}",
                    report["total"]["requests"]
                )
            },
        );
        self.check(cost > 0 && balance == 10_000_000 - cost, || {
            format!("the balance {balance} is not 10 credits minus the cost {cost}")
        });
        self.check(reserved == 0, || {
            format!("{reserved} micro-credits still reserved")
        });
        Ok(())
    }

    async fn chat(&mut self, client: &HttpClient, base: &str, key: &str) -> Result<()> {
        self.step("A chat completion through the gateway");
        println!(
            "   POST {base}/v1/chat/completions  (model {MODEL}, Authorization: Bearer <key>)"
        );
        let request = build(
            Method::POST,
            &format!("{base}/v1/chat/completions"),
            Some(key),
            Some(&chat_body(false)),
        )?;
        let (status, body) = call(client, request).await?;
        let content = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        println!("   {status}  assistant: {content:?}");
        if let Some(usage) = body.get("usage") {
            println!(
                "   usage: {} prompt + {} completion tokens",
                usage["prompt_tokens"], usage["completion_tokens"]
            );
        }
        self.check(status == StatusCode::OK, || {
            format!("chat completion: expected 200, got {status}: {body}")
        });
        self.check(content == REPLY, || {
            format!("chat completion: expected {REPLY:?}, got {content:?}")
        });
        Ok(())
    }

    async fn stream(&mut self, client: &HttpClient, base: &str, key: &str) -> Result<()> {
        self.step("A streamed chat completion (\"stream\": true), chunks as they arrive");
        let request = build(
            Method::POST,
            &format!("{base}/v1/chat/completions"),
            Some(key),
            Some(&chat_body(true)),
        )?;
        let started = Instant::now();
        let response = client
            .request(request)
            .await
            .context("streamed request failed")?;
        let status = response.status();
        println!(
            "   {status} after {} ms, then:",
            started.elapsed().as_millis()
        );
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        let mut text = String::new();
        let mut done = false;
        let mut stdout = std::io::stdout();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the stream broke off")?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                let event = String::from_utf8_lossy(&event);
                for line in event.lines() {
                    let Some(data) = line.strip_prefix("data:") else {
                        continue;
                    };
                    let data = data.trim();
                    if data == "[DONE]" {
                        done = true;
                        println!("   +{:>4} ms  [DONE]", started.elapsed().as_millis());
                        continue;
                    }
                    let chunk: Value = serde_json::from_str(data)
                        .with_context(|| format!("not a JSON chunk: {data}"))?;
                    let piece = chunk["choices"][0]["delta"]["content"]
                        .as_str()
                        .unwrap_or_default();
                    if !piece.is_empty() {
                        text.push_str(piece);
                        println!("   +{:>4} ms  {piece:?}", started.elapsed().as_millis());
                        stdout.flush()?;
                    }
                }
            }
        }
        println!("   assembled: {text:?}");
        self.check(status == StatusCode::OK, || {
            format!("stream: expected 200, got {status}")
        });
        self.check(text == REPLY, || {
            format!("stream: expected {REPLY:?}, got {text:?}")
        });
        self.check(done, || "stream: no final `data: [DONE]`".to_owned());
        Ok(())
    }

    async fn models(&mut self, client: &HttpClient, base: &str, key: &str) -> Result<()> {
        self.step("The models this key may use");
        let request = build(Method::GET, &format!("{base}/v1/models"), Some(key), None)?;
        let (status, body) = call(client, request).await?;
        let ids: Vec<&str> = body["data"]
            .as_array()
            .map(|models| models.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        println!("   GET /v1/models → {status}: {}", ids.join(", "));
        self.check(status == StatusCode::OK, || {
            format!("models: expected 200, got {status}: {body}")
        });
        self.check(ids.contains(&MODEL), || {
            format!("models: {MODEL} is not listed")
        });
        Ok(())
    }

    async fn refusals(&mut self, client: &HttpClient, base: &str) -> Result<()> {
        self.step("Requests the gateway refuses");
        let url = format!("{base}/v1/chat/completions");
        let cases = [
            ("no key", None, "missing_api_key"),
            (
                "a made-up key",
                Some("kg_sk_madeupmadeupmadeupmadeup"),
                "invalid_api_key",
            ),
        ];
        for (what, key, expected) in cases {
            let request = build(Method::POST, &url, key, Some(&chat_body(false)))?;
            let (status, body) = call(client, request).await?;
            let code = error_code(&body);
            println!("   {what:<14} → {status}  code {code}");
            self.check(
                status == StatusCode::UNAUTHORIZED && code == expected,
                || format!("{what}: expected 401 {expected}, got {status} {body}"),
            );
        }
        Ok(())
    }

    async fn overhead(
        &mut self,
        base: &str,
        key: &str,
        mock: &MockUpstream,
        requests: usize,
    ) -> Result<()> {
        self.step(&format!(
            "The gateway's overhead: {requests} sequential requests over one keep-alive connection"
        ));
        let through = measure(&format!("{base}/v1/chat/completions"), key, requests).await?;
        let direct = measure(
            &format!("{}/v1/chat/completions", mock.url()),
            PROVIDER_KEY,
            requests,
        )
        .await?;
        for (label, m) in [("through keygate", &through), ("direct to mock", &direct)] {
            println!(
                "   {label:<16} {requests} requests in {:>6.2} s  {:>7.0} req/s  mean {:>6.0} µs",
                m.total.as_secs_f64(),
                m.per_second(requests),
                m.mean_micros(requests)
            );
        }
        let added = through.mean_micros(requests) - direct.mean_micros(requests);
        println!(
            "   ratio (keygate / direct): {:.2}×   added latency: {added:.0} µs per request",
            through.per_second(requests) / direct.per_second(requests)
        );
        if cfg!(debug_assertions) {
            println!(
                "   (debug build; `cargo run --release -p xtask -- demo` measures release builds)"
            );
        }
        self.check(through.failures == 0, || {
            format!(
                "{} of {requests} requests through keygate failed",
                through.failures
            )
        });
        self.check(direct.failures == 0, || {
            format!(
                "{} of {requests} requests to the mock failed",
                direct.failures
            )
        });
        Ok(())
    }

    async fn revoke(
        &mut self,
        client: &HttpClient,
        base: &str,
        key: &str,
        key_id: &str,
        database_url: &str,
    ) -> Result<()> {
        self.step("Revoking the key while the gateway runs");
        let output = admin(database_url, &["key", "revoke", key_id]).await;
        if !output.success {
            bail!("keygate-admin key revoke failed: {}", output.stderr.trim());
        }
        println!("   $ keygate-admin key revoke {key_id}");
        let url = format!("{base}/v1/chat/completions");
        let since = Instant::now();
        let mut served = 0;
        loop {
            let request = build(Method::POST, &url, Some(key), Some(&chat_body(false)))?;
            let (status, body) = call(client, request).await?;
            let elapsed = since.elapsed();
            if status == StatusCode::UNAUTHORIZED {
                let code = error_code(&body);
                println!(
                    "   401 {code} after {} ms ({served} request(s) still served meanwhile; polled every 50 ms)",
                    elapsed.as_millis()
                );
                self.check(code == "api_key_revoked", || {
                    format!("revocation: expected api_key_revoked, got {body}")
                });
                self.check(elapsed <= REVOCATION_LIMIT, || {
                    format!(
                        "revocation took {} ms, more than a second",
                        elapsed.as_millis()
                    )
                });
                return Ok(());
            }
            if !self.check(status == StatusCode::OK, || {
                format!("revocation: expected 200 or 401, got {status}: {body}")
            }) {
                return Ok(());
            }
            served += 1;
            if elapsed > REVOCATION_LIMIT * 3 {
                self.check(false, || {
                    format!(
                        "the revoked key still worked after {} ms",
                        elapsed.as_millis()
                    )
                });
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn provider_view(&mut self, mock: &MockUpstream, key: &str) {
        self.step("What the provider saw");
        let requests = mock.requests();
        let Some(first) = requests.first() else {
            self.check(false, || "the mock received no requests".to_owned());
            return;
        };
        let authorization = first
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)");
        let shown = match authorization.strip_prefix("Bearer ") {
            Some(token) => format!("Bearer {}", redact(token, 7)),
            None => redact(authorization, 7),
        };
        let names: Vec<&str> = first.headers.keys().map(|name| name.as_str()).collect();
        println!(
            "   first request: {} {} over {:?}",
            first.method, first.path, first.version
        );
        println!("   headers: {}", names.join(", "));
        println!("   authorization: {shown}  (the gateway's provider key)");
        self.check(authorization == format!("Bearer {PROVIDER_KEY}"), || {
            format!("the upstream got authorization {shown:?}, not the provider key")
        });
        let forwarded = requests.iter().any(|r| {
            r.headers
                .values()
                .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(key))
                || r.query.as_deref().is_some_and(|q| q.contains(key))
                || String::from_utf8_lossy(&r.body).contains(key)
        });
        println!(
            "   client key forwarded upstream: {}  (checked all {} requests: headers, queries, bodies)",
            if forwarded { "YES" } else { "no" },
            requests.len()
        );
        self.check(!forwarded, || {
            "the client's key reached the upstream".to_owned()
        });
    }

    async fn shutdown(&mut self, gateway: &mut GatewayProcess) {
        self.step("Stopping the gateway with SIGTERM");
        let since = Instant::now();
        gateway.terminate();
        let status = gateway.wait(Duration::from_secs(15)).await;
        match status {
            Some(status) => println!(
                "   exited ({status}) {} ms after SIGTERM",
                since.elapsed().as_millis()
            ),
            None => println!("   still running 15 s after SIGTERM"),
        }
        self.check(status.is_some_and(|s| s.success()), || {
            format!("expected exit status 0, got {status:?}")
        });
        // The log is read by a task; give it a moment to catch the last lines.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !gateway.log().contains("shut down cleanly") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = gateway.log();
        let clean = log.contains("shut down cleanly");
        if clean {
            println!("   log: \"shut down cleanly\"");
        }
        self.check(clean, || {
            "the gateway's log does not say \"shut down cleanly\"".to_owned()
        });

        self.step("The gateway's request log: metadata only, never prompts or replies");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("keygate::request"))
            .collect();
        for line in lines.iter().take(5) {
            println!("   {}", line.trim());
        }
        if lines.len() > 5 {
            println!("   … and {} more like these", lines.len() - 5);
        }
        self.check(!lines.is_empty(), || {
            "the gateway logged no request lines".to_owned()
        });
        self.check(!log.contains(REPLY), || {
            "the gateway's log contains the reply text".to_owned()
        });
    }
}

/// Starts the gateway. `GatewayProcess::start` panics when the gateway does not
/// come up; running it as a task turns that into an error (the panic message,
/// with the gateway's log, is printed above it).
async fn start_gateway(config: PathBuf) -> Result<GatewayProcess> {
    tokio::spawn(async move { GatewayProcess::start(&config, &GATEWAY_ENV).await })
        .await
        .map_err(|_| anyhow!("the gateway did not start (see above)"))
}

/// Runs `keygate-admin --json ARGS…` and parses its JSON document.
pub(crate) async fn admin_json(database_url: &str, args: &[&str]) -> Result<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = admin(database_url, &all).await;
    if !output.success {
        bail!(
            "keygate-admin {} failed: {}",
            args.join(" "),
            output.stderr.trim()
        );
    }
    serde_json::from_str(&output.stdout)
        .with_context(|| format!("keygate-admin printed no JSON: {}", output.stdout))
}

/// A string field of a JSON document, or an error naming it.
pub(crate) fn json_str(value: &Value, field: &str) -> Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {field:?} in {value}"))
}

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say something about a fox."}],
    })
}

fn build(
    method: Method,
    url: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(key) = key {
        builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    let body = match body {
        Some(body) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    Ok(builder.body(Full::new(body))?)
}

/// Sends `request` and reads the whole response as JSON (`Null` if it is not).
async fn call(client: &HttpClient, request: Request<Full<Bytes>>) -> Result<(StatusCode, Value)> {
    let uri = request.uri().clone();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("request to {uri} failed"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the response from {uri} failed"))?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("(none)")
}

/// The first `keep` characters and an ellipsis.
fn redact(secret: &str, keep: usize) -> String {
    let head: String = secret.chars().take(keep).collect();
    format!("{head}…")
}

/// One side of the overhead measurement.
#[derive(Debug)]
struct Measured {
    total: Duration,
    failures: usize,
}

impl Measured {
    fn per_second(&self, requests: usize) -> f64 {
        requests as f64 / self.total.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn mean_micros(&self, requests: usize) -> f64 {
        self.total.as_secs_f64() * 1e6 / requests.max(1) as f64
    }
}

/// Sends `requests` non-streaming chat completions to `url` one after another on
/// a fresh client, which keeps its one connection alive between them.
async fn measure(url: &str, key: &str, requests: usize) -> Result<Measured> {
    let client = http_client();
    let body = chat_body(false);
    for _ in 0..WARM_UP {
        call(&client, build(Method::POST, url, Some(key), Some(&body))?).await?;
    }
    let mut failures = 0;
    let started = Instant::now();
    for _ in 0..requests {
        let (status, _) = call(&client, build(Method::POST, url, Some(key), Some(&body))?).await?;
        if status != StatusCode::OK {
            failures += 1;
        }
    }
    Ok(Measured {
        total: started.elapsed(),
        failures,
    })
}
