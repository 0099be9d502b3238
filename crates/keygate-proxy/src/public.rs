//! A public key's request body: only DESIGN's parameters reach the upstream
//! (`model, messages, prompt, temperature, top_p, top_k, seed, tools,
//! reasoning_effort, max_completion_tokens, max_tokens, stream,
//! stream_options`), and the output is capped at `[public_keys]
//! max_output_tokens` (set when the request asks for no limit). The body is
//! rewritten only when something changes; every value kept is copied as the
//! client wrote it, so only the removed members and the caps differ.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ProxyError;
use crate::probe::Probed;

/// The parameters a public key's request may carry.
pub(crate) const ALLOWED_PARAMS: [&str; 13] = [
    "model",
    "messages",
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "tools",
    "reasoning_effort",
    "max_completion_tokens",
    "max_tokens",
    "stream",
    "stream_options",
];

/// The output caps keygate may lower.
const CAPS: [&str; 2] = ["max_tokens", "max_completion_tokens"];

/// The cap set on a request that asks for none.
const CAP_SET_WHEN_ABSENT: &str = "max_completion_tokens";

/// A JSON object's members in order, values as written.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// The body a public key's request is forwarded with, and its demand brought
/// in line: `n` gone is one choice, and the output cap is at most `max_output`.
pub(crate) fn restrict(mut probed: Probed, max_output: Option<u64>) -> Result<Probed, ProxyError> {
    let Members(members) = serde_json::from_slice::<Members<'_>>(&probed.body).map_err(|_| {
        ProxyError::InvalidRequest("the request body must be a JSON object".to_owned())
    })?;
    let mut changed = false;
    let mut kept: Vec<(String, String)> = Vec::with_capacity(members.len());
    let mut has_cap = false;
    for (name, value) in members {
        if !ALLOWED_PARAMS.contains(&name.as_str()) {
            if name == "n" {
                probed.demand.n = 1;
            }
            changed = true;
            continue;
        }
        let mut value = value.get().to_owned();
        if CAPS.contains(&name.as_str()) {
            has_cap = true;
            if let (Some(max), Ok(asked)) = (max_output, value.trim().parse::<u64>())
                && asked > max
            {
                value = max.to_string();
                changed = true;
            }
        }
        kept.push((name, value));
    }
    if let Some(max) = max_output {
        if !has_cap {
            kept.push((CAP_SET_WHEN_ABSENT.to_owned(), max.to_string()));
            changed = true;
        }
        probed.demand.output_cap = Some(probed.demand.output_cap.map_or(max, |c| c.min(max)));
    }
    if changed {
        let mut body = String::with_capacity(probed.body.len());
        body.push('{');
        for (i, (name, value)) in kept.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            // A name is a JSON string; serde_json writes it with its escapes.
            body.push_str(&serde_json::Value::String(name.clone()).to_string());
            body.push(':');
            body.push_str(value);
        }
        body.push('}');
        probed.body = Bytes::from(body);
    }
    Ok(probed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_billing::Demand;

    fn probed(body: &str) -> Probed {
        Probed {
            body: Bytes::from(body.to_owned()),
            model: "gpt-4o-mini".into(),
            stream: false,
            demand: Demand {
                input_tokens: body.len() as u64,
                output_cap: None,
                n: 3,
            },
        }
    }

    #[test]
    fn only_the_listed_parameters_pass() {
        let body = r#"{"model":"gpt-4o-mini", "messages":[{"role":"user","content":"hi \"x\""}],"logit_bias":{"1":5},"user":"u","n":3,"metadata":{"a":"b"},"frequency_penalty":1,"temperature":0.2}"#;
        let out = restrict(probed(body), None).unwrap();
        let text = std::str::from_utf8(&out.body).unwrap();
        assert_eq!(
            text,
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi \"x\""}],"temperature":0.2}"#
        );
        assert_eq!(out.demand.n, 1);
    }

    #[test]
    fn an_allowed_body_is_forwarded_byte_for_byte() {
        let body = "{ \"model\" : \"gpt-4o-mini\",\n \"messages\": [ ],\"max_tokens\": 10 }";
        let out = restrict(probed(body), Some(100)).unwrap();
        assert_eq!(&out.body[..], body.as_bytes());
        assert_eq!(out.demand.output_cap, Some(100));
    }

    #[test]
    fn the_output_cap_is_lowered_or_set() {
        let out = restrict(probed(r#"{"model":"m","max_tokens":5000}"#), Some(64)).unwrap();
        assert_eq!(&out.body[..], br#"{"model":"m","max_tokens":64}"#);
        let out = restrict(probed(r#"{"model":"m"}"#), Some(64)).unwrap();
        assert_eq!(
            &out.body[..],
            br#"{"model":"m","max_completion_tokens":64}"#
        );
        assert_eq!(out.demand.output_cap, Some(64));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_400() {
        assert!(matches!(
            restrict(probed("[1]"), None),
            Err(ProxyError::InvalidRequest(_))
        ));
    }
}
