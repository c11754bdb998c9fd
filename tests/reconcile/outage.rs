//! The mirror when Postgres is away, slow or out of order: the log it needs is kept from the first
//! moment after a restart, kept within its budget while Postgres is down, restocks committed out of
//! id order are taken, and a query stuck on a lock does not hold up shutdown.

use super::{caught_up, metric, Pg};
use crate::http::harness::{request, reserve_body, send};
use crate::http::process::{call, runtime, start_with, wait_ready, Process};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `n` reserves of one unit each, sent in order (each acknowledged before the next).
pub(super) fn reserves(rt: &tokio::runtime::Runtime, p: &Process, n: usize) {
    reserves_at(rt, p.addr, n)
}

fn reserves_at(rt: &tokio::runtime::Runtime, addr: std::net::SocketAddr, n: usize) {
    rt.block_on(async move {
        for i in 0..n {
            let body = reserve_body("tee", 1, &format!("u{i}"));
            let reply =
                send(addr, request("POST", "/v1/reservations", &[], Some(&body))).await.expect("served");
            assert_eq!(reply.status, 201, "{}", reply.text());
        }
    });
}

/// Bytes of the log's segments (snapshots beside them not counted).
fn log_bytes(dir: &Path) -> u64 {
    let entries = std::fs::read_dir(dir.join("wal")).expect("log dir").filter_map(|e| e.ok());
    let segments = entries.filter(|e| e.file_name().to_string_lossy().ends_with(".wal"));
    segments.filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}

pub(super) fn stop(p: &mut Process) -> std::process::ExitStatus {
    Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().expect("kill");
    p.child.wait().expect("exit")
}

/// Small segments and frequent snapshots, so that segments would be removed within seconds.
pub(super) const SMALL_LOG: [&str; 4] = ["--segment-bytes", "1048672", "--snapshot-every-records", "300"];

#[test]
fn a_restart_keeps_the_segments_the_mirror_needs_before_it_reaches_postgres() {
    let pg = Pg::new("floor");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let flags = [&["--database-url", pg.url.as_str()][..], &SMALL_LOG].concat();
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    assert_eq!(
        call(&rt, p.addr, request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 1000000}"#))).status,
        200
    );
    caught_up(&rt, &p, &pg);
    assert_eq!(stop(&mut p).code(), Some(0));
    // Postgres is away when the server comes back, and stays away while several segments fill.
    pg.take_away();
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    reserves(&rt, &p, 12_000);
    std::thread::sleep(Duration::from_secs(1)); // snapshots run meanwhile
    pg.bring_back();
    caught_up(&rt, &p, &pg);
    assert_eq!(
        metric(&rt, p.addr, "holdfast_mirror_resyncs"),
        0.0,
        "the mirror found every record in the log"
    );
    stop(&mut p);
}

/// A server with a small log and a log budget of `budget` bytes, a million units of `tee`, mirrored.
pub(super) fn mirrored_with_budget(
    rt: &tokio::runtime::Runtime,
    pg: &Pg,
    dir: &Path,
    budget: u64,
) -> Process {
    let budget = budget.to_string();
    let flags =
        [&["--database-url", pg.url.as_str(), "--mirror-log-budget-bytes", budget.as_str()][..], &SMALL_LOG]
            .concat();
    let p = start_with(dir, &flags);
    wait_ready(rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 1000000}"#));
    assert_eq!(call(rt, p.addr, put).status, 200);
    caught_up(rt, &p, pg);
    p
}

#[test]
fn the_log_budget_holds_while_postgres_is_down() {
    let pg = Pg::new("budget");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = mirrored_with_budget(&rt, &pg, dir.path(), 3 << 20);
    pg.take_away();
    reserves(&rt, &p, 40_000); // about 7 segments of 1 MiB
    let until = Instant::now() + Duration::from_secs(10);
    while metric(&rt, p.addr, "holdfast_mirror_retention_released") != 1.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&rt, p.addr, "holdfast_mirror_retention_released"), 1.0, "the budget let the log go");
    reserves(&rt, &p, 2_000); // past another snapshot, which removes what is covered
    let bytes = log_bytes(dir.path());
    assert!(bytes <= 4 << 20, "the log holds {bytes} bytes with a 3 MiB budget");
    stop(&mut p);
}

