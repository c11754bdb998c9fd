//! A resync: the log no longer holds the records the mirror needs (it outgrew its budget while
//! Postgres was away), so the mirror's current state is rewritten from the newest snapshot and its
//! checkpoint moves to the snapshot's LSN.
//!
//! Only the gap is lost. Rows are upserted, never truncated: the event history before the gap stays,
//! the gap itself is written to `holdfast_mirror_gaps`, and a reservation Postgres had as active that
//! ended within the gap (and that the snapshot no longer holds) becomes `ended`, its outcome unknown.
//! The rewrite is one statement per table over arrays, under row locks only, so readers are never
//! blocked and a large state takes a few round trips, not one per row.

use super::batch::{items_json, signed, time};
use super::history::record_digest;
use super::mirror::{MirrorStatus, ADJUSTMENT_KEY_PREFIX};
use crate::durable::Durable;
use crate::engine::EngineState;
use crate::orders::Order;
use holdfast_wal::{snapshot, Lsn, Tail};
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use tokio_postgres::{Client, Transaction};

/// Rewrites the mirror from the newest usable snapshot after `applied`; returns the snapshot's LSN,
/// the new checkpoint. The records after it are kept for the mirror before anything is written.
pub(super) async fn resync(
    client: &mut Client,
    durable: &Durable,
    status: &MirrorStatus,
    applied: Lsn,
) -> anyhow::Result<Lsn> {
    let (state, lsn) = pin_snapshot(durable)?;
    if lsn <= applied {
        anyhow::bail!(
            "the log lacks the records after LSN {applied}, yet its newest snapshot is at LSN {lsn}: \
             a damaged log? Not resyncing; run holdfast wal verify"
        );
    }
    let digest = record_digest(&**durable.wal().storage(), lsn);
    let tx = client.transaction().await?;
    let generation: i32 =
        tx.query_one("SELECT generation FROM holdfast_mirror WHERE id = 1", &[]).await?.get(0);
    write_state(&tx, &state, lsn).await?;
    tx.execute(
        "INSERT INTO holdfast_mirror_gaps (generation, after_lsn, through_lsn) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&generation, &signed(applied), &signed(lsn)],
    )
    .await?;
    // The records the snapshot covers would have marked their restock rows applied: mark them, by the
    // keys the engine remembers (a row whose taken_lsn never reached Postgres too) and by taken_lsn.
    let taken: Vec<i64> = (state.adjust_keys.iter())
        .filter_map(|k| k.key.as_str().strip_prefix(ADJUSTMENT_KEY_PREFIX)?.parse().ok())
        .collect();
    tx.execute(
        "UPDATE holdfast_stock_adjustments SET applied_lsn = coalesce(taken_lsn, $2), applied_generation = $3,
             applied_at = now()
         WHERE id = ANY($1) AND applied_lsn IS NULL",
        &[&taken, &signed(lsn), &generation],
    )
    .await?;
    tx.execute(
        "UPDATE holdfast_stock_adjustments SET applied_lsn = taken_lsn, applied_generation = $2, applied_at = now()
         WHERE applied_lsn IS NULL AND taken_lsn IS NOT NULL AND taken_lsn <= $1",
        &[&signed(lsn), &generation],
    )
    .await?;
    let moved = tx
        .execute(
            "UPDATE holdfast_mirror SET applied_lsn = $1, applied_digest = $2, applied_at = now()
             WHERE id = 1 AND applied_lsn = $3",
            &[&signed(lsn), &digest.map(|d| d as i64), &signed(applied)],
        )
        .await?;
    if moved != 1 {
        anyhow::bail!("the mirror checkpoint moved from LSN {applied} during a resync: is another holdfast mirroring to this database?");
    }
    tx.commit().await?;
    status.resyncs.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        after = applied,
        through = lsn,
        "the mirror was rewritten from the snapshot at this LSN; the events of the records in between are \
         not in Postgres (holdfast_mirror_gaps), the history before them is"
    );
    Ok(lsn)
}

