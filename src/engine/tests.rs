//! Unit tests: every transition and every error of the engine, one behaviour each.

use super::*;
use crate::limits::{ITEMS_PER_RESERVATION_MAX, ON_HAND_MAX, QTY_PER_ITEM_MAX};

const T0: u64 = 1_700_000_000_000;
const TTL: u64 = 60_000;

fn sku(s: &str) -> SkuId {
    SkuId::new(s).expect("valid sku")
}

fn engine_with(config: EngineConfig, stock: &[(&str, u64)]) -> Engine {
    let engine = Engine::new(config).expect("valid config");
    for (name, n) in stock {
        engine.set_stock(&sku(name), *n, T0, &mut ()).expect("set stock");
    }
    engine
}

fn engine(stock: &[(&str, u64)]) -> Engine {
    engine_with(EngineConfig { shards: 4, ..EngineConfig::default() }, stock)
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn request(items: &[(&str, u32)]) -> ReserveRequest {
    ReserveRequest {
        items: items.iter().map(|(s, qty)| Item { sku: sku(s), qty: *qty }).collect(),
        ttl_ms: TTL,
        user: None,
        sale: None,
        idempotency_key: None,
    }
}

fn keyed(items: &[(&str, u32)], key: &str) -> ReserveRequest {
    ReserveRequest { idempotency_key: Some(IdempotencyKey::new(key).expect("valid key")), ..request(items) }
}

fn in_sale(items: &[(&str, u32)], sale: &str, user: &str) -> ReserveRequest {
    ReserveRequest {
        sale: Some(SaleId::new(sale).expect("valid sale")),
        user: Some(UserId::new(user).expect("valid user")),
        ..request(items)
    }
}

fn stock(e: &Engine, name: &str) -> (u64, u64, u64, u64) {
    let s = e.stock(name).expect("sku exists");
    (s.on_hand, s.available, s.reserved, s.sold)
}

fn reserve(e: &Engine, items: &[(&str, u32)]) -> ReservationId {
    e.reserve(&request(items), T0, &mut ()).expect("reserve").id
}

#[test]
fn reserve_takes_units_from_available_into_reserved() {
    let e = engine(&[("a", 10)]);
    let r = e.reserve(&request(&[("a", 3)]), T0, &mut ()).unwrap();
    assert_eq!(r.expires_at_ms, T0 + TTL);
    assert!(!r.replayed);
    assert_eq!(stock(&e, "a"), (10, 7, 3, 0));
    let view = e.reservation(r.id, T0).unwrap();
    assert_eq!(view.state, ReservationState::Active);
    assert_eq!(view.items, vec![Item { sku: sku("a"), qty: 3 }]);
}

#[test]
fn reserve_rejects_when_sold_out_and_names_the_item() {
    let e = engine(&[("a", 5), ("b", 1)]);
    reserve(&e, &[("b", 1)]);
    let err = e.reserve(&request(&[("a", 1), ("b", 1)]), T0, &mut ()).unwrap_err();
    assert_eq!(err, ReserveError::InsufficientStock { item: 1, available: 0 });
    assert_eq!(stock(&e, "a"), (5, 5, 0, 0), "all or nothing: a untouched");
}

#[test]
fn reserve_of_the_last_units_succeeds_and_the_next_fails() {
    let e = engine(&[("a", 2)]);
    reserve(&e, &[("a", 2)]);
    let err = e.reserve(&request(&[("a", 1)]), T0, &mut ()).unwrap_err();
    assert_eq!(err, ReserveError::InsufficientStock { item: 0, available: 0 });
}

#[test]
fn multi_sku_reserve_across_shards_is_all_or_nothing() {
    let names: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    let stock_list: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let e = engine(&stock_list);
    let items: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let id = reserve(&e, &items);
    for n in &names {
        assert_eq!(stock(&e, n), (1, 0, 1, 0));
    }
    e.release(id, T0 + 1, &mut ()).unwrap();
    for n in &names {
        assert_eq!(stock(&e, n), (1, 1, 0, 0));
    }
    e.check_consistency().unwrap();
}

#[test]
fn reserve_refuses_malformed_requests_and_changes_nothing() {
    let e = engine(&[("a", 10), ("b", 10)]);
    let before = e.export(T0);
    let invalid = |req: ReserveRequest| match e.reserve(&req, T0, &mut ()) {
        Err(ReserveError::Invalid(why)) => why,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(invalid(request(&[])), RequestError::NoItems);
    assert_eq!(invalid(request(&[("a", 0)])), RequestError::ZeroQuantity { item: 0 });
    assert_eq!(
        invalid(request(&[("a", QTY_PER_ITEM_MAX + 1)])),
        RequestError::QuantityTooLarge { item: 0, max: QTY_PER_ITEM_MAX }
    );
    assert_eq!(invalid(request(&[("a", 1), ("b", 1), ("a", 1)])), RequestError::DuplicateSku { item: 2 });
    let many: Vec<String> = (0..=ITEMS_PER_RESERVATION_MAX).map(|i| format!("x{i}")).collect();
    let many: Vec<(&str, u32)> = many.iter().map(|n| (n.as_str(), 1)).collect();
    assert_eq!(invalid(request(&many)), RequestError::TooManyItems { max: ITEMS_PER_RESERVATION_MAX });
    let (min, max) = (e.config().ttl_ms_min, e.config().ttl_ms_max);
    for ttl_ms in [0, min - 1, max + 1, u64::MAX] {
        let req = ReserveRequest { ttl_ms, ..request(&[("a", 1)]) };
        assert_eq!(invalid(req), RequestError::TtlOutOfRange { min, max });
    }
    let req = ReserveRequest { sale: Some(SaleId::new("s").unwrap()), ..request(&[("a", 1)]) };
    assert_eq!(invalid(req), RequestError::SaleWithoutUser);
    assert_eq!(e.export(T0), before);
}

#[test]
fn reserve_of_an_unknown_sku_names_it() {
    let e = engine(&[("a", 10)]);
    let err = e.reserve(&request(&[("a", 1), ("nope", 1)]), T0, &mut ()).unwrap_err();
    assert_eq!(err, ReserveError::UnknownSku { item: 1 });
    assert_eq!(stock(&e, "a"), (10, 10, 0, 0));
}

#[test]
fn commit_sells_and_is_idempotent() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 4)]);
    e.commit(id, T0 + 1, &mut ()).unwrap();
    assert_eq!(stock(&e, "a"), (10, 6, 0, 4));
    e.commit(id, T0 + 2, &mut ()).unwrap();
    assert_eq!(stock(&e, "a"), (10, 6, 0, 4), "a second commit changes nothing");
    assert_eq!(e.release(id, T0 + 3, &mut ()), Err(ReservationError::Committed));
    let view = e.reservation(id, T0 + 3).unwrap();
    assert_eq!((view.state, view.ended_at_ms), (ReservationState::Committed, Some(T0 + 1)));
}

