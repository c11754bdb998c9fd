//! The one module that knows both the engine and the log: apply → append → sync → acknowledge, and
//! replay on start.
//!
//! Each mutation runs in the engine with a sink that encodes its record and appends it to the log
//! while the engine's locks are held, so the log's order is a valid replay order (see
//! `ARCHITECTURE.md`). The engine applies the mutation only after the append succeeded. The caller gets
//! the outcome together with the LSN that must be acknowledged (synced) before the outcome may be
//! shown to a client: its own record's LSN, or, for an outcome that wrote nothing (an idempotent
//! repeat), the last LSN appended at that moment, which covers the record the repeat depends on.
//! Refusals (sold out, expired) promise nothing and need no wait.

pub mod codec;
pub mod settings;

use crate::carts::{Cart, CartError, ItemEdit, Merge};
use crate::engine::CartId;
use crate::engine::{
    Adjusted, ConfigError, Engine, EngineConfig, EngineState, IdempotencyKey, Joined, QueueError, Reason,
    Record, RecordSink, ReservationError, ReservationId, ReserveError, ReserveRequest, Reserved, RoomConfig,
    RoomTick, SaleId, SinkRefused, SkuId, Stock, StockError, UserId,
};
use crate::orders::{Effect, Order, OrderError, OrderId, OrderRequest, Payment};
use holdfast_wal::snapshot::{self, SnapshotFile};
use holdfast_wal::storage::Storage;
use holdfast_wal::{Lsn, Recovery, Wal, WalError, WalOptions};
use std::fmt;
use std::sync::Arc;

/// An outcome, and the LSN to wait for (`Wal::wait` or `Wal::durable`) before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged<T> {
    pub value: T,
    pub lsn: Lsn,
}

/// A mutation's failure: the engine refused it, or the log could not take its record.
#[derive(Debug, Clone)]
pub enum Refused<E> {
    Engine(E),
    Log(WalError),
}

impl<E: fmt::Debug> fmt::Display for Refused<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Engine(e) => write!(f, "refused: {e:?}"),
            Refused::Log(e) => write!(f, "not logged: {e}"),
        }
    }
}

/// Why the engine could not be opened from its snapshots and log.
#[derive(Debug)]
pub enum OpenError {
    Config(ConfigError),
    Log(WalError),
    /// The snapshot and the log do not meet: records between them are missing, or the log ends before
    /// the snapshot does. Starting would lose or reuse LSNs.
    Gap {
        snapshot_lsn: Lsn,
        log_first_lsn: Lsn,
        log_last_lsn: Lsn,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(e) => e.fmt(f),
            OpenError::Log(e) => e.fmt(f),
            OpenError::Gap { snapshot_lsn, log_first_lsn, log_last_lsn } => write!(
                f,
                "the newest usable snapshot covers LSNs up to {snapshot_lsn}, but the log holds \
                 {log_first_lsn}..={log_last_lsn}: records are missing between them"
            ),
        }
    }
}

/// What opening found, for the operator.
#[derive(Debug, Clone)]
pub struct Opened {
    pub recovery: Recovery,
    /// The snapshot the state was loaded from.
    pub snapshot: Option<SnapshotFile>,
    /// Newer snapshots that could not be used, with why; the previous one was used instead.
    pub skipped_snapshots: Vec<(String, String)>,
    /// Records replayed on top of the snapshot.
    pub replayed: u64,
}

/// When to take snapshots: after this many records or this much time since the last one, whichever
/// comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every_records: u64,
    pub every_ms: u64,
    /// Remove log segments the oldest kept snapshot covers. Off keeps the whole log (SREs may want it
    /// for investigations); recovery time is bounded by the snapshot either way.
    pub remove_covered_segments: bool,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self { every_records: 1_000_000, every_ms: 10 * 60 * 1000, remove_covered_segments: true }
    }
}

/// How many snapshots to keep; segments are removed once the oldest kept snapshot covers them, so a
/// damaged newest snapshot can still fall back to the one before it.
pub const SNAPSHOTS_KEPT: usize = 2;

/// Snapshots that could not be used: file name and why.
type Skipped = Vec<(String, String)>;

