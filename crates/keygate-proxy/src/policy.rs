//! What an authenticated key may do: public keys only on their routes and from
//! their origins, the route's scope, its models, and its limits (checked by
//! `limits::RequestLimiter`, in this process or shared).

use http::header::{self, HeaderMap};
use keygate_keys::KeyKind;
use keygate_store::ApiKey;

use keygate_billing::Demand;

use crate::auth::CachedKey;
use crate::context::RequestContext;
use crate::endpoint::Endpoint;
use crate::error::ProxyError;
use crate::limits::RequestLimiter;
use crate::models::key_allows_model;

/// Checks a key against the endpoint before the body is read: a public key's
/// route and origin (an allowed origin goes in `ctx.cors` at once, so even a
/// refusal after it can be read by the page), then the endpoint's scope.
pub(crate) fn admit_key(
    cached: &CachedKey,
    endpoint: Endpoint,
    headers: &HeaderMap,
    ctx: &mut RequestContext,
) -> Result<(), ProxyError> {
    let key = &cached.key;
    if key.kind == KeyKind::Public {
        if !endpoint.allows_public_keys() {
            return Err(ProxyError::PublicKeyNotAllowed);
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .is_ok_and(|o| key.origins.iter().any(|a| a == o || a == "*"));
            if !allowed {
                return Err(ProxyError::OriginNotAllowed);
            }
            ctx.cors = Some(origin.clone());
        }
    }
    let scope = endpoint.scope();
    if !key.scopes.contains(scope) {
        return Err(ProxyError::InsufficientScope(scope));
    }
    Ok(())
}

/// Admits the request under the key's limits (and a public key's per-address
/// ones): `request` is the endpoint and what its body asks for, `None` for a
/// request without a body. The hold and the headers go in `ctx`.
pub(crate) async fn admit_limits(
    limiter: &RequestLimiter,
    key: &CachedKey,
    request: Option<(Endpoint, &Demand)>,
    ctx: &mut RequestContext,
) -> Result<(), ProxyError> {
    if let Some(hold) = limiter.admit(key, ctx.client, request).await? {
        ctx.rates = hold.headers;
        ctx.limits = Some(hold);
    }
    Ok(())
}

/// Whether the key may use `model` (an empty list allows every model).
pub(crate) fn allow_model(key: &ApiKey, model: &str) -> Result<(), ProxyError> {
    if key_allows_model(&key.models, model) {
        Ok(())
    } else {
        Err(ProxyError::ModelNotAllowed(model.to_owned()))
    }
}