#[test]
fn release_returns_units_and_is_idempotent() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 4)]);
    e.release(id, T0 + 1, &mut ()).unwrap();
    assert_eq!(stock(&e, "a"), (10, 10, 0, 0));
    e.release(id, T0 + 2, &mut ()).unwrap();
    assert_eq!(e.commit(id, T0 + 3, &mut ()), Err(ReservationError::Released));
    assert_eq!(stock(&e, "a"), (10, 10, 0, 0));
}

#[test]
fn commit_after_the_deadline_expires_it_and_fails() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 4)]);
    let mut log = Vec::new();
    assert_eq!(e.commit(id, T0 + TTL, &mut log), Err(ReservationError::Expired));
    assert_eq!(log, vec![Record::Expired { id, at_ms: T0 + TTL }]);
    assert_eq!(stock(&e, "a"), (10, 10, 0, 0));
    assert_eq!(e.reservation(id, T0 + TTL).unwrap().state, ReservationState::Expired);
    assert_eq!(e.commit(id, T0 + TTL, &mut ()), Err(ReservationError::Expired));
    assert_eq!(e.release(id, T0 + TTL, &mut ()), Err(ReservationError::Expired));
}

#[test]
fn commit_one_millisecond_before_the_deadline_succeeds() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 1)]);
    e.commit(id, T0 + TTL - 1, &mut ()).unwrap();
    assert_eq!(e.expire_due(T0 + TTL, &mut ()), vec![]);
    assert_eq!(stock(&e, "a"), (10, 9, 0, 1));
}

#[test]
fn expire_due_returns_exactly_what_is_due() {
    let e = engine(&[("a", 10)]);
    let first = reserve(&e, &[("a", 1)]);
    let req = ReserveRequest { ttl_ms: 2 * TTL, ..request(&[("a", 2)]) };
    let second = e.reserve(&req, T0, &mut ()).unwrap().id;
    assert_eq!(e.expire_due(T0 + TTL - 1, &mut ()), vec![]);
    assert_eq!(e.expire_due(T0 + TTL, &mut ()), vec![first]);
    assert_eq!(stock(&e, "a"), (10, 8, 2, 0));
    assert_eq!(e.expire_due(T0 + TTL, &mut ()), vec![], "expiring twice does nothing");
    assert_eq!(e.expire_due(T0 + 3 * TTL, &mut ()), vec![second]);
    assert_eq!(stock(&e, "a"), (10, 10, 0, 0));
    assert_eq!(e.active_reservations(), 0);
}

