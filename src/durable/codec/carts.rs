//! Carts in the log and in snapshots: their own schema beside the engine's (see the parent module).

use super::orders::{from_archived_order, to_log_order, ArchivedLogOrder, LogOrder};
use super::{bad, DecodeError, Invalid};
use crate::carts::{Cart, CartItem, CartRecord, CartStep, Ending};
use crate::engine::{CartId, Record, SkuId};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub(super) struct LogCart {
    cart: String,
    /// `STEPS`' index.
    step: u8,
    /// `ItemSet`'s and `ItemRemoved`'s SKU.
    sku: Option<String>,
    qty: u32,
    unit_price: Option<u64>,
    /// `Merged`'s guest cart.
    from: Option<String>,
    /// `Merged`'s lines.
    items: Vec<LogCartItem>,
    /// A checkout's order.
    order: Option<Box<LogOrder>>,
    at_ms: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct LogCartItem {
    sku: String,
    qty: u32,
    unit_price: Option<u64>,
}

const STEPS: [&str; 6] = ["item_set", "item_removed", "merged", "deleted", "expired", "checked_out"];

/// The step's name, as `holdfast wal dump` shows it.
pub fn cart_step_name(step: &CartStep) -> &'static str {
    STEPS[step_code(step) as usize]
}

fn step_code(step: &CartStep) -> u8 {
    match step {
        CartStep::ItemSet { .. } => 0,
        CartStep::ItemRemoved { .. } => 1,
        CartStep::Merged { .. } => 2,
        CartStep::Removed(Ending::Deleted) => 3,
        CartStep::Removed(Ending::Expired) => 4,
        CartStep::Removed(Ending::CheckedOut) => 5,
    }
}

fn log_item(i: &CartItem) -> LogCartItem {
    LogCartItem { sku: i.sku.as_str().to_owned(), qty: i.qty, unit_price: i.unit_price }
}

fn item(i: &ArchivedLogCartItem) -> Result<CartItem, Invalid> {
    Ok(CartItem {
        sku: SkuId::new(&i.sku)?,
        qty: i.qty.to_native(),
        unit_price: i.unit_price.as_ref().map(|p| p.to_native()),
    })
}

pub(super) fn to_log_cart(r: &CartRecord) -> LogCart {
    let mut log = LogCart {
        cart: r.cart.as_str().to_owned(),
        step: step_code(&r.step),
        sku: None,
        qty: 0,
        unit_price: None,
        from: None,
        items: Vec::new(),
        order: match &r.inner {
            Some(Record::Order(o)) => Some(Box::new(to_log_order(o))),
            _ => None,
        },
        at_ms: r.at_ms,
    };
    match &r.step {
        CartStep::ItemSet { sku, qty, unit_price } => {
            (log.sku, log.qty, log.unit_price) = (Some(sku.as_str().to_owned()), *qty, *unit_price);
        }
        CartStep::ItemRemoved { sku } => log.sku = Some(sku.as_str().to_owned()),
        CartStep::Merged { from, items } => {
            log.from = Some(from.as_str().to_owned());
            log.items = items.iter().map(log_item).collect();
        }
        CartStep::Removed(_) => {}
    }
    log
}

/// `tags`: those of the checkout's order (see `tags` in the parent).
pub(super) fn from_archived_cart(c: &ArchivedLogCart, tags: [u64; 2]) -> Result<CartRecord, Invalid> {
    let sku = || -> Result<SkuId, Invalid> {
        Ok(SkuId::new(c.sku.as_ref().ok_or(Invalid::Code("cart step without its SKU", c.step))?)?)
    };
    let step = match c.step {
        0 => CartStep::ItemSet {
            sku: sku()?,
            qty: c.qty.to_native(),
            unit_price: c.unit_price.as_ref().map(|p| p.to_native()),
        },
        1 => CartStep::ItemRemoved { sku: sku()? },
        2 => CartStep::Merged {
            from: CartId::new(c.from.as_ref().ok_or(Invalid::Code("merge without its guest", 2))?)?,
            items: c.items.iter().map(item).collect::<Result<_, _>>()?,
        },
        3 => CartStep::Removed(Ending::Deleted),
        4 => CartStep::Removed(Ending::Expired),
        5 => CartStep::Removed(Ending::CheckedOut),
        other => return Err(Invalid::Code("cart step", other)),
    };
    let inner: Option<&ArchivedLogOrder> = c.order.as_deref();
    Ok(CartRecord {
        cart: CartId::new(&c.cart)?,
        step,
        inner: inner.map(|o| from_archived_order(o, tags).map(|o| Record::Order(Box::new(o)))).transpose()?,
        at_ms: c.at_ms.to_native(),
    })
}

// Snapshots.

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct SnapCart {
    id: String,
    items: Vec<LogCartItem>,
    created_at_ms: u64,
    touched_at_ms: u64,
    merged_from: Vec<String>,
}

pub(super) fn snap_carts(carts: &[Cart]) -> Vec<SnapCart> {
    (carts.iter())
        .map(|c| SnapCart {
            id: c.id.as_str().to_owned(),
            items: c.items.iter().map(log_item).collect(),
            created_at_ms: c.created_at_ms,
            touched_at_ms: c.touched_at_ms,
            merged_from: c.merged_from.iter().map(|m| m.as_str().to_owned()).collect(),
        })
        .collect()
}

pub(super) fn carts_from(snap: &rkyv::vec::ArchivedVec<ArchivedSnapCart>) -> Result<Vec<Cart>, DecodeError> {
    let cart = |c: &ArchivedSnapCart| -> Result<Cart, Invalid> {
        Ok(Cart {
            id: CartId::new(&c.id)?,
            items: c.items.iter().map(item).collect::<Result<_, _>>()?,
            created_at_ms: c.created_at_ms.to_native(),
            touched_at_ms: c.touched_at_ms.to_native(),
            merged_from: c.merged_from.iter().map(|m| CartId::new(m)).collect::<Result<_, _>>()?,
        })
    };
    (snap.iter())
        .map(|c| {
            cart(c).map_err(|e| match e {
                Invalid::Name(e) => bad(e),
                Invalid::Id(raw) => bad(format_args!("id {raw:#x}")),
                Invalid::Code(what, code) => bad(format_args!("{what} code {code} is not valid")),
            })
        })
        .collect()
}
