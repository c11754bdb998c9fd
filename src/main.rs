//! `holdfast`: the reservation server and its tools.
//! - `holdfast serve`: the HTTP server (settings: `holdfast serve --help`).
//! - `holdfast wal …`, `holdfast snapshot …`, `holdfast orders list`: the SRE tools for a data
//!   directory (`admin`).
//! - `holdfast demo`: a simulated flash sale against the in-memory engine, with its invariants checked.
//! - `holdfast crash-drill --data-dir DIR`: acknowledged reservations written through the write-ahead
//!   log in DIR, one line per acknowledgement; kill it at any moment, run it again, nothing
//!   acknowledged is lost (the process crash test drives it).

use holdfast::engine::{Engine, EngineConfig, Item, ReserveError, ReserveRequest, SaleId, SkuId, UserId};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: holdfast [serve] [--listen ADDR] [--data-dir DIR] [... see holdfast serve --help]
       holdfast wal verify|stats|dump|replay|trace|repair DIR [...]   (holdfast wal --help)
       holdfast snapshot create|list DIR
       holdfast orders list DIR [--state STATE] [--json]
       holdfast db migrate|new-generation --database-url URL
       holdfast keys new ROLE                                        (an API key and its keys-file line)
       holdfast reconcile --database-url URL --data-dir DIR
       holdfast demo [--users N] [--units N] [--threads N]
       holdfast crash-drill --data-dir DIR [--seconds N]

serve recovers DIR (default ./data) and serves the HTTP API on ADDR (default 127.0.0.1:8080).

demo runs a simulated flash sale in process: N users (default 100000) race for the units (default 1000) of
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

/// `holdfast serve`: settings → tracing → runtime → listen → recover and serve until a signal.
fn serve(argv: &[String]) -> ExitCode {
    let args = match holdfast::config::parse_serve(argv) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let options = match args.options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("holdfast serve: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&args);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.workers > 0 {
        runtime.worker_threads(args.workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("holdfast serve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", args.listen))?;
        let addr = listener.local_addr()?;
        // A fixed line on stdout, for scripts and tests that listen on port 0.
        println!("listening on {addr}");
        tracing::info!(%addr, data_dir = %options.data_dir.display(), "listening");
        let clock = std::sync::Arc::new(holdfast::clock::SystemClock);
        holdfast::serve::run(options, clock, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("holdfast serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(args: &holdfast::config::ServeArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        holdfast::config::LogFormat::Json => builder.json().init(),
        holdfast::config::LogFormat::Pretty => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
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
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        // The server is what a bare `holdfast` runs.
        None => return serve(&[argv[0].clone(), "serve".into()]),
        Some("serve") => return serve(&argv),
        Some("wal" | "snapshot" | "db" | "reconcile" | "orders" | "keys") => {
            return holdfast::admin::run(&argv)
        }
        Some("demo" | "crash-drill") => {}
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("unknown command {other}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if argv[1] == "crash-drill" {
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
    println!("holdfast engine demo: {} users, {} units", args.users, args.units);
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
    engine.set_sale(&sale, 1, std::slice::from_ref(&sku), t0, &mut ()).map_err(|e| format!("{e:?}"))?;

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
    use holdfast::engine::{Item, ReserveRequest, SkuId};
    use holdfast_wal::storage::FsStorage;
    use holdfast_wal::WalOptions;
    use std::io::Write;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const SKUS: u64 = 8;
    const THREADS: u64 = 4;

    fn now_ms() -> u64 {
        holdfast::clock::Clock::now_ms(&holdfast::clock::SystemClock)
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
        holdfast::files::private_dir(std::path::Path::new(&dir)).map_err(|e| e.to_string())?;
        let _lock = holdfast::files::lock_data_dir(std::path::Path::new(&dir)).map_err(|e| e.to_string())?;
        let storage = FsStorage::new(std::path::Path::new(&dir).join("wal")).map_err(|e| e.to_string())?;
        let (durable, opened) = Durable::open(
            Arc::new(storage),
            holdfast::durable::settings::load(std::path::Path::new(&dir))?,
            WalOptions::default(),
        )
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
            // Snapshots too are taken while the drill may be killed.
            if thread == 0 && i % 512 == 511 {
                d.snapshot(now_ms(), true).map_err(|e| e.to_string())?;
            }
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
        }
        Ok(())
    }
}
