//! Property test of the checkout saga: random sequences of orders, payment references, cancels and
//! payment events (each event kept in a pool and delivered again at random: duplicated, reordered,
//! late, with a wrong amount or currency, for another payment object) on a moving clock with the
//! server's timers, run against the engine and against a plain reference model, compared after every
//! step. Then the records are checked for what must never happen (an order paid twice, an event with
//! two effects, a payment without its commit), survive the log codec, and rebuild the same state by
//! replay and from a snapshot taken midway.

use holdfast::durable::codec;
use holdfast::engine::*;
use holdfast::orders::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const SKUS: [&str; 3] = ["a", "b", "c"];
const USERS: [&str; 3] = ["u1", "u2", "u3"];
const REFS: [&str; 2] = ["pi_1", "pi_2"];
const CURRENCIES: [&str; 2] = ["usd", "eur"];
/// The server's timer runs at least this often (the model's clock never goes longer without one).
const TICK_MS_MAX: u64 = 20_000;
/// Orders the timer ends per call: more than a run ever holds, so one tick ends every due order.
const TICK_MAX: usize = 10_000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn config(shards: usize) -> EngineConfig {
    EngineConfig {
        shards,
        ttl_ms_min: 1_000,
        ttl_ms_max: 20_000,
        hold_ms_max: 40_000,
        ended_retention_ms: 50_000,
        pending_extension_ms: 8_000,
        payment_event_retention_ms: 3 * DAY_MS,
        ..EngineConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    SetStock {
        sku: usize,
        on_hand: u64,
    },
    Place {
        user: usize,
        lines: Vec<(usize, u32)>,
        price: u64,
        currency: usize,
        ttl_ms: u64,
        key: u8,
    },
    Attach {
        pick: usize,
        provider_ref: usize,
    },
    Cancel {
        pick: usize,
    },
    /// A new payment event, put in the pool and delivered.
    Event {
        pick: usize,
        status: PaymentStatus,
        provider_ref: usize,
        amount: Skew,
        currency: Skew,
    },
    /// An event of the pool delivered again (a provider's retry, or one overtaken by later ones).
    Redeliver {
        pick: usize,
    },
    /// The status fallback's answer (no event id).
    StatusCheck {
        pick: usize,
        status: PaymentStatus,
        provider_ref: usize,
    },
    Advance {
        ms: u64,
    },
    /// The server's timer: orders first, then the engine's expiry `jitter_ms` later (its clock moved).
    Tick {
        jitter_ms: u64,
    },
}

/// How an event's amount or currency relates to the order's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skew {
    Same,
    /// The same currency in upper case (providers' case must not matter).
    Upper,
    Other,
}

fn status() -> impl Strategy<Value = PaymentStatus> {
    prop_oneof![
        4 => Just(PaymentStatus::Succeeded),
        2 => Just(PaymentStatus::Failed),
        2 => Just(PaymentStatus::Pending),
        1 => Just(PaymentStatus::Canceled),
    ]
}

fn skew() -> impl Strategy<Value = Skew> {
    prop_oneof![12 => Just(Skew::Same), 2 => Just(Skew::Upper), 1 => Just(Skew::Other)]
}

fn ttl() -> impl Strategy<Value = u64> {
    prop_oneof![8 => (1u64..=20).prop_map(|s| s * 1_000), 2 => 1_000u64..=20_000, 1 => Just(0u64)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..SKUS.len(), 0u64..6).prop_map(|(sku, on_hand)| Op::SetStock { sku, on_hand }),
        6 => (
            0..USERS.len(),
            prop::collection::vec((0..SKUS.len(), 1u32..3), 1..3),
            1u64..500,
            0..CURRENCIES.len(),
            ttl(),
            0u8..16,
        )
            .prop_map(|(user, mut lines, price, currency, ttl_ms, key)| {
                let mut seen = BTreeSet::new();
                lines.retain(|(sku, _)| seen.insert(*sku));
                Op::Place { user, lines, price, currency, ttl_ms, key }
            }),
        3 => (any::<usize>(), 0..REFS.len()).prop_map(|(pick, provider_ref)| Op::Attach { pick, provider_ref }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        6 => (any::<usize>(), status(), 0..REFS.len(), skew(), skew()).prop_map(
            |(pick, status, provider_ref, amount, currency)| Op::Event { pick, status, provider_ref, amount, currency }
        ),
        6 => any::<usize>().prop_map(|pick| Op::Redeliver { pick }),
        1 => (any::<usize>(), status(), 0..REFS.len())
            .prop_map(|(pick, status, provider_ref)| Op::StatusCheck { pick, status, provider_ref }),
        4 => prop_oneof![
            20 => (0u64..8).prop_map(|s| s * 1_000),
            5 => 0u64..8_000,
            1 => Just(3 * DAY_MS + 1),
        ]
        .prop_map(|ms| Op::Advance { ms }),
        3 => prop_oneof![3 => Just(0u64), 1 => 1u64..2_000].prop_map(|jitter_ms| Op::Tick { jitter_ms }),
    ]
}

