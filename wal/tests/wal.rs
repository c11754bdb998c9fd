//! The log against its promises: what was acknowledged survives any crash; a torn tail is cut and
//! reported; corruption before the tail is refused with file, offset and LSN; a failed write or sync
//! poisons the log; a full disk refuses appends without poisoning it.

use holdfast_wal::storage::{Crash, Fault, FsStorage, MemStorage, Op, Storage};
use holdfast_wal::{Durability, Lsn, Wal, WalError, WalOptions, SEGMENT_BYTES_MIN};
use std::sync::Arc;
use std::time::Duration;

fn payload(i: u64) -> Vec<u8> {
    // Varied sizes, so frames cross sectors and pad differently.
    let len = 1 + (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn small() -> WalOptions {
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, durability: Durability::Always, observer: None }
}

/// Segments large enough for every workload here, small enough to copy quickly in memory.
fn medium() -> WalOptions {
    WalOptions { segment_bytes: 2 << 20, durability: Durability::Always, observer: None }
}

type Opened = (Wal, Vec<(Lsn, Vec<u8>)>, holdfast_wal::Recovery);

/// Opens the log and returns every record in it.
fn open(storage: &MemStorage, options: WalOptions) -> Result<Opened, WalError> {
    let mut records = Vec::new();
    let (wal, recovery) = Wal::open(Arc::new(storage.clone()), options, 1, |lsn, bytes| {
        records.push((lsn, bytes.to_vec()));
        Ok(())
    })?;
    Ok((wal, records, recovery))
}

/// The recovered records are 1..=n with the payloads appended, and n covers every acknowledged LSN.
fn check_prefix(records: &[(Lsn, Vec<u8>)], acked: Lsn) {
    for (i, (lsn, bytes)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "records in order without gaps");
        assert_eq!(*bytes, payload(*lsn), "record {lsn} intact");
    }
    assert!(records.len() as u64 >= acked, "acknowledged {acked} but recovered {}", records.len());
}

#[test]
fn appended_records_come_back_in_order_after_reopen() {
    let storage = MemStorage::new();
    let (wal, records, recovery) = open(&storage, medium()).unwrap();
    assert!(records.is_empty());
    assert_eq!(recovery.next_lsn, 1);
    for i in 1..=100 {
        assert_eq!(wal.append(&payload(i)).unwrap(), i);
    }
    wal.wait(100).unwrap();
    wal.close().unwrap();
    let (wal, records, recovery) = open(&storage.crash(Crash::LoseUnsynced), medium()).unwrap();
    check_prefix(&records, 100);
    assert_eq!(records.len(), 100);
    assert_eq!((recovery.next_lsn, recovery.torn), (101, None));
    assert_eq!(wal.append(b"next").unwrap(), 101);
}

#[test]
fn replay_can_start_from_a_later_lsn() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, medium()).unwrap();
    for i in 1..=10 {
        wal.append(&payload(i)).unwrap();
    }
    wal.close().unwrap();
    let mut seen = Vec::new();
    let (_wal, recovery) = Wal::open(Arc::new(storage), medium(), 7, |lsn, _| {
        seen.push(lsn);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec![7, 8, 9, 10]);
    assert_eq!(recovery.records, 10);
}

#[test]
fn concurrent_appenders_share_syncs() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, medium()).unwrap();
    let wal = Arc::new(wal);
    std::thread::scope(|s| {
        for _ in 0..16 {
            let wal = wal.clone();
            s.spawn(move || {
                for _ in 0..200 {
                    let lsn = wal.append(b"sixteen threads").unwrap();
                    wal.wait(lsn).unwrap();
                }
            });
        }
    });
    assert_eq!(wal.acked_lsn(), 3_200);
    assert!(wal.batches() < 3_200, "{} batches for 3200 appends: no group commit", wal.batches());
}

