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
        // JSON is UTF-8 (RFC 8259). serde_json checks the strings it reads but
        // skips others unchecked, so a body with invalid UTF-8 in a field
        // keygate does not read would pass here and reach the upstream.
        let body = match std::str::from_utf8(body) {
            Ok(text) => text,
            Err(e) => {
                let (line, column) = position(body, e.valid_up_to());
                return Err(BodyError::NotJson { line, column });
            }
        };
        let mut problem = None;
        let mut de = serde_json::Deserializer::from_str(body);
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

/// The line and column (both from 1, the column in bytes) of byte `at`.
fn position(body: &[u8], at: usize) -> (usize, usize) {
    let before = &body[..at.min(body.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
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
mod tests;
