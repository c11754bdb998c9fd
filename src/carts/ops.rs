//! Cart operations, each decided under the carts' lock and logged as one record before it is applied.
//!
//! Lock order: carts, then orders (a checkout places an order), then the engine's own locks. The
//! plain reserve path takes none of the first two, so carts never slow it.
//!
//! Soft holds: in a sale with `cart_hold_ms`, a cart line's units are an engine reservation of the
//! cart (its id as the user, so the sale's per-user limit counts them). An edit, a merge or a
//! checkout ends the line's hold and takes the new one in one decision (`Engine::rehold`), logged in
//! the cart's record: no other shopper can take the units in between.

use super::book::{Cart, CartItem, CartRecord, CartStep, Carts, Ending, Hold};
use crate::engine::{
    CartId, Engine, Item, NewHold, Record, RecordSink, ReservationId, ReservationState, ReserveError, SaleId,
    SinkRefused, SkuId, UserId,
};
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
    /// A line's soft hold was refused, as a reserve would be (short of stock, over the limit).
    Hold(ReserveError),
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

fn refused(e: ReserveError) -> CartError {
    match e {
        ReserveError::LogRefused => CartError::LogRefused,
        e => CartError::Hold(e),
    }
}

/// A cart's id as the user its holds count against.
fn holder(cart: &CartId) -> UserId {
    UserId::new(cart.as_str()).expect("a cart id is a user id")
}

impl Engine {
    /// The most units of `sku` one shopper may have: its sale's per-user limit, if a sale covers it.
    fn cart_limit(&self, sku: &str) -> Option<u32> {
        self.sale_of_sku(sku).and_then(|sale| self.sale_limit(sale.as_str()))
    }

    /// The sale covering `sku` and its `cart_hold_ms`, when it gives carts a hold (within the TTL
    /// range this server runs with, which may have narrowed since the sale was set).
    pub fn cart_hold(&self, carts: &Carts, sku: &str) -> Option<(SaleId, u64)> {
        let sale = self.sale_of_sku(sku)?;
        let c = self.config();
        carts.hold_ms(sale.as_str()).map(|ms| (sale, ms.clamp(c.ttl_ms_min, c.ttl_ms_max)))
    }

    /// The hold of a line, if its reservation is still active at `now_ms`.
    pub fn live_hold(&self, line: &CartItem, now_ms: u64) -> Option<Hold> {
        let hold = line.hold?;
        let view = self.reservation(hold.id, now_ms)?;
        (view.state == ReservationState::Active && view.expires_at_ms > now_ms).then_some(hold)
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
        let line = existing.and_then(|c| c.item(edit.sku.as_str())).cloned();
        if edit.qty == 0 {
            let Some(line) = line else {
                return Err(if existing.is_none() { CartError::NotFound } else { CartError::ItemNotFound });
            };
            let step = CartStep::ItemRemoved { sku: edit.sku.clone() };
            self.end_holds(&mut carts, sink, cart, &line, step, now_ms)?;
            return Ok(carts.get(cart.as_str()).expect("an edited cart exists").clone());
        }
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
        let unit_price = edit.unit_price.or(line.as_ref().and_then(|l| l.unit_price));
        let item = CartItem { sku: edit.sku.clone(), qty: edit.qty, unit_price, hold: None };
        let olds: Vec<&CartItem> = line.iter().collect();
        self.hold_line(&mut carts, sink, cart, None, item, &olds, now_ms)?;
        Ok(carts.get(cart.as_str()).expect("an edited cart exists").clone())
    }

