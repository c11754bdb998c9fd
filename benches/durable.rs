//! The durable engine on this machine's disk: `cargo bench --bench durable`. Prints medians of three
//! runs each (one-shot measurements too long for criterion's sampling):
//! - durable reserves/s: 256 tasks on a 2-thread tokio runtime, each reserving 1 unit of one of 1,000
//!   SKUs and awaiting its sync (mode `always`), for 2 s;
//! - recovery: opening a log of `HOLDFAST_BENCH_RECORDS` records (default 2,000,000) and replaying it;
//! - snapshot load: opening a directory whose snapshot holds 1,000,000 live reservations.
//!
//! The data lives under the target directory, on the build's disk.

use holdfast::durable::Durable;
use holdfast::engine::{EngineConfig, Item, ReserveRequest, SkuId};
use holdfast_wal::storage::{FsStorage, Storage};
use holdfast_wal::{Durability, WalOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: u64 = 1_800_000_000_000;

fn config() -> EngineConfig {
    EngineConfig { ttl_ms_max: 3_600_000, ..EngineConfig::default() }
}

/// The log lives in `dir/wal`, as in a server's data directory, so the SRE tools can read it too.
fn storage(dir: &std::path::Path) -> Arc<dyn Storage> {
    Arc::new(FsStorage::new(dir.join("wal")).expect("dir"))
}

fn requests() -> Vec<ReserveRequest> {
    (0..1_000)
        .map(|i| ReserveRequest {
            items: vec![Item { sku: SkuId::new(&format!("sku-{i:04}")).expect("valid"), qty: 1 }],
            ttl_ms: 3_600_000,
            user: None,
            sale: None,
            idempotency_key: None,
        })
        .collect()
}

fn stocked(dir: &std::path::Path, options: WalOptions) -> Durable {
    let (d, _) = Durable::open(storage(dir), config(), options).expect("open");
    for r in requests() {
        d.set_stock(&r.items[0].sku, 1 << 38, T0).expect("stock");
    }
    d
}

/// Interval durability: quick to fill a log for the recovery measurements (closing syncs it all).
fn fast() -> WalOptions {
    WalOptions {
        durability: Durability::Interval { every: Duration::from_millis(200) },
        ..Default::default()
    }
}

/// Opens the directory three times and returns the median time, checking each opening with `check`.
fn time_opening(dir: &std::path::Path, check: impl Fn(&Durable, &holdfast::durable::Opened)) -> f64 {
    median(
        (0..3)
            .map(|_| {
                let start = Instant::now();
                let (d, opened) = Durable::open(storage(dir), config(), fast()).expect("open");
                let took = start.elapsed().as_secs_f64();
                check(&d, &opened);
                took
            })
            .collect(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn durable_reserves() -> f64 {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let d = Arc::new(stocked(dir.path(), WalOptions::default()));
    let reqs = Arc::new(requests());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().expect("runtime");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..256u64)
            .map(|t| {
                let (d, reqs, done, stop) = (d.clone(), reqs.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = t;
                    while !stop.load(Relaxed) {
                        let r = d.reserve(&reqs[(i % 1_000) as usize], T0).expect("reserve");
                        d.wal().durable(r.lsn).await.expect("durable");
                        done.fetch_add(1, Relaxed);
                        i += 256;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Relaxed);
        for t in tasks {
            t.await.expect("task");
        }
    });
    done.load(Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Writes `records` records (reserves, a third of them committed) with interval durability (fast to
/// produce; closing syncs everything), then times opening and replaying them.
fn recovery(records: u64) -> (f64, f64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let d = stocked(dir.path(), fast());
    let reqs = requests();
    let mut written = 1_000;
    let mut i = 0usize;
    while written < records {
        let r = d.reserve(&reqs[i % 1_000], T0 + 1).expect("reserve");
        written += 1;
        if i.is_multiple_of(3) && written < records {
            d.commit(r.value.id, T0 + 2).expect("commit");
            written += 1;
        }
        i += 1;
    }
    d.close().expect("close");
    let took = time_opening(dir.path(), |_, opened| assert_eq!(opened.replayed, records));
    tools(dir.path(), records);
    (took, records as f64 / took)
}

/// Times `holdfast wal verify` and `holdfast wal replay` (the real binary) on the log, median of 3.
fn tools(dir: &std::path::Path, records: u64) {
    let d = dir.to_str().expect("utf-8");
    let last = records.to_string();
    let runs: [(&str, Vec<&str>); 2] = [
        ("verify", vec!["wal", "verify", d]),
        (
            "replay",
            vec!["wal", "replay", d, "--until-lsn", &last, "--sku", "sku-0000", "--output", "/dev/null"],
        ),
    ];
    for (name, args) in runs {
        let times = (0..3)
            .map(|_| {
                let started = Instant::now();
                let status = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
                    .args(&args)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("run holdfast");
                assert!(status.success(), "holdfast {args:?} failed");
                started.elapsed().as_secs_f64()
            })
            .collect();
        let took = median(times);
        println!(
            "durable/wal_{name}: {records} records in {took:.2} s = {:.2} M records/s (median of 3)",
            records as f64 / took / 1e6
        );
    }
}

fn snapshot_load(live: u64) -> f64 {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let d = stocked(dir.path(), fast());
    let reqs = requests();
    for i in 0..live as usize {
        d.reserve(&reqs[i % 1_000], T0 + 1).expect("reserve");
    }
    d.wal().wait(d.wal().appended_lsn()).expect("written");
    d.snapshot(T0 + 2, false).expect("snapshot");
    d.close().expect("close");
    time_opening(dir.path(), |d, opened| {
        assert_eq!(d.engine().active_reservations() as u64, live);
        assert!(opened.snapshot.is_some() && opened.replayed == 0);
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and `--list` probes: nothing to run.
    }
    let records: u64 =
        std::env::var("HOLDFAST_BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let reserves = median((0..3).map(|_| durable_reserves()).collect());
    println!("durable/reserves_256_tasks: {:.0} acknowledged reserves/s (median of 3)", reserves);
    let (took, rate) = recovery(records);
    println!(
        "durable/recovery: {records} records replayed in {took:.2} s = {:.2} M records/s (median of 3)",
        rate / 1e6
    );
    let load = snapshot_load(1_000_000);
    println!("durable/snapshot_load: 1000000 live reservations loaded in {load:.2} s (median of 3)");
}
