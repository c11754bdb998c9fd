//! The codec's round trips and refusals.

use super::*;

/// A 16-byte aligned copy, as the log hands payloads out.
fn aligned(bytes: &[u8]) -> Vec<u128> {
    let mut words = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    words
}

fn round_trip(record: &Record) -> Result<Record, DecodeError> {
    let mut out = Vec::new();
    encode(record, &mut out);
    let words = aligned(&out);
    decode(&bytemuck::cast_slice::<u128, u8>(&words)[..out.len()])
}

fn sample() -> Vec<Record> {
    let id = ReservationId::parse("rsv_0001000000000007").expect("valid");
    let sku = SkuId::new("tee-L").expect("valid");
    vec![
        Record::StockSet { sku: sku.clone(), on_hand: 10, at_ms: 1 },
        Record::StockAdjusted {
            sku: sku.clone(),
            delta: -3,
            reason: Reason::new("damaged").expect("valid"),
            at_ms: 2,
            idempotency: None,
        },
        // Written as `SaleLimitSet`, which reads as a sale covering no SKU.
        Record::SaleSet {
            sale: SaleId::new("noon").expect("valid"),
            per_user_max: 2,
            skus: vec![],
            at_ms: 3,
        },
        Record::Reserved(ReservedRecord {
            id,
            items: vec![Item { sku, qty: 2 }],
            created_at_ms: 4,
            expires_at_ms: 60_004,
            user: Some(UserId::new("u@x").expect("valid")),
            sale: Some(SaleId::new("noon").expect("valid")),
            idempotency: Some((IdempotencyKey::new("k-1").expect("valid"), u128::MAX - 5)),
        }),
        Record::Extended { id, expires_at_ms: 90_000, at_ms: 5 },
        Record::Committed { id, at_ms: 6 },
        Record::Released { id, at_ms: 7 },
        Record::Expired { id, at_ms: 8 },
    ]
}

fn queue_sample() -> Vec<Record> {
    let sale = SaleId::new("noon").expect("valid");
    let room = RoomConfig {
        skus: vec![SkuId::new("tee-L").expect("valid"), SkuId::new("tee-M").expect("valid")],
        opens_at_ms: 1_000,
        admit_per_s: 500,
        max_active: 2_000,
        session_ms: 60_000,
        order: QueueOrder::Lottery,
        seed: u64::MAX - 7,
    };
    vec![
        Record::SaleConfigured { sale: sale.clone(), per_user_max: 2, room: Box::new(room), at_ms: 9 },
        Record::QueueJoined { sale: sale.clone(), user: UserId::new("u@x").expect("valid"), at_ms: 10 },
        Record::QueueOpened { sale: sale.clone(), at_ms: 11 },
        Record::QueueAdmitted { sale, count: 40, at_ms: 12 },
        Record::SaleSet {
            sale: SaleId::new("late").expect("valid"),
            per_user_max: 3,
            skus: vec![SkuId::new("cap").expect("valid"), SkuId::new("mug").expect("valid")],
            at_ms: 13,
        },
    ]
}

#[test]
fn a_keyed_adjustment_round_trips_and_an_unkeyed_one_keeps_the_first_layout() {
    let keyed = Record::StockAdjusted {
        sku: SkuId::new("tee-L").expect("valid"),
        delta: 20,
        reason: Reason::new("po-77 restock").expect("valid"),
        at_ms: 13,
        idempotency: Some((IdempotencyKey::new("po-77").expect("valid"), u128::MAX - 9)),
    };
    assert_eq!(round_trip(&keyed), Ok(keyed));
    // Records without a key are written exactly as the first release of version 1 wrote them
    // (but a sale, now written with its SKUs as `SaleSet`).
    let fixture: Vec<&str> = include_str!("records-v1.hex").lines().collect();
    for (record, line) in sample().iter().zip(fixture).filter(|(r, _)| !matches!(r, Record::SaleSet { .. })) {
        let mut out = Vec::new();
        encode(record, &mut out);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, line, "{record:?}");
    }
}

