//! Reserve: units of one or more SKUs, all or nothing, until a deadline.

use super::catalog::{Resolved, ResolvedLines};
use super::holders::CounterShard;
use super::idempotency::{KeyShard, Remembered};
use super::shard::{shard_set, Holder, Line, Locked, Reservation};
use super::{Engine, Item, Record, RecordSink, RequestError, ReserveError, ReserveRequest, Reserved};
use super::{ReservationId, ReservationState, ReservedRecord, SaleId};
use crate::limits::{ITEMS_PER_RESERVATION_MAX, QTY_PER_ITEM_MAX};
use std::cmp::Reverse;

/// The first line the SKU cannot cover right now, as the error to return.
fn first_short(lines: &[Resolved<'_>]) -> Option<ReserveError> {
    lines.iter().enumerate().find_map(|(item, l)| {
        let available = l.cell.available_now();
        (available < u64::from(l.qty)).then_some(ReserveError::InsufficientStock { item, available })
    })
}

pub(super) fn units(items: &[Item]) -> u64 {
    items.iter().map(|i| u64::from(i.qty)).sum()
}

impl Engine {
    /// Reserves every item or none. A repeat of an earlier successful request with the same
    /// idempotency key returns that request's reservation (`replayed`); the same key with another
    /// request is `IdempotencyConflict`.
    pub fn reserve(
        &self,
        req: &ReserveRequest,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Reserved, ReserveError> {
        self.reserve_in(req, None, now_ms, sink)
    }

    /// `reserve`, refused (`SaleMismatch`) unless the sale its SKUs fall in is `expected`: the sale
    /// whose admission the caller checked, should a sale's SKUs change meanwhile.
    pub fn reserve_in(
        &self,
        req: &ReserveRequest,
        expected: Option<Option<&SaleId>>,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Reserved, ReserveError> {
        self.check_reserve(req).map_err(ReserveError::Invalid)?;
        let lines = self.resolve(&req.items).map_err(|item| ReserveError::UnknownSku { item })?;

        // Sold out: answered from one relaxed load per SKU and, for a keyed request, a shared lock on
        // its key — no exclusive lock. Insufficient at the load means insufficient at that instant, and
        // a key absent after it was absent at it (keys are only added), so the answer is linearizable.
        if let Some(short) = first_short(&lines) {
            if let Some(key) = &req.idempotency_key {
                if let Some(hit) = self.keys.peek(key, || req.fingerprint(), now_ms)? {
                    return Ok(hit);
                }
            }
            return Err(short);
        }

        // What the record needs from the request is copied before any lock is taken, to keep the
        // critical section short; only the id is filled in under the locks.
        let key = req.idempotency_key.as_ref().map(|key| (key, req.fingerprint()));
        let mut record = ReservedRecord {
            id: ReservationId::new(0, 1, 0),
            items: req.items.clone(),
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(req.ttl_ms),
            user: req.user.clone(),
            sale: req.sale.clone(),
            idempotency: key.map(|(key, fingerprint)| (key.clone(), fingerprint)),
        };

        let mut key_shard = key.map(|(key, _)| self.keys.shard(key).write());
        if let (Some(shard), Some((key, fingerprint))) = (&key_shard, key) {
            if let Some(hit) = shard.lookup(key, || fingerprint, now_ms, self.keys.window_ms())? {
                return Ok(hit);
            }
        }
        // The sale follows from the SKUs (see `sales.rs`), decided after the key so that a retry of an
        // acknowledged reserve gets its answer whatever changed since.
        record.sale = self.sale_for(req.items.iter().map(|i| &i.sku), req.sale.as_ref())?;
        if expected.is_some_and(|sale| sale != record.sale.as_ref()) {
            return Err(ReserveError::SaleMismatch { item: 0 });
        }
        if record.sale.is_some() && record.user.is_none() {
            return Err(ReserveError::Invalid(RequestError::SaleWithoutUser));
        }
        let set = shard_set(lines.iter().map(|l| l.cell.shard));
        let home = set[0];
        let mut locked = self.lock(&set);
        if let Some(short) = first_short(&lines) {
            return Err(short);
        }
        if locked.shard(home).active >= self.config.active_per_shard_max {
            return Err(ReserveError::ShardFull);
        }
        let mut counters = None;
        if let Some(sale) = &record.sale {
            let limit = self.sale_limit(sale.as_str()).ok_or(ReserveError::UnknownSale)?;
            let user = record.user.as_ref().expect("checked above: a sale comes with a user");
            let shard = self.counters.lock(user);
            let held = shard.held(sale, user);
            if held + units(&req.items) > u64::from(limit) {
                return Err(ReserveError::LimitExceeded { limit, held });
            }
            counters = Some(shard);
        }
        if let Some(shard) = &mut key_shard {
            if !shard.has_room(now_ms, self.keys.window_ms(), self.keys.per_shard_max()) {
                return Err(ReserveError::IdempotencyTableFull);
            }
        }

        record.id = self.issue_id(home, locked.shard(home).next_seq);
        let reserved = Reserved { id: record.id, expires_at_ms: record.expires_at_ms, replayed: false };
        let record = Record::Reserved(record);
        sink.append(&record).map_err(|_| ReserveError::LogRefused)?;
        let Record::Reserved(record) = &record else { unreachable!("built as Reserved above") };
        self.apply_reserved(&mut locked, &lines, counters.as_deref_mut(), key_shard.as_deref_mut(), record);
        drop((locked, counters, key_shard));
        if let (Some(sale), Some(user)) = (&record.sale, &record.user) {
            self.note_reserved(sale, user);
        }
        Ok(reserved)
    }

    pub(super) fn check_reserve(&self, req: &ReserveRequest) -> Result<(), RequestError> {
        if req.items.is_empty() {
            return Err(RequestError::NoItems);
        }
        if req.items.len() > ITEMS_PER_RESERVATION_MAX {
            return Err(RequestError::TooManyItems { max: ITEMS_PER_RESERVATION_MAX });
        }
        for (item, line) in req.items.iter().enumerate() {
            if line.qty == 0 {
                return Err(RequestError::ZeroQuantity { item });
            }
            if line.qty > QTY_PER_ITEM_MAX {
                return Err(RequestError::QuantityTooLarge { item, max: QTY_PER_ITEM_MAX });
            }
            if req.items[..item].iter().any(|earlier| earlier.sku == line.sku) {
                return Err(RequestError::DuplicateSku { item });
            }
        }
        self.check_ttl(req.ttl_ms)?;
        if req.sale.is_some() && req.user.is_none() {
            return Err(RequestError::SaleWithoutUser);
        }
        Ok(())
    }

    pub(super) fn check_ttl(&self, ttl_ms: u64) -> Result<(), RequestError> {
        let (min, max) = (self.config.ttl_ms_min, self.config.ttl_ms_max);
        if !(min..=max).contains(&ttl_ms) {
            return Err(RequestError::TtlOutOfRange { min, max });
        }
        Ok(())
    }

    pub(super) fn resolve(&self, items: &[Item]) -> Result<ResolvedLines<'_>, usize> {
        self.catalog.resolve(items)
    }

    /// Applies a decided reserve. The caller holds the key shard (if keyed), every SKU shard of `lines`
    /// and the reservation's store shard, and the user's counter shard (if a sale); it has checked that
    /// every line is available.
    pub(super) fn apply_reserved(
        &self,
        locked: &mut Locked<'_>,
        lines: &[Resolved<'_>],
        counters: Option<&mut CounterShard>,
        keys: Option<&mut KeyShard>,
        r: &ReservedRecord,
    ) {
        for line in lines {
            debug_assert!(locked.holds(line.cell.shard));
            let mut stock = line.cell.load();
            stock.available = stock.available.checked_sub(u64::from(line.qty)).expect("checked available");
            stock.reserved += u64::from(line.qty);
            line.cell.store(stock);
        }
        let holder = r.sale.as_ref().map(|sale| {
            let user = r.user.clone().expect("a sale comes with a user");
            Box::new(Holder { sale: sale.clone(), user })
        });
        if let (Some(counters), Some(h)) = (counters, &holder) {
            counters.add(&h.sale, &h.user, units(&r.items));
        }
        if let (Some(keys), Some((key, fingerprint))) = (keys, &r.idempotency) {
            let remembered = Remembered {
                fingerprint: *fingerprint,
                id: r.id,
                expires_at_ms: r.expires_at_ms,
                created_at_ms: r.created_at_ms,
            };
            keys.remember(key, remembered);
        }
        let store = self.store_of(r.id);
        let shard = locked.shard(store);
        let reservation = Reservation {
            lines: lines.iter().map(|l| Line { cell: l.index, qty: l.qty }).collect(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            ended_at_ms: 0,
            state: ReservationState::Active,
            holder,
            tag: r.id.tag(),
        };
        let previous = shard.reservations.insert(r.id, reservation);
        assert!(previous.is_none(), "reservation {} issued twice", r.id);
        shard.deadlines.push(Reverse((r.expires_at_ms, r.id)));
        shard.active += 1;
        if usize::from(r.id.shard()) == usize::from(store) {
            shard.next_seq = shard.next_seq.max(r.id.seq() + 1);
        }
    }
}
