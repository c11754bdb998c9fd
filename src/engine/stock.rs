//! Stock administration: set stock, restock or shrink.
//!
//! An adjustment is relative, so a retried one would count twice: with an idempotency key it is
//! remembered like a keyed reserve (same key table, same window, key shard locked before the SKU's
//! shard), and a repeat answers with the stock the first one left.

use super::idempotency::{Conflict, KeyShard, RememberedAdjust};
use super::{Adjusted, Engine, IdempotencyKey, Reason, Record, RecordSink, RequestError};
use super::{SkuId, Stock, StockError};
use crate::limits::ON_HAND_MAX;

impl Engine {
    /// Creates a SKU with `on_hand` units, or sets an existing SKU's `on_hand`. Refused below what is
    /// reserved plus sold.
    pub fn set_stock(
        &self,
        sku: &SkuId,
        on_hand: u64,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Stock, StockError> {
        if on_hand > ON_HAND_MAX {
            return Err(StockError::Invalid(RequestError::StockOutOfRange));
        }
        let shard = self.shard_of(sku.as_str());
        let _locked = self.lock(&[shard]);
        if let Some((_, cell)) = self.catalog.find(sku.as_str()) {
            let held = cell.load().reserved + cell.load().sold;
            if on_hand < held {
                return Err(StockError::BelowHeld { held });
            }
        }
        let record = Record::StockSet { sku: sku.clone(), on_hand, at_ms: now_ms };
        sink.append(&record).map_err(|_| StockError::LogRefused)?;
        Ok(self.apply_stock_set(sku, shard, on_hand))
    }

    /// Restock (`delta > 0`) or shrinkage (`delta < 0`). Shrinkage may take only available units.
    pub fn adjust_stock(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &Reason,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Stock, StockError> {
        self.adjust_stock_keyed(sku, delta, reason, None, now_ms, sink).map(|a| a.stock)
    }

    /// An adjustment under an idempotency key: a repeat (same key, same SKU, delta and reason) within
    /// the window changes nothing and returns the stock the first one left (`replayed`); the same key
    /// with another request, or a reserve's key, is `IdempotencyConflict`.
    pub fn adjust_stock_keyed(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &Reason,
        key: Option<&IdempotencyKey>,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Adjusted, StockError> {
        let (_, cell) = self.catalog.find(sku.as_str()).ok_or(StockError::UnknownSku)?;
        let fingerprint = adjust_fingerprint(sku, delta, reason);
        let mut key_shard = key.map(|key| self.keys.shard(key).write());
        if let (Some(shard), Some(key)) = (&key_shard, key) {
            let window_ms = self.keys.window_ms();
            let hit = shard.lookup_adjust(key, fingerprint, now_ms, window_ms);
            if let Some(stock) = hit.map_err(|Conflict| StockError::IdempotencyConflict)? {
                return Ok(Adjusted { stock, replayed: true });
            }
        }
        let _locked = self.lock(&[cell.shard]);
        let on_hand = adjusted(cell.load(), delta)?;
        if let Some(shard) = &mut key_shard {
            if !shard.has_room(now_ms, self.keys.window_ms(), self.keys.per_shard_max()) {
                return Err(StockError::IdempotencyTableFull);
            }
        }
        let idempotency = key.map(|key| (key.clone(), fingerprint));
        let record = Record::StockAdjusted {
            sku: sku.clone(),
            delta,
            reason: reason.clone(),
            at_ms: now_ms,
            idempotency,
        };
        sink.append(&record).map_err(|_| StockError::LogRefused)?;
        let stock = self.apply_stock_set(sku, cell.shard, on_hand);
        remember_adjust(key_shard.as_deref_mut(), key, fingerprint, stock, now_ms);
        Ok(Adjusted { stock, replayed: false })
    }

    /// Replays an adjustment: the key shard (if keyed) before the SKU's, as live.
    pub(super) fn replay_adjusted(
        &self,
        sku: &SkuId,
        delta: i64,
        idempotency: Option<&(IdempotencyKey, u128)>,
        at_ms: u64,
    ) -> Result<(), String> {
        let Some((_, cell)) = self.catalog.find(sku.as_str()) else {
            return Err(format!("adjustment of unknown SKU {sku}"));
        };
        let mut key_shard = idempotency.map(|(key, _)| self.keys.shard(key).write());
        let _locked = self.lock(&[cell.shard]);
        let Ok(on_hand) = adjusted(cell.load(), delta) else {
            return Err(format!("adjustment {delta} of {sku} does not fit {:?}", cell.load()));
        };
        let stock = self.apply_stock_set(sku, cell.shard, on_hand);
        if let Some((key, fingerprint)) = idempotency {
            remember_adjust(key_shard.as_deref_mut(), Some(key), *fingerprint, stock, at_ms);
        }
        Ok(())
    }

    /// The caller holds `shard` (the SKU's) and has checked `on_hand` against what is held.
    pub(super) fn apply_stock_set(&self, sku: &SkuId, shard: u16, on_hand: u64) -> Stock {
        match self.catalog.find(sku.as_str()) {
            Some((_, cell)) => {
                let mut stock = cell.load();
                stock.on_hand = on_hand;
                stock.available = on_hand - stock.reserved - stock.sold;
                cell.store(stock);
                stock
            }
            None => {
                let (_, cell) = self.catalog.insert(sku.clone(), shard, on_hand);
                cell.load()
            }
        }
    }
}

fn remember_adjust(
    shard: Option<&mut KeyShard>,
    key: Option<&IdempotencyKey>,
    fingerprint: u128,
    stock: Stock,
    at_ms: u64,
) {
    if let (Some(shard), Some(key)) = (shard, key) {
        shard.remember_adjust(key, RememberedAdjust { fingerprint, stock, created_at_ms: at_ms });
    }
}

/// A stable digest of what defines an adjustment (written to the log, so a fixed hash of a fixed
/// encoding). The leading tag keeps it apart from reserves' digests, which share the key space.
pub(crate) fn adjust_fingerprint(sku: &SkuId, delta: i64, reason: &Reason) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"adjust\0");
    for text in [sku.as_str(), reason.as_str()] {
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(&delta.to_le_bytes());
    h.digest128()
}

/// `on_hand` after adding `delta`, if that keeps it within bounds and above what is held.
pub(super) fn adjusted(stock: Stock, delta: i64) -> Result<u64, StockError> {
    let out_of_range = StockError::Invalid(RequestError::StockOutOfRange);
    if delta == 0 || delta.unsigned_abs() > ON_HAND_MAX {
        return Err(out_of_range);
    }
    let held = stock.reserved + stock.sold;
    let on_hand = stock.on_hand.checked_add_signed(delta).ok_or(StockError::BelowHeld { held })?;
    if on_hand < held {
        return Err(StockError::BelowHeld { held });
    }
    if on_hand > ON_HAND_MAX {
        return Err(StockError::AboveMax { max: ON_HAND_MAX });
    }
    Ok(on_hand)
}