#[test]
fn a_state_with_adjustment_keys_sale_skus_orders_and_carts_round_trips_as_version_6() {
    use crate::engine::{EngineState, RememberedAdjustKey, Stock};
    let stock = Stock { on_hand: 20, available: 16, reserved: 4, sold: 0 };
    let key = IdempotencyKey::new("po-77").expect("valid");
    let mut state = EngineState::default();
    state.adjust_keys.push(RememberedAdjustKey { key, fingerprint: 7, stock, created_at_ms: 9 });
    let sale = SaleId::new("noon").expect("valid");
    state.sale_skus.push((sale, vec![SkuId::new("tee").expect("valid")]));
    state.orders.push(sample_order());
    state.payment_events.push((u128::MAX - 1, 77));
    let item = |sku: &str, qty, unit_price| crate::carts::CartItem {
        hold: None,
        sku: SkuId::new(sku).expect("valid"),
        qty,
        unit_price,
    };
    state.carts.push(crate::carts::Cart {
        id: crate::engine::CartId::new("ann@example.com").expect("valid"),
        items: vec![item("mug", 1, None), item("tee", 2, Some(1_500))],
        created_at_ms: 5,
        touched_at_ms: 8,
        merged_from: vec![crate::engine::CartId::new("sess-1").expect("valid")],
    });
    let hold = crate::carts::Hold { id: ReservationId::new(2, 77, 0xabc), expires_at_ms: 900, since_ms: 6 };
    state.carts[0].items[1].hold = Some(hold);
    state.cart_holds.push((SaleId::new("noon").expect("valid"), 600_000));
    let bytes = encode_state(&state);
    assert_eq!(bytes[4], 6);
    let words = aligned(&bytes);
    let decoded = decode_state(&bytemuck::cast_slice::<u128, u8>(&words)[..bytes.len()]);
    assert_eq!(decoded.expect("decodes"), state);

    // A version 5 snapshot (written before carts) still reads, with none.
    let mut v5 = Vec::new();
    prefix(&mut v5, STATE_MAGIC, 5);
    v5.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(&snap_v5(&state)).expect("serialises"));
    let words = aligned(&v5);
    let decoded = decode_state(&bytemuck::cast_slice::<u128, u8>(&words)[..v5.len()]).expect("decodes");
    let carts = std::mem::take(&mut state.carts);
    let holds = std::mem::take(&mut state.cart_holds);
    assert_eq!(decoded, state);
    assert_eq!((carts.len(), holds.len()), (1, 1));

    // A version 3 snapshot (written before orders) still reads, with none.
    let mut v3 = Vec::new();
    prefix(&mut v3, STATE_MAGIC, 3);
    v3.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(&snap_v3(&state)).expect("serialises"));
    let words = aligned(&v3);
    let decoded = decode_state(&bytemuck::cast_slice::<u128, u8>(&words)[..v3.len()]).expect("decodes");
    (state.orders, state.payment_events) = (Vec::new(), Vec::new());
    assert_eq!(decoded, state);
}

fn sample_order() -> crate::orders::Order {
    use crate::orders::{Cause, Order, OrderId, OrderState, Transition};
    let Record::Order(placed) = &order_sample()[0] else { unreachable!("an order step") };
    let crate::orders::OrderStep::Placed(p) = &placed.step else { unreachable!("placed") };
    let id = ReservationId::parse("rsv_0001000000000007").expect("valid");
    Order {
        id: OrderId(id),
        placed: (**p).clone(),
        reservation: ReservationId::parse("rsv_0002000000000001").expect("valid"),
        created_at_ms: 9,
        pay_by_ms: 60_009,
        provider_ref: Some("pi_1".into()),
        state: OrderState::Cancelled(Cause::Expired),
        commit_owed: false,
        history: vec![
            Transition { at_ms: 9, state: OrderState::AwaitingPayment, cause: "placed" },
            Transition { at_ms: 60_009, state: OrderState::Cancelled(Cause::Expired), cause: "pay_by" },
        ],
        ended_at_ms: 60_009,
        needs_refund: true,
    }
}

