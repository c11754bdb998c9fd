//! Deterministic simulation of the durable engine: a seeded workload over a disk in memory, crashes at
//! random moments (losing, tearing or scrambling what was not synced, some with a batch written whose
//! sync failed), recovery, and checks that
//! - every acknowledged mutation survived (the recovered log reaches every acknowledged LSN);
//! - nothing is half-applied, and the recovered state is exactly the replay of the records that
//!   survived (a reference engine fed the same records, in order, up to the same LSN);
//! - the recovered engine is consistent (conservation, reserved units match reservations).
//!
//! Each seed runs several crash-and-recover cycles. `HOLDFAST_SIM_SEEDS=N` runs more seeds; a failure
//! prints its seed. (Which in-flight records a crash catches depends on the flusher thread's timing,
//! so a seed reproduces its workload exactly and its crash points approximately.)

use holdfast::durable::{codec, Durable};
use holdfast::engine::*;
use holdfast_wal::storage::{Crash, Fault, MemStorage, Op, Storage as _};
use holdfast_wal::{Lsn, Wal, WalOptions, SEGMENT_BYTES_MIN};
use std::sync::Arc;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config(shards: usize) -> EngineConfig {
    // The pending extension within the TTL range, as the configuration check requires; a fixed tag
    // key, so that a workload writes the same records in every run.
    EngineConfig {
        shards,
        ttl_ms_min: 1_000,
        ttl_ms_max: 30_000,
        pending_extension_ms: 30_000,
        id_tag_key: Some(0x5eed),
        ..EngineConfig::default()
    }
}

fn options() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

fn name<T>(make: fn(&str) -> Result<T, NameError>, prefix: &str, i: u64) -> T {
    make(&format!("{prefix}{i}")).expect("valid name")
}

/// Every record in the log of `storage`, with its LSN (segments a snapshot covered may be gone).
fn records_in(storage: &MemStorage) -> Vec<(Lsn, Record)> {
    let mut records = Vec::new();
    let (wal, _) = Wal::open(Arc::new(storage.clone()), options(), 1, |lsn, bytes| {
        records.push((lsn, codec::decode(bytes).map_err(|e| e.to_string())?));
        Ok(())
    })
    .expect("the uncrashed log opens");
    drop(wal);
    records
}

/// After recovery nothing is written past the log's last record: bytes a crash left there (frames of
/// a batch that was never acknowledged) would be replayed once a later record reached them.
fn nothing_after_the_end(storage: &MemStorage) -> Result<(), String> {
    let inspection = holdfast_wal::inspect(storage, 1, &mut |_| Ok(())).map_err(|e| e.to_string())?;
    if !inspection.is_intact() {
        return Err(format!("recovered log is not intact: {:?}", inspection.problems));
    }
    let last = inspection.segments.last().ok_or("no segment after recovery")?;
    let bytes = storage.read(&last.name).ok_or("last segment unreadable")?;
    match bytes[last.end_offset as usize..].iter().position(|b| *b != 0) {
        Some(at) => Err(format!(
            "{}: written bytes at {} after the last record",
            last.name,
            last.end_offset as usize + at
        )),
        None => Ok(()),
    }
}

/// Runs one random mutation; returns its LSN if it produced a result that must be acknowledged.
fn step(d: &Durable, rng: &mut Rng, now: u64, ids: &mut Vec<ReservationId>) -> Option<Lsn> {
    let sku = |rng: &mut Rng| name(SkuId::new, "s", rng.below(6));
    match rng.below(11) {
        0 => d.set_stock(&sku(rng), rng.below(20), now).ok().map(|l| l.lsn),
        10 => {
            // The sale's SKUs change now and then (an unknown SKU is refused, as in production).
            let mut skus: Vec<SkuId> = (0..rng.below(3)).map(|_| sku(rng)).collect();
            skus.sort();
            skus.dedup();
            d.set_sale(&name(SaleId::new, "sale", 0), 4, &skus, now).ok().map(|l| l.lsn)
        }
        1 => d.adjust_stock(&sku(rng), rng.below(7) as i64 - 3, &Reason::default(), now).ok().map(|l| l.lsn),
        2..=5 => {
            let mut items: Vec<Item> = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let s = sku(rng);
                if !items.iter().any(|i| i.sku == s) {
                    items.push(Item { sku: s, qty: 1 + rng.below(3) as u32 });
                }
            }
            let in_sale = rng.below(3) == 0;
            let req = ReserveRequest {
                items,
                ttl_ms: 1_000 * (1 + rng.below(20)),
                user: Some(name(UserId::new, "u", rng.below(4))),
                sale: in_sale.then(|| name(SaleId::new, "sale", 0)),
                idempotency_key: (rng.below(2) == 0).then(|| name(IdempotencyKey::new, "k", rng.below(12))),
            };
            let r = d.reserve(&req, now).ok()?;
            ids.push(r.value.id);
            Some(r.lsn)
        }
        6 | 7 if !ids.is_empty() => {
            let id = ids[rng.below(ids.len() as u64) as usize];
            let r = if rng.below(2) == 0 { d.commit(id, now) } else { d.release(id, now) };
            r.ok().map(|l| l.lsn)
        }
        8 if !ids.is_empty() => {
            let id = ids[rng.below(ids.len() as u64) as usize];
            d.extend(id, 1_000 * (1 + rng.below(20)), now).ok().map(|l| l.lsn)
        }
        _ => d.expire_due(now).ok().map(|l| l.lsn),
    }
}

