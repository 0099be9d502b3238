DROP TABLE key_changes;
DROP TABLE api_keys;
DROP TABLE accounts;
