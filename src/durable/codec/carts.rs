//! Carts in the log and in snapshots: their own schema beside the engine's (see the parent module).

use super::orders::{
    from_archived_order, hold_from, log_hold, to_log_order, ArchivedLogOrder, LogHold, LogOrder,
};
use super::{bad, id, reservation_tag, DecodeError, Invalid};
use crate::carts::{Cart, CartItem, CartRecord, CartStep, Ending, Hold};
use crate::engine::{CartId, Record, SaleId, SkuId};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub(super) struct LogCart {
    cart: String,
    /// `STEPS`' index.
    step: u8,
    /// `ItemSet`'s and `ItemMoved`'s line.
    line: Option<LogCartItem>,
    /// `ItemRemoved`'s SKU.
    sku: Option<String>,
    /// `Merged`'s and `ItemMoved`'s other cart.
    from: Option<String>,
    /// `Merged`'s lines.
    items: Vec<LogCartItem>,
    /// The holds' records the step made, in order, and the tags of their ids.
    holds: Vec<LogHold>,
    hold_tags: Vec<u64>,
    /// A checkout's order, after the holds.
    order: Option<Box<LogOrder>>,
    at_ms: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub(super) struct LogCartItem {
    sku: String,
    qty: u32,
    unit_price: Option<u64>,
    hold: Option<LogLineHold>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct LogLineHold {
    id: u64,
    tag: u64,
    expires_at_ms: u64,
    since_ms: u64,
}

const STEPS: [&str; 7] =
    ["item_set", "item_removed", "merged", "deleted", "expired", "checked_out", "item_moved"];

/// The step's name, as `holdfast wal dump` shows it.
pub fn cart_step_name(step: &CartStep) -> &'static str {
    STEPS[step_code(step) as usize]
}

fn step_code(step: &CartStep) -> u8 {
    match step {
        CartStep::ItemSet(_) => 0,
        CartStep::ItemRemoved { .. } => 1,
        CartStep::Merged { .. } => 2,
        CartStep::Removed(Ending::Deleted) => 3,
        CartStep::Removed(Ending::Expired) => 4,
        CartStep::Removed(Ending::CheckedOut) => 5,
        CartStep::ItemMoved { .. } => 6,
    }
}

fn log_item(i: &CartItem) -> LogCartItem {
    LogCartItem {
        sku: i.sku.as_str().to_owned(),
        qty: i.qty,
        unit_price: i.unit_price,
        hold: i.hold.map(|h| LogLineHold {
            id: h.id.raw(),
            tag: h.id.tag(),
            expires_at_ms: h.expires_at_ms,
            since_ms: h.since_ms,
        }),
    }
}

fn item(i: &ArchivedLogCartItem) -> Result<CartItem, Invalid> {
    let hold = match i.hold.as_ref() {
        Some(h) => Some(Hold {
            id: id(&h.id, h.tag.to_native())?,
            expires_at_ms: h.expires_at_ms.to_native(),
            since_ms: h.since_ms.to_native(),
        }),
        None => None,
    };
    Ok(CartItem {
        sku: SkuId::new(&i.sku)?,
        qty: i.qty.to_native(),
        unit_price: i.unit_price.as_ref().map(|p| p.to_native()),
        hold,
    })
}

pub(super) fn to_log_cart(r: &CartRecord) -> LogCart {
    let holds: Vec<&Record> = r.inner.iter().filter(|i| !matches!(i, Record::Order(_))).collect();
    let mut log = LogCart {
        cart: r.cart.as_str().to_owned(),
        step: step_code(&r.step),
        line: None,
        sku: None,
        from: None,
        items: Vec::new(),
        holds: holds.iter().map(|h| log_hold(h)).collect(),
        hold_tags: holds.iter().map(|h| reservation_tag(h)).collect(),
        order: r.inner.iter().find_map(|i| match i {
            Record::Order(o) => Some(Box::new(to_log_order(o))),
            _ => None,
        }),
        at_ms: r.at_ms,
    };
    match &r.step {
        CartStep::ItemSet(line) => log.line = Some(log_item(line)),
        CartStep::ItemMoved { from, item } => {
            (log.from, log.line) = (Some(from.as_str().to_owned()), Some(log_item(item)));
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
    let line = || item(c.line.as_ref().ok_or(Invalid::Code("cart step without its line", c.step))?);
    let from = || -> Result<CartId, Invalid> {
        Ok(CartId::new(c.from.as_ref().ok_or(Invalid::Code("cart step without its other cart", c.step))?)?)
    };
    let step = match c.step {
        0 => CartStep::ItemSet(line()?),
        1 => CartStep::ItemRemoved {
            sku: SkuId::new(c.sku.as_ref().ok_or(Invalid::Code("cart step without its SKU", 1))?)?,
        },
        2 => CartStep::Merged { from: from()?, items: c.items.iter().map(item).collect::<Result<_, _>>()? },
        3 => CartStep::Removed(Ending::Deleted),
        4 => CartStep::Removed(Ending::Expired),
        5 => CartStep::Removed(Ending::CheckedOut),
        6 => CartStep::ItemMoved { from: from()?, item: line()? },
        other => return Err(Invalid::Code("cart step", other)),
    };
    if c.holds.len() != c.hold_tags.len() {
        return Err(Invalid::Code("cart step's hold tags", c.step));
    }
    let mut inner = (c.holds.iter().zip(c.hold_tags.iter()))
        .map(|(h, tag)| hold_from(h, tag.to_native()))
        .collect::<Result<Vec<_>, _>>()?;
    let order: Option<&ArchivedLogOrder> = c.order.as_deref();
    if let Some(o) = order {
        inner.push(Record::Order(Box::new(from_archived_order(o, tags)?)));
    }
    Ok(CartRecord { cart: CartId::new(&c.cart)?, step, inner, at_ms: c.at_ms.to_native() })
}

// Snapshots.

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct SnapCarts {
    carts: Vec<SnapCart>,
    /// Each sale's `cart_hold_ms`.
    holds: Vec<(String, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapCart {
    id: String,
    items: Vec<LogCartItem>,
    created_at_ms: u64,
    touched_at_ms: u64,
    merged_from: Vec<String>,
}

pub(super) fn snap_carts(carts: &[Cart], holds: &[(SaleId, u64)]) -> SnapCarts {
    let carts = (carts.iter())
        .map(|c| SnapCart {
            id: c.id.as_str().to_owned(),
            items: c.items.iter().map(log_item).collect(),
            created_at_ms: c.created_at_ms,
            touched_at_ms: c.touched_at_ms,
            merged_from: c.merged_from.iter().map(|m| m.as_str().to_owned()).collect(),
        })
        .collect();
    SnapCarts { carts, holds: holds.iter().map(|(s, ms)| (s.as_str().to_owned(), *ms)).collect() }
}

type Restored = (Vec<Cart>, Vec<(SaleId, u64)>);

pub(super) fn carts_from(snap: &ArchivedSnapCarts) -> Result<Restored, DecodeError> {
    let cart = |c: &ArchivedSnapCart| -> Result<Cart, Invalid> {
        Ok(Cart {
            id: CartId::new(&c.id)?,
            items: c.items.iter().map(item).collect::<Result<_, _>>()?,
            created_at_ms: c.created_at_ms.to_native(),
            touched_at_ms: c.touched_at_ms.to_native(),
            merged_from: c.merged_from.iter().map(|m| CartId::new(m)).collect::<Result<_, _>>()?,
        })
    };
    let invalid = |e: Invalid| match e {
        Invalid::Name(e) => bad(e),
        Invalid::Id(raw) => bad(format_args!("id {raw:#x}")),
        Invalid::Code(what, code) => bad(format_args!("{what} code {code} is not valid")),
    };
    let carts = snap.carts.iter().map(|c| cart(c).map_err(invalid)).collect::<Result<_, _>>()?;
    let holds = (snap.holds.iter())
        .map(|h| Ok((SaleId::new(&h.0).map_err(bad)?, h.1.to_native())))
        .collect::<Result<_, DecodeError>>()?;
    Ok((carts, holds))
}
