//! holdfast: a flash-sale inventory reservation server.
//!
//! Code map:
//! - [`engine`]: per-SKU stock and TTL reservations in memory. Pure and deterministic: no I/O, no clock.
//! - [`durable`]: the engine writing through the write-ahead log (`holdfast-wal`); replay on start.
//! - [`limits`]: every hard limit, with the assertions that tie them together.
//! - `sync`: the locks and atomics the engine uses, swapped for loom's under `--cfg holdfast_loom`.

pub mod durable;
pub mod engine;
pub mod limits;
mod sync;
