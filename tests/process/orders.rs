//! Orders under SIGKILL: the real `holdfast serve`, with clients placing orders (Idempotency-Key),
//! attaching payment references, cancelling, and delivering signed payment webhooks (duplicated and
//! out of order) concurrently, killed with SIGKILL at a varied moment and restarted on the same data
//! directory, many times. After every kill the directory is opened offline and every acknowledged
//! order and webhook effect is checked against what recovery finds; after every restart every
//! acknowledged event is delivered again and must move nothing.

use crate::http::harness::{request, send};
use crate::http::process::{runtime, start_with, wait_ready};
use holdfast::durable::{settings, Durable};
use holdfast::engine::ReservationState;
use holdfast::orders::webhook::Secrets;
use holdfast::orders::{OrderId, OrderState};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::WalOptions;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "whsec_crash_drill_orders_0123456789";
const SKUS: usize = 4;
const ON_HAND: u64 = 120;
const CLIENTS: u64 = 6;

/// A small deterministic generator (xorshift), seeded per client and cycle.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// An order acknowledged with a 201, and every order state a 2xx acknowledged for it since.
#[derive(Debug, Clone)]
struct AckedOrder {
    items: Vec<(String, u32, u64)>,
    amount: u64,
    key: String,
    body: String,
    states: Vec<String>,
}

/// A webhook acknowledged with a 2xx: its body, and whether it was answered as having had its
/// effect (`applied`, or `duplicate` of one that had) or as changing nothing (`ignored`).
#[derive(Debug, Clone)]
struct AckedEvent {
    body: String,
    effect: bool,
}

#[derive(Default)]
struct Acks {
    orders: BTreeMap<String, AckedOrder>,
    events: BTreeMap<String, AckedEvent>,
}

type Shared = Arc<parking_lot::Mutex<Acks>>;

fn event_body(id: &str, kind: &str, order: &str, provider_ref: &str, amount: u64) -> String {
    json!({
        "id": id,
        "type": format!("payment_intent.{kind}"),
        "created": now_s(),
        "data": {"object": {
            "id": provider_ref,
            "amount": amount,
            "currency": "usd",
            "metadata": {"order_id": order},
        }},
    })
    .to_string()
}

fn webhook(body: &str) -> Vec<u8> {
    let secrets = Secrets::new(&[SECRET.to_owned()]).expect("a valid secret");
    let signature = secrets.sign_stripe(now_s(), body.as_bytes());
    request("POST", "/v1/webhooks/payments", &[("Stripe-Signature", &signature)], Some(body))
}

/// Delivers one event; on a 2xx, records it and the order state it reports. Err: the server is gone.
async fn deliver(addr: SocketAddr, acks: &Shared, event: &str, order: &str, body: &str) -> Result<(), ()> {
    let reply = send(addr, webhook(body)).await.map_err(|_| ())?;
    match reply.status {
        200 => {
            let v = reply.json();
            let effect = match v["status"].as_str() {
                Some("applied" | "duplicate") => true,
                Some("ignored") => false,
                other => panic!("webhook answered {other:?}: {v}"),
            };
            let mut acks = acks.lock();
            let seen =
                acks.events.entry(event.to_owned()).or_insert(AckedEvent { body: body.to_owned(), effect });
            seen.effect |= effect;
            if let (Some(state), Some(o)) = (v["order_state"].as_str(), acks.orders.get_mut(order)) {
                o.states.push(state.to_owned());
            }
            Ok(())
        }
        503 => Ok(()),
        other => panic!("webhook refused with {other}: {}", reply.text()),
    }
}

