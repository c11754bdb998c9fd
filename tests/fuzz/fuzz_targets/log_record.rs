//! A log record's payload: decoding never panics, and what decodes encodes back to the same record.
#![no_main]

use holdfast::durable::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Payloads sit 16-byte aligned in the log; rkyv reads them in place.
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    if let Ok(record) = codec::decode(&aligned) {
        let mut out = Vec::new();
        codec::encode(&record, &mut out);
        let mut again = rkyv::util::AlignedVec::<16>::new();
        again.extend_from_slice(&out);
        assert_eq!(codec::decode(&again).expect("an encoded record decodes"), record);
    }
});
