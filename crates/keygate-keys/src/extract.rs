//! Finding the credential a client presented, in DESIGN.md's order:
//! `Authorization: Bearer`, `Authorization: Basic` (password part), `x-api-key`,
//! `api-key`, then the `?api-key=` query parameter.
//!
//! The first source that is present decides: a malformed `Authorization` header is
//! an error, not a reason to look further, so a client never authenticates with a
//! credential other than the one it meant to send.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use zeroize::Zeroizing;

/// Where a credential came from, so the proxy can strip exactly that before
/// forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `Authorization: Basic base64(user:key)`; the username is ignored.
    Basic,
    /// `x-api-key: <key>` (Anthropic SDKs).
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI SDKs).
    ApiKeyHeader,
    /// `?api-key=<key>` query parameter (name configurable).
    QueryParam,
}

impl CredentialSource {
    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::Bearer => "bearer",
            CredentialSource::Basic => "basic",
            CredentialSource::XApiKey => "x-api-key",
            CredentialSource::ApiKeyHeader => "api-key",
            CredentialSource::QueryParam => "query",
        }
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why no usable credential was found. Messages never echo the presented value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// No credential in any accepted place.
    #[error("no API key provided")]
    Missing,
    /// The credential's place was present but its value was empty.
    #[error("the API key in {0} is empty")]
    Empty(CredentialSource),
    /// More than one value for the same header or parameter.
    #[error("more than one API key in {0}")]
    Ambiguous(CredentialSource),
    /// The value contains bytes that are not visible ASCII.
    #[error("the API key in {0} is not valid text")]
    NotText(CredentialSource),
    /// `Authorization: Basic` whose payload is not base64 of `user:password`.
    #[error("the Authorization: Basic credential is not base64 of user:password")]
    MalformedBasic,
    /// `Authorization` with a scheme other than Bearer or Basic.
    #[error("the Authorization header must use the Bearer or Basic scheme")]
    UnsupportedScheme,
}

/// The query parameter that carries a key unless a deployment names another.
pub const DEFAULT_QUERY_PARAM: &str = "api-key";

/// Extraction settings.
#[derive(Clone, Debug)]
pub struct ExtractOptions<'a> {
    /// The query parameter that may carry a key; `None` turns that source off.
    pub query_param: Option<&'a str>,
}

impl Default for ExtractOptions<'_> {
    fn default() -> Self {
        Self {
            query_param: Some(DEFAULT_QUERY_PARAM),
        }
    }
}

/// A presented credential. The text is borrowed from the request where it can be
/// and zeroed on drop where it had to be decoded; `Debug` never shows it.
pub struct Credential<'a> {
    text: Cow<'a, str>,
    source: CredentialSource,
}

impl<'a> Credential<'a> {
    /// Finds the credential in `headers` and the raw query string `query`.
    pub fn extract(
        headers: &'a HeaderMap,
        query: Option<&'a str>,
        options: &ExtractOptions<'_>,
    ) -> Result<Self, ExtractError> {
        if let Some(found) = from_authorization(headers)? {
            return Ok(found);
        }
        for (name, source) in [
            ("x-api-key", CredentialSource::XApiKey),
            ("api-key", CredentialSource::ApiKeyHeader),
        ] {
            if let Some(text) = single_header(headers, name, source)? {
                return Self::new(Cow::Borrowed(text.trim()), source);
            }
        }
        if let (Some(query), Some(param)) = (query, options.query_param) {
            if let Some(found) = from_query(query, param)? {
                return Ok(found);
            }
        }
        Err(ExtractError::Missing)
    }

    fn new(text: Cow<'a, str>, source: CredentialSource) -> Result<Self, ExtractError> {
        // Built first so that a rejected, decoded secret is zeroed on drop too.
        let credential = Self { text, source };
        if credential.text.is_empty() {
            return Err(ExtractError::Empty(source));
        }
        if !credential.text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ExtractError::NotText(source));
        }
        Ok(credential)
    }

    /// The presented key text, for [`crate::ParsedKey::parse`]. Never log it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Where it was found.
    pub fn source(&self) -> CredentialSource {
        self.source
    }
}

impl Drop for Credential<'_> {
    fn drop(&mut self) {
        if let Cow::Owned(text) = &mut self.text {
            zeroize::Zeroize::zeroize(text);
        }
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("source", &self.source)
            .field("text", &"<redacted>")
            .finish()
    }
}

fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
    source: CredentialSource,
) -> Result<Option<&'h str>, ExtractError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ExtractError::Ambiguous(source));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| ExtractError::NotText(source))
}

