//! Engine micro-benchmarks (criterion). `cargo bench --bench engine`; one group: `-- hot_sku`.
//!
//! Multi-threaded cases time each thread's loop together and report time per operation per thread,
//! so criterion's "thrpt" is per thread. Memory per reservation is `benches/memory.rs`.

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use holdfast::engine::*;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_700_000_000_000;

fn sku(s: &str) -> SkuId {
    SkuId::new(s).expect("valid")
}

fn request(items: &[&str], ttl_ms: u64) -> ReserveRequest {
    ReserveRequest {
        items: items.iter().map(|s| Item { sku: sku(s), qty: 1 }).collect(),
        ttl_ms,
        user: None,
        sale: None,
        idempotency_key: None,
    }
}

/// A benchmark engine: ended reservations forgotten after 1 ms of engine time, so that long runs stay
/// bounded in memory (the expiry tick, called as the server would, does the forgetting).
fn engine(shards: usize) -> Engine {
    Engine::new(EngineConfig { shards, ended_retention_ms: 1, ..EngineConfig::default() }).expect("config")
}

/// Runs `per_thread` on `threads` threads at once; returns the slowest thread's time for `iters` ops.
fn on_threads(threads: usize, iters: u64, per_thread: impl Fn(usize, u64) + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, per_thread) = (&barrier, &per_thread);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    per_thread(t, iters);
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).max().expect("threads")
    })
}

fn hot_sku_reserve_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_sku");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        group.bench_function(format!("reserve_commit/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let e = engine(2);
                e.set_stock(&sku("hot"), holdfast::limits::ON_HAND_MAX, T0, &mut ()).expect("stock");
                let req = request(&["hot"], 1_000);
                // One engine clock for all threads, advanced by thread 0 alongside its expiry tick, so
                // no thread's tick can run ahead and expire another thread's fresh hold.
                let clock = AtomicU64::new(T0);
                on_threads(threads, iters, |t, iters| {
                    for i in 0..iters {
                        let now = clock.load(Relaxed);
                        let r = e.reserve(&req, now, &mut ()).expect("stock never runs out");
                        e.commit(r.id, now, &mut ()).expect("commit");
                        if t == 0 && i % 4096 == 0 {
                            clock.fetch_add(1, Relaxed);
                            e.expire_due(now, &mut ());
                        }
                    }
                })
            })
        });
    }
    group.finish();
}

fn spread_reserve(c: &mut Criterion) {
    const SKUS: usize = 100_000;
    const BATCH: u64 = 100_000;
    let names: Vec<String> = (0..SKUS).map(|i| format!("sku-{i:06}")).collect();
    let reqs: Vec<ReserveRequest> = names.iter().map(|n| request(&[n.as_str()], 60_000)).collect();
    let mut group = c.benchmark_group("spread");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2] {
        group.bench_function(format!("reserve_100k_skus/{threads}_threads"), |b| {
            let e = engine(2);
            for n in &names {
                e.set_stock(&sku(n), 1 << 30, T0, &mut ()).expect("stock");
            }
            let mut round = 0u64;
            b.iter_custom(|iters| {
                // Timed in batches; between them, untimed, every reservation is expired so the engine
                // never holds more than a batch per thread.
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH);
                    round += 1;
                    let now = T0 + round * 1_000_000;
                    total += on_threads(threads, n, |t, n| {
                        for i in 0..n as usize {
                            let req = &reqs[(i * 7 + t * 50_021) % SKUS];
                            black_box(e.reserve(req, now, &mut ()).expect("reserve"));
                        }
                    });
                    e.expire_due(now + 120_000, &mut ());
                    left -= n;
                }
                total
            })
        });
    }
    group.finish();
}

fn sold_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("sold_out");
    group.throughput(Throughput::Elements(1));
    let e = engine(2);
    e.set_stock(&sku("gone"), 0, T0, &mut ()).expect("stock");
    let req = request(&["gone"], 1_000);
    let keyed =
        ReserveRequest { idempotency_key: Some(IdempotencyKey::new("k-1").expect("valid")), ..req.clone() };
    for threads in [1, 2] {
        group.bench_function(format!("reject/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |_, iters| {
                    for _ in 0..iters {
                        black_box(e.reserve(black_box(&req), T0, &mut ()).expect_err("sold out"));
                    }
                })
            })
        });
    }
    group.bench_function("reject_with_idempotency_key/1_threads", |b| {
        b.iter(|| black_box(e.reserve(black_box(&keyed), T0, &mut ()).expect_err("sold out")))
    });
    group.finish();
}

fn multi_sku(c: &mut Criterion) {
    let mut group = c.benchmark_group("multi_sku");
    group.throughput(Throughput::Elements(1));
    let e = engine(2);
    let names = ["m-a", "m-b", "m-c", "m-d", "m-e"];
    for n in names {
        e.set_stock(&sku(n), 1 << 30, T0, &mut ()).expect("stock");
    }
    let req = request(&names, 60_000);
    group.bench_function("reserve_release_5_items", |b| {
        let mut now = T0;
        b.iter(|| {
            now += 1;
            let r = e.reserve(&req, now, &mut ()).expect("reserve");
            e.release(r.id, now, &mut ()).expect("release");
            if now.is_multiple_of(4096) {
                e.expire_due(now, &mut ());
            }
        })
    });
    group.finish();
}

/// An engine with `live` single-item reservations over 1,000 SKUs; every tenth expires at `T0 + 1_000`,
/// the rest an hour later.
fn with_live_reservations(live: usize, shards: usize) -> Engine {
    let e = engine(shards);
    let names: Vec<String> = (0..1_000).map(|i| format!("m-{i:04}")).collect();
    for n in &names {
        e.set_stock(&sku(n), 1 << 30, T0, &mut ()).expect("stock");
    }
    let soon: Vec<ReserveRequest> = names.iter().map(|n| request(&[n.as_str()], 1_000)).collect();
    let late: Vec<ReserveRequest> = names.iter().map(|n| request(&[n.as_str()], 3_600_000)).collect();
    for i in 0..live {
        let reqs = if i % 10 == 0 { &soon } else { &late };
        e.reserve(&reqs[i % reqs.len()], T0, &mut ()).expect("reserve");
    }
    e
}

fn expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("expire");
    group.sample_size(10);
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("expire_due_100k_of_1m_live", |b| {
        b.iter_batched(
            || with_live_reservations(1_000_000, 2),
            |e| {
                let expired = e.expire_due(T0 + 1_000, &mut ());
                assert_eq!(expired.len(), 100_000);
                e
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, hot_sku_reserve_commit, spread_reserve, sold_out, multi_sku, expire);

criterion::criterion_main!(benches);
