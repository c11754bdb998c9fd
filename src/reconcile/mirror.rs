//! The mirror: follows the log (a [`Tail`]) and applies its records to Postgres in batched
//! transactions, each advancing `holdfast_mirror.applied_lsn` with a check of its old value, so every
//! record is applied exactly once whatever crashes (`batch.rs` holds a batch's SQL). The log is kept
//! for the mirror: segments it still needs are not removed (`Durable::set_retention_floor`) unless the
//! log outgrows its budget, which is logged and followed by a resync from the newest snapshot
//! (`resync.rs`).
//!
//! The checkpoint also holds the digest of the record at `applied_lsn`: a data directory restored from
//! a backup can grow past that LSN with another history, and LSNs alone would not tell.

use super::batch::{apply_batch, signed};
use super::history::{digest_of, same_history, write_anchor};
use super::resync::resync;
use crate::durable::{codec, Durable};
use crate::engine::Record;
use holdfast_wal::storage::Storage;
use holdfast_wal::{Lsn, Tail};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long shutdown waits for the mirror's thread.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// The prefix of the reason of an adjustment that came from `holdfast_stock_adjustments` row `id`.
pub const ADJUSTMENT_PREFIX: &str = "pg-adjustment:";

/// The prefix of the idempotency key a restock row is taken under (`pg-adjustment-ID`): the engine
/// remembers it, so a row is never taken twice within the key window, and a snapshot (so a resync)
/// knows every row taken before it. Refused from HTTP callers.
pub const ADJUSTMENT_KEY_PREFIX: &str = "pg-adjustment-";

#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Records per transaction at most.
    pub batch_max: usize,
    /// How often to look for new records when caught up.
    pub poll: Duration,
    /// Bytes of log kept for a lagging mirror; beyond it, segments are removed anyway and the mirror
    /// resyncs from a snapshot when it is back.
    pub log_budget_bytes: u64,
    /// How often to look for new rows in `holdfast_stock_adjustments`.
    pub adjustments_poll: Duration,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            batch_max: 20_000,
            poll: Duration::from_millis(10),
            log_budget_bytes: 8 << 30,
            adjustments_poll: Duration::from_secs(1),
        }
    }
}

/// What the mirror is doing, for metrics and tests.
#[derive(Default)]
pub struct MirrorStatus {
    pub applied_lsn: AtomicU64,
    /// The time of the last record applied (Unix ms).
    pub applied_at_ms: AtomicU64,
    pub lag_records: AtomicU64,
    /// Milliseconds since the oldest record not yet applied was written (0 when caught up).
    pub lag_ms: AtomicU64,
    pub records_applied: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicBool,
    /// The log outgrew its budget and stopped waiting for the mirror.
    pub retention_released: AtomicBool,
    pub resyncs: AtomicU64,
    pub adjustments_applied: AtomicU64,
    pub adjustments_refused: AtomicU64,
    /// When the log was last measured against its budget (Unix ms), and the records pending then.
    pub budget_checked_at_ms: AtomicU64,
    pub budget_pending: AtomicU64,
    /// The LSN whose record's digest was last written beside the log (`history.rs`).
    pub anchor_lsn: AtomicU64,
    /// Postgres follows another history than this log (a restore, a swapped directory): not mirroring.
    pub diverged: AtomicBool,
}

/// The mirror's thread; stops when `stop` is set.
pub struct Mirror {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Mirror {
    pub fn start(
        durable: Arc<Durable>,
        pool: deadpool_postgres::Pool,
        options: MirrorOptions,
        status: Arc<MirrorStatus>,
    ) -> std::io::Result<Mirror> {
        // Until the mirror has read from Postgres what it applied, every segment may still be needed:
        // none is removed (a snapshot at start would otherwise take them before it connects). The
        // budget still bounds the log meanwhile.
        if !status.retention_released.load(Ordering::Relaxed) {
            durable.set_retention_floor(1);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mirror".into())
                .spawn(move || run(&durable, &pool, &options, &status, &stop))?
        };
        Ok(Mirror { thread: Some(thread), stop })
    }

