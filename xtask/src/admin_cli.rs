//! `admin_cli`: running `keygate-admin --json` and reading its answers, shared
//! by `cargo xtask demo` and `cargo xtask bench`.

use anyhow::{Context as _, Result, bail};
use keygate_test_utils::admin;
use serde_json::Value;

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
