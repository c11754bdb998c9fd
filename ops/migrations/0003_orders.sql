-- Orders (the checkout saga), as of holdfast_mirror.applied_lsn. Written only by holdfast's mirror, from
-- the order steps in the log; the reservation record a step carries (reserved, extended, committed,
-- released, expired) goes to holdfast_reservations and holdfast_reservation_events like any other.
-- `cause` is set only while the order is cancelled (payment_failed, expired, cancelled), as the API
-- shows it. Postgres keeps every order; the engine forgets ended ones after its retention (never one
-- that is open or needs a person: refund_due, payment_mismatch).
CREATE TABLE holdfast_orders (
    id              text PRIMARY KEY,
    state           text NOT NULL CHECK (state IN ('awaiting_payment', 'payment_pending', 'paid', 'cancelled',
                                                   'refund_due', 'payment_mismatch')),
    cause           text CHECK (cause IN ('payment_failed', 'expired', 'cancelled')),
    -- The reservation now holding the units: the order's first, or the one a late payment rebooked.
    reservation_id  text NOT NULL,
    user_id         text NOT NULL,
    sale            text,
    -- [{"sku", "qty", "unit_price"}], prices in the currency's minor unit.
    items           jsonb NOT NULL,
    amount          bigint NOT NULL CHECK (amount >= 0),
    currency        text NOT NULL,
    -- The payment provider's reference (e.g. a PaymentIntent id), once attached.
    provider_ref    text,
    pay_by          timestamptz NOT NULL,
    -- What a payment that did not match carried (payment_mismatch only; unknown after a resync).
    paid_amount     bigint,
    paid_currency   text,
    -- Paid by a late payment whose new reservation is not committed yet (the server commits it).
    commit_owed     boolean NOT NULL DEFAULT false,
    idempotency_key text NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    -- When it left awaiting_payment / payment_pending for good.
    ended_at        timestamptz,
    created_lsn     bigint NOT NULL,
    updated_lsn     bigint NOT NULL,
    CONSTRAINT holdfast_orders_cause CHECK ((state = 'cancelled') = (cause IS NOT NULL))
);
-- The operator's lists: open orders, and those that need a person.
CREATE INDEX holdfast_orders_state ON holdfast_orders (state, pay_by)
    WHERE state IN ('awaiting_payment', 'payment_pending', 'refund_due', 'payment_mismatch');
CREATE INDEX holdfast_orders_user ON holdfast_orders (user_id);
CREATE INDEX holdfast_orders_reservation ON holdfast_orders (reservation_id);
CREATE INDEX holdfast_orders_provider_ref ON holdfast_orders (provider_ref) WHERE provider_ref IS NOT NULL;

-- Every order step, one row per log record: the order's history. Keyed like
-- holdfast_reservation_events, so a record applied twice fails its transaction instead of counting twice.
CREATE TABLE holdfast_order_events (
    generation     integer NOT NULL,
    lsn            bigint NOT NULL,
    order_id       text NOT NULL,
    -- placed, payment_attached, pending, paid, cancelled, rebooked, refund_due, payment_mismatch
    step           text NOT NULL,
    -- The order's state after the step (NULL: unchanged, for payment_attached).
    state          text,
    cause          text,
    -- The payment provider's event that caused it (a webhook); NULL for the status check, the checkout
    -- service and the server's own timers.
    event_id       text,
    reservation_id text,
    at             timestamptz NOT NULL,
    PRIMARY KEY (generation, lsn)
);
CREATE INDEX holdfast_order_events_order ON holdfast_order_events (order_id);
CREATE INDEX holdfast_order_events_event ON holdfast_order_events (event_id) WHERE event_id IS NOT NULL;
