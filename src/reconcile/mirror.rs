//! The mirror: follows the log (a [`Tail`]) and applies its records to Postgres in batched
//! transactions, each advancing `holdfast_mirror.applied_lsn` with a check of its old value, so every
//! record is applied exactly once whatever crashes. A batch is a handful of set-based statements
//! (`unnest` of arrays), whatever its size. The log is kept for the mirror: segments it still needs are
//! not removed (`Durable::set_retention_floor`) unless the log outgrows its budget, which is logged and
//! followed by a resync from the newest snapshot.

use crate::durable::{codec, Durable};
use crate::engine::{EngineState, Record, ReservationState};
use holdfast_wal::snapshot;
use holdfast_wal::{Lsn, Tail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

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
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mirror".into())
                .spawn(move || run(&durable, &pool, &options, &status, &stop))?
        };
        Ok(Mirror { thread: Some(thread), stop })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

/// Sleeps up to `d`, waking early when stopped, keeping the lag figures current meanwhile.
fn nap(d: Duration, stop: &AtomicBool, durable: &Durable, status: &MirrorStatus) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        update_lag(durable, status);
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
                nap(backoff, stop, durable, status);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
            durable.set_retention_floor(applied + 1);
            Tail::new(storage, applied + 1)?
        }
    };
    // Restocks written to Postgres are taken once the mirror has caught up with what was logged before
    // this session: any earlier one is then marked applied, and is not taken twice.
    let caught_up_at = durable.wal().acked_lsn();
    let mut adjustments = Adjustments { last_polled: None, submitted_up_to: 0 };
    let mut last_budget_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
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
        let pending = update_lag(durable, status);
        if last_budget_check.elapsed() >= Duration::from_secs(2) {
            last_budget_check = Instant::now();
            check_budget(durable, options, status, pending);
        }
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

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A reservation's final state, end time, expiry and LSN within a batch (`None`: unchanged).
type Update = (Option<&'static str>, Option<SystemTime>, Option<SystemTime>, i64);

/// Reservation changes and per-SKU deltas accumulated between two stock records.
#[derive(Default)]
struct Changes {
    new_ids: Vec<String>,
    new_created: Vec<SystemTime>,
    new_expires: Vec<SystemTime>,
    new_user: Vec<Option<String>>,
    new_sale: Vec<Option<String>>,
    new_key: Vec<Option<String>>,
    new_lsn: Vec<i64>,
    item_ids: Vec<String>,
    item_skus: Vec<String>,
    item_qty: Vec<i32>,
    ev_lsn: Vec<i64>,
    ev_ids: Vec<String>,
    ev_kind: Vec<&'static str>,
    ev_at: Vec<SystemTime>,
    ev_expires: Vec<Option<SystemTime>>,
    /// The final change of each reservation changed after it was made.
    updates: HashMap<String, Update>,
    /// Units reserved per SKU by the reserves here.
    reserved: HashMap<String, i64>,
    end_ids: Vec<String>,
    end_kinds: Vec<&'static str>,
    last_lsn: i64,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.ev_lsn.is_empty()
    }

    fn add(&mut self, lsn: Lsn, record: &Record) {
        let l = signed(lsn);
        self.last_lsn = l;
        let event = |s: &mut Self, id: String, kind: &'static str, at: u64, expires: Option<u64>| {
            s.ev_lsn.push(l);
            s.ev_ids.push(id);
            s.ev_kind.push(kind);
            s.ev_at.push(time(at));
            s.ev_expires.push(expires.map(time));
        };
        match record {
            Record::Reserved(r) => {
                let id = r.id.to_string();
                self.new_ids.push(id.clone());
                self.new_created.push(time(r.created_at_ms));
                self.new_expires.push(time(r.expires_at_ms));
                self.new_user.push(r.user.as_ref().map(|u| u.as_str().to_owned()));
                self.new_sale.push(r.sale.as_ref().map(|s| s.as_str().to_owned()));
                self.new_key.push(r.idempotency.as_ref().map(|(k, _)| k.as_str().to_owned()));
                self.new_lsn.push(l);
                for item in &r.items {
                    self.item_ids.push(id.clone());
                    self.item_skus.push(item.sku.as_str().to_owned());
                    self.item_qty.push(item.qty as i32);
                    *self.reserved.entry(item.sku.as_str().to_owned()).or_default() += i64::from(item.qty);
                }
                event(self, id, "reserved", r.created_at_ms, Some(r.expires_at_ms));
            }
            Record::Extended { id, expires_at_ms, at_ms } => {
                let id = id.to_string();
                let u = self.updates.entry(id.clone()).or_insert((None, None, None, l));
                u.2 = Some(time(*expires_at_ms));
                u.3 = l;
                event(self, id, "extended", *at_ms, Some(*expires_at_ms));
            }
            Record::Committed { id, at_ms }
            | Record::Released { id, at_ms }
            | Record::Expired { id, at_ms } => {
                let kind = match record {
                    Record::Committed { .. } => ReservationState::Committed,
                    Record::Released { .. } => ReservationState::Released,
                    _ => ReservationState::Expired,
                }
                .as_str();
                let id = id.to_string();
                let u = self.updates.entry(id.clone()).or_insert((None, None, None, l));
                (u.0, u.1, u.3) = (Some(kind), Some(time(*at_ms)), l);
                self.end_ids.push(id.clone());
                self.end_kinds.push(kind);
                event(self, id, kind, *at_ms, None);
            }
            Record::StockSet { .. } | Record::StockAdjusted { .. } | Record::SaleLimitSet { .. } => {
                unreachable!("stock records are applied one by one")
            }
        }
    }

    /// The statements, in an order where each sees what it needs: reservations and items first, then
    /// the changes to them, then the SKU counters (ends find their units in the items table).
    async fn apply(self, tx: &Transaction<'_>, generation: i32) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        // New rows go in with binary COPY: the cheapest way into Postgres for many rows.
        let copy = |sql: &'static str, types: &'static [Type]| async move {
            let sink = tx.copy_in(sql).await?;
            Ok::<_, tokio_postgres::Error>(Box::pin(BinaryCopyInWriter::new(sink, types)))
        };
        let mut w = copy(
            "COPY holdfast_reservations (id, state, created_at, expires_at, user_id, sale, idempotency_key,
                 created_lsn, updated_lsn) FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::INT8,
            ],
        )
        .await?;
        for i in 0..self.new_ids.len() {
            let row: [&(dyn ToSql + Sync); 9] = [
                &self.new_ids[i],
                &"active",
                &self.new_created[i],
                &self.new_expires[i],
                &self.new_user[i],
                &self.new_sale[i],
                &self.new_key[i],
                &self.new_lsn[i],
                &self.new_lsn[i],
            ];
            w.as_mut().write(&row).await?;
        }
        w.as_mut().finish().await?;
        let mut w = copy(
            "COPY holdfast_reservation_items (reservation_id, sku, qty) FROM STDIN BINARY",
            &[Type::TEXT, Type::TEXT, Type::INT4],
        )
        .await?;
        for i in 0..self.item_ids.len() {
            w.as_mut().write(&[&self.item_ids[i], &self.item_skus[i], &self.item_qty[i]]).await?;
        }
        w.as_mut().finish().await?;
        let mut w = copy(
            "COPY holdfast_reservation_events (generation, lsn, reservation_id, kind, at, expires_at) FROM STDIN BINARY",
            &[Type::INT4, Type::INT8, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ],
        )
        .await?;
        for i in 0..self.ev_lsn.len() {
            let row: [&(dyn ToSql + Sync); 6] = [
                &generation,
                &self.ev_lsn[i],
                &self.ev_ids[i],
                &self.ev_kind[i],
                &self.ev_at[i],
                &self.ev_expires[i],
            ];
            w.as_mut().write(&row).await?;
        }
        w.as_mut().finish().await?;
        if !self.updates.is_empty() {
            let (mut ids, mut states, mut ended, mut expires, mut lsns) =
                (vec![], vec![], vec![], vec![], vec![]);
            for (id, (state, end, exp, lsn)) in &self.updates {
                ids.push(id.as_str());
                states.push(*state);
                ended.push(*end);
                expires.push(*exp);
                lsns.push(*lsn);
            }
            let n = tx
                .execute(
                    "UPDATE holdfast_reservations r
                     SET state = COALESCE(t.state, r.state), ended_at = COALESCE(t.ended, r.ended_at),
                         expires_at = COALESCE(t.exp, r.expires_at), updated_lsn = t.lsn
                     FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::int8[])
                         AS t(id, state, ended, exp, lsn)
                     WHERE r.id = t.id AND r.state = 'active'",
                    &[&ids, &states, &ended, &expires, &lsns],
                )
                .await?;
            if n != ids.len() as u64 {
                anyhow::bail!(
                    "{} of {} reservations changed by records up to LSN {} are not active in Postgres: it has drifted \
                     from the log (run holdfast reconcile)",
                    ids.len() as u64 - n,
                    ids.len(),
                    self.last_lsn
                );
            }
        }
        let (skus, deltas): (Vec<String>, Vec<i64>) = self.reserved.into_iter().unzip();
        tx.execute(
            "UPDATE holdfast_skus s
             SET available = s.available + d.da, reserved = s.reserved + d.dr, sold = s.sold + d.ds, updated_lsn = $5
             FROM (SELECT sku, sum(da) AS da, sum(dr) AS dr, sum(ds) AS ds FROM (
                     SELECT r.sku, -r.q AS da, r.q AS dr, 0::int8 AS ds FROM unnest($1::text[], $2::int8[]) AS r(sku, q)
                     UNION ALL
                     SELECT i.sku,
                            CASE WHEN e.kind = 'committed' THEN 0 ELSE i.qty::int8 END,
                            -i.qty::int8,
                            CASE WHEN e.kind = 'committed' THEN i.qty::int8 ELSE 0 END
                     FROM unnest($3::text[], $4::text[]) AS e(id, kind)
                     JOIN holdfast_reservation_items i ON i.reservation_id = e.id
                  ) x GROUP BY sku) d
             WHERE s.sku = d.sku",
            &[&skus, &deltas, &self.end_ids, &self.end_kinds, &self.last_lsn],
        )
        .await?;
        Ok(())
    }
}

