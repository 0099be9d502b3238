-- A usage row is written for every billed request, so what SQLite does per row
-- is on every request's bill. Two parts of the table's definition cost more
-- than they give, and SQLite can change neither in place: the table is rebuilt
-- as migration 4 rebuilt it (renamed, copied, dropped: no trigger, view or
-- foreign key refers to usage_records), keeping every row and its id.
--
-- - `usage_source IN (...)` in a CHECK is evaluated through an ephemeral index
--   that SQLite fills and clears for every row; the same rule as equalities
--   needs none.
-- - AUTOINCREMENT keeps the largest id in sqlite_sequence, a second table
--   written by every insert. Ids only order records written in the same
--   millisecond; a plain INTEGER PRIMARY KEY still grows with every row (the
--   newest rows are never the ones purged).
--
-- The rebuild copies the table once, at the upgrade: about 2.5 s per million
-- usage rows on a 2-core machine. Instructions per billed request, in
-- `cargo xtask bench --callgrind`: 140,861 before, 133,398 after.
ALTER TABLE usage_records RENAME TO usage_records_old;

CREATE TABLE usage_records (
    id INTEGER PRIMARY KEY,
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
    stream BIGINT NOT NULL CHECK (stream = 0 OR stream = 1),
    status BIGINT NOT NULL,
    client_name TEXT CHECK (client_name IS NULL OR length(client_name) <= 100),
    usage_source TEXT NOT NULL CHECK (usage_source = 'reported' OR usage_source = 'estimated' OR usage_source = 'unknown' OR usage_source = 'capped'),
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
