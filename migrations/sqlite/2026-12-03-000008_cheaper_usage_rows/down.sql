-- Back to the table as migrations 4 and 6 left it (AUTOINCREMENT ids, the
-- usage source checked with IN), rebuilt keeping every row and its id.
ALTER TABLE usage_records RENAME TO usage_records_old;

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
    usage_source TEXT NOT NULL CHECK (usage_source IN ('reported', 'estimated', 'unknown', 'capped')),
    client_ip TEXT CHECK (client_ip IS NULL OR length(client_ip) <= 45),
    attempts BIGINT NOT NULL DEFAULT 1 CHECK (attempts >= 0)
);

INSERT INTO usage_records (
    id, at, key_id, account_id, model, upstream, input_tokens, output_tokens, cached_tokens,
    cost_micros, latency_ms, ttfb_ms, stream, status, client_name, usage_source, client_ip,
    attempts
)
SELECT
    id, at, key_id, account_id, model, upstream, input_tokens, output_tokens, cached_tokens,
    cost_micros, latency_ms, ttfb_ms, stream, status, client_name, usage_source, client_ip,
    attempts
FROM usage_records_old;

DROP TABLE usage_records_old;

CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key_at ON usage_records (key_id, at);
CREATE INDEX usage_records_account_at ON usage_records (account_id, at);
