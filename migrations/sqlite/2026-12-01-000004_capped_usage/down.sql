-- Back to three usage sources: a capped record reads as reported (its tokens
-- and cost are what was stored).
-- SQLite cannot alter a CHECK: the table is rebuilt as SQLite recommends
-- (https://www.sqlite.org/lang_altertable.html#otheralter), keeping every row
-- and its id. No other table refers to usage_records.
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
    usage_source TEXT NOT NULL CHECK (usage_source IN ('reported', 'estimated', 'unknown')),
    client_ip TEXT CHECK (client_ip IS NULL OR length(client_ip) <= 45)
);

INSERT INTO usage_records (
    id, at, key_id, account_id, model, upstream, input_tokens, output_tokens, cached_tokens,
    cost_micros, latency_ms, ttfb_ms, stream, status, client_name, usage_source, client_ip
)
SELECT
    id, at, key_id, account_id, model, upstream, input_tokens, output_tokens, cached_tokens,
    cost_micros, latency_ms, ttfb_ms, stream, status, client_name, CASE usage_source WHEN 'capped' THEN 'reported' ELSE usage_source END, client_ip
FROM usage_records_old;

DROP TABLE usage_records_old;

CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key_at ON usage_records (key_id, at);
CREATE INDEX usage_records_account_at ON usage_records (account_id, at);
