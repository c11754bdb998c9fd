//! The Postgres mirror against a real server on 127.0.0.1:5432 (`ops/postgres.sh` starts or installs
//! one; without one these tests fail, they never skip). Each test gets a role and a schema of its own,
//! so tests run in parallel and a test can take "its" Postgres away (the role may not log in, its
//! connections are killed) without disturbing the others.

use crate::http::harness::{request, reserve_body, send};
use crate::http::process::{call, runtime, shopper, start_with, wait_ready, Acked, Process};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

mod carts;
mod history;
pub(crate) mod orders;
mod outage;

const ADMIN_URL: &str = "postgresql://postgres@127.0.0.1:5432/test";

/// A role and a schema of this test's, dropped at the end.
struct Pg {
    rt: tokio::runtime::Runtime,
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Pg {
    fn new(tag: &str) -> Pg {
        let rt = runtime();
        let url = std::env::var("HOLDFAST_TEST_DATABASE_URL").unwrap_or_else(|_| ADMIN_URL.to_owned());
        let admin = rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, NoTls)
                .await
                .unwrap_or_else(|e| panic!("Postgres at {url} is needed (run ops/postgres.sh): {e}"));
            tokio::spawn(connection);
            client
        });
        let name = format!("hf_{tag}_{}", std::process::id());
        rt.block_on(admin.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; DROP ROLE IF EXISTS {name};
             CREATE ROLE {name} LOGIN; CREATE SCHEMA {name} AUTHORIZATION {name};"
        )))
        .expect("role and schema");
        let url = format!("postgresql://{name}@127.0.0.1:5432/test?options=-csearch_path%3D{name}");
        Pg { rt, admin, name, url }
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let sql = format!("SET search_path = {}; {sql}", self.name);
        let (set, query) = sql.split_once("; ").expect("two statements");
        self.rt
            .block_on(async {
                self.admin.batch_execute(set).await?;
                self.admin.query(query, &[]).await
            })
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    /// Another administrative session (for locks held across calls).
    fn session(&self) -> tokio_postgres::Client {
        let url = std::env::var("HOLDFAST_TEST_DATABASE_URL").unwrap_or_else(|_| ADMIN_URL.to_owned());
        self.rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("admin session");
            tokio::spawn(connection);
            client
        })
    }

    fn execute(&self, sql: &str) {
        self.rt
            .block_on(self.admin.batch_execute(&format!("SET search_path = {}; {sql}", self.name)))
            .expect("execute");
    }

    /// Postgres goes away for holdfast: its role may not log in and its connections are killed.
    fn take_away(&self) {
        let n = &self.name;
        self.execute(&format!(
            "ALTER ROLE {n} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{n}'"
        ));
    }

    fn bring_back(&self) {
        self.execute(&format!("ALTER ROLE {} LOGIN", self.name));
    }

    fn applied_lsn(&self) -> u64 {
        self.query("SELECT applied_lsn FROM holdfast_mirror").first().map_or(0, |r| r.get::<_, i64>(0) as u64)
    }

    /// Per SKU: [on_hand, available, reserved, sold].
    fn skus(&self) -> BTreeMap<String, [u64; 4]> {
        self.query("SELECT sku, on_hand, available, reserved, sold FROM holdfast_skus")
            .iter()
            .map(|r| (r.get(0), [1, 2, 3, 4].map(|i| r.get::<_, i64>(i) as u64)))
            .collect()
    }

    fn reservation_states(&self) -> BTreeMap<String, String> {
        self.query("SELECT id, state FROM holdfast_reservations")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let n = &self.name;
        let _ = self.rt.block_on(self.admin.batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{n}';
             DROP SCHEMA IF EXISTS {n} CASCADE; DROP ROLE IF EXISTS {n};"
        )));
    }
}

