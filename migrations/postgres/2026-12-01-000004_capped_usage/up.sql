-- A usage record may say its figures were capped: the upstream's counts were
-- clamped, or the cost was cut to what the request's reservation held.
ALTER TABLE usage_records DROP CONSTRAINT usage_records_usage_source_check;
ALTER TABLE usage_records ADD CONSTRAINT usage_records_usage_source_check
    CHECK (usage_source IN ('reported', 'estimated', 'unknown', 'capped'));