#[test]
fn extend_moves_the_deadline_within_the_hold_maximum() {
    let config = EngineConfig { shards: 2, ttl_ms_max: TTL, hold_ms_max: 3 * TTL, ..EngineConfig::default() };
    let e = engine_with(config, &[("a", 10)]);
    let id = reserve(&e, &[("a", 1)]);
    let mut log = Vec::new();
    assert_eq!(e.extend(id, TTL, T0 + TTL / 2, &mut log), Ok(T0 + TTL + TTL / 2));
    assert_eq!(e.extend(id, TTL, T0 + 2 * TTL + 1, &mut log), Err(ReservationError::Expired));
    let id = e.reserve(&request(&[("a", 1)]), T0 + 10, &mut ()).unwrap().id;
    // Repeated extends stop at created_at + hold_ms_max.
    let mut deadline = 0;
    for step in 1..=5 {
        deadline = e.extend(id, TTL, T0 + 10 + step * (TTL / 2), &mut ()).unwrap();
    }
    assert_eq!(deadline, T0 + 10 + 3 * TTL);
    // A shorter ttl never pulls the deadline in.
    assert_eq!(e.extend(id, e.config().ttl_ms_min, T0 + 20, &mut ()), Ok(deadline));
    assert_eq!(e.expire_due(deadline - 1, &mut ()), vec![]);
    assert_eq!(e.expire_due(deadline, &mut ()), vec![id]);
}

#[test]
fn extended_reservation_does_not_expire_at_its_old_deadline() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 1)]);
    e.extend(id, 2 * TTL, T0 + 1, &mut ()).unwrap();
    assert_eq!(e.expire_due(T0 + TTL, &mut ()), vec![]);
    assert_eq!(e.reservation(id, T0 + TTL).unwrap().state, ReservationState::Active);
    assert_eq!(e.expire_due(T0 + 1 + 2 * TTL, &mut ()), vec![id]);
}

#[test]
fn extend_refuses_ended_reservations_and_bad_ttls() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 1)]);
    let bad = e.extend(id, 0, T0, &mut ());
    assert!(matches!(bad, Err(ReservationError::Invalid(RequestError::TtlOutOfRange { .. }))));
    e.commit(id, T0, &mut ()).unwrap();
    assert_eq!(e.extend(id, TTL, T0, &mut ()), Err(ReservationError::Committed));
    let missing = ReservationId::parse("rsv_00000000000000ff").unwrap();
    assert_eq!(e.extend(missing, TTL, T0, &mut ()), Err(ReservationError::NotFound));
    assert_eq!(e.commit(missing, T0, &mut ()), Err(ReservationError::NotFound));
    assert_eq!(e.release(missing, T0, &mut ()), Err(ReservationError::NotFound));
}

#[test]
fn ended_reservations_are_forgotten_after_retention() {
    let config = EngineConfig { shards: 2, ended_retention_ms: 1_000, ..EngineConfig::default() };
    let e = engine_with(config, &[("a", 10)]);
    let id = reserve(&e, &[("a", 1)]);
    e.commit(id, T0 + 5, &mut ()).unwrap();
    assert!(e.reservation(id, T0 + 1_004).is_some());
    assert!(e.reservation(id, T0 + 1_005).is_none(), "logically gone at once");
    assert_eq!(e.commit(id, T0 + 1_005, &mut ()), Err(ReservationError::NotFound));
    e.expire_due(T0 + 1_005, &mut ());
    assert!(e.shards.iter().all(|s| s.lock().reservations.is_empty()), "and physically on the next tick");
    assert_eq!(stock(&e, "a"), (10, 9, 0, 1), "the sale stays sold");
}

#[test]
fn idempotent_repeat_returns_the_original_reservation() {
    let e = engine(&[("a", 1)]);
    let first = e.reserve(&keyed(&[("a", 1)], "k1"), T0, &mut ()).unwrap();
    // Sold out now, and still the repeat gets its reservation back (the lock-free path).
    let again = e.reserve(&keyed(&[("a", 1)], "k1"), T0 + 5, &mut ()).unwrap();
    assert_eq!((again.id, again.expires_at_ms, again.replayed), (first.id, first.expires_at_ms, true));
    assert_eq!(stock(&e, "a"), (1, 0, 1, 0));
    // After a commit, the repeat still answers with the same outcome.
    e.commit(first.id, T0 + 6, &mut ()).unwrap();
    assert_eq!(e.reserve(&keyed(&[("a", 1)], "k1"), T0 + 7, &mut ()).unwrap().id, first.id);
}

