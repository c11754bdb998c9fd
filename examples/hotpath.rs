//! Reserve + commit of one hot SKU, N times, for a repeatable instruction count of the hot path:
//! `valgrind --tool=callgrind target/release/examples/hotpath 200000` (compare two builds).
use holdfast::engine::*;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let engine = Engine::new(EngineConfig { shards: 2, id_tag_key: Some(7), ..EngineConfig::default() })
        .expect("config");
    let sku = SkuId::new("hot").expect("sku");
    engine.set_stock(&sku, 1 << 40, 1_000, &mut ()).expect("stock");
    let req = ReserveRequest {
        items: vec![Item { sku, qty: 1 }],
        ttl_ms: 60_000,
        user: None,
        sale: None,
        idempotency_key: None,
    };
    let mut ok = 0u64;
    for i in 0..n {
        let now = 1_000 + i as u64;
        let r = engine.reserve(&req, now, &mut ()).expect("reserve");
        engine.commit(r.id, now, &mut ()).expect("commit");
        ok += 1;
    }
    println!("{ok}");
}