#[test]
fn restocks_committed_out_of_id_order_are_taken() {
    let pg = Pg::new("order");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = start_with(dir.path(), &["--database-url", pg.url.as_str()]);
    wait_ready(&rt, p.addr);
    assert_eq!(
        call(&rt, p.addr, request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 10}"#))).status,
        200
    );
    caught_up(&rt, &p, &pg);
    let on_hand = |p: &Process| {
        call(&rt, p.addr, request("GET", "/v1/skus/tee", &[], None)).json()["on_hand"].as_u64().unwrap_or(0)
    };
    let wait_for = |want: u64| {
        let until = Instant::now() + Duration::from_secs(10);
        while on_hand(&p) != want && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        on_hand(&p)
    };
    // Id 20 commits first; id 7, handed out earlier, commits after it.
    pg.execute(
        "INSERT INTO holdfast_stock_adjustments (id, sku, delta, reason) VALUES (20, 'tee', 5, 'second')",
    );
    assert_eq!(wait_for(15), 15);
    pg.execute(
        "INSERT INTO holdfast_stock_adjustments (id, sku, delta, reason) VALUES (7, 'tee', 3, 'first')",
    );
    assert_eq!(wait_for(18), 18, "the row committed after a higher id was taken too");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(on_hand(&p), 18, "and once");
    stop(&mut p);
}

#[test]
fn a_mirror_query_stuck_on_a_lock_does_not_hold_up_shutdown() {
    let pg = Pg::new("stuck");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = start_with(dir.path(), &["--database-url", pg.url.as_str()]);
    wait_ready(&rt, p.addr);
    assert_eq!(
        call(&rt, p.addr, request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 100}"#))).status,
        200
    );
    caught_up(&rt, &p, &pg);
    // Another session holds the checkpoint's row: the mirror's next batch waits on it.
    let blocker = pg.session();
    pg.rt
        .block_on(blocker.batch_execute(&format!(
            "SET search_path = {}; BEGIN; LOCK TABLE holdfast_mirror IN ACCESS EXCLUSIVE MODE",
            pg.name
        )))
        .expect("lock");
    reserves(&rt, &p, 5);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let exit = stop(&mut p);
    let took = started.elapsed();
    assert_eq!(exit.code(), Some(0));
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?} with the mirror stuck");
    pg.rt.block_on(blocker.batch_execute("ROLLBACK")).expect("unlock");
}

#[test]
fn a_resync_never_takes_a_restock_twice() {
    let pg = Pg::new("resync");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = mirrored_with_budget(&rt, &pg, dir.path(), 2 << 20);
    // The mirror is idle; a lock on its checkpoint will stop it applying the restock's record.
    let blocker = pg.session();
    let lock =
        format!("SET search_path = {}; BEGIN; LOCK TABLE holdfast_mirror IN ACCESS EXCLUSIVE MODE", pg.name);
    pg.rt.block_on(blocker.batch_execute(&lock)).expect("lock");
    pg.execute("INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES ('tee', 5, 'truck')");
    let on_hand = |p: &Process| {
        call(&rt, p.addr, request("GET", "/v1/skus/tee", &[], None)).json()["on_hand"].as_u64().unwrap_or(0)
    };
    let until = Instant::now() + Duration::from_secs(10);
    while on_hand(&p) != 1_000_005 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(on_hand(&p), 1_000_005, "the restock was taken");
    // Postgres goes away before the mirror applies it, and the log outgrows its budget meanwhile:
    // the mirror comes back to a log that no longer holds the restock's record, and resyncs.
    pg.take_away();
    pg.rt.block_on(blocker.batch_execute("ROLLBACK")).expect("unlock");
    reserves(&rt, &p, 20_000);
    let until = Instant::now() + Duration::from_secs(10);
    while metric(&rt, p.addr, "holdfast_mirror_retention_released") != 1.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    reserves(&rt, &p, 2_000); // another snapshot removes the segments
    pg.bring_back();
    caught_up(&rt, &p, &pg);
    assert!(metric(&rt, p.addr, "holdfast_mirror_resyncs") >= 1.0, "the mirror had to resync");
    std::thread::sleep(Duration::from_secs(3)); // a few adjustment polls
    assert_eq!(on_hand(&p), 1_000_005, "the restock counted once");
    let applied = pg.query("SELECT count(*) FROM holdfast_stock_adjustments WHERE applied_lsn IS NOT NULL");
    assert_eq!(applied[0].get::<_, i64>(0), 1, "and its row is marked applied");
    stop(&mut p);
}
