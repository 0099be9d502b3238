//! Reading the request body once, under the size limit, and peeking at the
//! fields keygate needs: `model` and `stream` to route, and what bounds the cost
//! (JSON: one strict pass with `keygate_billing::BillingInputs`; multipart: the
//! `model` and `n` fields, the text fields' bytes and the number of uploads).
//! Also the request-header checks that come before the body.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use keygate_billing::{BillingInputs, Demand, InputError, InputReason, parse_n};
use keygate_store::limits::{MAX_CLIENT_NAME_LEN, MAX_MODEL_LEN};

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
    /// What the request asks for, to bound its cost.
    pub(crate) demand: Demand,
}

/// What a body probe found.
#[derive(Debug)]
struct Peeked {
    model: String,
    stream: bool,
    demand: Demand,
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
    let Peeked {
        model,
        stream,
        demand,
    } = match endpoint.body_format() {
        BodyFormat::Json => probe_json(&body)?,
        BodyFormat::Multipart => probe_multipart(headers, body.clone()).await?,
        // Read with `read_opaque`: these endpoints carry no model.
        BodyFormat::Opaque => return Err(ProxyError::ModelRequired),
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
        demand,
    })
}

/// The request body of an endpoint without a model (a stored object's), read
/// once under the same limit and deadline, unparsed.
pub(crate) async fn read_opaque(
    headers: &HeaderMap,
    body: &mut Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ProxyError> {
    read_body(body, headers, limit, timeout).await
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

/// Reads `model`, `stream` and the cost bounds from a JSON object body, in one
/// strict pass. Error messages give a position or a parameter's name, never a
/// piece of the body.
fn probe_json(body: &[u8]) -> Result<Peeked, ProxyError> {
    let inputs = BillingInputs::read(body)?;
    Ok(Peeked {
        demand: Demand::json(body.len(), &inputs),
        model: inputs.model.unwrap_or_default(),
        stream: inputs.stream,
    })
}

/// The `model` and `stream` of a JSON body, for the benches.
pub(crate) fn probe_model_and_stream(body: &[u8]) -> Result<(String, bool), ProxyError> {
    let peeked = probe_json(body)?;
    Ok((peeked.model, peeked.stream))
}

/// A multipart text field keygate reads.
#[derive(Clone, Copy)]
enum Text {
    Model,
    N,
}

impl Text {
    fn param(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::N => "n",
        }
    }
}

/// Reads the `model` and `n` fields of a `multipart/form-data` body, and what
/// bounds its input: the bytes of its text fields and the number of files.
async fn probe_multipart(headers: &HeaderMap, body: Bytes) -> Result<Peeked, ProxyError> {
    let invalid = |message: &str| ProxyError::InvalidRequest(message.to_owned());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("this endpoint takes a multipart/form-data body"))?;
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| invalid("this endpoint takes a multipart/form-data body with a boundary"))?;
    let chunks = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut form = multer::Multipart::new(chunks, boundary);
    // Every part is read: a second `model` or `n` could be the one the upstream uses.
    let mut model = None;
    let mut n = None;
    let mut text_bytes = 0u64;
    let mut files = 0u64;
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => return Err(invalid("the multipart/form-data body is malformed")),
        };
        if field.file_name().is_some() {
            files += 1;
            continue;
        }
        let name = match field.name() {
            Some("model") => Some(Text::Model),
            Some("n") => Some(Text::N),
            _ => None,
        };
        let Some(name) = name else {
            let bytes = field
                .bytes()
                .await
                .map_err(|_| invalid("the multipart/form-data body is malformed"))?;
            text_bytes = text_bytes.saturating_add(bytes.len() as u64);
            continue;
        };
        let param = name.param();
        let text = field
            .text()
            .await
            .map_err(|_| invalid(&format!("the multipart field '{param}' is not valid text")))?;
        text_bytes = text_bytes.saturating_add(text.len() as u64);
        match name {
            Text::Model if model.is_some() => {
                return Err(invalid(
                    "the multipart field 'model' is given more than once",
                ));
            }
            Text::Model => model = Some(text),
            Text::N if n.is_some() => {
                return Err(ProxyError::InvalidParam(InputError {
                    param,
                    reason: InputReason::Duplicate,
                }));
            }
            Text::N => n = Some(parse_n(&text)?),
        }
    }
    Ok(Peeked {
        model: model.unwrap_or_default(),
        stream: false,
        demand: Demand::multipart(text_bytes, files, n.unwrap_or(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_model_and_stream() {
        let (model, stream) = probe_model_and_stream(
            br#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!((model.as_str(), stream), ("gpt-4o", true));
        let (model, stream) = probe_model_and_stream(br#"{"model":"a\"b","stream":null}"#).unwrap();
        assert_eq!((model.as_str(), stream), ("a\"b", false));
        assert_eq!(probe_model_and_stream(b"{}").unwrap().0, "");
    }

    #[test]
    fn probe_reads_the_demand_in_the_same_pass() {
        let body = br#"{"model":"m","max_tokens":64,"n":3,"messages":[{"max_tokens":1}]}"#;
        let peeked = probe_json(body).unwrap();
        assert_eq!(
            peeked.demand,
            Demand {
                input_tokens: body.len() as u64,
                output_cap: Some(64),
                n: 3,
            }
        );
    }

    #[test]
    fn probe_errors_never_echo_the_body() {
        for (body, param) in [
            (&br#"{"model": 42}"#[..], Some("model")),
            (br#"["gpt-4o"]"#, None),
            (br#"{"model":"secret-prompt"#, None),
            (br#"{"model":"m","stream":"secret-prompt"}"#, Some("stream")),
            (br#"{"model":"secret","model":"other"}"#, Some("model")),
            (
                br#"{"model":"m","max_tokens":"secret"}"#,
                Some("max_tokens"),
            ),
            (b"", None),
        ] {
            let err = probe_json(body).unwrap_err();
            match (&err, param) {
                (ProxyError::InvalidParam(error), Some(param)) => {
                    assert_eq!(error.param, param, "{body:?}");
                }
                (ProxyError::InvalidRequest(_), None) => {}
                _ => panic!("{body:?}: {err:?}"),
            }
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    async fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Result<Peeked, ProxyError> {
        let mut body = Vec::new();
        for (name, file, content) in parts {
            body.extend_from_slice(b"--XB\r\n");
            let disposition = match file {
                Some(file) => format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\r\n"
                ),
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
            };
            body.extend_from_slice(disposition.as_bytes());
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XB--\r\n");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("multipart/form-data; boundary=XB"),
        );
        probe_multipart(&headers, Bytes::from(body)).await
    }

    #[tokio::test]
    async fn multipart_reserves_by_what_it_asks_for_not_upload_bytes() {
        let big = vec![0xff_u8; 200_000];
        let peeked = multipart(&[
            ("model", None, b"gpt-image-1"),
            ("prompt", None, b"a cat"),
            ("n", None, b"4"),
            ("image[]", Some("a.png"), &big),
            ("image[]", Some("b.png"), &big),
        ])
        .await
        .unwrap();
        assert_eq!(peeked.model, "gpt-image-1");
        // "gpt-image-1" + "a cat" + "4" and two uploads.
        assert_eq!(peeked.demand, Demand::multipart(17, 2, 4));
        let audio = multipart(&[("file", Some("a.mp3"), &big), ("model", None, b"whisper-1")])
            .await
            .unwrap();
        assert_eq!(audio.demand, Demand::multipart(9, 1, 1));
    }

    #[tokio::test]
    async fn multipart_n_is_strict() {
        for (parts, reason) in [
            (
                &[
                    ("model", None, &b"m"[..]),
                    ("n", None, b"2"),
                    ("n", None, b"9"),
                ][..],
                InputReason::Duplicate,
            ),
            (&[("n", None, b"1e2")], InputReason::NotInteger),
            (&[("n", None, b"-1")], InputReason::Negative),
            (
                &[("n", None, b"129")],
                InputReason::OutOfRange {
                    min: 1,
                    max: keygate_billing::MAX_N,
                },
            ),
        ] {
            match multipart(parts).await {
                Err(ProxyError::InvalidParam(error)) => {
                    assert_eq!((error.param, error.reason), ("n", reason));
                }
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("accepted"),
            }
        }
    }
}
