//! Tests of the strict reader: every malformed shape refused by name, nested
//! keys left alone, well-formed fields read exactly.

use super::*;
use proptest::prelude::*;

const CAPS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

fn read(body: &str) -> Result<BillingInputs, BodyError> {
    BillingInputs::read(body.as_bytes())
}

fn refused(body: &str) -> InputError {
    match read(body) {
        Err(BodyError::Input(error)) => error,
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn reads_the_fields_and_skips_the_rest() {
    let inputs = read(
        r#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true,
            "max_tokens":256,"n":3,"stream_options":{"include_usage":true,"x":[1]}}"#,
    )
    .unwrap();
    assert_eq!(
        inputs,
        BillingInputs {
            model: Some("gpt-4o".into()),
            stream: true,
            output_cap: Some(256),
            n: 3,
        }
    );
    assert_eq!(
        read("{}").unwrap(),
        BillingInputs {
            n: 1,
            ..BillingInputs::default()
        }
    );
    // The largest cap is the one that bounds the output.
    assert_eq!(
        read(r#"{"max_tokens":10,"max_completion_tokens":20,"max_output_tokens":5}"#)
            .unwrap()
            .output_cap,
        Some(20)
    );
    // `null` is the same as absent.
    let nulls =
        read(r#"{"model":null,"stream":null,"max_tokens":null,"n":null,"stream_options":null}"#)
            .unwrap();
    assert_eq!(nulls, read("{}").unwrap());
    // Escaped keys and values are read as the upstream reads them.
    let escaped = read(r#"{"model":"a\"b","max\u005ftokens":7}"#).unwrap();
    assert_eq!(escaped.model.as_deref(), Some("a\"b"));
    assert_eq!(escaped.output_cap, Some(7));
    assert_eq!(
        read(r#"{"max_tokens":-0}"#).unwrap_err().to_string(),
        "'max_tokens' must be between 1 and 4294967295"
    );
}

#[test]
fn nested_keys_of_the_same_name_are_not_duplicates() {
    let inputs = read(
        r#"{"model":"m","max_tokens":5,"messages":[{"model":"x","max_tokens":"big","n":-1}],
            "metadata":{"stream":"yes","max_tokens":1e999,"model":{}},
            "stream_options":{"include_usage":false,"nested":{"include_usage":"x"}}}"#,
    )
    .unwrap();
    assert_eq!(inputs.model.as_deref(), Some("m"));
    assert_eq!(inputs.output_cap, Some(5));
    assert_eq!(inputs.n, 1);
    // An unknown top-level key given twice is the upstream's business.
    assert!(read(r#"{"user":"a","user":"b"}"#).is_ok());
}

#[test]
fn every_malformed_cap_is_refused_by_name() {
    let integer = InputReason::NotInteger;
    let range = InputReason::OutOfRange {
        min: 1,
        max: MAX_OUTPUT_CAP,
    };
    let u64_range = InputReason::OutOfRange {
        min: 0,
        max: u64::MAX,
    };
    for param in CAPS {
        for (value, reason) in [
            (r#""1000000""#, integer),
            ("1000000.0", integer),
            ("1e6", integer),
            ("1E6", integer),
            ("1e999", integer),
            ("-1e999", integer),
            ("-1", InputReason::Negative),
            ("-1.5", integer),
            ("-18446744073709551616", InputReason::Negative),
            ("18446744073709551616", u64_range),
            ("99999999999999999999999", u64_range),
            ("18446744073709551615", range),
            ("4294967296", range),
            ("0", range),
            ("true", integer),
            ("[1000000]", integer),
            (r#"{"value":1}"#, integer),
        ] {
            let body = format!(r#"{{"model":"m","{param}":{value}}}"#);
            assert_eq!(refused(&body), InputError { param, reason }, "{body}");
        }
        let top = read(&format!(r#"{{"{param}":{MAX_OUTPUT_CAP}}}"#)).unwrap();
        assert_eq!(top.output_cap, Some(MAX_OUTPUT_CAP));
    }
}

#[test]
fn duplicates_are_refused_in_either_order() {
    for param in CAPS.into_iter().chain(["n", "model", "stream"]) {
        let value = match param {
            "model" => r#""m""#,
            "stream" => "false",
            _ => "1",
        };
        for body in [
            format!(r#"{{"{param}":{value},"{param}":{value}}}"#),
            format!(r#"{{"{param}":{value}, "x":[], "{param}" : null}}"#),
            format!(r#"{{"{param}":null,"{param}":{value}}}"#),
        ] {
            assert_eq!(
                refused(&body),
                InputError {
                    param,
                    reason: InputReason::Duplicate
                },
                "{body}"
            );
        }
    }
    assert_eq!(
        refused(r#"{"max_tokens":1,"max_tokens":1000000}"#).param,
        "max_tokens"
    );
    assert_eq!(
        refused(r#"{"max_tokens":1000000,"max_tokens":1}"#).param,
        "max_tokens"
    );
    // An escaped spelling is the same key.
    assert_eq!(
        refused(r#"{"max_tokens":1,"max_\u0074okens":1000000}"#).reason,
        InputReason::Duplicate
    );
    assert_eq!(
        refused(r#"{"stream_options":{},"stream_options":{}}"#).reason,
        InputReason::Duplicate
    );
}

#[test]
fn n_stream_model_and_stream_options_are_strict() {
    let n_range = InputReason::OutOfRange { min: 1, max: MAX_N };
    assert_eq!(refused(r#"{"n":0}"#).reason, n_range);
    assert_eq!(refused(r#"{"n":129}"#).reason, n_range);
    assert_eq!(refused(r#"{"n":"3"}"#).reason, InputReason::NotInteger);
    assert_eq!(refused(r#"{"n":3.0}"#).reason, InputReason::NotInteger);
    assert_eq!(read(r#"{"n":128}"#).unwrap().n, 128);
    for stream in [r#""true""#, "1", "{}"] {
        let error = refused(&format!(r#"{{"stream":{stream}}}"#));
        assert_eq!(
            (error.param, error.reason),
            ("stream", InputReason::NotBoolean)
        );
    }
    for model in ["42", "[]", "true"] {
        let error = refused(&format!(r#"{{"model":{model}}}"#));
        assert_eq!(
            (error.param, error.reason),
            ("model", InputReason::NotString)
        );
    }
    for options in [r#""yes""#, "[]", "true"] {
        let error = refused(&format!(r#"{{"stream_options":{options}}}"#));
        assert_eq!(
            (error.param, error.reason),
            ("stream_options", InputReason::NotObject)
        );
    }
    for options in [
        r#"{"include_usage":"true"}"#,
        r#"{"include_usage":1}"#,
        r#"{"include_usage":true,"include_usage":false}"#,
    ] {
        let error = refused(&format!(r#"{{"stream":true,"stream_options":{options}}}"#));
        assert_eq!(error.param, "stream_options.include_usage", "{options}");
    }
}

#[test]
fn bodies_that_are_not_json_objects() {
    for body in ["", "  ", "[1]", "\"x\"", "null", "5"] {
        assert_eq!(read(body), Err(BodyError::NotAnObject), "{body:?}");
    }
    for body in [
        r#"{"model":"m""#,
        r#"{"model":"m"} x"#,
        r#"{"a":tru}"#,
        "{,}",
    ] {
        assert!(
            matches!(read(body), Err(BodyError::NotJson { .. })),
            "{body:?}"
        );
    }
    assert_eq!(
        read("{\n \"max_tokens\": }").unwrap_err(),
        BodyError::NotJson {
            line: 2,
            column: 16
        }
    );
}

#[test]
fn messages_never_carry_the_value() {
    for body in [
        r#"{"max_tokens":"secret"}"#,
        r#"{"model":{"secret":1}}"#,
        r#"{"stream":"secret"}"#,
        r#"{"n":"secret"}"#,
        r#"{"stream_options":"secret"}"#,
        r#"{"stream_options":{"include_usage":"secret"}}"#,
        r#"{"model":"secret","model":"secret"}"#,
        r#"{"secret":tru}"#,
    ] {
        let message = read(body).unwrap_err().to_string();
        assert!(!message.contains("secret"), "{message}");
    }
    assert_eq!(
        refused(r#"{"max_tokens":-5}"#).to_string(),
        "'max_tokens' must not be negative"
    );
}

#[test]
fn parse_n_reads_multipart_text() {
    assert_eq!(parse_n("3"), Ok(3));
    for text in ["0", "129", "-1", "3.0", "1e2", " 3", "", "three"] {
        let error = parse_n(text).unwrap_err();
        assert_eq!(error.param, "n", "{text:?}");
    }
}

/// A value for a cap that is not a whole number in range, as JSON text.
fn malformed_cap() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| format!("\"{n}\"")),
        any::<u64>().prop_map(|n| format!("{n}.0")),
        (1u64..1000, 0u32..400).prop_map(|(m, e)| format!("{m}e{e}")),
        (1u64..=u64::MAX).prop_map(|n| format!("-{n}")),
        (MAX_OUTPUT_CAP + 1..=u64::MAX).prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| format!("{}", u128::from(u64::MAX) + 1 + n / 2)),
        Just("0".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
    ]
}

proptest! {
    #[test]
    fn a_malformed_cap_is_always_refused(
        param in prop::sample::select(&CAPS[..]),
        value in malformed_cap(),
        before in "[a-z]{1,8}",
    ) {
        let body = format!(r#"{{"{before}x":[{{"{param}":1}}],"{param}":{value},"model":"m"}}"#);
        let error = refused(&body);
        prop_assert_eq!(error.param, param);
        prop_assert!(!error.to_string().contains(&value));
    }

    #[test]
    fn a_duplicate_is_refused_whatever_the_values(
        param in prop::sample::select(&CAPS[..]),
        first in 1..=MAX_OUTPUT_CAP,
        second in 1..=MAX_OUTPUT_CAP,
        between in prop::sample::select(&[r#","#, r#","messages":[{"max_tokens":1}],"#, r#","n":2,"#][..]),
    ) {
        let body = format!(r#"{{"{param}":{first}{between}"{param}":{second}}}"#);
        prop_assert_eq!(refused(&body), InputError { param, reason: InputReason::Duplicate });
    }

    #[test]
    fn well_formed_fields_are_read_exactly(
        caps in prop::collection::vec(prop::option::of(1..=MAX_OUTPUT_CAP), 3),
        n in prop::option::of(1..=MAX_N),
        stream in prop::option::of(any::<bool>()),
        model in "[a-zA-Z0-9._\\-\"\\\\]{1,20}",
    ) {
        let mut fields = vec![format!("\"model\":{}", serde_json::Value::String(model.clone()))];
        for (param, cap) in CAPS.iter().zip(&caps) {
            if let Some(cap) = cap {
                fields.push(format!("\"{param}\":{cap}"));
            }
        }
        if let Some(n) = n {
            fields.push(format!("\"n\":{n}"));
        }
        if let Some(stream) = stream {
            fields.push(format!("\"stream\":{stream}"));
        }
        let inputs = read(&format!("{{{}}}", fields.join(","))).unwrap();
        prop_assert_eq!(inputs.model, Some(model));
        prop_assert_eq!(inputs.output_cap, caps.iter().flatten().max().copied());
        prop_assert_eq!(inputs.n, n.unwrap_or(1));
        prop_assert_eq!(inputs.stream, stream.unwrap_or(false));
    }

    #[test]
    fn never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = BillingInputs::read(&body);
    }
}

/// Found by `cargo fuzz` (inject_include_usage): serde_json skips the strings
/// it does not read without checking their UTF-8, so a body with invalid UTF-8
/// in a field keygate ignores was read as JSON and forwarded.
#[test]
fn invalid_utf8_anywhere_is_not_json() {
    let mut body = br#"{"model":"gpt-4o","x":""#.to_vec();
    body.extend_from_slice(&[0xda, 0xda]);
    body.extend_from_slice(b"\"}");
    assert_eq!(
        BillingInputs::read(&body),
        Err(BodyError::NotJson {
            line: 1,
            column: 24
        })
    );
    let mut key = b"{\n\"".to_vec();
    key.extend_from_slice(&[0xff]);
    key.extend_from_slice(br#"":1,"model":"m"}"#);
    assert_eq!(
        BillingInputs::read(&key),
        Err(BodyError::NotJson { line: 2, column: 2 })
    );
}