fn simulate(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let shards = 1 + rng.below(4) as usize;
    let mut storage = MemStorage::new();
    let (mut durable, _) =
        Durable::open(Arc::new(storage.clone()), config(shards), options()).map_err(|e| e.to_string())?;
    durable.set_sale(&name(SaleId::new, "sale", 0), 4, &[], 0).map_err(|e| e.to_string())?;
    let mut now = 1_000_000u64;
    let mut ids = Vec::new();
    // Every record ever logged, by LSN: the reference, kept across cycles because snapshots let the
    // log drop the segments they cover.
    let mut history: Vec<Record> = Vec::new();
    for cycle in 0..3 {
        let mut acked: Lsn = 0;
        for _ in 0..20 + rng.below(80) {
            now += rng.below(3_000);
            if let Some(lsn) = step(&durable, &mut rng, now, &mut ids) {
                // Most results are acknowledged at once; some stay in flight when the crash comes.
                if rng.below(4) != 0 && durable.wal().wait(lsn).is_ok() {
                    acked = acked.max(lsn);
                }
            }
            if rng.below(40) == 0 {
                durable.snapshot(now, rng.below(2) == 0).map_err(|e| format!("snapshot: {e}"))?;
            }
        }
        // A third of the cycles end with the disk failing syncs while more mutations come in: the
        // crash then finds frames written and never synced, to lose, tear or scramble.
        let sync_failed = rng.below(3) == 0;
        if sync_failed {
            storage.fail_from(0, Op::Sync, Fault::Io);
            for _ in 0..1 + rng.below(6) {
                now += rng.below(3_000);
                step(&durable, &mut rng, now, &mut ids);
            }
        }
        let how = match rng.below(3) {
            0 => Crash::LoseUnsynced,
            1 => Crash::Tear { seed: rng.next() },
            _ => Crash::Scramble { seed: rng.next() },
        };
        let crashed = storage.crash(how);
        // The log as it would have been without the crash: the reference's records.
        let closed = durable.close();
        storage.clear_fault();
        if !sync_failed {
            closed.map_err(|e| e.to_string())?;
        }
        for (lsn, record) in records_in(&storage) {
            let at = lsn as usize - 1;
            if at < history.len() {
                history[at] = record;
            } else {
                assert_eq!(at, history.len(), "the log continues the history");
                history.push(record);
            }
        }
        let (recovered, opened) = Durable::open(Arc::new(crashed.clone()), config(shards), options())
            .map_err(|e| format!("cycle {cycle} ({how:?}): recovery failed: {e}"))?;
        let kept = opened.recovery.next_lsn - 1;
        nothing_after_the_end(&crashed).map_err(|e| format!("cycle {cycle} ({how:?}): {e}"))?;
        if kept < acked {
            return Err(format!("cycle {cycle} ({how:?}): acknowledged LSN {acked}, recovered only {kept}"));
        }
        let reference = Engine::new(config(shards)).map_err(|e| e.to_string())?;
        for (i, record) in history.iter().take(kept as usize).enumerate() {
            reference.apply(record).map_err(|e| format!("reference record {}: {e}", i + 1))?;
        }
        if recovered.engine().export(now) != reference.export(now) {
            return Err(format!(
                "cycle {cycle} ({how:?}): recovered state differs from the replay of {kept} records"
            ));
        }
        recovered.engine().check_consistency().map_err(|e| format!("cycle {cycle}: {e}"))?;
        // What the crash lost is gone from history too: the next cycle's LSNs reuse those numbers.
        history.truncate(kept as usize);
        durable = recovered;
        storage = crashed;
    }
    durable.close().map_err(|e| e.to_string())
}