#[test]
fn queue_records_round_trip() {
    for record in queue_sample() {
        assert_eq!(round_trip(&record), Ok(record));
    }
}

/// Bytes written by the first release of format version 1 (before waiting rooms), one record a
/// line: they must read the same with every later build of the same version.
#[test]
fn records_written_before_waiting_rooms_still_read() {
    let fixture = include_str!("records-v1.hex");
    let decoded: Vec<Record> = fixture
        .lines()
        .map(|line| {
            let bytes: Vec<u8> = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
                .collect();
            let words = aligned(&bytes);
            decode(&bytemuck::cast_slice::<u128, u8>(&words)[..bytes.len()]).expect("decodes")
        })
        .collect();
    assert_eq!(decoded, sample());
    assert_eq!(std::mem::size_of::<ArchivedLogRecord>(), 112, "the archived record's size changed");
}

#[test]
fn every_kind_of_record_round_trips() {
    for record in sample() {
        assert_eq!(round_trip(&record), Ok(record));
    }
}

fn order_sample() -> Vec<Record> {
    use crate::orders::{Cause, OrderId, OrderLine, OrderRecord, OrderStep, Placed};
    let id = ReservationId::parse("rsv_0001000000000007").expect("valid");
    let Record::Reserved(reserved) = &sample()[3] else { unreachable!("the sample's fourth") };
    let placed = Placed {
        user: UserId::new("u@x").expect("valid"),
        lines: vec![OrderLine { sku: SkuId::new("tee-L").expect("valid"), qty: 2, unit_price: 1999 }],
        currency: "eur".into(),
        amount: 3998,
        sale: Some(SaleId::new("noon").expect("valid")),
        key: IdempotencyKey::new("order-1").expect("valid"),
        fingerprint: 42,
    };
    let step = |step: OrderStep, reservation: Option<Record>, event: Option<&str>| {
        Record::Order(Box::new(OrderRecord {
            order: OrderId(id),
            step,
            reservation,
            event: event.map(str::to_owned),
            at_ms: 9,
        }))
    };
    vec![
        step(OrderStep::Placed(Box::new(placed)), Some(Record::Reserved(reserved.clone())), None),
        step(OrderStep::PaymentAttached { provider_ref: "pi_1".into() }, None, None),
        step(OrderStep::Pending, Some(Record::Extended { id, expires_at_ms: 99, at_ms: 9 }), Some("evt_1")),
        step(OrderStep::Paid, Some(Record::Committed { id, at_ms: 9 }), Some("evt_2")),
        step(OrderStep::Cancelled(Cause::PaymentFailed), Some(Record::Released { id, at_ms: 9 }), None),
        step(OrderStep::Cancelled(Cause::Expired), Some(Record::Expired { id, at_ms: 9 }), None),
        step(OrderStep::Cancelled(Cause::Cancelled), None, None),
        step(OrderStep::Rebooked, Some(Record::Reserved(reserved.clone())), Some("evt_3")),
        step(OrderStep::RefundDue, None, Some("evt_4")),
        step(OrderStep::PaymentMismatch { amount: 1, currency: "usd".into() }, None, Some("evt_5")),
        step(
            OrderStep::SurplusPayment { provider_ref: "pi_2".into(), amount: 3, currency: "usd".into() },
            None,
            Some("evt_6"),
        ),
    ]
}

#[test]
fn every_kind_of_order_step_round_trips() {
    for record in order_sample() {
        assert_eq!(round_trip(&record), Ok(record));
    }
}

