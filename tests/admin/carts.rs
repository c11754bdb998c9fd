//! Carts in the log tools: `wal dump --cart` shows a cart's edits, the merge from its guest cart and
//! its checkout with the order inside; `wal replay --cart` shows the cart as it was at an LSN.

use super::holdfast;
use holdfast::carts::ItemEdit;
use holdfast::durable::Durable;
use holdfast::engine::{CartId, EngineConfig, IdempotencyKey, SkuId, UserId};
use holdfast::orders::OrderRequest;
use holdfast_wal::storage::FsStorage;
use holdfast_wal::WalOptions;
use serde_json::Value;
use std::sync::Arc;

#[test]
fn wal_dump_and_replay_show_a_carts_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(FsStorage::new(dir.path().join("wal")).expect("dir"));
    let (d, _) = Durable::open(storage, EngineConfig::default(), WalOptions::default()).expect("open");
    let (t0, tee, ann) = (1_000_000, SkuId::new("tee").expect("valid"), CartId::new("ann").expect("valid"));
    d.set_stock(&tee, 5, t0).expect("stock");
    let guest = CartId::new("sess-1").expect("valid");
    let edit = |qty| ItemEdit { sku: tee.clone(), qty, unit_price: Some(1_500) };
    d.set_cart_item(&guest, &edit(2), t0 + 1).expect("guest line");
    d.set_cart_item(&ann, &edit(1), t0 + 2).expect("ann's line");
    d.merge_carts(&ann, &guest, t0 + 3).expect("merge");
    let merged_at = d.wal().appended_lsn();
    let template = OrderRequest {
        user: UserId::new("ann").expect("valid"),
        lines: Vec::new(),
        currency: "eur".into(),
        sale: None,
        pay_within_ms: 60_000,
        key: IdempotencyKey::new("checkout-1").expect("valid"),
    };
    let order = d.checkout_cart(&ann, &template, None, t0 + 4).expect("checkout").value.0;
    d.close().expect("close");
    let path = dir.path().to_str().expect("utf-8");

    let (code, out, err) = holdfast(&["wal", "dump", path, "--json", "--cart", "ann"]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let steps: Vec<&str> = records.iter().map(|r| r["step"].as_str().expect("a step")).collect();
    assert_eq!(steps, ["item_set", "merged", "checked_out"], "{out}");
    assert_eq!(records[1]["from"], "sess-1");
    assert_eq!(records[1]["items"][0]["qty"], 3);
    assert_eq!(records[2]["order"]["order"], order.id.to_string());
    assert_eq!(records[2]["order"]["reservation"]["items"][0]["qty"], 3);
    // The guest cart's own records, and the merge that ended it.
    let (_, out, _) = holdfast(&["wal", "dump", path, "--cart", "sess-1"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (_, out, _) = holdfast(&["wal", "dump", path, "--kind", "cart"]);
    assert_eq!(out.lines().count(), 4, "{out}");

    let lsn = merged_at.to_string();
    let (code, out, err) = holdfast(&["wal", "replay", path, "--until-lsn", &lsn, "--cart", "ann"]);
    assert_eq!(code, 0, "{err}");
    let state: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(state["cart_count"], 1);
    assert_eq!(state["carts"][0]["items"][0]["qty"], 3);
    assert_eq!(state["carts"][0]["merged_from"][0], "sess-1");
    let (_, out, _) = holdfast(&["wal", "replay", path, "--until-lsn", &(merged_at + 1).to_string()]);
    assert_eq!(serde_json::from_str::<Value>(&out).expect("JSON")["cart_count"], 0);
}
