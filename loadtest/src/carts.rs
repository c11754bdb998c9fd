//! `holdfast-drill carts`: a flash sale with soft holds. Shoppers arrive over a few seconds and add
//! the SKU to their cart, which holds the units for the sale's `cart_hold_ms`; those told "sold out"
//! at the cart go away. Some of those holding units abandon their cart; the rest check it out, some
//! sending their checkout twice with its key.
//!
//! Verification: no oversell (at every read and at the end); everyone who held units at checkout got
//! them, as an order of the cart's lines and prices, and a repeat got the same order; each abandoned
//! hold returned by its deadline (the drill waits past the last one, then the units held for
//! abandoned carts are available again and exactly the orders' units stay reserved).

use crate::client::{Client, Reply};
use crate::verify::Check;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct CartsArgs {
    /// A running server; unset: this build's holdfast is started on a loopback port.
    #[arg(long)]
    target: Option<String>,
    /// Shoppers who add to a cart.
    #[arg(long, default_value_t = 2_000)]
    users: u64,
    /// Units of the SKU on sale.
    #[arg(long, default_value_t = 500)]
    units: u64,
    /// The SKU on sale.
    #[arg(long, default_value = "cart-drill-sku")]
    sku: String,
    /// The sale covering it, with the cart hold.
    #[arg(long, default_value = "cart-drill-sale")]
    sale: String,
    /// The sale's cart hold, in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    hold_ms: u64,
    /// Shoppers arrive evenly over this many seconds.
    #[arg(long, default_value_t = 3.0)]
    arrival_secs: f64,
    /// Holders who abandon their cart.
    #[arg(long, default_value_t = 0.3)]
    abandon_rate: f64,
    /// Checkouts sent a second time with their key.
    #[arg(long, default_value_t = 0.1)]
    key_retry: f64,
    /// Milliseconds between adding to the cart and checking out (at most half the hold).
    #[arg(long, default_value_t = 500)]
    think_ms: u64,
    /// Keep-alive connections the shoppers share.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Where the report goes: DIR/carts.json.
    #[arg(long, default_value = "carts-report")]
    report: std::path::PathBuf,
}

/// What one shopper did and was told.
#[derive(Default, Clone)]
struct Shopper {
    qty: u32,
    /// When the add was sent and answered (Unix ms): a refusal was decided between the two.
    sent_at: u64,
    added_at: u64,
    /// Held until (Unix ms), as the cart said.
    held_until: Option<u64>,
    sold_out: bool,
    abandoned: bool,
    order: Option<Value>,
    repeat_same: Option<bool>,
    problem: Option<String>,
}

struct Drill {
    args: CartsArgs,
    client: Client,
    add_us: Mutex<Histogram<u64>>,
    checkout_us: Mutex<Histogram<u64>>,
    /// (available, reserved, sold) read while the sale ran, each checked against the units.
    reads: Mutex<Vec<(u64, u64, u64)>>,
}

/// How long after its deadline an abandoned hold's units may take to be available again.
const RETURN_MS: u64 = 250;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

