//! `holdfast wal …` and `holdfast snapshot …`: the tools an SRE runs on a data directory (the
//! server's `--data-dir`; the log and snapshots are in its `wal/`). Every command but `wal repair` and
//! `snapshot create` only reads, and works while a server is writing the directory. Output is a table
//! for people or, with `--json`, JSON for scripts (documented in `ops/runbooks/wal-tools.md`).
//!
//! Exit status: 0 done (for `verify`: intact); 1 the log is corrupt or the command failed; 2 bad usage;
//! 3 (`verify` only) a torn tail, which recovery or `wal repair` cuts.

mod describe;

use crate::durable::{codec, Durable};
use crate::engine::{Engine, EngineConfig, Record};
use clap::{Parser, Subcommand};
use describe::{record_json, record_line, time, Filter};
use holdfast_wal::snapshot::{self, SnapshotFile};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{Inspection, LogProblem, Lsn, WalOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "holdfast", about = "Tools for a holdfast data directory (DIR: the server's --data-dir)")]
enum Cli {
    /// Verify, inspect and replay the write-ahead log.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Take or list snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The Postgres schema.
    #[command(subcommand)]
    Db(DbCommand),
    /// Compare Postgres with the engine at the LSN Postgres is at; exit 1 when they differ.
    Reconcile {
        #[arg(long, env = "HOLDFAST_DATABASE_URL")]
        database_url: String,
        #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply the schema migrations the database lacks (the server also does at start).
    Migrate {
        #[arg(long, env = "HOLDFAST_DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Check every segment and snapshot: checksums, LSN continuity, headers, record decoding. Exit 0
    /// when intact, 3 for a torn tail only, 1 for corruption; each problem with file, offset and LSN.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Segments, LSN and time range, record counts by kind, sizes, snapshots.
    Stats {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print records (a table, or JSON lines with --json), filtered; --follow waits for new ones.
    Dump(DumpArgs),
    /// Rebuild the state at an LSN or a time (from the newest snapshot before it) and print it as JSON.
    Replay(ReplayArgs),
    /// The history of one reservation, SKU or user, in order, with LSNs and times.
    Trace(TraceArgs),
    /// Cut a torn tail (as recovery would), after confirmation or --yes. Corruption is never "repaired".
    Repair {
        dir: PathBuf,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct DumpArgs {
    dir: PathBuf,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    from_lsn: Option<Lsn>,
    #[arg(long)]
    to_lsn: Option<Lsn>,
    /// Records at or after this time (RFC 3339 or Unix ms).
    #[arg(long)]
    since: Option<String>,
    /// Records at or before this time.
    #[arg(long)]
    until: Option<String>,
    /// Only these kinds (repeatable).
    #[arg(long, value_parser = describe::KINDS)]
    kind: Vec<String>,
    #[arg(long)]
    sku: Option<String>,
    #[arg(long)]
    reservation: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    sale: Option<String>,
    /// Keep printing records as they are appended, like `tail -f`.
    #[arg(long)]
    follow: bool,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("until").required(true).multiple(false)))]
struct ReplayArgs {
    dir: PathBuf,
    /// The state after the record with this LSN.
    #[arg(long, group = "until")]
    until_lsn: Option<Lsn>,
    /// The state after every record up to this time (RFC 3339 or Unix ms).
    #[arg(long, group = "until")]
    until_time: Option<String>,
    /// Only these SKUs, and reservations holding them (repeatable).
    #[arg(long)]
    sku: Vec<String>,
    /// Only these reservations, in whatever state (repeatable).
    #[arg(long)]
    reservation: Vec<String>,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).multiple(false)))]
