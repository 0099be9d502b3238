-- The control plane: admin tokens (stored as their SHA-256, like keys), the
-- audit log of every change, idempotency records of creates and top-ups, and
-- console sessions (stored as their SHA-256, expiring). No column can hold a key,
-- a token, a session or a request body: an idempotency record keeps a hash of the
-- request and a response body that never contains a secret.

CREATE TABLE admin_tokens (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) <= 40),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role TEXT NOT NULL CHECK (role IN ('owner', 'operator', 'viewer')),
    token_hash TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64),
    start TEXT NOT NULL CHECK (length(start) <= 32),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
);

CREATE TABLE audit_log (
    seq BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL CHECK (length(actor) <= 40),
    action TEXT NOT NULL CHECK (length(action) <= 64),
    target TEXT CHECK (target IS NULL OR length(target) <= 40)
);

CREATE TABLE idempotency_keys (
    actor TEXT NOT NULL CHECK (length(actor) <= 40),
    idem_key TEXT NOT NULL CHECK (length(idem_key) <= 255),
    request_hash TEXT NOT NULL CHECK (length(request_hash) = 64),
    status BIGINT NOT NULL,
    target TEXT CHECK (target IS NULL OR length(target) <= 40),
    body TEXT NOT NULL CHECK (length(body) <= 8192),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (actor, idem_key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE console_sessions (
    session_hash TEXT PRIMARY KEY NOT NULL CHECK (length(session_hash) = 64),
    csrf_hash TEXT NOT NULL CHECK (length(csrf_hash) = 64),
    token_id TEXT NOT NULL CHECK (length(token_id) <= 40),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
