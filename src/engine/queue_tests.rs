//! Unit tests of waiting rooms: order, the draw, stock-aware admission, replay and snapshots.

use super::*;

const T0: u64 = 1_700_000_000_000;
const OPENS: u64 = T0 + 10_000;

fn sale() -> SaleId {
    SaleId::new("noon").expect("valid")
}

fn user(i: usize) -> UserId {
    UserId::new(&format!("user-{i}")).expect("valid")
}

fn room(order: QueueOrder, admit_per_s: u32, max_active: u32) -> RoomConfig {
    RoomConfig {
        skus: vec![SkuId::new("tee").expect("valid")],
        opens_at_ms: OPENS,
        admit_per_s,
        max_active,
        session_ms: 60_000,
        order,
        seed: 42,
    }
}

/// An engine with `units` of the sale's SKU, a limit of 1, and its records.
fn setup(units: u64, config: &RoomConfig) -> (Engine, Vec<Record>) {
    let e = Engine::new(EngineConfig { shards: 4, ..EngineConfig::default() }).expect("valid");
    let mut log = Vec::new();
    e.set_stock(&SkuId::new("tee").expect("valid"), units, T0, &mut log).expect("stock");
    e.configure_sale(&sale(), 1, config, T0, &mut log).expect("configure");
    (e, log)
}

fn join(e: &Engine, log: &mut Vec<Record>, i: usize, at: u64) -> QueueView {
    match e.join_queue(&sale(), &user(i), at, log).expect("join") {
        Joined::Queued { view, .. } => view,
        Joined::SoldOut => panic!("sold out"),
    }
}

fn admitted(e: &Engine, i: usize) -> bool {
    matches!(e.queue_view("noon", user(i).as_str()).expect("joined").state, QueueState::Admitted { .. })
}

fn ahead(e: &Engine, i: usize) -> Option<u64> {
    match e.queue_view("noon", user(i).as_str()).expect("joined").state {
        QueueState::Waiting { ahead } => ahead,
        other => panic!("{other:?}"),
    }
}

fn buy(e: &Engine, log: &mut Vec<Record>, i: usize, now: u64) -> Result<ReservationId, ReserveError> {
    let req = ReserveRequest {
        items: vec![Item { sku: SkuId::new("tee").expect("valid"), qty: 1 }],
        ttl_ms: 60_000,
        user: Some(user(i)),
        sale: Some(sale()),
        idempotency_key: None,
    };
    e.reserve(&req, now, log).map(|r| r.id)
}

#[test]
fn fifo_admits_in_order_of_arrival_at_the_configured_rate() {
    let (e, mut log) = setup(1_000, &room(QueueOrder::Fifo, 100, 1_000));
    for i in 0..50 {
        assert_eq!(join(&e, &mut log, i, T0 + i as u64).state, QueueState::Waiting { ahead: Some(i as u64) });
    }
    assert_eq!(e.admit_due(OPENS - 1, &mut log)[0].admitted, 0, "closed before opens_at");
    e.admit_due(OPENS, &mut log);
    let tick = e.admit_due(OPENS + 100, &mut log);
    assert_eq!(tick[0].admitted, 10, "100/s for 100 ms");
    assert!((0..10).all(|i| admitted(&e, i)));
    assert_eq!(ahead(&e, 10), Some(0));
    assert_eq!(ahead(&e, 49), Some(39));
    e.admit_due(OPENS + 200, &mut log);
    assert!((0..20).all(|i| admitted(&e, i)) && !admitted(&e, 20));
}

#[test]
fn join_times_never_contradict_queue_order() {
    // A request that read the clock first but reached the queue second (it waited on the network or a
    // lock): it stands second, and its joined_at is not earlier than the first one's.
    let (e, mut log) = setup(10, &room(QueueOrder::Fifo, 10, 10));
    let first = join(&e, &mut log, 0, T0 + 500);
    let second = join(&e, &mut log, 1, T0 + 499);
    assert_eq!((first.arrival, second.arrival), (0, 1));
    assert_eq!(second.joined_at_ms, T0 + 500);
    assert!(matches!(log.last(), Some(Record::QueueJoined { at_ms, .. }) if *at_ms == T0 + 500));
    // A later clock is kept as it is.
    assert_eq!(join(&e, &mut log, 2, T0 + 700).joined_at_ms, T0 + 700);
}

#[test]
fn joining_twice_keeps_the_first_place_and_writes_nothing() {
    let (e, mut log) = setup(10, &room(QueueOrder::Fifo, 100, 100));
    join(&e, &mut log, 0, T0);
    join(&e, &mut log, 1, T0);
    let written = log.len();
    let again = e.join_queue(&sale(), &user(0), T0 + 5, &mut log).expect("join");
    assert!(
        matches!(again, Joined::Queued { again: true, view } if view.arrival == 0 && view.joined_at_ms == T0)
    );
    assert_eq!(log.len(), written);
}

