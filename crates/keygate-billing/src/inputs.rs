//! The fields of a request body that decide what keygate routes and reserves,
//! read strictly in one pass over the top-level JSON object.
//!
//! keygate routes on `model`, reads usage the way `stream` says, and bounds the
//! cost by the output caps (`max_tokens`, `max_completion_tokens`,
//! `max_output_tokens`) times `n`. If keygate read one value of such a field and
//! the upstream another (a key given twice, a cap written as a string or a float
//! the upstream rounds), the request would be billed for less than it asks for.
//! So each of these fields, when present, must be well-formed: given once at the
//! top level, of the right type, and in range. Everything else in the body is
//! skipped without being built; nested objects may use the same key names freely.
//!
//! Errors name the field and never carry any of the body's text.

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Largest `n` (choices or images per request) accepted.
pub const MAX_N: u64 = 128;

/// Largest output cap (`max_tokens`, `max_completion_tokens`,
/// `max_output_tokens`) accepted.
pub const MAX_OUTPUT_CAP: u64 = u32::MAX as u64;

/// The fields keygate reads from a JSON request body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BillingInputs {
    /// `model`; `None` when absent or `null`.
    pub model: Option<String>,
    /// `stream`; `false` when absent or `null`.
    pub stream: bool,
    /// The largest of `max_tokens`, `max_completion_tokens` and
    /// `max_output_tokens`; `None` when the body sets none.
    pub output_cap: Option<u64>,
    /// `n`, between 1 and [`MAX_N`]; 1 when absent or `null`.
    pub n: u64,
}

/// Why a request body cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body does not start with `{`.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// The body is not valid JSON; the position of the first error.
    #[error("the request body is not valid JSON (line {line}, column {column})")]
    NotJson {
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// A field keygate reads is malformed.
    #[error(transparent)]
    Input(#[from] InputError),
}

/// A malformed field keygate reads, named by its parameter. Never carries the
/// value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{param}' {reason}")]
pub struct InputError {
    /// The parameter, as the API names it (`max_tokens`, `stream_options.include_usage`).
    pub param: &'static str,
    /// What is wrong with it.
    pub reason: InputReason,
}

/// What is wrong with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputReason {
    /// The key appears more than once in the same object.
    #[error("is given more than once")]
    Duplicate,
    /// Not a whole number written with digits only (a string, a fraction, an
    /// exponent, another type).
    #[error("must be an integer written with digits only")]
    NotInteger,
    /// Below zero.
    #[error("must not be negative")]
    Negative,
    /// Outside the accepted range.
    #[error("must be between {min} and {max}")]
    OutOfRange {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// Not `true` or `false`.
    #[error("must be a boolean")]
    NotBoolean,
    /// Not a string.
    #[error("must be a string")]
    NotString,
    /// Not an object.
    #[error("must be an object")]
    NotObject,
}

impl BillingInputs {
    /// Reads the fields from a JSON object body, in one pass that builds nothing
    /// but them.
    pub fn read(body: &[u8]) -> Result<BillingInputs, BodyError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(BodyError::NotAnObject);
        }
        let mut problem = None;
        let mut de = serde_json::Deserializer::from_slice(body);
        let read = de
            .deserialize_map(TopLevel {
                problem: &mut problem,
            })
            .and_then(|inputs| de.end().map(|()| inputs));
        match (read, problem) {
            (_, Some(problem)) => Err(BodyError::Input(problem)),
            (Ok(inputs), None) => Ok(inputs),
            (Err(e), None) => Err(BodyError::NotJson {
                line: e.line(),
                column: e.column(),
            }),
        }
    }
}

/// Reads `n` from text (a multipart form field): digits only, between 1 and
/// [`MAX_N`].
pub fn parse_n(text: &str) -> Result<u64, InputError> {
    let n = parse_integer("n", text)?;
    in_range("n", n, 1, MAX_N)
}

/// A known top-level key, or any other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    Stream,
    StreamOptions,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    N,
    Other,
}

impl Field {
    const KNOWN: [(&'static str, Field); 7] = [
        ("model", Field::Model),
        ("stream", Field::Stream),
        ("stream_options", Field::StreamOptions),
        ("max_tokens", Field::MaxTokens),
        ("max_completion_tokens", Field::MaxCompletionTokens),
        ("max_output_tokens", Field::MaxOutputTokens),
        ("n", Field::N),
    ];

    fn of(key: &str) -> Field {
        Self::KNOWN
            .iter()
            .find(|(name, _)| *name == key)
            .map_or(Field::Other, |(_, field)| *field)
    }

    fn name(self) -> &'static str {
        Self::KNOWN
            .iter()
            .find(|(_, field)| *field == self)
            .map_or("", |(name, _)| name)
    }

    /// A bit of the set of fields seen so far.
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Reads a key (unescaped) into a [`Field`] without allocating.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Field;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
        Ok(Field::of(key))
    }
}

