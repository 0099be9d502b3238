-- Nothing to undo: the up migration changes nothing on PostgreSQL.
SELECT 1;
