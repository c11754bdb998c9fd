//! A CI-sized drill: the real server and the real drill tool, 5,000 shoppers through the waiting room,
//! and the drill's own verification must pass.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The server binary, built into the same directory as this package's binary by the workspace build.
fn holdfast() -> PathBuf {
    let drill = PathBuf::from(env!("CARGO_BIN_EXE_holdfast-drill"));
    let server = drill.with_file_name(format!("holdfast{}", std::env::consts::EXE_SUFFIX));
    assert!(server.exists(), "{} is missing: run the tests of the whole workspace", server.display());
    server
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_drill(order: &str, users: &str, units: &str) -> serde_json::Value {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut child = Command::new(holdfast())
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start holdfast serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("a line");
    let _server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_owned();
    let report = dir.path().join("report");
    let status = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"))
        .args(["--target", &format!("http://{addr}"), "--quiet", "--users", users, "--units", units])
        .args([
            "--order",
            order,
            "--admission-rate",
            "2000",
            "--opens-in-ms",
            "1500",
            "--hold-ttl-ms",
            "2000",
        ])
        .args(["--think-ms", "50", "--connections", "64", "--deadline-secs", "120", "--report"])
        .arg(&report)
        .status()
        .expect("run holdfast-drill");
    let text = std::fs::read_to_string(report.join("report.json")).expect("a JSON report");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(status.success(), "the drill failed its verification: {}", json["verification"]);
    let html = std::fs::read_to_string(report.join("report.html")).expect("an HTML report");
    assert!(html.contains("<svg") && html.contains("passed"));
    json
}

#[test]
fn a_fifo_drill_of_5000_shoppers_sells_every_unit_in_order_and_verifies() {
    let r = run_drill("fifo", "5000", "200");
    assert_eq!(r["verification"]["passed"], true);
    assert_eq!(r["stock_at_end"]["sold"], 200, "every unit sold: {}", r["stock_at_end"]);
    assert_eq!(r["outcomes"]["bought"], 200, "{}", r["outcomes"]);
    assert_eq!(r["fairness"]["later_admitted_before_earlier"], 0, "fifo: {}", r["fairness"]);
    assert!(
        r["outcomes"]["sold_out"].as_u64().unwrap_or(0) > 4_000,
        "the rest told sold out: {}",
        r["outcomes"]
    );
}

#[test]
fn a_lottery_drill_admits_out_of_arrival_order_and_verifies() {
    let r = run_drill("lottery", "2000", "100");
    assert_eq!(r["stock_at_end"]["sold"], 100);
    assert!(
        r["fairness"]["later_admitted_before_earlier"].as_u64().unwrap_or(0) > 0,
        "drawn: {}",
        r["fairness"]
    );
}
