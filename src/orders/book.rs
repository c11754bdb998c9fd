//! The orders themselves: what each order is, its state machine, and the records that move it. The
//! book is changed only by `apply`, from records decided under the engine's rules (see `saga.rs`), so
//! the live path and replay share one code path and reproduce the same book.

use crate::engine::{IdempotencyKey, Record, ReservationId, SaleId, SkuId, UserId};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;

/// An order: `ord_` and the hex of the reservation it was placed with. It names its first reservation
/// for life, even when a late payment books it another.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(pub ReservationId);

impl OrderId {
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("ord_")?;
        ReservationId::parse(&format!("rsv_{hex}")).map(OrderId)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.text();
        write!(f, "ord_{}", &text[4..])
    }
}

impl fmt::Debug for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The provider said the payment failed or was cancelled.
    PaymentFailed,
    /// `pay_by` passed without an outcome.
    Expired,
    /// The checkout service cancelled it.
    Cancelled,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::PaymentFailed => "payment_failed",
            Cause::Expired => "expired",
            Cause::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    AwaitingPayment,
    /// The provider is processing or needs the customer's action: the hold was extended.
    PaymentPending,
    Paid,
    Cancelled(Cause),
    /// Paid after it was cancelled, and the units were gone: the money goes back.
    RefundDue,
    /// Paid with another amount or currency: never marked paid, kept for a person.
    PaymentMismatch,
}

impl OrderState {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::AwaitingPayment => "awaiting_payment",
            OrderState::PaymentPending => "payment_pending",
            OrderState::Paid => "paid",
            OrderState::Cancelled(_) => "cancelled",
            OrderState::RefundDue => "refund_due",
            OrderState::PaymentMismatch => "payment_mismatch",
        }
    }

    /// Why it was cancelled, as the API and the tools show it (`None` unless cancelled).
    pub fn cause(self) -> Option<&'static str> {
        match self {
            OrderState::Cancelled(c) => Some(c.as_str()),
            _ => None,
        }
    }

    /// Waiting for a payment's outcome: the server drives it to an end by `pay_by`.
    pub fn is_open(self) -> bool {
        matches!(self, OrderState::AwaitingPayment | OrderState::PaymentPending)
    }

    /// Needs a person (a refund, or money that does not match): never forgotten by the server.
    pub fn needs_person(self) -> bool {
        matches!(self, OrderState::RefundDue | OrderState::PaymentMismatch)
    }
}

/// One line of an order: a reservation item with its price in the currency's minor unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: SkuId,
    pub qty: u32,
    pub unit_price: u64,
}

/// What a placed order is, as its first record carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub user: UserId,
    pub lines: Vec<OrderLine>,
    /// Lower-case ISO 4217 code, as payment providers write it.
    pub currency: String,
    pub amount: u64,
    pub sale: Option<SaleId>,
    pub key: IdempotencyKey,
    pub fingerprint: u128,
}

/// A transition. With it, a record may carry the reservation's own record (`OrderRecord::reservation`)
/// that the transition made: the two are one record in the log, so neither happens without the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderStep {
    /// Carries the reservation's `Reserved`; `pay_by` is its deadline.
    Placed(Box<Placed>),
    PaymentAttached {
        provider_ref: String,
    },
    /// Carries the reservation's `Extended`, unless the hold was already at its bound.
    Pending,
    /// Carries the reservation's `Committed`.
    Paid,
    /// Carries the reservation's `Released` or `Expired`, or nothing when it had already ended.
    Cancelled(Cause),
    /// A success after cancellation found the units again: carries the new `Reserved`, which the
    /// next record (`Paid`) commits. Until then the order is paid with a commit owed.
    Rebooked,
    RefundDue,
    /// Carries the reservation's `Released` when it was still held.
    PaymentMismatch {
        amount: u64,
        currency: String,
    },
    /// A successful payment through another payment object than the order's: money the order does
    /// not need, kept for a person to refund. The order's state does not change.
    SurplusPayment {
        provider_ref: String,
        amount: u64,
        currency: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub order: OrderId,
    pub step: OrderStep,
    /// The reservation record this step made (`Reserved`, `Extended`, `Committed`, `Released`,
    /// `Expired`), applied to the engine before the step is applied to the book.
    pub reservation: Option<Record>,
    /// The payment event that caused it: remembered, so that it never has a second effect.
    pub event: Option<String>,
    pub at_ms: u64,
}

