//! What callers hand the engine and what it hands back. Expected outcomes (sold out, expired, limit
//! reached) are plain enum values: cheap, and allocation-free on the hot path — an error names the
//! offending item by its index in the request instead of copying its SKU.

use super::ids::{IdempotencyKey, NameError, ReservationId, SaleId, SkuId, UserId};
use std::fmt;

/// One line of a reservation: `qty` units of `sku`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    pub sku: SkuId,
    pub qty: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    pub items: Vec<Item>,
    pub ttl_ms: u64,
    /// Who is buying. Required with `sale`, where the sale's per-user limit applies.
    pub user: Option<UserId>,
    pub sale: Option<SaleId>,
    pub idempotency_key: Option<IdempotencyKey>,
}

impl ReserveRequest {
    /// A stable 128-bit digest of everything that defines the request except its idempotency key: the
    /// same key with a different digest is a different request. Stable across processes and versions
    /// (it is written to the log), so it is a fixed hash of a fixed encoding.
    pub fn fingerprint(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let field = |h: &mut xxhash_rust::xxh3::Xxh3, bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        h.update(&(self.items.len() as u64).to_le_bytes());
        for item in &self.items {
            field(&mut h, item.sku.as_str().as_bytes());
            h.update(&item.qty.to_le_bytes());
        }
        h.update(&self.ttl_ms.to_le_bytes());
        field(&mut h, self.user.as_ref().map_or(&[][..], |u| u.as_str().as_bytes()));
        field(&mut h, self.sale.as_ref().map_or(&[][..], |s| s.as_str().as_bytes()));
        h.digest128()
    }
}

/// A successful reserve. `replayed` is true when an earlier reserve with the same idempotency key and
/// request produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub id: ReservationId,
    pub expires_at_ms: u64,
    pub replayed: bool,
}

/// A request that is malformed or out of the configured bounds. Changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    NoItems,
    TooManyItems {
        max: usize,
    },
    ZeroQuantity {
        item: usize,
    },
    QuantityTooLarge {
        item: usize,
        max: u32,
    },
    /// The same SKU appears twice; `item` is the second one.
    DuplicateSku {
        item: usize,
    },
    TtlOutOfRange {
        min: u64,
        max: u64,
    },
    /// A per-user limit needs a user: `sale` was given without `user`.
    SaleWithoutUser,
    Name(NameError),
    /// Stock outside `0..=ON_HAND_MAX`, or a zero adjustment.
    StockOutOfRange,
    PerUserLimitOutOfRange,
    /// A waiting room's SKUs, rate, capacity or session length out of bounds.
    RoomOutOfRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveError {
    Invalid(RequestError),
    UnknownSku {
        item: usize,
    },
    UnknownSale,
    /// `items[item]`'s SKU is not in the sale the reserve counts against: the one named, or the one
    /// covering the reserve's other SKUs (a reserve's SKUs belong to one sale or to none).
    SaleMismatch {
        item: usize,
    },
    InsufficientStock {
        item: usize,
        available: u64,
    },
    /// Units already held or bought by this user in this sale, plus this request, exceed the limit.
    LimitExceeded {
        limit: u32,
        held: u64,
    },
    /// The idempotency key was used for a different request.
    IdempotencyConflict,
    /// Too many idempotency keys are remembered; retry later or without a key.
    IdempotencyTableFull,
    /// Too many active reservations in one shard.
    ShardFull,
    /// The log refused the record (full disk, failed sync): nothing changed.
    LogRefused,
}

/// Errors of operations on an existing reservation: commit, release, extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationError {
    NotFound,
    /// It passed `expires_at` (it may have been expired by this very call).
    Expired,
    Committed,
    Released,
    /// It is an order's hold: the order moves it (`crate::orders`), nobody else.
    OrderHeld,
    Invalid(RequestError),
    LogRefused,
}

/// Errors of stock and sale administration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockError {
    UnknownSku,
    /// `on_hand` may not fall below what is reserved plus sold.
    BelowHeld {
        held: u64,
    },
    /// `on_hand` would pass `ON_HAND_MAX`: a limit of what is held, like `BelowHeld`, not of the request.
    AboveMax {
        max: u64,
    },
    Invalid(RequestError),
    LogRefused,
    /// The idempotency key was used with another request (or for a reserve).
    IdempotencyConflict,
    /// No room for one more idempotency key until older ones pass their window.
    IdempotencyTableFull,
}

/// A stock adjustment's outcome. `replayed`: an earlier adjustment with the same idempotency key and
/// request made it, and `stock` is what that one left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjusted {
    pub stock: Stock,
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReservationState {
    Active,
    Committed,
    Released,
    Expired,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for ReservationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SKU's counters, read consistently: `available + reserved + sold == on_hand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stock {
    pub on_hand: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

/// A reservation as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    pub id: ReservationId,
    pub state: ReservationState,
    pub items: Vec<Item>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// When it was committed, released or expired.
    pub ended_at_ms: Option<u64>,
    /// The sale and buyer it counts against, where a per-user limit applies.
    pub holder: Option<(SaleId, UserId)>,
}