/// A deterministic draw in [0, 1) for shopper `i` and purpose `salt`.
fn draw(i: u64, salt: u64) -> f64 {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

pub fn carts(args: &CartsArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.think_ms * 2 <= args.hold_ms, "--think-ms must be at most half of --hold-ms");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: &CartsArgs) -> anyhow::Result<bool> {
    let mut _server = None;
    let addr = match &args.target {
        Some(target) => crate::address(target)?,
        None => {
            let scratch = std::env::temp_dir().join(format!("holdfast-carts-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch)?;
            let server = crate::servers::holdfast_with(&scratch, &[])?;
            let addr = server.addr;
            _server = Some(crate::checkout::Scratch::new(server, scratch));
            addr
        }
    };
    let client = Client::new(addr, args.connections, Duration::from_secs(10));
    let d = Arc::new(Drill {
        args: args.clone(),
        client,
        add_us: Mutex::new(histogram()),
        checkout_us: Mutex::new(histogram()),
        reads: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    setup(&d).await?;
    let mut tasks = Vec::new();
    for i in 0..args.users {
        let at = Duration::from_secs_f64(args.arrival_secs * i as f64 / args.users.max(1) as f64);
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(started + at)).await;
            shopper(&d, i).await
        }));
    }
    let watcher = {
        let d = d.clone();
        tokio::spawn(async move {
            while let Ok(s) = stock(&d).await {
                d.reads.lock().push(s);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut shoppers = Vec::new();
    for t in tasks {
        shoppers.push(t.await?);
    }
    // Past the last abandoned hold's deadline, with the commit grace and one expiry tick (75 ms by
    // default) and the time the read takes.
    let last = shoppers.iter().filter(|s| s.abandoned).filter_map(|s| s.held_until).max().unwrap_or(0);
    let wait = last.saturating_sub(unix_ms()) + RETURN_MS;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    watcher.abort();
    let end = stock(&d).await.map_err(anyhow::Error::msg)?;
    let checks = verify(&d, &shoppers, end);
    let passed = checks.iter().all(|c| c.ok);
    let count = |f: fn(&Shopper) -> bool| shoppers.iter().filter(|s| f(s)).count();
    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let (add, checkout) = (d.add_us.lock().clone(), d.checkout_us.lock().clone());
    let report = json!({
        "scenario": args,
        "machine": crate::servers::machine(),
        "wall_secs": started.elapsed().as_secs_f64(),
        "shoppers": {
            "users": args.users,
            "held": count(|s| s.held_until.is_some()),
            "sold_out_at_cart": count(|s| s.sold_out),
            "abandoned": count(|s| s.abandoned),
            "checked_out": count(|s| s.order.is_some()),
            "checkout_repeats": count(|s| s.repeat_same.is_some()),
        },
        "units": {"on_hand": args.units, "end": {"available": end.0, "reserved": end.1, "sold": end.2}},
        "latency_ms": {
            "add": {"count": add.len(), "p50": pct(&add, 0.5), "p99": pct(&add, 0.99), "max": pct(&add, 1.0)},
            "checkout": {"count": checkout.len(), "p50": pct(&checkout, 0.5), "p99": pct(&checkout, 0.99), "max": pct(&checkout, 1.0)},
        },
        "verification": {
            "passed": passed,
            "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        },
    });
    std::fs::create_dir_all(&args.report)?;
    std::fs::write(args.report.join("carts.json"), serde_json::to_string_pretty(&report)?)?;
    println!("carts drill: {} s; shoppers {}", report["wall_secs"], report["shoppers"]);
    println!("latency (ms): {}", report["latency_ms"]);
    for c in &checks {
        println!("{} {}: {}", if c.ok { "ok    " } else { "FAILED" }, c.name, c.detail);
    }
    println!("verification: {}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
}

async fn setup(d: &Drill) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while !d.client.get("/readyz".into()).await.is_ok_and(|r| r.status == 200) {
        anyhow::ensure!(Instant::now() < until, "the server is not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = &d.args;
    for (path, body) in [
        (format!("/v1/skus/{}", a.sku), json!({"on_hand": a.units})),
        (
            format!("/v1/sales/{}", a.sale),
            json!({"per_user_limit": 2, "skus": [a.sku], "cart_hold_ms": a.hold_ms}),
        ),
    ] {
        let r = d.client.put(path.clone(), body.to_string()).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(r.status == 200, "{path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
    }
    Ok(())
}

async fn stock(d: &Drill) -> Result<(u64, u64, u64), String> {
    let r = d.client.get(format!("/v1/skus/{}", d.args.sku)).await?;
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let n = |k: &str| v[k].as_u64().ok_or_else(|| format!("{k} in {v}"));
    Ok((n("available")?, n("reserved")?, n("sold")?))
}

fn timed(h: &Mutex<Histogram<u64>>, sent: Instant, r: &Result<Reply, String>) {
    if r.is_ok() {
        let _ = h.lock().record(sent.elapsed().as_micros().max(1) as u64);
    }
}

async fn shopper(d: &Drill, i: u64) -> Shopper {
    let a = &d.args;
    let cart = format!("drill-cart-{i}");
    let qty = if draw(i, 1) < 0.3 { 2 } else { 1 };
    let mut s = Shopper { qty, ..Shopper::default() };
    let body = json!({"qty": qty, "unit_price": 1_999}).to_string();
    s.sent_at = unix_ms();
    let sent = Instant::now();
    let r = d.client.put(format!("/v1/carts/{cart}/items/{}", a.sku), body).await;
    timed(&d.add_us, sent, &r);
    s.added_at = unix_ms();
    let held = match r {
        Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body).ok(),
        Ok(r) if r.status == 409 && r.body.windows(18).any(|w| w == b"insufficient_stock") => {
            s.sold_out = true;
            return s;
        }
        Ok(r) => {
            s.problem = Some(format!("add: {} {}", r.status, String::from_utf8_lossy(&r.body)));
            return s;
        }
        Err(e) => {
            s.problem = Some(format!("add: {e}"));
            return s;
        }
    };
    let until = held.as_ref().and_then(|v| v["items"][0]["held_until"].as_str().map(str::to_owned));
    s.held_until = until.as_deref().and_then(parse_ms);
    if s.held_until.is_none() {
        s.problem = Some(format!("added without a hold: {held:?}"));
        return s;
    }
    if draw(i, 2) < a.abandon_rate {
        s.abandoned = true;
        return s;
    }
    tokio::time::sleep(Duration::from_millis((a.think_ms as f64 * (0.5 + draw(i, 3))) as u64)).await;
    let order = json!({"user_id": format!("drill-user-{i}"), "cart_id": cart, "currency": "usd"}).to_string();
    let key = format!("drill-checkout-{i}-{}", unix_ms());
    let checkout = || {
        let path = "/v1/orders".to_owned();
        d.client.call_keyed(hyper::Method::POST, path, Some(order.clone()), Some(key.clone()))
    };
    let sent = Instant::now();
    let r = checkout().await;
    timed(&d.checkout_us, sent, &r);
    match r {
        Ok(r) if r.status == 201 => s.order = serde_json::from_slice(&r.body).ok(),
        Ok(r) => s.problem = Some(format!("checkout: {} {}", r.status, String::from_utf8_lossy(&r.body))),
        Err(e) => s.problem = Some(format!("checkout: {e}")),
    }
    if s.order.is_some() && draw(i, 4) < a.key_retry {
        let again = checkout().await.ok().filter(|r| r.status == 201);
        let id = again.and_then(|r| serde_json::from_slice::<Value>(&r.body).ok()).map(|v| v["id"].clone());
        s.repeat_same = Some(id.is_some() && id == s.order.as_ref().map(|o| o["id"].clone()));
    }
    s
}

fn parse_ms(text: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

fn verify(d: &Drill, shoppers: &[Shopper], end: (u64, u64, u64)) -> Vec<Check> {
    let units = d.args.units;
    let mut checks = Vec::new();
    let mut check = |name, ok, detail: String| checks.push(Check { name, ok, detail });
    let reads = d.reads.lock();
    let bad = reads.iter().filter(|(a, r, s)| a + r + s != units).count();
    check("units_conserved", bad == 0 && end.0 + end.1 + end.2 == units, format!(
        "{} reads while the sale ran and one at the end, each available + reserved + sold = {units}; {bad} did not",
        reads.len()
    ));
    let problems: Vec<&String> = shoppers.iter().filter_map(|s| s.problem.as_ref()).collect();
    check(
        "every_answer_expected",
        problems.is_empty(),
        format!("{} unexpected answers, first: {:?}", problems.len(), problems.first()),
    );
    let holders = shoppers.iter().filter(|s| s.held_until.is_some() && !s.abandoned).count();
    let wrong: Vec<String> = (shoppers.iter().filter_map(|s| s.order.as_ref().map(|o| (s, o))))
        .filter(|(s, o)| {
            o["items"] != json!([{"sku": d.args.sku, "qty": s.qty, "unit_price": 1_999}])
                || o["amount"] != json!(1_999 * u64::from(s.qty))
        })
        .map(|(_, o)| o.to_string())
        .collect();
    let ordered = shoppers.iter().filter(|s| s.order.is_some()).count();
    check("every_holder_got_their_units", ordered == holders && wrong.is_empty(), format!(
        "{holders} shoppers held units at checkout, {ordered} got an order of their cart; {} orders differ from their cart{}",
        wrong.len(), wrong.first().map(|w| format!(" (first: {w})")).unwrap_or_default()
    ));
    let repeats = shoppers.iter().filter_map(|s| s.repeat_same).collect::<Vec<_>>();
    check(
        "a_repeated_checkout_returns_the_order",
        repeats.iter().all(|r| *r),
        format!(
            "{} checkouts sent again with their key, {} returned the same order",
            repeats.len(),
            repeats.iter().filter(|r| **r).count()
        ),
    );
    let ordered_units: u64 = shoppers.iter().filter(|s| s.order.is_some()).map(|s| u64::from(s.qty)).sum();
    let abandoned_units: u64 = shoppers.iter().filter(|s| s.abandoned).map(|s| u64::from(s.qty)).sum();
    check("abandoned_holds_returned_by_their_deadline", end.1 == ordered_units && end.0 == units - ordered_units, format!(
        "after the last abandoned hold's deadline: {} reserved (the orders hold {ordered_units}), {} available ({abandoned_units} units of abandoned carts returned)",
        end.1, end.0
    ));
    // Units given to shoppers at once, by the server's own times: each hold from when it was taken
    // (its deadline less the hold) until, unless it became an order's (which stays), its deadline (at
    // the earliest) or its deadline and the return time (at the latest).
    let hold_ms = d.args.hold_ms;
    let held: Vec<(u64, Option<u64>, u64)> = (shoppers.iter())
        .filter_map(|s| {
            s.held_until
                .map(|u| (u.saturating_sub(hold_ms), s.order.is_none().then_some(u), u64::from(s.qty)))
        })
        .collect();
    let taken_at = |t: u64, slack: u64| -> u64 {
        let live = held.iter().filter(|(from, until, _)| *from <= t && until.is_none_or(|u| u + slack > t));
        live.map(|(_, _, qty)| *qty).sum()
    };
    let most = held.iter().map(|(from, _, _)| taken_at(*from, 0)).max().unwrap_or(0);
    check(
        "never_more_held_than_there_are",
        most <= units,
        format!(
            "at most {most} of {units} units were held in carts or ordered at once (by the holds' deadlines)"
        ),
    );
    // Everyone told sold out was told so while the units were taken: at some instant between their
    // add's sending and its answer, the holds then left fewer units than they asked for.
    let told = shoppers.iter().filter(|s| s.sold_out).count();
    let lies: Vec<String> = (shoppers.iter().filter(|s| s.sold_out))
        .filter(|s| {
            let events = held.iter().flat_map(|(from, until, _)| [Some(*from), until.map(|u| u + RETURN_MS)]);
            let within = events.flatten().filter(|t| (s.sent_at..=s.added_at).contains(t));
            let instants = std::iter::once(s.sent_at).chain(within);
            instants.map(|t| taken_at(t, RETURN_MS)).max().unwrap_or(0) + u64::from(s.qty) <= units
        })
        .map(|s| format!("{} unit(s) asked at {}", s.qty, s.sent_at))
        .collect();
    check(
        "sold_out_only_when_it_was",
        lies.is_empty(),
        format!(
            "{told} shoppers told sold out at the cart; {} of them while the holds left enough{}",
            lies.len(),
            lies.first().map(|l| format!(" (first: {l})")).unwrap_or_default()
        ),
    );
    checks
}
