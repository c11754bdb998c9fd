//! The carts themselves and the records that change them. Like the orders' book, it is changed only
//! by `apply`, from records decided under the engine's rules (`ops.rs`), so that the live path and
//! replay share one code path and reproduce the same carts.

use crate::engine::{CartId, Record, ReservationId, SaleId, SkuId};
use crate::limits::CART_MERGES_REMEMBERED;
use std::collections::{BTreeSet, HashMap};

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    pub sku: SkuId,
    pub qty: u32,
    /// The price the shopper saw when adding it, in the currency's minor unit: what checkout charges.
    pub unit_price: Option<u64>,
    /// The soft hold on its units, in a sale with `cart_hold_ms` (the engine's reservation; it may
    /// have lapsed since: the engine expires it like any hold).
    pub hold: Option<Hold>,
}

/// A cart line's hold: its reservation, its deadline, and when the line was first held (edits renew
/// the hold, never past `since_ms + hold_ms_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub id: ReservationId,
    pub expires_at_ms: u64,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    pub id: CartId,
    /// By SKU.
    pub items: Vec<CartItem>,
    pub created_at_ms: u64,
    /// The last edit: the cart expires `cart_idle_ms` after it.
    pub touched_at_ms: u64,
    /// Carts merged into this one, newest last (at most `CART_MERGES_REMEMBERED`): a retried merge
    /// finds its guest here and is a repeat.
    pub merged_from: Vec<CartId>,
}

impl Cart {
    pub fn item(&self, sku: &str) -> Option<&CartItem> {
        self.items.iter().find(|i| i.sku.as_str() == sku)
    }

    pub fn units(&self) -> u64 {
        self.items.iter().map(|i| u64::from(i.qty)).sum()
    }
}

