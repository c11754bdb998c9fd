//! Threads against one engine: no oversell, no deadlock, conservation after every storm.

use holdfast::engine::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

const T0: u64 = 1_700_000_000_000;

fn sku(s: &str) -> SkuId {
    SkuId::new(s).expect("valid")
}

fn one(name: &str, qty: u32) -> ReserveRequest {
    ReserveRequest {
        items: vec![Item { sku: sku(name), qty }],
        ttl_ms: 60_000,
        user: None,
        sale: None,
        idempotency_key: None,
    }
}

#[test]
fn one_hot_sku_sells_exactly_its_stock_to_many_threads() {
    const UNITS: u64 = 1_000;
    const THREADS: usize = 8;
    const TRIES_PER_THREAD: usize = 500;
    for round in 0..20 {
        let engine = Engine::new(EngineConfig { shards: 4, ..EngineConfig::default() }).expect("config");
        engine.set_stock(&sku("hot"), UNITS, T0, &mut ()).expect("stock");
        let won = AtomicUsize::new(0);
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..TRIES_PER_THREAD {
                        match engine.reserve(&one("hot", 1), T0, &mut ()) {
                            Ok(_) => drop(won.fetch_add(1, Ordering::Relaxed)),
                            Err(ReserveError::InsufficientStock { .. }) => {}
                            Err(e) => panic!("unexpected {e:?}"),
                        }
                    }
                });
            }
        });
        assert_eq!(won.load(Ordering::Relaxed) as u64, UNITS, "round {round}");
        let s = engine.stock("hot").expect("exists");
        assert_eq!((s.available, s.reserved, s.sold), (0, UNITS, 0), "round {round}");
        engine.check_consistency().expect("consistent");
    }
}

#[test]
fn same_idempotency_key_from_many_threads_reserves_once() {
    let engine = Engine::new(EngineConfig { shards: 2, ..EngineConfig::default() }).expect("config");
    engine.set_stock(&sku("a"), 100, T0, &mut ()).expect("stock");
    let key = IdempotencyKey::new("retry-storm").expect("valid");
    let req = ReserveRequest { idempotency_key: Some(key), ..one("a", 3) };
    let ids: Vec<ReservationId> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..50).map(|_| engine.reserve(&req, T0, &mut ()).expect("ok").id).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("no panic")).collect()
    });
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(engine.stock("a").expect("exists").reserved, 3);
}

#[test]
fn crossing_multi_sku_reserves_do_not_deadlock_or_oversell() {
    // Every thread reserves pairs and triples of SKUs spread over all shards, in opposite orders, and
    // commits, releases or abandons them, while another thread expires what is due.
    let engine = Engine::new(EngineConfig { shards: 8, ..EngineConfig::default() }).expect("config");
    let names: Vec<String> = (0..24).map(|i| format!("sku-{i}")).collect();
    for n in &names {
        engine.set_stock(&sku(n), 50, T0, &mut ()).expect("stock");
    }
    let clock = std::sync::atomic::AtomicU64::new(T0);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                engine.expire_due(clock.load(Ordering::Relaxed), &mut ());
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..6)
            .map(|t| {
                let (names, engine, clock) = (&names, &engine, &clock);
                s.spawn(move || {
                    for i in 0..3_000usize {
                        let a = (i * 7 + t) % names.len();
                        let b = (a + 1 + t) % names.len();
                        let c = (a + names.len() - 5) % names.len();
                        let mut picks = vec![a, b];
                        if i % 3 == 0 && c != a && c != b {
                            picks.push(c);
                        }
                        if t % 2 == 1 {
                            picks.reverse();
                        }
                        let req = ReserveRequest {
                            items: picks
                                .iter()
                                .map(|&p| Item { sku: sku(&names[p]), qty: 1 + (i % 2) as u32 })
                                .collect(),
                            ttl_ms: 1_000,
                            user: None,
                            sale: None,
                            idempotency_key: None,
                        };
                        let now = clock.fetch_add(1, Ordering::Relaxed);
                        if let Ok(r) = engine.reserve(&req, now, &mut ()) {
                            match i % 3 {
                                0 => drop(engine.commit(r.id, now + 10, &mut ())),
                                1 => drop(engine.release(r.id, now + 10, &mut ())),
                                _ => {}
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        done.store(true, Ordering::Relaxed);
    });
    engine.check_consistency().expect("consistent after the storm");
    engine.expire_due(u64::MAX / 2, &mut ());
    engine.check_consistency().expect("consistent after expiring everything");
    let mut sold = 0;
    for n in &names {
        let s = engine.stock(n).expect("exists");
        assert_eq!(s.reserved, 0);
        assert_eq!(s.available + s.sold, 50);
        sold += s.sold;
    }
    assert!(sold > 0);
}

#[test]
fn commit_racing_expiry_ends_each_reservation_exactly_once() {
    let engine = Engine::new(EngineConfig { shards: 2, ..EngineConfig::default() }).expect("config");
    engine.set_stock(&sku("a"), 10_000, T0, &mut ()).expect("stock");
    let ids: Vec<ReservationId> =
        (0..5_000).map(|_| engine.reserve(&one("a", 1), T0, &mut ()).expect("reserve").id).collect();
    let deadline = T0 + 60_000;
    let ((committed, expired_by_commit), expired_by_tick) = std::thread::scope(|s| {
        let committer = s.spawn(|| {
            // Half the commits arrive a millisecond before the deadline, half at it (too late).
            let (mut ok, mut late) = (0, 0);
            for (i, id) in ids.iter().enumerate() {
                match engine.commit(*id, deadline - (i as u64 % 2), &mut ()) {
                    Ok(()) => ok += 1,
                    Err(ReservationError::Expired) => late += 1,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            (ok, late)
        });
        let expirer = s.spawn(|| (0..50).map(|_| engine.expire_due(deadline, &mut ()).len()).sum::<usize>());
        (committer.join().expect("committer"), expirer.join().expect("expirer"))
    });
    // Each reservation ended exactly once: by a commit, by the late commit that expired it, or by a
    // tick. A late commit whose reservation the tick already expired counts in both, so the
    // commit's view and the tick's view are checked separately against the stock.
    let s = engine.stock("a").expect("exists");
    assert_eq!(committed + expired_by_commit, ids.len());
    assert!(committed <= ids.len() / 2, "a commit at the deadline must fail");
    assert!(expired_by_tick <= ids.len() - committed);
    assert_eq!(s.sold as usize, committed);
    assert_eq!((s.reserved, s.available as usize), (0, 10_000 - committed));
    engine.check_consistency().expect("consistent");
}