struct TraceArgs {
    dir: PathBuf,
    #[arg(long, group = "subject")]
    reservation: Option<String>,
    #[arg(long, group = "subject")]
    sku: Option<String>,
    #[arg(long, group = "subject")]
    user: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot of DIR now (the server must not be running on it).
    Create { dir: PathBuf },
    /// List snapshots, each checked: LSN, size, contents.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Runs `holdfast wal …` or `holdfast snapshot …`; `argv` starts with the program name.
pub fn run(argv: &[String]) -> ExitCode {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let out = &mut std::io::stdout().lock();
    let result = match cli {
        Cli::Wal(WalCommand::Verify { dir, json }) => verify(&dir, json, out),
        Cli::Wal(WalCommand::Stats { dir, json }) => stats(&dir, json, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Dump(args)) => dump(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Replay(args)) => replay(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Trace(args)) => trace(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Repair { dir, yes }) => repair(&dir, yes, out),
        Cli::Snapshot(SnapshotCommand::Create { dir }) => {
            snapshot_create(&dir, out).map(|()| ExitCode::SUCCESS)
        }
        Cli::Snapshot(SnapshotCommand::List { dir, json }) => {
            snapshot_list(&dir, json, out).map(|()| ExitCode::SUCCESS)
        }
        Cli::Db(DbCommand::Migrate { database_url }) => db_migrate(&database_url, out),
        Cli::Reconcile { database_url, data_dir, json } => reconcile(&database_url, &data_dir, json, out),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = out.flush();
            eprintln!("holdfast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

type Out<'a> = std::io::StdoutLock<'a>;

/// The log of a data directory, opened for reading (never created).
fn storage(dir: &Path) -> anyhow::Result<FsStorage> {
    let wal = dir.join("wal");
    if !wal.is_dir() {
        anyhow::bail!("{} holds no log (expected the directory {})", dir.display(), wal.display());
    }
    Ok(FsStorage::new(wal)?)
}

/// A record that did not decode, with where it is.
struct Undecodable {
    file: String,
    offset: u64,
    lsn: Lsn,
    reason: String,
}

/// Inspects the log from `from`, decoding each record for `visit`; records that do not decode are
/// collected, not visited.
fn scan(
    storage: &FsStorage,
    from: Lsn,
    visit: &mut dyn FnMut(Lsn, &Record) -> Result<(), String>,
) -> anyhow::Result<(Inspection, Vec<Undecodable>)> {
    let mut undecodable = Vec::new();
    let inspection = holdfast_wal::inspect(storage, from, &mut |r| {
        if r.lsn < from {
            return Ok(());
        }
        match codec::decode(r.payload) {
            Ok(record) => visit(r.lsn, &record),
            Err(e) => {
                undecodable.push(Undecodable {
                    file: r.file.to_owned(),
                    offset: r.offset,
                    lsn: r.lsn,
                    reason: e.0,
                });
                Ok(())
            }
        }
    })?;
    Ok((inspection, undecodable))
}

/// Each snapshot, and whether it reads, decodes and restores (`Err` says why not).
fn checked_snapshots(storage: &FsStorage) -> anyhow::Result<Vec<(SnapshotFile, Result<Engine, String>)>> {
    let files = snapshot::list_snapshots(storage)?;
    Ok(files
        .into_iter()
        .map(|file| {
            let engine = snapshot::read_snapshot(storage, &file)
                .map_err(|e| e.to_string())
                .and_then(|p| codec::decode_state(p.bytes()).map_err(|e| e.0))
                .and_then(|state| {
                    Engine::restore(EngineConfig::default(), &state).map_err(|e| e.to_string())
                });
            (file, engine)
        })
        .collect())
}

fn problem_json(p: &LogProblem) -> Value {
    match p {
        LogProblem::Torn(t) => json!({"kind": "torn_tail", "file": t.file, "offset": t.offset, "lsn": t.lsn,
            "bytes": t.bytes, "reason": t.reason}),
        LogProblem::Corrupt { file, offset, lsn, reason } => {
            json!({"kind": "corrupt", "file": file, "offset": offset, "lsn": lsn, "reason": reason})
        }
    }
}

fn verify(dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
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

fn stats(dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<()> {
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

fn dump(args: &DumpArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(&args.dir)?;
    let since = args.since.as_deref().map(describe::parse_time).transpose().map_err(anyhow::Error::msg)?;
    let until = args.until.as_deref().map(describe::parse_time).transpose().map_err(anyhow::Error::msg)?;
    let filter = Filter {
        sku: args.sku.clone(),
        reservation: args.reservation.clone(),
        user: args.user.clone(),
        sale: args.sale.clone(),
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

/// Parses reservation ids given on the command line.
fn reservation_ids(ids: &[String]) -> anyhow::Result<HashSet<u64>> {
    ids.iter()
        .map(|s| {
            crate::engine::ReservationId::parse(s)
                .map(|id| id.raw())
                .ok_or_else(|| anyhow::anyhow!("{s} is not a reservation id (rsv_ and 16 hex digits)"))
        })
        .collect()
}

fn replay(args: &ReplayArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
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
    // The newest usable snapshot at or before the cut, then the records after it.
    let base = checked_snapshots(&storage)?
        .into_iter()
        .filter(|(f, e)| f.lsn <= cut && e.is_ok())
        .max_by_key(|(f, _)| f.lsn);
    let (engine, from) = match base {
        Some((file, Ok(engine))) => (engine, file.lsn),
        _ => (Engine::new(EngineConfig::default())?, 0),
    };
    let (_, replayed) = crate::durable::replay_range(&storage, &engine, from + 1, cut)?;
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
    let report = json!({
        "lsn": at.0,
        "at": (at.1 > 0).then(|| time(at.1)),
        "snapshot_lsn": from,
        "skus": skus,
        "reservations": reservations,
    });
    let text = serde_json::to_string_pretty(&report)?;
    match &args.output {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => writeln!(out, "{text}")?,
    }
    Ok(())
}

fn trace(args: &TraceArgs, out: &mut Out<'_>) -> anyhow::Result<()> {
    let storage = storage(&args.dir)?;
    if let Some(id) = &args.reservation {
        reservation_ids(std::slice::from_ref(id))?;
    }
    let filter = Filter {
        sku: args.sku.clone(),
        reservation: args.reservation.clone(),
        user: args.user.clone(),
        sale: None,
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

/// Locks the data directory as the server does: a tool that writes must not run beside a server.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("LOCK");
    let file = std::fs::File::create(&path)?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "{} is in use by a running holdfast (it holds {}); stop it first",
            dir.display(),
            path.display()
        )
    })?;
    Ok(file)
}

fn repair(dir: &Path, yes: bool, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
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

fn snapshot_create(dir: &Path, out: &mut Out<'_>) -> anyhow::Result<()> {
    storage(dir)?;
    let _lock = lock(dir)?;
    let storage = Arc::new(FsStorage::new(dir.join("wal"))?);
    let (durable, _) = Durable::open(storage, EngineConfig::default(), WalOptions::default())?;
    let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let file = durable.snapshot(now_ms, false)?;
    durable.close()?;
    writeln!(out, "{} (LSN {})", file.name, file.lsn)?;
    Ok(())
}

fn snapshot_list(dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<()> {
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

fn db_migrate(url: &str, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let applied = crate::reconcile::migrate_command(url)?;
    if applied.is_empty() {
        writeln!(out, "the schema is up to date")?;
    } else {
        writeln!(out, "applied migrations {applied:?}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn reconcile(url: &str, dir: &Path, as_json: bool, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let storage = storage(dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(async {
        let pool = crate::reconcile::pool(url)?;
        let mut client = pool.get().await?;
        crate::reconcile::drift::check(&mut client, &storage, &EngineConfig::default()).await
    })?;
    if as_json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "compared at LSN {}: {} SKUs, {} active reservations",
            report.lsn, report.skus_checked, report.active_reservations_checked
        )?;
        for d in &report.skus {
            writeln!(
                out,
                "SKU {}: engine {:?}, postgres {:?} ([on_hand, available, reserved, sold])",
                d.sku, d.engine, d.postgres
            )?;
        }
        for d in &report.reservations {
            writeln!(out, "reservation {}: engine {:?}, postgres {:?}", d.id, d.engine, d.postgres)?;
        }
        writeln!(
            out,
            "{}",
            if report.is_clean() { "no drift" } else { "DRIFT: see ops/runbooks/postgres.md" }
        )?;
    }
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