/// Why a cart went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The shopper or the checkout service deleted it.
    Deleted,
    /// Idle past `cart_idle_ms`.
    Expired,
    /// Checked out: the record carries the order's `Placed`.
    CheckedOut,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Deleted => "deleted",
            Ending::Expired => "expired",
            Ending::CheckedOut => "checked_out",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartStep {
    /// A SKU's line set (qty at least 1), creating the cart if it did not exist. With a hold, the
    /// record's `inner` holds its `Reserved` (after the end of the line's earlier hold, if any).
    ItemSet(CartItem),
    /// With the end of the line's hold in `inner`, if it had one still active.
    ItemRemoved {
        sku: SkuId,
    },
    /// A held line of the cart `from` moved into the record's cart (replacing its line of that SKU),
    /// its holds ended and the line's new hold reserved in `inner`: one line of a merge with holds.
    ItemMoved {
        from: CartId,
        item: CartItem,
    },
    /// `from` merged into the record's cart: `items` is the cart's lines after the merge (quantities
    /// added and capped when it was decided), and `from` is gone.
    Merged {
        from: CartId,
        items: Vec<CartItem>,
    },
    Removed(Ending),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartRecord {
    pub cart: CartId,
    pub step: CartStep,
    /// The records the step made in the engine, applied before the step, in order: holds ended and
    /// reserved, and a checkout's order (`Record::Order` with its `Placed`) last.
    pub inner: Vec<Record>,
    pub at_ms: u64,
}

/// A record that cannot follow the carts it was applied to.
pub type CartsError = String;

/// Every cart, when each falls idle, and the sales whose SKUs a cart holds.
#[derive(Default)]
pub struct Carts {
    carts: HashMap<CartId, Cart, foldhash::fast::RandomState>,
    /// Sale → `cart_hold_ms`: adding its SKUs to a cart reserves them for that long.
    hold_ms: HashMap<SaleId, u64, foldhash::fast::RandomState>,
    /// Lines with a hold (one that lapsed counts until its line is edited or removed).
    held: usize,
    /// Carts by the time they expire (`touched_at_ms + idle`), kept as `touched_at_ms`.
    by_touch: BTreeSet<(u64, CartId)>,
    items: usize,
}

impl Carts {
    pub fn get(&self, id: &str) -> Option<&Cart> {
        self.carts.get(id)
    }

    pub fn len(&self) -> usize {
        self.carts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.carts.is_empty()
    }

    /// Lines in all carts.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Lines with a hold (see `held`).
    pub fn held_lines(&self) -> usize {
        self.held
    }

    /// Carts last touched at or before `touched_by_ms`, oldest first, at most `max`.
    pub fn idle(&self, touched_by_ms: u64, max: usize) -> Vec<CartId> {
        let due = self.by_touch.iter().take_while(|(at, _)| *at <= touched_by_ms);
        due.take(max).map(|(_, id)| id.clone()).collect()
    }

    /// The cart `from` was merged into `into` (a retried merge).
    pub fn was_merged(&self, into: &str, from: &str) -> bool {
        self.carts.get(into).is_some_and(|c| c.merged_from.iter().any(|m| m.as_str() == from))
    }

    /// Applies one step. A record's `inner` was applied already.
    pub fn apply(&mut self, r: &CartRecord) -> Result<(), CartsError> {
        match &r.step {
            CartStep::ItemSet(line) => self.set_line(&r.cart, line, r.at_ms)?,
            CartStep::ItemMoved { from, item } => {
                if *from == r.cart {
                    return Err(format!("cart {} moved a line from itself", r.cart));
                }
                let Some(guest) = self.carts.get_mut(from) else {
                    return Err(format!("cart {from} moved from but not known"));
                };
                let Ok(at) = guest.items.binary_search_by(|i| i.sku.cmp(&item.sku)) else {
                    return Err(format!("cart {from} has no {} to move", item.sku));
                };
                let moved = guest.items.remove(at);
                self.items -= 1;
                self.held -= usize::from(moved.hold.is_some());
                self.set_line(&r.cart, item, r.at_ms)?;
            }
            CartStep::ItemRemoved { sku } => {
                let Some(cart) = self.carts.get(&r.cart) else {
                    return Err(format!("cart {} is not known", r.cart));
                };
                let Ok(at) = cart.items.binary_search_by(|i| i.sku.cmp(sku)) else {
                    return Err(format!("cart {} has no {sku} to remove", r.cart));
                };
                let cart = self.touch(&r.cart, r.at_ms);
                let removed = cart.items.remove(at);
                self.items -= 1;
                self.held -= usize::from(removed.hold.is_some());
            }
            CartStep::Merged { from, items } => {
                if *from == r.cart || !items.windows(2).all(|w| w[0].sku < w[1].sku) {
                    return Err(format!("cart {} merged from itself or with unsorted lines", r.cart));
                }
                if items.iter().any(|i| i.qty == 0) {
                    return Err(format!("cart {} merged with an empty line", r.cart));
                }
                self.remove(from).ok_or_else(|| format!("cart {from} merged but not known"))?;
                let cart = self.touch(&r.cart, r.at_ms);
                let before = (cart.items.len(), held_in(&cart.items));
                cart.items = items.clone();
                cart.merged_from.retain(|m| m != from);
                cart.merged_from.push(from.clone());
                if cart.merged_from.len() > CART_MERGES_REMEMBERED {
                    cart.merged_from.remove(0);
                }
                self.items = self.items - before.0 + items.len();
                self.held = self.held - before.1 + held_in(items);
            }
            CartStep::Removed(ending) => {
                if *ending == Ending::CheckedOut && !matches!(r.inner.last(), Some(Record::Order(_))) {
                    return Err(format!("cart {} checked out without its order", r.cart));
                }
                self.remove(&r.cart).ok_or_else(|| format!("cart {} removed but not known", r.cart))?;
            }
        }
        Ok(())
    }

    fn set_line(&mut self, cart: &CartId, line: &CartItem, at_ms: u64) -> Result<(), CartsError> {
        if line.qty == 0 {
            return Err(format!("cart {cart} sets {} to 0", line.sku));
        }
        let mut held = self.held + usize::from(line.hold.is_some());
        let cart = self.touch(cart, at_ms);
        let added = match cart.items.binary_search_by(|i| i.sku.cmp(&line.sku)) {
            Ok(at) => {
                held -= usize::from(cart.items[at].hold.is_some());
                cart.items[at] = line.clone();
                false
            }
            Err(at) => {
                cart.items.insert(at, line.clone());
                true
            }
        };
        self.items += usize::from(added);
        self.held = held;
        Ok(())
    }

    /// The hold a sale's SKUs get in a cart (`None`: none).
    pub fn hold_ms(&self, sale: &str) -> Option<u64> {
        self.hold_ms.get(sale).copied()
    }

    /// Sets a sale's `cart_hold_ms` (0: none).
    pub fn set_hold_ms(&mut self, sale: &SaleId, hold_ms: u64) {
        match hold_ms {
            0 => self.hold_ms.remove(sale),
            ms => self.hold_ms.insert(sale.clone(), ms),
        };
    }

    /// Each sale's `cart_hold_ms`, by sale, for a snapshot.
    pub fn export_holds(&self) -> Vec<(SaleId, u64)> {
        let mut holds: Vec<(SaleId, u64)> = self.hold_ms.iter().map(|(s, ms)| (s.clone(), *ms)).collect();
        holds.sort();
        holds
    }

    /// The cart, created if new, touched at `at_ms`.
    fn touch(&mut self, id: &CartId, at_ms: u64) -> &mut Cart {
        let cart = self.carts.entry(id.clone()).or_insert_with(|| Cart {
            id: id.clone(),
            items: Vec::new(),
            created_at_ms: at_ms,
            touched_at_ms: at_ms,
            merged_from: Vec::new(),
        });
        self.by_touch.remove(&(cart.touched_at_ms, id.clone()));
        // Never backwards: records of one cart come in log order, and replay checks nothing else.
        cart.touched_at_ms = cart.touched_at_ms.max(at_ms);
        self.by_touch.insert((cart.touched_at_ms, id.clone()));
        cart
    }

    fn remove(&mut self, id: &CartId) -> Option<Cart> {
        let cart = self.carts.remove(id)?;
        self.by_touch.remove(&(cart.touched_at_ms, cart.id.clone()));
        self.items -= cart.items.len();
        self.held -= held_in(&cart.items);
        Some(cart)
    }

    /// Every cart, by id, for a snapshot.
    pub fn export(&self) -> Vec<Cart> {
        let mut carts: Vec<Cart> = self.carts.values().cloned().collect();
        carts.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        carts
    }

    /// Carts holding a snapshot's carts and sales' holds.
    pub fn restore(carts: &[Cart], holds: &[(SaleId, u64)]) -> Result<Carts, CartsError> {
        let mut book = Carts::default();
        for (sale, ms) in holds {
            book.set_hold_ms(sale, *ms);
        }
        for cart in carts {
            let sorted = cart.items.windows(2).all(|w| w[0].sku < w[1].sku);
            if !sorted || cart.items.iter().any(|i| i.qty == 0) || book.carts.contains_key(&cart.id) {
                return Err(format!("cart {} appears twice or has unsorted or empty lines", cart.id));
            }
            book.items += cart.items.len();
            book.held += held_in(&cart.items);
            book.by_touch.insert((cart.touched_at_ms, cart.id.clone()));
            book.carts.insert(cart.id.clone(), cart.clone());
        }
        Ok(book)
    }
}

fn held_in(items: &[CartItem]) -> usize {
    items.iter().filter(|i| i.hold.is_some()).count()
}
