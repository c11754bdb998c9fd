//! The commands that rebuild state or write: replay, repair, snapshots, and the Postgres ones.

use super::describe::{self, time};
use super::{checked_snapshots, problem_json, scan, settings, storage, Out, ReplayArgs};
use crate::durable::Durable;
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{LogProblem, Lsn, WalOptions};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Parses reservation ids given on the command line.
pub(super) fn reservation_ids(ids: &[String]) -> anyhow::Result<HashSet<u64>> {
    ids.iter()
        .map(|s| {
            crate::engine::ReservationId::parse(s).map(|id| id.raw()).ok_or_else(|| {
                anyhow::anyhow!("{s} is not a reservation id (rsv_ and 32 hex digits, or 16 before tags)")
            })
        })
        .collect()
}

pub(super) fn replay(args: &ReplayArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(&args.dir)?;
    let wanted = reservation_ids(&args.reservation)?;
    // The cut: an LSN, or the last record before the first one after the time.
    let cut = match (args.until_lsn, &args.until_time) {
        (Some(lsn), _) => lsn,
        (None, Some(t)) => {
            let t = describe::parse_time(t).map_err(anyhow::Error::msg)?;
            let mut cut: Option<Lsn> = None;
            let mut first: Option<(Lsn, u64)> = None;
            scan(&storage, 1, &mut |lsn, record| {
                first.get_or_insert((lsn, record.at_ms()));
                if cut.is_none() && record.at_ms() > t {
                    cut = Some(lsn - 1);
                }
                Ok(())
            })?;
            match (cut, first) {
                (Some(c), Some((first_lsn, first_ms))) if c < first_lsn && first_lsn > 1 => anyhow::bail!(
                    "the log no longer reaches back to {}: its oldest record is LSN {first_lsn} at {}",
                    time(t),
                    time(first_ms)
                ),
                (Some(c), _) => c,
                (None, _) => Lsn::MAX,
            }
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    let (engine, from, replayed) = crate::durable::engine_at(&storage, &settings(&args.dir)?, cut)?;
    let at = if replayed.records > 0 { (replayed.last_lsn, replayed.last_at_ms) } else { (from, 0) };
    if args.until_lsn.is_some() && at.0 < cut {
        anyhow::bail!("the log ends at LSN {} (asked for {cut})", at.0);
    }
    let state = engine.export(at.1);
    let skus: Vec<Value> = state
        .skus
        .iter()
        .filter(|(sku, _)| args.sku.is_empty() || args.sku.iter().any(|s| s == sku.as_str()))
        .map(|(sku, stock)| describe::stock_json(sku.as_str(), stock))
        .collect();
    let reservations: Vec<Value> = state
        .reservations
        .iter()
        .filter(|r| {
            if !wanted.is_empty() {
                return wanted.contains(&r.id.raw());
            }
            r.state == crate::engine::ReservationState::Active
                && (args.sku.is_empty()
                    || r.items.iter().any(|i| args.sku.iter().any(|s| s == i.sku.as_str())))
        })
        .map(describe::reservation_json)
        .collect();
    // Named orders, else those still open or waiting for a person.
    let orders: Vec<Value> = state
        .orders
        .iter()
        .filter(|o| {
            if !args.order.is_empty() {
                return args.order.iter().any(|want| *want == o.id.to_string());
            }
            o.state.is_open() || o.needs_person()
        })
        .map(describe::order_json)
        .collect();
    let carts: Vec<Value> = (state.carts.iter())
        .filter(|c| args.cart.iter().any(|want| want == c.id.as_str()))
        .map(describe::cart_json)
        .collect();
    let report = json!({
        "lsn": at.0,
        "at": (at.1 > 0).then(|| time(at.1)),
        "snapshot_lsn": from,
        "skus": skus,
        "reservations": reservations,
        "orders": orders,
        "cart_count": state.carts.len(),
        "carts": carts,
    });
    let text = serde_json::to_string_pretty(&report)?;
    match &args.output {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => writeln!(out, "{text}")?,
    }
    Ok(())
}

/// Locks the data directory as the server does: a tool that writes must not run beside a server.
pub(super) fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    Ok(crate::files::lock_data_dir(dir)?)
}

pub(super) fn repair(dir: &Path, yes: bool, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let storage = storage(dir)?;
    let _lock = lock(dir)?;
    let inspection = holdfast_wal::inspect(&storage, 1, &mut |_| Ok(()))?;
    if inspection.is_corrupt() {
        for p in &inspection.problems {
            writeln!(out, "{}", problem_json(p))?;
        }
        writeln!(
            out,
            "The log is corrupt before its tail: records that were acknowledged are damaged or missing.\n\
             Nothing was changed. Deleting them would lose confirmed sales silently, so this tool will not.\n\
             Keep a copy of {dir}, then see ops/runbooks/corrupt-log.md (restore from a backup copy, or\n\
             replay up to the damage with `holdfast wal replay {dir} --until-lsn N` to see what was there).",
            dir = dir.display()
        )?;
        return Ok(ExitCode::FAILURE);
    }
    let Some(LogProblem::Torn(torn)) = inspection.problems.first() else {
        writeln!(
            out,
            "nothing to repair: the log is intact (LSNs {}..={})",
            inspection.first_lsn,
            inspection.next_lsn - 1
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    writeln!(
        out,
        "torn tail: {} bytes from {} offset {} (LSN {} onward: {}). They were never acknowledged.",
        torn.bytes, torn.file, torn.offset, torn.lsn, torn.reason
    )?;
    if !yes {
        write!(out, "Cut it? Type yes: ")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            writeln!(out, "nothing changed")?;
            return Ok(ExitCode::FAILURE);
        }
    }
    let recovery = holdfast_wal::repair(&storage)?;
    writeln!(out, "cut; the log now ends at LSN {}", recovery.next_lsn - 1)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn snapshot_create(dir: &Path, out: &mut Out<'_>) -> anyhow::Result<()> {
    storage(dir)?;
    let _lock = lock(dir)?;
    let storage = Arc::new(FsStorage::new(dir.join("wal"))?);
    let (durable, _) = Durable::open(storage, settings(dir)?, WalOptions::default())?;
    let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let file = durable.snapshot(now_ms, false)?;
    durable.close()?;
    writeln!(out, "{} (LSN {})", file.name, file.lsn)?;
    Ok(())
}

pub(super) fn snapshot_list(dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(dir)?;
    for (file, engine) in checked_snapshots(&storage)? {
        let bytes = std::fs::metadata(storage.dir().join(&file.name)).map_or(0, |m| m.len());
        let (ok, detail) = match &engine {
            Ok(e) => (true, format!("{} active reservations", e.active_reservations())),
            Err(why) => (false, format!("UNUSABLE: {why}")),
        };
        if as_json {
            writeln!(
                out,
                "{}",
                json!({"name": file.name, "lsn": file.lsn, "bytes": bytes, "ok": ok, "detail": detail})
            )?;
        } else {
            writeln!(out, "{}  LSN {:>10}  {:>11} bytes  {detail}", file.name, file.lsn, bytes)?;
        }
    }
    Ok(())
}

pub(super) fn db_migrate(url: &str, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let applied = crate::reconcile::migrate_command(url)?;
    if applied.is_empty() {
        writeln!(out, "the schema is up to date")?;
    } else {
        writeln!(out, "applied migrations {applied:?}")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn db_new_generation(url: &str, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let (generation, old, restocks) = crate::reconcile::new_generation_command(url)?;
    writeln!(
        out,
        "generation {generation} begins at LSN 0 (the previous one had reached LSN {old}); the next holdfast \
         to mirror here rewrites the tables from its log"
    )?;
    if restocks > 0 {
        writeln!(
            out,
            "{restocks} restock rows were taken by earlier generations and are not taken again; once the mirror \
             has caught up, holdfast reconcile lists those this log has no take of (insert them again if they \
             should count)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn reconcile(url: &str, dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let storage = storage(dir)?;
    let config = settings(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let pool = crate::reconcile::pool(url)?;
        let mut client = pool.get().await?;
        crate::reconcile::drift::check(&mut client, &storage, &config).await
    })?;
    if as_json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "compared at LSN {}: {} SKUs, {} sales, {} reservations ({} active), {} orders; history after LSN {}",
            report.lsn,
            report.skus_checked,
            report.sales_checked,
            report.reservations_checked,
            report.active_reservations_checked,
            report.orders_checked,
            report.log.compared_after
        )?;
        if let Some(why) = &report.log.history {
            writeln!(out, "history: {why}")?;
        }
        for d in &report.skus {
            writeln!(
                out,
                "SKU {}: engine {:?}, postgres {:?} ([on_hand, available, reserved, sold])",
                d.sku, d.engine, d.postgres
            )?;
        }
        for d in &report.sales {
            writeln!(out, "sale {}: engine limit {:?}, postgres limit {:?}", d.sale, d.engine, d.postgres)?;
        }
        for d in &report.reservations {
            writeln!(out, "reservation {}: engine {:?}, postgres {:?}", d.id, d.engine, d.postgres)?;
        }
        for d in &report.log.events {
            writeln!(out, "history at LSN {}: log {:?}, postgres {:?}", d.lsn, d.engine, d.postgres)?;
        }
        if report.log.events_differing > report.log.events.len() {
            writeln!(out, "… {} history differences in all", report.log.events_differing)?;
        }
        for d in &report.log.adjustments {
            writeln!(out, "restock row {}: {}", d.row, d.problem)?;
        }
        for d in &report.orders {
            let show = |f: &Option<crate::reconcile::drift::OrderFacts>| {
                f.as_ref().map_or("none".to_owned(), |f| serde_json::to_string(f).unwrap_or_default())
            };
            writeln!(out, "order {}: engine {}, postgres {}", d.id, show(&d.engine), show(&d.postgres))?;
        }
        writeln!(
            out,
            "{}",
            if report.is_clean() { "no drift" } else { "DRIFT: see ops/runbooks/postgres.md" }
        )?;
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