#[test]
fn segments_rotate_and_replay_continues_across_them() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, small()).unwrap();
    let big = vec![7u8; 200_000];
    for _ in 0..30 {
        let lsn = wal.append(&big).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let segments = storage.list().unwrap().len();
    assert!(segments > 3, "only {segments} segments");
    let (_wal, records, recovery) = open(&storage.crash(Crash::LoseUnsynced), small()).unwrap();
    assert_eq!(records.len(), 30);
    assert_eq!(recovery.segments, segments);
}

/// Appends from several threads, each waiting for its own record; returns the highest LSN it saw
/// acknowledged before the storage failed or the count ran out.
fn workload(wal: &Wal, records: u64) -> Lsn {
    let mut acked = 0;
    for i in 1..=records {
        let Ok(lsn) = wal.append(&payload(i)) else { break };
        assert_eq!(lsn, i);
        if i % 7 == 0 || i == records {
            match wal.wait(lsn) {
                Ok(()) => acked = lsn,
                Err(_) => break,
            }
        }
    }
    acked
}

/// A log that a seeded workload wrote and a seeded crash hit (losing, tearing or scrambling the
/// unsynced tail, with a batch in flight or not): the crashed disk, its options, the last LSN
/// acknowledged, and how it crashed.
fn crashed_log(seed: u64) -> (MemStorage, WalOptions, Lsn, Crash) {
    let storage = MemStorage::new();
    let options = if seed.is_multiple_of(4) { small() } else { medium() };
    let (wal, ..) = open(&storage, options.clone()).expect("a new log opens");
    let appended = 20 + seed % 50;
    let acked = workload(&wal, appended);
    // Half the seeds crash with a batch written but never synced (its sync fails), so that the crash
    // has written bytes to lose, tear or scramble; the others with whatever the flusher had reached.
    let unsynced = seed % 2 == 1;
    if unsynced {
        storage.fail_from(0, Op::Sync, Fault::Io);
    }
    let mut last = acked;
    for i in appended + 1..=appended + 1 + seed % 5 {
        let Ok(lsn) = wal.append(&payload(i)) else { break };
        last = lsn;
    }
    if unsynced {
        assert!(wal.wait(last).is_err(), "seed {seed}: a failed sync acknowledged {last}");
    }
    let how = match seed % 3 {
        0 => Crash::LoseUnsynced,
        1 => Crash::Tear { seed },
        _ => Crash::Scramble { seed },
    };
    let crashed = storage.crash(how);
    drop(wal);
    (crashed, options, acked, how)
}

#[test]
fn every_crash_keeps_what_was_acknowledged_and_cuts_the_rest() {
    // Seeds over three ways to crash: losing, tearing, and scrambling the unsynced tail.
    let seeds: u64 = std::env::var("WAL_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    for seed in 0..seeds {
        let (crashed, options, acked, how) = crashed_log(seed);
        let (wal, records, recovery) =
            open(&crashed, options.clone()).unwrap_or_else(|e| panic!("seed {seed} ({how:?}): {e}"));
        check_prefix(&records, acked);
        assert_eq!(recovery.next_lsn, records.len() as u64 + 1, "seed {seed}");
        let (inspection, _) = inspect_all(&crashed);
        let last = inspection.segments.last().expect("a segment");
        let bytes = crashed.read(&last.name).unwrap();
        let stray = bytes[last.end_offset as usize..].iter().position(|b| *b != 0);
        assert_eq!(stray, None, "seed {seed} ({how:?}): bytes left after the last record of {}", last.name);
        // The recovered log takes appends and opens cleanly again.
        let next = wal.append(&payload(recovery.next_lsn)).unwrap();
        wal.wait(next).unwrap();
        wal.close().unwrap();
        let (_, again, recovery) = open(&crashed.crash(Crash::LoseUnsynced), options).unwrap();
        assert_eq!(again.len() as u64, next, "seed {seed}");
        assert_eq!(recovery.torn, None, "seed {seed}: a clean log has no torn tail");
    }
}

