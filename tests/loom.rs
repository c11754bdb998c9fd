//! loom models of the engine's races: every interleaving of the threads is explored.
//! Run: `RUSTFLAGS="--cfg holdfast_loom" cargo test --release --test loom --target-dir target-loom`
#![cfg(holdfast_loom)]

use holdfast::engine::*;
use loom::thread;
use std::sync::Arc;

const T0: u64 = 1_000_000;
const TTL: u64 = 10_000;

fn engine(units: u64) -> Arc<Engine> {
    let config = EngineConfig { shards: 1, idempotency_keys_max: 1, ..EngineConfig::default() };
    let engine = Engine::new(config).expect("config");
    engine.set_stock(&SkuId::new("a").expect("valid"), units, T0, &mut ()).expect("stock");
    Arc::new(engine)
}

fn one_unit() -> ReserveRequest {
    let items = vec![Item { sku: SkuId::new("a").expect("valid"), qty: 1 }];
    ReserveRequest { items, ttl_ms: TTL, user: None, sale: None, idempotency_key: None }
}

fn stock(e: &Engine) -> (u64, u64, u64) {
    let s = e.stock("a").expect("exists");
    assert_eq!(s.available + s.reserved + s.sold, s.on_hand, "conservation");
    (s.available, s.reserved, s.sold)
}

#[test]
fn the_last_unit_goes_to_exactly_one_buyer() {
    loom::model(|| {
        let e = engine(1);
        let other = {
            let e = e.clone();
            thread::spawn(move || e.reserve(&one_unit(), T0, &mut ()).is_ok())
        };
        let mine = e.reserve(&one_unit(), T0, &mut ()).is_ok();
        let theirs = other.join().expect("no panic");
        assert!(mine ^ theirs, "exactly one wins: {mine} {theirs}");
        assert_eq!(stock(&e), (0, 1, 0));
    });
}

#[test]
fn commit_racing_expiry_ends_the_reservation_once() {
    loom::model(|| {
        let e = engine(1);
        let id = e.reserve(&one_unit(), T0, &mut ()).expect("reserve").id;
        let deadline = T0 + TTL;
        let expirer = {
            let e = e.clone();
            thread::spawn(move || e.expire_due(deadline, &mut ()))
        };
        let committed = e.commit(id, deadline - 1, &mut ());
        let expired = expirer.join().expect("no panic");
        match committed {
            Ok(()) => {
                assert!(expired.is_empty());
                assert_eq!(stock(&e), (0, 0, 1));
            }
            Err(ReservationError::Expired) => {
                assert_eq!(expired, vec![id]);
                assert_eq!(stock(&e), (1, 0, 0));
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    });
}

/// A commit that arrived before the deadline and is decided within the grace, racing the tick that
/// runs at the same moment: in every interleaving the commit wins and the tick finds nothing. One
/// that waited past the grace is judged then: expired, by whichever of the two comes first.
#[test]
fn a_commit_waiting_within_the_grace_always_beats_the_tick() {
    const GRACE: u64 = 50;
    for waited in [GRACE, GRACE + 1] {
        loom::model(move || {
            let config = EngineConfig {
                shards: 1,
                idempotency_keys_max: 1,
                commit_grace_ms: GRACE,
                ..EngineConfig::default()
            };
            let e = Arc::new(Engine::new(config).expect("config"));
            e.set_stock(&SkuId::new("a").expect("valid"), 1, T0, &mut ()).expect("stock");
            let id = e.reserve(&one_unit(), T0, &mut ()).expect("reserve").id;
            let deadline = T0 + TTL;
            let now = deadline - 1 + waited;
            let expirer = {
                let e = e.clone();
                thread::spawn(move || e.expire_due(now, &mut ()))
            };
            let committed = e.commit(id, e.judged_at(deadline - 1, now), &mut ());
            let expired = expirer.join().expect("no panic");
            if waited <= GRACE {
                assert_eq!(committed, Ok(()));
                assert!(expired.is_empty());
                assert_eq!(stock(&e), (0, 0, 1));
            } else {
                assert_eq!(committed, Err(ReservationError::Expired));
                assert!(expired.len() <= 1);
                assert_eq!(stock(&e), (1, 0, 0));
            }
        });
    }
}

#[test]
fn release_racing_commit_has_one_winner() {
    loom::model(|| {
        let e = engine(1);
        let id = e.reserve(&one_unit(), T0, &mut ()).expect("reserve").id;
        let releaser = {
            let e = e.clone();
            thread::spawn(move || e.release(id, T0 + 1, &mut ()))
        };
        let committed = e.commit(id, T0 + 1, &mut ());
        let released = releaser.join().expect("no panic");
        match (committed, released) {
            (Ok(()), Err(ReservationError::Committed)) => assert_eq!(stock(&e), (0, 0, 1)),
            (Err(ReservationError::Released), Ok(())) => assert_eq!(stock(&e), (1, 0, 0)),
            other => panic!("not exactly one winner: {other:?}"),
        }
    });
}

#[test]
fn a_released_unit_is_seen_by_a_concurrent_reserve_or_cleanly_refused() {
    loom::model(|| {
        let e = engine(1);
        let id = e.reserve(&one_unit(), T0, &mut ()).expect("reserve").id;
        let buyer = {
            let e = e.clone();
            thread::spawn(move || e.reserve(&one_unit(), T0 + 1, &mut ()))
        };
        e.release(id, T0 + 1, &mut ()).expect("release");
        match buyer.join().expect("no panic") {
            Ok(_) => assert_eq!(stock(&e), (0, 1, 0)),
            Err(ReserveError::InsufficientStock { .. }) => assert_eq!(stock(&e), (1, 0, 0)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    });
}