/// The newest usable snapshot whose following records the log still holds, with those records kept
/// (the retention floor) before it is returned: snapshots taken while the rewrite runs would
/// otherwise remove the segment the mirror reads next, and it would resync again at once.
fn pin_snapshot(durable: &Durable) -> anyhow::Result<(EngineState, Lsn)> {
    let storage = durable.wal().storage().clone();
    for _ in 0..5 {
        let newest = snapshot::list_snapshots(&*storage)?
            .into_iter()
            .find_map(|file| crate::durable::snapshot_state(&*storage, &file).ok().map(|s| (s, file.lsn)));
        let Some((state, lsn)) = newest else {
            anyhow::bail!("no usable snapshot to resync the mirror from")
        };
        durable.set_retention_floor(lsn.max(1));
        if Tail::new(storage.clone(), lsn + 1).is_ok() {
            return Ok((state, lsn));
        }
    }
    anyhow::bail!("the log kept moving past its newest snapshot while the mirror chose one to resync from")
}

/// Brings the mirror's current-state tables to `state` (the engine's as of `lsn`), keeping history.
pub(super) async fn write_state(tx: &Transaction<'_>, state: &EngineState, lsn: Lsn) -> anyhow::Result<()> {
    let l = signed(lsn);
    let (skus, counts): (Vec<&str>, Vec<[i64; 4]>) = (state.skus.iter())
        .map(|(sku, s)| (sku.as_str(), [s.on_hand, s.available, s.reserved, s.sold].map(signed)))
        .unzip();
    let column = |i: usize| counts.iter().map(|c| c[i]).collect::<Vec<i64>>();
    tx.execute(
        "INSERT INTO holdfast_skus (sku, on_hand, available, reserved, sold, updated_lsn)
         SELECT *, $6 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])
         ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, available = EXCLUDED.available,
             reserved = EXCLUDED.reserved, sold = EXCLUDED.sold, updated_lsn = EXCLUDED.updated_lsn",
        &[&skus, &column(0), &column(1), &column(2), &column(3), &l],
    )
    .await?;
    let (sales, limits): (Vec<&str>, Vec<i32>) =
        state.sales.iter().map(|(s, limit)| (s.as_str(), *limit as i32)).unzip();
    tx.execute(
        "INSERT INTO holdfast_sales (sale, per_user_limit, updated_lsn)
         SELECT *, $3 FROM unnest($1::text[], $2::int4[])
         ON CONFLICT (sale) DO UPDATE SET per_user_limit = EXCLUDED.per_user_limit, updated_lsn = EXCLUDED.updated_lsn",
        &[&sales, &limits, &l],
    )
    .await?;
    write_reservations(tx, state, l).await?;
    write_orders(tx, &state.orders, l).await?;
    Ok(())
}

async fn write_reservations(tx: &Transaction<'_>, state: &EngineState, l: i64) -> anyhow::Result<()> {
    let n = state.reservations.len();
    let mut ids = Vec::with_capacity(n);
    let (mut states, mut created, mut expires) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut ended, mut users, mut sales) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut item_ids, mut item_skus, mut item_qtys) = (Vec::new(), Vec::new(), Vec::new());
    for r in &state.reservations {
        let id = r.id.to_string();
        for item in &r.items {
            item_ids.push(id.clone());
            item_skus.push(item.sku.as_str());
            item_qtys.push(item.qty as i32);
        }
        ids.push(id);
        states.push(r.state.as_str());
        created.push(time(r.created_at_ms));
        expires.push(time(r.expires_at_ms));
        ended.push(r.ended_at_ms.map(time));
        users.push(r.holder.as_ref().map(|(_, u)| u.as_str()));
        sales.push(r.holder.as_ref().map(|(s, _)| s.as_str()));
    }
    tx.execute(
        "INSERT INTO holdfast_reservations (id, state, created_at, expires_at, ended_at, user_id, sale, created_lsn, updated_lsn)
         SELECT *, $8, $8 FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
             $5::timestamptz[], $6::text[], $7::text[])
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, expires_at = EXCLUDED.expires_at,
             ended_at = EXCLUDED.ended_at, updated_lsn = EXCLUDED.updated_lsn
         WHERE (holdfast_reservations.state, holdfast_reservations.expires_at, holdfast_reservations.ended_at)
             IS DISTINCT FROM (EXCLUDED.state, EXCLUDED.expires_at, EXCLUDED.ended_at)",
        &[&ids, &states, &created, &expires, &ended, &users, &sales, &l],
    )
    .await?;
    tx.execute(
        "INSERT INTO holdfast_reservation_items (reservation_id, sku, qty)
         SELECT * FROM unnest($1::text[], $2::text[], $3::int4[]) ON CONFLICT DO NOTHING",
        &[&item_ids, &item_skus, &item_qtys],
    )
    .await?;
    // Active in Postgres, gone from the snapshot: it ended within the gap, and how is not known.
    tx.execute(
        "UPDATE holdfast_reservations SET state = 'ended', updated_lsn = $2
         WHERE state = 'active' AND NOT (id = ANY($1::text[]))",
        &[&ids, &l],
    )
    .await?;
    Ok(())
}

