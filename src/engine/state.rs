//! The engine's state as plain, canonically ordered values: what a snapshot holds, and what tests
//! compare. Two engines that logically agree at `now_ms` export equal states.

use super::idempotency::Remembered;
use super::shard::{Holder, Line, Reservation};
use super::{
    ConfigError, Engine, EngineConfig, IdempotencyKey, ReplayError, ReservationId, ReservationState,
};
use super::{ReservationView, SaleId, SkuId, Stock, UserId};
use std::cmp::Reverse;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineState {
    pub skus: Vec<(SkuId, Stock)>,
    pub sales: Vec<(SaleId, u32)>,
    /// Active reservations and ended ones still within retention, by id.
    pub reservations: Vec<ReservationView>,
    pub keys: Vec<RememberedKey>,
    /// Keys of stock adjustments, with the stock each left (what a repeat answers).
    pub adjust_keys: Vec<RememberedAdjustKey>,
    /// Units held or bought per sale and user.
    pub counters: Vec<(SaleId, UserId, u64)>,
    /// The next sequence number each shard issues.
    pub next_seqs: Vec<u64>,
    /// Waiting rooms, by sale.
    pub rooms: Vec<super::RoomState>,
    /// The SKUs each sale covers, by sale (rooms' included).
    pub sale_skus: Vec<(SaleId, Vec<SkuId>)>,
    /// Orders, by id: open ones and ended ones within retention (and every one that needs a person).
    pub orders: Vec<crate::orders::Order>,
    /// Payment event ids remembered (hash, when seen), oldest first.
    pub payment_events: Vec<(u128, u64)>,
    /// Carts, by id.
    pub carts: Vec<crate::carts::Cart>,
    /// Each sale's `cart_hold_ms`, by sale.
    pub cart_holds: Vec<(SaleId, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedKey {
    pub key: IdempotencyKey,
    pub fingerprint: u128,
    pub id: ReservationId,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedAdjustKey {
    pub key: IdempotencyKey,
    pub fingerprint: u128,
    pub stock: Stock,
    pub created_at_ms: u64,
}

impl Engine {
    /// The state as of `now_ms`. Shards are read one after another, so it is a consistent picture only
    /// while no mutation runs.
    pub fn export(&self, now_ms: u64) -> EngineState {
        let mut state = EngineState::default();
        for cell in self.catalog.iter() {
            let _locked = self.lock(&[cell.shard]);
            state.skus.push((cell.sku.clone(), cell.load()));
        }
        state.skus.sort_by(|a, b| a.0.cmp(&b.0));
        state.sales = self.sales.iter().map(|e| (e.key().clone(), *e.value())).collect();
        state.sales.sort();
        state.sale_skus = self.export_sale_skus();
        let retired = self.retired_seqs.lock().clone();
        let indices = retired.last_key_value().map_or(self.shards.len(), |(i, _)| usize::from(*i) + 1);
        state.next_seqs = (0..indices).map(|i| retired.get(&(i as u16)).copied().unwrap_or(1)).collect();
        for (index, shard) in self.shards.iter().enumerate() {
            let shard = shard.lock();
            state.next_seqs[index] = shard.next_seq;
            let readable = shard.reservations.iter().filter(|(_, r)| !self.forgotten(r, now_ms));
            state.reservations.extend(readable.map(|(id, r)| self.view(id, r)));
        }
        state.reservations.sort_by_key(|r| r.id);
        state.keys = (self.keys.live_entries(now_ms).into_iter())
            .map(|(key, r)| RememberedKey {
                key,
                fingerprint: r.fingerprint,
                id: r.id,
                expires_at_ms: r.expires_at_ms,
                created_at_ms: r.created_at_ms,
            })
            .collect();
        state.keys.sort_by(|a, b| a.key.cmp(&b.key));
        state.adjust_keys = (self.keys.live_adjusts(now_ms).into_iter())
            .map(|(key, r)| RememberedAdjustKey {
                key,
                fingerprint: r.fingerprint,
                stock: r.stock,
                created_at_ms: r.created_at_ms,
            })
            .collect();
        state.adjust_keys.sort_by(|a, b| a.key.cmp(&b.key));
        state.counters = self.counters.all();
        state.counters.sort();
        state.rooms = self.export_rooms();
        let c = &self.config;
        let (orders, events) = self.orders.lock().export();
        // What `Book::forget` would drop by now is left out, as aged keys are.
        let kept = |o: &crate::orders::Order| {
            o.state.is_open()
                || o.needs_person()
                || o.ended_at_ms.saturating_add(c.order_retention_ms()) > now_ms
        };
        state.orders = orders.into_iter().filter(kept).collect();
        let live = |&(_, at): &(u128, u64)| at.saturating_add(c.payment_event_retention_ms) > now_ms;
        state.payment_events = events.into_iter().filter(live).collect();
        let carts = self.carts.lock();
        (state.carts, state.cart_holds) = (carts.export(), carts.export_holds());
        drop(carts);
        state
    }

    /// An engine holding `state` (a snapshot's), checked as it is built: conservation on every SKU,
    /// every reservation's SKUs known, and the consistency check at the end.
    pub fn restore(config: EngineConfig, state: &EngineState) -> Result<Engine, RestoreError> {
        let engine = Engine::new(config).map_err(RestoreError::Config)?;
        let fail = |detail: String| RestoreError::Invalid(ReplayError { detail });
        for (sku, stock) in &state.skus {
            let sum = stock.available.checked_add(stock.reserved).and_then(|n| n.checked_add(stock.sold));
            if sum != Some(stock.on_hand)
                || stock.on_hand > crate::limits::ON_HAND_MAX
                || engine.catalog.find(sku.as_str()).is_some()
            {
                return Err(fail(format!("SKU {sku} does not conserve units or appears twice: {stock:?}")));
            }
            let shard = engine.shard_of(sku.as_str());
            let _locked = engine.lock(&[shard]);
            let (_, cell) = engine.catalog.insert(sku.clone(), shard, stock.on_hand);
            cell.store(*stock);
        }
        for (sale, limit) in &state.sales {
            engine.sales.insert(sale.clone(), *limit);
        }
        engine.restore_rooms(&state.rooms).map_err(fail)?;
        engine.restore_sale_skus(&state.sale_skus).map_err(fail)?;
        for view in &state.reservations {
            engine.restore_reservation(view).map_err(fail)?;
        }
        for shard in engine.shards.iter() {
            shard.lock().ended.make_contiguous().sort_unstable();
        }
        // Sequences are kept per shard index whatever the shard count: ids never repeat when it changes.
        for (index, next) in state.next_seqs.iter().enumerate() {
            match engine.shards.get(index) {
                Some(shard) => {
                    let mut shard = shard.lock();
                    shard.next_seq = shard.next_seq.max(*next);
                }
                None if *next > 1 => {
                    let index = u16::try_from(index)
                        .map_err(|_| fail(format!("{} shard sequences", state.next_seqs.len())))?;
                    engine.retired_seqs.lock().insert(index, *next);
                }
                None => {}
            }
        }
        // Oldest first: each key shard forgets keys in the order they were queued, so they must be
        // queued by age, not in the state's key order (an old key behind a new one would stay, and
        // keep a full table refusing keys, until the new one aged out too).
        let mut keys: Vec<&RememberedKey> = state.keys.iter().collect();
        keys.sort_by_key(|k| k.created_at_ms);
        for k in keys {
            let remembered = Remembered {
                fingerprint: k.fingerprint,
                id: k.id,
                expires_at_ms: k.expires_at_ms,
                created_at_ms: k.created_at_ms,
            };
            engine.keys.shard(&k.key).write().remember(&k.key, remembered);
        }
        for k in &state.adjust_keys {
            let remembered = super::idempotency::RememberedAdjust {
                fingerprint: k.fingerprint,
                stock: k.stock,
                created_at_ms: k.created_at_ms,
            };
            engine.keys.shard(&k.key).write().remember_adjust(&k.key, remembered);
        }
        for (sale, user, units) in &state.counters {
            engine.counters.lock(user).add(sale, user, *units);
        }
        *engine.orders.lock() =
            crate::orders::Book::restore(&state.orders, &state.payment_events).map_err(fail)?;
        for order in state.orders.iter().filter(|o| o.state.is_open() || o.commit_owed) {
            let held = state.reservations.binary_search_by_key(&order.reservation, |r| r.id).is_ok();
            if !held {
                return Err(fail(format!(
                    "{} holds {}, which the snapshot lacks",
                    order.id, order.reservation
                )));
            }
        }
        *engine.carts.lock() = crate::carts::Carts::restore(&state.carts, &state.cart_holds).map_err(fail)?;
        engine.check_consistency().map_err(fail)?;
        Ok(engine)
    }

    fn restore_reservation(&self, view: &ReservationView) -> Result<(), String> {
        let mut lines = super::shard::Lines::new();
        for item in &view.items {
            let (cell, _) = self
                .catalog
                .find(item.sku.as_str())
                .ok_or(format!("{} names unknown {}", view.id, item.sku))?;
            lines.push(Line { cell, qty: item.qty });
        }
        let holder = view
            .holder
            .as_ref()
            .map(|(sale, user)| Box::new(Holder { sale: sale.clone(), user: user.clone() }));
        let reservation = Reservation {
            lines,
            created_at_ms: view.created_at_ms,
            expires_at_ms: view.expires_at_ms,
            ended_at_ms: view.ended_at_ms.unwrap_or(0),
            state: view.state,
            holder,
            tag: view.id.tag(),
        };
        let store = self.store_of(view.id);
        let mut shard = self.shards[usize::from(store)].lock();
        if usize::from(view.id.shard()) == usize::from(store) {
            shard.next_seq = shard.next_seq.max(view.id.seq() + 1);
        } else if usize::from(view.id.shard()) >= self.shards.len() {
            let mut retired = self.retired_seqs.lock();
            let next = retired.entry(view.id.shard()).or_insert(1);
            *next = (*next).max(view.id.seq() + 1);
        }
        match view.state {
            ReservationState::Active => {
                shard.deadlines.push(Reverse((view.expires_at_ms, view.id)));
                shard.active += 1;
            }
            _ => shard.ended.push_back((reservation.ended_at_ms, view.id)),
        }
        if shard.reservations.insert(view.id, reservation).is_some() {
            return Err(format!("{} appears twice", view.id));
        }
        Ok(())
    }

    /// Checks what must hold between the tables whenever no mutation runs: every SKU conserves its
    /// units, `reserved` is exactly the sum of active reservations, and the active counts are right.
    /// Returns the first discrepancy.
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut reserved = std::collections::HashMap::<u32, u64>::new();
        for (index, shard) in self.shards.iter().enumerate() {
            let shard = shard.lock();
            let active = shard.reservations.values().filter(|r| r.state == ReservationState::Active);
            let mut count = 0;
            for r in active {
                count += 1;
                for line in &r.lines {
                    *reserved.entry(line.cell).or_default() += u64::from(line.qty);
                }
            }
            if count != shard.active {
                return Err(format!("shard {index} counts {} active, holds {count}", shard.active));
            }
        }
        for (index, cell) in self.catalog.iter().enumerate() {
            let _locked = self.lock(&[cell.shard]);
            let s = cell.load();
            if s.available + s.reserved + s.sold != s.on_hand {
                return Err(format!("{} does not conserve units: {s:?}", cell.sku));
            }
            let expected = reserved.get(&(index as u32)).copied().unwrap_or(0);
            if s.reserved != expected {
                return Err(format!("{} reserved {} but reservations hold {expected}", cell.sku, s.reserved));
            }
        }
        Ok(())
    }
}

/// Why a state could not be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreError {
    Config(ConfigError),
    Invalid(ReplayError),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::Config(e) => e.fmt(f),
            RestoreError::Invalid(e) => write!(f, "snapshot state is not valid: {}", e.detail),
        }
    }
}

impl std::error::Error for RestoreError {}
