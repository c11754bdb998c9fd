//! What operators watch: the alert rules pass `promtool check rules`, and every metric the alerts and
//! the Grafana dashboard (`ops/dashboards/holdfast.json`) name is one the server exports.

use super::auth::{admission, bearer, gated_sale, guarded, ADMIN, CHECKOUT};
use super::harness::request;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_alert_rules_pass_promtool() {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("ops/alerts.yml"))
        .output()
        .expect("promtool (Debian package prometheus; ops/test.sh installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

/// The metric names a text names (`holdfast_…`).
fn named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("holdfast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = guarded(dir.path());
    // Enough traffic that every labelled family the dashboard reads has a sample: a waiting room
    // with an admission, a reserve, and a refusal.
    gated_sale(&s);
    admission(&s, "ada");
    let (admin, checkout) = (bearer(ADMIN), bearer(CHECKOUT));
    let cap = [("Authorization", admin.as_str())];
    assert_eq!(s.send(request("PUT", "/v1/skus/cap", &cap, Some(r#"{"on_hand": 5}"#))).status, 200);
    let body = r#"{"items":[{"sku":"cap","qty":1}],"ttl_ms":60000,"user_id":"bo"}"#;
    let reserved =
        s.send(request("POST", "/v1/reservations", &[("Authorization", checkout.as_str())], Some(body)));
    assert_eq!(reserved.status, 201, "{}", reserved.text());
    assert_eq!(s.send(request("PUT", "/v1/skus/cap", &[], Some(r#"{"on_hand": 1}"#))).status, 401);
    let text = s.send(request("GET", "/metrics", &cap, None)).text();
    let exported: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    // A counter's samples end in _total, a histogram's in _bucket, _sum and _count.
    let known = |name: &str| {
        exported.contains(name)
            || ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|n| exported.contains(n)))
    };

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("ops/dashboards/holdfast.json")).expect("JSON");
    let exprs: Vec<&str> = (dashboard["panels"].as_array().expect("panels").iter())
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .map(|t| t["expr"].as_str().expect("expr"))
        .collect();
    let alerts = read("ops/alerts.yml");
    let mut missing: Vec<String> = named(&alerts).into_iter().filter(|n| !known(n)).collect();
    missing
        .extend(exprs.iter().flat_map(|e| named(e)).filter(|n| !known(n)).map(|n| format!("dashboard: {n}")));
    assert!(missing.is_empty(), "named but not exported: {missing:?}\nexported: {exported:?}");

    // The dashboard shows what an SRE needs during a sale.
    for wanted in [
        "holdfast_http_requests_total",
        "holdfast_http_request_duration_seconds_bucket",
        "holdfast_operations_total",
        "holdfast_wal_sync_seconds_bucket",
        "holdfast_wal_batch_records_sum",
        "holdfast_live_reservations",
        "holdfast_waitroom_waiting",
        "holdfast_waitroom_admitted_total",
        "holdfast_mirror_lag_seconds",
    ] {
        assert!(exprs.iter().any(|e| e.contains(wanted)), "the dashboard does not show {wanted}");
    }
}

/// The server's CPU and memory under the names every Prometheus client gives them, so a drill (and a
/// dashboard) reads them from the scrape; one exposition, ended once.
#[test]
fn the_process_figures_are_exported_under_their_customary_names() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = guarded(dir.path());
    let admin = bearer(ADMIN);
    let text = s.send(request("GET", "/metrics", &[("Authorization", admin.as_str())], None)).text();
    let value = |name: &str| {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
        line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number")
    };
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6, "more than a megabyte resident");
    assert!(value("process_open_fds") >= 3.0);
    assert!(text.contains("# TYPE process_cpu_seconds counter\n"), "a counter");
    assert_eq!(text.matches("# EOF").count(), 1, "one exposition");
    assert!(text.ends_with("# EOF\n"));
}
