//! Writes real log records and a real snapshot state into `corpus/`, as seeds for the fuzz targets.

use holdfast::durable::codec;
use holdfast::engine::{
    Engine, EngineConfig, IdempotencyKey, Item, Reason, Record, ReserveRequest, SaleId, SkuId, UserId,
};

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let sku = SkuId::new("tee").expect("sku");
    let sale = SaleId::new("noon").expect("sale");
    let engine = Engine::new(EngineConfig { shards: 2, ..EngineConfig::default() }).expect("engine");
    let mut records: Vec<Record> = Vec::new();
    engine.set_stock(&sku, 10, 1_000, &mut records).expect("stock");
    engine.set_sale(&sale, 3, std::slice::from_ref(&sku), 1_001, &mut records).expect("sale");
    engine
        .adjust_stock(&sku, 5, &Reason::new("restock").expect("reason"), 1_002, &mut records)
        .expect("adjust");
    let req = ReserveRequest {
        items: vec![Item { sku: sku.clone(), qty: 2 }],
        ttl_ms: 60_000,
        user: Some(UserId::new("ann").expect("user")),
        sale: Some(sale),
        idempotency_key: Some(IdempotencyKey::new("order-1").expect("key")),
    };
    let r = engine.reserve(&req, 1_003, &mut records).expect("reserve");
    engine.extend(r.id, 120_000, 1_004, &mut records).expect("extend");
    engine.commit(r.id, 1_005, &mut records).expect("commit");
    // Not naming the sale: it still counts against it, as its SKU's sale.
    let other = ReserveRequest {
        idempotency_key: None,
        sale: None,
        user: Some(UserId::new("bob").expect("user")),
        ..req
    };
    let r2 = engine.reserve(&other, 1_006, &mut records).expect("reserve");
    engine.release(r2.id, 1_007, &mut records).expect("release");
    let log = dir.join("log_record");
    std::fs::create_dir_all(&log).expect("dir");
    for (i, record) in records.iter().enumerate() {
        let mut out = Vec::new();
        codec::encode(record, &mut out);
        std::fs::write(log.join(format!("record-{i}")), out).expect("write");
    }
    let snap = dir.join("snapshot_state");
    std::fs::create_dir_all(&snap).expect("dir");
    std::fs::write(snap.join("state-0"), codec::encode_state(&engine.export(1_008))).expect("write");
    println!("wrote {} records and a state under {}", records.len(), dir.display());
}