fn metric(rt: &tokio::runtime::Runtime, addr: SocketAddr, name: &str) -> f64 {
    let text = call(rt, addr, request("GET", "/metrics", &[], None)).text();
    text.lines()
        .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Waits until Postgres holds every record the server has appended.
fn caught_up(rt: &tokio::runtime::Runtime, p: &Process, pg: &Pg) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let appended = metric(rt, p.addr, "holdfast_wal_appended_lsn") as u64;
        let applied = pg.applied_lsn();
        if applied == appended && metric(rt, p.addr, "holdfast_mirror_lag_records") == 0.0 {
            return applied;
        }
        assert!(Instant::now() < deadline, "the mirror did not catch up: {applied} of {appended}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn holdfast(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast")).args(args).output().expect("run holdfast");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn reconcile_is_clean(pg: &Pg, dir: &Path) {
    let (code, out) =
        holdfast(&["reconcile", "--database-url", &pg.url, "--data-dir", dir.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "drift: {out}");
}

/// Postgres equals the engine, SKU by SKU and reservation by reservation.
fn assert_mirrored(rt: &tokio::runtime::Runtime, p: &Process, pg: &Pg, ids: &[String]) {
    caught_up(rt, p, pg);
    for (sku, counts) in pg.skus() {
        let v = call(rt, p.addr, request("GET", &format!("/v1/skus/{sku}"), &[], None)).json();
        let engine = ["on_hand", "available", "reserved", "sold"].map(|k| v[k].as_u64().expect("count"));
        assert_eq!(engine, counts, "SKU {sku}");
    }
    let states = pg.reservation_states();
    for id in ids {
        let v = call(rt, p.addr, request("GET", &format!("/v1/reservations/{id}"), &[], None)).json();
        assert_eq!(
            Some(v["state"].as_str().expect("state")),
            states.get(id).map(String::as_str),
            "reservation {id}"
        );
    }
}

/// Waits until every row of `holdfast_stock_adjustments` is applied or refused.
fn settle_adjustments(pg: &Pg) {
    let pending = "SELECT 1 FROM holdfast_stock_adjustments WHERE applied_lsn IS NULL AND refused IS NULL";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pg.query(pending).is_empty() {
        assert!(Instant::now() < deadline, "adjustments not taken");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn post(rt: &tokio::runtime::Runtime, addr: SocketAddr, path: &str, body: &str) -> Value {
    let reply = call(rt, addr, request("POST", path, &[], Some(body)));
    assert!(reply.status < 300, "{path}: {} {}", reply.status, reply.text());
    reply.json()
}

#[test]
fn the_mirror_equals_the_engine_takes_restocks_once_and_warm_starts() {
    let pg = Pg::new("mirror");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let flags = ["--database-url", pg.url.as_str(), "--reconcile-every", "1s"];
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    for sku in ["tee", "cap", "mug"] {
        let put = request("PUT", &format!("/v1/skus/{sku}"), &[], Some(r#"{"on_hand": 50}"#));
        assert_eq!(call(&rt, p.addr, put).status, 200);
    }
    assert_eq!(
        call(
            &rt,
            p.addr,
            request("PUT", "/v1/sales/noon", &[], Some(r#"{"per_user_limit": 3, "skus": ["cap", "mug"]}"#))
        )
        .status,
        200
    );
    let mut ids = Vec::new();
    for i in 0..60 {
        let body = match i % 3 {
            0 => reserve_body("tee", 1 + i % 2, &format!("u{i}")),
            1 => format!(
                r#"{{"items":[{{"sku":"cap","qty":1}},{{"sku":"mug","qty":2}}],"ttl_ms":60000,"user_id":"u{i}","sale_id":"noon"}}"#
            ),
            // mug is noon's: counted against the sale though the reserve does not name it.
            _ => format!(r#"{{"items":[{{"sku":"mug","qty":1}}],"ttl_ms":1000,"user_id":"short{i}"}}"#),
        };
        let id = post(&rt, p.addr, "/v1/reservations", &body)["id"].as_str().expect("id").to_owned();
        match i % 5 {
            0 => drop(post(&rt, p.addr, &format!("/v1/reservations/{id}/commit"), "{}")),
            1 => drop(post(&rt, p.addr, &format!("/v1/reservations/{id}/release"), "{}")),
            2 if i % 3 != 2 => {
                drop(post(&rt, p.addr, &format!("/v1/reservations/{id}/extend"), r#"{"ttl_ms": 90000}"#))
            }
            _ => {}
        }
        ids.push(id);
    }
    std::thread::sleep(Duration::from_millis(1_300)); // the 1 s reservations expire
    assert_mirrored(&rt, &p, &pg, &ids);
    assert!(pg.reservation_states().values().any(|s| s == "expired"), "expiries are mirrored");
    reconcile_is_clean(&pg, dir.path());
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(metric(&rt, p.addr, "holdfast_drift_skus"), 0.0);
    assert!(metric(&rt, p.addr, "holdfast_drift_checks_total") >= 1.0, "the server checks drift by itself");
    let history = pg.query("SELECT count(*) FROM holdfast_reservation_events")[0].get::<_, i64>(0);
    assert!(history >= 60 + 12 + 12, "every state change has its row: {history}");

    // Restocks written in Postgres: applied once each, also across a SIGKILL and a clean restart.
    pg.execute(
        "INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES
         ('tee', 10, 'truck 1'), ('cap', -2, 'damaged'), ('nope', 5, 'unknown SKU'), ('mug', -1000, 'too much')",
    );
    let on_hand = |p: &Process, sku: &str| {
        call(&rt, p.addr, request("GET", &format!("/v1/skus/{sku}"), &[], None)).json()["on_hand"].as_u64()
    };
    settle_adjustments(&pg);
    assert_eq!((on_hand(&p, "tee"), on_hand(&p, "cap")), (Some(60), Some(48)));
    let refused = pg.query("SELECT count(*) FROM holdfast_stock_adjustments WHERE refused IS NOT NULL")[0]
        .get::<_, i64>(0);
    assert_eq!(refused, 2, "an unknown SKU and a shrinkage below what is held are refused");
    p.child.kill().expect("SIGKILL");
    p.child.wait().expect("reaped");
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    pg.execute("INSERT INTO holdfast_stock_adjustments (sku, delta, reason) VALUES ('tee', 1, 'truck 2')");
    settle_adjustments(&pg);
    assert_mirrored(&rt, &p, &pg, &ids);
    assert_eq!((on_hand(&p, "tee"), on_hand(&p, "cap")), (Some(61), Some(48)), "each restock once");
    let d = dir.path().to_str().expect("utf-8");
    let (_, dump) = holdfast(&["wal", "dump", d, "--kind", "stock_adjusted", "--json"]);
    assert_eq!(dump.lines().count(), 3, "three adjustments logged, once each:\n{dump}");

    // Warm-start: a new, empty data directory on the same database holds what Postgres holds.
    let active: Vec<String> =
        pg.reservation_states().into_iter().filter(|(_, s)| s == "active").map(|(id, _)| id).collect();
    assert!(!active.is_empty());
    let before = pg.skus();
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
    let fresh = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = start_with(fresh.path(), &flags);
    wait_ready(&rt, p.addr);
    for (sku, counts) in &before {
        let v = call(&rt, p.addr, request("GET", &format!("/v1/skus/{sku}"), &[], None)).json();
        assert_eq!(
            ["on_hand", "available", "reserved", "sold"].map(|k| v[k].as_u64().expect("n")),
            *counts,
            "{sku}"
        );
    }
    let committed = post(&rt, p.addr, &format!("/v1/reservations/{}/commit", active[0]), "{}");
    assert_eq!(committed["state"], "committed", "a reservation made before the warm start");
    let again = post(&rt, p.addr, "/v1/reservations", &reserve_body("tee", 1, "after"))["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(!ids.contains(&again), "new ids do not repeat old ones");
    assert_mirrored(&rt, &p, &pg, &[active[0].clone(), again]);
    reconcile_is_clean(&pg, fresh.path());
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}

#[test]
fn sigkill_while_mirroring_neither_skips_nor_repeats_a_record() {
    let pg = Pg::new("kill");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    // Small batches, so kills land mid-transaction as often as between them.
    let flags = ["--database-url", pg.url.as_str(), "--mirror-batch-max", "64"];
    let acked: Acked = Acked::default();
    let cycles = 20u64;
    for cycle in 0..=cycles {
        let mut p = start_with(dir.path(), &flags);
        wait_ready(&rt, p.addr);
        if cycle == 0 {
            for sku in 0..4 {
                let put = request("PUT", &format!("/v1/skus/sku{sku}"), &[], Some(r#"{"on_hand": 1000000}"#));
                assert_eq!(call(&rt, p.addr, put).status, 200);
            }
        }
        let last = caught_up(&rt, &p, &pg);
        let events = pg.query(
            "SELECT count(*), count(DISTINCT lsn), coalesce(max(lsn), 0) FROM holdfast_reservation_events",
        );
        let (rows, distinct, max) =
            (events[0].get::<_, i64>(0), events[0].get::<_, i64>(1), events[0].get::<_, i64>(2));
        assert_eq!(rows, distinct, "cycle {cycle}: a record applied twice");
        assert!(max as u64 <= last, "cycle {cycle}");
        reconcile_is_clean(&pg, dir.path());
        if cycle == cycles {
            p.child.kill().expect("kill");
            p.child.wait().expect("reaped");
            break;
        }
        let shoppers: Vec<_> = (0..8).map(|n| rt.spawn(shopper(p.addr, n, acked.clone()))).collect();
        std::thread::sleep(Duration::from_millis(100 + cycle * 53 % 250));
        p.child.kill().expect("SIGKILL");
        p.child.wait().expect("reaped");
        for s in shoppers {
            rt.block_on(s).expect("shopper");
        }
    }
    // Every acknowledged reservation is in Postgres in its acknowledged state (or a later one), and
    // the events are exactly the log's reservation records.
    let states = pg.reservation_states();
    for (id, state) in acked.lock().iter() {
        let found = states.get(id).unwrap_or_else(|| panic!("acknowledged {id} not mirrored"));
        assert!(*state == "active" || found == state, "{id}: acknowledged {state}, mirrored {found}");
    }
    let (_, stats) = holdfast(&["wal", "stats", dir.path().to_str().expect("utf-8"), "--json"]);
    let stats: Value = serde_json::from_str(stats.lines().next().expect("a line")).expect("JSON");
    let logged: u64 = ["reserved", "extended", "committed", "released", "expired"]
        .iter()
        .map(|k| stats["by_kind"][k].as_u64().unwrap_or(0))
        .sum();
    let rows = pg.query("SELECT count(*) FROM holdfast_reservation_events")[0].get::<_, i64>(0) as u64;
    assert_eq!(rows, logged, "one event row per reservation record in the log");
    assert!(acked.lock().len() > 100, "only {} acknowledged", acked.lock().len());
}

#[test]
fn holdfast_serves_while_postgres_is_away_and_the_mirror_catches_up() {
    let pg = Pg::new("away");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut p = start_with(dir.path(), &["--database-url", pg.url.as_str()]);
    wait_ready(&rt, p.addr);
    assert_eq!(
        call(&rt, p.addr, request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 100000}"#))).status,
        200
    );
    caught_up(&rt, &p, &pg);
    pg.take_away();
    let addr = p.addr;
    let served = rt.block_on(async move {
        let mut ok = 0;
        let until = Instant::now() + Duration::from_secs(3);
        let mut i = 0;
        while Instant::now() < until {
            let reply = send(
                addr,
                request("POST", "/v1/reservations", &[], Some(&reserve_body("tee", 1, &format!("u{i}")))),
            )
            .await
            .expect("served");
            assert_eq!(reply.status, 201, "{}", reply.text());
            ok += 1;
            i += 1;
        }
        ok
    });
    assert!(served > 50, "served {served} while Postgres was away");
    assert!(metric(&rt, p.addr, "holdfast_mirror_lag_records") > 0.0, "the mirror fell behind");
    assert!(metric(&rt, p.addr, "holdfast_mirror_errors") >= 1.0);
    pg.bring_back();
    let applied = caught_up(&rt, &p, &pg);
    assert!(applied as i64 > served, "the stock record and every reserve");
    assert_eq!(pg.skus()["tee"], [100_000, 100_000 - served as u64, served as u64, 0]);
    reconcile_is_clean(&pg, dir.path());
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}
