//! The checkout saga on the durable engine, below HTTP: an order's hold is moved by the order alone.
//! The durable API refuses to commit, release or extend it (a hold committed outside the saga could
//! not be given back when the payment then fails), and a success for a hold somehow committed
//! already still pays the order rather than leaving it open.

use holdfast::durable::Durable;
use holdfast::engine::{EngineConfig, IdempotencyKey, ReservationError, SkuId, Stock, UserId};
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
