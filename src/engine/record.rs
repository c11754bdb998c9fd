//! The record of one mutation: what was decided, self-contained, in the words of `design.md`. Applying
//! the records of a run in their order to an empty engine reproduces its state exactly (`Engine::apply`).
//! Records carry outcomes, not requests: replay never re-runs a decision, so it cannot decide otherwise.

use super::ids::{IdempotencyKey, Reason, ReservationId, SaleId, SkuId, UserId};
use super::queue::RoomConfig;
use super::types::Item;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A SKU was created or its stock set.
    StockSet {
        sku: SkuId,
        on_hand: u64,
        at_ms: u64,
    },
    /// Restock (positive) or shrinkage (negative).
    StockAdjusted {
        sku: SkuId,
        delta: i64,
        reason: Reason,
        at_ms: u64,
        /// The key and the request's fingerprint, remembered (with the stock the adjustment left)
        /// until the idempotency window passes, as a reserve's are.
        idempotency: Option<(IdempotencyKey, u128)>,
    },
    /// A sale without a waiting room was set: its per-user limit and the SKUs it covers.
    SaleSet {
        sale: SaleId,
        per_user_max: u32,
        skus: Vec<SkuId>,
        at_ms: u64,
    },
    /// A sale's per-user limit and its waiting room were set.
    SaleConfigured {
        sale: SaleId,
        per_user_max: u32,
        room: Box<RoomConfig>,
        at_ms: u64,
    },
    /// A shopper joined a sale's queue, behind everyone who joined before.
    QueueJoined {
        sale: SaleId,
        user: UserId,
        at_ms: u64,
    },
    /// A sale's waiting room opened (a lottery drew its order).
    QueueOpened {
        sale: SaleId,
        at_ms: u64,
    },
    /// The next `count` shoppers in a sale's queue were admitted.
    QueueAdmitted {
        sale: SaleId,
        count: u32,
        at_ms: u64,
    },
    Reserved(ReservedRecord),
    /// The deadline moved to `expires_at_ms` (an absolute time, as every deadline in the log).
    Extended {
        id: ReservationId,
        expires_at_ms: u64,
        at_ms: u64,
    },
    Committed {
        id: ReservationId,
        at_ms: u64,
    },
    Released {
        id: ReservationId,
        at_ms: u64,
    },
    Expired {
        id: ReservationId,
        at_ms: u64,
    },
    /// An order's transition, with the reservation record it made (see `orders::book`).
    Order(Box<crate::orders::OrderRecord>),
    /// A cart's edit, merge or end, with the holds and the order it made (see `carts::book`).
    Cart(Box<crate::carts::CartRecord>),
    /// A sale's cart hold set: adding its SKUs to a cart reserves them for `hold_ms` (0: no hold).
    CartHold {
        sale: SaleId,
        hold_ms: u64,
        at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedRecord {
    pub id: ReservationId,
    pub items: Vec<Item>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub user: Option<UserId>,
    /// Present when the units count against a sale's per-user limit (then `user` is present too).
    pub sale: Option<SaleId>,
    /// The key and the request's fingerprint, remembered until the idempotency window passes.
    pub idempotency: Option<(IdempotencyKey, u128)>,
}

impl Record {
    /// The engine time at which the mutation took effect.
    pub fn at_ms(&self) -> u64 {
        match self {
            Record::StockSet { at_ms, .. }
            | Record::StockAdjusted { at_ms, .. }
            | Record::SaleSet { at_ms, .. }
            | Record::SaleConfigured { at_ms, .. }
            | Record::QueueJoined { at_ms, .. }
            | Record::QueueOpened { at_ms, .. }
            | Record::QueueAdmitted { at_ms, .. }
            | Record::Extended { at_ms, .. }
            | Record::Committed { at_ms, .. }
            | Record::Released { at_ms, .. }
            | Record::Expired { at_ms, .. }
            | Record::CartHold { at_ms, .. } => *at_ms,
            Record::Reserved(r) => r.created_at_ms,
            Record::Order(o) => o.at_ms,
            Record::Cart(c) => c.at_ms,
        }
    }
}

/// Refusal from a sink: the record could not be logged, so the mutation must not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkRefused;

/// Where the engine hands each record, while it still holds the locks that ordered the mutation, and
/// before the mutation is applied. Appending under those locks is what makes the sink's order a valid
/// replay order: two records that touch the same SKU, reservation, user counter or idempotency key reach
/// the sink in the order they took effect. An append must be quick and must not call back into the
/// engine; if it refuses, the engine changes nothing.
pub trait RecordSink {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused>;

    /// Several records of one decision, applied only once all are accepted. A sink that logs them as
    /// one entry (a cart's step carrying them) makes them one in the log too; this default logs them
    /// one by one.
    fn append_all(&mut self, records: &[Record]) -> Result<(), SinkRefused> {
        records.iter().try_for_each(|r| self.append(r))
    }
}

/// No log: an engine used alone (benchmarks, demos).
impl RecordSink for () {
    fn append(&mut self, _: &Record) -> Result<(), SinkRefused> {
        Ok(())
    }
}

/// Keeps every record: tests and replay checks.
impl RecordSink for Vec<Record> {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        self.push(record.clone());
        Ok(())
    }
}