/// A payment event as the provider sent it.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    order: OrderId,
    status: PaymentStatus,
    provider_ref: &'static str,
    amount: u64,
    currency: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct MStock {
    on_hand: u64,
    available: u64,
    reserved: u64,
    sold: u64,
}

#[derive(Debug, Clone)]
struct MRes {
    lines: Vec<(usize, u32)>,
    created: u64,
    expires: u64,
    state: ReservationState,
    ended: u64,
}

#[derive(Debug, Clone)]
struct MOrder {
    req: OrderRequest,
    lines: Vec<(usize, u32)>,
    amount: u64,
    state: OrderState,
    pay_by: u64,
    provider_ref: Option<String>,
    res: ReservationId,
    ended_at: u64,
}

/// What an extend did to a hold.
enum Extend {
    /// Found past its deadline: expired now (a record).
    Expired,
    Moved(u64),
    /// At its bound already: no record.
    Unchanged,
    /// Not active (expired before, or forgotten): no record.
    Gone,
}

/// The reference: the saga's rules written out plainly over ordered maps. Reservations are kept
/// here too, since an order's fate depends on whether its hold ran out.
struct Model {
    cfg: EngineConfig,
    stock: [MStock; SKUS.len()],
    res: BTreeMap<ReservationId, MRes>,
    orders: BTreeMap<OrderId, MOrder>,
    keys: BTreeMap<String, OrderId>,
    /// Event id → when it first had an effect.
    events: BTreeMap<String, u64>,
    /// Orders a surplus payment came for: kept for a person.
    surplus: std::collections::BTreeSet<OrderId>,
}

impl Model {
    fn live(&self, id: ReservationId, now: u64) -> Result<&MRes, ReservationError> {
        let r = self.res.get(&id).ok_or(ReservationError::NotFound)?;
        if r.state != ReservationState::Active && r.ended + self.cfg.ended_retention_ms <= now {
            return Err(ReservationError::NotFound);
        }
        match r.state {
            ReservationState::Active => Ok(r),
            ReservationState::Committed => Err(ReservationError::Committed),
            ReservationState::Released => Err(ReservationError::Released),
            ReservationState::Expired => Err(ReservationError::Expired),
        }
    }

    fn end(&mut self, id: ReservationId, to: ReservationState, now: u64) {
        let r = self.res.get_mut(&id).expect("known");
        assert_eq!(r.state, ReservationState::Active);
        r.state = to;
        r.ended = now;
        for &(sku, qty) in &r.lines {
            let s = &mut self.stock[sku];
            s.reserved -= u64::from(qty);
            if to == ReservationState::Committed {
                s.sold += u64::from(qty);
            } else {
                s.available += u64::from(qty);
            }
        }
    }

    /// Commits or releases an order's hold as the engine does: past its deadline it expires instead.
    /// Ok: what the hold became now (a record was made); Err: nothing was made.
    fn finish(
        &mut self,
        id: ReservationId,
        to: ReservationState,
        now: u64,
    ) -> Result<ReservationState, ReservationError> {
        let expires = self.live(id, now)?.expires;
        let to = if now >= expires { ReservationState::Expired } else { to };
        self.end(id, to, now);
        Ok(to)
    }