#[test]
fn a_crash_after_any_storage_operation_loses_nothing_acknowledged() {
    // Count the operations of a fixed workload, then rerun it with the disk dying after operation n,
    // for every n, and crash.
    let probe = MemStorage::new();
    let (wal, ..) = open(&probe, small()).unwrap();
    let before = probe.ops();
    workload(&wal, 40);
    let total = probe.ops() - before + 2;
    drop(wal);
    for n in 0..total {
        for how in [Crash::LoseUnsynced, Crash::Tear { seed: n }, Crash::Scramble { seed: n }] {
            let storage = MemStorage::new();
            let (wal, ..) = open(&storage, small()).unwrap();
            storage.fail_from(n, Op::Any, Fault::Io);
            let acked = workload(&wal, 40);
            let crashed = storage.crash(how);
            drop(wal);
            let (wal, records, recovery) =
                open(&crashed, small()).unwrap_or_else(|e| panic!("op {n} {how:?}: {e}"));
            check_prefix(&records, acked);
            // What recovery kept is final: the next record takes the next LSN, and nothing the crash
            // left behind it comes back after a clean restart.
            let next = wal.append(&payload(recovery.next_lsn)).unwrap();
            wal.wait(next).unwrap();
            wal.close().unwrap();
            let (_, again, _) = open(&crashed.crash(Crash::LoseUnsynced), small()).unwrap();
            assert_eq!(again.len() as u64, next, "op {n} {how:?}: a record came back after the cut");
        }
    }
}

#[test]
fn corruption_before_the_tail_is_refused_with_file_offset_and_lsn() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, medium()).unwrap();
    for i in 1..=20 {
        let lsn = wal.append(&payload(i)).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let name = storage.list().unwrap()[0].clone();
    let bytes = storage.read(&name).unwrap();
    // Find record 5's frame: the fifth frame after the header.
    let mut offset = 64;
    for i in 1..5 {
        offset += holdfast_wal::frame_bytes(payload(i).len());
    }
    assert_eq!(u64::from_le_bytes(bytes[offset + 8..offset + 16].try_into().unwrap()), 5);
    storage.corrupt(&name, offset + 40, &[bytes[offset + 40] ^ 0x01]);
    match open(&storage, medium()) {
        Err(WalError::Corrupt { file, offset: at, lsn, reason }) => {
            assert_eq!((file, at, lsn), (name, offset as u64, 5));
            assert!(reason.contains("checksum"), "{reason}");
        }
        Ok(_) => panic!("opened a corrupt log"),
        Err(e) => panic!("wrong error {e}"),
    }
}

#[test]
fn a_damaged_segment_header_is_refused_unless_it_is_a_new_last_segment() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, small()).unwrap();
    for _ in 0..12 {
        let lsn = wal.append(&vec![1u8; 200_000]).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let names = storage.list().unwrap();
    storage.corrupt(&names[0], 20, &[0xff]);
    match open(&storage, small()) {
        Err(WalError::Corrupt { file, offset: 0, .. }) => assert_eq!(file, names[0]),
        other => panic!("expected corruption of {}, got {:?}", names[0], other.map(|(_, r, _)| r.len())),
    }
}

/// A log of `acked` records synced one by one, then `unsynced` more appended in interval mode and
/// written as one batch (they carry the same batch LSN), as a power loss mid-batch would find them.
fn log_with_open_batch(options: WalOptions, acked: u64, unsynced: u64, size: usize) -> MemStorage {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, options.clone()).expect("in-memory log");
    for _ in 0..acked {
        wal.wait(wal.append(&vec![1u8; size]).expect("in-memory log")).expect("in-memory log");
    }
    wal.close().expect("in-memory log");
    let interval =
        WalOptions { durability: Durability::Interval { every: Duration::from_secs(3600) }, ..options };
    let (wal, ..) = open(&storage, interval).expect("in-memory log");
    for _ in 0..unsynced {
        wal.append(&vec![2u8; size]).expect("in-memory log");
    }
    wal.close().expect("in-memory log");
    storage
}

