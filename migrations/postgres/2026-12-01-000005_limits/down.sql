ALTER TABLE accounts DROP COLUMN tier;
ALTER TABLE api_keys DROP COLUMN max_parallel;