    fn extend(&mut self, id: ReservationId, ttl_ms: u64, now: u64) -> Extend {
        let (expires, created) = match self.live(id, now) {
            Ok(r) => (r.expires, r.created),
            Err(_) => return Extend::Gone,
        };
        if now >= expires {
            self.end(id, ReservationState::Expired, now);
            return Extend::Expired;
        }
        let new = (now + ttl_ms).min(created + self.cfg.hold_ms_max).max(expires);
        if new == expires {
            return Extend::Unchanged;
        }
        self.res.get_mut(&id).expect("live").expires = new;
        Extend::Moved(new)
    }

    fn can_reserve(&self, lines: &[(usize, u32)]) -> Result<(), ReserveError> {
        match lines.iter().position(|&(sku, qty)| self.stock[sku].available < u64::from(qty)) {
            Some(item) => {
                Err(ReserveError::InsufficientStock { item, available: self.stock[lines[item].0].available })
            }
            None => Ok(()),
        }
    }

    fn reserve(&mut self, id: ReservationId, lines: &[(usize, u32)], ttl_ms: u64, now: u64) {
        for &(sku, qty) in lines {
            let s = &mut self.stock[sku];
            s.available -= u64::from(qty);
            s.reserved += u64::from(qty);
        }
        let r = MRes {
            lines: lines.to_vec(),
            created: now,
            expires: now + ttl_ms,
            state: ReservationState::Active,
            ended: 0,
        };
        assert!(self.res.insert(id, r).is_none(), "engine issued {id} twice");
    }

    fn close(&mut self, id: OrderId, state: OrderState, now: u64) {
        let o = self.orders.get_mut(&id).expect("known");
        o.state = state;
        o.ended_at = now;
    }

    /// Releases an open order's hold and ends it as `cause` says (or as expired, if the hold ran out).
    fn end_hold(&mut self, id: OrderId, cause: Cause, now: u64) {
        let res = self.orders[&id].res;
        let cause = match self.finish(res, ReservationState::Released, now) {
            Ok(ReservationState::Expired) | Err(ReservationError::Expired) => Cause::Expired,
            _ => cause,
        };
        self.close(id, OrderState::Cancelled(cause), now);
    }

    /// A success: commit an open order's hold; past its deadline, or for a cancelled order, book the
    /// lines again (`rebooked` is the reservation the engine made for that) or owe a refund.
    fn settle_paid(&mut self, id: OrderId, now: u64, rebooked: Option<ReservationId>) {
        if self.orders[&id].state.is_open() {
            let res = self.orders[&id].res;
            if self.finish(res, ReservationState::Committed, now) == Ok(ReservationState::Committed) {
                self.close(id, OrderState::Paid, now);
                return;
            }
            self.close(id, OrderState::Cancelled(Cause::Expired), now);
        }
        let lines = self.orders[&id].lines.clone();
        if self.can_reserve(&lines).is_err() {
            self.close(id, OrderState::RefundDue, now);
            return;
        }
        let new = rebooked.expect("the model expects a rebooking, the engine made none");
        self.reserve(new, &lines, self.cfg.ttl_ms_max, now);
        self.end(new, ReservationState::Committed, now);
        self.orders.get_mut(&id).expect("known").res = new;
        self.close(id, OrderState::Paid, now);
    }

    /// Returns whether the event (if any) is remembered: whether a record carried it.
    fn pending(&mut self, id: OrderId, now: u64, has_event: bool) -> bool {
        let res = self.orders[&id].res;
        match self.extend(res, self.cfg.pending_extension_ms, now) {
            Extend::Expired => {
                self.close(id, OrderState::Cancelled(Cause::Expired), now);
                true
            }
            Extend::Moved(to) => {
                let o = self.orders.get_mut(&id).expect("known");
                o.pay_by = to;
                o.state = OrderState::PaymentPending;
                true
            }
            Extend::Unchanged => {
                let o = self.orders.get_mut(&id).expect("known");
                // Logged (the event remembered) when it moves the state or carries an event.
                let moved = o.state == OrderState::AwaitingPayment;
                o.state = OrderState::PaymentPending;
                moved || has_event
            }
            Extend::Gone => {
                self.close(id, OrderState::Cancelled(Cause::Expired), now);
                false
            }
        }
    }