/// The offset of frame `lsn` in a segment whose records, from `first`, all have `size` bytes.
fn frame_offset(first: Lsn, lsn: Lsn, size: usize) -> usize {
    64 + (lsn - first) as usize * holdfast_wal::frame_bytes(size)
}

/// The reopened log holds exactly `n` records after one more is appended and it is closed and
/// opened again: nothing the cut removed comes back behind the record that reused its LSN.
fn reopens_with_exactly(storage: &MemStorage, options: WalOptions, next: Lsn, size: usize) {
    let (wal, _, recovery) = open(storage, options.clone()).expect("in-memory log");
    assert_eq!(recovery.next_lsn, next);
    assert_eq!(wal.append(&vec![3u8; size]).expect("in-memory log"), next);
    wal.close().expect("in-memory log");
    let (_, records, recovery) = open(storage, options).expect("in-memory log");
    assert_eq!(records.len() as u64, next, "a cut record came back");
    assert_eq!(recovery.torn, None);
}

#[test]
fn a_torn_batch_whose_first_header_reads_as_zeros_is_cut() {
    // Records 1..=3 acknowledged; 4 and 5 one batch, never synced: 4's header sector lost, 5 kept.
    let storage = log_with_open_batch(medium(), 3, 2, 100);
    let name = storage.list().unwrap()[0].clone();
    let at = frame_offset(1, 4, 100);
    storage.corrupt(&name, at, &[0; 32]);
    let (inspection, _) = inspect_all(&storage);
    assert!(!inspection.is_corrupt(), "{:?}", inspection.problems);
    let (_, records, recovery) = open(&storage, medium()).unwrap();
    assert_eq!(records.len(), 3);
    let torn = recovery.torn.expect("the stale frame 5 is cut and reported");
    assert_eq!((torn.file, torn.offset, torn.lsn), (name, at as u64, 4));
    assert_eq!(inspection.problems.len(), 1, "inspection names the same tear");
    reopens_with_exactly(&storage, medium(), 4, 100);
}

#[test]
fn a_torn_batch_across_a_segment_rotation_is_cut_not_called_corruption() {
    // 400 KB records: two fit in the smallest segment. Record 1 acknowledged; 2 (first segment) and 3
    // (second segment) one batch, never synced; 2's header lost.
    let size = 400_000;
    let storage = log_with_open_batch(small(), 1, 2, size);
    let mut names = storage.list().unwrap();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    storage.corrupt(&names[0], frame_offset(1, 2, size), &[0; 32]);
    let (inspection, _) = inspect_all(&storage);
    assert!(!inspection.is_corrupt(), "{:?}", inspection.problems);
    holdfast_wal::repair(&storage.clone()).expect("repair cuts a torn tail");
    assert_eq!(storage.list().unwrap().len(), 1, "the second segment was part of the torn batch");
    reopens_with_exactly(&storage, small(), 2, size);
}

#[test]
fn a_batch_lost_whole_across_a_rotation_leaves_an_empty_new_segment_that_is_cut() {
    // Record 1 acknowledged; 2 (first segment) and 3 (a new segment) one batch that never reached the
    // disk: frame 2 is zeros, and the new segment was created and preallocated but holds only zeros.
    let size = 400_000;
    let storage = log_with_open_batch(small(), 1, 2, size);
    let mut names = storage.list().expect("list");
    names.sort();
    storage.corrupt(&names[0], frame_offset(1, 2, size), &vec![0; holdfast_wal::frame_bytes(size)]);
    let len = storage.read(&names[1]).expect("segment").len();
    storage.corrupt(&names[1], 0, &vec![0; len]);
    let (inspection, _) = inspect_all(&storage);
    assert!(!inspection.is_corrupt() && !inspection.is_intact(), "{:?}", inspection.problems);
    let (_, records, recovery) = open(&storage, small()).expect("a lost batch is a torn tail");
    assert_eq!(records.len(), 1);
    assert!(recovery.torn.is_some());
    assert_eq!(storage.list().expect("list").len(), 1, "the empty segment went with the tail");
}

