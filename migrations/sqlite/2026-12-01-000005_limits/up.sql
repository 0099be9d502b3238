-- A key may limit its requests in flight at once (NULL: no limit).
ALTER TABLE api_keys ADD COLUMN max_parallel BIGINT CHECK (max_parallel IS NULL OR max_parallel >= 1);
