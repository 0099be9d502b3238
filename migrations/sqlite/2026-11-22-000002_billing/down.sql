DROP TABLE usage_records;
DROP TABLE reservations;
ALTER TABLE api_keys DROP COLUMN reserved_micros;
ALTER TABLE api_keys DROP COLUMN spent_micros;