    fn outcome(
        &mut self,
        e: &Event,
        event: Option<&str>,
        now: u64,
        rebooked: Option<ReservationId>,
    ) -> Result<Effect, OrderError> {
        self.forget(now);
        if event.is_some_and(|id| self.events.contains_key(id)) {
            return Ok(Effect::Duplicate);
        }
        let o = self.orders.get(&e.order).ok_or(OrderError::NotFound)?;
        let (res, amount, currency) = (o.res, o.amount, o.req.currency.clone());
        if o.provider_ref.as_deref().is_some_and(|r| r != e.provider_ref) {
            // Another payment object's success is a surplus, recorded for a refund.
            if e.status != PaymentStatus::Succeeded || event.is_none() {
                return Ok(Effect::Ignored);
            }
            self.surplus.insert(e.order);
            self.events.insert(event.expect("checked").to_owned(), now);
            return Ok(Effect::Surplus);
        }
        let state = o.state;
        let acts = match e.status {
            PaymentStatus::Succeeded => state.is_open() || matches!(state, OrderState::Cancelled(_)),
            _ => state.is_open(),
        };
        if !acts {
            return Ok(Effect::Ignored);
        }
        // A success names the payment that paid.
        if e.status == PaymentStatus::Succeeded {
            let o = self.orders.get_mut(&e.order).expect("found above");
            o.provider_ref.get_or_insert_with(|| e.provider_ref.to_string());
        }
        let matches = e.amount == amount && e.currency.eq_ignore_ascii_case(&currency);
        let remembered = match e.status {
            PaymentStatus::Succeeded if !matches => {
                if state.is_open() {
                    let _ = self.finish(res, ReservationState::Released, now);
                }
                self.close(e.order, OrderState::PaymentMismatch, now);
                true
            }
            PaymentStatus::Succeeded => {
                self.settle_paid(e.order, now, rebooked);
                true
            }
            PaymentStatus::Failed | PaymentStatus::Canceled => {
                self.end_hold(e.order, Cause::PaymentFailed, now);
                true
            }
            PaymentStatus::Pending => self.pending(e.order, now, event.is_some()),
        };
        if let (Some(id), true) = (event, remembered) {
            self.events.insert(id.to_owned(), now);
        }
        Ok(Effect::Moved(self.orders[&e.order].state))
    }