#[test]
fn idempotency_key_with_a_different_request_conflicts() {
    let e = engine(&[("a", 10)]);
    e.reserve(&keyed(&[("a", 1)], "k1"), T0, &mut ()).unwrap();
    let err = e.reserve(&keyed(&[("a", 2)], "k1"), T0, &mut ()).unwrap_err();
    assert_eq!(err, ReserveError::IdempotencyConflict);
    let other_ttl = ReserveRequest { ttl_ms: TTL + 1, ..keyed(&[("a", 1)], "k1") };
    assert_eq!(e.reserve(&other_ttl, T0, &mut ()), Err(ReserveError::IdempotencyConflict));
    assert_eq!(stock(&e, "a"), (10, 9, 1, 0));
}

#[test]
fn refused_keyed_reserve_is_not_remembered() {
    let e = engine(&[("a", 0)]);
    let err = e.reserve(&keyed(&[("a", 1)], "k1"), T0, &mut ()).unwrap_err();
    assert!(matches!(err, ReserveError::InsufficientStock { .. }));
    e.set_stock(&sku("a"), 1, T0, &mut ()).unwrap();
    assert!(e.reserve(&keyed(&[("a", 1)], "k1"), T0, &mut ()).is_ok(), "a refusal changed nothing");
}

#[test]
fn idempotency_keys_expire_after_the_window_and_the_table_is_bounded() {
    let config = EngineConfig {
        shards: 2,
        idempotency_window_ms: 1_000,
        idempotency_keys_max: 1,
        ..EngineConfig::default()
    };
    let e = engine_with(config, &[("a", 10)]);
    let first = e.reserve(&keyed(&[("a", 1)], "k1"), T0, &mut ()).unwrap();
    assert_eq!(
        e.reserve(&keyed(&[("a", 1)], "k2"), T0 + 1, &mut ()),
        Err(ReserveError::IdempotencyTableFull)
    );
    // Past the window k1 is forgotten: the same key makes a new reservation, and there is room again.
    let later = e.reserve(&keyed(&[("a", 1)], "k1"), T0 + 1_000, &mut ()).unwrap();
    assert_ne!(later.id, first.id);
    assert!(!later.replayed);
    assert_eq!(stock(&e, "a"), (10, 8, 2, 0));
}

#[test]
fn a_restored_key_table_forgets_keys_oldest_first() {
    let config = EngineConfig {
        shards: 1,
        idempotency_keys_max: 128,
        idempotency_window_ms: 1_000,
        ..EngineConfig::default()
    };
    let e = engine_with(config.clone(), &[("a", 100)]);
    // Three keys of one key shard (two fit in it), the newer of the first two sorting first.
    let names: Vec<String> = (0..1_000).map(|i| format!("k{i:03}")).collect();
    let shard_of = |n: &str| e.keys.shard(&IdempotencyKey::new(n).unwrap()) as *const _;
    let same: Vec<&String> = names.iter().filter(|n| shard_of(n) == shard_of(&names[0])).take(3).collect();
    let (newer, older, third) = (same[0], same[1], same[2]);
    e.reserve(&keyed(&[("a", 1)], older), T0, &mut ()).unwrap();
    e.reserve(&keyed(&[("a", 1)], newer), T0 + 500, &mut ()).unwrap();
    let restored = Engine::restore(config, &e.export(T0 + 500)).unwrap();
    // Past the older key's window only: it makes room for the third.
    restored.reserve(&keyed(&[("a", 1)], third), T0 + 1_200, &mut ()).expect("the aged-out key made room");
}

#[test]
fn per_user_limit_counts_held_and_bought_units() {
    let e = engine(&[("a", 100), ("b", 100)]);
    let sale = SaleId::new("noon").unwrap();
    e.set_sale(&sale, 3, &[sku("a"), sku("b")], T0, &mut ()).unwrap();
    let first = e.reserve(&in_sale(&[("a", 2)], "noon", "u1"), T0, &mut ()).unwrap().id;
    let err = e.reserve(&in_sale(&[("b", 2)], "noon", "u1"), T0, &mut ()).unwrap_err();
    assert_eq!(err, ReserveError::LimitExceeded { limit: 3, held: 2 });
    e.reserve(&in_sale(&[("b", 3)], "noon", "u2"), T0, &mut ()).expect("another user has their own");
    e.commit(first, T0 + 1, &mut ()).unwrap();
    assert_eq!(
        e.reserve(&in_sale(&[("b", 2)], "noon", "u1"), T0 + 2, &mut ()),
        Err(ReserveError::LimitExceeded { limit: 3, held: 2 }),
        "bought units still count"
    );
    e.reserve(&in_sale(&[("b", 1)], "noon", "u1"), T0 + 2, &mut ()).expect("exactly at the limit");
}

