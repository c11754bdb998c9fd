//! The reservation engine: per-SKU stock and TTL reservations, in memory.
//!
//! Pure, synchronous and deterministic: no I/O, no clock (time arrives as `now_ms`), no async. Every
//! mutation is decided under its locks, handed to a [`RecordSink`] as a [`Record`] while those locks
//! are held, and applied only if the sink accepted it; [`Engine::apply`] replays records through the
//! same code. See `ARCHITECTURE.md` for the locking order and why the sink's order is a replay order.

mod catalog;
mod config;
mod holders;
mod idempotency;
mod ids;
mod lifecycle;
pub(crate) use lifecycle::Late;
mod queue;
mod record;
mod rehold;
mod replay;
mod reserve;
mod sales;
mod shard;
mod state;
mod stock;
mod types;

pub use config::{ConfigError, EngineConfig, COMMIT_GRACE_MS};
pub use ids::{
    CartId, IdText, IdempotencyKey, NameError, NameProblem, Reason, ReservationId, SaleId, SkuId, UserId,
};
pub use queue::{
    Joined, QueueError, QueueOrder, QueueState, QueueView, RoomConfig, RoomState, RoomTick, RoomView,
    ADMIT_PER_S_MAX, SESSION_MS_MAX, SESSION_MS_MIN,
};
pub use record::{Record, RecordSink, ReservedRecord, SinkRefused};
pub use rehold::NewHold;
pub use replay::ReplayError;
pub use state::{EngineState, RememberedAdjustKey, RememberedKey, RestoreError};
pub use types::{
    Adjusted, Item, RequestError, ReservationError, ReservationState, ReservationView, ReserveError,
    ReserveRequest, Reserved, Stock, StockError,
};

use crate::sync::Mutex;
use catalog::Catalog;
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use holders::Counters;
use idempotency::KeyTable;
use shard::{shard_set, Locked, Shard};

pub struct Engine {
    config: EngineConfig,
    catalog: Catalog,
    /// Padded so that two shards' locks never share a cache line.
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Per-user limit of each sale.
    sales: DashMap<SaleId, u32, foldhash::fast::RandomState>,
    counters: Counters,
    keys: KeyTable,
    /// Waiting rooms of gated sales.
    rooms: crate::sync::RwLock<
        std::collections::HashMap<SaleId, std::sync::Arc<Mutex<queue::Room>>, foldhash::fast::RandomState>,
    >,
    /// The next sequence of each shard index at or beyond `shards.len()`: ids issued while the data
    /// directory ran with more shards. Kept (and snapshotted) so that growing back never reissues them.
    /// Touched only by replay, restore and export.
    retired_seqs: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Each sale's SKUs; its lock orders every change to a sale (see `sales.rs`).
    sale_book: Mutex<sales::SaleBook>,
    /// SKU → the sale covering it, read lock-free by every reserve.
    sku_sale: papaya::HashMap<SkuId, SaleId, foldhash::fast::RandomState>,
    /// Orders (`crate::orders`): their lock comes before every engine lock, and the plain reserve
    /// path never takes it.
    orders: parking_lot::Mutex<crate::orders::Book>,
    /// Carts (`crate::carts`): their lock comes before the orders' (a checkout places an order).
    carts: parking_lot::Mutex<crate::carts::Carts>,
    /// The key ids' tags are derived with (`EngineConfig::id_tag_key`).
    tag_key: u128,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let tag_key = config.id_tag_key.unwrap_or_else(|| {
            let mut key = [0u8; 16];
            getrandom::fill(&mut key).expect("the system's random source");
            u128::from_le_bytes(key)
        });
        Ok(Self {
            tag_key,
            catalog: Catalog::new(),
            shards: (0..config.shards as u16).map(|i| CachePadded::new(Mutex::new(Shard::new(i)))).collect(),
            sales: DashMap::with_hasher(Default::default()),
            counters: Counters::new(),
            keys: KeyTable::new(config.idempotency_window_ms, config.idempotency_keys_max),
            rooms: crate::sync::RwLock::new(Default::default()),
            retired_seqs: Mutex::new(Default::default()),
            sale_book: Mutex::new(Default::default()),
            sku_sale: papaya::HashMap::builder().hasher(Default::default()).build(),
            orders: Default::default(),
            carts: Default::default(),
            config,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The orders, under their lock (taken before any engine lock, never after).
    pub fn orders(&self) -> &parking_lot::Mutex<crate::orders::Book> {
        &self.orders
    }

    /// The carts, under their lock (taken before the orders' and any engine lock, never after).
    pub fn carts(&self) -> &parking_lot::Mutex<crate::carts::Carts> {
        &self.carts
    }

    /// A SKU's shard: a fixed hash of its name, so that it does not change between runs.
    fn shard_of(&self, sku: &str) -> u16 {
        let hash = xxhash_rust::xxh3::xxh3_64(sku.as_bytes());
        (hash % self.shards.len() as u64) as u16
    }

    fn lock(&self, set: &[u16]) -> Locked<'_> {
        let mut locked = Locked::new();
        locked.lock_more(&self.shards, set);
        locked
    }

    /// Where a reservation is stored: the shard its id names (modulo the shard count, should that have
    /// changed since it was issued).
    /// The id a shard issues at `seq`, with its tag.
    fn issue_id(&self, shard: u16, seq: u64) -> ReservationId {
        ReservationId::new(shard, seq, ReservationId::tag_for(self.tag_key, shard, seq))
    }

    fn store_of(&self, id: ReservationId) -> u16 {
        (usize::from(id.shard()) % self.shards.len()) as u16
    }

    /// Locks a reservation's store shard and every shard of its SKUs, in order. `None` when no such
    /// reservation is stored.
    fn lock_reservation(&self, id: ReservationId) -> Option<Locked<'_>> {
        let store = self.store_of(id);
        let mut locked = self.lock(&[store]);
        let lines = &locked.shard(store).reservations.get(&id)?.lines;
        let set = shard_set(lines.iter().map(|l| self.catalog.cell(l.cell).shard).chain([store]));
        if set[0] == store {
            locked.lock_more(&self.shards, &set);
            return Some(locked);
        }
        // A SKU's shard sorts below the store (the shard count changed since the id was issued): start
        // again in ascending order. Lines never change, so the set is still right.
        drop(locked);
        let mut locked = self.lock(&set);
        locked.shard(store).reservations.contains_key(&id).then_some(locked)
    }