    /// The order timer: every open order past `pay_by` ends as expired; then what aged out is forgotten.
    fn tick(&mut self, now: u64) {
        let mut due: Vec<(u64, OrderId)> = self
            .orders
            .iter()
            .filter(|(_, o)| o.state.is_open() && o.pay_by <= now)
            .map(|(id, o)| (o.pay_by, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            self.end_hold(id, Cause::Expired, now);
        }
        self.forget(now);
    }

    /// What aged out by `now` is gone: event ids past their retention, and ended orders past theirs
    /// (never one that needs a person) with their keys. Every order operation sees the book so.
    fn forget(&mut self, now: u64) {
        let retention = self.cfg.payment_event_retention_ms;
        self.events.retain(|_, at| *at + retention > now);
        let retention = self.cfg.order_retention_ms();
        let gone: Vec<OrderId> = (self.orders.iter())
            .filter(|(id, o)| {
                !o.state.is_open()
                    && !o.state.needs_person()
                    && !self.surplus.contains(id)
                    && o.ended_at + retention <= now
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let o = self.orders.remove(&id).expect("listed");
            self.keys.remove(o.req.key.as_str());
        }
    }

    fn expire_due(&mut self, now: u64) -> Vec<ReservationId> {
        let due: Vec<ReservationId> = (self.res.iter())
            .filter(|(_, r)| r.state == ReservationState::Active && r.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.end(*id, ReservationState::Expired, now);
        }
        due
    }
}

fn sku(i: usize) -> SkuId {
    SkuId::new(SKUS[i]).expect("valid")
}

/// The engine and the model agree on every order, every hold of an order, and every SKU.
fn check_same(engine: &Engine, model: &Model, pool: &[Event], now: u64) -> Result<(), TestCaseError> {
    let book = engine.orders().lock();
    prop_assert_eq!(book.len(), model.orders.len(), "orders held");
    for (id, m) in &model.orders {
        let o = book.get(*id).ok_or_else(|| TestCaseError::fail(format!("{id} lost")))?;
        prop_assert_eq!(o.state, m.state, "state of {}", id);
        prop_assert_eq!(o.reservation, m.res, "hold of {}", id);
        prop_assert_eq!(o.pay_by_ms, m.pay_by, "pay_by of {}", id);
        prop_assert_eq!(&o.provider_ref, &m.provider_ref, "provider_ref of {}", id);
        prop_assert_eq!(o.placed.amount, m.amount);
        prop_assert!(!o.commit_owed, "{} owes a commit outside a rebooking", id);
        let view = engine.reservation(o.reservation, now).map(|v| v.state);
        let r = &model.res[&m.res];
        let expected = (r.state == ReservationState::Active || r.ended + model.cfg.ended_retention_ms > now)
            .then_some(r.state);
        prop_assert_eq!(view, expected, "hold {} of {}", o.reservation, id);
        if o.state.is_open() {
            prop_assert_eq!(r.expires, o.pay_by_ms, "{}'s deadline and its hold's", id);
        }
        // Paid means sold: the hold it was paid with is committed, never merely active.
        if o.state == OrderState::Paid {
            prop_assert_eq!(
                r.state,
                ReservationState::Committed,
                "{} is paid with hold {}",
                id,
                o.reservation
            );
        }
    }
    for e in pool {
        prop_assert_eq!(
            book.seen_event(&e.id),
            model.events.contains_key(&e.id),
            "event {} remembered",
            &e.id
        );
    }
    drop(book);
    for (i, m) in model.stock.iter().enumerate() {
        let got = engine.stock(SKUS[i]);
        let m = Stock { on_hand: m.on_hand, available: m.available, reserved: m.reserved, sold: m.sold };
        prop_assert_eq!(got, Some(m), "stock of {}", SKUS[i]);
    }
    engine.check_consistency().map_err(TestCaseError::fail)?;
    Ok(())
}

/// What the records alone must show: every order paid at most once, every payment carrying the commit
/// of the order's hold, and every event id's effect made by one call (within the retention of event
/// ids: a provider does not redeliver past it, and the server has forgotten the id by then).
fn check_records(log: &[Record], made_by: &[usize], retention_ms: u64) -> Result<(), TestCaseError> {
    let mut paid: HashMap<OrderId, usize> = HashMap::new();
    let mut last: HashMap<OrderId, &OrderStep> = HashMap::new();
    let mut events: HashMap<&str, (usize, u64)> = HashMap::new();
    for (i, record) in log.iter().enumerate() {
        let Record::Order(r) = record else { continue };
        let after_rebooking = matches!(last.get(&r.order), Some(OrderStep::Rebooked));
        match (&r.step, &r.reservation) {
            // The commit a rebooking owes.
            (OrderStep::Paid, Some(Record::Committed { .. })) if after_rebooking => {}
            (OrderStep::Paid, Some(Record::Committed { .. })) | (OrderStep::Rebooked, _) => {
                *paid.entry(r.order).or_default() += 1
            }
            (OrderStep::Paid, other) => {
                prop_assert!(false, "record {}: {} paid without its commit: {:?}", i, r.order, other)
            }
            _ => {}
        }
        prop_assert!(paid.get(&r.order).is_none_or(|n| *n <= 1), "record {}: {} paid twice", i, r.order);
        if let Some(event) = &r.event {
            let (call, at) = *events.entry(event).or_insert((made_by[i], r.at_ms));
            if r.at_ms < at + retention_ms {
                prop_assert_eq!(call, made_by[i], "record {}: event {} had an effect in two calls", i, event);
            } else {
                events.insert(event, (made_by[i], r.at_ms));
            }
        }
        last.insert(r.order, &r.step);
    }
    Ok(())
}

fn replay(shards: usize, log: &[Record], into: Option<Engine>) -> Result<Engine, TestCaseError> {
    let engine = match into {
        Some(e) => e,
        None => Engine::new(config(shards)).expect("config"),
    };
    for (i, record) in log.iter().enumerate() {
        engine.apply(record).map_err(|e| TestCaseError::fail(format!("replay of {i} {record:?}: {e}")))?;
    }
    Ok(engine)
}

/// The server's timer: the order tick, then the engine's expiry `jitter_ms` later (its clock moved).
fn timer(
    engine: &Engine,
    model: &mut Model,
    log: &mut Vec<Record>,
    now: &mut u64,
    jitter_ms: u64,
) -> Result<(), TestCaseError> {
    engine.orders_tick(*now, TICK_MAX, log).map_err(|e| TestCaseError::fail(format!("tick: {e:?}")))?;
    model.tick(*now);
    // The timer's promise: no order stays open past its pay_by beyond this tick.
    let book = engine.orders().lock();
    if let Some(o) = book.orders().find(|o| o.state.is_open() && o.pay_by_ms <= *now) {
        return Err(TestCaseError::fail(format!("{} open at {now}, pay_by {}", o.id, o.pay_by_ms)));
    }
    drop(book);
    *now += jitter_ms;
    let mut got = engine.expire_due(*now, log);
    got.sort();
    prop_assert_eq!(got, model.expire_due(*now));
    Ok(())
}

fn run(ops: &[Op], shards: usize, snapshot_at: usize) -> Result<(), TestCaseError> {
    let cfg = config(shards);
    let engine = Engine::new(cfg.clone()).expect("config");
    let mut model = Model {
        cfg: cfg.clone(),
        stock: Default::default(),
        res: BTreeMap::new(),
        orders: BTreeMap::new(),
        keys: BTreeMap::new(),
        events: BTreeMap::new(),
        surplus: Default::default(),
    };
    let mut log: Vec<Record> = Vec::new();
    // For each record, the step (call) that made it.
    let mut made_by: Vec<usize> = Vec::new();
    let mut now: u64 = 1_000_000;
    let mut last_tick = now;
    let mut placed: Vec<OrderId> = Vec::new();
    let mut pool: Vec<Event> = Vec::new();
    let mut snapshot: Option<(usize, Vec<u8>, u64)> = None;
    let unknown = OrderId(ReservationId::parse("rsv_03ff000000abcdef").expect("valid"));
    let pick = |placed: &Vec<OrderId>, p: usize| {
        if placed.is_empty() || p.is_multiple_of(16) {
            unknown
        } else {
            placed[p % placed.len()]
        }
    };
    for i in 0..SKUS.len() {
        engine.set_stock(&sku(i), 4, now, &mut log).expect("stock");
        model.stock[i] = MStock { on_hand: 4, available: 4, reserved: 0, sold: 0 };
    }
    for (step, op) in ops.iter().enumerate() {
        if step == snapshot_at {
            snapshot = Some((log.len(), codec::encode_state(&engine.export(now)), now));
        }
        match op {
            Op::SetStock { sku: s, on_hand } => {
                let got = engine.set_stock(&sku(*s), *on_hand, now, &mut log);
                let m = &mut model.stock[*s];
                let held = m.reserved + m.sold;
                if *on_hand < held {
                    prop_assert_eq!(got, Err(StockError::BelowHeld { held }));
                } else {
                    prop_assert!(got.is_ok());
                    m.on_hand = *on_hand;
                    m.available = on_hand - held;
                }
            }
            Op::Place { user, lines, price, currency, ttl_ms, key } => {
                let req = OrderRequest {
                    user: UserId::new(USERS[*user]).expect("valid"),
                    lines: (lines.iter())
                        .map(|&(s, qty)| OrderLine { sku: sku(s), qty, unit_price: *price })
                        .collect(),
                    currency: CURRENCIES[*currency].to_owned(),
                    sale: None,
                    pay_within_ms: *ttl_ms,
                    key: IdempotencyKey::new(&format!("order-{key}")).expect("valid"),
                };
                let got = engine.place_order(&req, None, now, &mut log);
                model.forget(now);
                let expected: Result<Option<OrderId>, OrderError> = match model.keys.get(req.key.as_str()) {
                    Some(id) if model.orders[id].req == req => Ok(Some(*id)),
                    Some(_) => Err(OrderError::IdempotencyConflict),
                    None if !(cfg.ttl_ms_min..=cfg.ttl_ms_max).contains(ttl_ms) => {
                        Err(OrderError::Reserve(ReserveError::Invalid(RequestError::TtlOutOfRange {
                            min: cfg.ttl_ms_min,
                            max: cfg.ttl_ms_max,
                        })))
                    }
                    None => model.can_reserve(lines).map(|()| None).map_err(OrderError::Reserve),
                };
                match (expected, got) {
                    (Ok(Some(id)), Ok((order, repeat))) => {
                        prop_assert!(repeat);
                        prop_assert_eq!(order.id, id);
                    }
                    (Ok(None), Ok((order, repeat))) => {
                        prop_assert!(!repeat);
                        prop_assert_eq!(order.state, OrderState::AwaitingPayment);
                        prop_assert_eq!(order.pay_by_ms, now + ttl_ms);
                        let amount = lines.iter().map(|&(_, q)| u64::from(q) * price).sum::<u64>();
                        prop_assert_eq!(order.placed.amount, amount);
                        model.reserve(order.id.0, lines, *ttl_ms, now);
                        model.keys.insert(req.key.to_string(), order.id);
                        model.orders.insert(
                            order.id,
                            MOrder {
                                req,
                                lines: lines.clone(),
                                amount,
                                state: OrderState::AwaitingPayment,
                                pay_by: now + ttl_ms,
                                provider_ref: None,
                                res: order.id.0,
                                ended_at: 0,
                            },
                        );
                        placed.push(order.id);
                    }
                    (Err(m), Err(e)) => prop_assert_eq!(m, e),
                    (m, e) => prop_assert!(false, "model {:?} but engine {:?}", m, e),
                }
            }
            Op::Attach { pick: p, provider_ref } => {
                let id = pick(&placed, *p);
                let r = REFS[*provider_ref];
                let got = engine.attach_payment(id, r, now, &mut log).map(|o| o.provider_ref);
                model.forget(now);
                let expected = match model.orders.get_mut(&id) {
                    None => Err(OrderError::NotFound),
                    Some(o) => match &o.provider_ref {
                        Some(had) if had == r => Ok(Some(r.to_owned())),
                        Some(_) => Err(OrderError::OtherPaymentRef),
                        None if !o.state.is_open() => Err(OrderError::Ended(o.state)),
                        None => {
                            o.provider_ref = Some(r.to_owned());
                            Ok(Some(r.to_owned()))
                        }
                    },
                };
                prop_assert_eq!(got, expected);
            }
            Op::Cancel { pick: p } => {
                let id = pick(&placed, *p);
                let got = engine.cancel_order(id, now, &mut log).map(|o| o.state);
                model.forget(now);
                let expected = match model.orders.get(&id).map(|o| o.state) {
                    None => Err(OrderError::NotFound),
                    Some(s @ OrderState::Cancelled(_)) => Ok(s),
                    Some(OrderState::Paid) => Err(OrderError::Paid),
                    Some(s) if !s.is_open() => Err(OrderError::Ended(s)),
                    Some(_) => {
                        model.end_hold(id, Cause::Cancelled, now);
                        Ok(model.orders[&id].state)
                    }
                };
                prop_assert_eq!(got, expected);
            }
            Op::Event { .. } | Op::Redeliver { .. } | Op::StatusCheck { .. } => {
                let (event, with_id) = match op {
                    Op::Event { pick: p, status, provider_ref, amount, currency } => {
                        let order = pick(&placed, *p);
                        let (right_amount, right_currency) = model
                            .orders
                            .get(&order)
                            .map_or((100, "usd".to_owned()), |o| (o.amount, o.req.currency.clone()));
                        let e = Event {
                            id: format!("evt_{}", pool.len()),
                            order,
                            status: *status,
                            provider_ref: REFS[*provider_ref],
                            amount: if *amount == Skew::Other { right_amount + 1 } else { right_amount },
                            currency: match currency {
                                Skew::Same => right_currency,
                                Skew::Upper => right_currency.to_ascii_uppercase(),
                                Skew::Other => "gbp".to_owned(),
                            },
                        };
                        pool.push(e.clone());
                        (e, true)
                    }
                    Op::Redeliver { pick: p } if !pool.is_empty() => (pool[p % pool.len()].clone(), true),
                    Op::Redeliver { .. } => continue,
                    Op::StatusCheck { pick: p, status, provider_ref } => {
                        let order = pick(&placed, *p);
                        let (amount, currency) = model
                            .orders
                            .get(&order)
                            .map_or((100, "usd".to_owned()), |o| (o.amount, o.req.currency.clone()));
                        let e = Event {
                            id: String::new(),
                            order,
                            status: *status,
                            provider_ref: REFS[*provider_ref],
                            amount,
                            currency,
                        };
                        (e, false)
                    }
                    _ => unreachable!(),
                };
                let payment = Payment {
                    status: event.status,
                    provider_ref: event.provider_ref,
                    amount: event.amount,
                    currency: &event.currency,
                };
                let id = with_id.then_some(event.id.as_str());
                let got = engine.payment_outcome(event.order, &payment, id, now, &mut log);
                let rebooked = engine.orders().lock().get(event.order).map(|o| o.reservation);
                let rebooked =
                    rebooked.filter(|r| model.orders.get(&event.order).is_some_and(|o| o.res != *r));
                let expected = model.outcome(&event, id, now, rebooked);
                prop_assert_eq!(got, expected, "{:?}", event);
            }
            Op::Advance { ms } => {
                now += ms;
                // The server's timer never sleeps long: the clock does not outrun it.
                if now - last_tick >= TICK_MS_MAX {
                    timer(&engine, &mut model, &mut log, &mut now, 0)?;
                    last_tick = now;
                }
            }
            Op::Tick { jitter_ms } => {
                timer(&engine, &mut model, &mut log, &mut now, *jitter_ms)?;
                last_tick = now;
            }
        }
        made_by.resize(log.len(), step);
        check_same(&engine, &model, &pool, now)?;
        check_records(&log, &made_by, cfg.payment_event_retention_ms)?;
    }

    // The log codec gives every record back.
    let mut buf = Vec::new();
    for (i, record) in log.iter().enumerate() {
        codec::encode(record, &mut buf);
        let back = codec::decode(&buf).map_err(|e| TestCaseError::fail(format!("record {i}: {e}")))?;
        prop_assert_eq!(&back, record, "record {} through the codec", i);
    }
    // Replay, with the same shard count and another: the same state.
    let state = engine.export(now);
    for replay_shards in [shards, 1 + shards % 3] {
        let mut again = replay(replay_shards, &log, None)?.export(now);
        let mut expected = state.clone();
        if replay_shards != shards {
            again.next_seqs.clear();
            expected.next_seqs.clear();
        }
        prop_assert_eq!(again, expected);
    }
    // The engines rebuilt by replay then run the timer as the original does, and find every order
    // by its key (a key reused after its first order was forgotten names the newer one).
    let replayed = replay(shards, &log, None)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    engine.orders_tick(now, TICK_MAX, &mut ours).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    replayed.orders_tick(now, TICK_MAX, &mut theirs).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(&ours, &theirs, "the timer after replay");
    model.tick(now);
    prop_assert_eq!(engine.export(now), replayed.export(now));
    for (key, id) in &model.keys {
        let key = IdempotencyKey::new(key).expect("valid");
        let found = replayed.orders().lock().by_key(&key).map(|o| o.id);
        prop_assert_eq!(found, Some(*id), "key {} after replay", key.as_str());
    }
    // A snapshot taken midway, encoded and restored, then the records after it: the same state.
    let (from, bytes, at) = snapshot.unwrap_or_else(|| (log.len(), codec::encode_state(&state), now));
    let decoded = codec::decode_state(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(codec::encode_state(&decoded), bytes, "snapshot taken at {}", at);
    let restored = Engine::restore(cfg.clone(), &decoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let restored = replay(shards, &log[from..], Some(restored))?;
    prop_assert_eq!(&restored.export(now), &state, "snapshot at {} and the records after it", at);
    // And the final state through the snapshot codec.
    let decoded =
        codec::decode_state(&codec::encode_state(&state)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, &state);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn orders_match_the_model_and_replay_exactly(
        ops in prop::collection::vec(op(), 1..200),
        shards in 1usize..4,
        snapshot_at in 0usize..200,
    ) {
        run(&ops, shards, snapshot_at)?;
    }
}
