//! Orders in the log and in snapshots: their own schema beside the engine's (see the parent module).

use super::{bad, id, reserved_from, to_log, DecodeError, Invalid, LogRecord, LogReserved};
use crate::engine::{IdempotencyKey, Record, ReservationId, SaleId, SkuId, UserId};
use crate::orders::{
    Cause, Order, OrderId, OrderLine, OrderRecord, OrderState, OrderStep, Placed, Transition,
};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub(super) struct LogOrder {
    order: u64,
    /// `STEPS`' index.
    step: u8,
    /// For `Cancelled`: `cause_code`.
    cause: u8,
    placed: Option<LogPlaced>,
    /// `PaymentAttached`'s and `SurplusPayment`'s reference; `PaymentMismatch`'s currency.
    text: Option<String>,
    /// `PaymentMismatch`'s and `SurplusPayment`'s amount.
    amount: u64,
    reservation: Option<LogHold>,
    event: Option<String>,
    at_ms: u64,
    /// `SurplusPayment`'s currency.
    currency: Option<String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
pub(super) struct LogPlaced {
    user: String,
    lines: Vec<LogLine>,
    currency: String,
    amount: u64,
    sale: Option<String>,
    key: String,
    fingerprint: u128,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
struct LogLine {
    sku: String,
    qty: u32,
    unit_price: u64,
}

/// The reservation record an order step carries: the kinds an order makes (and a cart's holds).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub(super) enum LogHold {
    Reserved(LogReserved),
    Extended { id: u64, expires_at_ms: u64, at_ms: u64 },
    Committed { id: u64, at_ms: u64 },
    Released { id: u64, at_ms: u64 },
    Expired { id: u64, at_ms: u64 },
}

const STEPS: [&str; 9] = [
    "placed",
    "payment_attached",
    "pending",
    "paid",
    "cancelled",
    "rebooked",
    "refund_due",
    "payment_mismatch",
    "surplus_payment",
];

fn cause_code(c: Cause) -> u8 {
    match c {
        Cause::PaymentFailed => 0,
        Cause::Expired => 1,
        Cause::Cancelled => 2,
    }
}

fn cause(code: u8) -> Result<Cause, Invalid> {
    Ok(match code {
        0 => Cause::PaymentFailed,
        1 => Cause::Expired,
        2 => Cause::Cancelled,
        other => return Err(Invalid::Code("order cause", other)),
    })
}

fn log_placed(p: &Placed) -> LogPlaced {
    LogPlaced {
        user: p.user.to_string(),
        lines: (p.lines.iter())
            .map(|l| LogLine { sku: l.sku.to_string(), qty: l.qty, unit_price: l.unit_price })
            .collect(),
        currency: p.currency.clone(),
        amount: p.amount,
        sale: p.sale.as_ref().map(|s| s.to_string()),
        key: p.key.to_string(),
        fingerprint: p.fingerprint,
    }
}

fn placed(p: &ArchivedLogPlaced) -> Result<Placed, Invalid> {
    let lines = p.lines.iter().map(|l| {
        Ok(OrderLine {
            sku: SkuId::new(&l.sku)?,
            qty: l.qty.to_native(),
            unit_price: l.unit_price.to_native(),
        })
    });
    if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(Invalid::Code("currency length", p.currency.len() as u8));
    }
    Ok(Placed {
        user: UserId::new(&p.user)?,
        lines: lines.collect::<Result<_, Invalid>>()?,
        currency: p.currency.to_string(),
        amount: p.amount.to_native(),
        sale: p.sale.as_ref().map(|s| SaleId::new(s)).transpose()?,
        key: IdempotencyKey::new(&p.key)?,
        fingerprint: p.fingerprint.to_native(),
    })
}

pub(super) fn to_log_order(r: &OrderRecord) -> LogOrder {
    let (mut placed, mut text, mut amount, mut cause, mut currency) = (None, None, 0, 0, None);
    let step = match &r.step {
        OrderStep::Placed(p) => {
            placed = Some(log_placed(p));
            0
        }
        OrderStep::PaymentAttached { provider_ref } => {
            text = Some(provider_ref.clone());
            1
        }
        OrderStep::Pending => 2,
        OrderStep::Paid => 3,
        OrderStep::Cancelled(c) => {
            cause = cause_code(*c);
            4
        }
        OrderStep::Rebooked => 5,
        OrderStep::RefundDue => 6,
        OrderStep::PaymentMismatch { amount: a, currency } => {
            (amount, text) = (*a, Some(currency.clone()));
            7
        }
        OrderStep::SurplusPayment { provider_ref, amount: a, currency: c } => {
            (amount, text, currency) = (*a, Some(provider_ref.clone()), Some(c.clone()));
            8
        }
    };
    let reservation = r.reservation.as_ref().map(log_hold);
    LogOrder {
        order: r.order.0.raw(),
        step,
        cause,
        placed,
        text,
        amount,
        reservation,
        event: r.event.clone(),
        at_ms: r.at_ms,
        currency,
    }
}