/// One checkout client: places orders and pays, fails or cancels them, until the server dies.
async fn client(addr: SocketAddr, cycle: u64, n: u64, acks: Shared) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (cycle << 32) ^ (n + 1));
    for i in 0.. {
        let first = rng.below(SKUS as u64);
        let mut items = vec![(format!("sku{first}"), 1 + rng.below(2) as u32, 100 + rng.below(900))];
        if rng.below(3) == 0 {
            let second = (first + 1 + rng.below(SKUS as u64 - 1)) % SKUS as u64;
            items.push((format!("sku{second}"), 1, 50 + rng.below(100)));
        }
        let lines: Vec<Value> = items
            .iter()
            .map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "unit_price": price}))
            .collect();
        let body =
            json!({"user_id": format!("u{n}"), "items": lines, "currency": "usd", "pay_within_ms": 600_000})
                .to_string();
        let key = format!("order-{cycle}-{n}-{i}");
        let place = request("POST", "/v1/orders", &[("Idempotency-Key", &key)], Some(&body));
        let Ok(reply) = send(addr, place).await else { return };
        if reply.status != 201 {
            assert!([409, 503].contains(&reply.status), "placing: {}", reply.text());
            continue;
        }
        let v = reply.json();
        let order = v["id"].as_str().expect("id").to_owned();
        let amount = v["amount"].as_u64().expect("amount");
        assert_eq!(amount, items.iter().map(|(_, q, p)| u64::from(*q) * p).sum::<u64>());
        acks.lock().orders.insert(
            order.clone(),
            AckedOrder { items, amount, key, body, states: vec!["awaiting_payment".into()] },
        );
        let provider_ref = format!("pi_{order}");
        if rng.below(2) == 0 {
            let path = format!("/v1/orders/{order}/payment");
            let attach = json!({"provider_ref": provider_ref}).to_string();
            let Ok(reply) = send(addr, request("POST", &path, &[], Some(&attach))).await else { return };
            assert_eq!(reply.status, 200, "attaching: {}", reply.text());
        }
        // What the provider will say of this payment, in order; delivered shuffled and repeated.
        let plan: &[(&str, bool)] = match rng.below(10) {
            0..=4 => &[("processing", true), ("succeeded", true)],
            5 => &[("payment_failed", true), ("succeeded", true)],
            6 => &[("succeeded", false)],
            7 => &[("payment_failed", true)],
            8 => &[("cancel", true), ("succeeded", true)],
            _ => &[],
        };
        let mut events = Vec::new();
        for (k, (kind, right)) in plan.iter().enumerate() {
            if *kind == "cancel" {
                let path = format!("/v1/orders/{order}/cancel");
                let Ok(reply) = send(addr, request("POST", &path, &[], None)).await else { return };
                assert_eq!(reply.status, 200, "cancelling: {}", reply.text());
                let state = reply.json()["state"].as_str().expect("state").to_owned();
                acks.lock().orders.get_mut(&order).expect("placed").states.push(state);
                continue;
            }
            let paid = if *right { amount } else { amount + 1 };
            let id = format!("evt_{order}_{k}");
            events.push((id.clone(), event_body(&id, kind, &order, &provider_ref, paid)));
        }
        let deliveries = events.len() + rng.below(3) as usize;
        for d in 0..deliveries {
            // In order at first; then any of them again (a retry, or one overtaken by a later one).
            let (id, body) = if d < events.len() && rng.below(4) != 0 {
                &events[d]
            } else if events.is_empty() {
                break;
            } else {
                &events[rng.below(events.len() as u64) as usize]
            };
            if deliver(addr, &acks, id, &order, body).await.is_err() {
                return;
            }
        }
    }
}