#[test]
fn a_sales_sku_counts_against_it_whether_or_not_the_reserve_names_it() {
    let e = engine(&[("hot", 100), ("cold", 100), ("tee", 100)]);
    let (gated, big) = (SaleId::new("gated").unwrap(), SaleId::new("big").unwrap());
    e.set_sale(&gated, 1, &[sku("hot")], T0, &mut ()).unwrap();
    e.set_sale(&big, 1_000, &[sku("tee")], T0, &mut ()).unwrap();
    let unnamed = |items: &[(&str, u32)]| ReserveRequest { user: Some(user("u1")), ..request(items) };
    e.reserve(&unnamed(&[("hot", 1)]), T0, &mut ()).expect("one unit, within the limit");
    assert_eq!(
        e.reserve(&unnamed(&[("hot", 1)]), T0, &mut ()),
        Err(ReserveError::LimitExceeded { limit: 1, held: 1 }),
        "leaving out sale_id does not skip the limit"
    );
    assert_eq!(e.held(&gated, &user("u1")), 1);
    assert_eq!(
        e.reserve(&in_sale(&[("hot", 1)], "big", "u2"), T0, &mut ()),
        Err(ReserveError::SaleMismatch { item: 0 })
    );
    assert_eq!(
        e.reserve(&in_sale(&[("cold", 1)], "big", "u2"), T0, &mut ()),
        Err(ReserveError::SaleMismatch { item: 0 })
    );
    assert_eq!(
        e.reserve(&unnamed(&[("cold", 1), ("hot", 1)]), T0, &mut ()),
        Err(ReserveError::SaleMismatch { item: 1 }),
        "a reserve's SKUs are all in one sale or in none"
    );
    assert_eq!(
        e.reserve(&request(&[("hot", 1)]), T0, &mut ()),
        Err(ReserveError::Invalid(RequestError::SaleWithoutUser))
    );
    assert_eq!(
        e.reserve(&in_sale(&[("cold", 1)], "nope", "u2"), T0, &mut ()),
        Err(ReserveError::UnknownSale)
    );
    e.reserve(&request(&[("cold", 1)]), T0, &mut ()).expect("a SKU in no sale needs no user");
    assert_eq!(stock(&e, "hot"), (100, 99, 1, 0));
}

#[test]
fn a_sku_is_in_one_sale_at_a_time() {
    let e = engine(&[("hot", 100), ("tee", 100)]);
    let (a, b) = (SaleId::new("a").unwrap(), SaleId::new("b").unwrap());
    e.set_sale(&a, 1, &[sku("hot")], T0, &mut ()).unwrap();
    assert_eq!(
        e.set_sale(&b, 1, &[sku("tee"), sku("hot")], T0, &mut ()),
        Err(QueueError::SkuInOtherSale { index: 1 })
    );
    assert_eq!(e.set_sale(&b, 1, &[sku("nope")], T0, &mut ()), Err(QueueError::UnknownSku { index: 0 }));
    e.set_sale(&a, 1, &[sku("tee")], T0, &mut ()).expect("a lets hot go");
    e.set_sale(&b, 1, &[sku("hot")], T0, &mut ()).expect("now b may take it");
    assert_eq!(e.sale_of_sku("hot"), Some(b.clone()));
    assert_eq!(e.sale_skus("a"), Some(vec![sku("tee")]));
    let state = e.export(T0);
    assert_eq!(state.sale_skus, vec![(a, vec![sku("tee")]), (b, vec![sku("hot")])]);
    let restored = Engine::restore(e.config().clone(), &state).unwrap();
    assert_eq!(restored.export(T0), state);
    assert_eq!(restored.sale_of_sku("hot"), Some(SaleId::new("b").unwrap()));
}

#[test]
fn released_and_expired_units_give_the_allowance_back() {
    let e = engine(&[("a", 100)]);
    e.set_sale(&SaleId::new("noon").unwrap(), 2, &[sku("a")], T0, &mut ()).unwrap();
    let r = e.reserve(&in_sale(&[("a", 2)], "noon", "u1"), T0, &mut ()).unwrap().id;
    e.release(r, T0 + 1, &mut ()).unwrap();
    let r = e.reserve(&in_sale(&[("a", 2)], "noon", "u1"), T0 + 2, &mut ()).unwrap().id;
    assert_eq!(e.expire_due(T0 + 2 + TTL, &mut ()), vec![r]);
    e.reserve(&in_sale(&[("a", 2)], "noon", "u1"), T0 + 2 + TTL, &mut ()).expect("allowance is back");
    assert_eq!(e.export(T0).counters.len(), 1);
}