#[test]
fn a_name_that_fails_validation_is_refused_after_reading() {
    let mut out = Vec::new();
    let log = LogRecord::StockSet { sku: "bad/sku".into(), on_hand: 1, at_ms: 1 };
    prefix(&mut out, RECORD_MAGIC, 1);
    out.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(&log).expect("serialise"));
    let words = aligned(&out);
    let err = decode(&bytemuck::cast_slice::<u128, u8>(&words)[..out.len()]).unwrap_err();
    assert!(err.0.contains("sku"), "{err}");
}

#[test]
fn wrong_magic_version_or_garbage_is_refused() {
    let mut out = Vec::new();
    encode(&sample()[0], &mut out);
    let check = |bytes: &[u8]| {
        let words = aligned(bytes);
        decode(&bytemuck::cast_slice::<u128, u8>(&words)[..bytes.len()])
    };
    let mut wrong = out.clone();
    wrong[0] = b'X';
    assert!(check(&wrong).is_err());
    let mut newer = out.clone();
    newer[4] = 3;
    assert!(check(&newer).unwrap_err().0.contains("version 3"));
    // Version 2 with its prefix cut short.
    let mut short = out[..16].to_vec();
    short[4] = 2;
    assert!(check(&short).is_err());
    assert!(check(&out[..10]).is_err());
    let mut garbage = out.clone();
    for b in &mut garbage[16..] {
        *b = 0xff;
    }
    assert!(check(&garbage).is_err());
}

/// The sample's records with their ids tagged, as this build issues them.
fn tagged(records: Vec<Record>, tag: u64) -> Vec<Record> {
    let t = |id: ReservationId| ReservationId::from_parts(id.raw(), tag).expect("valid");
    let retag = |r: &mut Record| match r {
        Record::Reserved(r) => r.id = t(r.id),
        Record::Extended { id, .. }
        | Record::Committed { id, .. }
        | Record::Released { id, .. }
        | Record::Expired { id, .. } => *id = t(*id),
        _ => {}
    };
    let mut records = records;
    for r in &mut records {
        if let Record::Order(o) = r {
            // An order keeps its first reservation's tag; the hold it carries may be a later one.
            o.order.0 = ReservationId::from_parts(o.order.0.raw(), tag ^ 0xff).expect("valid");
            o.reservation.iter_mut().for_each(retag);
        } else {
            retag(r);
        }
    }
    records
}

#[test]
fn ids_with_tags_round_trip_as_version_2_and_others_stay_version_1() {
    let tag = 0x9e37_79b9_7f4a_7c15;
    let plain: Vec<Record> = sample().into_iter().chain(order_sample()).collect();
    for (record, before) in tagged(plain.clone(), tag).into_iter().zip(plain) {
        let mut out = Vec::new();
        encode(&record, &mut out);
        let names_an_id = record != before;
        assert_eq!(out[4], if names_an_id { 2 } else { 1 }, "{record:?}");
        assert_eq!(round_trip(&record), Ok(record.clone()));
        if names_an_id {
            // The tag is the id's: a record read without it names another reservation.
            let untagged = round_trip(&before).expect("decodes");
            assert_ne!(untagged, record);
        }
    }
}

