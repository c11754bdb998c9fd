//! Warm-start: a server with an empty data directory and a database loads the state Postgres holds
//! (SKUs and their counters, sales, active reservations and per-user counts) before it reports ready.
//! The state is checked as any snapshot is (`Engine::restore`), written as the snapshot at LSN 0 of
//! the new log, and the mirror begins a new generation at LSN 0.

use crate::durable::codec;
use crate::engine::{
    Engine, EngineConfig, EngineState, Item, ReservationId, ReservationState, ReservationView, SaleId, SkuId,
    Stock, UserId,
};
use holdfast_wal::snapshot;
use holdfast_wal::storage::Storage;
use tokio_postgres::Client;

/// What warm-start loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warmed {
    pub skus: usize,
    pub active_reservations: usize,
}

/// Whether `storage` holds neither a segment nor a snapshot.
pub fn is_empty(storage: &dyn Storage) -> std::io::Result<bool> {
    Ok(storage.list()?.iter().all(|n| !n.ends_with(".wal") && !n.ends_with(".snap")))
}

fn ms(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000)::int8")
}

/// The engine state Postgres holds, checked.
pub async fn load_state(client: &Client, config: &EngineConfig) -> anyhow::Result<EngineState> {
    let bad = |what: &str, value: &str, e: &dyn std::fmt::Display| {
        anyhow::anyhow!("Postgres holds a bad {what} {value:?}: {e}")
    };
    let mut state = EngineState::default();
    for row in client
        .query("SELECT sku, on_hand, available, reserved, sold FROM holdfast_skus ORDER BY sku", &[])
        .await?
    {
        let sku: String = row.get(0);
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        let stock = Stock { on_hand: n(1), available: n(2), reserved: n(3), sold: n(4) };
        state.skus.push((SkuId::new(&sku).map_err(|e| bad("SKU", &sku, &e))?, stock));
    }
    for row in client.query("SELECT sale, per_user_limit FROM holdfast_sales ORDER BY sale", &[]).await? {
        let sale: String = row.get(0);
        state.sales.push((
            SaleId::new(&sale).map_err(|e| bad("sale", &sale, &e))?,
            row.get::<_, i32>(1).max(0) as u32,
        ));
    }
    let sql = format!(
        "SELECT r.id, {}, {}, r.user_id, r.sale, i.sku, i.qty
         FROM holdfast_reservations r JOIN holdfast_reservation_items i ON i.reservation_id = r.id
         WHERE r.state = 'active' ORDER BY r.id, i.sku",
        ms("r.created_at"),
        ms("r.expires_at")
    );
    for row in client.query(&sql, &[]).await? {
        let id: String = row.get(0);
        let parsed = ReservationId::parse(&id)
            .ok_or_else(|| bad("reservation id", &id, &"not rsv_ and 32 (or 16) hex digits"))?;
        let sku: String = row.get(5);
        let item = Item {
            sku: SkuId::new(&sku).map_err(|e| bad("SKU", &sku, &e))?,
            qty: row.get::<_, i32>(6).max(0) as u32,
        };
        match state.reservations.last_mut() {
            Some(last) if last.id == parsed => last.items.push(item),
            _ => {
                let holder = match (row.get::<_, Option<String>>(4), row.get::<_, Option<String>>(3)) {
                    (Some(sale), Some(user)) => Some((
                        SaleId::new(&sale).map_err(|e| bad("sale", &sale, &e))?,
                        UserId::new(&user).map_err(|e| bad("user", &user, &e))?,
                    )),
                    _ => None,
                };
                state.reservations.push(ReservationView {
                    id: parsed,
                    state: ReservationState::Active,
                    items: vec![item],
                    created_at_ms: row.get::<_, i64>(1).max(0) as u64,
                    expires_at_ms: row.get::<_, i64>(2).max(0) as u64,
                    ended_at_ms: None,
                    holder,
                });
            }
        }
    }
    let counters = client
        .query(
            "SELECT r.sale, r.user_id, sum(i.qty)::int8 FROM holdfast_reservations r
             JOIN holdfast_reservation_items i ON i.reservation_id = r.id
             WHERE r.state IN ('active', 'committed') AND r.sale IS NOT NULL AND r.user_id IS NOT NULL
             GROUP BY r.sale, r.user_id ORDER BY 1, 2",
            &[],
        )
        .await?;
    for row in counters {
        let (sale, user): (String, String) = (row.get(0), row.get(1));
        let (Ok(sale), Ok(user)) = (SaleId::new(&sale), UserId::new(&user)) else { continue };
        state.counters.push((sale, user, row.get::<_, i64>(2).max(0) as u64));
    }
    // New ids must not repeat any id Postgres has seen.
    let mut max_seq = 0;
    for row in client.query("SELECT id FROM holdfast_reservations", &[]).await? {
        if let Some(id) = ReservationId::parse(row.get::<_, &str>(0)) {
            max_seq = max_seq.max(id.seq());
        }
    }
    state.next_seqs = vec![max_seq + 1; config.shards];
    Engine::restore(config.clone(), &state)
        .map_err(|e| anyhow::anyhow!("the state in Postgres is not consistent: {e}"))?;
    Ok(state)
}

/// Loads the state from Postgres into the empty log in `storage`, as its snapshot at LSN 0, and starts
/// a new mirror generation at LSN 0 (first, so that a crash in between just warm-starts again).
pub async fn warm_start(
    client: &mut Client,
    storage: &dyn Storage,
    config: &EngineConfig,
) -> anyhow::Result<Warmed> {
    let state = load_state(client, config).await?;
    client
        .execute("UPDATE holdfast_mirror SET generation = generation + 1, applied_lsn = 0, applied_digest = NULL, applied_at = now() WHERE id = 1", &[])
        .await?;
    snapshot::write_snapshot(storage, 0, &codec::encode_state(&state))?;
    Ok(Warmed { skus: state.skus.len(), active_reservations: state.reservations.len() })
}
