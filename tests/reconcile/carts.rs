//! Cart holds in the Postgres mirror: a cart's step carries several reservation records under one
//! LSN (a hold ended and another taken, holds ended and an order's reservation taken); each is
//! mirrored once, in its place, and the mirror equals the engine with no drift.

use super::Pg;
use holdfast::carts::ItemEdit;
use holdfast::durable::{codec, Durable};
use holdfast::engine::{CartId, EngineConfig, IdempotencyKey, Record, SaleId, SkuId, UserId};
use holdfast::orders::OrderRequest;
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{Lsn, WalOptions};
use std::sync::Arc;
use tokio_postgres::NoTls;

const T0: u64 = 1_800_000_000_000;

#[test]
fn cart_holds_are_mirrored_event_by_event_without_drift() {
    let pg = Pg::new("carts");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let storage = Arc::new(FsStorage::new(dir.path().join("wal")).expect("dir"));
    let (d, _) =
        Durable::open(storage.clone(), EngineConfig::default(), WalOptions::default()).expect("open");
    let (tee, sale) = (SkuId::new("tee").expect("valid"), SaleId::new("drop").expect("valid"));
    d.set_stock(&tee, 10, T0).expect("stock");
    d.set_sale(&sale, 5, std::slice::from_ref(&tee), T0).expect("sale");
    d.set_cart_hold(&sale, 600_000, T0).expect("hold");
    let (ann, guest) = (CartId::new("ann").expect("valid"), CartId::new("sess-1").expect("valid"));
    let edit = |qty| ItemEdit { sku: tee.clone(), qty, unit_price: Some(900) };
    d.set_cart_item(&guest, &edit(2), T0 + 1).expect("held");
    d.set_cart_item(&guest, &edit(1), T0 + 2).expect("held again: released and reserved");
    d.set_cart_item(&ann, &edit(2), T0 + 3).expect("held");
    d.merge_carts(&ann, &guest, T0 + 4).expect("merged: two holds into one");
    let template = OrderRequest {
        user: UserId::new("ann").expect("valid"),
        lines: Vec::new(),
        currency: "usd".into(),
        sale: None,
        pay_within_ms: 60_000,
        key: IdempotencyKey::new("ck-1").expect("valid"),
    };
    d.checkout_cart(&ann, &template, None, T0 + 5).expect("checked out");
    d.set_cart_item(&guest, &edit(1), T0 + 6).expect("a new hold");
    d.wal().wait(d.wal().appended_lsn()).expect("synced");
    let stock = d.engine().stock("tee").expect("tee");
    assert_eq!((stock.available, stock.reserved), (6, 4), "3 for the order, 1 held");

    let mut log: Vec<(Lsn, Record)> = Vec::new();
    holdfast_wal::inspect(&*storage, 1, &mut |r| {
        log.push((r.lsn, codec::decode(r.payload).map_err(|e| e.0)?));
        Ok(())
    })
    .expect("the log reads");
    let inner = |r: &Record| match r {
        Record::Cart(c) => c.inner.len(),
        _ => 0,
    };
    assert!(log.iter().any(|(_, r)| inner(r) >= 3), "a step with several reservation records");

    let rt = &pg.rt;
    let mut client = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&pg.url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    });
    rt.block_on(holdfast::reconcile::migrate(&mut client)).expect("migrated");
    let mut applied = 0;
    for batch in log.chunks(2) {
        rt.block_on(holdfast::reconcile::apply_batch(&mut client, applied, batch, None)).expect("applied");
        applied = batch.last().expect("a record").0;
    }
    assert_eq!(pg.skus()["tee"], [10, 6, 4, 0]);
    let events: i64 = pg.query("SELECT count(*) FROM holdfast_reservation_events")[0].get(0);
    // reserved; released+reserved; reserved; (released, released, reserved); released+reserved (order); reserved.
    assert_eq!(events, 1 + 2 + 1 + 3 + 2 + 1);
    let report =
        rt.block_on(holdfast::reconcile::drift::check(&mut client, &*storage, d.config())).expect("checked");
    assert!(report.is_clean(), "{report:?}");
    // A hold's event changed behind holdfast's back is drift at its place in its record.
    pg.execute("UPDATE holdfast_reservation_events SET kind = 'expired' WHERE seq = 1 AND kind = 'released'");
    let report =
        rt.block_on(holdfast::reconcile::drift::check(&mut client, &*storage, d.config())).expect("checked");
    assert!(!report.is_clean(), "{report:?}");
    d.close().expect("close");
}