    /// Logs `item` as the cart's line (`from`: moved from that cart), ending the holds of `olds`
    /// and, in a sale with a cart hold, holding `item`'s units, all in one record.
    #[allow(clippy::too_many_arguments)]
    fn hold_line(
        &self,
        carts: &mut Carts,
        sink: &mut impl RecordSink,
        cart: &CartId,
        from: Option<&CartId>,
        mut item: CartItem,
        olds: &[&CartItem],
        now_ms: u64,
    ) -> Result<(), CartError> {
        let release: Vec<ReservationId> = olds.iter().filter_map(|l| l.hold.map(|h| h.id)).collect();
        let live: Vec<Hold> = olds.iter().filter_map(|l| self.live_hold(l, now_ms)).collect();
        let step = |item: CartItem| match from {
            Some(from) => CartStep::ItemMoved { from: from.clone(), item },
            None => CartStep::ItemSet(item),
        };
        let Some((_, hold_ms)) = self.cart_hold(carts, item.sku.as_str()) else {
            // No hold in this sale (any more): the old holds end with the edit.
            item.hold = None;
            return self.log_rehold(carts, sink, cart, &release, None, step(item), now_ms);
        };
        // An edit renews the hold, never past `hold_ms_max` after the line was first held; a line
        // whose holds all lapsed starts again.
        let since = live.iter().map(|h| h.since_ms).min().unwrap_or(now_ms);
        let kept = live.iter().map(|h| h.expires_at_ms).max().unwrap_or(0);
        let expires_at_ms =
            now_ms.saturating_add(hold_ms).min(since.saturating_add(self.config().hold_ms_max)).max(kept);
        let user = holder(cart);
        let items = [Item { sku: item.sku.clone(), qty: item.qty }];
        let new = NewHold { items: &items, user: &user, sale: None, expires_at_ms };
        let held = |records: &[Record]| {
            let reserved = records.iter().find_map(|r| match r {
                Record::Reserved(r) => {
                    Some(Hold { id: r.id, expires_at_ms: r.expires_at_ms, since_ms: since })
                }
                _ => None,
            });
            step(CartItem { hold: reserved, ..item.clone() })
        };
        let mut wrap = StepSink { sink, cart, make: held, made: None };
        self.rehold(&release, Some(&new), None, now_ms, &mut wrap).map_err(refused)?;
        let made = wrap.made.take().expect("a hold was logged");
        apply_live(carts, &made);
        Ok(())
    }

    /// Ends `release` (holds) and logs `step` with the ends in one record (the step alone when none
    /// was still active).
    #[allow(clippy::too_many_arguments)]
    fn log_rehold(
        &self,
        carts: &mut Carts,
        sink: &mut impl RecordSink,
        cart: &CartId,
        release: &[ReservationId],
        new: Option<&NewHold<'_>>,
        step: CartStep,
        now_ms: u64,
    ) -> Result<(), CartError> {
        let mut wrap = StepSink { sink, cart, make: |_: &[Record]| step.clone(), made: None };
        self.rehold(release, new, None, now_ms, &mut wrap).map_err(refused)?;
        match wrap.made.take() {
            Some(made) => apply_live(carts, &made),
            None => log(carts, wrap.sink, cart, step, Vec::new(), now_ms)?,
        }
        Ok(())
    }

    /// Logs `step` for a line, ending its hold in the same record.
    fn end_holds(
        &self,
        carts: &mut Carts,
        sink: &mut impl RecordSink,
        cart: &CartId,
        line: &CartItem,
        step: CartStep,
        now_ms: u64,
    ) -> Result<(), CartError> {
        let release: Vec<ReservationId> = line.hold.iter().map(|h| h.id).collect();
        self.log_rehold(carts, sink, cart, &release, None, step, now_ms)
    }

    /// Ends a cart: each held line's hold in a record of its own (the line removed), then the cart.
    fn end_cart(
        &self,
        carts: &mut Carts,
        sink: &mut impl RecordSink,
        cart: &CartId,
        ending: Ending,
        now_ms: u64,
    ) -> Result<(), CartError> {
        let held: Vec<CartItem> = (carts.get(cart.as_str()).into_iter())
            .flat_map(|c| c.items.iter().filter(|i| i.hold.is_some()).cloned())
            .collect();
        for line in &held {
            let step = CartStep::ItemRemoved { sku: line.sku.clone() };
            self.end_holds(carts, sink, cart, line, step, now_ms)?;
        }
        log(carts, sink, cart, CartStep::Removed(ending), Vec::new(), now_ms)
    }

