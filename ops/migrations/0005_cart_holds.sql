-- A cart's step can carry several reservation records under one LSN (a line's hold ended and its new
-- hold taken, or a cart's holds ended and its order's reservation taken, in one decision). Each event
-- is told apart by its place in the record: seq 0, 1, … (0 for every record before this migration).
ALTER TABLE holdfast_reservation_events ADD COLUMN seq smallint NOT NULL DEFAULT 0;
ALTER TABLE holdfast_reservation_events DROP CONSTRAINT holdfast_reservation_events_pkey;
ALTER TABLE holdfast_reservation_events ADD PRIMARY KEY (generation, lsn, seq);