/// A snapshot file's state, read (checksum checked) and decoded, or why it cannot be.
pub fn snapshot_state(storage: &dyn Storage, file: &SnapshotFile) -> Result<EngineState, String> {
    let payload = snapshot::read_snapshot(storage, file).map_err(|e| e.to_string())?;
    codec::decode_state(payload.bytes()).map_err(|e| e.to_string())
}

/// A snapshot file restored into an engine (which checks it), or why it cannot be.
pub fn load_snapshot(
    storage: &dyn Storage,
    config: &EngineConfig,
    file: &SnapshotFile,
) -> Result<Engine, String> {
    let state = snapshot_state(storage, file)?;
    Engine::restore(config.clone(), &state).map_err(|e| e.to_string())
}

/// The newest snapshot at or before `max_lsn` that loads, and the newer ones that did not.
pub fn newest_usable(
    storage: &dyn Storage,
    config: &EngineConfig,
    max_lsn: Lsn,
) -> Result<(Option<(Engine, SnapshotFile)>, Skipped), WalError> {
    let mut skipped = Vec::new();
    for file in snapshot::list_snapshots(storage)?.into_iter().filter(|f| f.lsn <= max_lsn) {
        match load_snapshot(storage, config, &file) {
            Ok(engine) => return Ok((Some((engine, file)), skipped)),
            Err(why) => skipped.push((file.name, why)),
        }
    }
    Ok((None, skipped))
}

/// The engine's state after record `lsn` (`Lsn::MAX`: the log's end), rebuilt without changing anything
/// from the newest usable snapshot at or before it and the log after it: the engine, the snapshot's
/// LSN (0: none), and what was replayed on top. The caller checks that the log reached `lsn`.
pub fn engine_at(
    storage: &dyn Storage,
    config: &EngineConfig,
    lsn: Lsn,
) -> Result<(Engine, Lsn, Replayed), OpenError> {
    let (base, _) = newest_usable(storage, config, lsn).map_err(OpenError::Log)?;
    let (engine, from) = match base {
        Some((engine, file)) => (engine, file.lsn),
        None => (Engine::new(config.clone()).map_err(OpenError::Config)?, 0),
    };
    let replayed = if lsn > from {
        replay_range(storage, &engine, from + 1, lsn).map_err(OpenError::Log)?.1
    } else {
        Replayed::default()
    };
    Ok((engine, from, replayed))
}

impl std::error::Error for OpenError {}

/// Appends each record the engine hands it, remembering the last LSN and any failure.
struct LogSink<'a> {
    wal: &'a Wal,
    buf: Vec<u8>,
    lsn: Option<Lsn>,
    error: Option<WalError>,
}

impl RecordSink for LogSink<'_> {
    fn append(&mut self, record: &Record) -> Result<(), SinkRefused> {
        codec::encode(record, &mut self.buf);
        match self.wal.append(&self.buf) {
            Ok(lsn) => {
                self.lsn = Some(lsn);
                Ok(())
            }
            Err(e) => {
                self.error = Some(e);
                Err(SinkRefused)
            }
        }
    }
}

/// An engine whose every mutation is in the write-ahead log before it is acknowledged.
pub struct Durable {
    engine: Engine,
    wal: Wal,
    config: EngineConfig,
    /// LSN and time of the last snapshot taken or loaded, for `snapshot_if_due`.
    last_snapshot: parking_lot::Mutex<(Lsn, u64)>,
    /// The LSN of `last_snapshot`, readable while a snapshot is being taken (the mutex is held then).
    snapshot_lsn: std::sync::atomic::AtomicU64,
    /// When this process took its last snapshot (Unix ms; 0: none yet), read like `snapshot_lsn`.
    snapshot_at_ms: std::sync::atomic::AtomicU64,
    /// The first LSN a reader of the log (the Postgres mirror) still needs: segments holding it or
    /// later records are not removed. `Lsn::MAX`: nobody waits.
    retention_floor: std::sync::atomic::AtomicU64,
}

/// Orders the timer ends per pass (it holds the orders' lock meanwhile; the next pass takes the rest).
pub const ORDERS_PER_TICK: usize = 512;

/// Idle carts the timer expires per pass (it holds the carts' lock meanwhile).
pub const CARTS_PER_TICK: usize = 512;

/// Records handed from the log's scan to the applier at a time.
const REPLAY_BATCH: usize = 1024;