    /// A SKU's counters, read consistently under its shard's lock.
    pub fn stock(&self, sku: &str) -> Option<Stock> {
        let (_, cell) = self.catalog.find(sku)?;
        let _locked = self.lock(&[cell.shard]);
        Some(cell.load())
    }

    /// A sale's per-user limit.
    pub fn sale_limit(&self, sale: &str) -> Option<u32> {
        self.sales.get(sale).map(|limit| *limit)
    }

    /// Units `user` holds or has bought in `sale`.
    pub fn held(&self, sale: &SaleId, user: &UserId) -> u64 {
        self.counters.lock(user).held(sale, user)
    }

    /// A reservation as of `now_ms`. An ended one can be read until `ended_retention_ms` after it ended.
    pub fn reservation(&self, id: ReservationId, now_ms: u64) -> Option<ReservationView> {
        let store = self.store_of(id);
        let mut locked = self.lock(&[store]);
        let r = locked.shard(store).reservations.get(&id)?;
        if self.forgotten(r, now_ms) {
            return None;
        }
        Some(self.view(id, r))
    }

    fn forgotten(&self, r: &shard::Reservation, now_ms: u64) -> bool {
        r.state != ReservationState::Active
            && r.ended_at_ms.saturating_add(self.config.ended_retention_ms) <= now_ms
    }

    fn view(&self, id: ReservationId, r: &shard::Reservation) -> ReservationView {
        let items = r.lines.iter().map(|l| Item { sku: self.catalog.cell(l.cell).sku.clone(), qty: l.qty });
        ReservationView {
            id,
            state: r.state,
            items: items.collect(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            ended_at_ms: (r.state != ReservationState::Active).then_some(r.ended_at_ms),
            holder: r.holder.as_ref().map(|h| (h.sale.clone(), h.user.clone())),
        }
    }

    /// Active reservations, across all shards.
    pub fn active_reservations(&self) -> usize {
        self.shards.iter().map(|s| s.lock().active).sum()
    }
}

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tests;
