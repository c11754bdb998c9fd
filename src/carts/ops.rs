//! Cart operations, each decided under the carts' lock and logged as one record before it is applied.
//!
//! Lock order: carts, then orders (a checkout places an order), then the engine's own locks. The
//! plain reserve path takes none of the first two, so carts never slow it.

use super::book::{Cart, CartItem, CartRecord, CartStep, Carts, Ending};
use crate::engine::{CartId, Engine, Record, RecordSink, SinkRefused, SkuId};
use crate::limits::{CART_ITEMS_MAX, QTY_PER_ITEM_MAX};
use crate::orders::{Order, OrderError, OrderLine, OrderRequest};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartError {
    NotFound,
    /// The cart has no line for this SKU.
    ItemNotFound,
    UnknownSku,
    /// More distinct SKUs than a cart holds (`CART_ITEMS_MAX`).
    CartFull {
        max: usize,
    },
    /// More carts than `carts_max`.
    CartsFull,
    /// More units than the sale covering the SKU lets one shopper have.
    LimitExceeded {
        limit: u32,
    },
    MergeIntoItself,
    /// Checkout of a cart without lines.
    Empty,
    /// Checkout of a line added without a price.
    Unpriced {
        sku: SkuId,
    },
    /// The order was refused (its reserve, its key, its bounds).
    Order(OrderError),
    LogRefused,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Merged,
    /// The guest cart was merged into this one before: nothing changed.
    Repeat,
}

/// A line to set: `qty` 0 removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemEdit {
    pub sku: SkuId,
    pub qty: u32,
    /// `None` keeps the price the line had (if any).
    pub unit_price: Option<u64>,
}

impl Engine {
    /// The most units of `sku` one shopper may have: its sale's per-user limit, if a sale covers it.
    fn cart_limit(&self, sku: &str) -> Option<u32> {
        self.sale_of_sku(sku).and_then(|sale| self.sale_limit(sale.as_str()))
    }