/// Payloads copied out of the log, each starting 16-byte aligned (rkyv reads them in place).
#[derive(Default)]
struct PayloadBatch {
    words: Vec<u128>,
    /// LSN, start (in words) and length (in bytes) of each payload.
    entries: Vec<(Lsn, usize, usize)>,
}

impl PayloadBatch {
    fn push(&mut self, lsn: Lsn, payload: &[u8]) {
        let start = self.words.len();
        self.words.resize(start + payload.len().div_ceil(16), 0);
        bytemuck::cast_slice_mut::<u128, u8>(&mut self.words[start..])[..payload.len()]
            .copy_from_slice(payload);
        self.entries.push((lsn, start, payload.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (Lsn, &[u8])> {
        let bytes: &[u8] = bytemuck::cast_slice(&self.words);
        self.entries.iter().map(move |&(lsn, start, len)| (lsn, &bytes[start * 16..start * 16 + len]))
    }
}

/// What a replay applied: how many records, and the LSN and time of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    pub records: u64,
    pub last_lsn: Lsn,
    pub last_at_ms: u64,
}

/// Replays into `engine` the payloads that `source` hands to the visitor it is given, in two stages on
/// two threads: `source` (the log's scan) reads segments and checks every frame's checksum on this
/// thread, and payloads go over in batches to a thread that decodes and applies them in order, each
/// LSN the one after the last. (Decoding stays on the applying thread, which also frees what decoding
/// allocates: frees across threads cost more than they save.)
fn pipelined<R>(
    engine: &Engine,
    source: impl FnOnce(&mut dyn FnMut(Lsn, &[u8]) -> Result<(), String>) -> R,
) -> (R, Result<Replayed, WalError>) {
    let (batches, applier_input) = crossbeam_channel::bounded::<PayloadBatch>(8);
    std::thread::scope(|s| {
        let applier = s.spawn(move || -> Result<Replayed, WalError> {
            let mut done = Replayed::default();
            for batch in applier_input {
                for (lsn, payload) in batch.iter() {
                    let fail = |reason: String| WalError::Replay { lsn, reason };
                    if done.records > 0 && lsn != done.last_lsn + 1 {
                        return Err(fail(format!("record {} is missing", done.last_lsn + 1)));
                    }
                    let record = codec::decode(payload).map_err(|e| fail(e.to_string()))?;
                    engine.apply(&record).map_err(|e| fail(e.to_string()))?;
                    done = Replayed { records: done.records + 1, last_lsn: lsn, last_at_ms: record.at_ms() };
                }
            }
            Ok(done)
        });
        let mut batch = PayloadBatch::default();
        let mut hand_over = |lsn: Lsn, payload: &[u8]| -> Result<(), String> {
            batch.push(lsn, payload);
            if batch.entries.len() == REPLAY_BATCH {
                // A closed channel means the applier stopped on an error, which it reports below.
                batches.send(std::mem::take(&mut batch)).map_err(|_| "the applier stopped".to_owned())?;
            }
            Ok(())
        };
        let produced = source(&mut hand_over);
        if !batch.entries.is_empty() {
            let _ = batches.send(std::mem::take(&mut batch));
        }
        drop(batches);
        (produced, applier.join().expect("the applier does not panic"))
    })
}

/// Opens the log and replays records from `from` into `engine`.
fn replay_log(
    storage: Arc<dyn Storage>,
    options: WalOptions,
    engine: &Engine,
    from: Lsn,
) -> Result<(Wal, Recovery, u64), OpenError> {
    let (opened, applied) = pipelined(engine, |visit| Wal::open(storage, options, from, visit));
    match (opened, applied) {
        (_, Err(e)) | (Err(e), _) => Err(OpenError::Log(e)),
        (Ok((wal, recovery)), Ok(applied)) => Ok((wal, recovery, applied.records)),
    }
}

/// Applies the records `from..=to` of the log in `storage` to `engine` without changing the log (it
/// may be in use), as fast as recovery does. Also returns the inspection of the segments read, whose
/// problems the caller may want to report.
pub fn replay_range(
    storage: &dyn Storage,
    engine: &Engine,
    from: Lsn,
    to: Lsn,
) -> Result<(holdfast_wal::Inspection, Replayed), WalError> {
    let (inspected, applied) = pipelined(engine, |visit| {
        holdfast_wal::inspect(storage, from, &mut |r| {
            if (from..=to).contains(&r.lsn) {
                visit(r.lsn, r.payload)?;
            }
            Ok(())
        })
    });
    // The applier's error first: when it stops, the scan fails only because nobody takes its batches.
    let applied = applied?;
    Ok((inspected?, applied))
}

fn replay_into(engine: &Engine) -> impl FnMut(Lsn, &[u8]) -> Result<(), String> + '_ {
    move |_lsn, payload| {
        let record = codec::decode(payload).map_err(|e| e.to_string())?;
        engine.apply(&record).map_err(|e| e.to_string())
    }
}

impl Durable {
    /// Loads the newest usable snapshot in `storage` (reporting any newer one that is damaged), replays
    /// the log after it, and is ready for mutations.
    pub fn open(
        storage: Arc<dyn Storage>,
        config: EngineConfig,
        options: WalOptions,
    ) -> Result<(Durable, Opened), OpenError> {
        let (base, skipped_snapshots) =
            newest_usable(&*storage, &config, Lsn::MAX).map_err(OpenError::Log)?;
        let (engine, snapshot) = match base {
            Some((engine, file)) => (engine, Some(file)),
            None => (Engine::new(config.clone()).map_err(OpenError::Config)?, None),
        };
        let from = snapshot.as_ref().map_or(0, |s| s.lsn);
        let (wal, recovery, replayed) = replay_log(storage, options, &engine, from + 1)?;
        let last = recovery.next_lsn - 1;
        if recovery.first_lsn > from + 1 || last < from {
            let gap =
                OpenError::Gap { snapshot_lsn: from, log_first_lsn: recovery.first_lsn, log_last_lsn: last };
            return Err(gap);
        }
        let last_snapshot = parking_lot::Mutex::new((from, 0));
        let opened = Opened { recovery, snapshot, skipped_snapshots, replayed };
        let snapshot_lsn = std::sync::atomic::AtomicU64::new(from);
        let retention_floor = std::sync::atomic::AtomicU64::new(Lsn::MAX);
        let snapshot_at_ms = std::sync::atomic::AtomicU64::new(0);
        let durable =
            Durable { engine, wal, config, last_snapshot, snapshot_lsn, snapshot_at_ms, retention_floor };
        Ok((durable, opened))
    }

