-- Back to three usage sources: a capped record reads as reported (its tokens
-- and cost are what was stored).
UPDATE usage_records SET usage_source = 'reported' WHERE usage_source = 'capped';
ALTER TABLE usage_records DROP CONSTRAINT usage_records_usage_source_check;
ALTER TABLE usage_records ADD CONSTRAINT usage_records_usage_source_check
    CHECK (usage_source IN ('reported', 'estimated', 'unknown'));