fn from_authorization(headers: &HeaderMap) -> Result<Option<Credential<'_>>, ExtractError> {
    // The source is refined below; Bearer stands for "the Authorization header".
    let Some(value) = single_header(headers, AUTHORIZATION.as_str(), CredentialSource::Bearer)?
    else {
        return Ok(None);
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Credential::new(Cow::Borrowed(rest), CredentialSource::Bearer).map(Some);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        if rest.is_empty() {
            return Err(ExtractError::Empty(CredentialSource::Basic));
        }
        let decoded = Zeroizing::new(
            STANDARD
                .decode(rest)
                .map_err(|_| ExtractError::MalformedBasic)?,
        );
        let decoded = std::str::from_utf8(&decoded).map_err(|_| ExtractError::MalformedBasic)?;
        let (_user, password) = decoded
            .split_once(':')
            .ok_or(ExtractError::MalformedBasic)?;
        return Credential::new(Cow::Owned(password.to_owned()), CredentialSource::Basic).map(Some);
    }
    Err(ExtractError::UnsupportedScheme)
}

fn from_query<'q>(query: &'q str, param: &str) -> Result<Option<Credential<'q>>, ExtractError> {
    let mut found = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name != param {
            continue;
        }
        if found.is_some() {
            return Err(ExtractError::Ambiguous(CredentialSource::QueryParam));
        }
        found = Some(value);
    }
    match found {
        None => Ok(None),
        Some(value) => {
            let value = Cow::Owned(value.into_owned());
            Credential::new(value, CredentialSource::QueryParam).map(Some)
        }
    }
}