    /// Deletes a cart, returning its held units.
    pub fn delete_cart(
        &self,
        cart: &CartId,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), CartError> {
        let mut carts = self.carts().lock();
        carts.get(cart.as_str()).ok_or(CartError::NotFound)?;
        self.end_cart(&mut carts, sink, cart, Ending::Deleted, now_ms)
    }

    /// Merges the guest cart `from` into `into` (created if it does not exist): quantities added,
    /// capped by the item limit and the sale's per-user limit; `from` removed. A repeat (`from` was
    /// merged into `into` already and is gone) changes nothing. Held lines move one record each,
    /// their holds joined into one (as much as the stock allows: at least what they held).
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
        let Some(guest) = carts.get(from.as_str()).cloned() else {
            if carts.was_merged(into.as_str(), from.as_str()) {
                let cart = carts.get(into.as_str()).expect("it remembers the merge").clone();
                return Ok((cart, Merge::Repeat));
            }
            return Err(CartError::NotFound);
        };
        let target = carts.get(into.as_str()).map_or_else(Vec::new, |c| c.items.clone());
        let added = guest.items.iter().filter(|g| !target.iter().any(|t| t.sku == g.sku)).count();
        if target.len() + added > CART_ITEMS_MAX {
            return Err(CartError::CartFull { max: CART_ITEMS_MAX });
        }
        // Quantities added, capped (a guest's own line too: the limit may have come after it).
        let merged = |g: &CartItem, t: Option<&CartItem>| {
            let cap = self.cart_limit(g.sku.as_str()).unwrap_or(u32::MAX).min(QTY_PER_ITEM_MAX);
            let Some(t) = t else { return CartItem { qty: g.qty.min(cap).max(1), ..g.clone() } };
            // The price the shopper saw last: the signed-in cart's, else the guest's.
            let unit_price = t.unit_price.or(g.unit_price);
            CartItem { qty: t.qty.saturating_add(g.qty).min(cap).max(t.qty), unit_price, ..t.clone() }
        };
        for g in &guest.items {
            let t = target.iter().find(|t| t.sku == g.sku);
            let held = g.hold.is_some() || t.is_some_and(|t| t.hold.is_some());
            let hold = self.cart_hold(&carts, g.sku.as_str());
            if !held && hold.is_none() {
                continue;
            }
            let olds: Vec<&CartItem> = [Some(g), t].into_iter().flatten().collect();
            let item = merged(g, t);
            // Behind a waiting room a hold is taken only with the admission given to the cart's id,
            // which a merge does not carry: the guest's hold is released, its line moves without a
            // hold when the cart lacks one (held again by an admitted add, or reserved at checkout),
            // and the cart's own line, held by its own admission, stays as it is.
            if hold.is_some_and(|(sale, _)| self.is_gated(sale.as_str())) {
                let release: Vec<ReservationId> = g.hold.iter().map(|h| h.id).collect();
                let kept = t.cloned().unwrap_or(CartItem { hold: None, ..item });
                let step = CartStep::ItemMoved { from: from.clone(), item: kept };
                self.log_rehold(&mut carts, sink, into, &release, None, step, now_ms)?;
                continue;
            }
            let first = self.hold_line(&mut carts, sink, into, Some(from), item.clone(), &olds, now_ms);
            let Err(CartError::Hold(_)) = first else {
                first?;
                continue;
            };
            // The stock or the limit does not allow the sum: the line keeps what its holds still
            // held, or, when nothing can be held, moves without a hold (checkout reserves it then).
            let kept: u32 = olds.iter().filter_map(|l| self.live_hold(l, now_ms).map(|_| l.qty)).sum();
            if kept > 0 {
                let second = self.hold_line(
                    &mut carts,
                    sink,
                    into,
                    Some(from),
                    CartItem { qty: kept, ..item.clone() },
                    &olds,
                    now_ms,
                );
                let Err(CartError::Hold(_)) = second else {
                    second?;
                    continue;
                };
            }
            let release: Vec<ReservationId> = olds.iter().filter_map(|l| l.hold.map(|h| h.id)).collect();
            let step = CartStep::ItemMoved { from: from.clone(), item: CartItem { hold: None, ..item } };
            self.log_rehold(&mut carts, sink, into, &release, None, step, now_ms)?;
        }
        // The rest in one record: the cart's lines after the merge, and the guest cart gone.
        let target = carts.get(into.as_str()).map_or_else(Vec::new, |c| c.items.clone());
        let rest = carts.get(from.as_str()).map_or_else(Vec::new, |c| c.items.clone());
        let mut items = target.clone();
        for g in &rest {
            match items.binary_search_by(|i| i.sku.cmp(&g.sku)) {
                Ok(at) => items[at] = merged(g, Some(&items[at])),
                Err(at) => items.insert(at, merged(g, None)),
            }
        }
        let step = CartStep::Merged { from: from.clone(), items };
        log(&mut carts, sink, into, step, Vec::new(), now_ms)?;
        Ok((carts.get(into.as_str()).expect("merged into it").clone(), Merge::Merged))
    }

    /// Expires carts idle past `cart_idle_ms` (at most `max` per call), returning their held units.
    /// Returns how many.
    pub fn carts_tick(
        &self,
        now_ms: u64,
        max: usize,
        sink: &mut impl RecordSink,
    ) -> Result<usize, CartError> {
        let mut carts = self.carts().lock();
        let idle = carts.idle(now_ms.saturating_sub(self.config().cart_idle_ms), max);
        for cart in &idle {
            self.end_cart(&mut carts, sink, cart, Ending::Expired, now_ms)?;
        }
        Ok(idle.len())
    }

    /// Sets a sale's cart hold (`cart_hold_ms`; 0: none). Lines already held keep their holds until
    /// they are edited or lapse.
    pub fn set_cart_hold(
        &self,
        sale: &SaleId,
        hold_ms: u64,
        now_ms: u64,
        sink: &mut impl RecordSink,
    ) -> Result<(), CartError> {
        let mut carts = self.carts().lock();
        if carts.hold_ms(sale.as_str()).unwrap_or(0) == hold_ms {
            return Ok(());
        }
        let record = Record::CartHold { sale: sale.clone(), hold_ms, at_ms: now_ms };
        sink.append(&record).map_err(|_| CartError::LogRefused)?;
        carts.set_hold_ms(sale, hold_ms);
        Ok(())
    }

    /// Checks a cart out: an order of its lines at their prices, placed under `template`'s user,
    /// currency, sale, payment window and key (its `lines` are ignored), and the cart removed in the
    /// same record. Held lines' units pass from their holds to the order's reservation in that record.
    /// A repeat of the key returns the order (`true`), whatever became of the cart.
    pub fn checkout_cart(
        &self,
        cart: &CartId,
        template: &OrderRequest,
        expected_sale: Option<Option<&SaleId>>,
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
        let holds: Vec<ReservationId> = found.items.iter().filter_map(|i| i.hold.map(|h| h.id)).collect();
        let req = OrderRequest { lines, ..template.clone() };
        let mut wrap =
            StepSink { sink, cart, make: |_: &[Record]| CartStep::Removed(Ending::CheckedOut), made: None };
        let placed = self.place_order_as(&req, fingerprint, expected_sale, &holds, now_ms, &mut wrap);
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

/// Wraps what the engine decided (holds ended and taken, a checkout's order) into the cart's step:
/// one record, so that neither happens without the other.
struct StepSink<'a, S: RecordSink, F: Fn(&[Record]) -> CartStep> {
    sink: &'a mut S,
    cart: &'a CartId,
    make: F,
    made: Option<CartRecord>,
}

impl<S: RecordSink, F: Fn(&[Record]) -> CartStep> RecordSink for StepSink<'_, S, F> {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        self.append_all(std::slice::from_ref(record))
    }

    fn append_all(&mut self, records: &[Record]) -> Result<(), SinkRefused> {
        let at_ms = records.last().map_or(0, Record::at_ms);
        let made = CartRecord {
            cart: self.cart.clone(),
            step: (self.make)(records),
            inner: records.to_vec(),
            at_ms,
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
    inner: Vec<Record>,
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