    /// Sets a line (creating the cart), or removes it when `qty` is 0. Returns the cart as it is now
    /// (an emptied cart stays until it is deleted or falls idle).
    pub fn set_cart_item(
        &self,
        cart: &CartId,
        edit: &ItemEdit,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<Cart, CartError> {
        let mut carts = self.carts().lock();
        let existing = carts.get(cart.as_str());
        let line = existing.and_then(|c| c.item(edit.sku.as_str()));
        let step = if edit.qty == 0 {
            if line.is_none() {
                return Err(if existing.is_none() { CartError::NotFound } else { CartError::ItemNotFound });
            }
            CartStep::ItemRemoved { sku: edit.sku.clone() }
        } else {
            self.stock(edit.sku.as_str()).ok_or(CartError::UnknownSku)?;
            if edit.qty > QTY_PER_ITEM_MAX {
                return Err(CartError::LimitExceeded { limit: QTY_PER_ITEM_MAX });
            }
            if let Some(limit) = self.cart_limit(edit.sku.as_str()).filter(|l| edit.qty > *l) {
                return Err(CartError::LimitExceeded { limit });
            }
            match existing {
                None if carts.len() >= self.config().carts_max => return Err(CartError::CartsFull),
                Some(c) if line.is_none() && c.items.len() >= CART_ITEMS_MAX => {
                    return Err(CartError::CartFull { max: CART_ITEMS_MAX })
                }
                _ => {}
            }
            let unit_price = edit.unit_price.or(line.and_then(|l| l.unit_price));
            CartStep::ItemSet { sku: edit.sku.clone(), qty: edit.qty, unit_price }
        };
        log(&mut carts, sink, cart, step, None, now_ms)?;
        Ok(carts.get(cart.as_str()).expect("an edited cart exists").clone())
    }

    /// Deletes a cart.
    pub fn delete_cart(
        &self,
        cart: &CartId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), CartError> {
        let mut carts = self.carts().lock();
        carts.get(cart.as_str()).ok_or(CartError::NotFound)?;
        log(&mut carts, sink, cart, CartStep::Removed(Ending::Deleted), None, now_ms)
    }

    /// Merges the guest cart `from` into `into` (created if it does not exist): quantities added,
    /// capped by the item limit and the sale's per-user limit; `from` removed. A repeat (`from` was
    /// merged into `into` already and is gone) changes nothing.
    pub fn merge_carts(
        &self,
        into: &CartId,
        from: &CartId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(Cart, Merge), CartError> {
        if into == from {
            return Err(CartError::MergeIntoItself);
        }
        let mut carts = self.carts().lock();
        let Some(guest) = carts.get(from.as_str()) else {
            if carts.was_merged(into.as_str(), from.as_str()) {
                let cart = carts.get(into.as_str()).expect("it remembers the merge").clone();
                return Ok((cart, Merge::Repeat));
            }
            return Err(CartError::NotFound);
        };
        let mut items: Vec<CartItem> = carts.get(into.as_str()).map_or_else(Vec::new, |c| c.items.clone());
        for g in &guest.items {
            match items.binary_search_by(|i| i.sku.cmp(&g.sku)) {
                Ok(at) => {
                    let line = &mut items[at];
                    let cap = self.cart_limit(g.sku.as_str()).unwrap_or(u32::MAX).min(QTY_PER_ITEM_MAX);
                    line.qty = line.qty.saturating_add(g.qty).min(cap).max(line.qty);
                    // The price the shopper saw last: the signed-in cart's, else the guest's.
                    line.unit_price = line.unit_price.or(g.unit_price);
                }
                Err(at) => items.insert(at, g.clone()),
            }
        }
        if items.len() > CART_ITEMS_MAX {
            return Err(CartError::CartFull { max: CART_ITEMS_MAX });
        }
        let step = CartStep::Merged { from: from.clone(), items };
        log(&mut carts, sink, into, step, None, now_ms)?;
        Ok((carts.get(into.as_str()).expect("merged into it").clone(), Merge::Merged))
    }

    /// Expires carts idle past `cart_idle_ms` (at most `max` per call). Returns how many.
    pub fn carts_tick(
        &self,
        now_ms: u64,
        max: usize,
        sink: &mut impl RecordSink,
    ) -> Result<usize, CartError> {
        let mut carts = self.carts().lock();
        let idle = carts.idle(now_ms.saturating_sub(self.config().cart_idle_ms), max);
        for cart in &idle {
            log(&mut carts, sink, cart, CartStep::Removed(Ending::Expired), None, now_ms)?;
        }
        Ok(idle.len())
    }

    /// Checks a cart out: an order of its lines at their prices, placed under `template`'s user,
    /// currency, sale, payment window and key (its `lines` are ignored), and the cart removed in the
    /// same record. A repeat of the key returns the order (`true`), whatever became of the cart.
    pub fn checkout_cart(
        &self,
        cart: &CartId,
        template: &OrderRequest,
        expected_sale: Option<Option<&crate::engine::SaleId>>,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(Order, bool), CartError> {
        let mut carts = self.carts().lock();
        let fingerprint = checkout_fingerprint(cart, template);
        if let Some(order) = self.order_by_key(&template.key, now_ms) {
            if order.placed.fingerprint != fingerprint {
                return Err(CartError::Order(OrderError::IdempotencyConflict));
            }
            return Ok((order, true));
        }
        let found = carts.get(cart.as_str()).ok_or(CartError::NotFound)?;
        if found.items.is_empty() {
            return Err(CartError::Empty);
        }
        let lines = (found.items.iter())
            .map(|i| {
                let unit_price = i.unit_price.ok_or_else(|| CartError::Unpriced { sku: i.sku.clone() })?;
                Ok(OrderLine { sku: i.sku.clone(), qty: i.qty, unit_price })
            })
            .collect::<Result<Vec<_>, CartError>>()?;
        let req = OrderRequest { lines, ..template.clone() };
        let mut wrap = CheckoutSink { sink, cart, made: None };
        let placed = self.place_order_as(&req, fingerprint, expected_sale, now_ms, &mut wrap);
        let made = wrap.made.take();
        let (order, _) = placed.map_err(|e| match e {
            OrderError::LogRefused => CartError::LogRefused,
            e => CartError::Order(e),
        })?;
        apply_live(&mut carts, &made.expect("a placed order logged its record"));
        Ok((order, false))
    }
}

/// A checkout's digest: the cart and the order's terms, not its lines (a retry finds the cart gone).
pub fn checkout_fingerprint(cart: &CartId, template: &OrderRequest) -> u128 {
    let terms = OrderRequest { lines: Vec::new(), ..template.clone() };
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(b"cart checkout");
    h.update(&(cart.as_str().len() as u64).to_le_bytes());
    h.update(cart.as_str().as_bytes());
    h.update(&terms.fingerprint().to_le_bytes());
    h.digest128()
}

/// Wraps the order's record into the cart's `CheckedOut`: one record, so that neither the order nor
/// the cart's removal happens without the other.
struct CheckoutSink<'a, S: RecordSink> {
    sink: &'a mut S,
    cart: &'a CartId,
    made: Option<CartRecord>,
}

impl<S: RecordSink> RecordSink for CheckoutSink<'_, S> {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        let made = CartRecord {
            cart: self.cart.clone(),
            step: CartStep::Removed(Ending::CheckedOut),
            inner: Some(record.clone()),
            at_ms: record.at_ms(),
        };
        self.sink.append(&Record::Cart(Box::new(made.clone())))?;
        self.made = Some(made);
        Ok(())
    }
}

fn log(
    carts: &mut Carts,
    sink: &mut impl RecordSink,
    cart: &CartId,
    step: CartStep,
    inner: Option<Record>,
    at_ms: u64,
) -> Result<(), CartError> {
    let made = CartRecord { cart: cart.clone(), step, inner, at_ms };
    sink.append(&Record::Cart(Box::new(made.clone()))).map_err(|_| CartError::LogRefused)?;
    apply_live(carts, &made);
    Ok(())
}

/// Applies a step decided under the carts' lock (so it fits; one that does not is a bug, reported
/// without taking the server down: the log holds the truth).
fn apply_live(carts: &mut Carts, made: &CartRecord) {
    if let Err(e) = carts.apply(made) {
        debug_assert!(false, "a decided cart step does not fit: {e}");
        tracing::error!(cart = %made.cart, error = %e, "a decided cart step does not fit the carts");
    }
}