/// One entry of an order's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at_ms: u64,
    pub state: OrderState,
    /// What moved it: `placed`, `webhook`, `status_check`, `checkout`, `pay_by`, …
    pub cause: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub placed: Placed,
    /// The reservation now holding its units (another than the first after a rebooking).
    pub reservation: ReservationId,
    pub created_at_ms: u64,
    pub pay_by_ms: u64,
    pub provider_ref: Option<String>,
    pub state: OrderState,
    /// Paid by a rebooking whose reservation is not committed yet (the order tick commits it).
    pub commit_owed: bool,
    pub history: Vec<Transition>,
    /// When it reached a terminal state (0 while open).
    pub ended_at_ms: u64,
    /// A surplus payment came for it (see `OrderStep::SurplusPayment`; its history says which).
    pub needs_refund: bool,
}

impl Order {
    /// Waiting for a person: a refund or a mismatch to settle. Never forgotten by the server.
    pub fn needs_person(&self) -> bool {
        self.state.needs_person() || self.needs_refund
    }
}

/// A record that cannot follow the book it was applied to.
pub type BookError = String;

/// Every order, the keys they were placed with, and the payment events that had an effect.
#[derive(Default)]
pub struct Book {
    orders: HashMap<OrderId, Order, foldhash::fast::RandomState>,
    keys: HashMap<IdempotencyKey, OrderId, foldhash::fast::RandomState>,
    /// Reservations of orders, to the order: the reservation routes refuse to act on them.
    holds: HashMap<ReservationId, OrderId, foldhash::fast::RandomState>,
    /// Open orders by `pay_by`.
    due: BTreeSet<(u64, OrderId)>,
    /// Paid orders whose rebooked reservation is still to be committed.
    owed: BTreeSet<OrderId>,
    /// Ended orders by when they ended, to forget them after retention.
    ended: VecDeque<(u64, OrderId)>,
    events: Events,
}

/// Payment event ids that had an effect, as 128-bit hashes with the time they were seen: 16 bytes of
/// hash and 8 of time in the map (about 40 with its control bytes and spare room) and 24 more in the
/// age queue — 64 bytes an id. `EVENT_BYTES` is that figure, for the configured bound's memory.
#[derive(Default)]
struct Events {
    seen: HashMap<u128, u64, foldhash::fast::RandomState>,
    by_age: VecDeque<(u64, u128)>,
}

/// Memory one remembered event id costs (see `Events`).
pub const EVENT_BYTES: usize = 64;

pub fn event_hash(event: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event.as_bytes())
}

impl Book {
    pub fn get(&self, id: OrderId) -> Option<&Order> {
        self.orders.get(&id)
    }

    pub fn by_key(&self, key: &IdempotencyKey) -> Option<&Order> {
        self.keys.get(key).and_then(|id| self.orders.get(id))
    }

    /// The order holding `reservation`, if any.
    pub fn order_of(&self, reservation: ReservationId) -> Option<OrderId> {
        self.holds.get(&reservation).copied()
    }

    pub fn seen_event(&self, event: &str) -> bool {
        self.events.seen.contains_key(&event_hash(event))
    }

    pub fn events_remembered(&self) -> usize {
        self.events.seen.len()
    }

    /// Orders awaiting a payment's outcome.
    pub fn open_count(&self) -> usize {
        self.due.len()
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Open orders whose `pay_by` is at or before `now_ms`, oldest first, at most `max`.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<OrderId> {
        self.due.iter().take_while(|(at, _)| *at <= now_ms).take(max).map(|(_, id)| *id).collect()
    }

    /// Open orders whose `pay_by` falls before `until_ms`, with a provider reference: those the status
    /// fallback asks about.
    pub fn open_before(&self, until_ms: u64, max: usize) -> Vec<(OrderId, String, u64)> {
        let open = self.due.iter().take_while(|(at, _)| *at < until_ms);
        let with_ref = open.filter_map(|(at, id)| {
            self.orders.get(id).and_then(|o| o.provider_ref.clone().map(|r| (*id, r, *at)))
        });
        with_ref.take(max).collect()
    }

    pub fn owed(&self, max: usize) -> Vec<OrderId> {
        self.owed.iter().take(max).copied().collect()
    }

    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values()
    }

