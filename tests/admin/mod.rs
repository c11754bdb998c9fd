//! The SRE tools (`holdfast wal …`, `holdfast snapshot …`) run as the real binary on a log written by
//! a real workload through the durable engine, and on damaged copies of it: exit codes and messages as
//! documented, replay equal to the engine's state at several LSNs and times, trace equal to the
//! workload's history.

mod carts;
mod orders;

use holdfast::durable::Durable;
use holdfast::engine::{EngineConfig, Item, ReservationState, ReserveRequest, SkuId, UserId};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{WalOptions, SEGMENT_BYTES_MIN};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const T0: u64 = 1_800_000_000_000;

/// What the engine looked like right after one record: counters per SKU and the active reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    at_ms: u64,
    skus: BTreeMap<String, [u64; 4]>,
    active: BTreeSet<String>,
}

struct Workload {
    /// The state after selected LSNs.
    seen: BTreeMap<u64, Seen>,
    /// Every record's kind, per reservation id, in order.
    history: BTreeMap<String, Vec<&'static str>>,
    commits: u64,
    records: u64,
    snapshot_lsn: u64,
}

fn options() -> WalOptions {
    // Small segments, so the log spans several files.
    WalOptions { segment_bytes: SEGMENT_BYTES_MIN, ..WalOptions::default() }
}

fn observe(d: &Durable, at_ms: u64) -> Seen {
    let state = d.engine().export(at_ms);
    let skus = state
        .skus
        .iter()
        .map(|(sku, s)| (sku.as_str().to_owned(), [s.on_hand, s.available, s.reserved, s.sold]))
        .collect();
    let active = state
        .reservations
        .iter()
        .filter(|r| r.state == ReservationState::Active)
        .map(|r| r.id.to_string())
        .collect();
    Seen { at_ms, skus, active }
}

/// A deterministic single-threaded workload, one millisecond per operation, with a snapshot midway.
fn write_log(dir: &Path) -> Workload {
    let storage = Arc::new(FsStorage::new(dir.join("wal")).expect("dir"));
    let (d, _) = Durable::open(storage, EngineConfig::default(), options()).expect("open");
    let mut w =
        Workload { seen: BTreeMap::new(), history: BTreeMap::new(), commits: 0, records: 0, snapshot_lsn: 0 };
    let skus: Vec<SkuId> = (0..5).map(|i| SkuId::new(&format!("sku-{i}")).expect("sku")).collect();
    let mut now = T0;
    for sku in &skus {
        now += 1;
        d.set_stock(sku, 100_000, now).expect("stock");
    }
    let mut open: Vec<holdfast::engine::ReservationId> = Vec::new();
    for i in 0..14_000u64 {
        now += 1;
        let lsn = match i % 5 {
            0..=2 => {
                let req = ReserveRequest {
                    items: vec![Item { sku: skus[(i % 5) as usize].clone(), qty: 1 + (i % 3) as u32 }],
                    ttl_ms: 2_000,
                    user: Some(UserId::new(&format!("user-{}", i % 50)).expect("user")),
                    sale: None,
                    idempotency_key: None,
                };
                let r = d.reserve(&req, now).expect("reserve");
                w.history.entry(r.value.id.to_string()).or_default().push("reserved");
                open.push(r.value.id);
                r.lsn
            }
            3 => {
                let Some(id) = open.pop() else { continue };
                let l = d.commit(id, now).expect("commit");
                w.history.entry(id.to_string()).or_default().push("committed");
                w.commits += 1;
                l.lsn
            }
            _ => {
                let Some(id) = open.pop() else { continue };
                let l = d.release(id, now).expect("release");
                w.history.entry(id.to_string()).or_default().push("released");
                l.lsn
            }
        };
        // Some reservations are left to expire.
        if i % 700 == 699 {
            let expired = d.expire_due(now).expect("expire");
            for id in &expired.value {
                w.history.entry(id.to_string()).or_default().push("expired");
            }
            open.retain(|id| !expired.value.contains(id));
        }
        if i == 7_000 {
            d.wal().wait(lsn).expect("sync");
            w.snapshot_lsn = d.snapshot(now, false).expect("snapshot").lsn;
        }
        if i % 1_999 == 0 {
            w.seen.insert(d.wal().appended_lsn(), observe(&d, now));
        }
    }
    w.records = d.wal().appended_lsn();
    w.seen.insert(w.records, observe(&d, now));
    d.close().expect("close");
    w
}

fn holdfast(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast")).args(args).output().expect("run holdfast");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("wal")).expect("mkdir");
    for entry in std::fs::read_dir(from.join("wal")).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join("wal").join(entry.file_name())).expect("copy");
    }
}

fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    names.sort();
    names
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read");
    file.write_all_at(&[byte[0] ^ 0x5a], offset).expect("write");
}

fn replayed(args: &[&str]) -> Seen {
    let (code, out, err) = holdfast(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let n = |s: &Value, k: &str| s[k].as_u64().expect("count");
    let skus = v["skus"]
        .as_array()
        .expect("skus")
        .iter()
        .map(|s| {
            (
                s["sku"].as_str().expect("sku").to_owned(),
                [n(s, "on_hand"), n(s, "available"), n(s, "reserved"), n(s, "sold")],
            )
        })
        .collect();
    let active = v["reservations"]
        .as_array()
        .expect("reservations")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    Seen { at_ms: 0, skus, active }
}

#[test]
fn the_tools_read_a_real_log_and_replay_it_exactly() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let w = write_log(dir.path());
    let d = dir.path().to_str().expect("utf-8");
    assert!(files(dir.path(), "wal").len() >= 2, "the log spans segments");

    let (code, out, _) = holdfast(&["wal", "verify", d]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    let (code, out, _) = holdfast(&["wal", "stats", d, "--json"]);
    assert_eq!(code, 0);
    let stats: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(stats["records"].as_u64(), Some(w.records));
    assert_eq!(stats["by_kind"]["committed"].as_u64(), Some(w.commits));
    assert_eq!(stats["by_kind"]["stock_set"].as_u64(), Some(5));
    assert_eq!(stats["snapshots"][0]["lsn"].as_u64(), Some(w.snapshot_lsn));

    // Replay at several LSNs (before and after the snapshot) and by time equals what the engine held.
    for (lsn, seen) in &w.seen {
        let by_lsn = replayed(&["wal", "replay", d, "--until-lsn", &lsn.to_string()]);
        assert_eq!((&by_lsn.skus, &by_lsn.active), (&seen.skus, &seen.active), "at LSN {lsn}");
        let by_time = replayed(&["wal", "replay", d, "--until-time", &seen.at_ms.to_string()]);
        assert_eq!((&by_time.skus, &by_time.active), (&seen.skus, &seen.active), "at time of LSN {lsn}");
    }
    let narrowed = replayed(&["wal", "replay", d, "--until-lsn", &w.records.to_string(), "--sku", "sku-1"]);
    assert_eq!(narrowed.skus.keys().collect::<Vec<_>>(), ["sku-1"]);

    // Trace: the history of some reservations, in order.
    for (id, kinds) in w.history.iter().step_by(97) {
        let (code, out, _) = holdfast(&["wal", "trace", d, "--reservation", id, "--json"]);
        assert_eq!(code, 0);
        let traced: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("JSON")["kind"].as_str().expect("kind").to_owned()
            })
            .collect();
        assert_eq!(traced, *kinds, "trace of {id}");
    }
    let (_, out, _) = holdfast(&["wal", "trace", d, "--sku", "sku-2"]);
    assert!(out.lines().count() > 100 && out.lines().all(|l| l.contains("sku-2") || !l.contains("reserved")));

    let (code, out, _) = holdfast(&["wal", "dump", d, "--kind", "committed", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count() as u64, w.commits);
    let (_, out, _) = holdfast(&["wal", "dump", d, "--from-lsn", "10", "--to-lsn", "19"]);
    assert_eq!(out.lines().count(), 10, "{out}");

    let (code, out, _) = holdfast(&["snapshot", "list", d, "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"ok\":true"), "{out}");
    let (code, out, err) = holdfast(&["snapshot", "create", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("LSN {}", w.records)), "{out}");
    let (code, _, err) = holdfast(&["wal", "replay", d, "--until-lsn", &(w.records + 5).to_string()]);
    assert_eq!(code, 1, "beyond the end is an error");
    assert!(err.contains("ends at LSN"), "{err}");
}