    /// Takes a snapshot if `policy` says one is due at `now_ms`; the caller's periodic tick calls this.
    /// Only one snapshot is taken at a time; a call while one is running returns `None`.
    pub fn snapshot_if_due(
        &self,
        now_ms: u64,
        policy: &SnapshotPolicy,
    ) -> Result<Option<SnapshotFile>, WalError> {
        let Some(mut last) = self.last_snapshot.try_lock() else { return Ok(None) };
        let (lsn, at_ms) = *last;
        let records = self.wal.acked_lsn().saturating_sub(lsn);
        let due = records >= policy.every_records
            || (records > 0 && now_ms.saturating_sub(at_ms) >= policy.every_ms);
        if !due {
            return Ok(None);
        }
        let file = self.snapshot(now_ms, policy.remove_covered_segments)?;
        *last = (file.lsn, now_ms);
        self.snapshot_lsn.store(file.lsn, std::sync::atomic::Ordering::Relaxed);
        self.snapshot_at_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(file))
    }

    /// Writes a snapshot of the state as of the highest acknowledged LSN, built from the newest
    /// snapshot and the log (not from the live engine, which keeps serving untouched), then keeps
    /// `SNAPSHOTS_KEPT` snapshots and, if `remove_covered_segments`, removes the log segments the
    /// oldest kept one covers. `now_ms` decides which ended reservations and keys have aged out.
    pub fn snapshot(&self, now_ms: u64, remove_covered_segments: bool) -> Result<SnapshotFile, WalError> {
        let storage = &**self.wal.storage();
        let to = self.wal.acked_lsn();
        let (base, _) = newest_usable(storage, &self.config, Lsn::MAX)?;
        let (engine, from) = match base {
            Some((engine, file)) => (engine, file.lsn),
            None => (Engine::new(self.config.clone()).expect("the engine's own config is valid"), 0),
        };
        if from >= to && from > 0 {
            return Ok(SnapshotFile { name: snapshot::snapshot_name(from), lsn: from });
        }
        holdfast_wal::read_range(storage, from + 1, to, &mut replay_into(&engine))?;
        let written = snapshot::write_snapshot(storage, to, &codec::encode_state(&engine.export(now_ms)))?;
        // Only snapshots that read back intact count as kept: a damaged one is no fallback (one newer
        // than the kept ones stays for inspection). Segments go only once `SNAPSHOTS_KEPT` intact
        // snapshots cover them, so that the newest can turn out damaged and the one before serve.
        let mut intact = Vec::new();
        for file in snapshot::list_snapshots(storage)? {
            if intact.len() >= SNAPSHOTS_KEPT {
                snapshot::remove_snapshot(storage, &file)?;
            } else if snapshot::read_snapshot(storage, &file).is_ok() {
                intact.push(file);
            }
        }
        if remove_covered_segments && intact.len() >= SNAPSHOTS_KEPT {
            let oldest_kept = &intact[SNAPSHOTS_KEPT - 1];
            let floor = self.retention_floor.load(std::sync::atomic::Ordering::Relaxed);
            self.wal.remove_segments_through(oldest_kept.lsn.min(floor.saturating_sub(1)))?;
        }
        Ok(written)
    }