/// A reservation's record, as an order step or a cart step carries it.
pub(super) fn log_hold(record: &Record) -> LogHold {
    match to_log(record) {
        LogRecord::Reserved(r) => LogHold::Reserved(r),
        LogRecord::Extended { id, expires_at_ms, at_ms } => LogHold::Extended { id, expires_at_ms, at_ms },
        LogRecord::Committed { id, at_ms } => LogHold::Committed { id, at_ms },
        LogRecord::Released { id, at_ms } => LogHold::Released { id, at_ms },
        LogRecord::Expired { id, at_ms } => LogHold::Expired { id, at_ms },
        other => unreachable!("a reservation's record, not {other:?}"),
    }
}

/// The reservation's record back, its id given `tag`.
pub(super) fn hold_from(h: &ArchivedLogHold, tag: u64) -> Result<Record, Invalid> {
    Ok(match h {
        ArchivedLogHold::Reserved(r) => Record::Reserved(reserved_from(r, tag)?),
        ArchivedLogHold::Extended { id: raw, expires_at_ms, at_ms } => Record::Extended {
            id: id(raw, tag)?,
            expires_at_ms: expires_at_ms.to_native(),
            at_ms: at_ms.to_native(),
        },
        ArchivedLogHold::Committed { id: raw, at_ms } => {
            Record::Committed { id: id(raw, tag)?, at_ms: at_ms.to_native() }
        }
        ArchivedLogHold::Released { id: raw, at_ms } => {
            Record::Released { id: id(raw, tag)?, at_ms: at_ms.to_native() }
        }
        ArchivedLogHold::Expired { id: raw, at_ms } => {
            Record::Expired { id: id(raw, tag)?, at_ms: at_ms.to_native() }
        }
    })
}

/// `tags`: the tag of the reservation the step carries, and the order's (see `tags` in the parent).
pub(super) fn from_archived_order(o: &ArchivedLogOrder, tags: [u64; 2]) -> Result<OrderRecord, Invalid> {
    let text = || o.text.as_ref().map(|t| t.to_string()).ok_or(Invalid::Code("order step text", o.step));
    let step = match o.step {
        0 => OrderStep::Placed(Box::new(placed(
            o.placed.as_ref().ok_or(Invalid::Code("order step without placement", 0))?,
        )?)),
        1 => OrderStep::PaymentAttached { provider_ref: text()? },
        2 => OrderStep::Pending,
        3 => OrderStep::Paid,
        4 => OrderStep::Cancelled(cause(o.cause)?),
        5 => OrderStep::Rebooked,
        6 => OrderStep::RefundDue,
        7 => OrderStep::PaymentMismatch { amount: o.amount.to_native(), currency: text()? },
        8 => OrderStep::SurplusPayment {
            provider_ref: text()?,
            amount: o.amount.to_native(),
            currency: o
                .currency
                .as_ref()
                .map(|c| c.to_string())
                .ok_or(Invalid::Code("surplus currency", 8))?,
        },
        other => return Err(Invalid::Code("order step", other)),
    };
    let reservation = o.reservation.as_ref().map(|h| hold_from(h, tags[0])).transpose()?;
    Ok(OrderRecord {
        order: OrderId(id(&o.order, tags[1])?),
        step,
        reservation,
        event: o.event.as_ref().map(|e| e.to_string()),
        at_ms: o.at_ms.to_native(),
    })
}

