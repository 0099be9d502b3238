-- A key may limit its requests in flight at once (NULL: no limit).
ALTER TABLE api_keys ADD COLUMN max_parallel BIGINT CHECK (max_parallel IS NULL OR max_parallel >= 1);
-- An account may be on a tier: the name of a [tiers.NAME] table in the gateway's config.
ALTER TABLE accounts ADD COLUMN tier TEXT CHECK (tier IS NULL OR length(tier) <= 64);
