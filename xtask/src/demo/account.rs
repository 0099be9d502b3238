//! The key's life as `keygate-admin` sees it: an account and a key are
//! created, the answered requests show up in the usage report and the balance,
//! and revoking the key stops the running gateway from accepting it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use http::{Method, StatusCode};
use keygate_test_utils::admin;
use serde_json::Value;

use super::client::{HttpClient, build, call, chat_body, error_code};
use super::progress::{Demo, redact};
use crate::admin_cli::{admin_json, json_str};

/// A revocation must reach the gateway within this long.
const REVOCATION_LIMIT: Duration = Duration::from_secs(1);

/// The key `create_key` made: its secret, its id and its account's id.
pub(super) struct CreatedKey {
    pub(super) secret: String,
    pub(super) key_id: String,
    pub(super) account_id: String,
}

pub(super) async fn create_key(demo: &mut Demo, database_url: &str) -> Result<CreatedKey> {
    demo.step("Creating an account and an API key with keygate-admin");
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
    Ok(CreatedKey {
        secret,
        key_id,
        account_id,
    })
}

/// What the answered requests cost, from the usage records and the balance.
pub(super) async fn billing(
    demo: &mut Demo,
    database_url: &str,
    account_id: &str,
    answered: usize,
) -> Result<()> {
    demo.step("What it cost: the account's balance and the usage report");
    // Usage records are written in batches, and a key's charges reach the
    // balance when its lease is settled: both within about a second.
    let mut report = Value::Null;
    let mut account = Value::Null;
    for _ in 0..50 {
        report = admin_json(database_url, &["usage", "report", "--account", account_id]).await?;
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
    demo.check(
        report["total"]["requests"].as_u64() >= Some(answered as u64),
        || {
            format!(
                "expected {answered} usage records, the report has {}",
                report["total"]["requests"]
            )
        },
    );
    demo.check(cost > 0 && balance == 10_000_000 - cost, || {
        format!("the balance {balance} is not 10 credits minus the cost {cost}")
    });
    demo.check(reserved == 0, || {
        format!("{reserved} micro-credits still reserved")
    });
    Ok(())
}

/// Revokes the key and polls the gateway until it refuses the key.
pub(super) async fn revoke(
    demo: &mut Demo,
    client: &HttpClient,
    base: &str,
    key: &CreatedKey,
    database_url: &str,
) -> Result<()> {
    demo.step("Revoking the key while the gateway runs");
    let key_id = &key.key_id;
    let output = admin(database_url, &["key", "revoke", key_id]).await;
    if !output.success {
        bail!("keygate-admin key revoke failed: {}", output.stderr.trim());
    }
    println!("   $ keygate-admin key revoke {key_id}");
    let url = format!("{base}/v1/chat/completions");
    let since = Instant::now();
    let mut served = 0;
    loop {
        let request = build(
            Method::POST,
            &url,
            Some(&key.secret),
            Some(&chat_body(false)),
        )?;
        let (status, body) = call(client, request).await?;
        let elapsed = since.elapsed();
        if status == StatusCode::UNAUTHORIZED {
            let code = error_code(&body);
            println!(
                "   401 {code} after {} ms ({served} request(s) still served meanwhile; polled every 50 ms)",
                elapsed.as_millis()
            );
            demo.check(code == "api_key_revoked", || {
                format!("revocation: expected api_key_revoked, got {body}")
            });
            demo.check(elapsed <= REVOCATION_LIMIT, || {
                format!(
                    "revocation took {} ms, more than a second",
                    elapsed.as_millis()
                )
            });
            return Ok(());
        }
        if !demo.check(status == StatusCode::OK, || {
            format!("revocation: expected 200 or 401, got {status}: {body}")
        }) {
            return Ok(());
        }
        served += 1;
        if elapsed > REVOCATION_LIMIT * 3 {
            demo.check(false, || {
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
