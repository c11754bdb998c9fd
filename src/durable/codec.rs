//! Engine records as log payloads: a 16-byte prefix (magic and format version), then the record in
//! rkyv. The schema is its own type, not the engine's, so that changing the engine cannot silently
//! change what is on disk; a change here bumps `RECORD_FORMAT_VERSION`.
//!
//! Decoding validates twice: rkyv checks the archive's structure, and every name goes back through the
//! engine's validating constructors. (The log's CRC already vouched for the bytes.)

use crate::engine::{
    IdempotencyKey, Item, NameError, QueueOrder, Reason, Record, ReservationId, ReservedRecord, RoomConfig,
    RoomState, SaleId, SkuId, UserId,
};
use rkyv::rancor;

mod carts;
mod orders;
pub use carts::cart_step_name;
pub use orders::step_name;

pub const RECORD_MAGIC: [u8; 4] = *b"HFRC";
/// Version 2 is version 1 with the tags of the ids a record names (`ReservationId::tag`) in a longer
/// prefix; the rkyv body is the same. Records that name no tagged id are still written as version 1.
pub const RECORD_FORMAT_VERSION: u32 = 2;
/// The prefix keeps the rkyv bytes 16-byte aligned inside the log's 16-byte aligned payloads.
const PREFIX_BYTES: usize = 16;
/// Version 2's prefix: version 1's, then the tag of the record's reservation and of its order.
const TAGGED_PREFIX_BYTES: usize = 32;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
enum LogRecord {
    StockSet { sku: String, on_hand: u64, at_ms: u64 },
    StockAdjusted { sku: String, delta: i64, reason: String, at_ms: u64 },
    SaleLimitSet { sale: String, per_user_max: u32, at_ms: u64 },
    Reserved(LogReserved),
    Extended { id: u64, expires_at_ms: u64, at_ms: u64 },
    Committed { id: u64, at_ms: u64 },
    Released { id: u64, at_ms: u64 },
    Expired { id: u64, at_ms: u64 },
    // Added after format version 1 was first written: appended, and small enough not to change the
    // archived enum's size (the room is boxed), so the records of version 1 read unchanged.
    SaleConfigured { sale: String, per_user_max: u32, room: Box<LogRoom>, at_ms: u64 },
    QueueJoined { sale: String, user: String, at_ms: u64 },
    QueueOpened { sale: String, at_ms: u64 },
    QueueAdmitted { sale: String, count: u32, at_ms: u64 },
    // A sale's limit with the SKUs it covers; `SaleLimitSet` (no SKUs) is read as one covering none.
    SaleSet { sale: String, per_user_max: u32, skus: Vec<String>, at_ms: u64 },
    // An adjustment under an idempotency key. Unkeyed adjustments are still written as
    // `StockAdjusted`, so that logs without keyed ones read with builds that predate this.
    StockAdjustedKeyed(Box<LogAdjustKeyed>),
    // An order's step with the reservation record it made (`orders.rs`).
    Order(Box<orders::LogOrder>),
    // A cart's step, with the order a checkout placed (`carts.rs`).
    Cart(Box<carts::LogCart>),
    // A sale's cart hold.
    CartHold { sale: String, hold_ms: u64, at_ms: u64 },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct LogAdjustKeyed {
    sku: String,
    delta: i64,
    reason: String,
    at_ms: u64,
    key: String,
    fingerprint: u128,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct LogRoom {
    skus: Vec<String>,
    opens_at_ms: u64,
    admit_per_s: u32,
    max_active: u32,
    session_ms: u64,
    /// 0 fifo, 1 lottery.
    order: u8,
    seed: u64,
}

fn log_room(c: &RoomConfig) -> LogRoom {
    LogRoom {
        skus: c.skus.iter().map(|s| s.to_string()).collect(),
        opens_at_ms: c.opens_at_ms,
        admit_per_s: c.admit_per_s,
        max_active: c.max_active,
        session_ms: c.session_ms,
        order: match c.order {
            QueueOrder::Fifo => 0,
            QueueOrder::Lottery => 1,
        },
        seed: c.seed,
    }
}

fn room_config(r: &ArchivedLogRoom) -> Result<RoomConfig, Invalid> {
    Ok(RoomConfig {
        skus: r.skus.iter().map(|s| SkuId::new(s)).collect::<Result<_, _>>()?,
        opens_at_ms: r.opens_at_ms.to_native(),
        admit_per_s: r.admit_per_s.to_native(),
        max_active: r.max_active.to_native(),
        session_ms: r.session_ms.to_native(),
        order: match r.order {
            0 => QueueOrder::Fifo,
            1 => QueueOrder::Lottery,
            other => return Err(Invalid::Code("queue order", other)),
        },
        seed: r.seed.to_native(),
    })
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct LogReserved {
    id: u64,
    items: Vec<LogItem>,
    created_at_ms: u64,
    expires_at_ms: u64,
    user: Option<String>,
    sale: Option<String>,
    key: Option<String>,
    /// Meaningful only with `key`.
    fingerprint: u128,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct LogItem {
    sku: String,
    qty: u32,
}

fn to_log(record: &Record) -> LogRecord {
    // Names are copied as they are, not through the formatter (this runs under the engine's locks).
    let s = |v: &dyn std::borrow::Borrow<str>| -> String { v.borrow().to_owned() };
    match record {
        Record::StockSet { sku, on_hand, at_ms } => {
            LogRecord::StockSet { sku: s(sku), on_hand: *on_hand, at_ms: *at_ms }
        }
        Record::StockAdjusted { sku, delta, reason, at_ms, idempotency: None } => LogRecord::StockAdjusted {
            sku: s(sku),
            delta: *delta,
            reason: reason.as_str().to_owned(),
            at_ms: *at_ms,
        },
        Record::SaleSet { sale, per_user_max, skus, at_ms } => LogRecord::SaleSet {
            sale: s(sale),
            per_user_max: *per_user_max,
            skus: skus.iter().map(|sku| s(sku)).collect(),
            at_ms: *at_ms,
        },
        Record::StockAdjusted { sku, delta, reason, at_ms, idempotency: Some((key, fingerprint)) } => {
            LogRecord::StockAdjustedKeyed(Box::new(LogAdjustKeyed {
                sku: s(sku),
                delta: *delta,
                reason: reason.as_str().to_owned(),
                at_ms: *at_ms,
                key: s(key),
                fingerprint: *fingerprint,
            }))
        }
        Record::Reserved(r) => LogRecord::Reserved(LogReserved {
            id: r.id.raw(),
            items: r.items.iter().map(|i| LogItem { sku: s(&i.sku), qty: i.qty }).collect(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            user: r.user.as_ref().map(|u| s(u)),
            sale: r.sale.as_ref().map(|v| s(v)),
            key: r.idempotency.as_ref().map(|(k, _)| s(k)),
            fingerprint: r.idempotency.as_ref().map_or(0, |(_, f)| *f),
        }),
        Record::Extended { id, expires_at_ms, at_ms } => {
            LogRecord::Extended { id: id.raw(), expires_at_ms: *expires_at_ms, at_ms: *at_ms }
        }
        Record::Committed { id, at_ms } => LogRecord::Committed { id: id.raw(), at_ms: *at_ms },
        Record::Released { id, at_ms } => LogRecord::Released { id: id.raw(), at_ms: *at_ms },
        Record::Expired { id, at_ms } => LogRecord::Expired { id: id.raw(), at_ms: *at_ms },
        Record::SaleConfigured { sale, per_user_max, room, at_ms } => LogRecord::SaleConfigured {
            sale: s(sale),
            per_user_max: *per_user_max,
            room: Box::new(log_room(room)),
            at_ms: *at_ms,
        },
        Record::QueueJoined { sale, user, at_ms } => {
            LogRecord::QueueJoined { sale: s(sale), user: s(user), at_ms: *at_ms }
        }
        Record::QueueOpened { sale, at_ms } => LogRecord::QueueOpened { sale: s(sale), at_ms: *at_ms },
        Record::QueueAdmitted { sale, count, at_ms } => {
            LogRecord::QueueAdmitted { sale: s(sale), count: *count, at_ms: *at_ms }
        }
        Record::Order(o) => LogRecord::Order(Box::new(orders::to_log_order(o))),
        Record::Cart(c) => LogRecord::Cart(Box::new(carts::to_log_cart(c))),
        Record::CartHold { sale, hold_ms, at_ms } => {
            LogRecord::CartHold { sale: s(sale), hold_ms: *hold_ms, at_ms: *at_ms }
        }
    }
}

/// Writes the 16-byte prefix (magic, version, zeros) into `out`.
fn prefix(out: &mut Vec<u8>, magic: [u8; 4], version: u32) {
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// Checks the prefix and returns what follows it.
fn unprefix<'a>(
    payload: &'a [u8],
    magic: [u8; 4],
    version: u32,
    what: &str,
) -> Result<&'a [u8], DecodeError> {
    if payload.len() < PREFIX_BYTES || payload[0..4] != magic {
        return Err(bad(format_args!("not an engine {what} (bad magic)")));
    }
    let found = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
    if found != version {
        return Err(bad(format_args!("{what} format version {found}, this build reads {version}")));
    }
    Ok(&payload[PREFIX_BYTES..])
}

/// The tag of a reservation record's id (0 for another kind of record).
fn reservation_tag(r: &Record) -> u64 {
    match r {
        Record::Reserved(r) => r.id.tag(),
        Record::Extended { id, .. }
        | Record::Committed { id, .. }
        | Record::Released { id, .. }
        | Record::Expired { id, .. } => id.tag(),
        _ => 0,
    }
}

/// The tags of the ids a record names: its reservation's, and an order step's order's.
fn tags(record: &Record) -> [u64; 2] {
    match record {
        Record::Order(o) => [o.reservation.as_ref().map_or(0, reservation_tag), o.order.0.tag()],
        // A checkout's: its order's.
        Record::Cart(c) => c.inner.iter().find(|i| matches!(i, Record::Order(_))).map_or([0, 0], tags),
        other => [reservation_tag(other), 0],
    }
}

/// Encodes `record` into `out` (cleared first).
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    out.clear();
    let tags = tags(record);
    if tags == [0, 0] {
        prefix(out, RECORD_MAGIC, 1);
    } else {
        prefix(out, RECORD_MAGIC, RECORD_FORMAT_VERSION);
        out.extend_from_slice(&tags[0].to_le_bytes());
        out.extend_from_slice(&tags[1].to_le_bytes());
    }
    // Straight into `out`, behind the prefix: rkyv pads relative to the writer's start, and the prefix
    // is a multiple of the archive's alignment, so the body is laid out exactly as it would be alone.
    const _: () = assert!(PREFIX_BYTES.is_multiple_of(16) && TAGGED_PREFIX_BYTES.is_multiple_of(16));
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(&to_log(record), &mut *out)
        .expect("serialising plain data cannot fail");
}

/// Why a payload is not an engine record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "undecodable record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn bad(what: impl std::fmt::Display) -> DecodeError {
    DecodeError(what.to_string())
}

/// Decodes and validates a payload. `payload` must be 16-byte aligned, as the log's payloads are.
pub fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
    let version = payload.get(4..8).map_or(0, |v| u32::from_le_bytes(v.try_into().expect("4 bytes")));
    let (body, tags) = if version == 1 {
        (unprefix(payload, RECORD_MAGIC, 1, "record")?, [0, 0])
    } else {
        let rest = unprefix(payload, RECORD_MAGIC, RECORD_FORMAT_VERSION, "record")?;
        if rest.len() < TAGGED_PREFIX_BYTES - PREFIX_BYTES {
            return Err(bad("record shorter than its prefix"));
        }
        let tag = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
        (&rest[TAGGED_PREFIX_BYTES - PREFIX_BYTES..], [tag(0), tag(8)])
    };
    let archived = rkyv::access::<ArchivedLogRecord, rancor::Error>(body).map_err(bad)?;
    from_archived(archived, tags).map_err(|e| match e {
        Invalid::Name(e) => bad(e),
        Invalid::Id(raw) => bad(format_args!("reservation id {raw:#x} is not valid")),
        Invalid::Code(what, code) => bad(format_args!("{what} code {code} is not valid")),
    })
}

enum Invalid {
    Name(NameError),
    Id(u64),
    Code(&'static str, u8),
}

impl From<NameError> for Invalid {
    fn from(e: NameError) -> Self {
        Invalid::Name(e)
    }
}

fn id(raw: &rkyv::rend::u64_le, tag: u64) -> Result<ReservationId, Invalid> {
    let raw = raw.to_native();
    ReservationId::from_parts(raw, tag).ok_or(Invalid::Id(raw))
}

/// `tags`: the record's reservation's and its order's (version 2's prefix), or zeros.
fn from_archived(r: &ArchivedLogRecord, tags: [u64; 2]) -> Result<Record, Invalid> {
    Ok(match r {
        ArchivedLogRecord::StockSet { sku, on_hand, at_ms } => {
            Record::StockSet { sku: SkuId::new(sku)?, on_hand: on_hand.to_native(), at_ms: at_ms.to_native() }
        }
        ArchivedLogRecord::StockAdjusted { sku, delta, reason, at_ms } => Record::StockAdjusted {
            sku: SkuId::new(sku)?,
            delta: delta.to_native(),
            reason: Reason::new(reason)?,
            at_ms: at_ms.to_native(),
            idempotency: None,
        },
        ArchivedLogRecord::StockAdjustedKeyed(a) => Record::StockAdjusted {
            sku: SkuId::new(&a.sku)?,
            delta: a.delta.to_native(),
            reason: Reason::new(&a.reason)?,
            at_ms: a.at_ms.to_native(),
            idempotency: Some((IdempotencyKey::new(&a.key)?, a.fingerprint.to_native())),
        },
        ArchivedLogRecord::SaleLimitSet { sale, per_user_max, at_ms } => Record::SaleSet {
            sale: SaleId::new(sale)?,
            per_user_max: per_user_max.to_native(),
            skus: Vec::new(),
            at_ms: at_ms.to_native(),
        },
        ArchivedLogRecord::SaleSet { sale, per_user_max, skus, at_ms } => Record::SaleSet {
            sale: SaleId::new(sale)?,
            per_user_max: per_user_max.to_native(),
            skus: skus.iter().map(|sku| SkuId::new(sku)).collect::<Result<_, _>>()?,
            at_ms: at_ms.to_native(),
        },
        ArchivedLogRecord::Reserved(r) => Record::Reserved(reserved_from(r, tags[0])?),
        ArchivedLogRecord::Extended { id: raw, expires_at_ms, at_ms } => Record::Extended {
            id: id(raw, tags[0])?,
            expires_at_ms: expires_at_ms.to_native(),
            at_ms: at_ms.to_native(),
        },
        ArchivedLogRecord::Committed { id: raw, at_ms } => {
            Record::Committed { id: id(raw, tags[0])?, at_ms: at_ms.to_native() }
        }
        ArchivedLogRecord::Released { id: raw, at_ms } => {
            Record::Released { id: id(raw, tags[0])?, at_ms: at_ms.to_native() }
        }
        ArchivedLogRecord::Expired { id: raw, at_ms } => {
            Record::Expired { id: id(raw, tags[0])?, at_ms: at_ms.to_native() }
        }
        ArchivedLogRecord::SaleConfigured { sale, per_user_max, room, at_ms } => Record::SaleConfigured {
            sale: SaleId::new(sale)?,
            per_user_max: per_user_max.to_native(),
            room: Box::new(room_config(room)?),
            at_ms: at_ms.to_native(),
        },
        ArchivedLogRecord::QueueJoined { sale, user, at_ms } => Record::QueueJoined {
            sale: SaleId::new(sale)?,
            user: UserId::new(user)?,
            at_ms: at_ms.to_native(),
        },
        ArchivedLogRecord::QueueOpened { sale, at_ms } => {
            Record::QueueOpened { sale: SaleId::new(sale)?, at_ms: at_ms.to_native() }
        }
        ArchivedLogRecord::QueueAdmitted { sale, count, at_ms } => Record::QueueAdmitted {
            sale: SaleId::new(sale)?,
            count: count.to_native(),
            at_ms: at_ms.to_native(),
        },
        ArchivedLogRecord::Order(o) => Record::Order(Box::new(orders::from_archived_order(o, tags)?)),
        ArchivedLogRecord::Cart(c) => Record::Cart(Box::new(carts::from_archived_cart(c, tags)?)),
        ArchivedLogRecord::CartHold { sale, hold_ms, at_ms } => Record::CartHold {
            sale: SaleId::new(sale)?,
            hold_ms: hold_ms.to_native(),
            at_ms: at_ms.to_native(),
        },
    })
}

fn reserved_from(r: &ArchivedLogReserved, tag: u64) -> Result<ReservedRecord, Invalid> {
    let items = r.items.iter().map(|i| Ok(Item { sku: SkuId::new(&i.sku)?, qty: i.qty.to_native() }));
    let key = r.key.as_ref().map(|k| IdempotencyKey::new(k)).transpose()?;
    Ok(ReservedRecord {
        id: id(&r.id, tag)?,
        items: items.collect::<Result<_, Invalid>>()?,
        created_at_ms: r.created_at_ms.to_native(),
        expires_at_ms: r.expires_at_ms.to_native(),
        user: r.user.as_ref().map(|u| UserId::new(u)).transpose()?,
        sale: r.sale.as_ref().map(|s| SaleId::new(s)).transpose()?,
        idempotency: key.map(|k| (k, r.fingerprint.to_native())),
    })
}

#[cfg(test)]
mod tests;

pub const STATE_MAGIC: [u8; 4] = *b"HFST";
/// Version 2 added waiting rooms; version 1 snapshots (without them) still read.
/// Version 3 added the SKUs each sale covers and the keys of stock adjustments.
/// Version 4 added orders and the payment events remembered.
/// Version 5 added the tags of reservation ids (`ReservationId::tag`); before it every tag is 0.
/// Version 6 added carts.
pub const STATE_FORMAT_VERSION: u32 = 6;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapStateV6 {
    v5: SnapStateV5,
    carts: carts::SnapCarts,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapStateV5 {
    v4: SnapStateV4,
    tags: SnapTags,
}

/// The tags of the ids in version 4's lists, in the same order: each reservation's, each remembered
/// key's, and each order's (its own and its reservation's).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapTags {
    reservations: Vec<u64>,
    keys: Vec<u64>,
    orders: Vec<(u64, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapStateV4 {
    v3: SnapStateV3,
    orders: orders::SnapOrders,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapStateV2 {
    base: SnapState,
    rooms: Vec<SnapRoom>,
}

/// Version 3: the SKUs each sale covers (version 2 snapshots read as sales covering their rooms'
/// SKUs), and the keys of stock adjustments.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapStateV3 {
    v2: SnapStateV2,
    sale_skus: Vec<SnapSaleSkus>,
    adjust_keys: Vec<SnapAdjustKey>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapSaleSkus {
    sale: String,
    skus: Vec<String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapAdjustKey {
    key: String,
    fingerprint: u128,
    stock: SnapSku,
    created_at_ms: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapRoom {
    sale: String,
    config: LogRoom,
    joiners: Vec<SnapJoiner>,
    opened_at_ms: Option<u64>,
    order: Vec<u32>,
    reserved: Vec<u32>,
    entrants: Vec<u32>,
    late: Vec<u32>,
    batches: Vec<(u32, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapJoiner {
    user: String,
    at_ms: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapState {
    skus: Vec<SnapSku>,
    sales: Vec<SnapSale>,
    reservations: Vec<SnapReservation>,
    keys: Vec<SnapKey>,
    counters: Vec<SnapCounter>,
    next_seqs: Vec<u64>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapSku {
    sku: String,
    on_hand: u64,
    available: u64,
    reserved: u64,
    sold: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapSale {
    sale: String,
    per_user_max: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapReservation {
    id: u64,
    /// 0 active, 1 committed, 2 released, 3 expired.
    state: u8,
    items: Vec<LogItem>,
    created_at_ms: u64,
    expires_at_ms: u64,
    ended_at_ms: Option<u64>,
    holder: Option<SnapCounterKey>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapCounterKey {
    sale: String,
    user: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapKey {
    key: String,
    fingerprint: u128,
    id: u64,
    expires_at_ms: u64,
    created_at_ms: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapCounter {
    sale: String,
    user: String,
    units: u64,
}

fn state_code(state: crate::engine::ReservationState) -> u8 {
    use crate::engine::ReservationState::*;
    match state {
        Active => 0,
        Committed => 1,
        Released => 2,
        Expired => 3,
    }
}

/// Encodes an engine state as a snapshot payload.
pub fn encode_state(state: &crate::engine::EngineState) -> Vec<u8> {
    let mut out = Vec::new();
    prefix(&mut out, STATE_MAGIC, STATE_FORMAT_VERSION);
    let snap = SnapStateV6 { v5: snap_v5(state), carts: carts::snap_carts(&state.carts, &state.cart_holds) };
    out.extend_from_slice(
        &rkyv::to_bytes::<rancor::Error>(&snap).expect("serialising plain data cannot fail"),
    );
    out
}

/// Everything but carts: version 5 of the snapshot, which version 6 wraps.
fn snap_v5(state: &crate::engine::EngineState) -> SnapStateV5 {
    let v4 =
        SnapStateV4 { v3: snap_v3(state), orders: orders::snap_orders(&state.orders, &state.payment_events) };
    let tags = SnapTags {
        reservations: state.reservations.iter().map(|r| r.id.tag()).collect(),
        keys: state.keys.iter().map(|k| k.id.tag()).collect(),
        orders: state.orders.iter().map(|o| (o.id.0.tag(), o.reservation.tag())).collect(),
    };
    SnapStateV5 { v4, tags }
}

/// Everything but orders: version 3 of the snapshot, which version 4 wraps.
fn snap_v3(state: &crate::engine::EngineState) -> SnapStateV3 {
    let snap = SnapState {
        skus: (state.skus.iter())
            .map(|(sku, s)| SnapSku {
                sku: sku.to_string(),
                on_hand: s.on_hand,
                available: s.available,
                reserved: s.reserved,
                sold: s.sold,
            })
            .collect(),
        sales: state
            .sales
            .iter()
            .map(|(sale, n)| SnapSale { sale: sale.to_string(), per_user_max: *n })
            .collect(),
        reservations: (state.reservations.iter())
            .map(|r| SnapReservation {
                id: r.id.raw(),
                state: state_code(r.state),
                items: r.items.iter().map(|i| LogItem { sku: i.sku.to_string(), qty: i.qty }).collect(),
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
                ended_at_ms: r.ended_at_ms,
                holder: r
                    .holder
                    .as_ref()
                    .map(|(s, u)| SnapCounterKey { sale: s.to_string(), user: u.to_string() }),
            })
            .collect(),
        keys: (state.keys.iter())
            .map(|k| SnapKey {
                key: k.key.to_string(),
                fingerprint: k.fingerprint,
                id: k.id.raw(),
                expires_at_ms: k.expires_at_ms,
                created_at_ms: k.created_at_ms,
            })
            .collect(),
        counters: (state.counters.iter())
            .map(|(s, u, n)| SnapCounter { sale: s.to_string(), user: u.to_string(), units: *n })
            .collect(),
        next_seqs: state.next_seqs.clone(),
    };
    let rooms = (state.rooms.iter())
        .map(|r| SnapRoom {
            sale: r.sale.to_string(),
            config: log_room(&r.config),
            joiners: (r.joiners.iter())
                .map(|(u, at)| SnapJoiner { user: u.to_string(), at_ms: *at })
                .collect(),
            opened_at_ms: r.opened_at_ms,
            order: r.order.clone(),
            reserved: r.reserved.clone(),
            entrants: r.entrants.clone(),
            late: r.late.clone(),
            batches: r.batches.clone(),
        })
        .collect();
    let sale_skus = (state.sale_skus.iter())
        .map(|(sale, skus)| SnapSaleSkus {
            sale: sale.to_string(),
            skus: skus.iter().map(|sku| sku.to_string()).collect(),
        })
        .collect();
    let adjust_keys = (state.adjust_keys.iter()).map(snap_adjust_key).collect();
    SnapStateV3 { v2: SnapStateV2 { base: snap, rooms }, sale_skus, adjust_keys }
}

fn snap_adjust_key(k: &crate::engine::RememberedAdjustKey) -> SnapAdjustKey {
    let s = &k.stock;
    SnapAdjustKey {
        key: k.key.to_string(),
        fingerprint: k.fingerprint,
        stock: SnapSku {
            sku: String::new(),
            on_hand: s.on_hand,
            available: s.available,
            reserved: s.reserved,
            sold: s.sold,
        },
        created_at_ms: k.created_at_ms,
    }
}

fn adjust_key(k: &ArchivedSnapAdjustKey) -> Result<crate::engine::RememberedAdjustKey, DecodeError> {
    let s = &k.stock;
    Ok(crate::engine::RememberedAdjustKey {
        key: IdempotencyKey::new(&k.key).map_err(bad)?,
        fingerprint: k.fingerprint.to_native(),
        stock: crate::engine::Stock {
            on_hand: s.on_hand.to_native(),
            available: s.available.to_native(),
            reserved: s.reserved.to_native(),
            sold: s.sold.to_native(),
        },
        created_at_ms: k.created_at_ms.to_native(),
    })
}

/// Decodes and validates a snapshot payload (16-byte aligned).
pub fn decode_state(payload: &[u8]) -> Result<crate::engine::EngineState, DecodeError> {
    use crate::engine::{EngineState, RememberedKey, ReservationState, ReservationView, Stock};
    let found = payload.get(4..8).map_or(0, |v| u32::from_le_bytes(v.try_into().expect("4 bytes")));
    let (mut adjust_keys, mut sale_skus, mut orders, mut tags, mut carts) = (None, None, None, None, None);
    let (snap, rooms) = match found {
        1 => {
            let body = unprefix(payload, STATE_MAGIC, 1, "snapshot")?;
            (rkyv::access::<ArchivedSnapState, rancor::Error>(body).map_err(bad)?, None)
        }
        2 => {
            let body = unprefix(payload, STATE_MAGIC, 2, "snapshot")?;
            let v2 = rkyv::access::<ArchivedSnapStateV2, rancor::Error>(body).map_err(bad)?;
            (&v2.base, Some(&v2.rooms))
        }
        3 => {
            let body = unprefix(payload, STATE_MAGIC, 3, "snapshot")?;
            let v3 = rkyv::access::<ArchivedSnapStateV3, rancor::Error>(body).map_err(bad)?;
            adjust_keys = Some(&v3.adjust_keys);
            sale_skus = Some(&v3.sale_skus);
            (&v3.v2.base, Some(&v3.v2.rooms))
        }
        4 => {
            let body = unprefix(payload, STATE_MAGIC, 4, "snapshot")?;
            let v4 = rkyv::access::<ArchivedSnapStateV4, rancor::Error>(body).map_err(bad)?;
            orders = Some(&v4.orders);
            let v3 = &v4.v3;
            adjust_keys = Some(&v3.adjust_keys);
            sale_skus = Some(&v3.sale_skus);
            (&v3.v2.base, Some(&v3.v2.rooms))
        }
        _ => {
            // Version 6 is version 5 with carts.
            let v5 = if found == 5 {
                let body = unprefix(payload, STATE_MAGIC, 5, "snapshot")?;
                rkyv::access::<ArchivedSnapStateV5, rancor::Error>(body).map_err(bad)?
            } else {
                let body = unprefix(payload, STATE_MAGIC, STATE_FORMAT_VERSION, "snapshot")?;
                let v6 = rkyv::access::<ArchivedSnapStateV6, rancor::Error>(body).map_err(bad)?;
                carts = Some(&v6.carts);
                &v6.v5
            };
            tags = Some(&v5.tags);
            let v4 = &v5.v4;
            orders = Some(&v4.orders);
            let v3 = &v4.v3;
            adjust_keys = Some(&v3.adjust_keys);
            sale_skus = Some(&v3.sale_skus);
            (&v3.v2.base, Some(&v3.v2.rooms))
        }
    };
    let name_err = |e: NameError| bad(e);
    let id_of = |raw: &rkyv::rend::u64_le| {
        ReservationId::from_parts(raw.to_native(), 0).ok_or_else(|| bad("invalid reservation id"))
    };
    let mut state = EngineState::default();
    for s in snap.skus.iter() {
        let stock = Stock {
            on_hand: s.on_hand.to_native(),
            available: s.available.to_native(),
            reserved: s.reserved.to_native(),
            sold: s.sold.to_native(),
        };
        state.skus.push((SkuId::new(&s.sku).map_err(name_err)?, stock));
    }
    for s in snap.sales.iter() {
        state.sales.push((SaleId::new(&s.sale).map_err(name_err)?, s.per_user_max.to_native()));
    }
    for r in snap.reservations.iter() {
        let state_of = match r.state {
            0 => ReservationState::Active,
            1 => ReservationState::Committed,
            2 => ReservationState::Released,
            3 => ReservationState::Expired,
            other => return Err(bad(format_args!("reservation state {other}"))),
        };
        let items = (r.items.iter())
            .map(|i| Ok(Item { sku: SkuId::new(&i.sku).map_err(name_err)?, qty: i.qty.to_native() }))
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let holder = match r.holder.as_ref() {
            Some(h) => {
                Some((SaleId::new(&h.sale).map_err(name_err)?, UserId::new(&h.user).map_err(name_err)?))
            }
            None => None,
        };
        state.reservations.push(ReservationView {
            id: id_of(&r.id)?,
            state: state_of,
            items,
            created_at_ms: r.created_at_ms.to_native(),
            expires_at_ms: r.expires_at_ms.to_native(),
            ended_at_ms: r.ended_at_ms.as_ref().map(|t| t.to_native()),
            holder,
        });
    }
    for k in snap.keys.iter() {
        state.keys.push(RememberedKey {
            key: IdempotencyKey::new(&k.key).map_err(name_err)?,
            fingerprint: k.fingerprint.to_native(),
            id: id_of(&k.id)?,
            expires_at_ms: k.expires_at_ms.to_native(),
            created_at_ms: k.created_at_ms.to_native(),
        });
    }
    for c in snap.counters.iter() {
        let (sale, user) = (SaleId::new(&c.sale).map_err(name_err)?, UserId::new(&c.user).map_err(name_err)?);
        state.counters.push((sale, user, c.units.to_native()));
    }
    state.next_seqs = snap.next_seqs.iter().map(|n| n.to_native()).collect();
    for k in adjust_keys.into_iter().flat_map(|keys| keys.iter()) {
        state.adjust_keys.push(adjust_key(k)?);
    }
    for r in rooms.into_iter().flat_map(|rooms| rooms.iter()) {
        let invalid = |e: Invalid| match e {
            Invalid::Name(e) => bad(e),
            Invalid::Id(raw) => bad(format_args!("id {raw}")),
            Invalid::Code(what, code) => bad(format_args!("{what} code {code} is not valid")),
        };
        let joiners = (r.joiners.iter())
            .map(|j| Ok((UserId::new(&j.user).map_err(name_err)?, j.at_ms.to_native())))
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let u32s = |v: &rkyv::vec::ArchivedVec<rkyv::rend::u32_le>| v.iter().map(|n| n.to_native()).collect();
        state.rooms.push(RoomState {
            sale: SaleId::new(&r.sale).map_err(name_err)?,
            config: room_config(&r.config).map_err(invalid)?,
            joiners,
            opened_at_ms: r.opened_at_ms.as_ref().map(|t| t.to_native()),
            order: u32s(&r.order),
            reserved: u32s(&r.reserved),
            entrants: u32s(&r.entrants),
            late: u32s(&r.late),
            batches: r.batches.iter().map(|b| (b.0.to_native(), b.1.to_native())).collect(),
        });
    }
    state.sale_skus = match sale_skus {
        Some(sales) => (sales.iter())
            .map(|s| {
                let skus = s.skus.iter().map(|sku| SkuId::new(sku)).collect::<Result<_, _>>();
                Ok((SaleId::new(&s.sale).map_err(name_err)?, skus.map_err(name_err)?))
            })
            .collect::<Result<_, DecodeError>>()?,
        // Before version 3 only rooms named SKUs.
        None => state.rooms.iter().map(|r| (r.sale.clone(), r.config.skus.clone())).collect(),
    };
    if let Some(orders) = orders {
        (state.orders, state.payment_events) = orders::orders_from(orders)?;
    }
    if let Some(tags) = tags {
        tag_ids(&mut state, tags)?;
    }
    if let Some(carts) = carts {
        (state.carts, state.cart_holds) = carts::carts_from(carts)?;
    }
    Ok(state)
}

/// Gives the ids of a decoded state their tags (version 5), list by list.
fn tag_ids(state: &mut crate::engine::EngineState, tags: &ArchivedSnapTags) -> Result<(), DecodeError> {
    let lengths = [tags.reservations.len(), tags.keys.len(), tags.orders.len()];
    if lengths != [state.reservations.len(), state.keys.len(), state.orders.len()] {
        return Err(bad(format_args!("snapshot tags {lengths:?} do not match its lists")));
    }
    let tagged = |id: ReservationId, tag: &rkyv::rend::u64_le| {
        ReservationId::from_parts(id.raw(), tag.to_native()).expect("the raw id was checked")
    };
    for (r, tag) in state.reservations.iter_mut().zip(tags.reservations.iter()) {
        r.id = tagged(r.id, tag);
    }
    for (k, tag) in state.keys.iter_mut().zip(tags.keys.iter()) {
        k.id = tagged(k.id, tag);
    }
    for (o, tag) in state.orders.iter_mut().zip(tags.orders.iter()) {
        (o.id.0, o.reservation) = (tagged(o.id.0, &tag.0), tagged(o.reservation, &tag.1));
    }
    Ok(())
}
