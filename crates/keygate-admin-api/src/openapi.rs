//! The OpenAPI 3.1 document, rendered from the route table (`routes::ROUTES`)
//! and the schemas below, so every route is documented. `docs/openapi.json` is
//! this document; a test fails when the two differ.

use serde_json::{Map, Value, json};

use crate::routes::{Op, ROUTES, Route};

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "keygate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Accounts, keys, usage and the audit log of a keygate deployment. \
                Authenticate with `Authorization: Bearer {prefix}_ak_…` (an admin token from \
                `keygate-admin admin-token create`). Money is integer micro-units in fields ending \
                `_micros`; inputs also take decimal credits as strings (`\"10.5\"`). See docs/admin-api.md."
        },
        "servers": [{ "url": "http://127.0.0.1:8081" }],
        "security": [{ "adminToken": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": { "type": "http", "scheme": "bearer", "description": "An admin token, {prefix}_ak_…" }
            },
            "schemas": schemas(),
        }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn operation(route: &Route) -> Value {
    let (status, response, request) = shapes(route.op);
    let mut parameters: Vec<Value> = Vec::new();
    if route.path.contains("{id}") {
        parameters.push(json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "maxLength": 40 } }));
    }
    for (name, schema) in query_parameters(route.op) {
        parameters
            .push(json!({ "name": name, "in": "query", "required": false, "schema": schema }));
    }
    if route.idempotent {
        parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A retry with the same key and body is not run twice.",
            "schema": { "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" }
        }));
    }
    let mut op = json!({
        "operationId": format!("{:?}", route.op),
        "summary": route.summary,
        "description": format!("Needs the {} role or above.", route.role.name()),
        "parameters": parameters,
        "responses": {
            status.to_string(): { "description": "Success", "content": content(response) },
            "4XX": { "description": "Client error (OpenAI error shape)", "content": content(schema_ref("Error")) },
            "5XX": { "description": "Server error (OpenAI error shape)", "content": content(schema_ref("Error")) },
        }
    });
    if let (Some(request), Value::Object(map)) = (request, &mut op) {
        map.insert(
            "requestBody".into(),
            json!({ "required": true, "content": content(request) }),
        );
    }
    op
}

/// Success status, its schema, and the request body's schema.
fn shapes(op: Op) -> (u16, Value, Option<Value>) {
    let r = schema_ref;
    match op {
        Op::ListAccounts => (200, r("AccountList"), None),
        Op::CreateAccount => (201, r("Account"), Some(r("NewAccount"))),
        Op::GetAccount => (200, r("Account"), None),
        Op::UpdateAccount => (200, r("Account"), Some(r("AccountPatch"))),
        Op::TopUp => (200, r("Account"), Some(r("TopUp"))),
        Op::ListKeys => (200, r("KeyList"), None),
        Op::CreateKey => (201, r("NewKey"), Some(r("NewKeyRequest"))),
        Op::GetKey => (200, r("Key"), None),
        Op::UpdateKey => (200, r("Key"), Some(r("KeyPatch"))),
        Op::RevokeKey => (200, r("Key"), None),
        Op::RotateKey => (201, r("NewKey"), Some(r("Rotate"))),
        Op::Usage => (200, r("UsageReport"), None),
        Op::PurgeUsage => (200, r("Purged"), Some(r("Purge"))),
        Op::Audit => (200, r("AuditList"), None),
        Op::ListTokens => (200, r("AdminTokenList"), None),
        Op::CreateToken => (201, r("NewAdminToken"), Some(r("NewAdminTokenRequest"))),
        Op::RevokeToken => (200, r("AdminToken"), None),
    }
}

