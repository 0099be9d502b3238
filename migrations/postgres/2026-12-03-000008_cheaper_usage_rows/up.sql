-- SQLite's usage_records was rebuilt in this migration so that a row costs
-- less to insert (see migrations/sqlite). PostgreSQL checks the same rules
-- without the cost (its CHECK with IN needs no index, and its BIGSERIAL id has
-- no second table), so nothing changes here; the migration exists so both
-- backends keep one numbering.
SELECT 1;
