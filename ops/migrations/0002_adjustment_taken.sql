-- The LSN of the adjustment record that took a restock row into holdfast, written as soon as the
-- record is durable. A resync from a snapshot skips the records it covers, and with them the
-- marking of their rows as applied: it marks every row taken at or below the snapshot's LSN instead,
-- so no row is taken twice.
ALTER TABLE holdfast_stock_adjustments ADD COLUMN taken_lsn bigint;
DROP INDEX holdfast_stock_adjustments_pending;
CREATE INDEX holdfast_stock_adjustments_pending ON holdfast_stock_adjustments (id)
    WHERE applied_lsn IS NULL AND refused IS NULL AND taken_lsn IS NULL;
