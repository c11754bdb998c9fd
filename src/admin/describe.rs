//! Log records and engine state as the tools print them: JSON (stable field names, for scripts) and
//! one readable line (for people).

use crate::engine::{Item, Record, ReservationView, Stock};
use serde_json::{json, Map, Value};
use std::time::UNIX_EPOCH;

pub use crate::clock::rfc3339 as time;

/// Parses an RFC 3339 time (`2026-11-23T12:00:03Z`, fractions allowed) or Unix milliseconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let at =
        humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text}: {e} (use RFC 3339 or Unix ms)"))?;
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// The record's kind, as `--kind` names it.
pub fn kind(record: &Record) -> &'static str {
    match record {
        Record::StockSet { .. } => "stock_set",
        Record::StockAdjusted { .. } => "stock_adjusted",
        Record::SaleSet { .. } => "sale_set",
        Record::SaleConfigured { .. } => "sale_configured",
        Record::QueueJoined { .. } => "queue_joined",
        Record::QueueOpened { .. } => "queue_opened",
        Record::QueueAdmitted { .. } => "queue_admitted",
        Record::Reserved(_) => "reserved",
        Record::Extended { .. } => "extended",
        Record::Committed { .. } => "committed",
        Record::Released { .. } => "released",
        Record::Expired { .. } => "expired",
        Record::Order(_) => "order",
        Record::Cart(_) => "cart",
        Record::CartHold { .. } => "cart_hold",
    }
}

/// A cart line as the tools show it: with its hold's reservation and deadline, if held.
fn cart_line(i: &crate::carts::CartItem) -> Value {
    let mut line = json!({"sku": i.sku.as_str(), "qty": i.qty, "unit_price": i.unit_price});
    if let Some(h) = i.hold {
        line["hold"] =
            json!({"id": h.id.to_string(), "expires_at": time(h.expires_at_ms), "since": time(h.since_ms)});
    }
    line
}

/// A cart step's own fields (the holds and the order it made are shown beside them).
fn cart_fields(c: &crate::carts::CartRecord) -> Map<String, Value> {
    use crate::carts::CartStep;
    let mut m = Map::new();
    m.insert("cart".into(), json!(c.cart.as_str()));
    m.insert("step".into(), json!(crate::durable::codec::cart_step_name(&c.step)));
    match &c.step {
        CartStep::ItemSet(item) => {
            m.insert("line".into(), cart_line(item));
        }
        CartStep::ItemMoved { from, item } => {
            m.insert("from".into(), json!(from.as_str()));
            m.insert("line".into(), cart_line(item));
        }
        CartStep::ItemRemoved { sku } => {
            m.insert("sku".into(), json!(sku.as_str()));
        }
        CartStep::Merged { from, items } => {
            m.insert("from".into(), json!(from.as_str()));
            m.insert("items".into(), items.iter().map(cart_line).collect());
        }
        CartStep::Removed(_) => {}
    }
    m
}

/// An order step's own fields (the reservation record it carries is shown beside them).
fn order_fields(o: &crate::orders::OrderRecord) -> Map<String, Value> {
    use crate::orders::OrderStep;
    let mut m = Map::new();
    m.insert("order".into(), json!(o.order.to_string()));
    m.insert("step".into(), json!(crate::durable::codec::step_name(&o.step)));
    match &o.step {
        OrderStep::Placed(p) => {
            m.insert("user".into(), json!(p.user.as_str()));
            let lines: Vec<Value> = (p.lines.iter())
                .map(|l| json!({"sku": l.sku.as_str(), "qty": l.qty, "unit_price": l.unit_price}))
                .collect();
            m.insert("items".into(), json!(lines));
            m.insert("amount".into(), json!(p.amount));
            m.insert("currency".into(), json!(p.currency));
            m.insert("idempotency_key".into(), json!(p.key.as_str()));
            if let Some(sale) = &p.sale {
                m.insert("sale".into(), json!(sale.as_str()));
            }
        }
        OrderStep::PaymentAttached { provider_ref } => {
            m.insert("provider_ref".into(), json!(provider_ref));
        }
        OrderStep::Cancelled(c) => {
            m.insert("cause".into(), json!(c.as_str()));
        }
        OrderStep::PaymentMismatch { amount, currency } => {
            m.insert("paid_amount".into(), json!(amount));
            m.insert("paid_currency".into(), json!(currency));
        }
        OrderStep::SurplusPayment { provider_ref, amount, currency } => {
            m.insert("provider_ref".into(), json!(provider_ref));
            m.insert("paid_amount".into(), json!(amount));
            m.insert("paid_currency".into(), json!(currency));
        }
        OrderStep::Pending | OrderStep::Paid | OrderStep::Rebooked | OrderStep::RefundDue => {}
    }
    if let Some(event) = &o.event {
        m.insert("event".into(), json!(event));
    }
    m
}

