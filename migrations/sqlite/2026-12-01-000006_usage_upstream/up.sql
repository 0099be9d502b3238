-- A usage record says how many upstream attempts its request took (retries and
-- failover included); `upstream` names the one that served the answer. Records
-- written before this migration took one attempt.
ALTER TABLE usage_records ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1 CHECK (attempts >= 0);