#[test]
fn lottery_shuffles_those_who_joined_before_opening_and_only_them() {
    let (e, mut log) = setup(1_000, &room(QueueOrder::Lottery, 1_000, 10_000));
    for i in 0..200 {
        assert_eq!(join(&e, &mut log, i, T0 + i as u64).state, QueueState::Waiting { ahead: None });
    }
    e.admit_due(OPENS - 1, &mut log);
    assert_eq!(ahead(&e, 0), None, "no positions before the draw");
    // Opening draws the order (and admits nobody yet: no time has passed at the rate).
    e.admit_due(OPENS, &mut log);
    for i in 200..210 {
        join(&e, &mut log, i, OPENS + 1 + i as u64);
    }
    let mut drawn: Vec<u64> = (0..200).map(|i| ahead(&e, i).expect("placed")).collect();
    assert_ne!(drawn, (0..200).collect::<Vec<_>>(), "the draw is not the order of arrival");
    drawn.sort_unstable();
    assert_eq!(drawn, (0..200).collect::<Vec<_>>(), "the draw places every entrant once");
    let late: Vec<u64> = (200..210).map(|i| ahead(&e, i).expect("placed")).collect();
    assert_eq!(late, (200..210).collect::<Vec<_>>(), "later arrivals queue behind, in order");
}

#[test]
fn joiners_between_opens_at_and_the_draw_queue_behind_the_entrants() {
    let (e, mut log) = setup(1_000, &room(QueueOrder::Lottery, 1_000, 10_000));
    for i in 1..=20 {
        join(&e, &mut log, i, T0 + i as u64);
    }
    // After opens_at, before the tick that draws: not in the draw.
    join(&e, &mut log, 0, OPENS + 5);
    e.admit_due(OPENS + 10, &mut log);
    assert_eq!(ahead(&e, 0), Some(20));
    let mut drawn: Vec<u64> = (1..=20).map(|i| ahead(&e, i).expect("placed")).collect();
    drawn.sort_unstable();
    assert_eq!(drawn, (0..20).collect::<Vec<_>>());
}

#[test]
fn admission_leaves_no_more_shoppers_without_units_than_units_available() {
    let (e, mut log) = setup(5, &room(QueueOrder::Fifo, 1_000, 1_000));
    for i in 0..100 {
        join(&e, &mut log, i, T0);
    }
    e.admit_due(OPENS, &mut log);
    e.admit_due(OPENS + 1_000, &mut log);
    assert!((0..5).all(|i| admitted(&e, i)) && !admitted(&e, 5), "5 units: 5 shoppers");
    buy(&e, &mut log, 0, OPENS + 1_100).expect("reserve");
    e.admit_due(OPENS + 1_200, &mut log);
    assert!(!admitted(&e, 5), "4 units left, 4 admitted shoppers have not reserved yet");
    let room = e.room_view("noon").expect("room");
    assert_eq!((room.pending, room.active), (4, 4), "the buyer is at the limit of 1");
}

#[test]
fn max_active_caps_shoppers_shopping_at_once() {
    let (e, mut log) = setup(1_000, &room(QueueOrder::Fifo, 1_000, 3));
    for i in 0..10 {
        join(&e, &mut log, i, T0);
    }
    e.admit_due(OPENS, &mut log);
    e.admit_due(OPENS + 1_000, &mut log);
    assert!(admitted(&e, 2) && !admitted(&e, 3));
    buy(&e, &mut log, 0, OPENS + 1_001).expect("reserve");
    e.admit_due(OPENS + 1_002, &mut log);
    assert!(admitted(&e, 3) && !admitted(&e, 4), "a shopper at the limit frees a place");
    // Sessions end: their places free up too.
    e.admit_due(OPENS + 1_000 + 60_000, &mut log);
    e.admit_due(OPENS + 1_003 + 60_000, &mut log);
    assert!((4..7).all(|i| admitted(&e, i)));
}