/// The top-level object. A malformed field is put in `problem` and parsing
/// stops with a placeholder serde error.
struct TopLevel<'p> {
    problem: &'p mut Option<InputError>,
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = BillingInputs;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BillingInputs, A::Error> {
        let mut inputs = BillingInputs {
            n: 1,
            ..BillingInputs::default()
        };
        let mut seen = 0u8;
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            if field == Field::Other {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let param = field.name();
            let read = if seen & field.bit() != 0 {
                Err(InputError {
                    param,
                    reason: InputReason::Duplicate,
                })
            } else {
                seen |= field.bit();
                let raw: &RawValue = map.next_value()?;
                inputs.set(field, raw.get())
            };
            if let Err(error) = read {
                *self.problem = Some(error);
                return Err(de::Error::custom("malformed field"));
            }
        }
        Ok(inputs)
    }
}

impl BillingInputs {
    /// Sets `field` from its raw JSON value; `null` leaves the default.
    fn set(&mut self, field: Field, raw: &str) -> Result<(), InputError> {
        let param = field.name();
        if raw == "null" {
            return Ok(());
        }
        match field {
            Field::Model => self.model = Some(read_string(param, raw)?),
            Field::Stream => self.stream = read_bool(param, raw)?,
            Field::StreamOptions => read_stream_options(raw)?,
            Field::MaxTokens | Field::MaxCompletionTokens | Field::MaxOutputTokens => {
                let cap = read_cap(param, raw)?;
                self.output_cap = self.output_cap.max(Some(cap));
            }
            Field::N => self.n = in_range(param, parse_integer(param, raw)?, 1, MAX_N)?,
            Field::Other => {}
        }
        Ok(())
    }
}

fn read_cap(param: &'static str, raw: &str) -> Result<u64, InputError> {
    let cap = parse_integer(param, raw)?;
    in_range(param, cap, 1, MAX_OUTPUT_CAP)
}

/// A whole number written with digits only, with an optional `-` (accepted
/// only for zero). Larger than `u64` is out of range.
fn parse_integer(param: &'static str, raw: &str) -> Result<u64, InputError> {
    let error = |reason| InputError { param, reason };
    let (negative, digits) = match raw.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, raw),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error(InputReason::NotInteger));
    }
    let all_zero = digits.bytes().all(|b| b == b'0');
    if negative && !all_zero {
        return Err(error(InputReason::Negative));
    }
    digits.parse::<u64>().map_err(|_| {
        error(InputReason::OutOfRange {
            min: 0,
            max: u64::MAX,
        })
    })
}

fn in_range(param: &'static str, value: u64, min: u64, max: u64) -> Result<u64, InputError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(InputError {
            param,
            reason: InputReason::OutOfRange { min, max },
        })
    }
}

fn read_bool(param: &'static str, raw: &str) -> Result<bool, InputError> {
    match raw {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(InputError {
            param,
            reason: InputReason::NotBoolean,
        }),
    }
}

/// A JSON string (already validated by the parser), unescaped.
fn read_string(param: &'static str, raw: &str) -> Result<String, InputError> {
    let not_string = InputError {
        param,
        reason: InputReason::NotString,
    };
    let inner = raw
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or(not_string)?;
    if !inner.contains('\\') {
        return Ok(inner.to_owned());
    }
    serde_json::from_str(raw).map_err(|_| not_string)
}

/// `stream_options`: an object whose `include_usage`, when present, is a
/// boolean given once. Other members are the upstream's business.
fn read_stream_options(raw: &str) -> Result<(), InputError> {
    const PARAM: &str = "stream_options";
    const INCLUDE_USAGE: &str = "stream_options.include_usage";
    if !raw.starts_with('{') {
        return Err(InputError {
            param: PARAM,
            reason: InputReason::NotObject,
        });
    }
    let mut problem = None;
    let mut de = serde_json::Deserializer::from_str(raw);
    let read = de.deserialize_map(StreamOptions {
        problem: &mut problem,
    });
    match (read, problem) {
        (_, Some(problem)) => Err(problem),
        (Ok(()), None) => Ok(()),
        // The parser has read these bytes once already; this cannot happen.
        (Err(_), None) => Err(InputError {
            param: INCLUDE_USAGE,
            reason: InputReason::NotBoolean,
        }),
    }
}

struct StreamOptions<'p> {
    problem: &'p mut Option<InputError>,
}

impl<'de> Visitor<'de> for StreamOptions<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        const INCLUDE_USAGE: &str = "stream_options.include_usage";
        let mut seen = false;
        while let Some(is_include_usage) = map.next_key_seed(IncludeUsageKey)? {
            if !is_include_usage {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let raw: &RawValue = map.next_value()?;
            let reason = if seen {
                Some(InputReason::Duplicate)
            } else if raw.get() == "null" {
                None
            } else {
                read_bool(INCLUDE_USAGE, raw.get()).err().map(|e| e.reason)
            };
            seen = true;
            if let Some(reason) = reason {
                *self.problem = Some(InputError {
                    param: INCLUDE_USAGE,
                    reason,
                });
                return Err(de::Error::custom("malformed field"));
            }
        }
        Ok(())
    }
}

/// Reads a key of `stream_options`: whether it is `include_usage`.
struct IncludeUsageKey;

impl<'de> DeserializeSeed<'de> for IncludeUsageKey {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for IncludeUsageKey {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "include_usage")
    }
}

#[cfg(test)]
mod tests {
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
        let nulls = read(
            r#"{"model":null,"stream":null,"max_tokens":null,"n":null,"stream_options":null}"#,
        )
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
}