    /// Applies one step. The reservation's own record, if any, was applied to the engine already.
    pub fn apply(&mut self, r: &OrderRecord) -> Result<(), BookError> {
        if let Some(event) = &r.event {
            self.remember_event(event, r.at_ms);
        }
        if let OrderStep::Placed(placed) = &r.step {
            let Some(Record::Reserved(reserved)) = &r.reservation else {
                return Err(format!("{} placed without its reservation", r.order));
            };
            if reserved.id != r.order.0 || self.orders.contains_key(&r.order) {
                return Err(format!("{} placed twice or with another reservation", r.order));
            }
            let order = Order {
                id: r.order,
                placed: (**placed).clone(),
                reservation: reserved.id,
                created_at_ms: r.at_ms,
                pay_by_ms: reserved.expires_at_ms,
                provider_ref: None,
                state: OrderState::AwaitingPayment,
                commit_owed: false,
                history: vec![Transition {
                    at_ms: r.at_ms,
                    state: OrderState::AwaitingPayment,
                    cause: "placed",
                }],
                ended_at_ms: 0,
                needs_refund: false,
            };
            self.keys.insert(placed.key.clone(), r.order);
            self.holds.insert(reserved.id, r.order);
            self.due.insert((order.pay_by_ms, r.order));
            self.orders.insert(r.order, order);
            return Ok(());
        }
        let Some(order) = self.orders.get_mut(&r.order) else {
            return Err(format!("{} is not known", r.order));
        };
        let was_open = order.state.is_open();
        let cause = if r.event.is_some() { "webhook" } else { "status_check" };
        match &r.step {
            OrderStep::Placed(_) => unreachable!("handled above"),
            OrderStep::PaymentAttached { provider_ref } => {
                if order.provider_ref.as_ref().is_some_and(|p| p != provider_ref) {
                    return Err(format!("{} given a second provider reference", r.order));
                }
                order.provider_ref = Some(provider_ref.clone());
                return Ok(());
            }
            OrderStep::SurplusPayment { .. } => {
                let state = order.state;
                order.history.push(Transition { at_ms: r.at_ms, state, cause: "surplus_payment" });
                order.needs_refund = true;
                return Ok(());
            }
            OrderStep::Pending => {
                if !was_open {
                    return Err(format!("{} is {}, cannot be pending", r.order, order.state.as_str()));
                }
                if let Some(Record::Extended { expires_at_ms, .. }) = &r.reservation {
                    self.due.remove(&(order.pay_by_ms, r.order));
                    order.pay_by_ms = *expires_at_ms;
                    self.due.insert((order.pay_by_ms, r.order));
                }
                if order.state != OrderState::PaymentPending {
                    order.state = OrderState::PaymentPending;
                    order.history.push(Transition { at_ms: r.at_ms, state: order.state, cause });
                }
                return Ok(());
            }
            OrderStep::Paid => {
                let owed = order.commit_owed && order.state == OrderState::Paid;
                if !was_open && !owed {
                    return Err(format!("{} is {}, cannot be paid", r.order, order.state.as_str()));
                }
                order.commit_owed = false;
                self.owed.remove(&r.order);
                if owed {
                    return Ok(());
                }
                order.state = OrderState::Paid;
            }
            OrderStep::Cancelled(c) => {
                if !was_open {
                    return Err(format!("{} is {}, cannot be cancelled", r.order, order.state.as_str()));
                }
                order.state = OrderState::Cancelled(*c);
            }
            OrderStep::Rebooked => {
                let Some(Record::Reserved(reserved)) = &r.reservation else {
                    return Err(format!("{} rebooked without a reservation", r.order));
                };
                if !matches!(order.state, OrderState::Cancelled(_)) {
                    return Err(format!("{} is {}, cannot be rebooked", r.order, order.state.as_str()));
                }
                order.reservation = reserved.id;
                self.holds.insert(reserved.id, r.order);
                order.state = OrderState::Paid;
                order.commit_owed = true;
                self.owed.insert(r.order);
            }
            OrderStep::RefundDue if order.commit_owed => {
                // A rebooked hold that lapsed before its commit.
                order.commit_owed = false;
                self.owed.remove(&r.order);
                order.state = OrderState::RefundDue;
            }
            OrderStep::RefundDue => {
                if !matches!(order.state, OrderState::Cancelled(_)) {
                    return Err(format!("{} is {}, cannot owe a refund", r.order, order.state.as_str()));
                }
                order.state = OrderState::RefundDue;
            }
            OrderStep::PaymentMismatch { .. } => {
                if !was_open && !matches!(order.state, OrderState::Cancelled(_)) {
                    return Err(format!("{} is {}, cannot mismatch", r.order, order.state.as_str()));
                }
                order.state = OrderState::PaymentMismatch;
            }
        }
        let cause = match &r.step {
            OrderStep::Cancelled(Cause::Expired) => "pay_by",
            OrderStep::Cancelled(Cause::Cancelled) => "checkout",
            OrderStep::Rebooked => "late_payment",
            _ => cause,
        };
        order.history.push(Transition { at_ms: r.at_ms, state: order.state, cause });
        if was_open {
            self.due.remove(&(order.pay_by_ms, r.order));
        }
        if !order.state.is_open() {
            order.ended_at_ms = r.at_ms;
            self.ended.push_back((r.at_ms, r.order));
        }
        Ok(())
    }

