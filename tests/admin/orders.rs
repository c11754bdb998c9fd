//! `holdfast orders list`: the orders rebuilt from a data directory, filtered by state (the operator's
//! to-do lists), without changing the directory, also while a server writes it.

use super::holdfast;
use crate::http::harness::request;
use crate::http::process::{call, runtime, start_with, wait_ready};
use holdfast::durable::Durable;
use holdfast::engine::EngineConfig;
use holdfast_wal::storage::FsStorage;
use holdfast_wal::WalOptions;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Every file of the directory with its size and modification time.
fn listing(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    for entry in walkdir(dir) {
        let m = std::fs::metadata(&entry).expect("metadata");
        out.insert(entry.display().to_string(), (m.len(), m.modified().expect("mtime")));
    }
    out
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").filter_map(|e| e.ok()) {
        let path = e.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn orders_list_shows_each_state_and_the_lists_that_need_a_person() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(FsStorage::new(dir.path().join("wal")).expect("dir"));
    let (d, _) = Durable::open(storage, EngineConfig::default(), WalOptions::default()).expect("open");
    let ids: Vec<String> = crate::reconcile::orders::order_log(&d).iter().map(|id| id.to_string()).collect();
    let expected: BTreeMap<String, Value> = (d.engine().export(0).orders.iter())
        .map(|o| (o.id.to_string(), serde_json::json!([o.state.as_str(), o.reservation.to_string()])))
        .collect();
    d.close().expect("close");
    let before = listing(dir.path());
    let path = dir.path().to_str().expect("utf-8");

    let (code, out, err) = holdfast(&["orders", "list", path, "--json"]);
    assert_eq!(code, 0, "{err}");
    let all = lines(&out);
    let seen: BTreeMap<String, Value> = (all.iter())
        .map(|o| {
            (o["id"].as_str().expect("id").to_owned(), serde_json::json!([o["state"], o["reservation_id"]]))
        })
        .collect();
    assert_eq!(seen, expected, "every order, in the engine's state, with the reservation holding it");
    let ids_of = |state: &str| -> Vec<String> {
        let (code, out, err) = holdfast(&["orders", "list", path, "--state", state, "--json"]);
        assert_eq!(code, 0, "{err}");
        lines(&out).iter().map(|o| o["id"].as_str().expect("id").to_owned()).collect()
    };
    assert_eq!(ids_of("refund_due"), [ids[4].clone()]);
    assert_eq!(ids_of("payment_mismatch"), [ids[3].clone()]);
    assert_eq!(ids_of("open"), [ids[2].clone(), ids[6].clone()], "payment_pending and awaiting_payment");
    assert_eq!(ids_of("paid"), [ids[0].clone(), ids[1].clone()]);
    assert_eq!(ids_of("cancelled"), [ids[5].clone()]);
    let refund = &lines(&holdfast(&["orders", "list", path, "--state", "refund_due", "--json"]).1)[0];
    assert_eq!(refund["provider_ref"], "pi_4");
    assert_eq!(refund["amount"], 1_004);
    assert_eq!(refund["currency"], "eur");
    assert_eq!(refund["user_id"], "u4");
    assert!(refund["pay_by"].as_str().is_some_and(|t| t.ends_with('Z')), "{refund}");
    let cancelled = lines(&holdfast(&["orders", "list", path, "--state", "cancelled", "--json"]).1);
    let causes: Vec<&str> = cancelled.iter().map(|o| o["cause"].as_str().expect("cause")).collect();
    assert_eq!(causes, ["expired"], "its pay_by passed");

    // For people: a header, one line an order, and a count.
    let (code, table, _) = holdfast(&["orders", "list", path, "--state", "payment_mismatch"]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("id") && rows[0].contains("provider_ref"), "{table}");
    assert!(rows[1].starts_with(&ids[3]) && rows[1].contains("pi_3") && rows[1].contains("1003"), "{table}");
    assert!(rows[2].starts_with("1 payment_mismatch orders"), "{table}");
    let (code, _, err) = holdfast(&["orders", "list", path, "--state", "lost"]);
    assert_eq!(code, 2, "an unknown state is bad usage: {err}");
    assert_eq!(listing(dir.path()), before, "nothing in the directory changed");
}

#[test]
fn orders_list_reads_a_directory_a_server_is_writing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let secret = crate::reconcile::orders::SECRET;
    let mut p = start_with(dir.path(), &["--webhook-secret", secret]);
    wait_ready(&rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 10}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = format!(
            r#"{{"user_id":"u{i}","items":[{{"sku":"tee","qty":1,"unit_price":700}}],"currency":"eur"}}"#
        );
        let key = format!("list-{i}");
        let reply = call(
            &rt,
            p.addr,
            request("POST", "/v1/orders", &[("Idempotency-Key", key.as_str())], Some(&body)),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        ids.push(reply.json()["id"].as_str().expect("id").to_owned());
    }
    let attach =
        request("POST", &format!("/v1/orders/{}/payment", ids[0]), &[], Some(r#"{"provider_ref":"pi_x"}"#));
    assert_eq!(call(&rt, p.addr, attach).status, 200);
    let cancel = request("POST", &format!("/v1/orders/{}/cancel", ids[1]), &[], Some("{}"));
    assert_eq!(call(&rt, p.addr, cancel).status, 200);
    let path = dir.path().to_str().expect("utf-8");
    let (code, out, err) = holdfast(&["orders", "list", path, "--json"]);
    assert_eq!(code, 0, "while the server runs: {err}");
    let listed = lines(&out);
    assert_eq!(listed.len(), 3, "{out}");
    for o in &listed {
        let id = o["id"].as_str().expect("id");
        let v = call(&rt, p.addr, request("GET", &format!("/v1/orders/{id}"), &[], None)).json();
        for field in ["state", "reservation_id", "amount", "currency", "pay_by", "user_id"] {
            assert_eq!(o[field], v[field], "{id} {field}");
        }
        assert_eq!(o["provider_ref"], v.get("provider_ref").cloned().unwrap_or(Value::Null), "{id}");
        assert_eq!(o["cause"], v.get("cause").cloned().unwrap_or(Value::Null), "{id}");
    }
    // The server goes on serving after the tool read its directory.
    let put = request("PUT", "/v1/skus/cap", &[], Some(r#"{"on_hand": 1}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}