/// Orders as the engine holds them (what a mismatched payment carried is not kept there, so the
/// columns for it keep what Postgres had).
async fn write_orders(tx: &Transaction<'_>, orders: &[Order], l: i64) -> anyhow::Result<()> {
    let text = |f: &dyn Fn(&Order) -> String| orders.iter().map(f).collect::<Vec<String>>();
    let times = |f: &dyn Fn(&Order) -> Option<SystemTime>| orders.iter().map(f).collect::<Vec<_>>();
    let ids = text(&|o| o.id.to_string());
    let states = text(&|o| o.state.as_str().to_owned());
    let causes: Vec<Option<&str>> = orders.iter().map(|o| o.state.cause()).collect();
    let reservations = text(&|o| o.reservation.to_string());
    let users = text(&|o| o.placed.user.as_str().to_owned());
    let sales: Vec<Option<&str>> =
        orders.iter().map(|o| o.placed.sale.as_ref().map(|s| s.as_str())).collect();
    let items = text(&|o| items_json(&o.placed.lines));
    let amounts: Vec<i64> = orders.iter().map(|o| signed(o.placed.amount)).collect();
    let currencies = text(&|o| o.placed.currency.clone());
    let refs: Vec<Option<&str>> = orders.iter().map(|o| o.provider_ref.as_deref()).collect();
    let pay_by = times(&|o| Some(time(o.pay_by_ms)));
    let owed: Vec<bool> = orders.iter().map(|o| o.commit_owed).collect();
    let keys = text(&|o| o.placed.key.as_str().to_owned());
    let created = times(&|o| Some(time(o.created_at_ms)));
    let updated = times(&|o| Some(time(o.history.last().map_or(o.created_at_ms, |t| t.at_ms))));
    let ended = times(&|o| (o.ended_at_ms > 0).then(|| time(o.ended_at_ms)));
    tx.execute(
        "INSERT INTO holdfast_orders (id, state, cause, reservation_id, user_id, sale, items, amount, currency,
             provider_ref, pay_by, commit_owed, idempotency_key, created_at, updated_at, ended_at, created_lsn,
             updated_lsn)
         SELECT id, st, ca, rs, us, sa, it::jsonb, am, cu, pr, pb, ow, ke, cr, up, en, $17, $17
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::int8[], $9::text[], $10::text[], $11::timestamptz[], $12::bool[], $13::text[],
             $14::timestamptz[], $15::timestamptz[], $16::timestamptz[])
             AS t(id, st, ca, rs, us, sa, it, am, cu, pr, pb, ow, ke, cr, up, en)
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, cause = EXCLUDED.cause,
             reservation_id = EXCLUDED.reservation_id, provider_ref = EXCLUDED.provider_ref,
             pay_by = EXCLUDED.pay_by, commit_owed = EXCLUDED.commit_owed, updated_at = EXCLUDED.updated_at,
             ended_at = EXCLUDED.ended_at, updated_lsn = EXCLUDED.updated_lsn",
        &[
            &ids,
            &states,
            &causes,
            &reservations,
            &users,
            &sales,
            &items,
            &amounts,
            &currencies,
            &refs,
            &pay_by,
            &owed,
            &keys,
            &created,
            &updated,
            &ended,
            &l,
        ],
    )
    .await?;
    Ok(())
}
