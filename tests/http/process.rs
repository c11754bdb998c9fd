//! The real `holdfast serve` binary: SIGTERM drains and exits 0; SIGKILL mid-load loses nothing that
//! was acknowledged with a 2xx.

use super::harness::{request, reserve_body, send, Reply};
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A server left running by a failing test would outlive it (and hold its output open).
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Process {
    start_with(dir, &[])
}

/// Starts `holdfast serve` on DIR and a free loopback port, with more flags.
pub fn start_with(dir: &Path, flags: &[&str]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast"))
        // Not shed by the scheduling lag: tests run side by side (see harness::options).
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--crowd-shed-lag", "0s", "--data-dir"])
        .arg(dir)
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start holdfast serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("a line");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}"));
    let addr = addr.parse().expect("an address");
    Process { child, addr }
}

pub fn call(rt: &tokio::runtime::Runtime, addr: SocketAddr, bytes: Vec<u8>) -> Reply {
    rt.block_on(send(addr, bytes)).expect("a response")
}

pub fn wait_ready(rt: &tokio::runtime::Runtime, addr: SocketAddr) {
    for _ in 0..1000 {
        if rt.block_on(send(addr, request("GET", "/readyz", &[], None))).is_ok_and(|r| r.status == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not ready");
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt")
}

#[test]
fn sigterm_drains_syncs_and_exits_zero() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let mut p = start(dir.path());
    wait_ready(&rt, p.addr);
    let put = call(&rt, p.addr, request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 5}"#)));
    assert_eq!(put.status, 200);
    let status = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = p.child.wait().expect("exit");
    assert_eq!(exit.code(), Some(0), "a clean stop exits 0");

    let mut p = start(dir.path());
    wait_ready(&rt, p.addr);
    let got = call(&rt, p.addr, request("GET", "/v1/skus/tee", &[], None));
    assert_eq!(got.json()["on_hand"], 5);
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let mut first = start(dir.path());
    wait_ready(&rt, first.addr);
    let mut second = start(dir.path());
    let exit = second.child.wait().expect("exit");
    assert_eq!(exit.code(), Some(1), "the second server stops");
    assert_eq!(call(&rt, first.addr, request("GET", "/readyz", &[], None)).status, 200);
    first.child.kill().expect("kill");
    first.child.wait().expect("reaped");
}

/// Acknowledged state per reservation id: `active` after a 201, `committed` after a 200 commit.
pub type Acked = Arc<parking_lot::Mutex<HashMap<String, &'static str>>>;

pub async fn shopper(addr: SocketAddr, n: usize, acked: Acked) {
    for i in 0.. {
        let body = reserve_body(&format!("sku{}", i % 4), 1, &format!("u{n}"));
        let Ok(reply) = send(addr, request("POST", "/v1/reservations", &[], Some(&body))).await else {
            return;
        };
        if reply.status != 201 {
            continue;
        }
        let id = reply.json()["id"].as_str().expect("id").to_owned();
        acked.lock().insert(id.clone(), "active");
        if i % 2 == 0 {
            let path = format!("/v1/reservations/{id}/commit");
            let Ok(reply) = send(addr, request("POST", &path, &[], None)).await else { return };
            if reply.status == 200 {
                acked.lock().insert(id, "committed");
            }
        }
    }
}

#[test]
fn sigkill_mid_load_loses_no_acknowledged_operation() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let acked: Acked = Arc::default();
    let cycles = 6u64;
    for cycle in 0..=cycles {
        let mut p = start(dir.path());
        wait_ready(&rt, p.addr);
        if cycle == 0 {
            for sku in 0..4 {
                let put = request("PUT", &format!("/v1/skus/sku{sku}"), &[], Some(r#"{"on_hand": 1000000}"#));
                assert_eq!(call(&rt, p.addr, put).status, 200);
            }
        }
        // Everything acknowledged so far is there, in the acknowledged state or a later one.
        for (id, state) in acked.lock().iter() {
            let got = call(&rt, p.addr, request("GET", &format!("/v1/reservations/{id}"), &[], None));
            assert_eq!(got.status, 200, "cycle {cycle}: acknowledged {id} lost");
            let now = got.json()["state"].as_str().expect("state").to_owned();
            assert!(
                *state == "active" || now == *state,
                "cycle {cycle}: {id} acknowledged {state}, found {now}"
            );
        }
        for sku in 0..4 {
            let v = call(&rt, p.addr, request("GET", &format!("/v1/skus/sku{sku}"), &[], None)).json();
            let n = |k: &str| v[k].as_u64().expect("count");
            assert_eq!(n("available") + n("reserved") + n("sold"), n("on_hand"), "cycle {cycle}: {v}");
        }
        if cycle == cycles {
            p.child.kill().expect("kill");
            p.child.wait().expect("reaped");
            break;
        }
        let shoppers: Vec<_> = (0..16).map(|n| rt.spawn(shopper(p.addr, n, acked.clone()))).collect();
        std::thread::sleep(Duration::from_millis(150 + cycle * 61 % 300));
        p.child.kill().expect("SIGKILL");
        p.child.wait().expect("reaped");
        for s in shoppers {
            rt.block_on(s).expect("shopper");
        }
    }
    assert!(acked.lock().len() > 100, "only {} reservations acknowledged", acked.lock().len());
}