// Snapshots.

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct SnapOrders {
    orders: Vec<SnapOrder>,
    /// Payment event ids remembered: hash and when seen, oldest first.
    events: Vec<(u128, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapOrder {
    id: u64,
    placed: LogPlaced,
    reservation: u64,
    created_at_ms: u64,
    pay_by_ms: u64,
    provider_ref: Option<String>,
    state: u8,
    commit_owed: bool,
    /// Time, state code, cause (`CAUSES`' index).
    history: Vec<(u64, u8, u8)>,
    ended_at_ms: u64,
    needs_refund: bool,
}

const CAUSES: [&str; 8] =
    ["placed", "webhook", "status_check", "pay_by", "checkout", "late_payment", "server", "surplus_payment"];

/// 0–2 open and paid, 3–5 cancelled by `cause_code`, 6 refund due, 7 mismatch.
fn state_code(s: OrderState) -> u8 {
    match s {
        OrderState::AwaitingPayment => 0,
        OrderState::PaymentPending => 1,
        OrderState::Paid => 2,
        OrderState::Cancelled(c) => 3 + cause_code(c),
        OrderState::RefundDue => 6,
        OrderState::PaymentMismatch => 7,
    }
}

fn state_of(code: u8) -> Result<OrderState, DecodeError> {
    Ok(match code {
        0 => OrderState::AwaitingPayment,
        1 => OrderState::PaymentPending,
        2 => OrderState::Paid,
        3..=5 => OrderState::Cancelled(cause(code - 3).map_err(|_| bad("order cause"))?),
        6 => OrderState::RefundDue,
        7 => OrderState::PaymentMismatch,
        other => return Err(bad(format_args!("order state {other}"))),
    })
}

pub(super) fn snap_orders(orders: &[Order], events: &[(u128, u64)]) -> SnapOrders {
    let orders = orders
        .iter()
        .map(|o| SnapOrder {
            id: o.id.0.raw(),
            placed: log_placed(&o.placed),
            reservation: o.reservation.raw(),
            created_at_ms: o.created_at_ms,
            pay_by_ms: o.pay_by_ms,
            provider_ref: o.provider_ref.clone(),
            state: state_code(o.state),
            commit_owed: o.commit_owed,
            history: (o.history.iter())
                .map(|t| {
                    let cause = CAUSES.iter().position(|c| *c == t.cause).unwrap_or(6 /* server */);
                    (t.at_ms, state_code(t.state), cause as u8)
                })
                .collect(),
            ended_at_ms: o.ended_at_ms,
            needs_refund: o.needs_refund,
        })
        .collect();
    SnapOrders { orders, events: events.to_vec() }
}

pub(super) type Orders = (Vec<Order>, Vec<(u128, u64)>);

pub(super) fn orders_from(s: &ArchivedSnapOrders) -> Result<Orders, DecodeError> {
    let invalid = |e: Invalid| match e {
        Invalid::Name(e) => bad(e),
        Invalid::Id(raw) => bad(format_args!("id {raw:#x}")),
        Invalid::Code(what, code) => bad(format_args!("{what} code {code} is not valid")),
    };
    let rid = |raw: &rkyv::rend::u64_le| {
        ReservationId::from_parts(raw.to_native(), 0).ok_or_else(|| bad("invalid reservation id"))
    };
    let mut orders = Vec::with_capacity(s.orders.len());
    for o in s.orders.iter() {
        let history = (o.history.iter())
            .map(|t| {
                let cause = CAUSES.get(usize::from(t.2)).ok_or_else(|| bad("history cause"))?;
                Ok(Transition { at_ms: t.0.to_native(), state: state_of(t.1)?, cause })
            })
            .collect::<Result<_, DecodeError>>()?;
        orders.push(Order {
            id: OrderId(rid(&o.id)?),
            placed: placed(&o.placed).map_err(invalid)?,
            reservation: rid(&o.reservation)?,
            created_at_ms: o.created_at_ms.to_native(),
            pay_by_ms: o.pay_by_ms.to_native(),
            provider_ref: o.provider_ref.as_ref().map(|r| r.to_string()),
            state: state_of(o.state)?,
            commit_owed: o.commit_owed,
            history,
            ended_at_ms: o.ended_at_ms.to_native(),
            needs_refund: o.needs_refund,
        });
    }
    let events = s.events.iter().map(|e| (e.0.to_native(), e.1.to_native())).collect();
    Ok((orders, events))
}

/// The name of a step, for the log tools.
pub fn step_name(step: &OrderStep) -> &'static str {
    STEPS[usize::from(to_log_order_step_code(step))]
}

fn to_log_order_step_code(step: &OrderStep) -> u8 {
    match step {
        OrderStep::Placed(_) => 0,
        OrderStep::PaymentAttached { .. } => 1,
        OrderStep::Pending => 2,
        OrderStep::Paid => 3,
        OrderStep::Cancelled(_) => 4,
        OrderStep::Rebooked => 5,
        OrderStep::RefundDue => 6,
        OrderStep::PaymentMismatch { .. } => 7,
        OrderStep::SurplusPayment { .. } => 8,
    }
}
