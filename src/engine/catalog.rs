//! The SKU catalog: name → cell, and the cells' counters.
//!
//! A cell's counters change only while its shard's lock is held, so a locked reader sees them
//! consistent (`available + reserved + sold == on_hand`). `available` is also read without any lock by
//! the sold-out fast path: a relaxed load is a true statement about one instant, which is all a
//! rejection needs to be linearizable. Cells are never removed, so a `&SkuCell` stays valid for the
//! engine's life.

use super::ids::SkuId;
use super::types::{Item, Stock};
use crate::sync::{AtomicU64, Ordering::Relaxed};
use smallvec::SmallVec;

pub(crate) struct SkuCell {
    pub(crate) sku: SkuId,
    /// The shard whose lock guards these counters.
    pub(crate) shard: u16,
    on_hand: AtomicU64,
    available: AtomicU64,
    reserved: AtomicU64,
    sold: AtomicU64,
}

impl SkuCell {
    /// Lock-free and possibly stale by the time it returns: only for deciding a rejection.
    pub(crate) fn available_now(&self) -> u64 {
        self.available.load(Relaxed)
    }

    /// The caller holds this cell's shard lock.
    pub(crate) fn load(&self) -> Stock {
        Stock {
            on_hand: self.on_hand.load(Relaxed),
            available: self.available.load(Relaxed),
            reserved: self.reserved.load(Relaxed),
            sold: self.sold.load(Relaxed),
        }
    }

    /// The caller holds this cell's shard lock. Asserts the conservation law: a broken one is a bug that
    /// must stop the process before it is logged or acknowledged.
    pub(crate) fn store(&self, s: Stock) {
        assert_eq!(
            s.available.checked_add(s.reserved).and_then(|x| x.checked_add(s.sold)),
            Some(s.on_hand),
            "conservation broken for {}: {s:?}",
            self.sku
        );
        self.on_hand.store(s.on_hand, Relaxed);
        self.reserved.store(s.reserved, Relaxed);
        self.sold.store(s.sold, Relaxed);
        // Last, so that a lock-free reader never sees more available than the other counters allow.
        self.available.store(s.available, Relaxed);
    }
}

/// A request line resolved to its catalog cell.
pub(crate) struct Resolved<'e> {
    pub(crate) index: u32,
    pub(crate) cell: &'e SkuCell,
    pub(crate) qty: u32,
}

pub(crate) type ResolvedLines<'e> = SmallVec<[Resolved<'e>; 4]>;

pub(crate) struct Catalog {
    /// Name → index into `cells`. Entries are never removed. Read on every request and written only
    /// when a SKU is created: papaya's reads take no lock and write no shared cache line, so readers
    /// on different cores do not slow each other down (a sharded RwLock map's readers do).
    index: papaya::HashMap<SkuId, u32, foldhash::fast::RandomState>,
    cells: boxcar::Vec<SkuCell>,
}

impl Catalog {
    pub(crate) fn new() -> Self {
        let index = papaya::HashMap::builder().hasher(Default::default()).build();
        Self { index, cells: boxcar::Vec::new() }
    }

    pub(crate) fn find(&self, sku: &str) -> Option<(u32, &SkuCell)> {
        let index = *self.index.pin().get(sku)?;
        Some((index, self.cell(index)))
    }

    /// Each item's cell, or the index of the first unknown SKU. One pin of the index for the whole
    /// request.
    pub(crate) fn resolve(&self, items: &[Item]) -> Result<ResolvedLines<'_>, usize> {
        let index = self.index.pin();
        let mut lines = ResolvedLines::new();
        for (i, item) in items.iter().enumerate() {
            let &cell = index.get(item.sku.as_str()).ok_or(i)?;
            lines.push(Resolved { index: cell, cell: self.cell(cell), qty: item.qty });
        }
        Ok(lines)
    }

    pub(crate) fn cell(&self, index: u32) -> &SkuCell {
        &self.cells[index as usize]
    }

    /// Adds a SKU. The caller holds `shard`'s lock and has seen that the SKU does not exist; every
    /// creator of a SKU takes that same lock, so two cannot race.
    pub(crate) fn insert(&self, sku: SkuId, shard: u16, on_hand: u64) -> (u32, &SkuCell) {
        let counter = |v| AtomicU64::new(v);
        let cell = SkuCell {
            sku: sku.clone(),
            shard,
            on_hand: counter(on_hand),
            available: counter(on_hand),
            reserved: counter(0),
            sold: counter(0),
        };
        let index = u32::try_from(self.cells.push(cell)).expect("fewer than 2^32 SKUs");
        let previous = self.index.pin().insert(sku, index).copied();
        assert!(previous.is_none(), "SKU created twice");
        (index, self.cell(index))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &SkuCell> {
        self.cells.iter().map(|(_, cell)| cell)
    }
}
