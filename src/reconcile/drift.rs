//! Drift: Postgres compared with the engine at the same LSN. Postgres says which LSN its tables are at
//! (`applied_lsn`, read in the same snapshot as the tables); the engine's state at that LSN is rebuilt
//! from the newest snapshot before it and the log, so a busy server's lag is never mistaken for drift.
//! Drift is reported (JSON, log lines, metrics), never repaired: counts of reserved and sold units are
//! for a person to decide on, with this evidence.
//!
//! Orders are compared field by field (state and cause, reservation, amount and currency, provider
//! reference). Postgres keeps every order while the engine forgets ended ones after its retention, so
//! an order only Postgres has is drift only when Postgres says it is open or needs a person (the
//! engine never forgets those).

use crate::engine::{Engine, EngineConfig, ReservationState};
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
    pub active_reservations_checked: usize,
    /// Orders the engine holds at that LSN (open ones, ended ones within retention).
    pub orders_checked: usize,
    pub skus: Vec<SkuDrift>,
    pub reservations: Vec<ReservationDrift>,
    pub orders: Vec<OrderDrift>,
}

impl DriftReport {
    pub fn is_clean(&self) -> bool {
        self.skus.is_empty() && self.reservations.is_empty() && self.orders.is_empty()
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
    let lsn =
        tx.query_one("SELECT applied_lsn FROM holdfast_mirror WHERE id = 1", &[]).await?.get::<_, i64>(0)
            as Lsn;
    let mut pg_skus = BTreeMap::new();
    for row in tx.query("SELECT sku, on_hand, available, reserved, sold FROM holdfast_skus", &[]).await? {
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        pg_skus.insert(row.get::<_, String>(0), [n(1), n(2), n(3), n(4)]);
    }
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
    tx.commit().await?;
    let engine = engine_at(storage, config, lsn)?;
    let state = engine.export(0);
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
    let engine_active: BTreeSet<String> = state
        .reservations
        .iter()
        .filter(|r| r.state == ReservationState::Active)
        .map(|r| r.id.to_string())
        .collect();
    let mut reservations = Vec::new();
    for id in engine_active.symmetric_difference(&pg_active) {
        let engine_state =
            state.reservations.iter().find(|r| r.id.to_string() == *id).map(|r| r.state.as_str());
        let pg_state = client
            .query_opt("SELECT state FROM holdfast_reservations WHERE id = $1", &[id])
            .await?
            .map(|r| r.get::<_, String>(0));
        reservations.push(ReservationDrift { id: id.clone(), engine: engine_state, postgres: pg_state });
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
        active_reservations_checked: engine_active.len(),
        orders_checked: engine_orders.len(),
        skus,
        reservations,
        orders,
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
}
