//! The read-only commands on a log: verify, stats, dump, trace.

use super::describe::{self, record_json, record_line, time, Filter};
use super::{checked_snapshots, problem_json, scan, storage, DumpArgs, Out, TraceArgs};
use crate::engine::Record;
use holdfast_wal::snapshot;
use holdfast_wal::Lsn;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub(super) fn verify(dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let storage = storage(dir)?;
    let (inspection, undecodable) = scan(&storage, 1, &mut |_, _| Ok(()))?;
    let snapshots = checked_snapshots(&storage)?;
    let mut problems: Vec<Value> = inspection.problems.iter().map(problem_json).collect();
    for u in &undecodable {
        problems.push(json!({"kind": "undecodable", "file": u.file, "offset": u.offset, "lsn": u.lsn, "reason": u.reason}));
    }
    for (file, engine) in &snapshots {
        if let Err(why) = engine {
            problems.push(json!({"kind": "bad_snapshot", "file": file.name, "offset": 0, "lsn": file.lsn, "reason": why}));
        }
    }
    // Records before the log's first LSN must be in a usable snapshot.
    let covered = snapshots.iter().filter(|(_, e)| e.is_ok()).map(|(f, _)| f.lsn).max().unwrap_or(0);
    if inspection.first_lsn > covered + 1 {
        let file = inspection.segments.first().map_or(String::new(), |s| s.name.clone());
        let reason = format!(
            "the log starts at LSN {} but no usable snapshot covers LSNs up to {}",
            inspection.first_lsn,
            inspection.first_lsn - 1
        );
        problems
            .push(json!({"kind": "gap", "file": file, "offset": 0, "lsn": covered + 1, "reason": reason}));
    }
    let torn_only = problems.iter().all(|p| p["kind"] == "torn_tail");
    let code = if problems.is_empty() {
        0
    } else if torn_only {
        3
    } else {
        1
    };
    if as_json {
        let report = json!({
            "intact": problems.is_empty(),
            "first_lsn": inspection.first_lsn,
            "last_lsn": inspection.next_lsn - 1,
            "records": inspection.records,
            "segments": inspection.segments.len(),
            "snapshots": snapshots.iter().map(|(f, e)| json!({"name": f.name, "lsn": f.lsn, "ok": e.is_ok()})).collect::<Vec<_>>(),
            "problems": problems,
        });
        writeln!(out, "{report}")?;
    } else {
        writeln!(
            out,
            "log: {} segments, LSNs {}..={}, {} records; snapshots: {} ({} usable)",
            inspection.segments.len(),
            inspection.first_lsn,
            inspection.next_lsn - 1,
            inspection.records,
            snapshots.len(),
            snapshots.iter().filter(|(_, e)| e.is_ok()).count()
        )?;
        for p in &problems {
            writeln!(
                out,
                "{}: file {} offset {} LSN {}: {}",
                p["kind"].as_str().unwrap_or("?").to_uppercase(),
                p["file"].as_str().unwrap_or("?"),
                p["offset"],
                p["lsn"],
                p["reason"].as_str().unwrap_or("?")
            )?;
        }
        let verdict = match code {
            0 => "intact".to_owned(),
            3 => "torn tail: recovery at start-up (or `holdfast wal repair`) cuts it; nothing acknowledged is lost".to_owned(),
            _ => format!(
                "CORRUPT: the server will refuse to start. Keep a copy of {}; see ops/runbooks/corrupt-log.md",
                dir.display()
            ),
        };
        writeln!(out, "{verdict}")?;
    }
    Ok(ExitCode::from(code))
}

