//! Drift: Postgres compared with the engine at the same LSN. Postgres says which LSN its tables are at
//! (`applied_lsn`, read in the same snapshot as the tables); the engine's state at that LSN is rebuilt
//! from the newest snapshot before it and the log, so a busy server's lag is never mistaken for drift.
//! Drift is reported (JSON, log lines, metrics), never repaired: counts of reserved and sold units are
//! for a person to decide on, with this evidence.
//!
//! Sales are compared by their limit, and every reservation the engine holds (active, or ended within
//! its retention) by its state. The history rows and restock marks are compared record by record
//! (`drift_log.rs`), and so is the record at the checkpoint, so another history is drift too.
//!
//! Orders are compared field by field (state and cause, reservation, amount and currency, provider
//! reference). Postgres keeps every order while the engine forgets ended ones after its retention, so
//! an order only Postgres has is drift only when Postgres says it is open or needs a person (the
//! engine never forgets those).

pub use super::drift_log::{AdjustmentDrift, EventDrift, LogDrift};
use crate::engine::{Engine, EngineConfig};
use crate::orders::{Order, OrderState};
use holdfast_wal::storage::Storage;
use holdfast_wal::Lsn;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkuDrift {
    pub sku: String,
    /// `[on_hand, available, reserved, sold]`; `None` where one side does not have the SKU.
    pub engine: Option<[u64; 4]>,
    pub postgres: Option<[u64; 4]>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SaleDrift {
    pub sale: String,
    /// The per-user limit; `None` where one side does not have the sale.
    pub engine: Option<u32>,
    pub postgres: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReservationDrift {
    pub id: String,
    pub engine: Option<&'static str>,
    pub postgres: Option<String>,
}

/// What is compared of an order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderFacts {
    pub state: String,
    /// Set while cancelled: `payment_failed`, `expired` or `cancelled`.
    pub cause: Option<String>,
    pub reservation_id: String,
    pub amount: u64,
    pub currency: String,
    pub provider_ref: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderDrift {
    pub id: String,
    /// `None` where one side does not have the order.
    pub engine: Option<OrderFacts>,
    pub postgres: Option<OrderFacts>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DriftReport {
    /// The LSN both sides were compared at.
    pub lsn: Lsn,
    pub skus_checked: usize,
    pub sales_checked: usize,
    pub active_reservations_checked: usize,
    /// Reservations the engine holds at that LSN, active or ended within retention.
    pub reservations_checked: usize,
    /// Orders the engine holds at that LSN (open ones, ended ones within retention).
    pub orders_checked: usize,
    pub skus: Vec<SkuDrift>,
    pub sales: Vec<SaleDrift>,
    pub reservations: Vec<ReservationDrift>,
    pub orders: Vec<OrderDrift>,
    /// History rows, restock marks and the record at the checkpoint.
    pub log: LogDrift,
}

impl DriftReport {
    pub fn is_clean(&self) -> bool {
        self.skus.is_empty()
            && self.sales.is_empty()
            && self.reservations.is_empty()
            && self.orders.is_empty()
            && self.log.is_clean()
    }
}

fn order_facts(o: &Order) -> OrderFacts {
    OrderFacts {
        state: o.state.as_str().to_owned(),
        cause: match o.state {
            OrderState::Cancelled(c) => Some(c.as_str().to_owned()),
            _ => None,
        },
        reservation_id: o.reservation.to_string(),
        amount: o.placed.amount,
        currency: o.placed.currency.clone(),
        provider_ref: o.provider_ref.clone(),
    }
}

/// Whether Postgres's state for an order means the engine must still hold it.
fn kept_by_engine(state: &str) -> bool {
    ["awaiting_payment", "payment_pending", "refund_due", "payment_mismatch"].contains(&state)
}

/// The engine's state after LSN `lsn` of the log in `storage`, read without changing anything.
fn engine_at(storage: &dyn Storage, config: &EngineConfig, lsn: Lsn) -> anyhow::Result<Engine> {
    let (engine, from, replayed) = crate::durable::engine_at(storage, config, lsn)?;
    let reached = if replayed.records > 0 { replayed.last_lsn } else { from };
    if reached < lsn {
        anyhow::bail!("the log holds records only up to LSN {reached}, not {lsn}");
    }
    Ok(engine)
}

/// Compares Postgres with the engine's state at Postgres's `applied_lsn`.
pub async fn check(
    client: &mut Client,
    storage: &dyn Storage,
    config: &EngineConfig,
) -> anyhow::Result<DriftReport> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let row = tx
        .query_one("SELECT applied_lsn, generation, applied_digest FROM holdfast_mirror WHERE id = 1", &[])
        .await?;
    let lsn = row.get::<_, i64>(0) as Lsn;
    let (generation, digest): (i32, Option<i64>) = (row.get(1), row.get(2));
    let mut pg_skus = BTreeMap::new();
    for row in tx.query("SELECT sku, on_hand, available, reserved, sold FROM holdfast_skus", &[]).await? {
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        pg_skus.insert(row.get::<_, String>(0), [n(1), n(2), n(3), n(4)]);
    }
    let pg_sales: BTreeMap<String, i64> =
        (tx.query("SELECT sale, per_user_limit FROM holdfast_sales", &[]).await?)
            .iter()
            .map(|r| (r.get(0), i64::from(r.get::<_, i32>(1))))
            .collect();
    let pg_active: BTreeSet<String> = tx
        .query("SELECT id FROM holdfast_reservations WHERE state = 'active'", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut pg_orders = BTreeMap::new();
    for row in tx
        .query(
            "SELECT id, state, cause, reservation_id, amount, currency, provider_ref FROM holdfast_orders",
            &[],
        )
        .await?
    {
        let facts = OrderFacts {
            state: row.get(1),
            cause: row.get(2),
            reservation_id: row.get(3),
            amount: row.get::<_, i64>(4).max(0) as u64,
            currency: row.get(5),
            provider_ref: row.get(6),
        };
        pg_orders.insert(row.get::<_, String>(0), facts);
    }
    let engine = engine_at(storage, config, lsn)?;
    let state = engine.export(0);
    // Every reservation the engine holds, and every one Postgres has as active.
    let engine_states: BTreeMap<String, &'static str> =
        state.reservations.iter().map(|r| (r.id.to_string(), r.state.as_str())).collect();
    let ids: Vec<&String> = engine_states.keys().chain(pg_active.iter()).collect();
    let pg_states: BTreeMap<String, String> =
        (tx.query("SELECT id, state FROM holdfast_reservations WHERE id = ANY($1)", &[&ids]).await?)
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    let log = super::drift_log::check(&tx, storage, generation, lsn, digest.map(|d| d as u64)).await?;
    tx.commit().await?;
    let engine_skus: BTreeMap<String, [u64; 4]> = state
        .skus
        .iter()
        .map(|(sku, s)| (sku.as_str().to_owned(), [s.on_hand, s.available, s.reserved, s.sold]))
        .collect();
    let mut skus = Vec::new();
    for sku in engine_skus.keys().chain(pg_skus.keys()).collect::<BTreeSet<_>>() {
        let (e, p) = (engine_skus.get(sku).copied(), pg_skus.get(sku).copied());
        if e != p {
            skus.push(SkuDrift { sku: sku.clone(), engine: e, postgres: p });
        }
    }
    let engine_sales: BTreeMap<String, u32> =
        state.sales.iter().map(|(s, limit)| (s.as_str().to_owned(), *limit)).collect();
    let mut sales = Vec::new();
    for sale in engine_sales.keys().chain(pg_sales.keys()).collect::<BTreeSet<_>>() {
        let (e, p) = (engine_sales.get(sale).copied(), pg_sales.get(sale).copied());
        if e.map(i64::from) != p {
            sales.push(SaleDrift { sale: sale.clone(), engine: e, postgres: p });
        }
    }
    let mut reservations = Vec::new();
    for id in ids.into_iter().collect::<BTreeSet<_>>() {
        let (e, p) = (engine_states.get(id).copied(), pg_states.get(id).map(String::as_str));
        if e != p {
            reservations.push(ReservationDrift { id: id.clone(), engine: e, postgres: p.map(str::to_owned) });
        }
    }
    let engine_orders: BTreeMap<String, OrderFacts> =
        state.orders.iter().map(|o| (o.id.to_string(), order_facts(o))).collect();
    let mut orders = Vec::new();
    for (id, e) in &engine_orders {
        let p = pg_orders.get(id);
        if p != Some(e) {
            orders.push(OrderDrift { id: id.clone(), engine: Some(e.clone()), postgres: p.cloned() });
        }
    }
    for (id, p) in &pg_orders {
        if !engine_orders.contains_key(id) && kept_by_engine(&p.state) {
            orders.push(OrderDrift { id: id.clone(), engine: None, postgres: Some(p.clone()) });
        }
    }
    Ok(DriftReport {
        lsn,
        skus_checked: engine_skus.len().max(pg_skus.len()),
        sales_checked: engine_sales.len().max(pg_sales.len()),
        active_reservations_checked: engine_states.values().filter(|s| **s == "active").count(),
        reservations_checked: engine_states.len(),
        orders_checked: engine_orders.len(),
        skus,
        sales,
        reservations,
        orders,
        log,
    })
}

/// Writes each drifted SKU and reservation as a log line.
pub fn log_report(report: &DriftReport) {
    for d in &report.skus {
        tracing::error!(sku = %d.sku, engine = ?d.engine, postgres = ?d.postgres, lsn = report.lsn,
            "drift: Postgres and the engine disagree on this SKU ([on_hand, available, reserved, sold])");
    }
    for d in &report.reservations {
        tracing::error!(id = %d.id, engine = ?d.engine, postgres = ?d.postgres, lsn = report.lsn,
            "drift: Postgres and the engine disagree on this reservation");
    }
    for d in &report.orders {
        tracing::error!(id = %d.id, engine = ?d.engine, postgres = ?d.postgres, lsn = report.lsn,
            "drift: Postgres and the engine disagree on this order");
    }
    for d in &report.sales {
        tracing::error!(sale = %d.sale, engine = ?d.engine, postgres = ?d.postgres, lsn = report.lsn,
            "drift: Postgres and the engine disagree on this sale's per-user limit");
    }
    if let Some(why) = &report.log.history {
        tracing::error!(lsn = report.lsn, "drift: {why}");
    }
    for d in &report.log.events {
        tracing::error!(at = d.lsn, engine = ?d.engine, postgres = ?d.postgres, lsn = report.lsn,
            "drift: Postgres's history rows disagree with this log record");
    }
    for d in &report.log.adjustments {
        tracing::error!(row = d.row, problem = %d.problem, lsn = report.lsn,
            "drift: a holdfast_stock_adjustments row disagrees with the log");
    }
}
