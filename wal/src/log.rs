//! The log: appends, group commit, durability waits.
//!
//! Appenders frame their records into the open batch under one mutex and get an LSN at once. A
//! flusher thread takes the whole open batch, writes it, syncs it (one `fdatasync` for every record
//! that arrived while the previous sync ran), then publishes the highest acknowledged LSN. A caller
//! acknowledges its client only after `wait(lsn)` returns. Any failed write or sync poisons the log for
//! good: the kernel may have dropped the pages, so retrying could report success for lost data.
//!
//! New segments are created and their space reserved by the appender that needs one, before its record
//! is accepted: a full disk refuses that append (and nothing after it is accepted into that segment),
//! and never fails a write the flusher has to make.

use crate::error::WalError;
use crate::format::{self, encode_frame, frame_bytes, Lsn, RECORD_BYTES_MAX, SEGMENT_HEADER_BYTES};
use crate::recover::{recover, Recovery};
use crate::storage::{Storage, StorageFile};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When an append counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the `fdatasync` that covers it: survives power loss. The default.
    Always,
    /// After it is written to the OS; synced every `every`. Survives a crash of the process, but a power
    /// loss can take up to `every` of acknowledged records.
    Interval { every: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Bytes per segment file, header included; reserved when the segment is created.
    pub segment_bytes: u64,
    pub durability: Durability,
    /// Told of every batch the flusher writes, for metrics.
    pub observer: Option<Observer>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self { segment_bytes: 64 << 20, durability: Durability::Always, observer: None }
    }
}

/// Receives one call per batch written: how many records and bytes, and how long the write and its
/// sync took. Called on the flusher thread: it must be quick and must not block.
pub trait FlushObserver: Send + Sync {
    fn flushed(&self, records: u64, bytes: u64, took: Duration, synced: bool);
}

/// A shared [`FlushObserver`]; options compare equal when they hold the same one.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn FlushObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl PartialEq for Observer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Observer {}

/// The smallest segment: its header and one record of the largest size.
pub const SEGMENT_BYTES_MIN: u64 = SEGMENT_HEADER_BYTES + frame_bytes(RECORD_BYTES_MAX) as u64;

struct Segment {
    name: String,
    file: Box<dyn StorageFile>,
    capacity: u64,
    /// Created since the directory was last synced.
    new: AtomicBool,
}

/// Bytes bound for one place in one segment.
struct Chunk {
    segment: Arc<Segment>,
    offset: u64,
    bytes: Vec<u8>,
}

struct Appender {
    next_lsn: Lsn,
    /// The first LSN of the batch now open; written into each of its frames.
    batch_lsn: Lsn,
    segment: Arc<Segment>,
    /// Frames of the open batch bound for `segment` at `offset`.
    open: Vec<u8>,
    offset: u64,
    /// Earlier parts of the open batch, in segments it has already filled.
    filled: Vec<Chunk>,
    /// An empty buffer handed back by the flusher, so appends do not allocate.
    spare: Vec<u8>,
    closing: bool,
    poisoned: Option<String>,
}

#[derive(Default)]
struct Acked {
    lsn: Lsn,
    poisoned: Option<String>,
}

struct Shared {
    storage: Arc<dyn Storage>,
    options: WalOptions,
    appender: Mutex<Appender>,
    work: Condvar,
    acked: Mutex<Acked>,
    acked_changed: Condvar,
    /// Wakes async waiters (tasks) when `acked` changes; `acked_changed` wakes blocked threads.
    acked_event: event_listener::Event,
    acked_lsn: AtomicU64,
    /// The highest LSN handed out by `append`.
    appended_lsn: AtomicU64,
    /// The highest LSN known to be on stable storage. In `Interval` mode a batch's frames carry the
    /// LSN after it as their batch LSN, so that every frame written between two syncs names the same
    /// batch and recovery's torn-or-corrupt rule holds across them (see `recover.rs`).
    synced_lsn: AtomicU64,
    /// Batches written and records in them, for metrics.
    batches: AtomicU64,
}