    fn remember_event(&mut self, event: &str, at_ms: u64) {
        let hash = event_hash(event);
        // Seen again (past its retention, on a book that has not forgotten it yet, as replay's):
        // it is remembered from the new time; the older queue entry is stale and skipped.
        if self.events.seen.insert(hash, at_ms) != Some(at_ms) {
            self.events.by_age.push_back((at_ms, hash));
        }
    }

    /// Forgets event ids older than `event_retention_ms` and ended orders older than
    /// `order_retention_ms` (never one that needs a person). What remains is a function of the records
    /// and `now_ms`, so that replay and snapshots agree.
    pub fn forget(&mut self, now_ms: u64, event_retention_ms: u64, order_retention_ms: u64) {
        while let Some(&(at, hash)) = self.events.by_age.front() {
            if at.saturating_add(event_retention_ms) > now_ms {
                break;
            }
            self.events.by_age.pop_front();
            if self.events.seen.get(&hash) == Some(&at) {
                self.events.seen.remove(&hash);
            }
        }
        while let Some(&(at, id)) = self.ended.front() {
            if at.saturating_add(order_retention_ms) > now_ms {
                break;
            }
            self.ended.pop_front();
            let Some(order) = self.orders.get(&id) else { continue };
            if order.ended_at_ms != at || order.needs_person() || order.state.is_open() {
                continue;
            }
            let order = self.orders.remove(&id).expect("found above");
            // Replay does not forget: its book may hold this order past its age, and then a newer
            // one placed with the same key, whose key this must not take away.
            if self.keys.get(&order.placed.key) == Some(&id) {
                self.keys.remove(&order.placed.key);
            }
            self.holds.remove(&order.id.0);
            self.holds.remove(&order.reservation);
        }
    }

    /// Every order and remembered event (hash, time), for a snapshot.
    pub fn export(&self) -> (Vec<Order>, Vec<(u128, u64)>) {
        let mut orders: Vec<Order> = self.orders.values().cloned().collect();
        orders.sort_by_key(|o| o.id);
        let current = |&&(at, hash): &&(u64, u128)| self.events.seen.get(&hash) == Some(&at);
        let mut events: Vec<(u128, u64)> =
            self.events.by_age.iter().filter(current).map(|&(at, hash)| (hash, at)).collect();
        // Canonical, as `restore` rebuilds it (by time, then hash): events seen in the same
        // millisecond are queued in arrival order, which a restored book cannot know.
        events.sort_unstable_by_key(|&(hash, at)| (at, hash));
        (orders, events)
    }

    /// A book holding a snapshot's orders and events (in the order `export` gave them).
    pub fn restore(orders: &[Order], events: &[(u128, u64)]) -> Result<Book, BookError> {
        let mut book = Book::default();
        for order in orders {
            if book.orders.contains_key(&order.id) || book.keys.contains_key(&order.placed.key) {
                return Err(format!("{} appears twice", order.id));
            }
            book.keys.insert(order.placed.key.clone(), order.id);
            book.holds.insert(order.id.0, order.id);
            book.holds.insert(order.reservation, order.id);
            if order.state.is_open() {
                book.due.insert((order.pay_by_ms, order.id));
            } else {
                book.ended.push_back((order.ended_at_ms, order.id));
            }
            if order.commit_owed {
                book.owed.insert(order.id);
            }
            book.orders.insert(order.id, order.clone());
        }
        book.ended.make_contiguous().sort_unstable();
        for &(hash, at) in events {
            book.events.seen.insert(hash, at);
            book.events.by_age.push_back((at, hash));
        }
        book.events.by_age.make_contiguous().sort_unstable();
        Ok(book)
    }
}
