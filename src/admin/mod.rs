//! `holdfast wal …`, `holdfast snapshot …` and `holdfast orders list`: the tools an SRE runs on a data directory (the
//! server's `--data-dir`; the log and snapshots are in its `wal/`). Every command but `wal repair` and
//! `snapshot create` only reads, and works while a server is writing the directory. Output is a table
//! for people or, with `--json`, JSON for scripts (documented in `ops/runbooks/wal-tools.md`).
//!
//! Exit status: 0 done (for `verify`: intact); 1 the log is corrupt or the command failed; 2 bad usage;
//! 3 (`verify` only) a torn tail, which recovery or `wal repair` cuts.

mod describe;
mod orders;
mod read;
mod rebuild;

use crate::durable::codec;
use crate::engine::{Engine, EngineConfig, Record};
use clap::{Parser, Subcommand};
use holdfast_wal::snapshot::{self, SnapshotFile};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{Inspection, LogProblem, Lsn};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// Parsed once per run: the size of the largest subcommand's arguments costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
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
    /// Orders as the server holds them, rebuilt from DIR (read-only; works while the server runs).
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Compare Postgres with the engine at the LSN Postgres is at; exit 1 when they differ.
    Reconcile {
        /// The Postgres the server mirrors to (postgresql://user@host/db).
        #[arg(long, env = "HOLDFAST_DATABASE_URL")]
        database_url: String,
        /// The data directory (the server's --data-dir).
        #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new key for ROLE (admin, checkout or ops) and the line for --api-keys-file that holds
    /// its hash. The key is not stored anywhere: give it to the client now.
    New {
        /// admin, checkout or ops.
        role: String,
    },
}

#[derive(Subcommand)]
enum OrdersCommand {
    /// List orders (oldest first): id, state, cause, amount, currency, provider_ref, user, pay_by,
    /// reservation. `--state refund_due` and `--state payment_mismatch` need a person.
    List(OrdersListArgs),
}

#[derive(clap::Args)]
struct OrdersListArgs {
    /// The data directory (the server's --data-dir).
    dir: PathBuf,
    /// Only orders in this state (`open`: awaiting_payment or payment_pending).
    #[arg(long, value_parser = orders::STATES)]
    state: Option<String>,
    /// One JSON object a line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply the schema migrations the database lacks (the server also does at start).
    Migrate {
        /// The Postgres the server mirrors to (postgresql://user@host/db).
        #[arg(long, env = "HOLDFAST_DATABASE_URL")]
        database_url: String,
    },
    /// Make Postgres follow the next data directory that mirrors to it (after a restore, once a person
    /// has decided the data directory is right): the mirror's current-state tables are emptied and
    /// rewritten from that log; event history stays, under the old generation.
    NewGeneration {
        /// The Postgres the server mirrors to (postgresql://user@host/db).
        #[arg(long, env = "HOLDFAST_DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Check every segment and snapshot: checksums, LSN continuity, headers, record decoding. Exit 0
    /// when intact, 3 for a torn tail only, 1 for corruption; each problem with file, offset and LSN.
    Verify {
        /// The data directory (the server's --data-dir).
        dir: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Segments, LSN and time range, record counts by kind, sizes, snapshots.
    Stats {
        /// The data directory (the server's --data-dir).
        dir: PathBuf,
        /// JSON instead of text.
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
        /// The data directory (the server's --data-dir).
        dir: PathBuf,
        /// Cut without asking.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args)]
struct DumpArgs {
    /// The data directory (the server's --data-dir).
    dir: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Records from this LSN on.
    #[arg(long)]
    from_lsn: Option<Lsn>,
    /// Records up to this LSN.
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
    /// Only records that touch this SKU.
    #[arg(long)]
    sku: Option<String>,
    /// Only records of this reservation (`rsv_…`).
    #[arg(long)]
    reservation: Option<String>,
    /// Only records of this user.
    #[arg(long)]
    user: Option<String>,
    /// Only records of this sale.
    #[arg(long)]
    sale: Option<String>,
    /// An order (`ord_…`): its steps and its reservations' records.
    #[arg(long)]
    order: Option<String>,
    /// A cart: its edits, merges (into it or from it) and its end.
    #[arg(long)]
    cart: Option<String>,
    /// Keep printing records as they are appended, like `tail -f`.
    #[arg(long)]
    follow: bool,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("until").required(true).multiple(false)))]
struct ReplayArgs {
    /// The data directory (the server's --data-dir).
    dir: PathBuf,
    /// The state after the record with this LSN.
    #[arg(long, group = "until")]
    until_lsn: Option<Lsn>,
    /// The state of the log up to its first record later than this time (RFC 3339 or Unix ms): a
    /// prefix of the log. A commit, release or extend carries the time its request arrived, up to
    /// the commit grace (50 ms) before the record ahead of it, so one that arrived just before the
    /// time but was decided after a later record is left out; --until-lsn cuts exactly.
    #[arg(long, group = "until")]
    until_time: Option<String>,
    /// Only these SKUs, and reservations holding them (repeatable).
    #[arg(long)]
    sku: Vec<String>,
    /// Only these reservations, in whatever state (repeatable).
    #[arg(long)]
    reservation: Vec<String>,
    /// Only these orders (`ord_…`, repeatable); by default the open ones and those that need a
    /// person (refund_due, payment_mismatch).
    #[arg(long)]
    order: Vec<String>,
    /// These carts (repeatable), as they were.
    #[arg(long)]
    cart: Vec<String>,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).multiple(false)))]
