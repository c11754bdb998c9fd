//! `holdfast`: for now, demos of the engine. The HTTP server (`holdfast serve`) is not built yet.
//! - `holdfast [demo]`: a simulated flash sale against the in-memory engine, with its invariants checked.
//! - `holdfast crash-drill --data-dir DIR`: acknowledged reservations written through the write-ahead
//!   log in DIR, one line per acknowledgement; kill it at any moment, run it again, nothing
//!   acknowledged is lost (the process crash test drives it).

use holdfast::engine::{Engine, EngineConfig, Item, ReserveError, ReserveRequest, SaleId, SkuId, UserId};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: holdfast [demo] [--users N] [--units N] [--threads N]
       holdfast crash-drill --data-dir DIR [--seconds N]

Runs a simulated flash sale in process: N users (default 100000) race for the units (default 1000) of
one SKU, one unit each at most; some commit, some release, some abandon their hold and let it expire.
Then it checks that nothing was oversold and every unit is accounted for. No server, no files.

crash-drill opens (and recovers) the engine's write-ahead log in DIR, then reserves, commits and releases
from four threads for N seconds (default: until killed), printing `reserved|committed|released ID` only
after each operation is synced to disk. Kill it with SIGKILL at any moment and run it again: every
operation it printed is still there.";

struct Args {
    users: u64,
    units: u64,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { users: 100_000, units: 1_000, threads: 4 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse().map_err(|_| format!("{name}: not a whole number: {v}"))
        };
        match arg.as_str() {
            "demo" => {}
            "--users" => args.users = value("--users")?.max(1),
            "--units" => args.units = value("--units")?,
            "--threads" => args.threads = value("--threads")?.clamp(1, 64) as usize,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("crash-drill") {
        return match crash_drill::run(std::env::args().skip(2)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("crash-drill: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    println!(
        "holdfast engine demo (the HTTP server is not built yet): {} users, {} units",
        args.users, args.units
    );
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("INVARIANT BROKEN: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let engine = Engine::new(EngineConfig::default()).map_err(|e| e.to_string())?;
    let sku = SkuId::new("limited-sneaker").map_err(|e| e.to_string())?;
    let sale = SaleId::new("noon-drop").map_err(|e| e.to_string())?;
    let t0 = 1_800_000_000_000u64;
    engine.set_stock(&sku, args.units, t0, &mut ()).map_err(|e| format!("{e:?}"))?;
    engine.set_sale_limit(&sale, 1, t0, &mut ()).map_err(|e| format!("{e:?}"))?;

    let (won, sold_out, committed, released) =
        (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..args.threads as u64 {
            let (engine, sku, sale) = (&engine, &sku, &sale);
            let (won, sold_out, committed, released) = (&won, &sold_out, &committed, &released);
            s.spawn(move || {
                for user in (t..args.users).step_by(args.threads) {
                    let req = ReserveRequest {
                        items: vec![Item { sku: sku.clone(), qty: 1 }],
                        ttl_ms: 60_000,
                        user: Some(UserId::new(&format!("user-{user}")).expect("valid user id")),
                        sale: Some(sale.clone()),
                        idempotency_key: None,
                    };
                    match engine.reserve(&req, t0 + 1, &mut ()) {
                        Ok(r) => {
                            won.fetch_add(1, Relaxed);
                            // Seven in ten pay, two change their minds, one walks away.
                            match user % 10 {
                                0..=6 => {
                                    engine.commit(r.id, t0 + 2, &mut ()).expect("a fresh hold commits");
                                    committed.fetch_add(1, Relaxed);
                                }
                                7 | 8 => {
                                    engine.release(r.id, t0 + 2, &mut ()).expect("a fresh hold releases");
                                    released.fetch_add(1, Relaxed);
                                }
                                _ => {}
                            }
                        }
                        Err(ReserveError::InsufficientStock { .. }) => {
                            sold_out.fetch_add(1, Relaxed);
                        }
                        Err(e) => panic!("unexpected refusal {e:?}"),
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let expired = engine.expire_due(t0 + 60_001, &mut ()).len() as u64;
    let stock = engine.stock(sku.as_str()).ok_or("the SKU vanished")?;
    println!(
        "{} reserve attempts in {:.1} ms ({:.0}/s on {} threads)",
        args.users,
        elapsed.as_secs_f64() * 1e3,
        args.users as f64 / elapsed.as_secs_f64(),
        args.threads
    );
    println!(
        "held {} · sold out {} · committed {} · released {} · expired {}",
        won.load(Relaxed),
        sold_out.load(Relaxed),
        committed.load(Relaxed),
        released.load(Relaxed),
        expired
    );
    println!(
        "stock: on_hand {} = available {} + reserved {} + sold {}",
        stock.on_hand, stock.available, stock.reserved, stock.sold
    );
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    check(stock.available + stock.reserved + stock.sold == stock.on_hand, "conservation")?;
    check(stock.sold == committed.load(Relaxed), "units sold equal acknowledged commits")?;
    check(stock.sold <= args.units, "no oversell")?;
    check(stock.reserved == 0, "every hold ended")?;
    // Released units went back on sale while the demo ran, so holds can exceed the units.
    check(won.load(Relaxed) >= args.units.min(args.users), "every unit was offered")?;
    engine.check_consistency()?;
    println!("invariants hold: no oversell, every unit accounted for");
    Ok(())
}

mod crash_drill {
    //! Durable writes until killed, each acknowledgement printed only after its sync.

    use holdfast::durable::Durable;
    use holdfast::engine::{EngineConfig, Item, ReserveRequest, SkuId};
    use holdfast_wal::storage::FsStorage;
    use holdfast_wal::WalOptions;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    const SKUS: u64 = 8;
    const THREADS: u64 = 4;

    fn now_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    pub fn run(mut args: impl Iterator<Item = String>) -> Result<(), String> {
        let (mut dir, mut seconds) = (None, None);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--data-dir" => dir = args.next(),
                "--seconds" => seconds = args.next().and_then(|s| s.parse::<u64>().ok()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        let dir = dir.ok_or("--data-dir DIR is required")?;
        let storage = FsStorage::new(std::path::Path::new(&dir).join("wal")).map_err(|e| e.to_string())?;
        let (durable, opened) =
            Durable::open(Arc::new(storage), EngineConfig::default(), WalOptions::default())
                .map_err(|e| e.to_string())?;
        eprintln!(
            "recovered from snapshot {:?} and {} records; torn tail: {:?}; skipped snapshots: {:?}",
            opened.snapshot.map(|s| s.lsn),
            opened.replayed,
            opened.recovery.torn,
            opened.skipped_snapshots
        );
        let skus: Vec<SkuId> =
            (0..SKUS).map(|i| SkuId::new(&format!("drill-{i}")).expect("valid sku")).collect();
        for sku in &skus {
            if durable.engine().stock(sku.as_str()).is_none() {
                let set = durable.set_stock(sku, 1 << 39, now_ms()).map_err(|e| e.to_string())?;
                durable.wal().wait(set.lsn).map_err(|e| e.to_string())?;
            }
        }
        let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (durable, skus) = (&durable, &skus);
                    s.spawn(move || write_until(durable, skus, t, deadline))
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("worker"))
        })?;
        durable.close().map_err(|e| e.to_string())
    }

    fn write_until(
        d: &Durable,
        skus: &[SkuId],
        thread: u64,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let out = std::io::stdout();
        let ack = |line: String| -> Result<(), String> {
            let mut out = out.lock();
            writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| e.to_string())
        };
        for i in 0u64.. {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            let sku = skus[((i * THREADS + thread) % SKUS) as usize].clone();
            let req = ReserveRequest {
                items: vec![Item { sku, qty: 1 }],
                ttl_ms: 60_000,
                user: None,
                sale: None,
                idempotency_key: None,
            };
            let r = d.reserve(&req, now_ms()).map_err(|e| e.to_string())?;
            d.wal().wait(r.lsn).map_err(|e| e.to_string())?;
            let id = r.value.id;
            ack(format!("reserved {id}"))?;
            let ended = match i % 4 {
                0 | 1 => d.commit(id, now_ms()).map(|l| (l, "committed")),
                2 => d.release(id, now_ms()).map(|l| (l, "released")),
                _ => continue,
            };
            let (logged, word) = ended.map_err(|e| e.to_string())?;
            d.wal().wait(logged.lsn).map_err(|e| e.to_string())?;
            ack(format!("{word} {id}"))?;
            // Snapshots too are taken while the drill may be killed.
            if thread == 0 && i % 512 == 511 {
                d.snapshot(now_ms(), true).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}
