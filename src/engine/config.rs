//! The engine's configurable bounds, with safe defaults and a check that they are coherent.

use crate::limits::{HOLD_MS_MAX, SHARDS_MAX};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// SKUs are spread over this many independently locked shards.
    pub shards: usize,
    /// The TTL a reserve or extend may ask for.
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
    /// How far past its creation a reservation may be extended: `expires_at <= created_at + hold_ms_max`.
    pub hold_ms_max: u64,
    /// How long an idempotency key is remembered after the reserve that used it.
    pub idempotency_window_ms: u64,
    /// How many idempotency keys are remembered at once; a reserve with a new key fails when full.
    pub idempotency_keys_max: usize,
    /// How long a committed, released or expired reservation can still be read (and re-committed or
    /// re-released idempotently) after it ended.
    pub ended_retention_ms: u64,
    /// Active reservations one shard may hold; a reserve beyond it fails with `ShardFull`.
    pub active_per_shard_max: usize,
    /// Orders remembered at once (open ones, and ended ones within `ended_retention_ms`).
    pub orders_max: usize,
    /// How far each `payment_pending` pushes an order's hold (within `hold_ms_max` of its creation;
    /// an extension is a TTL, so it is taken within the TTL range).
    pub pending_extension_ms: u64,
    /// How long a payment event's id is remembered: longer than providers retry (3 days).
    pub payment_event_retention_ms: u64,
    /// Payment event ids remembered at once (`orders::book::EVENT_BYTES` each); webhooks beyond it
    /// are answered 503 so that the provider retries later, never applied without being remembered.
    pub payment_events_max: usize,
    /// How long past its deadline a hold stays unswept, so that a commit, release or extend that
    /// arrived before the deadline but is decided after it (it waited in the server) is judged at
    /// its arrival: see [`Engine::judged_at`](super::Engine::judged_at). Units of an expired hold
    /// return within this plus one expiry tick.
    pub commit_grace_ms: u64,
    /// Carts held at once; a new cart beyond it is refused (`carts_full`), never made room for by
    /// dropping another.
    pub carts_max: usize,
    /// How long a cart is kept after its last edit.
    pub cart_idle_ms: u64,
    /// The key of reservation ids' tags (SipHash-2-4 of the id's sequence, see `ids.rs`). None: a
    /// random key drawn by each engine, which is what a server wants; tests fix it so that a
    /// workload's records repeat from run to run. Tags are kept in the log, so the key need not
    /// outlive the process.
    pub id_tag_key: Option<u128>,
}

/// The server's default grace: with the default 25 ms expiry tick, units still return within 100 ms of the
/// deadline, as the contract says, while a commit may wait 50 ms in the server and still count.
pub const COMMIT_GRACE_MS: u64 = 50;

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            shards: cores.min(SHARDS_MAX),
            ttl_ms_min: 1_000,
            ttl_ms_max: 60 * 60 * 1000,
            hold_ms_max: 2 * 60 * 60 * 1000,
            idempotency_window_ms: 24 * 60 * 60 * 1000,
            idempotency_keys_max: 4_000_000,
            ended_retention_ms: 24 * 60 * 60 * 1000,
            active_per_shard_max: 4_000_000,
            orders_max: 2_000_000,
            pending_extension_ms: 10 * 60 * 1000,
            payment_event_retention_ms: 7 * 24 * 60 * 60 * 1000,
            payment_events_max: 4_000_000,
            // None in the library: its callers pass the times they mean. The server's flag
            // (`--commit-grace`) defaults to COMMIT_GRACE_MS.
            commit_grace_ms: 0,
            id_tag_key: None,
            carts_max: 2_000_000,
            cart_idle_ms: 30 * 24 * 60 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid engine configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl EngineConfig {
    /// How long an ended order is kept: as long as a late payment for it may still come (its
    /// event ids are kept that long), so that a success after cancellation finds it and a refund is
    /// owed rather than the payment dropped as "unknown order"; and never less than reservations.
    pub fn order_retention_ms(&self) -> u64 {
        self.ended_retention_ms.max(self.payment_event_retention_ms)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |why: String| Err(ConfigError(why));
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return fail(format!("shards must be 1..={SHARDS_MAX}, not {}", self.shards));
        }
        if self.ttl_ms_min == 0 || self.ttl_ms_min > self.ttl_ms_max {
            return fail(format!(
                "ttl range {}..={} ms is empty or starts at 0",
                self.ttl_ms_min, self.ttl_ms_max
            ));
        }
        if self.hold_ms_max < self.ttl_ms_max || self.hold_ms_max > HOLD_MS_MAX {
            return fail(format!(
                "hold_ms_max {} must be between ttl_ms_max {} and {HOLD_MS_MAX}",
                self.hold_ms_max, self.ttl_ms_max
            ));
        }
        if self.payment_event_retention_ms < 3 * 24 * 60 * 60 * 1000 {
            return fail(format!(
                "payment event ids must be remembered at least 3 days (providers retry that long), not {} ms",
                self.payment_event_retention_ms
            ));
        }
        if self.commit_grace_ms > self.ttl_ms_min {
            return fail(format!(
                "the commit grace {} ms must not exceed the shortest TTL {} ms",
                self.commit_grace_ms, self.ttl_ms_min
            ));
        }
        if self.orders_max == 0 || self.payment_events_max == 0 {
            return fail("order and payment event bounds must be at least 1".into());
        }
        if self.carts_max == 0 || self.cart_idle_ms == 0 {
            return fail("carts_max and cart_idle_ms must be at least 1".into());
        }
        if self.idempotency_keys_max == 0 || self.active_per_shard_max == 0 {
            return fail("table bounds must be at least 1".into());
        }
        Ok(())
    }
}
