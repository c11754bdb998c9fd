//! A snapshot's payload: decoding never panics, and a decoded state either restores into an engine
//! that passes its consistency check or is refused with an error.
#![no_main]

use holdfast::durable::codec;
use holdfast::engine::{Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    if let Ok(state) = codec::decode_state(&aligned) {
        let config = EngineConfig { shards: 2, ..EngineConfig::default() };
        if let Ok(engine) = Engine::restore(config, &state) {
            engine.check_consistency().expect("a restored engine is consistent");
        }
    }
});