/// Returns `query` without any `param=` pair, keeping the other pairs byte for byte,
/// or `None` when nothing is left. Used before forwarding and before logging.
pub fn strip_query_param(query: &str, param: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            if pair.is_empty() {
                return false;
            }
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .map(|(n, _)| n.into_owned())
                .collect();
            decoded != param
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const KEY: &str = "kg_sk_abc";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn extract<'a>(h: &'a HeaderMap, q: Option<&'a str>) -> Result<Credential<'a>, ExtractError> {
        Credential::extract(h, q, &ExtractOptions::default())
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    #[test]
    fn each_source_is_found() {
        let basic_value = basic(&format!("someone:{KEY}"));
        let cases = [
            (
                headers(&[("authorization", "Bearer kg_sk_abc")]),
                None,
                CredentialSource::Bearer,
            ),
            (
                headers(&[("authorization", "bearer   kg_sk_abc ")]),
                None,
                CredentialSource::Bearer,
            ),
            (
                headers(&[("authorization", &basic_value)]),
                None,
                CredentialSource::Basic,
            ),
            (
                headers(&[("x-api-key", KEY)]),
                None,
                CredentialSource::XApiKey,
            ),
            (
                headers(&[("api-key", KEY)]),
                None,
                CredentialSource::ApiKeyHeader,
            ),
            (
                headers(&[]),
                Some("a=1&api-key=kg_sk_abc&b=2"),
                CredentialSource::QueryParam,
            ),
            (
                headers(&[]),
                Some("api-key=kg%5Fsk%5Fabc"),
                CredentialSource::QueryParam,
            ),
        ];
        for (h, q, source) in &cases {
            let found = extract(h, *q).unwrap();
            assert_eq!(found.expose(), KEY);
            assert_eq!(found.source(), *source);
        }
    }

    #[test]
    fn order_follows_the_design() {
        let h = headers(&[
            ("api-key", "kg_sk_d"),
            ("x-api-key", "kg_sk_c"),
            ("authorization", "Bearer kg_sk_a"),
        ]);
        assert_eq!(
            extract(&h, Some("api-key=kg_sk_e")).unwrap().expose(),
            "kg_sk_a"
        );
        let h = headers(&[("api-key", "kg_sk_d"), ("x-api-key", "kg_sk_c")]);
        assert_eq!(
            extract(&h, Some("api-key=kg_sk_e")).unwrap().expose(),
            "kg_sk_c"
        );
        let h = headers(&[("api-key", "kg_sk_d")]);
        assert_eq!(
            extract(&h, Some("api-key=kg_sk_e")).unwrap().expose(),
            "kg_sk_d"
        );
    }

    #[test]
    fn basic_ignores_username_and_keeps_colons_in_password() {
        let h = headers(&[("authorization", &basic(":kg_sk_abc"))]);
        assert_eq!(extract(&h, None).unwrap().expose(), KEY);
    }

    #[test]
    fn errors() {
        let cases: Vec<(HeaderMap, Option<&str>, ExtractError)> = vec![
            (headers(&[]), None, ExtractError::Missing),
            (headers(&[]), Some("other=1"), ExtractError::Missing),
            (
                headers(&[("authorization", "Bearer")]),
                None,
                ExtractError::Empty(CredentialSource::Bearer),
            ),
            (
                headers(&[("authorization", "Bearer  ")]),
                None,
                ExtractError::Empty(CredentialSource::Bearer),
            ),
            (
                headers(&[("authorization", "Token abc")]),
                None,
                ExtractError::UnsupportedScheme,
            ),
            (
                headers(&[("authorization", "Basic !!!")]),
                None,
                ExtractError::MalformedBasic,
            ),
            (
                headers(&[("authorization", &basic("no-colon"))]),
                None,
                ExtractError::MalformedBasic,
            ),
            (
                headers(&[("authorization", "Basic")]),
                None,
                ExtractError::Empty(CredentialSource::Basic),
            ),
            (
                headers(&[("authorization", &basic("user:"))]),
                None,
                ExtractError::Empty(CredentialSource::Basic),
            ),
            (
                headers(&[("authorization", &basic("u:a b"))]),
                None,
                ExtractError::NotText(CredentialSource::Basic),
            ),
            (
                headers(&[("x-api-key", "")]),
                None,
                ExtractError::Empty(CredentialSource::XApiKey),
            ),
            (
                headers(&[("x-api-key", "a"), ("x-api-key", "b")]),
                None,
                ExtractError::Ambiguous(CredentialSource::XApiKey),
            ),
            (
                headers(&[]),
                Some("api-key="),
                ExtractError::Empty(CredentialSource::QueryParam),
            ),
            (
                headers(&[]),
                Some("api-key=a&api-key=b"),
                ExtractError::Ambiguous(CredentialSource::QueryParam),
            ),
        ];
        for (h, q, expected) in cases {
            assert_eq!(extract(&h, q).unwrap_err(), expected, "{h:?} {q:?}");
        }
    }

    #[test]
    fn non_utf8_basic_payload_is_an_error() {
        let payload = STANDARD.encode([b'u', b':', 0xff, 0xfe]);
        let h = headers(&[("authorization", &format!("Basic {payload}"))]);
        assert_eq!(extract(&h, None).unwrap_err(), ExtractError::MalformedBasic);
    }

    #[test]
    fn non_ascii_header_bytes_are_an_error() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_bytes(b"kg_\xffsk").unwrap());
        assert_eq!(
            extract(&h, None).unwrap_err(),
            ExtractError::NotText(CredentialSource::XApiKey)
        );
    }

    #[test]
    fn query_source_can_be_turned_off() {
        let h = headers(&[]);
        let options = ExtractOptions { query_param: None };
        assert_eq!(
            Credential::extract(&h, Some("api-key=kg_sk_abc"), &options).unwrap_err(),
            ExtractError::Missing
        );
    }

    #[test]
    fn debug_redacts() {
        let h = headers(&[("authorization", "Bearer kg_sk_secretvalue")]);
        let shown = format!("{:?}", extract(&h, None).unwrap());
        assert!(!shown.contains("secretvalue"), "{shown}");
    }

    #[test]
    fn strip_query_param_keeps_the_rest_verbatim() {
        assert_eq!(strip_query_param("api-key=x", "api-key"), None);
        assert_eq!(
            strip_query_param("a=1&api-key=x&b=%20y", "api-key").as_deref(),
            Some("a=1&b=%20y")
        );
        assert_eq!(
            strip_query_param("api%2Dkey=x&c", "api-key").as_deref(),
            Some("c")
        );
        assert_eq!(
            strip_query_param("a=1&&b", "api-key").as_deref(),
            Some("a=1&b")
        );
    }

    proptest! {
        #[test]
        fn extraction_never_panics_on_arbitrary_header_bytes(
            auth in prop::collection::vec(any::<u8>(), 0..120),
            x_api_key in prop::collection::vec(any::<u8>(), 0..80),
            query in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&auth) {
                h.insert(AUTHORIZATION, v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&x_api_key) {
                h.insert("x-api-key", v);
            }
            let query = String::from_utf8_lossy(&query);
            let _ = Credential::extract(&h, Some(&query), &ExtractOptions::default());
            let _ = strip_query_param(&query, "api-key");
        }

        #[test]
        fn basic_with_any_username_yields_the_password(
            user in "[^:]{0,20}",
            key in "[!-~]{1,100}",
        ) {
            let h = headers(&[("authorization", &basic(&format!("{user}:{key}")))]);
            let found = extract(&h, None).unwrap();
            prop_assert_eq!(found.expose(), key.as_str());
        }
    }
}