#[test]
fn reserve_in_an_unknown_sale_fails() {
    let e = engine(&[("a", 10)]);
    assert_eq!(e.reserve(&in_sale(&[("a", 1)], "nope", "u1"), T0, &mut ()), Err(ReserveError::UnknownSale));
    assert_eq!(stock(&e, "a"), (10, 10, 0, 0));
}

#[test]
fn sale_limit_must_be_in_range() {
    let e = engine(&[]);
    let sale = SaleId::new("noon").unwrap();
    let out = Err(QueueError::Invalid(RequestError::PerUserLimitOutOfRange));
    assert_eq!(e.set_sale(&sale, 0, &[], T0, &mut ()), out);
    assert_eq!(e.set_sale(&sale, u32::MAX, &[], T0, &mut ()), out);
    assert_eq!(e.sale_limit("noon"), None);
}

#[test]
fn set_stock_creates_and_resets_but_never_below_held() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 4)]);
    e.commit(id, T0, &mut ()).unwrap();
    reserve(&e, &[("a", 3)]);
    assert_eq!(e.set_stock(&sku("a"), 6, T0, &mut ()), Err(StockError::BelowHeld { held: 7 }));
    assert_eq!(e.set_stock(&sku("a"), 7, T0, &mut ()).unwrap().available, 0);
    assert_eq!(e.set_stock(&sku("a"), 20, T0, &mut ()).unwrap().available, 13);
    let out = Err(StockError::Invalid(RequestError::StockOutOfRange));
    assert_eq!(e.set_stock(&sku("a"), ON_HAND_MAX + 1, T0, &mut ()), out);
    assert_eq!(stock(&e, "a"), (20, 13, 3, 4));
}

#[test]
fn adjust_restocks_and_shrinks_only_what_is_available() {
    let e = engine(&[("a", 10)]);
    reserve(&e, &[("a", 4)]);
    let why = Reason::new("cycle count").unwrap();
    assert_eq!(e.adjust_stock(&sku("a"), 5, &why, T0, &mut ()).unwrap().available, 11);
    assert_eq!(e.adjust_stock(&sku("a"), -11, &why, T0, &mut ()).unwrap().available, 0);
    assert_eq!(e.adjust_stock(&sku("a"), -1, &why, T0, &mut ()), Err(StockError::BelowHeld { held: 4 }));
    assert_eq!(
        e.adjust_stock(&sku("a"), i64::MIN, &why, T0, &mut ()),
        Err(StockError::Invalid(RequestError::StockOutOfRange))
    );
    let out = Err(StockError::Invalid(RequestError::StockOutOfRange));
    assert_eq!(e.adjust_stock(&sku("a"), 0, &why, T0, &mut ()), out);
    let above = Err(StockError::AboveMax { max: ON_HAND_MAX });
    assert_eq!(e.adjust_stock(&sku("a"), ON_HAND_MAX as i64, &why, T0, &mut ()), above);
    assert_eq!(e.adjust_stock(&sku("zz"), 1, &why, T0, &mut ()), Err(StockError::UnknownSku));
    assert_eq!(stock(&e, "a"), (4, 0, 4, 0));
}

#[test]
fn shard_full_refuses_new_reservations() {
    let config = EngineConfig { shards: 1, active_per_shard_max: 2, ..EngineConfig::default() };
    let e = engine_with(config, &[("a", 10)]);
    reserve(&e, &[("a", 1)]);
    let id = reserve(&e, &[("a", 1)]);
    assert_eq!(e.reserve(&request(&[("a", 1)]), T0, &mut ()), Err(ReserveError::ShardFull));
    e.release(id, T0, &mut ()).unwrap();
    reserve(&e, &[("a", 1)]);
}

/// A sink that refuses every record: the log is full or broken.
struct Refusing;
impl RecordSink for Refusing {
    fn append(&mut self, _: &Record) -> Result<(), SinkRefused> {
        Err(SinkRefused)
    }
}