#[test]
fn damaged_copies_are_reported_with_file_offset_and_lsn() {
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let w = write_log(base.path());
    let copy = |name: &str| {
        let to = base.path().join(name);
        copy_dir(base.path(), &to);
        to
    };

    // A flipped byte in the first segment's middle: corruption, named; repair refuses and changes nothing.
    let dir = copy("flipped");
    let first = files(&dir, "wal")[0].clone();
    flip(&first, 100_000);
    let d = dir.to_str().expect("utf-8");
    let (code, out, _) = holdfast(&["wal", "verify", d]);
    assert_eq!(code, 1, "{out}");
    let name = first.file_name().expect("name").to_str().expect("utf-8");
    assert!(out.contains("CORRUPT: file") && out.contains(name) && out.contains("offset"), "{out}");
    let before = std::fs::read(&first).expect("read");
    let (code, out, _) = holdfast(&["wal", "repair", d, "--yes"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Nothing was changed"), "{out}");
    assert_eq!(std::fs::read(&first).expect("read"), before);

    // A torn tail: the last record of the last segment half-written. Verify says 3; repair cuts it.
    let dir = copy("torn");
    let last = files(&dir, "wal").pop().expect("a segment");
    let d = dir.to_str().expect("utf-8");
    let (_, out, _) = holdfast(&["wal", "stats", d, "--json"]);
    let stats: Value = serde_json::from_str(&out).expect("JSON");
    let end = stats["segments"].as_array().expect("segments").last().expect("last")["bytes_used"]
        .as_u64()
        .expect("end");
    flip(&last, end - 20);
    let (code, out, _) = holdfast(&["wal", "verify", d]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("TORN_TAIL") && out.contains(&format!("LSN {}", w.records)), "{out}");
    let (code, out, _) = holdfast(&["wal", "repair", d, "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("ends at LSN {}", w.records - 1)), "{out}");
    assert_eq!(holdfast(&["wal", "verify", d]).0, 0);

    // A missing middle segment.
    let dir = copy("missing");
    let segments = files(&dir, "wal");
    std::fs::remove_file(&segments[1]).expect("remove");
    let (code, out, _) = holdfast(&["wal", "verify", dir.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing"), "{out}");

    // A damaged snapshot: reported; replay still works (from the log alone, or an older snapshot).
    let dir = copy("bad-snapshot");
    let snap = files(&dir, "snap").pop().expect("a snapshot");
    flip(&snap, 200);
    let d = dir.to_str().expect("utf-8");
    let (code, out, _) = holdfast(&["wal", "verify", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BAD_SNAPSHOT"), "{out}");
    let (lsn, seen) = w.seen.iter().last().expect("a state");
    let again = replayed(&["wal", "replay", d, "--until-lsn", &lsn.to_string()]);
    assert_eq!((&again.skus, &again.active), (&seen.skus, &seen.active));

    // A truncated segment file (a copy cut short) and a directory without a log.
    let dir = copy("truncated");
    let first = files(&dir, "wal")[0].clone();
    std::fs::OpenOptions::new().write(true).open(&first).expect("open").set_len(50_000).expect("truncate");
    let (code, out, _) = holdfast(&["wal", "verify", dir.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = holdfast(&["wal", "verify", base.path().join("nowhere").to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(err.contains("holds no log"), "{err}");
}

/// Read-only commands work beside a live writer and change nothing; the writing ones refuse.
#[test]
fn read_only_tools_work_beside_a_running_server() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("piped")),
        &mut line,
    )
    .expect("line");
    let d = dir.path().to_str().expect("utf-8");
    // Wait for the log to exist.
    for _ in 0..200 {
        if dir.path().join("wal").is_dir() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (code, out, _) = holdfast(&["wal", "verify", d]);
    assert!(code == 0 || code == 3, "{out}");
    assert_eq!(holdfast(&["wal", "stats", d]).0, 0);
    let (code, _, err) = holdfast(&["snapshot", "create", d]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");
    let (code, _, err) = holdfast(&["wal", "repair", d, "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("in use"), "{err}");

    // `dump --follow` prints reservations as the server makes them.
    let addr: std::net::SocketAddr =
        line.trim().trim_start_matches("listening on ").parse().expect("address");
    let mut follow = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args(["wal", "dump", d, "--follow", "--kind", "reserved", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start dump --follow");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().expect("piped")));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let rt = crate::http::process::runtime();
    crate::http::process::wait_ready(&rt, addr);
    let put = crate::http::harness::request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 10}"#));
    assert_eq!(crate::http::process::call(&rt, addr, put).status, 200);
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = crate::http::harness::reserve_body("tee", 1, &format!("u{i}"));
        let reply = crate::http::process::call(
            &rt,
            addr,
            crate::http::harness::request("POST", "/v1/reservations", &[], Some(&body)),
        );
        ids.push(reply.json()["id"].as_str().expect("id").to_owned());
    }
    let mut followed = Vec::new();
    while followed.len() < ids.len() {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("dump --follow printed the reservation");
        let record: Value = serde_json::from_str(&line).expect("JSON");
        followed.push(record["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(followed, ids);
    follow.kill().expect("kill");
    follow.wait().expect("reaped");
    server.kill().expect("kill");
    server.wait().expect("reaped");
}