    /// Stops the thread, waiting for it at most `STOP_WAIT`: a query stuck behind a lock in Postgres
    /// must not hold up the server's shutdown. An unfinished transaction is rolled back by Postgres
    /// when the process exits, and its records are applied again by the next session.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let until = Instant::now() + STOP_WAIT;
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(waited = ?STOP_WAIT, "the mirror is still waiting on Postgres; stopping without it");
            }
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps up to `d`, waking early when stopped, keeping the lag figures current and the log within
/// its budget meanwhile (Postgres may be down for long).
fn nap(d: Duration, stop: &AtomicBool, durable: &Durable, options: &MirrorOptions, status: &MirrorStatus) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        check_budget(durable, options, status, update_lag(durable, status));
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// Records acknowledged but not in Postgres, and how long since the last one applied was written.
fn update_lag(durable: &Durable, status: &MirrorStatus) -> u64 {
    let pending = durable.wal().acked_lsn().saturating_sub(status.applied_lsn.load(Ordering::Relaxed));
    status.lag_records.store(pending, Ordering::Relaxed);
    let lag_ms =
        if pending > 0 { now_ms().saturating_sub(status.applied_at_ms.load(Ordering::Relaxed)) } else { 0 };
    status.lag_ms.store(lag_ms, Ordering::Relaxed);
    pending
}

fn run(
    durable: &Durable,
    pool: &deadpool_postgres::Pool,
    options: &MirrorOptions,
    status: &MirrorStatus,
    stop: &AtomicBool,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the mirror cannot start its runtime");
            return;
        }
    };
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        match rt.block_on(session(durable, pool, options, status, stop, &mut backoff)) {
            Ok(()) => return,
            Err(e) => {
                status.connected.store(false, Ordering::Relaxed);
                status.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "mirror to Postgres interrupted; holdfast keeps serving");
                nap(backoff, stop, durable, options, status);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

/// One connection's worth of mirroring: catch up, then follow; returns `Ok` only when stopped.
async fn session(
    durable: &Durable,
    pool: &deadpool_postgres::Pool,
    options: &MirrorOptions,
    status: &MirrorStatus,
    stop: &AtomicBool,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    crate::reconcile::migrate(&mut client).await?;
    let (mut applied, digest) = checkpoint(&client).await?;
    status.applied_lsn.store(applied, Ordering::Relaxed);
    if status.applied_at_ms.load(Ordering::Relaxed) == 0 {
        status.applied_at_ms.store(now_ms(), Ordering::Relaxed);
    }
    let storage = durable.wal().storage().clone();
    if let Err(why) = same_history(durable, applied, digest) {
        status.diverged.store(true, Ordering::Relaxed);
        anyhow::bail!("{why}. Not mirroring; see ops/runbooks/postgres.md, \"Another history\"");
    }
    status.diverged.store(false, Ordering::Relaxed);
    status.connected.store(true, Ordering::Relaxed);
    if !status.retention_released.load(Ordering::Relaxed) {
        durable.set_retention_floor(floor(applied));
    }
    let mut tail = match Tail::new(storage.clone(), applied + 1) {
        Ok(tail) => tail,
        Err(e) => {
            tracing::warn!(error = %e, applied, "the log no longer holds what the mirror needs: resyncing from a snapshot");
            applied = resync(&mut client, durable, status, applied).await?;
            // The figures follow the rewrite: the lag is measured from the snapshot's LSN now, and the
            // log keeps what follows it (within the budget again).
            status.applied_lsn.store(applied, Ordering::Relaxed);
            status.retention_released.store(false, Ordering::Relaxed);
            // Until the next look at the budget, it counts as catching up from here.
            status.budget_pending.store(u64::MAX, Ordering::Relaxed);
            durable.set_retention_floor(floor(applied));
            Tail::new(storage, applied + 1)?
        }
    };
    // Restocks written to Postgres are taken once the mirror has caught up with what was logged before
    // this session: any earlier one is then marked applied, and is not taken twice.
    let caught_up_at = durable.wal().acked_lsn();
    let mut adjustments = Adjustments { last_polled: None };
    while !stop.load(Ordering::Relaxed) {
        // Checked before the batch, so that a batch that keeps failing cannot keep the log growing.
        check_budget(durable, options, status, update_lag(durable, status));
        let to = durable.wal().acked_lsn();
        let mut batch: Vec<(Lsn, Record)> = Vec::new();
        let mut last_digest = None;
        tail.read(to, options.batch_max, &mut |lsn, payload| {
            batch.push((lsn, codec::decode(payload).map_err(|e| e.to_string())?));
            last_digest = Some(digest_of(payload));
            Ok(())
        })?;
        if let Some((last, record)) = batch.last() {
            apply_batch(&mut client, applied, &batch, last_digest).await?;
            applied = *last;
            *backoff = Duration::from_millis(100);
            status.applied_at_ms.store(record.at_ms(), Ordering::Relaxed);
            status.applied_lsn.store(applied, Ordering::Relaxed);
            status.records_applied.fetch_add(batch.len() as u64, Ordering::Relaxed);
            status.batches.fetch_add(1, Ordering::Relaxed);
            if !status.retention_released.load(Ordering::Relaxed) {
                durable.set_retention_floor(floor(applied));
            }
        }
        update_lag(durable, status);
        if applied >= caught_up_at {
            adjustments.poll(&mut client, durable, options, status).await?;
        }
        if batch.is_empty() {
            tokio::time::sleep(options.poll).await;
        }
    }
    Ok(())
}

/// Lets the log go when a mirror that is away, or falling further behind, would make it outgrow its
/// budget: a logged decision, with a metric; the mirror resyncs from a snapshot when it is back. A
/// connected mirror that is catching up keeps its log: letting go then would only make it resync
/// again (as one that just resynced through a busy sale would).
fn check_budget(durable: &Durable, options: &MirrorOptions, status: &MirrorStatus, pending: u64) {
    // At most every 2 s: it lists the log's directory.
    let now = now_ms();
    let last = status.budget_checked_at_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 2_000 || status.budget_checked_at_ms.swap(now, Ordering::Relaxed) != last {
        return;
    }
    // Remember the checkpoint's record beside the log, for when the log lets it go (see history.rs).
    let storage = durable.wal().storage();
    let applied = status.applied_lsn.load(Ordering::Relaxed);
    if applied > 0 && status.anchor_lsn.swap(applied, Ordering::Relaxed) != applied {
        if let Err(e) = write_anchor(&**storage, applied) {
            tracing::warn!(error = %e, "could not write the mirror's anchor beside the log");
        }
    }
    let before = status.budget_pending.swap(pending, Ordering::Relaxed);
    // Catching up: pending falls, or is within one batch (a mirror with no backlog is never cut off).
    let catching_up =
        status.connected.load(Ordering::Relaxed) && (pending < before || pending <= options.batch_max as u64);
    let bytes = bytes_kept_for(&**storage, applied);
    if bytes > options.log_budget_bytes
        && pending > 0
        && !catching_up
        && !status.retention_released.swap(true, Ordering::Relaxed)
    {
        durable.set_retention_floor(Lsn::MAX);
        tracing::error!(
            log_bytes = bytes,
            budget = options.log_budget_bytes,
            pending,
            "the log outgrew its budget waiting for the Postgres mirror: segments are no longer kept for it; \
             the mirror will resync from a snapshot"
        );
    } else if pending == 0 && status.retention_released.swap(false, Ordering::Relaxed) {
        tracing::info!("the mirror caught up; the log keeps what it needs again");
    }
}

/// Bytes of the segments that hold records after `applied`: what the log keeps for the mirror.
/// Segments before them go with the next snapshot, so they do not count against the budget (else a
/// mirror that just resynced would find the log over budget at once, and let it go again).
fn bytes_kept_for(storage: &dyn Storage, applied: Lsn) -> u64 {
    let mut segments: Vec<(Lsn, String)> = (storage.list().unwrap_or_default().into_iter())
        .filter_map(|n| holdfast_wal::parse_segment_name(&n).map(|first| (first, n)))
        .collect();
    segments.sort();
    let needed = |i: usize| segments.get(i + 1).is_none_or(|(next, _)| *next > applied + 1);
    (0..segments.len())
        .filter(|&i| needed(i))
        .filter_map(|i| storage.open(&segments[i].1).and_then(|f| f.size()).ok())
        .sum()
}

/// The lowest LSN the log keeps for a mirror at `applied`: the applied record itself too, whose digest
/// the next session checks.
fn floor(applied: Lsn) -> Lsn {
    applied.max(1)
}

/// The checkpoint: the LSN applied, and the digest of its record where known.
async fn checkpoint(client: &Client) -> anyhow::Result<(Lsn, Option<u64>)> {
    let row =
        client.query_one("SELECT applied_lsn, applied_digest FROM holdfast_mirror WHERE id = 1", &[]).await?;
    Ok((row.get::<_, i64>(0) as Lsn, row.get::<_, Option<i64>>(1).map(|d| d as u64)))
}

/// Restocks and shrinkage other systems write to `holdfast_stock_adjustments`, taken into the engine
/// as logged adjustments. Exactly once: a row is taken only after the mirror applied everything logged
/// before its session began (which marks the rows already taken), and this session remembers what it
/// took until the mirror marks it. Every pending row is looked at, not only ids above the last taken:
/// `bigserial` ids are handed out in order but committed in any order. A row taken is marked with
/// its record's LSN (`taken_lsn`) as soon as the record is durable, so that a resync, which skips
/// the records that would mark their rows applied, can mark them.
struct Adjustments {
    last_polled: Option<Instant>,
}

impl Adjustments {
    async fn poll(
        &mut self,
        client: &mut Client,
        durable: &Durable,
        options: &MirrorOptions,
        status: &MirrorStatus,
    ) -> anyhow::Result<()> {
        if self.last_polled.is_some_and(|t| t.elapsed() < options.adjustments_poll) {
            return Ok(());
        }
        self.last_polled = Some(Instant::now());
        let rows = client
            .query(
                "SELECT id, sku, delta, reason FROM holdfast_stock_adjustments
                 WHERE applied_lsn IS NULL AND refused IS NULL AND taken_lsn IS NULL ORDER BY id LIMIT 1000",
                &[],
            )
            .await?;
        for row in rows {
            let (id, sku, delta, reason): (i64, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            match take_adjustment(durable, id, &sku, delta, &reason)? {
                Ok(Taken::Now(lsn)) => {
                    durable.wal().wait(lsn)?;
                    client
                        .execute(
                            "UPDATE holdfast_stock_adjustments SET taken_lsn = $2 WHERE id = $1",
                            &[&id, &signed(lsn)],
                        )
                        .await?;
                    status.adjustments_applied.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(id, sku, delta, lsn, "stock adjustment from Postgres applied");
                }
                // Taken before (its key is remembered) and its record mirrored without marking it:
                // none of the ways that happened is known to remain, so it is worth a look.
                Ok(Taken::Later) => {
                    tracing::warn!(
                        id,
                        sku,
                        "stock adjustment from Postgres waits: the engine's idempotency key table is full"
                    );
                }
                Ok(Taken::Before) => {
                    let applied = signed(status.applied_lsn.load(Ordering::Relaxed));
                    client
                        .execute(
                            "UPDATE holdfast_stock_adjustments SET applied_lsn = $2, applied_at = now(),
                                 applied_generation = (SELECT generation FROM holdfast_mirror WHERE id = 1)
                             WHERE id = $1 AND applied_lsn IS NULL",
                            &[&id, &applied],
                        )
                        .await?;
                    tracing::warn!(id, sku, delta, "stock adjustment from Postgres was taken before (its key is remembered): marked applied, not taken again");
                }
                Err(why) => {
                    client
                        .execute(
                            "UPDATE holdfast_stock_adjustments SET refused = $2 WHERE id = $1",
                            &[&id, &why],
                        )
                        .await?;
                    status.adjustments_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, sku, delta, why, "stock adjustment from Postgres refused");
                }
            }
        }
        Ok(())
    }
}

/// What became of a restock row offered to the engine.
enum Taken {
    /// Logged now, at this LSN.
    Now(Lsn),
    /// Taken earlier: the engine remembers its key and logged nothing.
    Before,
    /// Not now (the engine's idempotency key table is full): offered again at the next poll.
    Later,
}

/// Logs adjustment row `id` in the engine under its key, or says why the engine refused it
/// (`Ok(Err)`). A log that cannot take it is an error: the row stays pending.
fn take_adjustment(
    durable: &Durable,
    id: i64,
    sku: &str,
    delta: i64,
    reason: &str,
) -> anyhow::Result<Result<Taken, String>> {
    use crate::durable::Refused;
    let sku = match crate::engine::SkuId::new(sku) {
        Ok(sku) => sku,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut text = format!("{ADJUSTMENT_PREFIX}{id}: ");
    let room = crate::limits::REASON_CHARS_MAX.saturating_sub(text.chars().count());
    text.extend(reason.chars().take(room).map(|c| if c.is_control() { ' ' } else { c }));
    let reason = match crate::engine::Reason::new(&text) {
        Ok(reason) => reason,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let key = crate::engine::IdempotencyKey::new(&format!("{ADJUSTMENT_KEY_PREFIX}{id}"))
        .map_err(|e| anyhow::anyhow!("restock row {id}'s key: {e}"))?;
    match durable.adjust_stock_keyed(&sku, delta, &reason, Some(&key), now_ms()) {
        Ok(logged) if logged.value.replayed => Ok(Ok(Taken::Before)),
        Ok(logged) => Ok(Ok(Taken::Now(logged.lsn))),
        // A full key table passes (keys age out): the row stays pending and is offered again.
        Err(Refused::Engine(crate::engine::StockError::IdempotencyTableFull)) => Ok(Ok(Taken::Later)),
        Err(Refused::Engine(e)) => Ok(Err(format!("{e:?}"))),
        Err(Refused::Log(e)) => Err(e.into()),
    }
}
