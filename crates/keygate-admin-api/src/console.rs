//! The web console's static side: its three assets compiled into the binary
//! (`include_str!`, no CDN, no build step), the security headers every console
//! response carries (a strict Content-Security-Policy with no inline script),
//! and the session cookie's format. Signing in and checking sessions is in `api`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::context::Body;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "kg_session";
/// How long a console session lasts.
pub(crate) const SESSION_HOURS: i64 = 12;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The Content-Security-Policy of every console response: scripts, styles and
/// requests only from this origin, no inline script or style, no framing.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The asset at `path`, if it is one.
pub(crate) fn asset(path: &str) -> Option<Response<Body>> {
    let (body, kind) = match path {
        "/" | "/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/console/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/console/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure_headers(headers);
    Some(response)
}

/// The headers every console and API response carries.
pub(crate) fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// The session cookie's value in a request, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// `Set-Cookie` for a new session: HttpOnly, Secure, SameSite=Strict.
pub(crate) fn set_cookie(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_HOURS * 3600
    ))
    .ok()
}

/// `Set-Cookie` that ends the session in the browser.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("kg_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

/// What a console page costs: bytes of each asset (one request each).
pub fn page_cost() -> [(&'static str, usize); 3] {
    [
        ("/", INDEX_HTML.len()),
        ("/console/app.js", APP_JS.len()),
        ("/console/app.css", APP_CSS.len()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_no_inline_script_and_a_strict_policy() {
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains(" on"), "no inline handlers");
        assert!(!INDEX_HTML.contains("style="));
        assert!(!APP_JS.contains("innerHTML"), "text only, never markup");
        assert!(!CSP.contains("unsafe"));
        let page = asset("/").unwrap();
        assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let cookie = set_cookie("abc").unwrap();
        let cookie = cookie.to_str().unwrap();
        for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; kg_session=xyz"),
        );
        assert_eq!(session_cookie(&headers), Some("xyz"));
    }
}