pub const KINDS: [&str; 15] = [
    "order",
    "cart",
    "cart_hold",
    "stock_set",
    "stock_adjusted",
    "sale_set",
    "sale_configured",
    "queue_joined",
    "queue_opened",
    "queue_admitted",
    "reserved",
    "extended",
    "committed",
    "released",
    "expired",
];

fn items(items: &[Item]) -> Value {
    Value::Array(items.iter().map(|i| json!({"sku": i.sku.as_str(), "qty": i.qty})).collect())
}

/// One record as a JSON object: `lsn`, `kind`, `at`, `at_ms`, then the kind's fields.
pub fn record_json(lsn: u64, record: &Record) -> Value {
    let mut m = Map::new();
    m.insert("lsn".into(), json!(lsn));
    m.insert("kind".into(), json!(kind(record)));
    m.insert("at".into(), json!(time(record.at_ms())));
    m.insert("at_ms".into(), json!(record.at_ms()));
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match record {
        Record::StockSet { sku, on_hand, .. } => {
            put("sku", json!(sku.as_str()));
            put("on_hand", json!(on_hand));
        }
        Record::StockAdjusted { sku, delta, reason, .. } => {
            put("sku", json!(sku.as_str()));
            put("delta", json!(delta));
            put("reason", json!(reason.as_str()));
        }
        Record::SaleSet { sale, per_user_max, skus, .. } => {
            put("sale", json!(sale.as_str()));
            put("per_user_limit", json!(per_user_max));
            put("skus", json!(skus.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        }
        Record::SaleConfigured { sale, per_user_max, room, .. } => {
            put("sale", json!(sale.as_str()));
            put("per_user_limit", json!(per_user_max));
            put("skus", json!(room.skus.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
            put("opens_at", json!(time(room.opens_at_ms)));
            put("admission_rate", json!(room.admit_per_s));
            put("max_active", json!(room.max_active));
            put("session_ms", json!(room.session_ms));
            put("order", json!(room.order.as_str()));
        }
        Record::QueueJoined { sale, user, .. } => {
            put("sale", json!(sale.as_str()));
            put("user", json!(user.as_str()));
        }
        Record::QueueOpened { sale, .. } => put("sale", json!(sale.as_str())),
        Record::CartHold { sale, hold_ms, .. } => {
            put("sale", json!(sale.as_str()));
            put("cart_hold_ms", json!(hold_ms));
        }
        Record::QueueAdmitted { sale, count, .. } => {
            put("sale", json!(sale.as_str()));
            put("count", json!(count));
        }
        Record::Reserved(r) => {
            put("id", json!(r.id.to_string()));
            put("items", items(&r.items));
            put("expires_at", json!(time(r.expires_at_ms)));
            if let Some(user) = &r.user {
                put("user", json!(user.as_str()));
            }
            if let Some(sale) = &r.sale {
                put("sale", json!(sale.as_str()));
            }
            if let Some((key, _)) = &r.idempotency {
                put("idempotency_key", json!(key.as_str()));
            }
        }
        Record::Extended { id, expires_at_ms, .. } => {
            put("id", json!(id.to_string()));
            put("expires_at", json!(time(*expires_at_ms)));
        }
        Record::Committed { id, .. } | Record::Released { id, .. } | Record::Expired { id, .. } => {
            put("id", json!(id.to_string()));
        }
        Record::Order(o) => {
            for (k, v) in order_fields(o) {
                put(&k, v);
            }
            if let Some(inner) = &o.reservation {
                let mut inner = record_json(lsn, inner);
                if let Value::Object(fields) = &mut inner {
                    fields.remove("lsn");
                }
                put("reservation", inner);
            }
        }
        Record::Cart(c) => {
            for (k, v) in cart_fields(c) {
                put(&k, v);
            }
            let mut holds = Vec::new();
            for inner in &c.inner {
                let mut shown = record_json(lsn, inner);
                if let Value::Object(fields) = &mut shown {
                    fields.remove("lsn");
                }
                match inner {
                    Record::Order(_) => put("order", shown),
                    _ => holds.push(shown),
                }
            }
            if !holds.is_empty() {
                put("holds", Value::Array(holds));
            }
        }
    }
    Value::Object(m)
}

/// One record as a readable line: `LSN  time  kind  details`.
pub fn record_line(lsn: u64, record: &Record) -> String {
    let details = match record {
        Record::StockSet { sku, on_hand, .. } => format!("{sku} on_hand={on_hand}", sku = sku.as_str()),
        Record::StockAdjusted { sku, delta, reason, .. } => {
            format!("{} delta={delta:+} reason={:?}", sku.as_str(), reason.as_str())
        }
        Record::SaleSet { sale, per_user_max, skus, .. } => {
            let skus: Vec<&str> = skus.iter().map(|s| s.as_str()).collect();
            format!("{} per_user_limit={per_user_max} skus={}", sale.as_str(), skus.join(","))
        }
        Record::SaleConfigured { sale, per_user_max, room, .. } => format!(
            "{} per_user_limit={per_user_max} opens={} rate={}/s max_active={} session={}ms order={} skus={}",
            sale.as_str(),
            time(room.opens_at_ms),
            room.admit_per_s,
            room.max_active,
            room.session_ms,
            room.order.as_str(),
            room.skus.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
        ),
        Record::QueueJoined { sale, user, .. } => format!("{} user={}", sale.as_str(), user.as_str()),
        Record::QueueOpened { sale, .. } => sale.as_str().to_owned(),
        Record::CartHold { sale, hold_ms, .. } => format!("{} cart_hold_ms={hold_ms}", sale.as_str()),
        Record::QueueAdmitted { sale, count, .. } => format!("{} count={count}", sale.as_str()),
        Record::Reserved(r) => {
            let what: Vec<String> = r.items.iter().map(|i| format!("{}x{}", i.qty, i.sku.as_str())).collect();
            let mut line = format!("{} {} until {}", r.id, what.join(","), time(r.expires_at_ms));
            if let Some(user) = &r.user {
                line.push_str(&format!(" user={}", user.as_str()));
            }
            if let Some(sale) = &r.sale {
                line.push_str(&format!(" sale={}", sale.as_str()));
            }
            if let Some((key, _)) = &r.idempotency {
                line.push_str(&format!(" key={}", key.as_str()));
            }
            line
        }
        Record::Extended { id, expires_at_ms, .. } => format!("{id} until {}", time(*expires_at_ms)),
        Record::Committed { id, .. } | Record::Released { id, .. } | Record::Expired { id, .. } => {
            id.to_string()
        }
        Record::Order(o) => {
            let fields = order_fields(o);
            let mut line: Vec<String> = (fields.iter())
                .map(|(k, v)| match v {
                    Value::String(s) if k == "order" || k == "step" => s.clone(),
                    v => format!("{k}={v}"),
                })
                .collect();
            if let Some(inner) = &o.reservation {
                line.push(format!(
                    "[{}: {}]",
                    kind(inner),
                    record_line(lsn, inner).split("  ").last().unwrap_or("")
                ));
            }
            line.join(" ")
        }
        Record::Cart(c) => {
            let fields = cart_fields(c);
            let mut line: Vec<String> = (fields.iter())
                .map(|(k, v)| match v {
                    Value::String(s) if k == "cart" || k == "step" => s.clone(),
                    v => format!("{k}={v}"),
                })
                .collect();
            for inner in &c.inner {
                let shown = record_line(lsn, inner);
                line.push(format!("[{}: {}]", kind(inner), shown.split("  ").last().unwrap_or("").trim()));
            }
            line.join(" ")
        }
    };
    format!("{lsn:>10}  {}  {:<14}  {details}", time(record.at_ms()), kind(record))
}

pub fn stock_json(sku: &str, s: &Stock) -> Value {
    json!({"sku": sku, "on_hand": s.on_hand, "available": s.available, "reserved": s.reserved, "sold": s.sold})
}

pub fn reservation_json(v: &ReservationView) -> Value {
    let mut out = json!({
        "id": v.id.to_string(),
        "state": v.state.as_str(),
        "items": items(&v.items),
        "created_at": time(v.created_at_ms),
        "expires_at": time(v.expires_at_ms),
    });
    if let Some(ended) = v.ended_at_ms {
        out["ended_at"] = json!(time(ended));
    }
    if let Some((sale, user)) = &v.holder {
        out["sale"] = json!(sale.as_str());
        out["user"] = json!(user.as_str());
    }
    out
}

/// An order as the log tools show it: its state, money, payment reference and history.
pub fn order_json(o: &crate::orders::Order) -> Value {
    let mut out = json!({
        "id": o.id.to_string(),
        "state": o.state.as_str(),
        "reservation_id": o.reservation.to_string(),
        "user_id": o.placed.user.as_str(),
        "items": o.placed.lines.iter()
            .map(|l| json!({"sku": l.sku.as_str(), "qty": l.qty, "unit_price": l.unit_price}))
            .collect::<Vec<_>>(),
        "amount": o.placed.amount,
        "currency": o.placed.currency,
        "pay_by": time(o.pay_by_ms),
        "created_at": time(o.created_at_ms),
        "history": o.history.iter()
            .map(|t| json!({"at": time(t.at_ms), "state": t.state.as_str(), "cause": t.cause}))
            .collect::<Vec<_>>(),
    });
    if let crate::orders::OrderState::Cancelled(c) = o.state {
        out["cause"] = json!(c.as_str());
    }
    if let Some(r) = &o.provider_ref {
        out["provider_ref"] = json!(r);
    }
    if let Some(sale) = &o.placed.sale {
        out["sale_id"] = json!(sale.as_str());
    }
    out
}

/// A cart as the log tools show it.
pub fn cart_json(c: &crate::carts::Cart) -> Value {
    json!({
        "id": c.id.as_str(),
        "items": c.items.iter().map(cart_line).collect::<Vec<_>>(),
        "created_at": time(c.created_at_ms),
        "updated_at": time(c.touched_at_ms),
        "merged_from": c.merged_from.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
    })
}

/// Whether a record concerns a SKU, a reservation, a user or a sale (the filters of dump and trace).
#[derive(Default)]
pub struct Filter {
    pub sku: Option<String>,
    pub reservation: Option<String>,
    pub user: Option<String>,
    pub sale: Option<String>,
    pub order: Option<String>,
    pub cart: Option<String>,
}

impl Filter {
    /// No filter given: every record matches.
    pub fn is_empty(&self) -> bool {
        let Filter { sku, reservation, user, sale, order, cart } = self;
        [sku, reservation, user, sale, order, cart].iter().all(|f| f.is_none())
    }

    /// `related` holds the ids of reservations seen to match (a commit names only its id).
    pub fn matches(&self, record: &Record, related: &mut std::collections::HashSet<u64>) -> bool {
        if let Some(want) = &self.cart {
            return match record {
                Record::Cart(c) => {
                    let from = match &c.step {
                        crate::carts::CartStep::Merged { from, .. } => Some(from.as_str()),
                        _ => None,
                    };
                    c.cart.as_str() == want || from == Some(want.as_str())
                }
                _ => false,
            };
        }
        // A cart's step is judged by the holds and the order it made (every one of them, so that
        // the reservations they name are followed); a step without any names no SKU's stock,
        // reservation, user or sale.
        if let Record::Cart(c) = record {
            if c.inner.is_empty() {
                return self.is_empty();
            }
            let mut hit = false;
            for r in &c.inner {
                hit |= self.matches(r, related);
            }
            return hit;
        }
        if let Record::CartHold { sale, .. } = record {
            return self.is_empty() || self.sale.as_deref() == Some(sale.as_str());
        }
        if let Some(want) = &self.order {
            // The order's records, and every record of the reservations they made (the engine's
            // own expiry of one names only the reservation).
            let held = |r: &Record| match r {
                Record::Reserved(r) => Some(r.id),
                Record::Extended { id, .. }
                | Record::Committed { id, .. }
                | Record::Released { id, .. }
                | Record::Expired { id, .. } => Some(*id),
                _ => None,
            };
            return match record {
                Record::Order(o) if o.order.to_string() == *want => {
                    related.insert(o.order.0.raw());
                    if let Some(id) = o.reservation.as_ref().and_then(held) {
                        related.insert(id.raw());
                    }
                    true
                }
                r => held(r).is_some_and(|id| related.contains(&id.raw())),
            };
        }
        // An order's step is judged by the reservation record it carries.
        let record = match record {
            Record::Order(o) => o.reservation.as_ref().unwrap_or(record),
            r => r,
        };
        let id = match record {
            Record::Order(o) => Some(o.order.0),
            Record::Reserved(r) => Some(r.id),
            Record::Extended { id, .. } | Record::Committed { id, .. } | Record::Released { id, .. } => {
                Some(*id)
            }
            Record::Expired { id, .. } => Some(*id),
            _ => None,
        };
        if let Some(want) = &self.reservation {
            if id.map(|i| i.to_string()).as_deref() != Some(want.as_str()) {
                return false;
            }
        }
        let by_reservation = |related: &mut std::collections::HashSet<u64>, hit: bool| {
            if hit {
                if let Some(id) = id {
                    related.insert(id.raw());
                }
            }
            hit || id.is_some_and(|id| related.contains(&id.raw()))
        };
        if let Some(sku) = &self.sku {
            let hit = match record {
                Record::StockSet { sku: s, .. } | Record::StockAdjusted { sku: s, .. } => s.as_str() == sku,
                Record::Reserved(r) => r.items.iter().any(|i| i.sku.as_str() == sku),
                _ => false,
            };
            if !by_reservation(related, hit) {
                return false;
            }
        }
        if let Some(user) = &self.user {
            let hit = match record {
                Record::Reserved(r) => r.user.as_ref().is_some_and(|u| u.as_str() == user),
                Record::QueueJoined { user: u, .. } => u.as_str() == user,
                _ => false,
            };
            if !by_reservation(related, hit) {
                return false;
            }
        }
        if let Some(sale) = &self.sale {
            let hit = match record {
                Record::SaleSet { sale: s, .. }
                | Record::SaleConfigured { sale: s, .. }
                | Record::QueueJoined { sale: s, .. }
                | Record::QueueOpened { sale: s, .. }
                | Record::QueueAdmitted { sale: s, .. } => s.as_str() == sale,
                Record::Reserved(r) => r.sale.as_ref().is_some_and(|s| s.as_str() == sale),
                _ => false,
            };
            if !by_reservation(related, hit) {
                return false;
            }
        }
        true
    }
}