#[test]
fn a_refused_record_changes_nothing() {
    let e = engine(&[("a", 10)]);
    let id = reserve(&e, &[("a", 1)]);
    let key_req = keyed(&[("a", 1)], "k");
    let before = e.export(T0);
    assert_eq!(e.reserve(&key_req, T0, &mut Refusing), Err(ReserveError::LogRefused));
    assert_eq!(e.commit(id, T0, &mut Refusing), Err(ReservationError::LogRefused));
    assert_eq!(e.release(id, T0, &mut Refusing), Err(ReservationError::LogRefused));
    assert_eq!(e.extend(id, 2 * TTL, T0, &mut Refusing), Err(ReservationError::LogRefused));
    assert_eq!(e.set_stock(&sku("a"), 3, T0, &mut Refusing), Err(StockError::LogRefused));
    assert_eq!(e.set_stock(&sku("new"), 3, T0, &mut Refusing), Err(StockError::LogRefused));
    let why = Reason::default();
    assert_eq!(e.adjust_stock(&sku("a"), 3, &why, T0, &mut Refusing), Err(StockError::LogRefused));
    let sale = SaleId::new("s").unwrap();
    assert_eq!(e.set_sale(&sale, 3, &[sku("a")], T0, &mut Refusing), Err(QueueError::LogRefused));
    assert_eq!(e.expire_due(T0 + TTL, &mut Refusing), vec![]);
    assert_eq!(e.export(T0), before);
    assert!(e.stock("new").is_none());
    // The refused expiry is retried on the next tick.
    assert_eq!(e.expire_due(T0 + TTL, &mut ()), vec![id]);
}

#[test]
fn records_replayed_in_order_reproduce_the_state() {
    let e = engine(&[]);
    let mut log = Vec::new();
    let now = T0;
    e.set_stock(&sku("a"), 10, now, &mut log).unwrap();
    e.set_stock(&sku("b"), 5, now, &mut log).unwrap();
    let r1 = e.reserve(&keyed(&[("a", 2), ("b", 1)], "k1"), now, &mut log).unwrap().id;
    e.set_sale(&SaleId::new("noon").unwrap(), 4, &[sku("a")], now, &mut log).unwrap();
    let r2 = e.reserve(&in_sale(&[("a", 3)], "noon", "u1"), now, &mut log).unwrap().id;
    let r3 = e.reserve(&request(&[("b", 2)]), now, &mut log).unwrap().id;
    e.adjust_stock(&sku("a"), 7, &Reason::new("restock").unwrap(), now + 1, &mut log).unwrap();
    e.commit(r1, now + 2, &mut log).unwrap();
    e.extend(r3, TTL, now + 3, &mut log).unwrap();
    e.expire_due(now + TTL, &mut log);
    e.release(r3, now + 4, &mut log).ok();
    let _ = r2;
    let replayed = engine(&[]);
    for record in &log {
        replayed.apply(record).unwrap();
    }
    assert_eq!(replayed.export(now + TTL), e.export(now + TTL));
    // And the replayed engine issues fresh ids, not old ones.
    let next = replayed.reserve(&request(&[("b", 1)]), now + TTL, &mut ()).unwrap().id;
    assert!(![r1, r2, r3].contains(&next));
}

#[test]
fn replay_refuses_a_record_that_does_not_fit() {
    let e = engine(&[("a", 1)]);
    let mut log = Vec::new();
    let id = e.reserve(&request(&[("a", 1)]), T0, &mut log).unwrap().id;
    let oversell = log[0].clone();
    assert!(e.apply(&oversell).is_err(), "the same reservation twice");
    let fresh = engine(&[("a", 0)]);
    assert!(fresh.apply(&oversell).unwrap_err().detail.contains("oversells"));
    assert!(fresh.apply(&Record::Committed { id, at_ms: T0 }).is_err());
    let early = Record::Expired { id, at_ms: T0 + 1 };
    e.apply(&early).unwrap_err();
    assert_eq!(stock(&e, "a"), (1, 0, 1, 0));
}

#[test]
fn replay_with_fewer_shards_still_finds_and_ends_reservations() {
    let many = engine_with(EngineConfig { shards: 8, ..EngineConfig::default() }, &[]);
    let mut log = Vec::new();
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    for n in &names {
        many.set_stock(&sku(n), 5, T0, &mut log).unwrap();
    }
    let mut ids = Vec::new();
    for pair in names.chunks(2) {
        ids.push(many.reserve(&request(&[(&pair[1], 1), (&pair[0], 1)]), T0, &mut log).unwrap().id);
    }
    let few = engine_with(EngineConfig { shards: 3, ..EngineConfig::default() }, &[]);
    for record in &log {
        few.apply(record).unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            few.commit(*id, T0 + 1, &mut ()).unwrap();
        } else {
            few.release(*id, T0 + 1, &mut ()).unwrap();
        }
    }
    few.check_consistency().unwrap();
    let fresh = few.reserve(&request(&[("s0", 1)]), T0, &mut ()).unwrap().id;
    assert!(!ids.contains(&fresh));
}