#[test]
fn crashes_at_random_moments_lose_nothing_acknowledged_and_replay_exactly() {
    let seeds: u64 = std::env::var("HOLDFAST_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000);
    for seed in 0..seeds {
        if let Err(problem) = simulate(seed) {
            panic!("simulation seed {seed} failed: {problem}\nrerun: HOLDFAST_SIM_SEEDS={} cargo test --release --test tests durable", seed + 1);
        }
    }
}

fn one(sku: &str, qty: u32) -> ReserveRequest {
    ReserveRequest {
        items: vec![Item { sku: SkuId::new(sku).expect("valid"), qty }],
        ttl_ms: 10_000,
        user: None,
        sale: None,
        idempotency_key: None,
    }
}

#[test]
fn a_full_disk_refuses_mutations_with_a_clear_error_and_reads_keep_working() {
    use holdfast::durable::Refused;
    use holdfast_wal::storage::{Fault, Op};
    use holdfast_wal::WalError;
    let storage = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(storage.clone()), config(2), options()).expect("open");
    let sku = SkuId::new("s").expect("valid");
    d.wal().wait(d.set_stock(&sku, 1_000_000, 1).expect("stock").lsn).expect("durable");
    storage.fail_from(0, Op::Allocate, Fault::NoSpace);
    let mut held = Vec::new();
    let refusal = loop {
        match d.reserve(&one("s", 1), 2) {
            Ok(r) => {
                d.wal().wait(r.lsn).expect("durable");
                held.push(r.value.id);
            }
            Err(e) => break e,
        }
    };
    assert!(matches!(refusal, Refused::Log(WalError::NoSpace { .. })), "{refusal}");
    assert!(refusal.to_string().contains("no space left"), "{refusal}");
    let before = d.engine().export(3);
    assert!(d.commit(held[0], 3).is_err(), "every mutation is refused while the disk is full");
    assert_eq!(d.engine().export(3), before, "refused mutations changed nothing");
    assert_eq!(d.engine().stock("s").expect("readable").reserved, held.len() as u64);
    assert!(d.engine().reservation(held[0], 3).is_some());
    assert!(d.wal().poisoned().is_none(), "a full disk is not a failed write");
    storage.clear_fault();
    let r = d.commit(held[0], 4).expect("space is back");
    d.wal().wait(r.lsn).expect("durable");
}

#[test]
fn a_failed_sync_stops_every_later_mutation() {
    use holdfast::durable::Refused;
    use holdfast_wal::storage::{Fault, Op};
    use holdfast_wal::WalError;
    let storage = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(storage.clone()), config(2), options()).expect("open");
    d.wal().wait(d.set_stock(&SkuId::new("s").expect("valid"), 10, 1).expect("stock").lsn).expect("durable");
    storage.fail_from(0, Op::Sync, Fault::Io);
    let r = d.reserve(&one("s", 1), 2).expect("appended");
    assert!(matches!(d.wal().wait(r.lsn), Err(WalError::Poisoned { .. })), "never acknowledged");
    match d.reserve(&one("s", 1), 3) {
        Err(Refused::Log(WalError::Poisoned { cause })) => assert!(cause.contains("sync"), "{cause}"),
        other => panic!("expected the poisoned log to refuse, got {other:?}"),
    }
    assert!(d.engine().stock("s").is_some(), "reads still answer");
}

/// A durable engine with some history: stock, reservations, commits.
fn busy(d: &Durable, from: u64, n: u64) {
    for i in from..from + n {
        let sku = name(SkuId::new, "s", i % 5);
        if d.engine().stock(sku.as_str()).is_none() {
            d.wal().wait(d.set_stock(&sku, 1 << 20, i).expect("stock").lsn).expect("durable");
        }
        let r = d.reserve(&one(sku.as_str(), 1), 1_000 + i).expect("reserve");
        if i % 2 == 0 {
            d.commit(r.value.id, 1_000 + i).expect("commit");
        }
        d.wal().wait(d.wal().appended_lsn()).expect("durable");
    }
}

