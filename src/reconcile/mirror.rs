//! The mirror: follows the log (a [`Tail`]) and applies its records to Postgres in batched
//! transactions, each advancing `holdfast_mirror.applied_lsn` with a check of its old value, so every
//! record is applied exactly once whatever crashes (`batch.rs` holds a batch's SQL). The log is kept
//! for the mirror: segments it still needs are not removed (`Durable::set_retention_floor`) unless the
//! log outgrows its budget, which is logged and followed by a resync from the newest snapshot.

use super::batch::{apply_batch, signed, write_state};
use crate::durable::{codec, Durable};
use crate::engine::{EngineState, Record};
use holdfast_wal::snapshot;
use holdfast_wal::{Lsn, Tail};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long shutdown waits for the mirror's thread.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// The prefix of the reason of an adjustment that came from `holdfast_stock_adjustments` row `id`.
pub const ADJUSTMENT_PREFIX: &str = "pg-adjustment:";

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
    /// When the log was last measured against its budget (Unix ms).
    pub budget_checked_at_ms: AtomicU64,
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
    let mut applied = applied_lsn(&client).await?;
    status.applied_lsn.store(applied, Ordering::Relaxed);
    if status.applied_at_ms.load(Ordering::Relaxed) == 0 {
        status.applied_at_ms.store(now_ms(), Ordering::Relaxed);
    }
    let appended = durable.wal().appended_lsn();
    if applied > appended {
        anyhow::bail!(
            "Postgres has applied up to LSN {applied} but the log ends at {appended}: the data directory is \
             older than the database (restored from a backup?). Not mirroring; see ops/runbooks/postgres.md"
        );
    }
    status.connected.store(true, Ordering::Relaxed);
    if !status.retention_released.load(Ordering::Relaxed) {
        durable.set_retention_floor(applied + 1);
    }
    let storage = durable.wal().storage().clone();
    let mut tail = match Tail::new(storage.clone(), applied + 1) {
        Ok(tail) => tail,
        Err(e) => {
            tracing::warn!(error = %e, applied, "the log no longer holds what the mirror needs: resyncing from a snapshot");
            applied = resync(&mut client, durable, status).await?;
            // The figures follow the rewrite: the lag is measured from the snapshot's LSN now.
            status.applied_lsn.store(applied, Ordering::Relaxed);
            durable.set_retention_floor(applied + 1);
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
        tail.read(to, options.batch_max, &mut |lsn, payload| {
            batch.push((lsn, codec::decode(payload).map_err(|e| e.to_string())?));
            Ok(())
        })?;
        if let Some((last, record)) = batch.last() {
            apply_batch(&mut client, applied, &batch).await?;
            applied = *last;
            *backoff = Duration::from_millis(100);
            status.applied_at_ms.store(record.at_ms(), Ordering::Relaxed);
            status.applied_lsn.store(applied, Ordering::Relaxed);
            status.records_applied.fetch_add(batch.len() as u64, Ordering::Relaxed);
            status.batches.fetch_add(1, Ordering::Relaxed);
            if !status.retention_released.load(Ordering::Relaxed) {
                durable.set_retention_floor(applied + 1);
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

/// Lets the log go when a lagging mirror would make it outgrow its budget: a logged decision, with a
/// metric; the mirror resyncs from a snapshot when it reconnects.
fn check_budget(durable: &Durable, options: &MirrorOptions, status: &MirrorStatus, pending: u64) {
    // At most every 2 s: it lists the log's directory.
    let now = now_ms();
    let last = status.budget_checked_at_ms.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 2_000 || status.budget_checked_at_ms.swap(now, Ordering::Relaxed) != last {
        return;
    }
    let storage = durable.wal().storage();
    let bytes: u64 = storage
        .list()
        .unwrap_or_default()
        .iter()
        .filter(|n| n.ends_with(".wal"))
        .filter_map(|n| storage.open(n).and_then(|f| f.size()).ok())
        .sum();
    if bytes > options.log_budget_bytes
        && pending > 0
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

async fn applied_lsn(client: &Client) -> anyhow::Result<Lsn> {
    let row = client.query_one("SELECT applied_lsn FROM holdfast_mirror WHERE id = 1", &[]).await?;
    Ok(row.get::<_, i64>(0) as Lsn)
}

/// Rewrites the mirror's tables from the newest usable snapshot and sets the checkpoint to its LSN.
async fn resync(client: &mut Client, durable: &Durable, status: &MirrorStatus) -> anyhow::Result<Lsn> {
    let storage = durable.wal().storage().clone();
    // Blocking reads are fine here: the mirror's runtime runs on its own thread.
    let (state, lsn) = (|| -> anyhow::Result<(EngineState, Lsn)> {
        for file in snapshot::list_snapshots(&*storage)? {
            if let Ok(state) = crate::durable::snapshot_state(&*storage, &file) {
                return Ok((state, file.lsn));
            }
        }
        anyhow::bail!("no usable snapshot to resync the mirror from")
    })()?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "TRUNCATE holdfast_reservation_events, holdfast_reservation_items, holdfast_reservations, holdfast_skus,
             holdfast_sales, holdfast_orders, holdfast_order_events",
    )
    .await?;
    write_state(&tx, &state, lsn).await?;
    // The records the snapshot covers would have marked their restock rows applied: mark them.
    tx.execute(
        "UPDATE holdfast_stock_adjustments SET applied_lsn = taken_lsn, applied_at = now()
         WHERE applied_lsn IS NULL AND taken_lsn IS NOT NULL AND taken_lsn <= $1",
        &[&signed(lsn)],
    )
    .await?;
    tx.execute(
        "UPDATE holdfast_mirror SET applied_lsn = $1, applied_at = now() WHERE id = 1",
        &[&signed(lsn)],
    )
    .await?;
    tx.commit().await?;
    status.resyncs.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(lsn, "the mirror was rewritten from the snapshot at this LSN; the history of events before it is not in Postgres");
    Ok(lsn)
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
                Ok(lsn) => {
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

/// Logs adjustment row `id` in the engine: its LSN, or why the engine refused it (`Ok(Err)`). A log
/// that cannot take it is an error: the row stays pending.
fn take_adjustment(
    durable: &Durable,
    id: i64,
    sku: &str,
    delta: i64,
    reason: &str,
) -> anyhow::Result<Result<Lsn, String>> {
    use crate::durable::Refused;
    let sku = match crate::engine::SkuId::new(sku) {
        Ok(sku) => sku,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut text = format!("{ADJUSTMENT_PREFIX}{id}: ");
    for c in reason.chars() {
        if text.len() + c.len_utf8() > crate::limits::REASON_BYTES_MAX {
            break;
        }
        text.push(if c.is_control() { ' ' } else { c });
    }
    let reason = match crate::engine::Reason::new(&text) {
        Ok(reason) => reason,
        Err(e) => return Ok(Err(e.to_string())),
    };
    match durable.adjust_stock(&sku, delta, &reason, now_ms()) {
        Ok(logged) => Ok(Ok(logged.lsn)),
        Err(Refused::Engine(e)) => Ok(Err(format!("{e:?}"))),
        Err(Refused::Log(e)) => Err(e.into()),
    }
}