#[test]
fn reservation_memory_layout_stays_small() {
    // The per-reservation memory goal (≤ 160 bytes resident, `cargo bench --bench memory`) depends on
    // these staying small; the id's tag took it from 64 to 72.
    assert!(std::mem::size_of::<shard::Reservation>() <= 72, "{}", std::mem::size_of::<shard::Reservation>());
}

#[test]
fn forgetting_out_of_order_keeps_every_other_reservation_reachable() {
    let config = EngineConfig { shards: 1, ended_retention_ms: 1_000, ..EngineConfig::default() };
    let e = engine_with(config, &[("a", 10)]);
    let ids: Vec<ReservationId> = (0..5).map(|_| reserve(&e, &[("a", 1)])).collect();
    e.release(ids[1], T0 + 1, &mut ()).unwrap();
    e.release(ids[3], T0 + 1, &mut ()).unwrap();
    e.expire_due(T0 + 1_001, &mut ());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(e.reservation(*id, T0 + 1_001).is_some(), i % 2 == 0, "reservation {i}");
    }
    e.release(ids[0], T0 + 2_000, &mut ()).unwrap();
    e.expire_due(T0 + 3_000, &mut ());
    assert_eq!(e.shards[0].lock().reservations.iter().count(), 2, "the ring dropped its empty front");
    for id in [ids[2], ids[4]] {
        e.commit(id, T0 + 3_000, &mut ()).unwrap();
    }
    let fresh = reserve(&e, &[("a", 1)]);
    assert!(!ids.contains(&fresh));
    assert_eq!(e.reservation(fresh, T0).map(|v| v.state), Some(ReservationState::Active));
    e.check_consistency().unwrap();
}

/// A state whose counters overflow when summed is refused, not wrapped into a pass.
#[test]
fn restore_refuses_counters_that_overflow() {
    let sku = crate::engine::SkuId::new("tee").expect("sku");
    let stock = crate::engine::Stock { on_hand: 1, available: u64::MAX, reserved: 2, sold: 0 };
    let state = crate::engine::EngineState { skus: vec![(sku, stock)], ..Default::default() };
    assert!(Engine::restore(EngineConfig { shards: 2, ..EngineConfig::default() }, &state).is_err());
}

#[test]
fn a_keyed_adjustment_counts_once_and_its_key_replays_from_records() {
    let e = engine(&[("a", 10)]);
    let (why, key) = (Reason::new("po-77").unwrap(), IdempotencyKey::new("po-77").unwrap());
    let mut log = Vec::new();
    let first = e.adjust_stock_keyed(&sku("a"), 10, &why, Some(&key), T0, &mut log).unwrap();
    assert!(!first.replayed && first.stock.on_hand == 20);
    e.reserve(&request(&[("a", 4)]), T0 + 1, &mut log).unwrap();
    let again = e.adjust_stock_keyed(&sku("a"), 10, &why, Some(&key), T0 + 2, &mut log).unwrap();
    assert_eq!(again, Adjusted { stock: first.stock, replayed: true }, "the first answer, no second effect");
    assert_eq!(log.len(), 2, "a repeat writes nothing");
    let other = e.adjust_stock_keyed(&sku("a"), 9, &why, Some(&key), T0 + 2, &mut ());
    assert_eq!(other, Err(StockError::IdempotencyConflict));
    assert_eq!(
        e.reserve(&keyed(&[("a", 1)], "po-77"), T0 + 2, &mut ()),
        Err(ReserveError::IdempotencyConflict)
    );
    let replayed = engine(&[("a", 10)]);
    for record in &log {
        replayed.apply(record).unwrap();
    }
    assert_eq!(replayed.export(T0 + 3), e.export(T0 + 3));
    assert_eq!(replayed.export(T0 + 3).adjust_keys.len(), 1);
    let restored = Engine::restore(e.config().clone(), &e.export(T0 + 3)).unwrap();
    let again = restored.adjust_stock_keyed(&sku("a"), 10, &why, Some(&key), T0 + 3, &mut ()).unwrap();
    assert!(again.replayed && again.stock == first.stock, "and from a snapshot's state");
    // Past the window the key is forgotten: the same request is a new adjustment.
    let late = T0 + e.config().idempotency_window_ms;
    assert!(!e.adjust_stock_keyed(&sku("a"), 10, &why, Some(&key), late, &mut ()).unwrap().replayed);
}