#[test]
fn a_damaged_record_a_snapshot_covers_is_corruption_not_a_tear() {
    let storage = log_with_open_batch(medium(), 5, 0, 100);
    holdfast_wal::snapshot::write_snapshot(&storage, 5, &[7u8; 64]).expect("snapshot");
    let name = storage.list().expect("list").into_iter().find(|n| n.ends_with(".wal")).expect("segment");
    let at = frame_offset(1, 5, 100) + 40;
    let byte = storage.read(&name).expect("segment")[at];
    storage.corrupt(&name, at, &[byte ^ 1]);
    let before = contents(&storage);
    match open(&storage, medium()) {
        Err(WalError::Corrupt { lsn: 5, reason, .. }) => assert!(reason.contains("snapshot"), "{reason}"),
        other => panic!("expected corruption at LSN 5, got {:?}", other.map(|(_, r, _)| r.len())),
    }
    assert_eq!(contents(&storage), before, "nothing cut");
    assert!(inspect_all(&storage).0.is_corrupt());
}

#[test]
fn a_damaged_header_over_acknowledged_records_is_corruption_never_deletion() {
    let storage = log_with_open_batch(medium(), 9, 0, 100);
    let name = storage.list().unwrap()[0].clone();
    let byte = storage.read(&name).unwrap()[20];
    storage.corrupt(&name, 20, &[byte ^ 1]);
    let before = contents(&storage);
    match open(&storage, medium()) {
        Err(WalError::Corrupt { file, offset: 0, lsn: 1, .. }) => assert_eq!(file, name),
        other => panic!("expected corruption of {name}, got {:?}", other.map(|(_, r, _)| r.len())),
    }
    assert!(inspect_all(&storage).0.is_corrupt());
    assert!(holdfast_wal::repair(&storage).is_err());
    assert_eq!(contents(&storage), before, "nothing removed");
}

#[test]
fn a_new_last_segment_whose_header_and_first_frame_were_lost_is_removed() {
    // The crash came while the first batch of a new segment was written: its first sector (header
    // and frame 2) is gone, a later frame of the same batch survived.
    let storage = log_with_open_batch(small(), 0, 0, 10);
    let (wal, ..) = open(&storage, small()).unwrap();
    wal.wait(wal.append(&vec![1u8; 900_000]).unwrap()).unwrap();
    wal.close().unwrap();
    let storage = log_with_open_batch_on(storage, 3, 200_000);
    let mut names = storage.list().unwrap();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    storage.corrupt(&names[1], 0, &[0; 512]);
    let (_, records, recovery) = open(&storage, small()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(recovery.torn.map(|t| (t.file, t.lsn)), Some((names[1].clone(), 2)));
}

/// Appends `n` records of `size` bytes in interval mode (one batch, synced only at close).
fn log_with_open_batch_on(storage: MemStorage, n: u64, size: usize) -> MemStorage {
    let interval =
        WalOptions { durability: Durability::Interval { every: Duration::from_secs(3600) }, ..small() };
    let (wal, ..) = open(&storage, interval).expect("in-memory log");
    for _ in 0..n {
        wal.append(&vec![2u8; size]).expect("in-memory log");
    }
    wal.close().expect("in-memory log");
    storage
}

#[test]
fn a_failed_sync_poisons_the_log_for_good() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, medium()).unwrap();
    let first = wal.append(b"first").unwrap();
    wal.wait(first).unwrap();
    storage.fail_from(0, Op::Sync, Fault::Io);
    let second = wal.append(b"second").unwrap();
    assert!(matches!(wal.wait(second), Err(WalError::Poisoned { .. })));
    storage.clear_fault();
    // The fault is gone, but the log must not trust the kernel's word on the lost pages.
    assert!(matches!(wal.append(b"third"), Err(WalError::Poisoned { .. })));
    assert!(wal.poisoned().unwrap().contains("sync"));
    assert!(wal.close().is_err());
}

