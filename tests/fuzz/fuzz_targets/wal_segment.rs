//! Arbitrary bytes as a log segment (after a valid header, so frames are reached): inspecting and
//! recovering never panic, agree on where the valid records end, and a repaired log inspects clean.
#![no_main]

use holdfast_wal::storage::{MemStorage, Storage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::new();
    // A real header, from a log the library writes, then the fuzzer's bytes as its frames.
    let options = holdfast_wal::WalOptions {
        segment_bytes: holdfast_wal::SEGMENT_BYTES_MIN,
        ..holdfast_wal::WalOptions::default()
    };
    let (wal, _) = holdfast_wal::Wal::open(std::sync::Arc::new(storage.clone()), options, 1, |_, _| Ok(()))
        .expect("a new log opens");
    let lsn = wal.append(b"first").expect("append");
    wal.wait(lsn).expect("sync");
    wal.close().expect("close");
    let name = storage.list().expect("list").into_iter().next().expect("a segment");
    let header = holdfast_wal::SEGMENT_HEADER_BYTES as usize;
    storage.corrupt(&name, header, data);
    let inspected = holdfast_wal::inspect(&storage, 1, &mut |_| Ok(())).expect("inspection reads");
    match holdfast_wal::repair(&storage) {
        Ok(recovery) => {
            assert!(!inspected.is_corrupt(), "repair accepted what inspection called corrupt");
            assert_eq!(recovery.next_lsn, inspected.next_lsn);
            let after = holdfast_wal::inspect(&storage, 1, &mut |_| Ok(())).expect("inspection reads");
            assert!(after.is_intact(), "{:?}", after.problems);
        }
        Err(_) => assert!(inspected.is_corrupt(), "recovery refused what inspection accepted"),
    }
});
