//! Replay: applying records to an engine, as recovery does. A record is an outcome already decided; replay
//! checks that it fits the state (a record that does not is a corrupt or misordered log) and applies it
//! through the same code as the live path.

use super::reserve::units;
use super::shard::shard_set;
use super::{Engine, Record, ReservationId, ReservationState, ReservedRecord};
use std::fmt;

/// A record that cannot follow the state it was applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError {
    pub detail: String,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record does not fit the state: {}", self.detail)
    }
}

impl std::error::Error for ReplayError {}

fn fail<T>(detail: String) -> Result<T, ReplayError> {
    Err(ReplayError { detail })
}

impl Engine {
    /// Applies one record. Records applied in the order a sink received them reproduce the state of
    /// the engine that produced them.
    pub fn apply(&self, record: &Record) -> Result<(), ReplayError> {
        match record {
            Record::StockSet { sku, on_hand, .. } => {
                let shard = self.shard_of(sku.as_str());
                let _locked = self.lock(&[shard]);
                if let Some((_, cell)) = self.catalog.find(sku.as_str()) {
                    let stock = cell.load();
                    if *on_hand < stock.reserved + stock.sold {
                        return fail(format!("stock of {sku} set to {on_hand}, below held {stock:?}"));
                    }
                }
                self.apply_stock_set(sku, shard, *on_hand);
            }
            Record::StockAdjusted { sku, delta, idempotency, at_ms, .. } => self
                .replay_adjusted(sku, *delta, idempotency.as_ref(), *at_ms)
                .map_err(|detail| ReplayError { detail })?,
            Record::SaleSet { sale, per_user_max, skus, .. } => {
                self.replay_sale_set(sale, *per_user_max, skus).map_err(|detail| ReplayError { detail })?
            }
            Record::SaleConfigured { .. }
            | Record::QueueJoined { .. }
            | Record::QueueOpened { .. }
            | Record::QueueAdmitted { .. } => {
                self.replay_queue(record).map_err(|detail| ReplayError { detail })?
            }
            Record::Reserved(r) => self.replay_reserved(r)?,
            Record::Extended { id, expires_at_ms, .. } => {
                let mut locked = self.replay_lock_active(*id)?;
                let r = locked.shard(self.store_of(*id)).reservations.get(id).expect("locked it");
                if *expires_at_ms <= r.expires_at_ms {
                    return fail(format!("{id} extended to {expires_at_ms}, not past {}", r.expires_at_ms));
                }
                self.apply_extended(&mut locked, *id, *expires_at_ms);
            }
            Record::Committed { id, at_ms } => self.replay_end(*id, ReservationState::Committed, *at_ms)?,
            Record::Released { id, at_ms } => self.replay_end(*id, ReservationState::Released, *at_ms)?,
            Record::Expired { id, at_ms } => self.replay_end(*id, ReservationState::Expired, *at_ms)?,
            Record::Order(order) => {
                // The book's lock first, as on the live path.
                let mut book = self.orders.lock();
                match &order.reservation {
                    None => {}
                    Some(Record::Order(_) | Record::Cart(_) | Record::CartHold { .. }) => {
                        return fail(format!("{} nests an order or cart record", order.order))
                    }
                    Some(inner) => self.apply(inner)?,
                }
                book.apply(order).map_err(|detail| ReplayError { detail })?;
            }
            Record::Cart(cart) => {
                // The carts' lock first, as on the live path; the holds and order inside it, in order.
                let mut carts = self.carts.lock();
                for inner in &cart.inner {
                    match inner {
                        Record::Reserved(_)
                        | Record::Released { .. }
                        | Record::Expired { .. }
                        | Record::Order(_) => self.apply(inner)?,
                        _ => return fail(format!("cart {} nests a {inner:?}", cart.cart)),
                    }
                }
                carts.apply(cart).map_err(|detail| ReplayError { detail })?;
            }
            Record::CartHold { sale, hold_ms, .. } => {
                if self.sale_limit(sale.as_str()).is_none() {
                    return fail(format!("a cart hold for {sale}, which is not a sale"));
                }
                self.carts.lock().set_hold_ms(sale, *hold_ms);
            }
        }
        Ok(())
    }

    fn replay_reserved(&self, r: &ReservedRecord) -> Result<(), ReplayError> {
        if r.items.is_empty() || (r.sale.is_some() && r.user.is_none()) {
            return fail(format!("{} is malformed", r.id));
        }
        let Ok(lines) = self.resolve(&r.items) else {
            return fail(format!("{} names an unknown SKU", r.id));
        };
        let store = self.store_of(r.id);
        let mut keys = r.idempotency.as_ref().map(|(key, _)| self.keys.shard(key).write());
        let mut locked = self.lock(&shard_set(lines.iter().map(|l| l.cell.shard).chain([store])));
        let shard = locked.shard(store);
        if shard.reservations.contains_key(&r.id) || shard.reservations.is_forgotten_seq(r.id) {
            return fail(format!("{} reserved twice", r.id));
        }
        // Each shard index issues its ids in increasing sequence, whatever the shard count was when
        // it did; an id at or below one already issued is reused or forged.
        if usize::from(r.id.shard()) == usize::from(store) && r.id.seq() < shard.next_seq {
            return fail(format!("{} out of sequence: expected sequence {} or later", r.id, shard.next_seq));
        }
        if usize::from(r.id.shard()) >= self.shards.len() {
            let mut retired = self.retired_seqs.lock();
            let next = retired.entry(r.id.shard()).or_insert(1);
            if r.id.seq() < *next {
                return fail(format!("{} out of sequence: expected sequence {} or later", r.id, *next));
            }
            *next = r.id.seq() + 1;
        }
        if let Some(l) = lines.iter().find(|l| l.cell.available_now() < u64::from(l.qty)) {
            return fail(format!("{} oversells {}: {:?}", r.id, l.cell.sku, l.cell.load()));
        }
        let mut counters = r.user.as_ref().filter(|_| r.sale.is_some()).map(|u| self.counters.lock(u));
        debug_assert!(counters.is_none() || units(&r.items) > 0);
        self.apply_reserved(&mut locked, &lines, counters.as_deref_mut(), keys.as_deref_mut(), r);
        drop((locked, counters, keys));
        if let (Some(sale), Some(user)) = (&r.sale, &r.user) {
            self.note_reserved(sale, user);
        }
        Ok(())
    }

    fn replay_lock_active(&self, id: ReservationId) -> Result<super::shard::Locked<'_>, ReplayError> {
        let Some(mut locked) = self.lock_reservation(id) else {
            return fail(format!("{id} is not known"));
        };
        let state = locked.shard(self.store_of(id)).reservations.get(&id).expect("locked it").state;
        if state != ReservationState::Active {
            return fail(format!("{id} is {state}, not active"));
        }
        Ok(locked)
    }

    fn replay_end(&self, id: ReservationId, to: ReservationState, at_ms: u64) -> Result<(), ReplayError> {
        let mut locked = self.replay_lock_active(id)?;
        let expires_at_ms =
            locked.shard(self.store_of(id)).reservations.get(&id).expect("locked it").expires_at_ms;
        let due = at_ms >= expires_at_ms;
        if due != (to == ReservationState::Expired) {
            return fail(format!("{id} {to} at {at_ms} with deadline {expires_at_ms}"));
        }
        self.apply_end(&mut locked, id, to, at_ms);
        Ok(())
    }
}
