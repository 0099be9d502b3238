DROP TABLE console_sessions;
DROP TABLE idempotency_keys;
DROP TABLE audit_log;
DROP TABLE admin_tokens;
