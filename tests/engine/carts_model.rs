//! Property test of carts: random edits, removals, deletes, merges, idle expiries and checkouts (with
//! plain reserves taking stock meanwhile) on a moving clock, run against the engine and against a plain
//! model, compared after every step with conservation checked. SKU `c` is in a sale with a cart hold:
//! its lines are soft holds, and after every step each live hold is one line's, of that line's
//! quantity (a held unit is never in two carts). Then the records must survive the log codec and
//! rebuild the same state by replay, and from a snapshot taken midway.

use holdfast::carts::{CartError, ItemEdit, Merge};
use holdfast::durable::codec;
use holdfast::engine::*;
use holdfast::orders::{OrderError, OrderRequest};
use proptest::prelude::*;
use std::collections::BTreeMap;

const SKUS: [&str; 3] = ["a", "b", "c"];
const CARTS: [&str; 4] = ["sess-1", "sess-2", "u1", "u2"];
/// `c` is in a sale with this per-user limit; `a` and `b` are in none.
const LIMIT: u32 = 3;
const IDLE_MS: u64 = 50_000;
const CARTS_MAX: usize = 3;
const HOLD_MS: u64 = 30_000;

fn config(shards: usize) -> EngineConfig {
    EngineConfig { shards, carts_max: CARTS_MAX, cart_idle_ms: IDLE_MS, ..EngineConfig::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Set {
        cart: usize,
        sku: usize,
        qty: u32,
        price: Option<u64>,
    },
    Delete {
        cart: usize,
    },
    Merge {
        into: usize,
        from: usize,
    },
    Checkout {
        cart: usize,
        key: u8,
    },
    /// A plain reserve by someone else: stock moves under the carts.
    Reserve {
        sku: usize,
        qty: u32,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CARTS.len(), 0..SKUS.len(), 0u32..=5, prop::option::weighted(0.8, 1u64..1_000))
            .prop_map(|(cart, sku, qty, price)| Op::Set { cart, sku, qty, price }),
        1 => (0..CARTS.len()).prop_map(|cart| Op::Delete { cart }),
        2 => (0..CARTS.len(), 0..CARTS.len()).prop_map(|(into, from)| Op::Merge { into, from }),
        2 => (0..CARTS.len(), 0u8..4).prop_map(|(cart, key)| Op::Checkout { cart, key }),
        1 => (0..SKUS.len(), 1u32..3).prop_map(|(sku, qty)| Op::Reserve { sku, qty }),
        2 => (1u64..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A cart in the model: SKU index → (qty, price), and the last edit.
#[derive(Debug, Clone, Default, PartialEq)]
struct MCart {
    lines: BTreeMap<usize, (u32, Option<u64>)>,
    touched: u64,
    merged_from: Vec<usize>,
}

fn sku(i: usize) -> SkuId {
    SkuId::new(SKUS[i]).expect("valid")
}

fn cart_id(i: usize) -> CartId {
    CartId::new(CARTS[i]).expect("valid")
}

fn template(key: u8) -> OrderRequest {
    OrderRequest {
        user: UserId::new("buyer").expect("valid"),
        lines: Vec::new(),
        currency: "usd".into(),
        sale: None,
        pay_within_ms: 60_000,
        key: IdempotencyKey::new(&format!("k{key}")).expect("valid"),
    }
}

fn compare(engine: &Engine, model: &BTreeMap<usize, MCart>, now: u64) -> Result<(), TestCaseError> {
    let carts = engine.carts().lock();
    prop_assert_eq!(carts.len(), model.len());
    prop_assert_eq!(carts.items(), model.values().map(|c| c.lines.len()).sum::<usize>());
    let held = model.keys().flat_map(|i| carts.get(CARTS[*i]).into_iter().flat_map(|c| c.items.iter()));
    prop_assert_eq!(carts.held_lines(), held.filter(|l| l.hold.is_some()).count());
    for (i, m) in model {
        let got = carts.get(CARTS[*i]);
        prop_assert!(got.is_some(), "cart {} missing", CARTS[*i]);
        let got = got.expect("checked");
        let lines: Vec<(String, u32, Option<u64>)> =
            got.items.iter().map(|l| (l.sku.to_string(), l.qty, l.unit_price)).collect();
        let want: Vec<(String, u32, Option<u64>)> =
            m.lines.iter().map(|(s, (q, p))| (SKUS[*s].to_owned(), *q, *p)).collect();
        prop_assert_eq!(lines, want, "lines of {}", CARTS[*i]);
        prop_assert_eq!(got.touched_at_ms, m.touched);
    }
    // Every live hold is one line's, of its SKU and quantity, held by its cart.
    let mut seen = std::collections::BTreeSet::new();
    for i in model.keys() {
        let cart = carts.get(CARTS[*i]).expect("compared above");
        for line in &cart.items {
            let Some(hold) = engine.live_hold(line, now) else { continue };
            prop_assert!(seen.insert(hold.id), "{} held by two lines", hold.id);
            prop_assert_eq!(line.sku.as_str(), SKUS[2], "only the sale's SKU is held");
            let view = engine.reservation(hold.id, now).expect("a live hold");
            prop_assert_eq!(view.items, vec![Item { sku: line.sku.clone(), qty: line.qty }]);
            let holder = view.holder.map(|(_, user)| user.to_string());
            prop_assert_eq!(holder.as_deref(), Some(CARTS[*i]));
        }
    }
    drop(carts);
    // And no hold is left behind: every active reservation of a cart is one of its lines' holds.
    for r in engine.export(now).reservations.iter().filter(|r| r.state == ReservationState::Active) {
        let cart = r.holder.as_ref().map(|(_, user)| user.as_str()).filter(|u| CARTS.contains(u));
        if cart.is_some() && r.expires_at_ms > now {
            prop_assert!(seen.contains(&r.id), "{} of {:?} is held by no line", r.id, cart);
        }
    }
    engine.check_consistency().map_err(TestCaseError::fail)?;
    Ok(())
}

fn run(ops: &[Op], shards: usize, snapshot_at: usize) -> Result<(), TestCaseError> {
    let engine = Engine::new(config(shards)).expect("config");
    let mut log: Vec<Record> = Vec::new();
    let mut now: u64 = 1_000_000;
    for i in 0..SKUS.len() {
        engine.set_stock(&sku(i), 6, now, &mut log).expect("stock");
    }
    let sale = SaleId::new("drop").expect("valid");
    engine.set_sale(&sale, LIMIT, &[sku(2)], now, &mut log).expect("sale");
    engine.set_cart_hold(&sale, HOLD_MS, now, &mut log).expect("cart hold");
    let mut model: BTreeMap<usize, MCart> = BTreeMap::new();
    // Keys used by checkouts: the cart they named.
    let mut keys: BTreeMap<u8, usize> = BTreeMap::new();
    let mut snapshot: Option<(usize, Vec<u8>, u64)> = None;
    for (step, op) in ops.iter().enumerate() {
        if step == snapshot_at {
            snapshot = Some((log.len(), codec::encode_state(&engine.export(now)), now));
        }
        match op {
            Op::Set { cart, sku: s, qty, price } => {
                let edit = ItemEdit { sku: sku(*s), qty: *qty, unit_price: *price };
                let got = engine.set_cart_item(&cart_id(*cart), &edit, now, &mut log);
                let m = model.get(cart);
                let has = m.is_some_and(|c| c.lines.contains_key(s));
                let want = if *qty == 0 {
                    match m {
                        None => Err(CartError::NotFound),
                        Some(_) if !has => Err(CartError::ItemNotFound),
                        Some(_) => Ok(()),
                    }
                } else if *s == 2 && *qty > LIMIT {
                    Err(CartError::LimitExceeded { limit: LIMIT })
                } else if m.is_none() && model.len() >= CARTS_MAX {
                    Err(CartError::CartsFull)
                } else {
                    Ok(())
                };
                // A hold may find the units gone: refused, nothing changes.
                let short = matches!(got, Err(CartError::Hold(ReserveError::InsufficientStock { .. })));
                if !(short && *s == 2 && *qty > 0 && want.is_ok()) {
                    prop_assert_eq!(got.as_ref().map(|_| ()).map_err(Clone::clone), want.clone(), "{:?}", op);
                }
                if want.is_ok() && !short {
                    let c = model.entry(*cart).or_default();
                    c.touched = now;
                    if *qty == 0 {
                        c.lines.remove(s);
                    } else {
                        let old_price = c.lines.get(s).and_then(|l| l.1);
                        c.lines.insert(*s, (*qty, price.or(old_price)));
                    }
                }
            }
            Op::Delete { cart } => {
                let got = engine.delete_cart(&cart_id(*cart), now, &mut log);
                prop_assert_eq!(got.is_ok(), model.remove(cart).is_some());
            }
            Op::Merge { into, from } => {
                let got = engine.merge_carts(&cart_id(*into), &cart_id(*from), now, &mut log);
                let repeat = model.get(into).is_some_and(|c| c.merged_from.contains(from));
                match (into == from, model.get(from).cloned()) {
                    (true, _) => prop_assert_eq!(got.err(), Some(CartError::MergeIntoItself)),
                    (false, None) if repeat => {
                        prop_assert_eq!(got.map(|(_, m)| m).ok(), Some(Merge::Repeat))
                    }
                    (false, None) => prop_assert_eq!(got.err(), Some(CartError::NotFound)),
                    (false, Some(guest)) => {
                        prop_assert_eq!(got.map(|(_, m)| m).ok(), Some(Merge::Merged), "{:?}", op);
                        model.remove(from);
                        let c = model.entry(*into).or_default();
                        for (s, (q, p)) in guest.lines {
                            let line = c.lines.entry(s).or_insert((0, None));
                            let cap = if s == 2 { LIMIT } else { 10_000 };
                            line.0 = (line.0 + q).min(cap).max(line.0);
                            line.1 = line.1.or(p);
                        }
                        // A held line's quantity depends on the stock its new hold found.
                        let engine_c =
                            engine.carts().lock().get(CARTS[*into]).and_then(|e| e.item(SKUS[2]).cloned());
                        if let Some(line) = engine_c {
                            c.lines.insert(2, (line.qty, line.unit_price));
                        }
                        c.touched = now;
                        c.merged_from.retain(|m| m != from);
                        c.merged_from.push(*from);
                    }
                }
            }
            Op::Checkout { cart, key } => {
                let got = engine.checkout_cart(&cart_id(*cart), &template(*key), None, now, &mut log);
                match (keys.get(key), model.get(cart)) {
                    (Some(named), _) => {
                        // A repeat of the key: the order, unless it named another cart.
                        if named == cart {
                            prop_assert!(matches!(got, Ok((_, true))), "{:?}: {:?}", op, got);
                        } else {
                            let conflict = CartError::Order(OrderError::IdempotencyConflict);
                            prop_assert_eq!(got.err(), Some(conflict));
                        }
                    }
                    (None, None) => prop_assert_eq!(got.err(), Some(CartError::NotFound)),
                    (None, Some(c)) => match got {
                        Ok((order, false)) => {
                            let lines: Vec<(String, u32)> =
                                order.placed.lines.iter().map(|l| (l.sku.to_string(), l.qty)).collect();
                            let want: Vec<(String, u32)> =
                                c.lines.iter().map(|(s, (q, _))| (SKUS[*s].to_owned(), *q)).collect();
                            prop_assert_eq!(lines, want);
                            prop_assert!(c.lines.values().all(|l| l.1.is_some()));
                            keys.insert(*key, *cart);
                            model.remove(cart);
                        }
                        Err(CartError::Empty) => prop_assert!(c.lines.is_empty()),
                        Err(CartError::Unpriced { .. }) => {
                            prop_assert!(c.lines.values().any(|l| l.1.is_none()))
                        }
                        // Refused as a reserve: short of stock, mixing the sale with other SKUs, over
                        // the limit. The cart stays as it was.
                        Err(CartError::Order(OrderError::Reserve(_))) => {}
                        other => prop_assert!(false, "{:?}: {:?}", op, other),
                    },
                }
            }
            Op::Reserve { sku: s, qty } => {
                let req = ReserveRequest {
                    items: vec![Item { sku: sku(*s), qty: *qty }],
                    ttl_ms: 20_000,
                    user: Some(UserId::new("other").expect("valid")),
                    sale: None,
                    idempotency_key: None,
                };
                let _ = engine.reserve(&req, now, &mut log);
            }
            Op::Advance { ms } => {
                now += ms;
                // The server's timer: orders first (an order's hold ends with its order), then holds.
                engine.orders_tick(now, 10_000, &mut log).expect("orders tick");
                engine.expire_due(now, &mut log);
                engine.carts_tick(now, 10_000, &mut log).expect("tick");
                model.retain(|_, c| c.touched + IDLE_MS > now);
            }
        }
        compare(&engine, &model, now)?;
    }
    let end = engine.export(now);
    // Every record survives the codec.
    let mut buf = Vec::new();
    for record in &log {
        codec::encode(record, &mut buf);
        let back = codec::decode(&buf).map_err(|e| TestCaseError::fail(format!("{record:?}: {e}")))?;
        prop_assert_eq!(&back, record);
    }
    // Replay from nothing, and from the snapshot taken midway, reach the same state.
    let replayed = Engine::new(config(shards)).expect("config");
    for (i, r) in log.iter().enumerate() {
        replayed.apply(r).map_err(|e| TestCaseError::fail(format!("replay of {i} {r:?}: {e}")))?;
    }
    prop_assert_eq!(&replayed.export(now), &end);
    let decoded =
        codec::decode_state(&codec::encode_state(&end)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, &end);
    if let Some((at, bytes, _)) = snapshot {
        let state = codec::decode_state(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec::encode_state(&state), bytes);
        let restored =
            Engine::restore(config(shards), &state).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        for r in &log[at..] {
            restored
                .apply(r)
                .map_err(|e| TestCaseError::fail(format!("replay after snapshot {r:?}: {e}")))?;
        }
        prop_assert_eq!(&restored.export(now), &end);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn carts_follow_the_model_and_replay_exactly(
        ops in prop::collection::vec(op(), 1..80),
        shards in 1usize..4,
        snapshot_at in 0usize..80,
    ) {
        run(&ops, shards, snapshot_at)?;
    }
}

/// A hold past its deadline that the expiry tick has not swept yet is not its cart's to take again:
/// an edit then must find its units as any reserve would (here, none), and leaves the hold to the tick.
#[test]
fn an_edit_after_the_holds_deadline_does_not_retake_its_units() {
    let engine = Engine::new(EngineConfig { commit_grace_ms: 50, ..config(2) }).expect("config");
    let mut log = Vec::new();
    let t0 = 1_000_000;
    engine.set_stock(&sku(2), 2, t0, &mut log).expect("stock");
    let sale = SaleId::new("drop").expect("valid");
    engine.set_sale(&sale, LIMIT, &[sku(2)], t0, &mut log).expect("sale");
    engine.set_cart_hold(&sale, HOLD_MS, t0, &mut log).expect("cart hold");
    let edit = |qty| ItemEdit { sku: sku(2), qty, unit_price: Some(5) };
    engine.set_cart_item(&cart_id(0), &edit(2), t0, &mut log).expect("held");
    // Before the deadline, a renewal takes the same units back.
    engine.set_cart_item(&cart_id(0), &edit(2), t0 + HOLD_MS - 1, &mut log).expect("renewed");
    let due = t0 + 2 * HOLD_MS - 1 + 10;
    let again = engine.set_cart_item(&cart_id(0), &edit(2), due, &mut log);
    assert!(matches!(again, Err(CartError::Hold(ReserveError::InsufficientStock { .. }))), "{again:?}");
    // The tick sweeps it; then anyone may take the units, the cart as well.
    engine.expire_due(due + 50, &mut log);
    assert_eq!(engine.stock(SKUS[2]).map(|s| s.available), Some(2));
    engine.set_cart_item(&cart_id(1), &edit(1), due + 60, &mut log).expect("another cart holds one");
}