#[test]
fn a_failed_write_poisons_the_log() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, medium()).unwrap();
    storage.fail_from(0, Op::Write, Fault::Io);
    let lsn = wal.append(b"doomed").unwrap();
    assert!(matches!(wal.wait(lsn), Err(WalError::Poisoned { .. })));
    assert!(matches!(wal.append(b"after"), Err(WalError::Poisoned { .. })));
}

#[test]
fn a_full_disk_refuses_appends_without_poisoning_the_log() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, small()).unwrap();
    let big = vec![3u8; 300_000];
    let mut acked = 0;
    storage.fail_from(0, Op::Allocate, Fault::NoSpace);
    let mut refused = 0;
    for _ in 0..10 {
        match wal.append(&big) {
            Ok(lsn) => {
                wal.wait(lsn).unwrap();
                acked = lsn;
            }
            Err(WalError::NoSpace { .. }) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(acked >= 1 && refused >= 1, "acked {acked}, refused {refused}");
    assert!(wal.poisoned().is_none());
    storage.clear_fault();
    let lsn = wal.append(&big).expect("space is back");
    assert_eq!(lsn, acked + 1, "refused appends took no LSN");
    wal.wait(lsn).unwrap();
    wal.close().unwrap();
    let (_, records, _) = open(&storage.crash(Crash::LoseUnsynced), small()).unwrap();
    assert_eq!(records.len() as u64, lsn);
}

#[test]
fn interval_mode_acknowledges_before_syncing_and_recovers_a_prefix() {
    let storage = MemStorage::new();
    let options = WalOptions {
        durability: Durability::Interval { every: std::time::Duration::from_secs(3600) },
        ..WalOptions::default()
    };
    let (wal, ..) = open(&storage, options.clone()).unwrap();
    let lsn = workload(&wal, 30);
    assert_eq!(lsn, 30, "acknowledged without a sync");
    let crashed = storage.crash(Crash::LoseUnsynced);
    let (_, records, _) = open(&crashed, options.clone()).unwrap();
    assert!(records.len() < 30, "a power loss takes the unsynced window: the documented risk");
    check_prefix(&records, 0);
    // Closing syncs.
    wal.close().unwrap();
    let (_, records, _) = open(&storage.crash(Crash::LoseUnsynced), options).unwrap();
    assert_eq!(records.len(), 30);
}

#[test]
fn real_files_round_trip_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(dir.path()).unwrap());
    let (wal, _) = Wal::open(storage.clone(), WalOptions::default(), 1, |_, _| Ok(())).unwrap();
    for i in 1..=50 {
        wal.append(&payload(i)).unwrap();
    }
    wal.wait(50).unwrap();
    wal.close().unwrap();
    // Half a record at the tail, as a crash mid-write leaves it.
    let name = storage.list().unwrap()[0].clone();
    let file = storage.open(&name).unwrap();
    let mut end = 64u64;
    for i in 1..=50 {
        end += holdfast_wal::frame_bytes(payload(i).len()) as u64;
    }
    let mut half = Vec::new();
    holdfast_wal_test_frame(&mut half, 51);
    file.write_all_at(&half[..half.len() / 2], end).unwrap();
    let mut count = 0;
    let (_wal, recovery) = Wal::open(storage, WalOptions::default(), 1, |_, _| {
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, 50);
    let torn = recovery.torn.expect("the half record is reported");
    assert_eq!((torn.file, torn.offset, torn.lsn), (name, end, 51));
    assert!(torn.bytes > 0);
}