#[test]
fn a_damaged_newest_snapshot_is_reported_and_the_previous_one_used() {
    let storage = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(storage.clone()), config(2), options()).expect("open");
    busy(&d, 0, 50);
    let first = d.snapshot(2_000, false).expect("snapshot");
    busy(&d, 50, 50);
    let newest = d.snapshot(2_000, false).expect("snapshot");
    busy(&d, 100, 20);
    let expected = d.engine().export(5_000);
    d.close().expect("close");
    storage.corrupt(&newest.name, 200, &[0xab]);
    let (d, opened) = Durable::open(Arc::new(storage), config(2), options()).expect("falls back");
    assert_eq!(opened.snapshot, Some(first));
    assert_eq!(opened.skipped_snapshots.len(), 1);
    assert!(opened.skipped_snapshots[0].1.contains("checksum"), "{:?}", opened.skipped_snapshots);
    assert_eq!(d.engine().export(5_000), expected);
}

#[test]
fn snapshots_bound_recovery_and_the_segments_they_cover_are_removed() {
    let storage = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(storage.clone()), config(2), options()).expect("open");
    busy(&d, 0, 12_000); // several segments of the smallest size
    let segments_before = storage.list().expect("list").iter().filter(|n| n.ends_with(".wal")).count();
    d.snapshot(9_000, true).expect("snapshot");
    busy(&d, 12_000, 100);
    let latest = d.snapshot(9_000, true).expect("snapshot");
    busy(&d, 12_100, 10);
    let expected = d.engine().export(9_000);
    d.close().expect("close");
    let names = storage.list().expect("list");
    let segments_after = names.iter().filter(|n| n.ends_with(".wal")).count();
    assert!(segments_before > 2 && segments_after < segments_before, "{segments_before} -> {segments_after}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".snap")).count(), 2, "two snapshots kept: {names:?}");
    let (d, opened) = Durable::open(Arc::new(storage), config(2), options()).expect("open");
    assert_eq!(opened.snapshot.map(|s| s.lsn), Some(latest.lsn));
    assert!(opened.replayed < 40, "replayed {} records after the snapshot", opened.replayed);
    assert_eq!(d.engine().export(9_000), expected);
}

#[test]
fn the_log_stays_until_two_intact_snapshots_cover_it() {
    let storage = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(storage.clone()), config(2), options()).expect("open");
    busy(&d, 0, 12_000); // several segments of the smallest size
    let segments = || storage.list().expect("list").iter().filter(|n| n.ends_with(".wal")).count();
    let before = segments();
    let first = d.snapshot(9_000, true).expect("snapshot");
    assert_eq!(segments(), before, "one snapshot is no fallback: the log stays");
    storage.corrupt(&first.name, 200, &[0xab]);
    busy(&d, 12_000, 100);
    let second = d.snapshot(9_000, true).expect("snapshot");
    assert_eq!(segments(), before, "a damaged snapshot does not count as the second");
    busy(&d, 12_100, 10);
    let expected = d.engine().export(9_000);
    d.close().expect("close");
    storage.corrupt(&second.name, 200, &[0xab]);
    let (d, opened) = Durable::open(Arc::new(storage), config(2), options()).expect("the whole log replays");
    assert_eq!((opened.snapshot, opened.skipped_snapshots.len()), (None, 2));
    assert_eq!(d.engine().export(9_000), expected);
}

#[test]
fn snapshots_are_taken_when_the_policy_says() {
    use holdfast::durable::SnapshotPolicy;
    let storage = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(storage), config(2), options()).expect("open");
    let policy = SnapshotPolicy { every_records: 100, every_ms: 60_000, remove_covered_segments: false };
    assert_eq!(d.snapshot_if_due(1_000, &policy).expect("checked"), None, "nothing logged yet");
    busy(&d, 0, 30);
    assert_eq!(d.snapshot_if_due(1_000, &policy).expect("checked"), None, "too few records, too soon");
    busy(&d, 30, 60);
    let by_count = d.snapshot_if_due(1_000, &policy).expect("taken").expect("100 records reached");
    busy(&d, 90, 5);
    assert_eq!(d.snapshot_if_due(30_000, &policy).expect("checked"), None);
    let by_time = d.snapshot_if_due(61_000, &policy).expect("taken").expect("a minute passed");
    assert!(by_time.lsn > by_count.lsn);
}