/// A stock or sale record, applied on its own (it sets absolute values, or must see the deltas before it).
async fn apply_stock(tx: &Transaction<'_>, lsn: Lsn, record: &Record) -> anyhow::Result<()> {
    let l = signed(lsn);
    match record {
        Record::StockSet { sku, on_hand, .. } => {
            tx.execute(
                "INSERT INTO holdfast_skus (sku, on_hand, available, reserved, sold, updated_lsn)
                 VALUES ($1, $2, $2, 0, 0, $3)
                 ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand,
                     available = EXCLUDED.on_hand - holdfast_skus.reserved - holdfast_skus.sold,
                     updated_lsn = EXCLUDED.updated_lsn",
                &[&sku.as_str(), &signed(*on_hand), &l],
            )
            .await?;
        }
        Record::StockAdjusted { sku, delta, reason, .. } => {
            tx.execute(
                "UPDATE holdfast_skus SET on_hand = on_hand + $2, available = available + $2, updated_lsn = $3 WHERE sku = $1",
                &[&sku.as_str(), delta, &l],
            )
            .await?;
            if let Some(id) = adjustment_id(reason.as_str()) {
                tx.execute(
                    "UPDATE holdfast_stock_adjustments SET applied_lsn = $2, applied_at = now()
                     WHERE id = $1 AND applied_lsn IS NULL",
                    &[&id, &l],
                )
                .await?;
            }
        }
        Record::SaleLimitSet { sale, per_user_max, .. } => {
            tx.execute(
                "INSERT INTO holdfast_sales (sale, per_user_limit, updated_lsn) VALUES ($1, $2, $3)
                 ON CONFLICT (sale) DO UPDATE SET per_user_limit = EXCLUDED.per_user_limit, updated_lsn = EXCLUDED.updated_lsn",
                &[&sale.as_str(), &(*per_user_max as i32), &l],
            )
            .await?;
        }
        _ => unreachable!("only stock and sale records"),
    }
    Ok(())
}