#[test]
fn the_log_directory_and_its_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("wal");
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(&path).unwrap());
    let (wal, _) = Wal::open(storage.clone(), WalOptions::default(), 1, |_, _| Ok(())).unwrap();
    wal.close().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    assert_eq!(mode(path.parent().unwrap()), 0o700, "parents it creates too");
    for name in storage.list().unwrap() {
        assert_eq!(mode(&path.join(&name)), 0o600, "{name}");
    }
}

/// A frame as the log writes it, built by a throwaway log in memory.
fn holdfast_wal_test_frame(out: &mut Vec<u8>, lsn: Lsn) {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, medium()).expect("open");
    for i in 1..=lsn {
        wal.append(&payload(i)).expect("append");
    }
    wal.close().expect("close");
    let bytes = storage.read(&storage.list().expect("list")[0]).expect("read");
    let start = 64 + (1..lsn).map(|i| holdfast_wal::frame_bytes(payload(i).len())).sum::<usize>();
    out.extend_from_slice(&bytes[start..start + holdfast_wal::frame_bytes(payload(lsn).len())]);
}

fn contents(storage: &MemStorage) -> Vec<(String, Vec<u8>)> {
    let mut names = storage.list().expect("list");
    names.sort();
    names.into_iter().map(|n| (n.clone(), storage.read(&n).expect("listed file"))).collect()
}

fn inspect_all(storage: &MemStorage) -> (holdfast_wal::Inspection, Vec<Lsn>) {
    let mut lsns = Vec::new();
    let inspection = holdfast_wal::inspect(storage, 1, &mut |r| {
        lsns.push(r.lsn);
        Ok(())
    })
    .expect("inspection reads");
    (inspection, lsns)
}

/// The read-only inspection classifies a crashed log as recovery does, changes no byte, and `repair`
/// then cuts exactly what recovery would.
#[test]
fn inspection_agrees_with_recovery_and_repair_cuts_the_same_tail() {
    for seed in 0..120u64 {
        let (crashed, options, ..) = crashed_log(seed);
        let before = contents(&crashed);
        let (inspection, lsns) = inspect_all(&crashed);
        assert_eq!(contents(&crashed), before, "seed {seed}: inspection wrote");
        assert!(!inspection.is_corrupt(), "seed {seed}: {:?}", inspection.problems);

        let repaired = crashed.crash(Crash::LoseUnsynced);
        let recovery = holdfast_wal::repair(&repaired).unwrap();
        assert_eq!(recovery.next_lsn, inspection.next_lsn, "seed {seed}");
        assert_eq!(
            lsns,
            (1..inspection.next_lsn).collect::<Vec<_>>(),
            "seed {seed}: every valid record, in order"
        );
        let torn: Vec<_> = inspection
            .problems
            .iter()
            .map(|p| match p {
                holdfast_wal::LogProblem::Torn(t) => t.clone(),
                other => panic!("seed {seed}: {other:?}"),
            })
            .collect();
        assert_eq!(torn.first(), recovery.torn.as_ref(), "seed {seed}: the same tail");
        let (after, _) = inspect_all(&repaired);
        assert!(after.is_intact(), "seed {seed}: still {:?} after repair", after.problems);
        let (_, records, _) = open(&repaired, options).unwrap();
        assert_eq!(records.len() as u64 + 1, inspection.next_lsn, "seed {seed}");
    }
}