#[test]
fn sold_out_only_when_nothing_can_come_back_and_expiry_reopens_admission() {
    let (e, mut log) = setup(1, &room(QueueOrder::Fifo, 1_000, 1_000));
    for i in 0..3 {
        join(&e, &mut log, i, T0);
    }
    e.admit_due(OPENS, &mut log);
    e.admit_due(OPENS + 1_000, &mut log);
    let id = buy(&e, &mut log, 0, OPENS + 1_000).expect("reserve");
    let tick = e.admit_due(OPENS + 1_100, &mut log);
    assert!(!tick[0].sold_out_now && !admitted(&e, 1), "a unit is held: it may come back");
    assert_eq!(ahead(&e, 1), Some(0));
    // The hold expires: the unit is back, the next in line is admitted.
    e.expire_due(OPENS + 1_000 + 60_000, &mut log);
    e.admit_due(OPENS + 61_100, &mut log);
    assert!(admitted(&e, 1));
    let id2 = buy(&e, &mut log, 1, OPENS + 61_200).expect("reserve");
    e.commit(id2, OPENS + 61_300, &mut log).expect("commit");
    let tick = e.admit_due(OPENS + 61_400, &mut log);
    assert!(tick[0].sold_out_now);
    assert_eq!(e.queue_view("noon", user(2).as_str()).expect("joined").state, QueueState::SoldOut);
    assert!(!e.admit_due(OPENS + 61_500, &mut log)[0].sold_out_now, "announced once");
    assert_eq!(e.join_queue(&sale(), &user(9), OPENS + 61_600, &mut log), Ok(Joined::SoldOut));
    let _ = id;
}

#[test]
fn replaying_the_records_rebuilds_the_rooms_and_a_snapshot_holds_them() {
    let (e, mut log) = setup(20, &room(QueueOrder::Lottery, 500, 100));
    for i in 0..60 {
        join(&e, &mut log, i, T0 + i as u64);
    }
    e.admit_due(OPENS, &mut log);
    for i in 60..70 {
        join(&e, &mut log, i, OPENS + i as u64);
    }
    e.admit_due(OPENS + 20, &mut log);
    e.admit_due(OPENS + 40, &mut log);
    let views = |e: &Engine| (0..70).map(|i| e.queue_view("noon", user(i).as_str())).collect::<Vec<_>>();

    let replayed = Engine::new(EngineConfig { shards: 4, ..EngineConfig::default() }).expect("valid");
    for record in &log {
        replayed.apply(record).expect("applies");
    }
    assert_eq!(replayed.export(OPENS), e.export(OPENS));
    assert_eq!(views(&replayed), views(&e));

    let state = e.export(OPENS);
    let bytes = crate::durable::codec::encode_state(&state);
    let mut words = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
    let decoded =
        crate::durable::codec::decode_state(&bytemuck::cast_slice(&words)[..bytes.len()]).expect("decodes");
    assert_eq!(decoded, state);
    let restored =
        Engine::restore(EngineConfig { shards: 4, ..EngineConfig::default() }, &decoded).expect("restores");
    assert_eq!(views(&restored), views(&e));
}

#[test]
fn replay_refuses_records_that_do_not_fit() {
    let (e, mut log) = setup(20, &room(QueueOrder::Fifo, 500, 100));
    join(&e, &mut log, 0, T0);
    let twice = Record::QueueJoined { sale: sale(), user: user(0), at_ms: T0 };
    assert!(e.apply(&twice).is_err());
    let too_many = Record::QueueAdmitted { sale: sale(), count: 2, at_ms: OPENS };
    assert!(e.apply(&too_many).is_err(), "not opened");
    e.apply(&Record::QueueOpened { sale: sale(), at_ms: OPENS }).expect("opens");
    assert!(e.apply(&too_many).is_err(), "one waiting");
    let elsewhere =
        Record::QueueJoined { sale: SaleId::new("other").expect("valid"), user: user(1), at_ms: T0 };
    assert!(e.apply(&elsewhere).is_err());
}

#[test]
fn room_settings_are_checked_and_order_and_opening_lock() {
    let (e, mut log) = setup(20, &room(QueueOrder::Fifo, 500, 100));
    let bad = RoomConfig { admit_per_s: 0, ..room(QueueOrder::Fifo, 500, 100) };
    assert!(matches!(e.configure_sale(&sale(), 1, &bad, T0, &mut log), Err(QueueError::Invalid(_))));
    join(&e, &mut log, 0, T0);
    let lottery = room(QueueOrder::Lottery, 500, 100);
    assert_eq!(
        e.configure_sale(&sale(), 1, &lottery, T0, &mut log),
        Err(QueueError::Locked { what: "order" })
    );
    let faster = RoomConfig { seed: 7, ..room(QueueOrder::Fifo, 900, 100) };
    assert_eq!(e.configure_sale(&sale(), 1, &faster, T0, &mut log).expect("changes").seed, 42, "seed kept");
    e.admit_due(OPENS, &mut log);
    let later = RoomConfig { opens_at_ms: OPENS + 1, ..room(QueueOrder::Fifo, 500, 100) };
    assert_eq!(
        e.configure_sale(&sale(), 1, &later, T0, &mut log),
        Err(QueueError::Locked { what: "opens_at" })
    );
}
