//! Sales and the SKUs they cover. A sale is a named event over some SKUs with a per-user limit (and,
//! when gated, a waiting room). A SKU belongs to at most one sale at a time: a second sale naming it is
//! refused until the first lets it go. So a reserve's sale follows from its SKUs: a reserve of a sale's
//! SKU counts against that sale (and needs its admission when gated) whether or not the caller names
//! it, and naming a sale that does not cover every SKU of the reserve is refused.
//!
//! Every change to a sale — limit, SKUs, room — is decided and applied under one lock (`sale_book`),
//! taken before the rooms' lock, so the live state and the log's order agree. Reserves never take it:
//! they read the SKU → sale index, which is lock-free.

use super::{Engine, QueueError, Record, RecordSink, RequestError, ReserveError, SaleId, SkuId};
use crate::limits::PER_USER_UNITS_MAX;
use std::collections::HashMap;

/// Each sale's SKUs, in the order they were given. Guarded by `Engine::sale_book`.
#[derive(Default)]
pub(crate) struct SaleBook {
    skus: HashMap<SaleId, Vec<SkuId>, foldhash::fast::RandomState>,
}

impl Engine {
    /// Sets a sale without a waiting room: its per-user limit and the SKUs it covers (which replace
    /// the ones it covered before). Refused for a sale with a room (change it with its room), for an
    /// unknown SKU, and for a SKU another sale covers.
    pub fn set_sale(
        &self,
        sale: &SaleId,
        per_user_max: u32,
        skus: &[SkuId],
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), QueueError> {
        if per_user_max == 0 || per_user_max > PER_USER_UNITS_MAX {
            return Err(QueueError::Invalid(RequestError::PerUserLimitOutOfRange));
        }
        if let Some(index) = skus.iter().position(|sku| self.catalog.find(sku.as_str()).is_none()) {
            return Err(QueueError::UnknownSku { index });
        }
        let mut book = self.sale_book.lock();
        if self.is_gated(sale.as_str()) {
            return Err(QueueError::RoomRequired);
        }
        self.check_skus_free(sale, skus)?;
        let record = Record::SaleSet { sale: sale.clone(), per_user_max, skus: skus.to_vec(), at_ms: now_ms };
        sink.append(&record).map_err(|_| QueueError::LogRefused)?;
        self.sales.insert(sale.clone(), per_user_max);
        self.cover(&mut book, sale, skus);
        Ok(())
    }

    /// Refuses SKUs that another sale covers (`skus[index]`).
    pub(super) fn check_skus_free(&self, sale: &SaleId, skus: &[SkuId]) -> Result<(), QueueError> {
        let index = self.sku_sale.pin();
        match skus.iter().position(|sku| index.get(sku).is_some_and(|owner| owner != sale)) {
            Some(index) => Err(QueueError::SkuInOtherSale { index }),
            None => Ok(()),
        }
    }

    /// Makes `skus` the SKUs of `sale`. The caller holds `sale_book` and has checked them free.
    pub(super) fn cover(&self, book: &mut SaleBook, sale: &SaleId, skus: &[SkuId]) {
        let index = self.sku_sale.pin();
        for old in book.skus.get(sale).into_iter().flatten() {
            if !skus.contains(old) {
                index.remove(old);
            }
        }
        for sku in skus {
            index.insert(sku.clone(), sale.clone());
        }
        book.skus.insert(sale.clone(), skus.to_vec());
    }

    /// Replays a `SaleSet` record: decided again by `set_sale`, whose refusal is a replay error.
    pub(super) fn replay_sale_set(
        &self,
        sale: &SaleId,
        per_user_max: u32,
        skus: &[SkuId],
    ) -> Result<(), String> {
        // No record is written in replay: the sink keeps nothing, and the time is only the record's.
        self.set_sale(sale, per_user_max, skus, 0, &mut ())
            .map_err(|e| format!("{sale} cannot be set: {e:?}"))
    }

    /// The sale covering `sku`, if any.
    pub fn sale_of_sku(&self, sku: &str) -> Option<SaleId> {
        self.sku_sale.pin().get(sku).cloned()
    }

    /// The SKUs `sale` covers (empty for a sale without any; `None` for no such sale).
    pub fn sale_skus(&self, sale: &str) -> Option<Vec<SkuId>> {
        self.sale_limit(sale)?;
        Some(self.sale_book.lock().skus.get(sale).cloned().unwrap_or_default())
    }

    /// The sale a reserve of `skus` counts against: the one covering them, which `named` (the
    /// caller's `sale_id`), when given, must be. All SKUs of a reserve belong to one sale or to none;
    /// otherwise `SaleMismatch` names the first SKU that does not fit.
    pub fn sale_for<'a>(
        &self,
        skus: impl Iterator<Item = &'a SkuId>,
        named: Option<&SaleId>,
    ) -> Result<Option<SaleId>, ReserveError> {
        if named.is_some_and(|sale| self.sale_limit(sale.as_str()).is_none()) {
            return Err(ReserveError::UnknownSale);
        }
        let index = self.sku_sale.pin();
        let mut sale: Option<Option<&SaleId>> = named.map(Some);
        for (item, sku) in skus.enumerate() {
            let covering = index.get(sku);
            match sale {
                None => sale = Some(covering),
                Some(expected) if expected == covering => {}
                Some(_) => return Err(ReserveError::SaleMismatch { item }),
            }
        }
        Ok(sale.flatten().cloned())
    }

    /// Each sale's SKUs, by sale (snapshots).
    pub(super) fn export_sale_skus(&self) -> Vec<(SaleId, Vec<SkuId>)> {
        let book = self.sale_book.lock();
        let mut out: Vec<_> = book.skus.iter().map(|(sale, skus)| (sale.clone(), skus.clone())).collect();
        out.sort();
        out
    }

    pub(super) fn restore_sale_skus(&self, sales: &[(SaleId, Vec<SkuId>)]) -> Result<(), String> {
        let mut book = self.sale_book.lock();
        for (sale, skus) in sales {
            self.check_skus_free(sale, skus).map_err(|_| format!("{sale} covers a SKU of another sale"))?;
            self.cover(&mut book, sale, skus);
        }
        Ok(())
    }
}
