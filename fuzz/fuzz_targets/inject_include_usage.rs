//! `inject_include_usage` on arbitrary bytes.
//!
//! Properties: no panic; a rewritten body differs from the original in one
//! place only, where `null` or `false` became `true`, or where
//! `"include_usage":true` (or a whole `"stream_options":{…}`) was inserted; it
//! asks for usage; and when serde_json can build the original as a value (it
//! cannot hold numbers past a double's range, which keygate forwards as
//! written), the two are equal but for `stream_options.include_usage`. A body
//! said to ask for usage already does.
#![no_main]

use keygate_billing::{Injection, inject_include_usage};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(serde::Deserialize)]
struct Asks {
    stream: bool,
    stream_options: Options,
}

#[derive(serde::Deserialize)]
struct Options {
    include_usage: bool,
}

fuzz_target!(|data: &[u8]| {
    match inject_include_usage(data) {
        Injection::NotStreaming => {}
        Injection::AlreadyAsked => {
            let asks: Asks = serde_json::from_slice(data).expect("asked: valid JSON");
            assert!(asks.stream && asks.stream_options.include_usage);
        }
        Injection::Rewritten(new) => {
            let asks: Asks = serde_json::from_slice(&new).expect("the rewritten body asks");
            assert!(asks.stream && asks.stream_options.include_usage);
            // One contiguous change.
            let prefix = data.iter().zip(&new).take_while(|(a, b)| a == b).count();
            let room = data.len().min(new.len()) - prefix;
            let suffix = data
                .iter()
                .rev()
                .zip(new.iter().rev())
                .take(room)
                .take_while(|(a, b)| a == b)
                .count();
            let removed = &data[prefix..data.len() - suffix];
            let inserted = &new[prefix..new.len() - suffix];
            assert!(removed.len() <= 5 && removed.iter().all(|b| b"nullfalse".contains(b)));
            let allowed = br#""stream_options":{"include_usage":true},"#;
            assert!(inserted.iter().all(|b| allowed.contains(b)), "{inserted:?}");
            if let Ok(Value::Object(mut before)) = serde_json::from_slice::<Value>(data) {
                let Ok(Value::Object(mut after)) = serde_json::from_slice::<Value>(&new) else {
                    panic!("the rewritten body is not a JSON object");
                };
                let mut options_after = after.remove("stream_options").expect("stream_options");
                if let (Some(Value::Object(mut b)), Value::Object(a)) =
                    (before.remove("stream_options"), &mut options_after)
                {
                    a.remove("include_usage");
                    b.remove("include_usage");
                    assert_eq!(&b, a);
                }
                assert_eq!(before, after);
            }
        }
    }
});
