//! The route table: every endpoint of the admin API, its method, path template,
//! the role it needs and what it does. The router matches requests against it and
//! the OpenAPI document is rendered from it, so neither can leave a route out.

use http::Method;
use keygate_store::AdminRole;

/// What a route does; the handlers match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `GET /api/accounts`
    ListAccounts,
    /// `POST /api/accounts`
    CreateAccount,
    /// `GET /api/accounts/{id}`
    GetAccount,
    /// `PATCH /api/accounts/{id}`
    UpdateAccount,
    /// `POST /api/accounts/{id}/top-up`
    TopUp,
    /// `GET /api/keys`
    ListKeys,
    /// `POST /api/keys`
    CreateKey,
    /// `GET /api/keys/{id}`
    GetKey,
    /// `PATCH /api/keys/{id}`
    UpdateKey,
    /// `POST /api/keys/{id}/revoke`
    RevokeKey,
    /// `POST /api/keys/{id}/rotate`
    RotateKey,
    /// `GET /api/usage`
    Usage,
    /// `POST /api/usage/purge`
    PurgeUsage,
    /// `GET /api/audit`
    Audit,
    /// `GET /api/admin-tokens`
    ListTokens,
    /// `POST /api/admin-tokens`
    CreateToken,
    /// `POST /api/admin-tokens/{id}/revoke`
    RevokeToken,
}

/// One endpoint.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path template; `{id}` is one segment.
    pub path: &'static str,
    /// The least role that may call it.
    pub role: AdminRole,
    /// What it does.
    pub op: Op,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// Whether it takes an `Idempotency-Key`.
    pub idempotent: bool,
}

macro_rules! route {
    ($method:ident $path:literal, $role:ident, $op:ident, $idem:literal, $summary:literal) => {
        Route {
            method: Method::$method,
            path: $path,
            role: AdminRole::$role,
            op: Op::$op,
            summary: $summary,
            idempotent: $idem,
        }
    };
}

/// Every route of the API (the console's own routes live in `console`).
pub static ROUTES: &[Route] = &[
    route!(GET "/api/accounts", Viewer, ListAccounts, false, "List accounts"),
    route!(POST "/api/accounts", Owner, CreateAccount, true, "Create an account"),
    route!(GET "/api/accounts/{id}", Viewer, GetAccount, false, "Show an account"),
    route!(PATCH "/api/accounts/{id}", Owner, UpdateAccount, false, "Change an account's name or email"),
    route!(POST "/api/accounts/{id}/top-up", Operator, TopUp, true, "Add credits to an account"),
    route!(GET "/api/keys", Viewer, ListKeys, false, "List keys, optionally of one account"),
    route!(POST "/api/keys", Operator, CreateKey, true, "Create a key; the key appears in this response only"),
    route!(GET "/api/keys/{id}", Viewer, GetKey, false, "Show a key (never the key itself)"),
    route!(PATCH "/api/keys/{id}", Operator, UpdateKey, false, "Change a key's settings"),
    route!(POST "/api/keys/{id}/revoke", Operator, RevokeKey, false, "Revoke a key now"),
    route!(POST "/api/keys/{id}/rotate", Operator, RotateKey, true, "Replace a key; the new key appears in this response only"),
    route!(GET "/api/usage", Viewer, Usage, false, "Usage totals by model, key or day"),
    route!(POST "/api/usage/purge", Owner, PurgeUsage, false, "Delete usage records older than a duration"),
    route!(GET "/api/audit", Viewer, Audit, false, "The audit log, newest first"),
    route!(GET "/api/admin-tokens", Owner, ListTokens, false, "List admin tokens"),
    route!(POST "/api/admin-tokens", Owner, CreateToken, false, "Create an admin token; the token appears in this response only"),
    route!(POST "/api/admin-tokens/{id}/revoke", Owner, RevokeToken, false, "Revoke an admin token"),
];

/// A matched route and its `{id}`, if the template has one.
#[derive(Debug)]
pub(crate) struct Matched<'a> {
    /// The route.
    pub(crate) route: &'static Route,
    /// The `{id}` segment.
    pub(crate) id: Option<&'a str>,
}

/// How a path matched the table.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// A route for this method and path.
    Found(Matched<'a>),
    /// The path exists, with other methods.
    WrongMethod,
    /// No such path.
    NotFound,
}

/// Finds the route for `method` and `path`.
pub(crate) fn lookup<'a>(method: &Method, path: &'a str) -> Lookup<'a> {
    let mut path_known = false;
    for route in ROUTES {
        if let Some(id) = matches(route.path, path) {
            if route.method == *method {
                return Lookup::Found(Matched { route, id });
            }
            path_known = true;
        }
    }
    if path_known {
        Lookup::WrongMethod
    } else {
        Lookup::NotFound
    }
}

/// `Some(id)` when `path` fits `template` (`Some(None)` without an `{id}`).
fn matches<'a>(template: &str, path: &'a str) -> Option<Option<&'a str>> {
    let mut id = None;
    let mut given = path.split('/');
    for want in template.split('/') {
        let got = given.next()?;
        if want == "{id}" {
            if got.is_empty() {
                return None;
            }
            id = Some(got);
        } else if want != got {
            return None;
        }
    }
    given.next().is_none().then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_templates_only() {
        let Lookup::Found(m) = lookup(&Method::POST, "/api/keys/key_1/rotate") else {
            panic!("no match");
        };
        assert_eq!(m.route.op, Op::RotateKey);
        assert_eq!(m.id, Some("key_1"));
        assert!(matches!(
            lookup(&Method::DELETE, "/api/keys"),
            Lookup::WrongMethod
        ));
        assert!(matches!(
            lookup(&Method::GET, "/api/keys//rotate"),
            Lookup::NotFound
        ));
        assert!(matches!(
            lookup(&Method::GET, "/api/keys/a/b/c"),
            Lookup::NotFound
        ));
    }
}
