//! Write-ahead log benchmarks on this machine's disk (criterion): `cargo bench --bench wal`.
//!
//! - `fdatasync`: one 4 KiB write and its sync, the physical floor without group commit.
//! - `durable_append/N`: N tasks on a two-thread tokio runtime, each appending 64-byte records and
//!   awaiting each one's sync (mode `always`). Throughput counts acknowledged appends of all tasks.
//!
//! The log lives under the target directory, on the same disk as the build, never in a tmpfs.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use holdfast_wal::storage::{FsStorage, Storage};
use holdfast_wal::{Wal, WalOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a scratch directory on the build's disk")
}

fn fdatasync(c: &mut Criterion) {
    let dir = scratch_dir();
    let storage = FsStorage::new(dir.path()).expect("dir");
    let file = storage.create("sync-probe").expect("file");
    file.allocate(1 << 20).expect("allocate");
    let page = [7u8; 4096];
    let mut offset = 0;
    c.bench_function("fdatasync/4KiB_write", |b| {
        b.iter(|| {
            file.write_all_at(&page, offset).expect("write");
            file.sync_data().expect("sync");
            offset = (offset + 4096) % (1 << 20);
        })
    });
}

fn durable_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_append");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(1));
    let record = [42u8; 64];
    // Appenders are tasks on a two-thread runtime, as the server's requests will be.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    for appenders in [1u64, 16, 256, 1024] {
        let dir = scratch_dir();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(dir.path()).expect("dir"));
        let (wal, _) = Wal::open(storage, WalOptions::default(), 1, |_, _| Ok(())).expect("open");
        let wal = Arc::new(wal);
        group.bench_function(format!("{appenders}_appenders"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(appenders);
                let start = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..appenders)
                        .map(|_| {
                            let wal = wal.clone();
                            tokio::spawn(async move {
                                for _ in 0..per {
                                    let lsn = wal.append(&record).expect("append");
                                    wal.durable(lsn).await.expect("durable");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("appender");
                    }
                });
                start.elapsed().mul_f64(iters as f64 / (per * appenders) as f64)
            });
        });
        // The group-commit factor: how many acknowledged appends each sync carried.
        if wal.batches() > 0 {
            let per_sync = wal.acked_lsn() as f64 / wal.batches() as f64;
            println!("durable_append/{appenders}_appenders: {per_sync:.1} appends per sync");
        }
    }
    group.finish();
}

criterion_group!(benches, fdatasync, durable_append);
criterion_main!(benches);
