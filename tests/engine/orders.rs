//! The checkout saga on the durable engine, below HTTP: an order's hold is moved by the order alone.
//! The durable API refuses to commit, release or extend it (a hold committed outside the saga could
//! not be given back when the payment then fails), and a success for a hold somehow committed
//! already still pays the order rather than leaving it open.

use holdfast::durable::Durable;
use holdfast::engine::{
    Engine, EngineConfig, IdempotencyKey, Record, ReservationError, SkuId, Stock, UserId,
};
use holdfast::orders::{Effect, Order, OrderLine, OrderRequest, OrderState, Payment, PaymentStatus};
use holdfast_wal::storage::MemStorage;
use holdfast_wal::WalOptions;
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;

fn open() -> Durable {
    let config = EngineConfig { shards: 2, ..EngineConfig::default() };
    Durable::open(Arc::new(MemStorage::new()), config, WalOptions::default()).expect("opens").0
}

fn tee() -> SkuId {
    SkuId::new("tee").expect("valid")
}

/// Stocks 10 tee and places an order for 2 at 500.
fn placed(d: &Durable) -> Order {
    d.set_stock(&tee(), 10, T0).expect("stock");
    let req = OrderRequest {
        user: UserId::new("u1").expect("valid"),
        lines: vec![OrderLine { sku: tee(), qty: 2, unit_price: 500 }],
        currency: "usd".into(),
        sale: None,
        pay_within_ms: 60_000,
        key: IdempotencyKey::new("k").expect("valid"),
    };
    d.place_order(&req, None, T0).expect("placed").value.0
}

fn counts(d: &Durable) -> (u64, u64, u64) {
    let Stock { available, reserved, sold, .. } = d.engine().stock("tee").expect("tee");
    (available, reserved, sold)
}

fn payment(status: PaymentStatus) -> Payment<'static> {
    Payment { status, provider_ref: "pi_1", amount: 1_000, currency: "usd" }
}

#[test]
fn the_durable_api_refuses_to_move_an_orders_hold() {
    let d = open();
    let order = placed(&d);
    let refused = |r: Result<(), holdfast::durable::Refused<ReservationError>>| {
        matches!(r, Err(holdfast::durable::Refused::Engine(ReservationError::OrderHeld)))
    };
    assert!(refused(d.commit(order.reservation, T0 + 1).map(|_| ())));
    assert!(refused(d.release(order.reservation, T0 + 1).map(|_| ())));
    assert!(refused(d.extend(order.reservation, 60_000, T0 + 1).map(|_| ())));
    assert_eq!(counts(&d), (8, 2, 0), "nothing moved");
    // A failure then cancels the order and gives the units back, as the saga means.
    let effect = d.payment_outcome(order.id, &payment(PaymentStatus::Failed), Some("evt_2"), T0 + 2);
    assert!(matches!(effect.map(|l| l.value), Ok(Effect::Moved(OrderState::Cancelled(_)))));
    assert_eq!(counts(&d), (10, 0, 0));
}

/// saga.rs `settle_paid`: committing a hold that is committed already writes no record; the order
/// must still be paid (it was once left open, then cancelled as expired with its units sold).
#[test]
fn a_success_for_an_order_whose_hold_was_committed_outside_the_saga_marks_it_paid() {
    let d = open();
    let order = placed(&d);
    // Below the durable API, nothing stops it: the engine's own commit (its record not logged).
    d.engine().commit(order.reservation, T0 + 1, &mut ()).expect("the engine commits");
    let effect = d.payment_outcome(order.id, &payment(PaymentStatus::Succeeded), Some("evt_1"), T0 + 2);
    let state = d.engine().orders().lock().get(order.id).map(|o| o.state);
    assert_eq!(
        (effect.map(|l| l.value).ok(), state),
        (Some(Effect::Moved(OrderState::Paid)), Some(OrderState::Paid)),
        "a success must pay the order whose units are sold"
    );
    assert_eq!(counts(&d), (8, 0, 2));
}

fn request(key: &str) -> OrderRequest {
    OrderRequest {
        user: UserId::new("u1").expect("valid"),
        lines: vec![OrderLine { sku: tee(), qty: 2, unit_price: 500 }],
        currency: "usd".into(),
        sale: None,
        pay_within_ms: 60_000,
        key: IdempotencyKey::new(key).expect("valid"),
    }
}

fn engine_with_tee(log: &mut Vec<Record>) -> Engine {
    let e = Engine::new(EngineConfig { shards: 2, ..EngineConfig::default() }).expect("config");
    e.set_stock(&tee(), 10, T0, log).expect("stock");
    e
}