#[test]
fn a_snapshot_keeps_every_ids_tag_and_a_version_4_one_reads_with_none() {
    use crate::engine::{EngineState, RememberedKey, ReservationState, ReservationView};
    let id = ReservationId::from_parts(0x0001_0000_0000_0007, 0xabcdef).expect("valid");
    let mut state = EngineState::default();
    state.skus.push((SkuId::new("tee-L").expect("valid"), crate::engine::Stock::default()));
    state.reservations.push(ReservationView {
        id,
        state: ReservationState::Active,
        items: vec![Item { sku: SkuId::new("tee-L").expect("valid"), qty: 1 }],
        created_at_ms: 1,
        expires_at_ms: 2,
        ended_at_ms: None,
        holder: None,
    });
    state.keys.push(RememberedKey {
        key: IdempotencyKey::new("k").expect("valid"),
        fingerprint: 1,
        id,
        expires_at_ms: 2,
        created_at_ms: 1,
    });
    let mut order = sample_order();
    order.id = crate::orders::OrderId(ReservationId::from_parts(order.id.0.raw(), 0x1234).expect("valid"));
    order.reservation = ReservationId::from_parts(order.reservation.raw(), 0x5678).expect("valid");
    state.orders.push(order);
    let bytes = encode_state(&state);
    let words = aligned(&bytes);
    let decoded = decode_state(&bytemuck::cast_slice::<u128, u8>(&words)[..bytes.len()]).expect("decodes");
    assert_eq!(decoded, state);

    let mut v4 = Vec::new();
    prefix(&mut v4, STATE_MAGIC, 4);
    let snap = SnapStateV4 { v3: snap_v3(&state), orders: orders::snap_orders(&state.orders, &[]) };
    v4.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(&snap).expect("serialises"));
    let words = aligned(&v4);
    let decoded = decode_state(&bytemuck::cast_slice::<u128, u8>(&words)[..v4.len()]).expect("decodes");
    assert_eq!(decoded.reservations[0].id, ReservationId::from_parts(id.raw(), 0).expect("valid"));
    assert_eq!(decoded.keys[0].id.tag(), 0);
    assert_eq!((decoded.orders[0].id.0.tag(), decoded.orders[0].reservation.tag()), (0, 0));
}

#[test]
fn cart_records_round_trip_with_their_holds_and_a_checkout_carrying_its_order_and_its_tags() {
    use crate::carts::{CartItem, CartRecord, CartStep, Ending, Hold};
    use crate::engine::{CartId, ReservedRecord};
    let cart = CartId::new("ann@example.com").expect("valid");
    let tee = SkuId::new("tee").expect("valid");
    let step =
        |step, inner| Record::Cart(Box::new(CartRecord { cart: cart.clone(), step, inner, at_ms: 42 }));
    let (old, new) = (ReservationId::new(3, 9, 0xfeed_beef), ReservationId::new(1, 12, u64::MAX - 5));
    let hold = Hold { id: new, expires_at_ms: 600_042, since_ms: 40 };
    let held = CartItem { sku: tee.clone(), qty: 3, unit_price: Some(1_500), hold: Some(hold) };
    let plain = CartItem { sku: tee.clone(), qty: 1, unit_price: None, hold: None };
    let reserved = Record::Reserved(ReservedRecord {
        id: new,
        items: vec![Item { sku: tee.clone(), qty: 3 }],
        created_at_ms: 42,
        expires_at_ms: 600_042,
        user: Some(UserId::new("ann@example.com").expect("valid")),
        sale: Some(SaleId::new("drop").expect("valid")),
        idempotency: None,
    });
    let renewed = vec![Record::Released { id: old, at_ms: 42 }, reserved.clone()];
    let placed = order_sample()[0].clone();
    let guest = CartId::new("sess-1").expect("valid");
    let records = [
        step(CartStep::ItemSet(held.clone()), renewed.clone()),
        step(CartStep::ItemSet(plain.clone()), Vec::new()),
        step(CartStep::ItemRemoved { sku: tee.clone() }, vec![Record::Expired { id: old, at_ms: 42 }]),
        step(CartStep::ItemMoved { from: guest.clone(), item: held.clone() }, renewed),
        step(CartStep::Merged { from: guest, items: vec![held, plain] }, Vec::new()),
        step(CartStep::Removed(Ending::Deleted), Vec::new()),
        step(CartStep::Removed(Ending::Expired), Vec::new()),
        step(CartStep::Removed(Ending::CheckedOut), vec![Record::Released { id: new, at_ms: 42 }, placed]),
        Record::CartHold { sale: SaleId::new("drop").expect("valid"), hold_ms: 600_000, at_ms: 42 },
    ];
    for record in records {
        assert_eq!(round_trip(&record), Ok(record));
    }
}
