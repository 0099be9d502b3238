ALTER TABLE reservations DROP COLUMN swept_at;
