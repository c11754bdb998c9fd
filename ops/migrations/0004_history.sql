-- Telling histories apart, and keeping history across a resync.
--
-- applied_digest: the xxh3-64 of the log record at applied_lsn. A data directory restored from a
-- backup can grow past the LSN Postgres applied with records of another history; the mirror compares
-- the record it finds at applied_lsn with this digest before it applies anything, and refuses to mirror
-- a different history over this one. NULL while unknown (LSN 0, or a resync whose log no longer held
-- the snapshot's record; the next batch sets it).
ALTER TABLE holdfast_mirror ADD COLUMN applied_digest bigint;

-- A resync rewrites the current state from a snapshot and keeps every row of history; what it skips
-- is written here: the records after_lsn + 1 ..= through_lsn were never applied one by one, so their
-- events are not in holdfast_reservation_events or holdfast_order_events.
CREATE TABLE holdfast_mirror_gaps (
    generation  integer NOT NULL,
    after_lsn   bigint NOT NULL,
    through_lsn bigint NOT NULL,
    resynced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation, through_lsn)
);

-- The generation of applied_lsn, so that drift checks compare a restock row with the history that
-- took it (NULL for rows applied before this migration).
ALTER TABLE holdfast_stock_adjustments ADD COLUMN applied_generation integer;

-- 'ended': a reservation Postgres had as active that ended within a resync's gap and that the
-- snapshot no longer holds, so how it ended (committed, released, expired) is not known here.
ALTER TABLE holdfast_reservations DROP CONSTRAINT holdfast_reservations_state_check;
ALTER TABLE holdfast_reservations ADD CONSTRAINT holdfast_reservations_state_check
    CHECK (state IN ('active', 'committed', 'released', 'expired', 'ended'));
