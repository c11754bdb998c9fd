//! `holdfast orders list DIR`: the orders as the server holds them, rebuilt from the data directory's
//! snapshot and log without changing anything (it works while the server runs). `--state refund_due`
//! and `--state payment_mismatch` are the operator's to-do lists (`ops/runbooks/payments.md`).

use super::describe::time;
use super::{settings, storage, OrdersListArgs, Out};
use crate::orders::Order;
use holdfast_wal::Lsn;
use serde_json::{json, Value};
use std::io::Write;

/// What `--state` takes: an order state, `open` (awaiting_payment and payment_pending), or
/// `needs_refund` (a surplus payment came for it, whatever its state).
pub const STATES: [&str; 8] = [
    "open",
    "awaiting_payment",
    "payment_pending",
    "paid",
    "cancelled",
    "refund_due",
    "payment_mismatch",
    "needs_refund",
];

fn wanted(filter: Option<&str>, o: &Order) -> bool {
    match filter {
        None => true,
        Some("open") => o.state.is_open(),
        Some("needs_refund") => o.needs_refund,
        Some(s) => o.state.as_str() == s,
    }
}

fn order_json(o: &Order) -> Value {
    let items: Vec<Value> = (o.placed.lines.iter())
        .map(|l| json!({"sku": l.sku.as_str(), "qty": l.qty, "unit_price": l.unit_price}))
        .collect();
    json!({
        "id": o.id.to_string(),
        "state": o.state.as_str(),
        "cause": o.state.cause(),
        "amount": o.placed.amount,
        "currency": o.placed.currency,
        "provider_ref": o.provider_ref,
        "user_id": o.placed.user.as_str(),
        "sale_id": o.placed.sale.as_ref().map(|s| s.as_str()),
        "pay_by": time(o.pay_by_ms),
        "reservation_id": o.reservation.to_string(),
        "needs_refund": o.needs_refund,
        "commit_owed": o.commit_owed,
        "created_at": time(o.created_at_ms),
        "ended_at": (o.ended_at_ms > 0).then(|| time(o.ended_at_ms)),
        "items": items,
    })
}

pub(super) fn list(args: &OrdersListArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(&args.dir)?;
    let (engine, from, replayed) = crate::durable::engine_at(&storage, &settings(&args.dir)?, Lsn::MAX)?;
    let (lsn, at_ms) =
        if replayed.records > 0 { (replayed.last_lsn, replayed.last_at_ms) } else { (from, 0) };
    // As of the last record: what the server would still hold then (it forgets ended orders after
    // its retention, never open ones or ones that need a person).
    let mut orders: Vec<Order> =
        engine.export(at_ms).orders.into_iter().filter(|o| wanted(args.state.as_deref(), o)).collect();
    orders.sort_by_key(|o| (o.created_at_ms, o.id));
    if args.json {
        for o in &orders {
            writeln!(out, "{}", order_json(o))?;
        }
        return Ok(());
    }
    let dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
    writeln!(
        out,
        "{:<21} {:<16} {:<14} {:>12} {:<4} {:<28} {:<20} {:<24} reservation",
        "id", "state", "cause", "amount", "cur", "provider_ref", "user", "pay_by"
    )?;
    for o in &orders {
        writeln!(
            out,
            "{:<21} {:<16} {:<14} {:>12} {:<4} {:<28} {:<20} {:<24} {}",
            o.id.to_string(),
            o.state.as_str(),
            dash(o.state.cause()),
            o.placed.amount,
            o.placed.currency,
            dash(o.provider_ref.as_deref()),
            o.placed.user.as_str(),
            time(o.pay_by_ms),
            o.reservation
        )?;
    }
    let what = args.state.as_deref().map_or(String::new(), |s| format!(" {s}"));
    writeln!(out, "{}{what} orders, as of LSN {lsn}", orders.len())?;
    Ok(())
}
