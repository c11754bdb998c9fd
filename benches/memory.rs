//! Memory per live single-item reservation, at one million of them, and per cart of three items, at
//! one million carts: `cargo bench --bench memory`.
//!
//! Two figures: the bytes the engine has allocated (exact, counted by a wrapper around mimalloc) and the
//! growth of resident memory (what the machine pays, allocator overhead included; it varies from run to
//! run with how the allocator and the kernel lay out pages). A separate target, so that the counting
//! allocator's shared counter does not slow the timing benchmarks.
#![allow(unsafe_code)]

use holdfast::engine::*;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc; the wrapper only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: u64 = 1_700_000_000_000;
const LIVE: usize = 1_000_000;

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: usize = status.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm rss");
    pages * 4096
}

fn main() {
    let engine = Engine::new(EngineConfig { shards: 2, ..EngineConfig::default() }).expect("config");
    let reqs: Vec<ReserveRequest> = (0..1_000)
        .map(|i| {
            let sku = SkuId::new(&format!("m-{i:04}")).expect("valid");
            engine.set_stock(&sku, 1 << 30, T0, &mut ()).expect("stock");
            ReserveRequest {
                items: vec![Item { sku, qty: 1 }],
                ttl_ms: 60_000,
                user: None,
                sale: None,
                idempotency_key: None,
            }
        })
        .collect();
    let (allocated, resident) = (ALLOCATED.load(Relaxed), resident_bytes());
    for i in 0..LIVE {
        engine.reserve(&reqs[i % reqs.len()], T0, &mut ()).expect("reserve");
    }
    let per = |bytes: usize| bytes as f64 / LIVE as f64;
    println!(
        "memory/live_reservation: {:.1} bytes allocated, {:.1} bytes resident, per live single-item reservation at {LIVE}",
        per(ALLOCATED.load(Relaxed) - allocated),
        per(resident_bytes() - resident),
    );
    assert_eq!(engine.active_reservations(), LIVE);
    carts(&engine, &reqs);
}

/// A million carts of three priced lines, keyed by 32-character session ids.
fn carts(engine: &Engine, reqs: &[ReserveRequest]) {
    let (allocated, resident) = (ALLOCATED.load(Relaxed), resident_bytes());
    for i in 0..LIVE {
        let cart = CartId::new(&format!("sess-{i:027}")).expect("valid");
        for line in 0..3 {
            let sku = reqs[(i * 3 + line) % reqs.len()].items[0].sku.clone();
            let edit = holdfast::carts::ItemEdit { sku, qty: 1 + line as u32, unit_price: Some(1_999) };
            engine.set_cart_item(&cart, &edit, T0, &mut ()).expect("a cart line");
        }
    }
    let per = |bytes: usize| bytes as f64 / LIVE as f64;
    println!(
        "memory/cart: {:.1} bytes allocated, {:.1} bytes resident, per cart of 3 lines at {LIVE} carts",
        per(ALLOCATED.load(Relaxed) - allocated),
        per(resident_bytes() - resident),
    );
    assert_eq!(engine.carts().lock().len(), LIVE);
}
