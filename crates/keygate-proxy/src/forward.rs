//! Forwarding: which headers go to the upstream and which come back (the header
//! policy tables), the upstream call with the provider key, and its
//! time-to-first-byte limit.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, request};
use http_body_util::Full;
use hyper::body::Incoming;
use keygate_keys::strip_query_param;

use crate::error::{ProxyError, error_chain};
use crate::signing::MessageId;
use crate::upstream::Upstream;

/// How requests go upstream.
#[derive(Debug)]
pub(crate) struct Forwarder {
    /// The query parameter that may carry a key, removed before forwarding.
    pub(crate) query_param: Option<String>,
    /// Longest wait for the upstream's response headers.
    pub(crate) first_byte_timeout: Duration,
}

impl Forwarder {
    /// Sends the request to `upstream`: the client's method, `path` (the
    /// endpoint's, with its object id) below the upstream's base URL, the query without a key, the headers the
    /// policy lets through plus provider key `slot`, the signature headers when
    /// the upstream signs (message `id`), and `body`. Returns the upstream's
    /// answer with the headers it may not return removed, and its
    /// [`StreamSlot`](crate::upstream_pool::StreamSlot) in its extensions.
    pub(crate) async fn send(
        &self,
        upstream: &Upstream,
        slot: usize,
        path: &str,
        parts: &request::Parts,
        body: Bytes,
        id: &MessageId,
    ) -> Result<Response<Incoming>, ProxyError> {
        let query = match (parts.uri.query(), self.query_param.as_deref()) {
            (Some(query), Some(param)) => strip_query_param(query, param),
            (query, None) => query.map(str::to_owned),
            (None, _) => None,
        };
        let uri = upstream
            .uri(path, query.as_deref())
            .map_err(|_| ProxyError::InvalidRequest("the query string is not valid".into()))?;
        let mut headers = forward_headers(&parts.headers);
        upstream.authorize(&mut headers, slot);
        upstream.sign(&mut headers, id, &body);
        let mut outgoing = Request::new(Full::new(body));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers;

        let (sent, slot) = upstream.pool().request(outgoing);
        let sent = tokio::time::timeout(self.first_byte_timeout, sent);
        let mut response = match sent.await {
            Ok(Ok(response)) => response,
            Err(_) => return Err(ProxyError::UpstreamTimeout(upstream.name().to_owned())),
            Ok(Err(error)) => {
                tracing::warn!(
                    upstream = upstream.name(),
                    error = %error_chain(&error),
                    "upstream request failed"
                );
                return Err(ProxyError::UpstreamUnavailable(upstream.name().to_owned()));
            }
        };
        returned_headers(response.headers_mut());
        // The slot stays with the answer until its body ends (the pipeline
        // moves it to the body); dropped with the answer, it is freed.
        response.extensions_mut().insert(slot);
        Ok(response)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Headers dropped from requests besides hop-by-hop ones: the client's credentials
/// (replaced by the provider key), its cookies, the operator's provider account
/// choice (a client must not pick which organisation or project is charged), the
/// end user's address as proxies in front add it (privacy: no IP leaves keygate),
/// what the client stack derives from the URI and body, `accept-encoding` so
/// usage can be read from the response, and the signature headers keygate sets.
static NOT_FORWARDED: [HeaderName; 24] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::COOKIE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    header::VIA,
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::ACCEPT_ENCODING,
    header::PROXY_AUTHENTICATE,
    // Signature headers are keygate's to set: a client's would pass for its.
    keygate_keys::WEBHOOK_ID,
    keygate_keys::WEBHOOK_TIMESTAMP,
    keygate_keys::WEBHOOK_SIGNATURE,
    keygate_keys::REQUEST_NONCE,
];

/// Headers dropped from responses besides hop-by-hop ones: which provider account
/// the operator uses is the operator's business, and provider cookies are for the
/// provider's own domain.
static NOT_RETURNED: [HeaderName; 4] = [
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("anthropic-organization-id"),
    header::SET_COOKIE,
];

/// The names the `Connection` headers list: hop-by-hop for this message only.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The request headers that go upstream: each of the client's checked against
/// the tables and copied when it may pass (cheaper than copying all and then
/// removing every name of the tables, which hashes each name once more).
fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(incoming);
    let mut headers = HeaderMap::with_capacity(incoming.keys_len());
    for (name, value) in incoming {
        if !(HOP_BY_HOP.contains(name) || NOT_FORWARDED.contains(name) || listed.contains(name)) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Removes from an upstream's response the headers a client never gets (most
/// responses have none of them: then nothing is removed or hashed).
fn returned_headers(headers: &mut HeaderMap) {
    let listed = connection_listed(headers);
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name) || NOT_RETURNED.contains(name) || listed.contains(name)
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn forwarded_headers_lose_credentials_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer kg_sk_x"));
        h.insert("x-api-key", HeaderValue::from_static("kg_sk_x"));
        h.insert("api-key", HeaderValue::from_static("kg_sk_x"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(
            "openai-organization",
            HeaderValue::from_static("org-client-choice"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert("forwarded", HeaderValue::from_static("for=203.0.113.9"));
        h.insert("cookie", HeaderValue::from_static("session=1"));
        let out = forward_headers(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("anthropic-version") && out.contains_key("content-type"));
    }
}