fn pay(provider_ref: &'static str) -> Payment<'static> {
    Payment { status: PaymentStatus::Succeeded, provider_ref, amount: 1_000, currency: "usd" }
}

/// A second success through another payment object: money the order does not need. It is recorded
/// for a refund (never silently dropped), the order stays paid, the units are sold once, and the
/// event has no second effect.
#[test]
fn a_success_through_another_payment_object_is_kept_for_a_refund() {
    let mut log = Vec::new();
    let e = engine_with_tee(&mut log);
    let (order, _) = e.place_order(&request("k"), None, T0, &mut log).expect("placed");
    assert_eq!(
        e.payment_outcome(order.id, &pay("pi_x"), Some("evt_1"), T0 + 1, &mut log),
        Ok(Effect::Moved(OrderState::Paid))
    );
    assert_eq!(
        e.payment_outcome(order.id, &pay("pi_y"), Some("evt_2"), T0 + 2, &mut log),
        Ok(Effect::Surplus)
    );
    assert_eq!(
        e.payment_outcome(order.id, &pay("pi_y"), Some("evt_2"), T0 + 3, &mut log),
        Ok(Effect::Duplicate)
    );
    let o = e.orders().lock().get(order.id).cloned().expect("known");
    assert_eq!((o.state, o.provider_ref.as_deref(), o.needs_refund), (OrderState::Paid, Some("pi_x"), true));
    assert_eq!(e.stock("tee").map(|s| s.sold), Some(2));
    // Kept past every retention: it needs a person.
    let far = T0 + 30 * 24 * 3_600_000;
    e.orders_tick(far, 64, &mut log).expect("tick");
    assert!(e.orders().lock().get(order.id).is_some());
    let replayed = Engine::new(EngineConfig { shards: 2, ..EngineConfig::default() }).expect("config");
    log.iter().try_for_each(|r| replayed.apply(r)).expect("replays");
    assert_eq!(replayed.export(far), e.export(far));
}

/// Every `processing` event that was answered is remembered, also when it moved nothing: a
/// redelivery later, when it could push the hold out, has no effect of its own.
#[test]
fn a_pending_event_that_moved_nothing_is_still_remembered() {
    let mut log = Vec::new();
    let e = engine_with_tee(&mut log);
    let (order, _) = e.place_order(&request("k"), None, T0, &mut log).expect("placed");
    let pending = Payment { status: PaymentStatus::Pending, ..pay("pi_x") };
    e.payment_outcome(order.id, &pending, Some("evt_p1"), T0 + 1, &mut log).expect("first");
    e.payment_outcome(order.id, &pending, Some("evt_p2"), T0 + 1, &mut log).expect("same instant");
    let pay_by = e.orders().lock().get(order.id).map(|o| o.pay_by_ms);
    let again = e.payment_outcome(order.id, &pending, Some("evt_p2"), T0 + 60_000, &mut log);
    assert_eq!(again, Ok(Effect::Duplicate));
    assert_eq!(e.orders().lock().get(order.id).map(|o| o.pay_by_ms), pay_by, "no second extension");
}

/// A crash between a late success's rebooking and its commit, then an outage longer than the
/// rebooked hold: the hold has lapsed, so a refund is owed, and the log still replays.
#[test]
fn a_rebooked_hold_that_lapsed_before_its_commit_owes_a_refund_and_replays() {
    let mut log = Vec::new();
    let e = engine_with_tee(&mut log);
    let (order, _) = e.place_order(&request("k"), None, T0, &mut log).expect("placed");
    e.cancel_order(order.id, T0 + 1, &mut log).expect("cancelled");
    e.payment_outcome(order.id, &pay("pi_x"), Some("evt_late"), T0 + 2, &mut log).expect("paid late");
    // The last record is the owed commit: the crash took it.
    let last = log.pop().expect("the commit");
    assert!(matches!(&last, Record::Order(o) if o.event.is_none()), "{last:?}");
    let config = EngineConfig { shards: 2, ..EngineConfig::default() };
    let after = Engine::new(config.clone()).expect("config");
    log.iter().try_for_each(|r| after.apply(r)).expect("replays");
    let outage = T0 + 2 + config.ttl_ms_max + 1;
    let mut more = Vec::new();
    after.orders_tick(outage, 64, &mut more).expect("tick");
    after.expire_due(outage, &mut more);
    let o = after.orders().lock().get(order.id).cloned().expect("known");
    assert_eq!((o.state, o.commit_owed), (OrderState::RefundDue, false));
    assert_eq!(after.stock("tee").map(|s| (s.available, s.sold)), Some((10, 0)));
    let again = Engine::new(config).expect("config");
    log.iter().chain(&more).try_for_each(|r| again.apply(r)).expect("the log replays");
    assert_eq!(again.export(outage), after.export(outage));
}
