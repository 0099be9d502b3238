-- Billing: what each key has spent and holds, reservations held by in-flight
-- requests, and one usage record per request. No column can hold a prompt, a
-- response or a key; the client IP column stays NULL unless the operator turns it on.

ALTER TABLE api_keys ADD COLUMN spent_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN reserved_micros BIGINT NOT NULL DEFAULT 0;

CREATE TABLE reservations (
    id TEXT PRIMARY KEY NOT NULL CHECK (length(id) <= 40),
    account_id TEXT NOT NULL CHECK (length(account_id) <= 40),
    key_id TEXT NOT NULL CHECK (length(key_id) <= 40),
    amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX reservations_expires_at ON reservations (expires_at);

CREATE TABLE usage_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    key_id TEXT NOT NULL CHECK (length(key_id) <= 40),
    account_id TEXT NOT NULL CHECK (length(account_id) <= 40),
    model TEXT NOT NULL CHECK (length(model) <= 256),
    upstream TEXT NOT NULL CHECK (length(upstream) <= 64),
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    ttfb_ms BIGINT NOT NULL,
    stream BIGINT NOT NULL CHECK (stream IN (0, 1)),
    status BIGINT NOT NULL,
    client_name TEXT CHECK (client_name IS NULL OR length(client_name) <= 100),
    usage_source TEXT NOT NULL CHECK (usage_source IN ('reported', 'estimated', 'unknown')),
    client_ip TEXT CHECK (client_ip IS NULL OR length(client_ip) <= 45)
);

CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key_at ON usage_records (key_id, at);
CREATE INDEX usage_records_account_at ON usage_records (account_id, at);