#[test]
fn a_crash_after_any_storage_operation_loses_nothing_acknowledged() {
    use holdfast_wal::storage::{Fault, Op};
    // A fixed workload with snapshots; the disk dies after operation n (every later operation fails),
    // for every n, then the machine crashes. Every acknowledged LSN must come back, exactly.
    fn workload(d: &Durable) -> Lsn {
        let mut acked = 0;
        for i in 0..40u64 {
            let sku = name(SkuId::new, "s", i % 3);
            let result = if i < 3 {
                d.set_stock(&sku, 100, i).map(|l| l.lsn).ok()
            } else {
                d.reserve(&one(sku.as_str(), 1), 10 + i).map(|l| l.lsn).ok()
            };
            let Some(lsn) = result else { break };
            if d.wal().wait(lsn).is_err() {
                break;
            }
            acked = lsn;
            if i % 13 == 12 && d.snapshot(100, true).is_err() {
                break;
            }
        }
        acked
    }
    let probe = MemStorage::new();
    let (d, _) = Durable::open(Arc::new(probe.clone()), config(2), options()).expect("open");
    let before = probe.ops();
    workload(&d);
    let total = probe.ops() - before + 2;
    d.close().expect("close");
    // The workload is deterministic, so the probe's log is the record sequence every run follows.
    let expected: Vec<Record> = records_in(&probe).into_iter().map(|(_, r)| r).collect();
    for n in 0..total {
        let storage = MemStorage::new();
        let (d, _) = Durable::open(Arc::new(storage.clone()), config(2), options()).expect("open");
        storage.fail_from(n, Op::Any, Fault::Io);
        let acked = workload(&d);
        let crashed = storage.crash(Crash::Tear { seed: n });
        drop(d);
        let (recovered, opened) = Durable::open(Arc::new(crashed.clone()), config(2), options())
            .unwrap_or_else(|e| panic!("disk died after operation {n}: recovery failed: {e}"));
        let kept = opened.recovery.next_lsn - 1;
        nothing_after_the_end(&crashed).unwrap_or_else(|e| panic!("operation {n}: {e}"));
        assert!(kept >= acked, "operation {n}: acknowledged {acked}, recovered {kept}");
        let reference = Engine::new(config(2)).expect("config");
        for record in &expected[..kept as usize] {
            reference.apply(record).expect("reference replay");
        }
        assert_eq!(recovered.engine().export(100), reference.export(100), "operation {n}: recovered state");
        recovered.engine().check_consistency().unwrap_or_else(|e| panic!("operation {n}: {e}"));
    }
}

/// Ids never repeat in a data directory's life, whatever shard count each run uses: the sequences
/// survive in snapshots and replay per shard index, not only while the layout stays the same.
#[test]
fn a_changed_shard_count_never_reissues_an_id() {
    let settings = |shards| EngineConfig { ended_retention_ms: 1_000, ..config(shards) };
    let storage = MemStorage::new();
    let mut issued = std::collections::BTreeSet::new();
    let mut now = 10;
    let mut run = |shards: usize, snapshot: bool, issued: &mut std::collections::BTreeSet<ReservationId>| {
        let (d, _) = Durable::open(Arc::new(storage.clone()), settings(shards), options())
            .unwrap_or_else(|e| panic!("opening with {shards} shards: {e}"));
        for i in 0..8 {
            let sku = name(SkuId::new, "s", i);
            if d.engine().stock(sku.as_str()).is_none() {
                d.set_stock(&sku, 1_000, now).expect("stock");
            }
        }
        for i in 0..16 {
            now += 10;
            let r = d.reserve(&one(&format!("s{}", i % 8), 1), now).expect("reserve");
            assert!(issued.insert(r.value.id), "{shards} shards reissued {}", r.value.id);
            d.release(r.value.id, now).expect("release");
        }
        // Ended holds age out, so the snapshot lists none of the ids issued so far.
        now += 10_000;
        if snapshot {
            d.snapshot(now, false).expect("snapshot");
            let r = d.reserve(&one("s0", 1), now).expect("one record after the snapshot");
            assert!(issued.insert(r.value.id), "{shards} shards reissued {}", r.value.id);
        }
        d.wal().wait(d.wal().appended_lsn()).expect("durable");
        d.close().expect("close");
    };
    for (shards, snapshot) in [(8, true), (4, false), (4, true), (8, false), (3, true), (8, true), (1, false)]
    {
        run(shards, snapshot, &mut issued);
    }
}
