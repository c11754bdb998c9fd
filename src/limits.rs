//! Every hard limit of the engine, in one place. Configurable bounds (TTL range, table sizes) live in
//! `engine::EngineConfig` and are checked against these at start-up.

/// Items (distinct SKUs) in one reservation.
pub const ITEMS_PER_RESERVATION_MAX: usize = 32;
/// Units of one SKU in one reservation item.
pub const QTY_PER_ITEM_MAX: u32 = 10_000;
/// Units a SKU may have on hand. Far below `u64::MAX` and `i64::MAX` so that sums of counters and signed
/// adjustments can never overflow.
pub const ON_HAND_MAX: u64 = 1 << 40;
/// Bytes of a SKU id, a sale id.
pub const SKU_BYTES_MAX: usize = 64;
pub const SALE_BYTES_MAX: usize = 64;
/// Bytes of a user id and of an idempotency key.
pub const USER_BYTES_MAX: usize = 128;
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
/// Bytes of a cart id.
pub const CART_BYTES_MAX: usize = 128;
/// Items (distinct SKUs) in one cart: a cart checks out as one reservation.
pub const CART_ITEMS_MAX: usize = ITEMS_PER_RESERVATION_MAX;
/// Carts merged into a cart that it remembers, so that a retried merge is a repeat and not a 404.
pub const CART_MERGES_REMEMBERED: usize = 16;
/// Characters of the free-text reason of a stock adjustment (characters, not bytes, as JSON Schema's
/// maxLength counts them).
pub const REASON_CHARS_MAX: usize = 256;
/// Shards: reservation ids carry their shard in 16 bits.
pub const SHARDS_MAX: usize = 1024;
/// A reservation's lifetime from creation to `expires_at`, however often it is extended.
pub const HOLD_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Shoppers in one sale's waiting room, and SKUs one room gates.
pub const ROOM_JOINERS_MAX: u32 = 5_000_000;
pub const ROOM_SKUS_MAX: usize = 64;
/// A per-user limit in a sale.
pub const PER_USER_UNITS_MAX: u32 = 1_000_000;

// How the limits relate: a whole reservation's units must fit a u32, and the largest possible reservation
// must not be able to exceed what one SKU can hold.
const _: () = assert!((ITEMS_PER_RESERVATION_MAX as u64) * (QTY_PER_ITEM_MAX as u64) <= u32::MAX as u64);
const _: () = assert!((QTY_PER_ITEM_MAX as u64) < ON_HAND_MAX);
const _: () = assert!(ON_HAND_MAX < (i64::MAX as u64) / 4);
const _: () = assert!(SHARDS_MAX <= 1 << 16);
const _: () = assert!(HOLD_MS_MAX < 1 << 40);
