-- Accounts, API keys and the key change feed.
-- No column can hold a key, a prompt or a response: keys are stored as their
-- SHA-256 hex, and every text column is bounded by a CHECK.
-- Times are Unix milliseconds (UTC); money is integer micro-units.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) <= 40),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email TEXT CHECK (email IS NULL OR length(email) <= 254),
    balance_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) <= 40),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL CHECK (length(name) <= 200),
    kind TEXT NOT NULL CHECK (kind IN ('private', 'public')),
    key_hash TEXT NOT NULL UNIQUE CHECK (length(key_hash) = 64),
    start TEXT NOT NULL CHECK (length(start) <= 32),
    scopes TEXT NOT NULL CHECK (length(scopes) <= 200),
    models TEXT NOT NULL CHECK (length(models) <= 8192),
    origins TEXT NOT NULL CHECK (length(origins) <= 4096),
    expires_at BIGINT,
    revoked_at BIGINT,
    rpm BIGINT CHECK (rpm IS NULL OR rpm > 0),
    tpm BIGINT CHECK (tpm IS NULL OR tpm > 0),
    spend_limit_micros BIGINT CHECK (spend_limit_micros IS NULL OR spend_limit_micros >= 0),
    metadata TEXT NOT NULL CHECK (length(metadata) <= 4096),
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);

CREATE INDEX api_keys_account_id ON api_keys (account_id);

-- Every change to a key appends a row; a running gateway polls this feed to drop
-- cached keys. seq only grows.
CREATE TABLE key_changes (
    seq BIGSERIAL PRIMARY KEY,
    key_id TEXT NOT NULL CHECK (length(key_id) <= 40),
    key_hash TEXT NOT NULL CHECK (length(key_hash) = 64),
    changed_at BIGINT NOT NULL
);
