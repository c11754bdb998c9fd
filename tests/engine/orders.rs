//! The checkout saga on the durable engine, below HTTP: an order whose reservation was ended outside
//! the saga (the reservation routes refuse that now, but the engine's API does not) must still end
//! consistently — never cancelled with its units sold, never left open after it was paid.
//!
//! Both tests fail against the saga of 3fd88b6 (`src/orders/saga.rs`): they pin down a core bug that
//! the HTTP refusal (409 `order_reservation`) only hides.

use holdfast::durable::Durable;
use holdfast::engine::{EngineConfig, IdempotencyKey, SkuId, Stock, UserId};
use holdfast::orders::{Cause, Effect, Order, OrderLine, OrderRequest, OrderState, Payment, PaymentStatus};
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

/// saga.rs `settle_paid`: `self.commit` of a hold already committed returns `Ok(())` without a
/// record, and `Ok(()) => return Ok(())` then leaves the order awaiting payment (the event not even
/// remembered); at pay_by the order is cancelled as expired with its units sold and its money taken.
#[test]
fn a_success_for_an_order_whose_hold_was_committed_outside_the_saga_marks_it_paid() {
    let d = open();
    let order = placed(&d);
    d.commit(order.reservation, T0 + 1).expect("the engine lets anyone commit it");
    let effect = d.payment_outcome(order.id, &payment(PaymentStatus::Succeeded), Some("evt_1"), T0 + 2);
    let state = d.engine().orders().lock().get(order.id).map(|o| o.state);
    assert_eq!(
        (effect.map(|l| l.value).ok(), state),
        (Some(Effect::Moved(OrderState::Paid)), Some(OrderState::Paid)),
        "a success must pay the order whose units are sold"
    );
    assert_eq!(counts(&d), (8, 0, 2));
}

/// saga.rs `end_hold`: `self.release` of a committed hold fails with `Committed`, and the fallback
/// arm logs `Cancelled(c)` alone: the order is cancelled (payment_failed) while its 2 units stay sold.
#[test]
fn a_failure_for_an_order_whose_hold_was_committed_outside_the_saga_does_not_cancel_it_with_units_sold() {
    let d = open();
    let order = placed(&d);
    d.commit(order.reservation, T0 + 1).expect("the engine lets anyone commit it");
    let _ = d.payment_outcome(order.id, &payment(PaymentStatus::Failed), Some("evt_2"), T0 + 2);
    let state = d.engine().orders().lock().get(order.id).map(|o| o.state);
    let cancelled_with_units_sold =
        state == Some(OrderState::Cancelled(Cause::PaymentFailed)) && counts(&d).2 == 2;
    assert!(!cancelled_with_units_sold, "order {state:?} with stock {:?}", counts(&d));
}