/// An open write-ahead log.
pub struct Wal {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl Wal {
    /// Opens the log in `storage` (creating it when empty): checks every segment, hands each record
    /// with an LSN of at least `replay_from` to `replay` in order, cuts a torn tail, and starts the
    /// flusher. Corruption before the tail is an error naming file, offset and LSN.
    pub fn open(
        storage: Arc<dyn Storage>,
        options: WalOptions,
        replay_from: Lsn,
        mut replay: impl FnMut(Lsn, &[u8]) -> Result<(), String>,
    ) -> Result<(Wal, Recovery), WalError> {
        assert!(options.segment_bytes >= SEGMENT_BYTES_MIN, "segment_bytes below {SEGMENT_BYTES_MIN}");
        let (recovery, tail) = recover(&*storage, replay_from, &mut replay)?;
        let (segment, offset) = match tail {
            Some((seg, end)) => {
                let file = storage.open(&seg.name).map_err(|e| WalError::io("open", &seg.name, e))?;
                // After a process crash in interval mode, what recovery read may be in the page cache
                // only: make it durable before anything is appended after it.
                file.sync_data().map_err(|e| WalError::io("sync", &seg.name, e))?;
                storage.sync_dir().map_err(|e| WalError::io("sync", "the log directory", e))?;
                let segment =
                    Segment { name: seg.name, file, capacity: seg.capacity, new: AtomicBool::new(false) };
                (segment, end as u64)
            }
            None => {
                let segment = create_segment(&*storage, recovery.next_lsn, options.segment_bytes)?;
                (segment, SEGMENT_HEADER_BYTES)
            }
        };
        let appender = Appender {
            next_lsn: recovery.next_lsn,
            batch_lsn: recovery.next_lsn,
            segment: Arc::new(segment),
            open: Vec::new(),
            offset,
            filled: Vec::new(),
            spare: Vec::new(),
            closing: false,
            poisoned: None,
        };
        let last = recovery.next_lsn - 1;
        let shared = Arc::new(Shared {
            storage,
            options,
            appender: Mutex::new(appender),
            work: Condvar::new(),
            acked: Mutex::new(Acked { lsn: last, poisoned: None }),
            acked_changed: Condvar::new(),
            acked_event: event_listener::Event::new(),
            acked_lsn: AtomicU64::new(last),
            appended_lsn: AtomicU64::new(last),
            synced_lsn: AtomicU64::new(last),
            batches: AtomicU64::new(0),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wal-flusher".into())
                .spawn(move || flush_loop(&shared))
                .map_err(|e| WalError::io("spawn", "the flusher thread", e))?
        };
        Ok((Wal { shared, flusher: Some(flusher) }, recovery))
    }

    /// Adds a record to the open batch and returns its LSN. It is not acknowledged until `wait` says so.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, WalError> {
        if payload.is_empty() || payload.len() > RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge { bytes: payload.len(), max: RECORD_BYTES_MAX });
        }
        let shared = &*self.shared;
        let mut a = shared.appender.lock();
        if let Some(cause) = &a.poisoned {
            return Err(WalError::Poisoned { cause: cause.clone() });
        }
        if a.closing {
            return Err(WalError::Closed);
        }
        if a.offset + (a.open.len() + frame_bytes(payload.len())) as u64 > a.segment.capacity {
            let next = create_segment(&*shared.storage, a.next_lsn, shared.options.segment_bytes)?;
            let full = std::mem::replace(&mut a.segment, Arc::new(next));
            let bytes = std::mem::take(&mut a.open);
            if !bytes.is_empty() {
                let offset = a.offset;
                a.filled.push(Chunk { segment: full, offset, bytes });
            }
            a.offset = SEGMENT_HEADER_BYTES;
        }
        if a.open.is_empty() && a.filled.is_empty() {
            a.open = std::mem::take(&mut a.spare);
            a.batch_lsn = match shared.options.durability {
                Durability::Always => a.next_lsn,
                Durability::Interval { .. } => shared.synced_lsn.load(Ordering::Acquire) + 1,
            };
        }
        let (lsn, batch_lsn) = (a.next_lsn, a.batch_lsn);
        encode_frame(&mut a.open, lsn, batch_lsn, payload);
        a.next_lsn += 1;
        shared.appended_lsn.store(lsn, Ordering::Release);
        drop(a);
        shared.work.notify_one();
        Ok(lsn)
    }

    /// Blocks until `lsn` is acknowledged (synced, or written in `Interval` mode), or the log failed.
    pub fn wait(&self, lsn: Lsn) -> Result<(), WalError> {
        if self.shared.acked_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let mut acked = self.shared.acked.lock();
        loop {
            if acked.lsn >= lsn {
                return Ok(());
            }
            if let Some(cause) = &acked.poisoned {
                return Err(WalError::Poisoned { cause: cause.clone() });
            }
            self.shared.acked_changed.wait(&mut acked);
        }
    }

    /// Waits, without blocking a thread, until `lsn` is acknowledged or the log failed. For tasks: a
    /// thousand waiting tasks cost a thousand wakers, not a thousand sleeping threads.
    pub async fn durable(&self, lsn: Lsn) -> Result<(), WalError> {
        loop {
            if let Some(done) = self.check_acked(lsn) {
                return done;
            }
            let listener = self.shared.acked_event.listen();
            // Checked again after registering, so a publish between the two checks is not missed.
            if let Some(done) = self.check_acked(lsn) {
                return done;
            }
            listener.await;
        }
    }

    fn check_acked(&self, lsn: Lsn) -> Option<Result<(), WalError>> {
        if self.shared.acked_lsn.load(Ordering::Acquire) >= lsn {
            return Some(Ok(()));
        }
        let acked = self.shared.acked.lock();
        match &acked.poisoned {
            Some(cause) => Some(Err(WalError::Poisoned { cause: cause.clone() })),
            None => (acked.lsn >= lsn).then_some(Ok(())),
        }
    }

    /// The highest LSN appended so far. A result that depends on records it did not append itself (an
    /// idempotent repeat, say) is acknowledged once this LSN, read after the result, is.
    pub fn appended_lsn(&self) -> Lsn {
        self.shared.appended_lsn.load(Ordering::Acquire)
    }

    /// Removes the segments whose every record is at or below `lsn` (a snapshot covers them), never
    /// the one being written. Returns the names removed.
    pub fn remove_segments_through(&self, lsn: Lsn) -> Result<Vec<String>, WalError> {
        let storage = &*self.shared.storage;
        let current = self.shared.appender.lock().segment.name.clone();
        let names = crate::recover::segment_names(storage)?;
        let mut removed = Vec::new();
        for pair in names.windows(2) {
            let ((_, name), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first > lsn + 1 || *name == current {
                break;
            }
            storage.remove(name).map_err(|e| WalError::io("remove", name, e))?;
            removed.push(name.clone());
        }
        if !removed.is_empty() {
            storage.sync_dir().map_err(|e| WalError::io("sync", "the log directory", e))?;
        }
        Ok(removed)
    }

    /// The storage the log lives in (snapshots live beside it).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.shared.storage
    }

    /// The highest acknowledged LSN.
    pub fn acked_lsn(&self) -> Lsn {
        self.shared.acked_lsn.load(Ordering::Acquire)
    }

    /// Batches written so far: appends per batch is the group-commit factor.
    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// The error that poisoned the log, if one did.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.appender.lock().poisoned.clone()
    }

    /// Writes and syncs everything appended, stops the flusher, and reports a failure that poisoned it.
    pub fn close(mut self) -> Result<(), WalError> {
        self.stop();
        match self.poisoned() {
            Some(cause) => Err(WalError::Poisoned { cause }),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.appender.lock().closing = true;
        self.shared.work.notify_one();
        if let Some(flusher) = self.flusher.take() {
            flusher.join().expect("the flusher does not panic");
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates a segment: reserves its space, writes its header. Durable once the flusher syncs it and the
/// directory.
fn create_segment(storage: &dyn Storage, first_lsn: Lsn, capacity: u64) -> Result<Segment, WalError> {
    let name = format::segment_name(first_lsn);
    let file = storage.create(&name).map_err(|e| WalError::io("create", &name, e))?;
    let prepared = file.allocate(capacity).map_err(|e| WalError::io("allocate", &name, e)).and_then(|()| {
        let header = format::encode_segment_header(first_lsn, capacity);
        file.write_all_at(&header, 0).map_err(|e| WalError::io("write", &name, e))
    });
    if let Err(e) = prepared {
        // Nothing refers to it yet; a leftover would only be an empty segment, which recovery refuses
        // (it does not continue the log), so try to take it back.
        let _ = storage.remove(&name);
        return Err(e);
    }
    Ok(Segment { name, file, capacity, new: AtomicBool::new(true) })
}

/// How long the flusher may wait for appenders to come back before it takes a thin batch.
const GATHER_MAX: Duration = Duration::from_micros(50);

fn flush_loop(shared: &Shared) {
    let interval = match shared.options.durability {
        Durability::Always => None,
        Durability::Interval { every } => Some(every),
    };
    let mut last_sync = Instant::now();
    let mut unsynced: Option<Arc<Segment>> = None;
    let mut last_batch: u64 = 0;
    loop {
        let (chunks, last_lsn, closing) = {
            let mut a = shared.appender.lock();
            while a.open.is_empty() && a.filled.is_empty() && !a.closing {
                match interval {
                    Some(every) if unsynced.is_some() => {
                        let left = every.saturating_sub(last_sync.elapsed());
                        if left.is_zero() || shared.work.wait_for(&mut a, left).timed_out() {
                            break;
                        }
                    }
                    _ => shared.work.wait(&mut a),
                }
            }
            // The appenders the last sync woke are still coming back with their next records. Taking
            // the batch at the first of them would sync one or two records and make the rest wait a
            // whole sync more (batches would alternate thin and full). So while the open batch holds
            // less than a quarter of the last one, wait a little for them. (Under half is the normal
            // state of a CPU-bound load, where waiting only adds latency.)
            let deadline = Instant::now() + GATHER_MAX;
            while a.next_lsn - a.batch_lsn < last_batch / 4 && !a.closing {
                if shared.work.wait_until(&mut a, deadline).timed_out() {
                    break;
                }
            }
            if !a.open.is_empty() || !a.filled.is_empty() {
                last_batch = a.next_lsn - a.batch_lsn;
            }
            let mut chunks = std::mem::take(&mut a.filled);
            if !a.open.is_empty() {
                let bytes = std::mem::take(&mut a.open);
                let offset = a.offset;
                a.offset += bytes.len() as u64;
                chunks.push(Chunk { segment: a.segment.clone(), offset, bytes });
            }
            (chunks, a.next_lsn - 1, a.closing)
        };
        let sync_now = interval.is_none_or(|every| closing || last_sync.elapsed() >= every);
        let started = Instant::now();
        if let Err(e) = write_batch(shared, &chunks, sync_now, &mut unsynced) {
            poison(shared, e.to_string());
            return;
        }
        if let (Some(observer), false) = (&shared.options.observer, chunks.is_empty()) {
            let bytes = chunks.iter().map(|c| c.bytes.len() as u64).sum();
            observer.0.flushed(last_batch, bytes, started.elapsed(), sync_now);
        }
        if sync_now {
            last_sync = Instant::now();
            shared.synced_lsn.store(last_lsn, Ordering::Release);
        }
        if !chunks.is_empty() {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            publish(shared, last_lsn);
        }
        if let Some(mut chunk) = chunks.into_iter().last() {
            chunk.bytes.clear();
            shared.appender.lock().spare = chunk.bytes;
        }
        if closing && shared.appender.lock().open.is_empty() {
            return;
        }
    }
}

/// Writes a batch's chunks and, when `sync` (always, in `Always` mode), syncs every segment they
/// touched and the directory if a segment is new. In `Interval` mode the segment last written waits in
/// `unsynced` for the next timed sync.
fn write_batch(
    shared: &Shared,
    chunks: &[Chunk],
    sync: bool,
    unsynced: &mut Option<Arc<Segment>>,
) -> Result<(), WalError> {
    let mut touched: Vec<Arc<Segment>> = unsynced.take().into_iter().collect();
    for chunk in chunks {
        let seg = &chunk.segment;
        seg.file.write_all_at(&chunk.bytes, chunk.offset).map_err(|e| WalError::io("write", &seg.name, e))?;
        if !touched.iter().any(|t| Arc::ptr_eq(t, seg)) {
            touched.push(seg.clone());
        }
    }
    if !sync {
        *unsynced = touched.pop();
        // Segments already filled are synced even in interval mode: only the last one waits.
        return sync_segments(shared, &touched);
    }
    sync_segments(shared, &touched)
}

fn sync_segments(shared: &Shared, segments: &[Arc<Segment>]) -> Result<(), WalError> {
    let mut dir = false;
    for seg in segments {
        seg.file.sync_data().map_err(|e| WalError::io("sync", &seg.name, e))?;
        dir |= seg.new.swap(false, Ordering::Relaxed);
    }
    if dir {
        shared.storage.sync_dir().map_err(|e| WalError::io("sync", "the log directory", e))?;
    }
    Ok(())
}

fn publish(shared: &Shared, lsn: Lsn) {
    let mut acked = shared.acked.lock();
    acked.lsn = acked.lsn.max(lsn);
    shared.acked_lsn.store(acked.lsn, Ordering::Release);
    drop(acked);
    shared.acked_changed.notify_all();
    shared.acked_event.notify(usize::MAX);
}

fn poison(shared: &Shared, cause: String) {
    shared.appender.lock().poisoned = Some(cause.clone());
    shared.acked.lock().poisoned = Some(cause);
    shared.acked_changed.notify_all();
    shared.acked_event.notify(usize::MAX);
}