/// The id of the `holdfast_stock_adjustments` row an adjustment's reason names.
pub fn adjustment_id(reason: &str) -> Option<i64> {
    let rest = reason.strip_prefix(ADJUSTMENT_PREFIX)?;
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// Applies `batch` (records `applied + 1 ..`) in one transaction that also moves the checkpoint from
/// `applied`; a checkpoint that moved meanwhile (another mirror) aborts it.
pub async fn apply_batch(client: &mut Client, applied: Lsn, batch: &[(Lsn, Record)]) -> anyhow::Result<()> {
    let Some((last, _)) = batch.last() else { return Ok(()) };
    let tx = client.transaction().await?;
    let generation: i32 =
        tx.query_one("SELECT generation FROM holdfast_mirror WHERE id = 1", &[]).await?.get(0);
    let mut changes = Changes::default();
    for (lsn, record) in batch {
        match record {
            Record::StockSet { .. } | Record::StockAdjusted { .. } | Record::SaleLimitSet { .. } => {
                std::mem::take(&mut changes).apply(&tx, generation).await?;
                apply_stock(&tx, *lsn, record).await?;
            }
            _ => changes.add(*lsn, record),
        }
    }
    changes.apply(&tx, generation).await?;
    let moved = tx
        .execute(
            "UPDATE holdfast_mirror SET applied_lsn = $1, applied_at = now() WHERE id = 1 AND applied_lsn = $2",
            &[&signed(*last), &signed(applied)],
        )
        .await?;
    if moved != 1 {
        anyhow::bail!("the mirror checkpoint moved from LSN {applied} meanwhile: is another holdfast mirroring to this database?");
    }
    tx.commit().await?;
    Ok(())
}

/// Rewrites the mirror's tables from the newest usable snapshot and sets the checkpoint to its LSN.
async fn resync(client: &mut Client, durable: &Durable, status: &MirrorStatus) -> anyhow::Result<Lsn> {
    let storage = durable.wal().storage().clone();
    // Blocking reads are fine here: the mirror's runtime runs on its own thread.
    let (state, lsn) = (|| -> anyhow::Result<(EngineState, Lsn)> {
        for file in snapshot::list_snapshots(&*storage)? {
            let decoded = snapshot::read_snapshot(&*storage, &file)
                .map_err(|e| e.to_string())
                .and_then(|p| codec::decode_state(p.bytes()).map_err(|e| e.0));
            if let Ok(state) = decoded {
                return Ok((state, file.lsn));
            }
        }
        anyhow::bail!("no usable snapshot to resync the mirror from")
    })()?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "TRUNCATE holdfast_reservation_events, holdfast_reservation_items, holdfast_reservations, holdfast_skus, holdfast_sales",
    )
    .await?;
    write_state(&tx, &state, lsn).await?;
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

/// Inserts an engine state (SKUs, sales, reservations with their items) into empty mirror tables.
pub async fn write_state(tx: &Transaction<'_>, state: &EngineState, lsn: Lsn) -> anyhow::Result<()> {
    let l = signed(lsn);
    for (sku, s) in &state.skus {
        tx.execute(
            "INSERT INTO holdfast_skus (sku, on_hand, available, reserved, sold, updated_lsn) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&sku.as_str(), &signed(s.on_hand), &signed(s.available), &signed(s.reserved), &signed(s.sold), &l],
        )
        .await?;
    }
    for (sale, limit) in &state.sales {
        tx.execute(
            "INSERT INTO holdfast_sales (sale, per_user_limit, updated_lsn) VALUES ($1, $2, $3)",
            &[&sale.as_str(), &(*limit as i32), &l],
        )
        .await?;
    }
    for r in &state.reservations {
        let id = r.id.to_string();
        let (sale, user) = match &r.holder {
            Some((s, u)) => (Some(s.as_str()), Some(u.as_str())),
            None => (None, None),
        };
        tx.execute(
            "INSERT INTO holdfast_reservations (id, state, created_at, expires_at, ended_at, user_id, sale, created_lsn, updated_lsn)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            &[&id, &r.state.as_str(), &time(r.created_at_ms), &time(r.expires_at_ms), &r.ended_at_ms.map(time), &user, &sale, &l],
        )
        .await?;
        for item in &r.items {
            tx.execute(
                "INSERT INTO holdfast_reservation_items (reservation_id, sku, qty) VALUES ($1, $2, $3)",
                &[&id, &item.sku.as_str(), &(item.qty as i32)],
            )
            .await?;
        }
    }
    Ok(())
}

/// Restocks and shrinkage other systems write to `holdfast_stock_adjustments`, taken into the engine
/// as logged adjustments. Exactly once: a row is taken only after the mirror applied everything logged
/// before its session began (which marks the rows already taken), and this session remembers what it
/// took until the mirror marks it.
struct Adjustments {
    last_polled: Option<Instant>,
    submitted_up_to: i64,
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
                 WHERE applied_lsn IS NULL AND refused IS NULL AND id > $1 ORDER BY id LIMIT 1000",
                &[&self.submitted_up_to],
            )
            .await?;
        for row in rows {
            let (id, sku, delta, reason): (i64, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            self.submitted_up_to = id;
            match take_adjustment(durable, id, &sku, delta, &reason)? {
                Ok(lsn) => {
                    durable.wal().wait(lsn)?;
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
