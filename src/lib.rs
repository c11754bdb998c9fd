//! holdfast: a flash-sale inventory reservation server.
//!
//! Code map:
//! - [`engine`]: per-SKU stock and TTL reservations in memory. Pure and deterministic: no I/O, no clock.
//! - [`durable`]: the engine writing through the write-ahead log (`holdfast-wal`); replay on start.
//! - [`limits`]: every hard limit, with the assertions that tie them together.
//! - [`clock`]: the one place that reads time (and a test clock).
//! - [`http`]: the HTTP API: accept loop, limits, routes, JSON, problem responses, metrics.
//! - [`serve`]: recovery, the server, the expiry and snapshot tickers, shutdown in order.
//! - [`config`]: `holdfast serve` settings from flags, environment and a TOML file.
//! - [`reconcile`]: Postgres: migrations, the mirror of the log, drift checks, warm-start, restocks.
//! - [`orders`]: orders and payment webhooks, the checkout saga, in the engine's log.
//! - [`carts`]: carts keyed by the caller's id, merged and checked out, in the engine's log.
//! - [`admin`]: `holdfast wal …` and `holdfast snapshot …`, the SRE tools for a data directory.
//! - `sync`: the locks and atomics the engine uses, swapped for loom's under `--cfg holdfast_loom`.
//!
//! The engine knows nothing of the log, HTTP or time; the log (crate `holdfast-wal`) knows nothing of
//! the engine; `durable` is where they meet; `http` knows the engine's types only to convert them.

pub mod admin;
pub mod carts;
pub mod clock;
pub mod config;
pub mod durable;
pub mod engine;
pub mod files;
pub mod http;
mod integral;
pub mod limits;
mod object_only;
pub mod orders;
pub mod reconcile;
pub mod serve;
mod sync;
pub mod waitroom;