pub(super) fn stats(dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(dir)?;
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut min_ms, mut max_ms) = (u64::MAX, 0u64);
    let (inspection, undecodable) = scan(&storage, 1, &mut |_, record| {
        *kinds.entry(describe::kind(record)).or_default() += 1;
        min_ms = min_ms.min(record.at_ms());
        max_ms = max_ms.max(record.at_ms());
        Ok(())
    })?;
    let snapshots = snapshot::list_snapshots(&storage)?;
    let sizes: Vec<u64> = snapshots
        .iter()
        .map(|s| std::fs::metadata(storage.dir().join(&s.name)).map_or(0, |m| m.len()))
        .collect();
    let used: u64 = inspection.segments.iter().map(|s| s.end_offset).sum();
    let on_disk: u64 = inspection.segments.iter().map(|s| s.file_bytes).sum();
    let times = (min_ms <= max_ms).then(|| (time(min_ms), time(max_ms)));
    if as_json {
        let report = json!({
            "first_lsn": inspection.first_lsn,
            "last_lsn": inspection.next_lsn - 1,
            "records": inspection.records,
            "undecodable": undecodable.len(),
            "first_time": times.as_ref().map(|t| &t.0),
            "last_time": times.as_ref().map(|t| &t.1),
            "by_kind": kinds,
            "log_bytes_used": used,
            "log_bytes_on_disk": on_disk,
            "segments": inspection.segments.iter().map(|s| json!({"name": s.name, "first_lsn": s.first_lsn,
                "records": s.records, "bytes_used": s.end_offset, "file_bytes": s.file_bytes})).collect::<Vec<_>>(),
            "snapshots": snapshots.iter().zip(&sizes).map(|(s, b)| json!({"name": s.name, "lsn": s.lsn, "bytes": b})).collect::<Vec<_>>(),
            "problems": inspection.problems.iter().map(problem_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{report}")?;
        return Ok(());
    }
    writeln!(
        out,
        "LSNs        {}..={} ({} records)",
        inspection.first_lsn,
        inspection.next_lsn - 1,
        inspection.records
    )?;
    if let Some((first, last)) = &times {
        writeln!(out, "time        {first} .. {last}")?;
    }
    writeln!(out, "log bytes   {used} used, {on_disk} on disk (segments are preallocated)")?;
    writeln!(out, "by kind")?;
    for (kind, n) in &kinds {
        writeln!(out, "  {kind:<16}{n:>12}")?;
    }
    writeln!(out, "segments")?;
    for s in &inspection.segments {
        writeln!(
            out,
            "  {}  first LSN {:>10}  {:>9} records  {:>11} bytes used",
            s.name, s.first_lsn, s.records, s.end_offset
        )?;
    }
    writeln!(out, "snapshots")?;
    for (s, bytes) in snapshots.iter().zip(&sizes) {
        writeln!(out, "  {}  LSN {:>10}  {:>11} bytes", s.name, s.lsn, bytes)?;
    }
    for p in &inspection.problems {
        writeln!(out, "problem: {}", problem_json(p))?;
    }
    if !undecodable.is_empty() {
        writeln!(out, "{} records do not decode (run `holdfast wal verify`)", undecodable.len())?;
    }
    Ok(())
}

pub(super) fn dump(args: &DumpArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(&args.dir)?;
    let since = args.since.as_deref().map(describe::parse_time).transpose().map_err(anyhow::Error::msg)?;
    let until = args.until.as_deref().map(describe::parse_time).transpose().map_err(anyhow::Error::msg)?;
    let filter = Filter {
        sku: args.sku.clone(),
        reservation: args.reservation.clone(),
        user: args.user.clone(),
        sale: args.sale.clone(),
        order: args.order.clone(),
        cart: args.cart.clone(),
    };
    let mut related = HashSet::new();
    let mut last = args.from_lsn.unwrap_or(1).saturating_sub(1);
    let to = args.to_lsn.unwrap_or(Lsn::MAX);
    let mut print = |lsn: Lsn, record: &Record, out: &mut Out<'_>| -> Result<(), String> {
        let wanted = lsn <= to
            && since.is_none_or(|t| record.at_ms() >= t)
            && until.is_none_or(|t| record.at_ms() <= t)
            && (args.kind.is_empty() || args.kind.iter().any(|k| k == describe::kind(record)))
            && filter.matches(record, &mut related);
        if wanted {
            let line =
                if args.json { record_json(lsn, record).to_string() } else { record_line(lsn, record) };
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    loop {
        let (inspection, undecodable) = scan(&storage, last + 1, &mut |lsn, record| {
            if lsn > last {
                print(lsn, record, out)?;
                last = lsn;
            }
            Ok(())
        })?;
        if let Some(u) = undecodable.first() {
            anyhow::bail!(
                "record {} in {} at offset {} does not decode: {}",
                u.lsn,
                u.file,
                u.offset,
                u.reason
            );
        }
        if !args.follow || last >= to {
            if inspection.is_corrupt() {
                eprintln!("warning: the log is damaged; `holdfast wal verify` names where");
            }
            return Ok(());
        }
        out.flush()?;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub(super) fn trace(args: &TraceArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(&args.dir)?;
    if let Some(id) = &args.reservation {
        super::rebuild::reservation_ids(std::slice::from_ref(id))?;
    }
    let filter = Filter {
        sku: args.sku.clone(),
        reservation: args.reservation.clone(),
        user: args.user.clone(),
        sale: None,
        order: args.order.clone(),
        cart: None,
    };
    let mut related = HashSet::new();
    let mut found = 0u64;
    let (_, undecodable) = scan(&storage, 1, &mut |lsn, record| {
        if filter.matches(record, &mut related) {
            found += 1;
            let line =
                if args.json { record_json(lsn, record).to_string() } else { record_line(lsn, record) };
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    if found == 0 && !args.json {
        writeln!(
            out,
            "no records (the log may have been trimmed after a snapshot: see `holdfast wal stats`)"
        )?;
    }
    if !undecodable.is_empty() {
        eprintln!("warning: {} records do not decode; run `holdfast wal verify`", undecodable.len());
    }
    Ok(())
}