/// Opens the killed server's directory offline and checks every acknowledgement against it. Returns
/// whether recovery started from a snapshot.
fn check_offline(dir: &Path, acks: &Acks, cycle: u64) -> bool {
    let config = settings::load(dir).expect("engine settings");
    let storage = FsStorage::new(dir.join("wal")).expect("wal dir");
    let (durable, opened) = Durable::open(Arc::new(storage), config, WalOptions::default())
        .unwrap_or_else(|e| panic!("cycle {cycle}: recovery after SIGKILL failed: {e}"));
    let engine = durable.engine();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    let book = engine.orders().lock();
    for (id, acked) in &acks.orders {
        let order = OrderId::parse(id).expect("an order id");
        let o = book.get(order).unwrap_or_else(|| panic!("cycle {cycle}: acknowledged {id} lost"));
        let items: Vec<(String, u32, u64)> =
            o.placed.lines.iter().map(|l| (l.sku.to_string(), l.qty, l.unit_price)).collect();
        assert_eq!(items, acked.items, "cycle {cycle}: {id}'s items");
        assert_eq!(o.placed.amount, acked.amount, "cycle {cycle}: {id}'s amount");
        assert_eq!(o.placed.key.as_str(), acked.key, "cycle {cycle}: {id}'s key");
        let state = o.state.as_str();
        for seen in &acked.states {
            match seen.as_str() {
                // Final: an order acknowledged so is so for good.
                "paid" | "refund_due" | "payment_mismatch" => {
                    assert_eq!(state, seen, "cycle {cycle}: {id} was acknowledged {seen}")
                }
                "cancelled" => {
                    assert!(!o.state.is_open(), "cycle {cycle}: {id} was acknowledged cancelled, is {state}")
                }
                _ => {}
            }
        }
    }
    // Every unit sold is an order paid, and every unit held an order open: nothing else buys here.
    let mut sold: HashMap<String, u64> = HashMap::new();
    let mut held: HashMap<String, u64> = HashMap::new();
    for o in book.orders() {
        let hold = engine.reservation(o.reservation, now).map(|v| v.state);
        let units = match (o.state, o.commit_owed) {
            (OrderState::Paid, false) => {
                assert_eq!(hold, Some(ReservationState::Committed), "cycle {cycle}: {} is paid", o.id);
                &mut sold
            }
            (OrderState::Paid, true) => &mut held,
            (s, _) if s.is_open() => {
                // Open with a hold that ran out only if the timer has yet to end it.
                assert!(hold.is_some(), "cycle {cycle}: open {} without its hold", o.id);
                if hold != Some(ReservationState::Active) {
                    continue;
                }
                &mut held
            }
            _ => {
                let hold = hold.filter(|h| *h == ReservationState::Active);
                assert_eq!(hold, None, "cycle {cycle}: ended {} still holds", o.id);
                continue;
            }
        };
        for l in &o.placed.lines {
            *units.entry(l.sku.to_string()).or_default() += u64::from(l.qty);
        }
    }
    drop(book);
    for sku in (0..SKUS).map(|s| format!("sku{s}")) {
        let stock = engine.stock(&sku).expect("the SKU");
        assert_eq!(stock.sold, sold.get(&sku).copied().unwrap_or(0), "cycle {cycle}: {sku} sold {stock:?}");
        assert_eq!(
            stock.reserved,
            held.get(&sku).copied().unwrap_or(0),
            "cycle {cycle}: {sku} held {stock:?}"
        );
    }
    engine.check_consistency().unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
    durable.close().expect("close");
    opened.snapshot.is_some()
}

/// What an observer sees of the stock and of every acknowledged order, over HTTP.
fn observe(rt: &tokio::runtime::Runtime, addr: SocketAddr, acks: &Acks) -> (Vec<Value>, Vec<String>) {
    let get = |path: String| rt.block_on(send(addr, request("GET", &path, &[], None))).expect("a response");
    let stock = (0..SKUS).map(|s| get(format!("/v1/skus/sku{s}")).json()).collect();
    let states = (acks.orders.keys())
        .map(|id| {
            let reply = get(format!("/v1/orders/{id}"));
            assert_eq!(reply.status, 200, "{id}: {}", reply.text());
            reply.json()["state"].as_str().expect("state").to_owned()
        })
        .collect();
    (stock, states)
}

