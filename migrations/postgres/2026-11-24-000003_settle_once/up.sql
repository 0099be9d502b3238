-- A swept reservation is kept, marked, until its request settles: settling
-- charges only while the row exists, so a settlement retried after a commit
-- whose answer was lost charges once.
ALTER TABLE reservations ADD COLUMN swept_at BIGINT;
