//! The engine's state as plain, canonically ordered values: what a snapshot holds, and what tests
//! compare. Two engines that logically agree at `now_ms` export equal states.

use super::{Engine, IdempotencyKey, ReservationId, ReservationState, ReservationView, SaleId, SkuId};
use super::{Stock, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineState {
    pub skus: Vec<(SkuId, Stock)>,
    pub sales: Vec<(SaleId, u32)>,
    /// Active reservations and ended ones still within retention, by id.
    pub reservations: Vec<ReservationView>,
    pub keys: Vec<RememberedKey>,
    /// Units held or bought per sale and user.
    pub counters: Vec<(SaleId, UserId, u64)>,
    /// The next sequence number each shard issues.
    pub next_seqs: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedKey {
    pub key: IdempotencyKey,
    pub fingerprint: u128,
    pub id: ReservationId,
    pub expires_at_ms: u64,
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
        for shard in self.shards.iter() {
            let shard = shard.lock();
            state.next_seqs.push(shard.next_seq);
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
        state.counters = self.counters.all();
        state.counters.sort();
        state
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