    /// Keeps the records from `lsn` on in the log for a reader that still needs them (`Lsn::MAX`: none).
    pub fn set_retention_floor(&self, lsn: Lsn) {
        self.retention_floor.store(lsn, std::sync::atomic::Ordering::Relaxed);
    }

    /// The LSN the newest snapshot covers (0: none yet), and when this process took it (Unix ms; 0 when it has taken none: the snapshot was loaded).
    pub fn last_snapshot(&self) -> (Lsn, u64) {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        (load(&self.snapshot_lsn), load(&self.snapshot_at_ms))
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The engine, for reads.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Syncs what was appended and stops the log.
    pub fn close(self) -> Result<(), WalError> {
        self.wal.close()
    }

    /// Runs one engine mutation against a log sink: the outcome with the LSN to wait for (its record's,
    /// or the last appended when it wrote none), or the log's error when the engine reports that the
    /// log refused (`log_refused` is the engine's word for that).
    fn logged<T, E: PartialEq>(
        &self,
        log_refused: E,
        mutate: impl FnOnce(&mut LogSink<'_>) -> Result<T, E>,
    ) -> Result<Logged<T>, Refused<E>> {
        let mut sink = LogSink { wal: &self.wal, buf: Vec::with_capacity(256), lsn: None, error: None };
        match mutate(&mut sink) {
            Ok(value) => Ok(Logged { value, lsn: sink.lsn.unwrap_or_else(|| self.wal.appended_lsn()) }),
            Err(e) if e == log_refused => {
                Err(Refused::Log(sink.error.expect("a refusing sink keeps its error")))
            }
            Err(e) => Err(Refused::Engine(e)),
        }
    }

    pub fn reserve(
        &self,
        req: &ReserveRequest,
        now_ms: u64,
    ) -> Result<Logged<Reserved>, Refused<ReserveError>> {
        self.logged(ReserveError::LogRefused, |sink| self.engine.reserve(req, now_ms, sink))
    }

    /// A reserve refused unless its SKUs fall in the sale `expected` (see `Engine::reserve_in`).
    pub fn reserve_in(
        &self,
        req: &ReserveRequest,
        expected: Option<&SaleId>,
        now_ms: u64,
    ) -> Result<Logged<Reserved>, Refused<ReserveError>> {
        self.logged(ReserveError::LogRefused, |sink| {
            self.engine.reserve_in(req, Some(expected), now_ms, sink)
        })
    }

    /// A keyed reserve's remembered outcome (see `Engine::remembered`), with the LSN that covers the
    /// record it was remembered from: one appended before it was applied, so before this read.
    pub fn remembered(
        &self,
        req: &ReserveRequest,
        now_ms: u64,
    ) -> Result<Option<Logged<Reserved>>, ReserveError> {
        let hit = self.engine.remembered(req, now_ms)?;
        Ok(hit.map(|value| Logged { value, lsn: self.wal.appended_lsn() }))
    }

    /// Refuses an order's hold: only the saga moves it, under the orders' lock (a hold committed
    /// here could not be given back when the payment then fails). Ownership is recorded when the
    /// order is placed, before its reservation's id is known to anyone, so the check cannot race.
    fn not_an_order(&self, id: ReservationId) -> Result<(), Refused<ReservationError>> {
        match self.engine.orders().lock().order_of(id) {
            Some(_) => Err(Refused::Engine(ReservationError::OrderHeld)),
            None => Ok(()),
        }
    }

    pub fn commit(&self, id: ReservationId, now_ms: u64) -> Result<Logged<()>, Refused<ReservationError>> {
        self.not_an_order(id)?;
        self.logged(ReservationError::LogRefused, |sink| self.engine.commit(id, now_ms, sink))
    }

    pub fn release(&self, id: ReservationId, now_ms: u64) -> Result<Logged<()>, Refused<ReservationError>> {
        self.not_an_order(id)?;
        self.logged(ReservationError::LogRefused, |sink| self.engine.release(id, now_ms, sink))
    }

    pub fn extend(
        &self,
        id: ReservationId,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Logged<u64>, Refused<ReservationError>> {
        self.not_an_order(id)?;
        self.logged(ReservationError::LogRefused, |sink| self.engine.extend(id, ttl_ms, now_ms, sink))
    }

    pub fn set_stock(
        &self,
        sku: &SkuId,
        on_hand: u64,
        now_ms: u64,
    ) -> Result<Logged<Stock>, Refused<StockError>> {
        self.logged(StockError::LogRefused, |sink| self.engine.set_stock(sku, on_hand, now_ms, sink))
    }

    pub fn adjust_stock(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &Reason,
        now_ms: u64,
    ) -> Result<Logged<Stock>, Refused<StockError>> {
        self.logged(StockError::LogRefused, |sink| self.engine.adjust_stock(sku, delta, reason, now_ms, sink))
    }

    /// An adjustment under an idempotency key (see `Engine::adjust_stock_keyed`).
    pub fn adjust_stock_keyed(
        &self,
        sku: &SkuId,
        delta: i64,
        reason: &Reason,
        key: Option<&IdempotencyKey>,
        now_ms: u64,
    ) -> Result<Logged<Adjusted>, Refused<StockError>> {
        self.logged(StockError::LogRefused, |sink| {
            self.engine.adjust_stock_keyed(sku, delta, reason, key, now_ms, sink)
        })
    }

    pub fn set_sale(
        &self,
        sale: &SaleId,
        per_user_max: u32,
        skus: &[SkuId],
        now_ms: u64,
    ) -> Result<Logged<()>, Refused<QueueError>> {
        self.logged(QueueError::LogRefused, |sink| {
            self.engine.set_sale(sale, per_user_max, skus, now_ms, sink)
        })
    }

    pub fn configure_sale(
        &self,
        sale: &SaleId,
        per_user_max: u32,
        room: &RoomConfig,
        now_ms: u64,
    ) -> Result<Logged<RoomConfig>, Refused<QueueError>> {
        self.logged(QueueError::LogRefused, |sink| {
            self.engine.configure_sale(sale, per_user_max, room, now_ms, sink)
        })
    }

    pub fn join_queue(
        &self,
        sale: &SaleId,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Logged<Joined>, Refused<QueueError>> {
        self.logged(QueueError::LogRefused, |sink| self.engine.join_queue(sale, user, now_ms, sink))
    }

    /// Opens and admits what is due in every waiting room (see `Engine::admit_due`); a log failure
    /// leaves the rest for the next tick and is returned.
    pub fn admit_due(&self, now_ms: u64) -> Result<Logged<Vec<RoomTick>>, WalError> {
        self.tick(|sink| self.engine.admit_due(now_ms, sink))
    }

    /// Expires what is due. Nobody waits on an expiry, but it is logged like any mutation; a log
    /// failure leaves the rest due for the next tick and is returned.
    pub fn expire_due(&self, now_ms: u64) -> Result<Logged<Vec<ReservationId>>, WalError> {
        self.tick(|sink| self.engine.expire_due(now_ms, sink))
    }

    pub fn place_order(
        &self,
        req: &OrderRequest,
        expected_sale: Option<Option<&SaleId>>,
        now_ms: u64,
    ) -> Result<Logged<(Order, bool)>, Refused<OrderError>> {
        self.logged(OrderError::LogRefused, |sink| self.engine.place_order(req, expected_sale, now_ms, sink))
    }

    pub fn attach_payment(
        &self,
        id: OrderId,
        provider_ref: &str,
        now_ms: u64,
    ) -> Result<Logged<Order>, Refused<OrderError>> {
        self.logged(OrderError::LogRefused, |sink| self.engine.attach_payment(id, provider_ref, now_ms, sink))
    }

    pub fn cancel_order(&self, id: OrderId, now_ms: u64) -> Result<Logged<Order>, Refused<OrderError>> {
        self.logged(OrderError::LogRefused, |sink| self.engine.cancel_order(id, now_ms, sink))
    }

    /// A payment's outcome for an order (see `Engine::payment_outcome`).
    pub fn payment_outcome(
        &self,
        id: OrderId,
        payment: &Payment<'_>,
        event: Option<&str>,
        now_ms: u64,
    ) -> Result<Logged<Effect>, Refused<OrderError>> {
        self.logged(OrderError::LogRefused, |sink| {
            self.engine.payment_outcome(id, payment, event, now_ms, sink)
        })
    }

    /// The orders' timers (see `Engine::orders_tick`): how late each cancelled order was.
    pub fn orders_tick(&self, now_ms: u64) -> Result<Logged<Vec<u64>>, Refused<OrderError>> {
        self.logged(OrderError::LogRefused, |sink| self.engine.orders_tick(now_ms, ORDERS_PER_TICK, sink))
    }

    pub fn set_cart_item(
        &self,
        cart: &CartId,
        edit: &ItemEdit,
        now_ms: u64,
    ) -> Result<Logged<Cart>, Refused<CartError>> {
        self.logged(CartError::LogRefused, |sink| self.engine.set_cart_item(cart, edit, now_ms, sink))
    }

    pub fn delete_cart(&self, cart: &CartId, now_ms: u64) -> Result<Logged<()>, Refused<CartError>> {
        self.logged(CartError::LogRefused, |sink| self.engine.delete_cart(cart, now_ms, sink))
    }

    pub fn merge_carts(
        &self,
        into: &CartId,
        from: &CartId,
        now_ms: u64,
    ) -> Result<Logged<(Cart, Merge)>, Refused<CartError>> {
        self.logged(CartError::LogRefused, |sink| self.engine.merge_carts(into, from, now_ms, sink))
    }

    pub fn checkout_cart(
        &self,
        cart: &CartId,
        template: &OrderRequest,
        expected_sale: Option<Option<&SaleId>>,
        now_ms: u64,
    ) -> Result<Logged<(Order, bool)>, Refused<CartError>> {
        self.logged(CartError::LogRefused, |sink| {
            self.engine.checkout_cart(cart, template, expected_sale, now_ms, sink)
        })
    }

    pub fn set_cart_hold(
        &self,
        sale: &SaleId,
        hold_ms: u64,
        now_ms: u64,
    ) -> Result<Logged<()>, Refused<CartError>> {
        self.logged(CartError::LogRefused, |sink| self.engine.set_cart_hold(sale, hold_ms, now_ms, sink))
    }

    /// Expires idle carts (see `Engine::carts_tick`): how many.
    pub fn carts_tick(&self, now_ms: u64) -> Result<Logged<usize>, Refused<CartError>> {
        self.logged(CartError::LogRefused, |sink| self.engine.carts_tick(now_ms, CARTS_PER_TICK, sink))
    }

    /// Runs a periodic engine task that does as much as the log takes and cannot otherwise fail.
    fn tick<T>(&self, run: impl FnOnce(&mut LogSink<'_>) -> T) -> Result<Logged<T>, WalError> {
        let mut error = None;
        let logged = self.logged((), |sink| {
            let done = run(sink);
            error = sink.error.take();
            Ok::<_, ()>(done)
        });
        match (logged, error) {
            (_, Some(e)) => Err(e),
            (Ok(logged), None) => Ok(logged),
            (Err(_), None) => unreachable!("a tick does not fail"),
        }
    }
}