fn query_parameters(op: Op) -> Vec<(&'static str, Value)> {
    let limit = json!({ "type": "integer", "minimum": 1, "maximum": 500 });
    let id = json!({ "type": "string", "maxLength": 40 });
    let text = json!({ "type": "string" });
    match op {
        Op::ListAccounts => vec![("limit", limit), ("after", id)],
        Op::ListKeys => vec![("account", id.clone()), ("limit", limit), ("after", id)],
        Op::Audit => vec![
            ("limit", limit),
            ("before", json!({ "type": "integer", "minimum": 0 })),
        ],
        Op::Usage => vec![
            ("account", id.clone()),
            ("key", id),
            ("since", text.clone()),
            ("until", text),
            (
                "group_by",
                json!({ "type": "string", "enum": ["model", "key", "day"] }),
            ),
        ],
        _ => Vec::new(),
    }
}

fn nullable(kind: &str) -> Value {
    json!({ "type": [kind, "null"] })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties, "additionalProperties": false })
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    let int = json!({ "type": "integer" });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let time = json!({ "type": "string", "format": "date-time" });
    let key_fields = json!({
        "id": string, "account_id": string, "name": string,
        "kind": { "type": "string", "enum": ["private", "public"] },
        "start": string,
        "status": { "type": "string", "enum": ["active", "expired", "revoked"] },
        "scopes": strings, "models": strings, "origins": strings,
        "expires_at": nullable("string"), "revoked_at": nullable("string"),
        "rpm": nullable("integer"), "tpm": nullable("integer"), "max_parallel": nullable("integer"),
        "spend_limit_micros": nullable("integer"),
        "metadata": { "type": "object", "additionalProperties": { "type": "string" } },
        "created_at": time, "last_used_at": nullable("string"),
    });
    let key_required = [
        "id",
        "account_id",
        "name",
        "kind",
        "start",
        "status",
        "scopes",
        "models",
        "origins",
        "expires_at",
        "revoked_at",
        "rpm",
        "tpm",
        "max_parallel",
        "spend_limit_micros",
        "metadata",
        "created_at",
        "last_used_at",
    ];
    let mut new_key_fields = key_fields.clone();
    new_key_fields["key"] =
        json!({ "type": "string", "description": "The key; shown in this response only." });
    new_key_fields["replaces"] = object(
        &["id", "revoked_at"],
        json!({ "id": string, "revoked_at": nullable("string") }),
    );
    let mut new_key_required = key_required.to_vec();
    new_key_required.push("key");
    let token_fields = json!({
        "id": string, "name": string,
        "role": { "type": "string", "enum": ["owner", "operator", "viewer"] },
        "start": string,
        "status": { "type": "string", "enum": ["active", "revoked"] },
        "created_at": time, "revoked_at": nullable("string"),
    });
    let token_required = [
        "id",
        "name",
        "role",
        "start",
        "status",
        "created_at",
        "revoked_at",
    ];
    let mut new_token_fields = token_fields.clone();
    new_token_fields["token"] =
        json!({ "type": "string", "description": "The token; shown in this response only." });
    let mut new_token_required = token_required.to_vec();
    new_token_required.push("token");
    let totals = json!({
        "requests": int, "input_tokens": int, "output_tokens": int, "cached_tokens": int, "cost_micros": int,
    });
    let mut row = totals.clone();
    row["group"] = string.clone();
    let credits = json!({ "type": "string", "description": "Decimal credits, e.g. \"10.5\"" });
    json!({
        "Error": object(&["error"], json!({
            "error": object(&["message", "type", "param", "code"], json!({
                "message": string, "type": string, "param": nullable("string"), "code": string,
            }))
        })),
        "Account": object(
            &["id", "name", "email", "balance_micros", "reserved_micros", "tier", "created_at"],
            json!({
                "id": string, "name": string, "email": nullable("string"),
                "balance_micros": int, "reserved_micros": int,
                "tier": nullable("string"), "created_at": time,
            }),
        ),
        "AccountList": object(&["accounts", "next"], json!({
            "accounts": { "type": "array", "items": schema_ref("Account") },
            "next": nullable("string"),
        })),
        "NewAccount": object(&["name"], json!({
            "name": string, "email": nullable("string"), "balance": credits, "balance_micros": int,
            "tier": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" },
        })),
        "AccountPatch": object(&[], json!({
            "name": string, "email": nullable("string"),
            "tier": { "type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{1,64}$" },
        })),
        "TopUp": object(&[], json!({ "amount": credits, "amount_micros": int })),
        "Key": object(&key_required, key_fields),
        "NewKey": object(&new_key_required, new_key_fields),
        "KeyList": object(&["keys", "next"], json!({
            "keys": { "type": "array", "items": schema_ref("Key") },
            "next": nullable("string"),
        })),
        "NewKeyRequest": object(&["account"], json!({
            "account": string, "name": string,
            "kind": { "type": "string", "enum": ["private", "public"] },
            "scopes": strings, "models": strings, "origins": strings,
            "expires_in": { "type": "string", "description": "A duration such as 30d" },
            "expires_at": time,
            "rpm": { "type": "integer", "minimum": 1, "maximum": 4294967295_u64 },
            "tpm": { "type": "integer", "minimum": 1, "maximum": 4294967295_u64 },
            "max_parallel": { "type": "integer", "minimum": 1, "maximum": 4294967295_u64 },
            "spend_limit": credits, "spend_limit_micros": int,
            "metadata": { "type": "object", "additionalProperties": { "type": "string" } },
        })),
        "KeyPatch": object(&[], json!({
            "name": string, "scopes": strings, "models": strings, "origins": strings,
            "expires_at": nullable("string"),
            "rpm": { "type": ["integer", "null"], "minimum": 1, "maximum": 4294967295_u64 },
            "tpm": { "type": ["integer", "null"], "minimum": 1, "maximum": 4294967295_u64 },
            "max_parallel": { "type": ["integer", "null"], "minimum": 1, "maximum": 4294967295_u64 },
            "spend_limit_micros": nullable("integer"),
            "metadata": { "type": "object", "additionalProperties": { "type": "string" } },
        })),
        "Rotate": object(&[], json!({ "grace": { "type": "string", "description": "A duration such as 24h" } })),
        "Purge": object(&["older_than"], json!({ "older_than": { "type": "string", "description": "A duration, at least 1d" } })),
        "Purged": object(&["deleted"], json!({ "deleted": int })),
        "UsageReport": object(&["since", "until", "group_by", "rows", "total"], json!({
            "since": time, "until": time,
            "group_by": { "type": "string", "enum": ["model", "key", "day"] },
            "rows": { "type": "array", "items": object(&["group", "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_micros"], row) },
            "total": object(&["requests", "input_tokens", "output_tokens", "cached_tokens", "cost_micros"], totals),
        })),
        "AuditEntry": object(&["seq", "at", "actor", "action", "target"], json!({
            "seq": int, "at": time, "actor": string, "action": string, "target": nullable("string"),
        })),
        "AuditList": object(&["entries", "next_before"], json!({
            "entries": { "type": "array", "items": schema_ref("AuditEntry") },
            "next_before": nullable("integer"),
        })),
        "AdminToken": object(&token_required, token_fields),
        "NewAdminToken": object(&new_token_required, new_token_fields),
        "AdminTokenList": object(&["admin_tokens"], json!({
            "admin_tokens": { "type": "array", "items": schema_ref("AdminToken") },
        })),
        "NewAdminTokenRequest": object(&["name", "role"], json!({
            "name": string, "role": { "type": "string", "enum": ["owner", "operator", "viewer"] },
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/openapi.json is this document; regenerate it with
    /// `KEYGATE_WRITE_OPENAPI=1 cargo test -p keygate-admin-api openapi`.
    #[test]
    fn the_checked_in_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let rendered = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("KEYGATE_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == rendered,
            "docs/openapi.json is stale; run KEYGATE_WRITE_OPENAPI=1 cargo test -p keygate-admin-api openapi"
        );
    }

    #[test]
    fn every_route_is_documented_with_its_method() {
        let doc = document();
        for route in ROUTES {
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(
                doc["paths"][route.path][&method]["responses"].is_object(),
                "{} {} is not documented",
                route.method,
                route.path
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| m.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, ROUTES.len());
    }
}
