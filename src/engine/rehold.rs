//! Rehold: some holds end and one reservation takes their place, in one decision under the locks of
//! every shard involved, so that no other reserve can take the units in between. Carts use it: a
//! cart line's hold renewed for a new quantity, two lines' holds merged, a cart's holds turned into
//! its order's reservation at checkout.

use super::catalog::Resolved;
use super::shard::{shard_set, Line};
use super::{Engine, Item, Record, RecordSink, RequestError, ReservationId, ReservationState};
use super::{ReserveError, ReservedRecord, SaleId, UserId};
use smallvec::SmallVec;

/// The reservation that takes the released holds' place.
#[derive(Debug, Clone)]
pub struct NewHold<'a> {
    pub items: &'a [Item],
    pub user: &'a UserId,
    /// The sale named by the caller (the SKUs' sale counts whether or not it is named).
    pub sale: Option<&'a SaleId>,
    pub expires_at_ms: u64,
}

/// A hold found active, with what its release gives back.
struct Old {
    id: ReservationId,
    store: u16,
    lines: SmallVec<[Line; 4]>,
    holder: Option<(SaleId, UserId)>,
    /// Past its deadline (not yet swept): it ends as expired, and its units are not its holder's
    /// to take again — the new reservation must find its units as any reserve would.
    due: bool,
}

impl Engine {
    /// Ends each active hold of `release` (released, or expired when past its deadline; one already
    /// ended is skipped) and, with `new`, reserves its items counting the units those holds free.
    /// The records go to the sink in one `append_all`: the ends, then `Reserved`. Refused as a
    /// reserve would be (nothing changes); `expected` as in `reserve_in`. Returns the new id.
    pub fn rehold(
        &self,
        release: &[ReservationId],
        new: Option<&NewHold<'_>>,
        expected: Option<Option<&SaleId>>,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Option<ReservationId>, ReserveError> {
        let (lines, sale) = match new {
            Some(n) => {
                if n.expires_at_ms <= now_ms {
                    return Err(ReserveError::Invalid(RequestError::TtlOutOfRange {
                        min: self.config.ttl_ms_min,
                        max: self.config.ttl_ms_max,
                    }));
                }
                let probe = super::ReserveRequest {
                    items: n.items.to_vec(),
                    ttl_ms: self.config.ttl_ms_min,
                    user: Some(n.user.clone()),
                    sale: n.sale.cloned(),
                    idempotency_key: None,
                };
                self.check_reserve(&probe).map_err(ReserveError::Invalid)?;
                let lines = self.resolve(n.items).map_err(|item| ReserveError::UnknownSku { item })?;
                let sale = self.sale_for(n.items.iter().map(|i| &i.sku), n.sale)?;
                if expected.is_some_and(|e| e != sale.as_ref()) {
                    return Err(ReserveError::SaleMismatch { item: 0 });
                }
                (lines, sale)
            }
            None => (Default::default(), None),
        };
        // The holds' lines never change: read under each store's lock, then lock everything at once.
        let mut olds: Vec<Old> = Vec::new();
        for &id in release {
            let store = self.store_of(id);
            let mut locked = self.lock(&[store]);
            let Some(r) = locked.shard(store).reservations.get(&id) else { continue };
            if r.state == ReservationState::Active && !olds.iter().any(|o| o.id == id) {
                let holder = r.holder.as_ref().map(|h| (h.sale.clone(), h.user.clone()));
                let due = now_ms >= r.expires_at_ms;
                olds.push(Old { id, store, lines: r.lines.iter().copied().collect(), holder, due });
            }
        }
        let cells = olds.iter().flat_map(|o| o.lines.iter().map(|l| self.catalog.cell(l.cell).shard));
        let stores = olds.iter().map(|o| o.store);
        let set = shard_set(lines.iter().map(|l| l.cell.shard).chain(cells).chain(stores));
        let mut locked = self.lock(&set);
        // Only the expiry tick can have ended one meanwhile (callers serialise their reholds).
        olds.retain(|o| {
            let r = locked.shard(o.store).reservations.get(&o.id);
            r.is_some_and(|r| r.state == ReservationState::Active)
        });
        let freed = |cell: u32| -> u64 {
            let lines = olds.iter().filter(|o| !o.due).flat_map(|o| o.lines.iter());
            lines.filter(|l| l.cell == cell).map(|l| u64::from(l.qty)).sum()
        };
        let short = lines.iter().enumerate().find(|(_, l): &(usize, &Resolved<'_>)| {
            l.cell.available_now() + freed(l.index) < u64::from(l.qty)
        });
        if let Some((item, l)) = short {
            return Err(ReserveError::InsufficientStock {
                item,
                available: l.cell.available_now() + freed(l.index),
            });
        }
        let home = lines.first().map(|_| set[0]);
        if home.is_some_and(|h| locked.shard(h).active >= self.config.active_per_shard_max) {
            return Err(ReserveError::ShardFull);
        }
        let mut counters = None;
        if let (Some(sale), Some(n)) = (&sale, new) {
            let limit = self.sale_limit(sale.as_str()).ok_or(ReserveError::UnknownSale)?;
            let shard = self.counters.lock(n.user);
            // Units of a due hold are given back too (it ends here): they count against nobody.
            let mine = |o: &&Old| o.holder.as_ref().is_some_and(|(s, u)| s == sale && u == n.user);
            let given_back: u64 =
                olds.iter().filter(mine).map(|o| o.lines.iter().map(|l| u64::from(l.qty)).sum::<u64>()).sum();
            let held = shard.held(sale, n.user).saturating_sub(given_back);
            if held + super::reserve::units(n.items) > u64::from(limit) {
                return Err(ReserveError::LimitExceeded { limit, held });
            }
            counters = Some((self.counters.index(n.user), shard));
        }

        let ended = |o: &Old| match o.due {
            true => Record::Expired { id: o.id, at_ms: now_ms },
            false => Record::Released { id: o.id, at_ms: now_ms },
        };
        let mut records: Vec<Record> = olds.iter().map(ended).collect();
        let reserved = new.zip(home).map(|(n, home)| ReservedRecord {
            id: self.issue_id(home, locked.shard(home).next_seq),
            items: n.items.to_vec(),
            created_at_ms: now_ms,
            expires_at_ms: n.expires_at_ms,
            user: Some(n.user.clone()),
            sale: sale.clone(),
            idempotency: None,
        });
        records.extend(reserved.clone().map(Record::Reserved));
        if records.is_empty() {
            return Ok(None);
        }
        sink.append_all(&records).map_err(|_| ReserveError::LogRefused)?;
        for (o, record) in olds.iter().zip(&records) {
            let to = match record {
                Record::Expired { .. } => ReservationState::Expired,
                _ => ReservationState::Released,
            };
            let held = counters.as_mut().map(|(i, shard)| (*i, &mut **shard));
            self.apply_end_with(&mut locked, o.id, to, now_ms, held);
        }
        let Some(record) = reserved else { return Ok(None) };
        self.apply_reserved(&mut locked, &lines, counters.as_mut().map(|(_, s)| &mut **s), None, &record);
        drop((locked, counters));
        if let (Some(sale), Some(user)) = (&record.sale, &record.user) {
            self.note_reserved(sale, user);
        }
        Ok(Some(record.id))
    }
}
