//! Drift in what the mirror writes from the log one record at a time: the history rows (reservation
//! and order events) and the marks on restock rows. Compared record by record over the log's records
//! up to the checkpoint that are still on disk (and after the last resync's gap), and the
//! record at the checkpoint against the digest Postgres keeps, so that a history applied twice, a
//! restock taken twice, or another data directory's history shows up as drift.

use super::batch::{adjustment_id, signed};
use crate::durable::codec;
use crate::engine::Record;
use holdfast_wal::storage::Storage;
use holdfast_wal::Lsn;
use serde::Serialize;
use std::collections::BTreeMap;
use tokio_postgres::Transaction;

/// How many differences of one kind a report lists (all are counted).
const LISTED_MAX: usize = 100;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventDrift {
    pub lsn: Lsn,
    /// What the record means in the history tables (`reservation rsv_… committed`), `None` for none.
    pub engine: Option<String>,
    pub postgres: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AdjustmentDrift {
    /// The `holdfast_stock_adjustments` row.
    pub row: i64,
    pub problem: String,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct LogDrift {
    /// Records after this LSN were compared (up to the checkpoint).
    pub compared_after: Lsn,
    /// Set when the record at the checkpoint is not the one Postgres applied: another history.
    pub history: Option<String>,
    pub events_differing: usize,
    /// The first `LISTED_MAX` of them.
    pub events: Vec<EventDrift>,
    pub adjustments: Vec<AdjustmentDrift>,
}

impl LogDrift {
    pub fn is_clean(&self) -> bool {
        self.history.is_none() && self.events_differing == 0 && self.adjustments.is_empty()
    }
}

/// The history rows one record writes, by table: a reservation event and an order event.
fn events_of(record: &Record) -> (Vec<String>, Option<String>) {
    let reservation = |r: &Record| match r {
        Record::Reserved(r) => Some(format!("reservation {} reserved", r.id)),
        Record::Extended { id, .. } => Some(format!("reservation {id} extended")),
        Record::Committed { id, .. } => Some(format!("reservation {id} committed")),
        Record::Released { id, .. } => Some(format!("reservation {id} released")),
        Record::Expired { id, .. } => Some(format!("reservation {id} expired")),
        _ => None,
    };
    match record {
        // A cart's step: the events of its holds' records and its order's, in order.
        Record::Cart(c) => {
            c.inner.iter().map(events_of).fold((Vec::new(), None), |(mut r, o), (more, order)| {
                r.extend(more);
                (r, o.or(order))
            })
        }
        Record::Order(o) => (
            o.reservation.as_ref().and_then(reservation).into_iter().collect(),
            Some(format!("order {} {}", o.order, codec::step_name(&o.step))),
        ),
        r => (reservation(r).into_iter().collect(), None),
    }
}

/// The LSN before the oldest record the log holds.
fn before_oldest(storage: &dyn Storage) -> anyhow::Result<Lsn> {
    let oldest = (storage.list()?.iter()).filter_map(|n| holdfast_wal::parse_segment_name(n)).min();
    Ok(oldest.unwrap_or(1).saturating_sub(1))
}

/// Compares Postgres (read in `tx`, at `applied` of `generation`, with the checkpoint's `digest`)
/// with the log's records up to `applied`.
pub(super) async fn check(
    tx: &Transaction<'_>,
    storage: &dyn Storage,
    generation: i32,
    applied: Lsn,
    digest: Option<u64>,
) -> anyhow::Result<LogDrift> {
    let gap: Option<i64> = tx
        .query_one("SELECT max(through_lsn) FROM holdfast_mirror_gaps WHERE generation = $1", &[&generation])
        .await?
        .get(0);
    let from = before_oldest(storage)?.max(gap.map_or(0, |g| g.max(0) as Lsn));
    let mut drift = LogDrift { compared_after: from, ..LogDrift::default() };
    let found = super::history::record_digest(storage, applied);
    if let (Some(want), Some(got)) = (digest, found) {
        if want != got {
            drift.history = Some(format!(
                "the log's record at LSN {applied} is not the one Postgres applied there: they follow different histories"
            ));
            return Ok(drift);
        }
    }
    // What the log says, after `from`.
    let (mut reservations, mut orders) = (BTreeMap::new(), BTreeMap::new());
    let mut taken: BTreeMap<i64, Vec<(Lsn, String, i64)>> = BTreeMap::new();
    if applied > from {
        holdfast_wal::read_range(storage, from + 1, applied, &mut |lsn, payload| {
            let record = codec::decode(payload).map_err(|e| e.to_string())?;
            let (r, o) = events_of(&record);
            reservations.extend(r.into_iter().enumerate().map(|(seq, e)| ((lsn, seq as i16), e)));
            orders.extend(o.map(|e| ((lsn, 0), e)));
            if let Record::StockAdjusted { sku, delta, reason, .. } = &record {
                if let Some(row) = adjustment_id(reason.as_str()) {
                    taken.entry(row).or_default().push((lsn, sku.as_str().to_owned(), *delta));
                }
            }
            Ok(())
        })?;
    }
    let range = [&generation as &(dyn tokio_postgres::types::ToSql + Sync), &signed(from), &signed(applied)];
    let rows = |table: &str, what: &str| {
        format!("SELECT lsn, {what} FROM {table} WHERE generation = $1 AND lsn > $2 AND lsn <= $3")
    };
    // Events by LSN and their place in the record (a cart's step has several reservation events).
    let pg_reservations: BTreeMap<(Lsn, i16), String> = (tx
        .query(
            &rows("holdfast_reservation_events", "seq, 'reservation ' || reservation_id || ' ' || kind"),
            &range,
        )
        .await?)
        .iter()
        .map(|r| ((r.get::<_, i64>(0) as Lsn, r.get(1)), r.get(2)))
        .collect();
    let pg_orders: BTreeMap<(Lsn, i16), String> =
        (tx.query(&rows("holdfast_order_events", "'order ' || order_id || ' ' || step"), &range).await?)
            .iter()
            .map(|r| ((r.get::<_, i64>(0) as Lsn, 0), r.get(1)))
            .collect();
    for (engine, postgres) in [(&reservations, &pg_reservations), (&orders, &pg_orders)] {
        for lsn in engine.keys().chain(postgres.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (e, p) = (engine.get(lsn), postgres.get(lsn));
            if e != p {
                drift.events_differing += 1;
                if drift.events.len() < LISTED_MAX {
                    drift.events.push(EventDrift { lsn: lsn.0, engine: e.cloned(), postgres: p.cloned() });
                }
            }
        }
    }
    drift.events.sort_by_key(|e| e.lsn);
    drift.adjustments = check_adjustments(tx, generation, from, applied, &taken).await?;
    Ok(drift)
}

/// Each restock row taken once, by the record it is marked applied at.
async fn check_adjustments(
    tx: &Transaction<'_>,
    generation: i32,
    from: Lsn,
    applied: Lsn,
    taken: &BTreeMap<i64, Vec<(Lsn, String, i64)>>,
) -> anyhow::Result<Vec<AdjustmentDrift>> {
    let named: Vec<i64> = taken.keys().copied().collect();
    let rows = tx
        .query(
            "SELECT id, sku, delta, applied_lsn, applied_generation, taken_lsn FROM holdfast_stock_adjustments
             WHERE id = ANY($1)
                OR (applied_generation <= $2 AND applied_lsn > $3 AND applied_lsn <= $4)
                OR (applied_lsn IS NULL AND taken_lsn IS NOT NULL AND taken_lsn <= $4)
             ORDER BY id",
            &[&named, &generation, &signed(from), &signed(applied)],
        )
        .await?;
    let mut drift = Vec::new();
    let mut problem = |row: i64, problem: String| drift.push(AdjustmentDrift { row, problem });
    for r in rows {
        let (id, sku, delta): (i64, String, i64) = (r.get(0), r.get(1), r.get(2));
        let (applied_at, applied_gen, taken_at): (Option<i64>, Option<i32>, Option<i64>) =
            (r.get(3), r.get(4), r.get(5));
        let records = taken.get(&id).map_or(&[][..], Vec::as_slice);
        if records.len() > 1 {
            let at: Vec<Lsn> = records.iter().map(|t| t.0).collect();
            problem(id, format!("taken into the engine {} times, at LSNs {at:?}", records.len()));
        }
        for (lsn, record_sku, record_delta) in records {
            if (record_sku, *record_delta) != (&sku, delta) {
                problem(id, format!("the record at LSN {lsn} adjusts {record_sku} by {record_delta}, the row says {sku} by {delta}"));
            }
        }
        // A row marked by an earlier generation at the very LSN this log takes it at was taken in the
        // history both share (a new generation follows a log restored from before their parting).
        match (records.first(), applied_at) {
            (Some((lsn, ..)), Some(at)) if at as Lsn != *lsn => problem(
                id,
                format!("taken at LSN {lsn}, marked applied at LSN {at} of generation {applied_gen:?}"),
            ),
            (Some((lsn, ..)), None) => problem(id, format!("taken at LSN {lsn}, not marked applied")),
            (None, Some(at)) if applied_gen == Some(generation) && at as Lsn > from => {
                problem(id, format!("marked applied at LSN {at}, where the log has no adjustment of it"))
            }
            (None, Some(at)) if at as Lsn > from => problem(
                id,
                format!(
                    "applied at LSN {at} by the history of generation {applied_gen:?}, which this log does not \
                     share: this history never took it (insert it again if it should)"
                ),
            ),
            (None, None) => {
                let at = taken_at.unwrap_or_default();
                problem(id, format!("taken at LSN {at} (at or before the checkpoint), never marked applied"))
            }
            _ => {}
        }
    }
    Ok(drift)
}
