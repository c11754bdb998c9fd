//! The mirror's history: a resync keeps what came before its gap and does not loop under load; a data
//! directory restored from a backup is told apart from the history Postgres followed (until a person
//! starts a new generation); drift covers sales, ended reservations, history rows and restock rows;
//! and over random sessions, outages, resyncs and restarts every restock row is taken exactly once.

use super::outage::{mirrored_with_budget, reserves, stop, SMALL_LOG};
use super::{caught_up, holdfast, metric, post, reconcile_is_clean, settle_adjustments, Pg};
use crate::http::harness::{request, reserve_body, send};
use crate::http::process::{call, runtime, start_with, wait_ready, Process};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn count(pg: &Pg, sql: &str) -> i64 {
    pg.query(sql)[0].get::<_, i64>(0)
}

fn reconcile_json(pg: &Pg, dir: &Path) -> (i32, Value) {
    let dir = dir.to_str().expect("utf-8");
    let (code, out) = holdfast(&["reconcile", "--database-url", &pg.url, "--data-dir", dir, "--json"]);
    let report = serde_json::from_str(out.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("reconcile said {out}: {e}"));
    (code, report)
}

/// Waits until the log has outgrown its budget and let go of the mirror's segments, then writes past
/// another snapshot so that they are removed.
fn outgrow_the_budget(rt: &tokio::runtime::Runtime, p: &Process) {
    reserves(rt, p, 20_000);
    let until = Instant::now() + Duration::from_secs(10);
    while metric(rt, p.addr, "holdfast_mirror_retention_released") != 1.0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(rt, p.addr, "holdfast_mirror_retention_released"), 1.0, "the budget let the log go");
    reserves(rt, p, 2_000);
}

