//! `inject_include_usage` on arbitrary bytes.
//!
//! Properties: no panic; a rewritten body is a JSON object equal to the
//! original except for `stream_options.include_usage`, which is `true`; a body
//! said to ask for usage already does.
#![no_main]

use keygate_billing::{Injection, inject_include_usage};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    match inject_include_usage(data) {
        Injection::NotStreaming => {}
        Injection::AlreadyAsked => {
            let body: Value = serde_json::from_slice(data).expect("asked: valid JSON");
            assert_eq!(body["stream"], Value::Bool(true));
            assert_eq!(body["stream_options"]["include_usage"], Value::Bool(true));
        }
        Injection::Rewritten(new) => {
            let Ok(Value::Object(mut before)) = serde_json::from_slice::<Value>(data) else {
                panic!("rewrote a body that is not a JSON object");
            };
            let Ok(Value::Object(mut after)) = serde_json::from_slice::<Value>(&new) else {
                panic!("the rewritten body is not a JSON object");
            };
            assert_eq!(before.get("stream"), Some(&Value::Bool(true)));
            let mut options_after = after.remove("stream_options").expect("stream_options");
            let options_before = before.remove("stream_options");
            assert_eq!(
                options_after.get("include_usage"),
                Some(&Value::Bool(true))
            );
            if let (Some(Value::Object(b)), Value::Object(a)) = (options_before, &mut options_after) {
                a.remove("include_usage");
                let mut b = b;
                b.remove("include_usage");
                assert_eq!(&b, a);
            }
            assert_eq!(before, after);
        }
    }
});