fn appended_lsn(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> u64 {
    let text = rt.block_on(send(addr, request("GET", "/metrics", &[], None))).expect("metrics").text();
    let line = text.lines().find(|l| l.starts_with("holdfast_wal_appended_lsn ")).expect("the LSN gauge");
    line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number") as u64
}

/// After a restart: every acknowledged event again, and every acknowledged order's key again. Each
/// event is a duplicate (or, if it changed nothing before, still changes nothing); each order comes
/// back as it was placed; and nothing moves.
fn redeliver(rt: &tokio::runtime::Runtime, addr: SocketAddr, acks: &Acks, cycle: u64) {
    let before = observe(rt, addr, acks);
    let lsn = appended_lsn(rt, addr);
    for (id, event) in &acks.events {
        let reply = rt.block_on(send(addr, webhook(&event.body))).expect("a response");
        assert_eq!(reply.status, 200, "cycle {cycle}: {id} again: {}", reply.text());
        let status = reply.json()["status"].as_str().expect("status").to_owned();
        let expected: &[&str] = if event.effect { &["duplicate"] } else { &["duplicate", "ignored"] };
        assert!(expected.contains(&status.as_str()), "cycle {cycle}: {id} again answered {status}");
    }
    for (id, order) in acks.orders.iter().step_by(3) {
        let place = request("POST", "/v1/orders", &[("Idempotency-Key", &order.key)], Some(&order.body));
        let reply = rt.block_on(send(addr, place)).expect("a response");
        assert_eq!(reply.status, 201, "cycle {cycle}: {id}'s key again: {}", reply.text());
        assert_eq!(reply.header("idempotent-replayed"), Some("true"), "cycle {cycle}: {id}'s key again");
        assert_eq!(reply.json()["id"].as_str(), Some(id.as_str()), "cycle {cycle}: {id}'s key again");
    }
    assert_eq!(observe(rt, addr, acks), before, "cycle {cycle}: redelivery moved something");
    assert_eq!(appended_lsn(rt, addr), lsn, "cycle {cycle}: redelivery wrote to the log");
}

#[test]
fn sigkill_mid_checkout_loses_no_acknowledged_order_or_payment() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let acks: Shared = Arc::default();
    let cycles = 10u64;
    let (mut paid_cycles, mut from_snapshot) = (0, 0);
    for cycle in 0..=cycles {
        // Snapshots often, so that most recoveries start from one and replay only the log after it.
        let p = start_with(dir.path(), &["--webhook-secret", SECRET, "--snapshot-every-records", "200"]);
        wait_ready(&rt, p.addr);
        if cycle == 0 {
            for s in 0..SKUS {
                let body = format!(r#"{{"on_hand": {ON_HAND}}}"#);
                let put = request("PUT", &format!("/v1/skus/sku{s}"), &[], Some(&body));
                assert_eq!(rt.block_on(send(p.addr, put)).expect("a response").status, 200);
            }
        } else {
            redeliver(&rt, p.addr, &acks.lock(), cycle);
            // Restock, so that every run sells: sold units stay sold.
            for s in 0..SKUS {
                let body = r#"{"delta": 40, "reason": "restock"}"#;
                let adjust = request("POST", &format!("/v1/skus/sku{s}/adjust"), &[], Some(body));
                let reply = rt.block_on(send(p.addr, adjust)).expect("a response");
                assert_eq!(reply.status, 200, "restock: {}", reply.text());
            }
        }
        if cycle == cycles {
            break;
        }
        let paid_before =
            acks.lock().orders.values().filter(|o| o.states.iter().any(|s| s == "paid")).count();
        let clients: Vec<_> =
            (0..CLIENTS).map(|n| rt.spawn(client(p.addr, cycle, n, acks.clone()))).collect();
        std::thread::sleep(Duration::from_millis(200 + cycle * 97 % 400));
        drop(p); // SIGKILL, and reaped
        for c in clients {
            rt.block_on(c).expect("client");
        }
        let acks = acks.lock();
        if acks.orders.values().filter(|o| o.states.iter().any(|s| s == "paid")).count() > paid_before {
            paid_cycles += 1;
        }
        if check_offline(dir.path(), &acks, cycle) {
            from_snapshot += 1;
        }
    }
    let acks = acks.lock();
    assert!(from_snapshot >= cycles / 2, "only {from_snapshot} of {cycles} recoveries used a snapshot");
    assert!(paid_cycles >= cycles / 2, "only {paid_cycles} of {cycles} runs acknowledged a payment");
    assert!(acks.orders.len() > 100, "only {} orders acknowledged", acks.orders.len());
    assert!(acks.events.len() > 100, "only {} events acknowledged", acks.events.len());
}
