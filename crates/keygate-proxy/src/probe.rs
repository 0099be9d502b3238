//! Reading the request body once, under the size limit, and peeking at the two
//! fields keygate needs: `model` and `stream` (JSON, with a borrowing serde
//! struct; multipart, the `model` field). Also the request-header checks that
//! come before the body.

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use keygate_store::limits::{MAX_CLIENT_NAME_LEN, MAX_MODEL_LEN};
use serde::Deserialize;

use crate::endpoint::{BodyFormat, Endpoint};
use crate::error::ProxyError;
use crate::text::truncate;

/// Largest total size of request header names and values accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A request body read whole, with what keygate peeked at in it.
#[derive(Debug)]
pub(crate) struct Probed {
    /// The body, as the client sent it.
    pub(crate) body: Bytes,
    /// The model asked for: not empty, at most [`MAX_MODEL_LEN`] bytes.
    pub(crate) model: String,
    /// Whether the client asked for a stream.
    pub(crate) stream: bool,
}

/// Peeks at the fields keygate needs without building a JSON tree.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Refuses request headers larger than keygate accepts.
pub(crate) fn check_headers(headers: &HeaderMap) -> Result<(), ProxyError> {
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// Reads the body (at most `limit` bytes, all of it within `timeout`) and peeks
/// at `model` and `stream` the way the endpoint carries them. The body is
/// borrowed: what is left of it when reading fails stays with the caller, which
/// drains it or closes the connection after the answer.
pub(crate) async fn read(
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &mut Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Probed, ProxyError> {
    let body = read_body(body, headers, limit, timeout).await?;
    let (model, stream) = match endpoint.body_format() {
        BodyFormat::Json => probe_json(&body)?,
        BodyFormat::Multipart => (probe_multipart(headers, body.clone()).await?, false),
    };
    if model.is_empty() {
        return Err(ProxyError::ModelRequired);
    }
    if model.len() > MAX_MODEL_LEN {
        return Err(ProxyError::InvalidRequest(format!(
            "model names are at most {MAX_MODEL_LEN} bytes"
        )));
    }
    Ok(Probed {
        body,
        model,
        stream,
    })
}

/// The client's own name for itself, for usage records: `X-Client-Name`,
/// `X-Keygate-Client` or `User-Agent`, truncated.
pub(crate) fn client_name(headers: &HeaderMap) -> Option<String> {
    ["x-client-name", "x-keygate-client", "user-agent"]
        .into_iter()
        .find_map(|name| headers.get(name)?.to_str().ok())
        .map(|name| truncate(name.trim(), MAX_CLIENT_NAME_LEN).to_owned())
        .filter(|name| !name.is_empty())
}

async fn read_body(
    body: &mut Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::RequestTooLarge { limit });
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ProxyError::BodyReadTimeout { timeout })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::RequestTooLarge { limit })
        }
        Err(_) => Err(ProxyError::InvalidRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// Reads `model` and `stream` from a JSON object body. Error messages give a
/// position, never a piece of the body.
pub(crate) fn probe_json(body: &[u8]) -> Result<(String, bool), ProxyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ProxyError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        let at = format!("line {}, column {}", e.line(), e.column());
        ProxyError::InvalidRequest(match e.classify() {
            serde_json::error::Category::Data => format!(
                "a field of the request body has the wrong type ({at}): 'model' must be a string and 'stream' a boolean"
            ),
            _ => format!("the request body is not valid JSON ({at})"),
        })
    })?;
    let model = probe.model.map(Cow::into_owned).unwrap_or_default();
    Ok((model, probe.stream.unwrap_or(false)))
}

/// Reads the `model` field of a `multipart/form-data` body.
async fn probe_multipart(headers: &HeaderMap, body: Bytes) -> Result<String, ProxyError> {
    let invalid = |message: &str| ProxyError::InvalidRequest(message.to_owned());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("this endpoint takes a multipart/form-data body"))?;
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| invalid("this endpoint takes a multipart/form-data body with a boundary"))?;
    let chunks = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut form = multer::Multipart::new(chunks, boundary);
    // Every part is read: a second `model` could be the one the upstream uses.
    let mut model = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) if field.name() == Some("model") => {
                if model.is_some() {
                    return Err(invalid(
                        "the multipart field 'model' is given more than once",
                    ));
                }
                let text = field
                    .text()
                    .await
                    .map_err(|_| invalid("the multipart field 'model' is not valid text"))?;
                model = Some(text);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(model.unwrap_or_default()),
            Err(_) => return Err(invalid("the multipart/form-data body is malformed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_model_and_stream_only() {
        let (model, stream) = probe_json(
            br#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!((model.as_str(), stream), ("gpt-4o", true));
        let (model, stream) = probe_json(br#"{"model":"a\"b","stream":null}"#).unwrap();
        assert_eq!((model.as_str(), stream), ("a\"b", false));
        assert_eq!(probe_json(b"{}").unwrap().0, "");
    }

    #[test]
    fn probe_errors_never_echo_the_body() {
        for body in [
            &br#"{"model": 42}"#[..],
            br#"["gpt-4o"]"#,
            br#"{"model":"secret-prompt"#,
            br#"{"model":"m","stream":"secret-prompt"}"#,
            b"",
        ] {
            let err = probe_json(body).unwrap_err();
            assert!(matches!(err, ProxyError::InvalidRequest(_)), "{body:?}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }
}
