//! Stock administration: set stock, restock or shrink.

use super::{Engine, Reason, Record, RecordSink, RequestError, SkuId, Stock, StockError};
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
        let (_, cell) = self.catalog.find(sku.as_str()).ok_or(StockError::UnknownSku)?;
        let _locked = self.lock(&[cell.shard]);
        let on_hand = adjusted(cell.load(), delta)?;
        let record = Record::StockAdjusted { sku: sku.clone(), delta, reason: reason.clone(), at_ms: now_ms };
        sink.append(&record).map_err(|_| StockError::LogRefused)?;
        Ok(self.apply_stock_set(sku, cell.shard, on_hand))
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
        return Err(out_of_range);
    }
    Ok(on_hand)
}
