//! Console sessions: signing in with an admin token makes a random session
//! cookie (HttpOnly, Secure, SameSite=Strict) and a CSRF token; the store keeps
//! only their SHA-256 and an expiry. A request with the cookie acts as the token
//! that signed in; every change must also carry `X-CSRF-Token`.

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use http::header::SET_COOKIE;
use http::{HeaderMap, Method, Response};
use keygate_keys::{KeyHash, parse_admin_token, random_token};
use keygate_store::{Actor, AdminToken, ConsoleSession};
use serde::Deserialize;
use serde_json::json;

use crate::console::{SESSION_HOURS, clear_cookie, session_cookie, set_cookie};
use crate::context::{Body, Caller, Deps, json_response};
use crate::error::ApiError;
use crate::inputs::json_body;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /console/session`: a session for a valid admin token.
pub(crate) async fn sign_in(deps: &Deps, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let SignIn { token } = json_body(body)?;
    let hash = parse_admin_token(token.trim(), &deps.prefix).map_err(|_| ApiError::InvalidToken)?;
    let now = Utc::now();
    let token = deps
        .stores
        .control
        .find_admin_token_by_hash(&hash)
        .await?
        .filter(|t| t.is_active(now))
        .ok_or(ApiError::InvalidToken)?;
    let cookie = random_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let csrf = random_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires_at = now + TimeDelta::hours(SESSION_HOURS);
    deps.stores
        .control
        .create_session(&ConsoleSession {
            session_hash: KeyHash::of(&cookie),
            csrf_hash: KeyHash::of(&csrf),
            token_id: token.id.clone(),
            created_at: now,
            expires_at,
        })
        .await?;
    let mut response = json_response(
        200,
        &json!({
            "name": token.name,
            "role": token.role.name(),
            "csrf": csrf.as_str(),
            "expires_at": keygate_store::json::time(expires_at),
        }),
    );
    let set = set_cookie(&cookie).ok_or_else(|| ApiError::Internal("cookie header".into()))?;
    response.headers_mut().insert(SET_COOKIE, set);
    Ok(response)
}

/// `GET /console/session`: who is signed in.
pub(crate) async fn current(deps: &Deps, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let caller = from_cookie(deps, headers, &Method::GET)
        .await?
        .ok_or(ApiError::MissingToken)?;
    Ok(json_response(
        200,
        &json!({ "name": caller.token.name, "role": caller.token.role.name() }),
    ))
}

/// `DELETE /console/session`: signs out (CSRF-checked).
pub(crate) async fn sign_out(deps: &Deps, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    from_cookie(deps, headers, &Method::DELETE)
        .await?
        .ok_or(ApiError::MissingToken)?;
    if let Some(cookie) = session_cookie(headers) {
        deps.stores
            .control
            .delete_session(&KeyHash::of(cookie))
            .await?;
    }
    let mut response = json_response(200, &json!({ "signed_out": true }));
    response.headers_mut().insert(SET_COOKIE, clear_cookie());
    Ok(response)
}

/// The caller a session cookie stands for, `None` without a cookie. A change
/// (any method but GET and HEAD) needs the session's CSRF token.
pub(crate) async fn from_cookie(
    deps: &Deps,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Option<Caller>, ApiError> {
    let Some(cookie) = session_cookie(headers) else {
        return Ok(None);
    };
    let now = Utc::now();
    let control = &deps.stores.control;
    let session = control
        .find_session(&KeyHash::of(cookie), now)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let token: AdminToken = control
        .list_admin_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == session.token_id && t.is_active(now))
        .ok_or(ApiError::InvalidToken)?;
    if method != Method::GET && method != Method::HEAD {
        let presented = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(KeyHash::of);
        if presented.is_none_or(|p| p != session.csrf_hash) {
            return Err(ApiError::Csrf);
        }
    }
    Ok(Some(Caller {
        actor: Actor::Token(token.id.clone()),
        token,
    }))
}
