-- holdfast's mirror of its log in Postgres. Written only by holdfast's mirror (src/reconcile/), except
-- holdfast_stock_adjustments, where other systems insert restocks and shrinkage for holdfast to apply.

-- Per SKU, the counters as of holdfast_mirror.applied_lsn.
CREATE TABLE holdfast_skus (
    sku         text PRIMARY KEY,
    on_hand     bigint NOT NULL,
    available   bigint NOT NULL,
    reserved    bigint NOT NULL,
    sold        bigint NOT NULL,
    updated_lsn bigint NOT NULL,
    CONSTRAINT holdfast_skus_conservation
        CHECK (available >= 0 AND reserved >= 0 AND sold >= 0 AND available + reserved + sold = on_hand)
);

CREATE TABLE holdfast_sales (
    sale           text PRIMARY KEY,
    per_user_limit integer NOT NULL,
    updated_lsn    bigint NOT NULL
);

CREATE TABLE holdfast_reservations (
    id              text PRIMARY KEY,
    state           text NOT NULL CHECK (state IN ('active', 'committed', 'released', 'expired')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    user_id         text,
    sale            text,
    idempotency_key text,
    created_lsn     bigint NOT NULL,
    updated_lsn     bigint NOT NULL
);
CREATE INDEX holdfast_reservations_active ON holdfast_reservations (id) WHERE state = 'active';
CREATE INDEX holdfast_reservations_user ON holdfast_reservations (user_id);

CREATE TABLE holdfast_reservation_items (
    reservation_id text NOT NULL REFERENCES holdfast_reservations (id),
    sku            text NOT NULL,
    qty            integer NOT NULL CHECK (qty > 0),
    PRIMARY KEY (reservation_id, sku)
);

-- Every state change of every reservation, one row per log record: the state history. The log's
-- generation and LSN are the key, so a record applied twice fails its transaction instead of counting
-- twice. (A warm start begins a new log, and a new generation.)
CREATE TABLE holdfast_reservation_events (
    generation     integer NOT NULL,
    lsn            bigint NOT NULL,
    reservation_id text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('reserved', 'extended', 'committed', 'released', 'expired')),
    at             timestamptz NOT NULL,
    expires_at     timestamptz,
    PRIMARY KEY (generation, lsn)
);
CREATE INDEX holdfast_reservation_events_reservation ON holdfast_reservation_events (reservation_id);

-- The mirror's checkpoint: every record up to applied_lsn is applied, and none after it. Advanced in
-- the transaction that applies the records.
CREATE TABLE holdfast_mirror (
    id          integer PRIMARY KEY CHECK (id = 1),
    generation  integer NOT NULL DEFAULT 1,
    applied_lsn bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO holdfast_mirror (id, applied_lsn) VALUES (1, 0);

-- Stock-of-record changes made by other systems (a warehouse restock, a shrinkage). holdfast applies
-- each row once, as a logged adjustment, and records the LSN here when the mirror applies that record;
-- a refused row (unknown SKU, shrinkage below what is held) gets `refused` instead.
CREATE TABLE holdfast_stock_adjustments (
    id          bigserial PRIMARY KEY,
    sku         text NOT NULL,
    delta       bigint NOT NULL CHECK (delta <> 0),
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    applied_lsn bigint,
    applied_at  timestamptz,
    refused     text
);
CREATE INDEX holdfast_stock_adjustments_pending ON holdfast_stock_adjustments (id)
    WHERE applied_lsn IS NULL AND refused IS NULL;
