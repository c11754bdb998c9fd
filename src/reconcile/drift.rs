//! Drift: Postgres compared with the engine at the same LSN. Postgres says which LSN its tables are at
//! (`applied_lsn`, read in the same snapshot as the tables); the engine's state at that LSN is rebuilt
//! from the newest snapshot before it and the log, so a busy server's lag is never mistaken for drift.
//! Drift is reported (JSON, log lines, metrics), never repaired: counts of reserved and sold units are
//! for a person to decide on, with this evidence.

use crate::engine::{Engine, EngineConfig, ReservationState};
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

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DriftReport {
    /// The LSN both sides were compared at.
    pub lsn: Lsn,
    pub skus_checked: usize,
    pub active_reservations_checked: usize,
    pub skus: Vec<SkuDrift>,
    pub reservations: Vec<ReservationDrift>,
}

impl DriftReport {
    pub fn is_clean(&self) -> bool {
        self.skus.is_empty() && self.reservations.is_empty()
    }
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
    Ok(DriftReport {
        lsn,
        skus_checked: engine_skus.len().max(pg_skus.len()),
        active_reservations_checked: engine_active.len(),
        skus,
        reservations,
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
}