/// Corruption in two places is reported twice, each with its file, offset and LSN; a missing segment
/// is reported as the records it held; `repair` refuses and changes nothing.
#[test]
fn inspection_names_every_damaged_place_and_repair_refuses_corruption() {
    let storage = MemStorage::new();
    let (wal, ..) = open(&storage, small()).unwrap();
    for i in 1..=900 {
        let lsn = wal.append(&vec![(i % 251) as u8; 6_000]).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let mut names = storage.list().unwrap();
    names.sort();
    assert!(names.len() >= 4, "{} segments", names.len());
    let first_frame = 64; // after the segment header
    storage.corrupt(&names[0], first_frame + 48, &[0xAA]);
    storage.corrupt(&names[2], first_frame + 48, &[0xAA]);
    let before = contents(&storage);
    let (inspection, _) = inspect_all(&storage);
    let corrupt: Vec<_> = inspection
        .problems
        .iter()
        .filter_map(|p| match p {
            holdfast_wal::LogProblem::Corrupt { file, offset, lsn, .. } => {
                Some((file.clone(), *offset, *lsn))
            }
            _ => None,
        })
        .collect();
    let first_of = |n: &str| n.trim_end_matches(".wal").parse::<u64>().unwrap();
    assert!(corrupt.contains(&(names[0].clone(), first_frame as u64, 1)), "{corrupt:?}");
    assert!(corrupt.contains(&(names[2].clone(), first_frame as u64, first_of(&names[2]))), "{corrupt:?}");
    assert!(matches!(holdfast_wal::repair(&storage), Err(WalError::Corrupt { .. })));
    assert_eq!(contents(&storage), before, "a refused repair changes nothing");

    // A missing middle segment: its records are named as missing.
    let gone = MemStorage::new();
    let (wal, ..) = open(&gone, small()).unwrap();
    for _ in 1..=900 {
        let lsn = wal.append(&[7u8; 6_000]).unwrap();
        wal.wait(lsn).unwrap();
    }
    wal.close().unwrap();
    let mut names = gone.list().unwrap();
    names.sort();
    gone.remove(&names[1]).unwrap();
    let (inspection, _) = inspect_all(&gone);
    let missing = inspection.problems.iter().any(|p| {
        matches!(p, holdfast_wal::LogProblem::Corrupt { file, reason, .. } if *file == names[2] && reason.contains("missing"))
    });
    assert!(missing, "{:?}", inspection.problems);
}

/// Payloads of about 2 KB, so that a few thousand records fill several of the smallest segments.
fn big(i: u64) -> Vec<u8> {
    payload(i).repeat(2_000 / payload(i).len() + 1)
}

/// A tail reader follows a log being written, across segments, from any LSN it still holds, reading
/// only what was acknowledged.
#[test]
fn a_tail_follows_a_log_while_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FsStorage::new(dir.path()).unwrap()) as Arc<dyn Storage>;
    for storage in [Arc::new(MemStorage::new()) as Arc<dyn Storage>, fs] {
        let (wal, _) = Wal::open(storage.clone(), small(), 1, |_, _| Ok(())).unwrap();
        let wal = Arc::new(wal);
        let total = 3_000u64;
        let writer = {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 1..=total {
                    let lsn = wal.append(&big(i)).unwrap();
                    if i % 13 == 0 || i == total {
                        wal.wait(lsn).unwrap();
                    }
                }
            })
        };
        let mut tail = holdfast_wal::Tail::new(storage.clone(), 1).unwrap();
        let mut seen = 0u64;
        while seen < total {
            let to = wal.acked_lsn();
            tail.read(to, 500, &mut |lsn, bytes| {
                seen += 1;
                if lsn != seen || bytes != big(lsn) {
                    return Err(format!("record {lsn} out of order or damaged"));
                }
                Ok(())
            })
            .unwrap();
        }
        writer.join().unwrap();
        assert_eq!(tail.next_lsn(), total + 1);
        assert!(storage.list().unwrap().len() > 2, "the log rotated segments");

        // From the middle, and nothing beyond the acknowledged LSN.
        let mut tail = holdfast_wal::Tail::new(storage.clone(), 1_234).unwrap();
        let mut got = Vec::new();
        tail.read(1_240, usize::MAX, &mut |lsn, _| {
            got.push(lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, (1_234..=1_240).collect::<Vec<_>>());
        assert!(holdfast_wal::Tail::new(storage.clone(), total + 5).is_err(), "beyond the end");
        Arc::try_unwrap(wal).ok().unwrap().close().unwrap();
    }
}