struct TraceArgs {
    /// The data directory (the server's --data-dir).
    dir: PathBuf,
    /// A reservation (`rsv_…`): its records from reserve to end.
    #[arg(long, group = "subject")]
    reservation: Option<String>,
    /// A SKU: every record that changed its counters.
    #[arg(long, group = "subject")]
    sku: Option<String>,
    /// A user: their reservations' records.
    #[arg(long, group = "subject")]
    user: Option<String>,
    /// An order (`ord_…`): its steps and its reservations' records.
    #[arg(long, group = "subject")]
    order: Option<String>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Take a snapshot of DIR now (the server must not be running on it).
    Create {
        /// The data directory (the server's --data-dir).
        dir: PathBuf,
    },
    /// List snapshots, each checked: LSN, size, contents.
    List {
        /// The data directory (the server's --data-dir).
        dir: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn new_key(role: &str, out: &mut Out<'_>) -> anyhow::Result<ExitCode> {
    let role = crate::http::auth::Role::parse(role).map_err(anyhow::Error::msg)?;
    let (secret, line) = crate::http::auth::new_key(role);
    writeln!(out, "key:  {secret}")?;
    writeln!(out, "line: {line}")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `holdfast wal …` or `holdfast snapshot …`; `argv` starts with the program name.
pub fn run(argv: &[String]) -> ExitCode {
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let out = &mut std::io::stdout().lock();
    let result = match cli {
        Cli::Wal(WalCommand::Verify { dir, json }) => read::verify(&dir, json, out),
        Cli::Wal(WalCommand::Stats { dir, json }) => read::stats(&dir, json, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Dump(args)) => read::dump(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Replay(args)) => rebuild::replay(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Trace(args)) => read::trace(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Wal(WalCommand::Repair { dir, yes }) => rebuild::repair(&dir, yes, out),
        Cli::Snapshot(SnapshotCommand::Create { dir }) => {
            rebuild::snapshot_create(&dir, out).map(|()| ExitCode::SUCCESS)
        }
        Cli::Snapshot(SnapshotCommand::List { dir, json }) => {
            rebuild::snapshot_list(&dir, json, out).map(|()| ExitCode::SUCCESS)
        }
        Cli::Orders(OrdersCommand::List(args)) => orders::list(&args, out).map(|()| ExitCode::SUCCESS),
        Cli::Db(DbCommand::Migrate { database_url }) => rebuild::db_migrate(&database_url, out),
        Cli::Db(DbCommand::NewGeneration { database_url }) => rebuild::db_new_generation(&database_url, out),
        Cli::Keys(KeysCommand::New { role }) => new_key(&role, out),
        Cli::Reconcile { database_url, data_dir, json } => {
            rebuild::reconcile(&database_url, &data_dir, json, out)
        }
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

/// The engine settings the data directory `dir` was last served with (its defaults if none).
fn settings(dir: &Path) -> anyhow::Result<EngineConfig> {
    crate::durable::settings::load(dir).map_err(anyhow::Error::msg)
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
    let config = settings(storage.dir().parent().unwrap_or(storage.dir()))?;
    Ok(files
        .into_iter()
        .map(|file| {
            let engine = crate::durable::load_snapshot(storage, &config, &file);
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `holdfast <tool> --help` explains every argument and flag of every tool.
    #[test]
    fn every_flag_has_a_help_line() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            for arg in command.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            {
                if arg.get_help().map(ToString::to_string).unwrap_or_default().len() < 8 {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            command.get_subcommands().for_each(|c| check(c, &path, missing));
        }
        let mut missing = Vec::new();
        check(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
    }
}
