//! The body probe: `BillingInputs::read` on arbitrary bytes.
//!
//! Properties: no panic; a body it reads is UTF-8; when it reads a body that
//! serde_json also parses, it agrees with serde_json on `model`, `stream`, `n`
//! and the output cap (it refuses duplicates, so there is one value to agree
//! on).
#![no_main]

use keygate_billing::BillingInputs;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(inputs) = BillingInputs::read(data) else {
        return;
    };
    assert!(std::str::from_utf8(data).is_ok());
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    assert_eq!(inputs.model.as_deref(), body.get("model").and_then(Value::as_str));
    assert_eq!(inputs.stream, body.get("stream").and_then(Value::as_bool).unwrap_or(false));
    assert_eq!(inputs.n, body.get("n").and_then(Value::as_u64).unwrap_or(1));
    let cap = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .filter_map(|field| body.get(*field).and_then(Value::as_u64))
        .max();
    assert_eq!(inputs.output_cap, cap);
});