#[test]
fn a_resync_keeps_the_history_before_its_gap_and_does_not_loop_under_load() {
    let pg = Pg::new("gap");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = mirrored_with_budget(&rt, &pg, dir.path(), 2 << 20);
    reserves(&rt, &p, 500);
    let before = caught_up(&rt, &p, &pg);
    let history = count(&pg, "SELECT count(*) FROM holdfast_reservation_events");
    assert_eq!(history, 500);
    pg.take_away();
    outgrow_the_budget(&rt, &p);
    // Postgres comes back while shoppers keep writing (a snapshot every 300 records, a segment every
    // 10,000 or so), and the resync takes seconds in Postgres meanwhile: the snapshots taken while it
    // runs must not remove the records after its own, or it would resync again at once.
    pg.execute(
        "CREATE FUNCTION slow_gap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(6); RETURN NEW; END $$;
         CREATE TRIGGER slow_gap BEFORE INSERT ON holdfast_mirror_gaps FOR EACH ROW EXECUTE FUNCTION slow_gap()",
    );
    pg.bring_back();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = p.addr;
            std::thread::spawn(move || {
                let rt = runtime();
                rt.block_on(async move {
                    for i in 0..8_000 {
                        let body = reserve_body("tee", 1, &format!("w{w}-{i}"));
                        let reply = send(addr, request("POST", "/v1/reservations", &[], Some(&body))).await;
                        assert_eq!(reply.expect("served").status, 201);
                    }
                })
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let after = caught_up(&rt, &p, &pg);
    assert_eq!(metric(&rt, p.addr, "holdfast_mirror_resyncs"), 1.0, "one resync, not a loop");
    assert_eq!(
        metric(&rt, p.addr, "holdfast_mirror_retention_released"),
        0.0,
        "the log keeps what it needs again"
    );
    assert_eq!(
        metric(&rt, p.addr, "holdfast_mirror_applied_lsn") as u64,
        after,
        "the figures follow the rewrite"
    );
    // The history before the gap is all there; the gap is on record; what follows it is mirrored.
    let kept = count(&pg, &format!("SELECT count(*) FROM holdfast_reservation_events WHERE lsn <= {before}"));
    assert_eq!(kept, history, "the resync kept the history before its gap");
    let gaps = pg.query("SELECT after_lsn, through_lsn FROM holdfast_mirror_gaps");
    assert_eq!(gaps.len(), 1);
    let (after_lsn, through) = (gaps[0].get::<_, i64>(0) as u64, gaps[0].get::<_, i64>(1) as u64);
    assert_eq!(after_lsn, before);
    let gap_rows =
        format!("SELECT count(*) FROM holdfast_reservation_events WHERE lsn > {before} AND lsn <= {through}");
    assert_eq!(count(&pg, &gap_rows), 0, "no history is invented for the gap");
    let past = format!("SELECT count(*) FROM holdfast_reservation_events WHERE lsn > {through}");
    assert_eq!(count(&pg, &past) as u64, after - through, "every record after the gap has its row");
    stop(&mut p);
    reconcile_is_clean(&pg, dir.path());
}

fn copy_dir(from: &Path, to: &Path) {
    let status =
        Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status().expect("cp");
    assert!(status.success());
}

/// Backs `dir` up, lets the server on it write `n` more reserves that Postgres applies, then puts the
/// backup back in its place: a data directory older than the database. Returns Postgres's LSN.
fn restore_an_older_copy(rt: &tokio::runtime::Runtime, pg: &Pg, dir: &Path, flags: &[&str], n: usize) -> u64 {
    let backup = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("backup dir");
    copy_dir(dir, backup.path());
    let mut p = start_with(dir, flags);
    wait_ready(rt, p.addr);
    reserves(rt, &p, n);
    let followed = caught_up(rt, &p, pg);
    assert_eq!(stop(&mut p).code(), Some(0));
    std::fs::remove_dir_all(dir).expect("remove");
    std::fs::create_dir(dir).expect("recreate");
    copy_dir(backup.path(), dir);
    followed
}

#[test]
fn a_restored_data_directory_is_not_mirrored_over_the_history_postgres_followed() {
    let pg = Pg::new("restore");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let flags = ["--database-url", pg.url.as_str()];
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 1000}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    reserves(&rt, &p, 3);
    caught_up(&rt, &p, &pg);
    assert_eq!(stop(&mut p).code(), Some(0));
    // The backup comes back and is written to past the LSN Postgres applied, with other reservations.
    let followed = restore_an_older_copy(&rt, &pg, dir.path(), &flags, 10);
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    let skus = pg.skus();
    for i in 0..(followed + 4) {
        let body = reserve_body("tee", 2, &format!("other{i}"));
        let reply = call(&rt, p.addr, request("POST", "/v1/reservations", &[], Some(&body)));
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    std::thread::sleep(Duration::from_secs(3)); // several mirror sessions
    assert!(metric(&rt, p.addr, "holdfast_wal_appended_lsn") as u64 > followed + 2);
    assert_eq!(pg.applied_lsn(), followed, "nothing of the other history was applied");
    assert_eq!(pg.skus(), skus);
    assert_eq!(metric(&rt, p.addr, "holdfast_mirror_diverged"), 1.0);
    assert_eq!(stop(&mut p).code(), Some(0));
    let (code, report) = reconcile_json(&pg, dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(report["log"]["history"].as_str().is_some_and(|h| h.contains("different histories")), "{report}");
    // A person decides the data directory is right: Postgres follows it as a new generation.
    let (code, out) = holdfast(&["db", "new-generation", "--database-url", &pg.url]);
    assert_eq!(code, 0, "{out}");
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    caught_up(&rt, &p, &pg);
    assert_eq!(metric(&rt, p.addr, "holdfast_mirror_diverged"), 0.0);
    let v = call(&rt, p.addr, request("GET", "/v1/skus/tee", &[], None)).json();
    assert_eq!(pg.skus()["tee"][2], v["reserved"].as_u64().expect("reserved"));
    let old = "SELECT count(*) FROM holdfast_reservation_events
               WHERE generation < (SELECT generation FROM holdfast_mirror)";
    assert_eq!(count(&pg, old), 13, "the old history is kept, under its generation");
    stop(&mut p);
    reconcile_is_clean(&pg, dir.path());
}

#[test]
fn drift_covers_sales_ended_reservations_history_rows_and_restock_rows() {
    let pg = Pg::new("drift");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = start_with(dir.path(), &["--database-url", pg.url.as_str()]);
    wait_ready(&rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 100}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    let sale = request("PUT", "/v1/sales/noon", &[], Some(r#"{"per_user_limit": 3, "skus": ["tee"]}"#));
    assert_eq!(call(&rt, p.addr, sale).status, 200);
    let reserve = |user: &str| {
        post(&rt, p.addr, "/v1/reservations", &reserve_body("tee", 1, user))["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let (bought, dropped) = (reserve("a"), reserve("b"));
    post(&rt, p.addr, &format!("/v1/reservations/{bought}/commit"), "{}");
    post(&rt, p.addr, &format!("/v1/reservations/{dropped}/release"), "{}");
    pg.execute("INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES ('tee', 5, 'truck')");
    settle_adjustments(&pg);
    caught_up(&rt, &p, &pg);
    assert_eq!(stop(&mut p).code(), Some(0));
    reconcile_is_clean(&pg, dir.path());
    // Each tampering is reported, by what it touched.
    pg.execute("UPDATE holdfast_sales SET per_user_limit = 30");
    pg.execute(&format!("UPDATE holdfast_reservations SET state = 'released' WHERE id = '{bought}'"));
    pg.execute(&format!(
        "DELETE FROM holdfast_reservation_events WHERE reservation_id = '{dropped}' AND kind = 'released'"
    ));
    pg.execute("UPDATE holdfast_stock_adjustments SET applied_lsn = applied_lsn - 1");
    let (code, report) = reconcile_json(&pg, dir.path());
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["sales"][0]["postgres"], 30, "{report}");
    assert_eq!(report["reservations"][0]["id"], bought.as_str(), "{report}");
    assert_eq!(report["reservations"][0]["engine"], "committed", "{report}");
    assert_eq!(report["log"]["events_differing"], 1, "{report}");
    assert_eq!(report["log"]["events"][0]["postgres"], Value::Null, "{report}");
    assert!(
        report["log"]["adjustments"][0]["problem"].as_str().is_some_and(|p| p.contains("marked applied")),
        "{report}"
    );
    assert_eq!(report["log"]["history"], Value::Null, "{report}");
    // Another history at the checkpoint.
    pg.execute("UPDATE holdfast_mirror SET applied_digest = applied_digest + 1");
    let (code, report) = reconcile_json(&pg, dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(report["log"]["history"].is_string(), "{report}");
}

/// A small deterministic generator (xorshift), seeded from the clock unless `HOLDFAST_TEST_SEED` is set.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn over_random_sessions_outages_resyncs_and_restarts_every_restock_is_taken_exactly_once() {
    let seed = std::env::var("HOLDFAST_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
            | 1
    });
    eprintln!("HOLDFAST_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let pg = Pg::new("sessions");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = mirrored_with_budget(&rt, &pg, dir.path(), 2 << 20);
    let budget = (2u64 << 20).to_string();
    let flags =
        [&["--database-url", pg.url.as_str(), "--mirror-log-budget-bytes", budget.as_str()][..], &SMALL_LOG]
            .concat();
    let (mut inserted, mut resyncs_forced) = (0i64, 0);
    for round in 0..10 {
        let rows = 1 + rng.below(6);
        for _ in 0..rows {
            let delta = 1 + rng.below(9) as i64;
            pg.execute(&format!(
                "INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES ('tee', {delta}, 'round {round}')"
            ));
            inserted += delta;
        }
        match rng.below(5) {
            0 => reserves(&rt, &p, rng.below(3_000) as usize),
            1 => {
                // Postgres away for a while, the restock poller cut off mid-way.
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                pg.take_away();
                reserves(&rt, &p, rng.below(2_000) as usize);
                pg.bring_back();
            }
            2 if resyncs_forced < 2 => {
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                pg.take_away();
                outgrow_the_budget(&rt, &p);
                pg.bring_back();
                resyncs_forced += 1;
            }
            3 => {
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                p.child.kill().expect("SIGKILL");
                p.child.wait().expect("reaped");
                p = start_with(dir.path(), &flags);
                wait_ready(&rt, p.addr);
            }
            _ => {
                std::thread::sleep(Duration::from_millis(rng.below(1_500)));
                assert_eq!(stop(&mut p).code(), Some(0));
                p = start_with(dir.path(), &flags);
                wait_ready(&rt, p.addr);
            }
        }
    }
    settle_adjustments(&pg);
    caught_up(&rt, &p, &pg);
    let on_hand = call(&rt, p.addr, request("GET", "/v1/skus/tee", &[], None)).json()["on_hand"].as_i64();
    if on_hand != Some(1_000_000 + inserted) {
        let rows: Vec<String> = (pg.query(
            "SELECT id, delta, taken_lsn, applied_lsn, applied_generation, refused FROM holdfast_stock_adjustments ORDER BY id",
        ))
        .iter()
        .map(|r| format!("{:?}", (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, Option<i64>>(2), r.get::<_, Option<i64>>(3), r.get::<_, Option<i32>>(4))))
        .collect();
        let (_, dump) = holdfast(&["wal", "dump", dir.path().to_str().expect("utf-8")]);
        let taken: Vec<&str> = dump.lines().filter(|l| l.contains("pg-adjustment")).collect();
        panic!(
            "seed {seed}: on_hand {on_hand:?}, want {}\nrows {rows:#?}\nlog {taken:#?}",
            1_000_000 + inserted
        );
    }
    let taken = count(
        &pg,
        "SELECT coalesce(sum(delta), 0)::int8 FROM holdfast_stock_adjustments WHERE applied_lsn IS NOT NULL",
    );
    assert_eq!(taken, inserted, "seed {seed}: every row marked applied");
    assert_eq!(pg.skus()["tee"][0] as i64, 1_000_000 + inserted, "seed {seed}: Postgres agrees");
    stop(&mut p);
    reconcile_is_clean(&pg, dir.path());
}

#[test]
fn a_restock_whose_take_never_reached_postgres_is_not_taken_again_after_a_resync() {
    let pg = Pg::new("untold");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = mirrored_with_budget(&rt, &pg, dir.path(), 2 << 20);
    // A lock on the row: holdfast takes the restock into the engine, but cannot write down that it did.
    pg.execute("INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES ('tee', 5, 'truck')");
    let blocker = pg.session();
    let lock = format!(
        "SET search_path = {}; BEGIN; SELECT * FROM holdfast_stock_adjustments WHERE id = 1 FOR UPDATE",
        pg.name
    );
    pg.rt.block_on(blocker.batch_execute(&lock)).expect("lock");
    let on_hand = |p: &Process| {
        call(&rt, p.addr, request("GET", "/v1/skus/tee", &[], None)).json()["on_hand"].as_u64().unwrap_or(0)
    };
    let until = Instant::now() + Duration::from_secs(10);
    while on_hand(&p) != 1_000_005 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(on_hand(&p), 1_000_005, "the restock was taken");
    // Postgres goes away with the mark unwritten, and the log outgrows its budget: the record that
    // took the row falls into a resync's gap.
    pg.take_away();
    pg.rt.block_on(blocker.batch_execute("ROLLBACK")).expect("unlock");
    outgrow_the_budget(&rt, &p);
    pg.bring_back();
    caught_up(&rt, &p, &pg);
    assert!(metric(&rt, p.addr, "holdfast_mirror_resyncs") >= 1.0, "the mirror had to resync");
    std::thread::sleep(Duration::from_secs(3)); // a few adjustment polls
    assert_eq!(on_hand(&p), 1_000_005, "the restock counted once");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM holdfast_stock_adjustments WHERE applied_lsn IS NOT NULL"),
        1
    );
    assert_eq!(pg.skus()["tee"][0], 1_000_005);
    stop(&mut p);
    reconcile_is_clean(&pg, dir.path());
}

#[test]
fn a_restored_data_directory_stays_refused_after_its_log_lets_the_checkpoints_record_go() {
    let pg = Pg::new("anchor");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = mirrored_with_budget(&rt, &pg, dir.path(), 2 << 20);
    reserves(&rt, &p, 50);
    caught_up(&rt, &p, &pg);
    assert_eq!(stop(&mut p).code(), Some(0));
    let budget = (2u64 << 20).to_string();
    let flags =
        [&["--database-url", pg.url.as_str(), "--mirror-log-budget-bytes", budget.as_str()][..], &SMALL_LOG]
            .concat();
    let followed = restore_an_older_copy(&rt, &pg, dir.path(), &flags, 100);
    // The restored directory is refused, then written to until its log outgrows the budget and
    // snapshots remove the segment that held its own record at Postgres's LSN.
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    outgrow_the_budget(&rt, &p);
    std::thread::sleep(Duration::from_secs(3)); // several mirror sessions
    assert_eq!(pg.applied_lsn(), followed, "nothing of the other history was applied");
    assert_eq!(metric(&rt, p.addr, "holdfast_mirror_resyncs"), 0.0);
    assert_eq!(metric(&rt, p.addr, "holdfast_mirror_diverged"), 1.0);
    stop(&mut p);
}

#[test]
fn a_restock_waits_while_the_engines_key_table_is_full() {
    let pg = Pg::new("keysfull");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let flags = ["--database-url", pg.url.as_str(), "--idempotency-keys-max", "2", "--shards", "1"];
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 100}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    let mut full = false;
    for i in 0..8 {
        let key = format!("k{i}");
        let body = reserve_body("tee", 1, &format!("u{i}"));
        let reply =
            call(&rt, p.addr, request("POST", "/v1/reservations", &[("Idempotency-Key", &key)], Some(&body)));
        full |= reply.status == 503;
    }
    assert!(full, "the key table filled up");
    pg.execute("INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES ('tee', 5, 'truck')");
    std::thread::sleep(Duration::from_secs(3)); // a few polls
    let row = pg.query("SELECT refused, applied_lsn, taken_lsn FROM holdfast_stock_adjustments");
    assert_eq!(row[0].get::<_, Option<String>>(0), None, "not refused for good: it waits");
    assert_eq!(row[0].get::<_, Option<i64>>(2), None, "and was not taken");
    stop(&mut p);
}
