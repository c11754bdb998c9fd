//! `holdfast-drill checkout`: the checkout saga rehearsed. Shoppers place orders (each with its
//! `Idempotency-Key`, resent when no reply comes), attach their payment's reference, and a payment
//! provider stand-in (`provider.rs`) decides each payment's fate at set rates: succeeded on time,
//! failed, succeeded after `pay_by` ("late"), succeeded with its webhook never sent ("lost": the
//! server's status fallback must find it), or never attempted (the shopper walked away). Some events
//! are delivered twice, some successes are followed by a stale `processing` event. Every event is a
//! real, signed webhook.
//!
//! At the end every order is read back and held against what its payment did (`verify`), with the
//! SKU's counters, the reservations of the orders, and the server's metrics. `--throughput-secs`
//! adds a closed-loop comparison on the same server: orders placed and paid by webhook per second
//! against plain reserve + commit.

use crate::client::{Client, Reply};
use crate::compare::HttpConn;
use crate::provider::{self, Provider};
use crate::verify::Check;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct CheckoutArgs {
    /// A running server. It must know --webhook-secret, and its --payment-status-url must point at
    /// --provider-listen. Unset: this build's holdfast is started on a loopback port, configured so.
    #[arg(long)]
    target: Option<String>,
    /// Where the provider stand-in answers the status fallback (`GET /v1/payment_intents/{ref}`).
    #[arg(long, default_value = "127.0.0.1:0")]
    provider_listen: SocketAddr,
    /// The secret webhooks are signed with (the server's --webhook-secret).
    #[arg(long, default_value = "whsec_holdfast_drill_0123456789")]
    #[serde(skip)]
    webhook_secret: String,
    /// Shoppers who place an order (0: the throughput comparison alone).
    #[arg(long, default_value_t = 2_000)]
    users: u64,
    /// Units of the SKU on sale, set as its stock before the drill.
    #[arg(long, default_value_t = 200)]
    units: u64,
    /// The SKU on sale.
    #[arg(long, default_value = "checkout-sku")]
    sku: String,
    /// Shoppers arrive evenly over this many seconds.
    #[arg(long, default_value_t = 5.0)]
    arrival_secs: f64,
    /// Milliseconds of each order's payment window (the server's TTL bounds apply).
    #[arg(long, default_value_t = 4_000)]
    pay_within_ms: u64,
    /// The server's --payment-status-lead when the drill starts it.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "as_ms")]
    status_lead: Duration,
    /// Milliseconds of pause before attaching the payment and before paying (each drawn from half to
    /// 1.5 times it).
    #[arg(long, default_value_t = 300)]
    think_ms: u64,
    /// Attempts after an `insufficient_stock` refusal, `retry_ms` apart.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Milliseconds between those attempts.
    #[arg(long, default_value_t = 1_000)]
    retry_ms: u64,
    /// Payments that fail (card declined): the order must end cancelled (payment_failed).
    #[arg(long, default_value_t = 0.10)]
    failed_rate: f64,
    /// Payments that succeed after pay_by: the order ends paid (rebooked) or refund_due.
    #[arg(long, default_value_t = 0.05)]
    late_rate: f64,
    /// Successes whose webhook is never sent: the status fallback must settle them (paid).
    #[arg(long, default_value_t = 0.02)]
    lost_rate: f64,
    /// Shoppers who never pay: their order must end cancelled (expired).
    #[arg(long, default_value_t = 0.03)]
    abandon_rate: f64,
    /// Events delivered twice (half of them at once): the second must change nothing.
    #[arg(long, default_value_t = 0.05)]
    duplicate_rate: f64,
    /// Successes followed by a stale `processing` event: it must not move the order back.
    #[arg(long, default_value_t = 0.05)]
    reorder_rate: f64,
    /// Milliseconds after pay_by that late successes come, at most.
    #[arg(long, default_value_t = 1_500)]
    late_by_ms: u64,
    /// Shoppers who resend their placed order with its key: the same order must come back.
    #[arg(long, default_value_t = 0.05)]
    key_retry: f64,
    /// Milliseconds without a reply after which a request fails and its connection is dropped.
    #[arg(long, default_value_t = 5_000)]
    request_timeout_ms: u64,
    /// Keep-alive connections the shoppers share.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Seconds after which the drill stops whatever happens (0: arrival + payment windows + 60 s).
    #[arg(long, default_value_t = 0)]
    deadline_secs: u64,
    /// Where the report goes: DIR/checkout.json.
    #[arg(long, default_value = "checkout-report")]
    report: std::path::PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Seconds per round of the throughput comparison (0: none). `--users 0` runs it alone.
    #[arg(long, default_value_t = 0)]
    throughput_secs: u64,
    /// Rounds of the comparison (each runs every path once, alternating).
    #[arg(long, default_value_t = 2)]
    throughput_rounds: u32,
    /// Connections of the comparison, the same for every path.
    #[arg(long, default_value_t = 32)]
    throughput_connections: usize,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

const ROUTES: [&str; 4] = ["order", "attach", "webhook", "read"];
const ORDER: usize = 0;
const ATTACH: usize = 1;
const WEBHOOK: usize = 2;
const READ: usize = 3;
const UNIT_PRICE: u64 = 1_999;
const CURRENCY: &str = "usd";

/// What the provider does with a shopper's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Succeeded before pay_by, its webhook sent.
    Paid,
    Failed,
    /// Succeeded after pay_by.
    Late,
    /// Succeeded before pay_by; the webhook is never sent.
    Lost,
    /// Never attempted: no reference attached, nothing paid.
    Abandoned,
}

/// One webhook delivery and the server's answer (`None`: none after the provider's retries).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: String,
    pub kind: &'static str,
    /// Unix ms when it was first sent.
    pub sent_ms: u64,
    /// HTTP status, then the body's `status` and `code`.
    pub answer: Option<(u16, String, String)>,
}

/// An order a shopper was given (201), and what its payment did.
#[derive(Debug, Clone)]
pub struct Placed {
    pub id: String,
    pub pay_by_ms: u64,
    pub fate: Fate,
    pub duplicated: bool,
    pub reordered: bool,
    pub deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone, Default)]
pub struct Shopper {
    pub order: Option<Placed>,
    /// Every attempt found no unit available.
    pub no_stock: bool,
    pub errors: Vec<String>,
    /// Still going at the drill's deadline.
    pub deadline: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

struct Stats {
    latency: Vec<Mutex<Histogram<u64>>>,
    statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Requests with no reply (each attempt).
    unanswered: AtomicU64,
    placed: AtomicU64,
    delivered: AtomicU64,
    done: AtomicU64,
}

struct Drill {
    args: CheckoutArgs,
    client: Client,
    provider: Arc<Provider>,
    pacer: crate::pacer::Pacer,
    stats: Stats,
    /// Ids unique to this run (keys, references, events).
    run: String,
    start: Instant,
    deadline: Instant,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn parse_time(v: &Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

/// A shopper's own uniform draw in [0, 1) for `what`: the same drill makes the same choices.
fn draw(i: u64, what: u64) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), what ^ 0xc0ffee);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl CheckoutArgs {
    fn check(&self) -> anyhow::Result<()> {
        let rates = [
            self.failed_rate,
            self.late_rate,
            self.lost_rate,
            self.abandon_rate,
            self.duplicate_rate,
            self.reorder_rate,
            self.key_retry,
        ];
        anyhow::ensure!(rates.iter().all(|r| (0.0..=1.0).contains(r)), "rates are probabilities");
        anyhow::ensure!(
            self.failed_rate + self.late_rate + self.lost_rate + self.abandon_rate <= 1.0,
            "failed, late, lost and abandon rates add up to at most 1"
        );
        anyhow::ensure!(self.users <= 10_000_000, "users: at most 10,000,000");
        anyhow::ensure!(self.units >= 1 && self.connections >= 1, "units and connections: at least 1");
        anyhow::ensure!(
            self.think_ms * 3 < self.pay_within_ms.saturating_sub(self.status_lead.as_millis() as u64),
            "think_ms × 3 must stay under pay_within_ms − status_lead: on-time payments happen before \
             the status fallback asks"
        );
        Ok(())
    }

    fn fate(&self, i: u64) -> Fate {
        let d = draw(i, 1);
        let mut edge = self.failed_rate;
        for (rate, fate) in [
            (0.0, Fate::Failed),
            (self.late_rate, Fate::Late),
            (self.lost_rate, Fate::Lost),
            (self.abandon_rate, Fate::Abandoned),
        ] {
            edge += rate;
            if d < edge {
                return fate;
            }
        }
        Fate::Paid
    }

    fn deadline(&self) -> Duration {
        match self.deadline_secs {
            0 => Duration::from_secs_f64(
                self.arrival_secs
                    + (self.pay_within_ms + self.late_by_ms + self.retry_ms * u64::from(self.retries)) as f64
                        / 1000.0
                    + 60.0,
            ),
            n => Duration::from_secs(n),
        }
    }
}

pub fn checkout(args: &CheckoutArgs) -> anyhow::Result<bool> {
    args.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: &CheckoutArgs) -> anyhow::Result<bool> {
    let provider = Provider::start(args.provider_listen, &args.webhook_secret).await?;
    // The server: given, or started here pointed at the provider.
    let mut _server: Option<Scratch> = None;
    let addr = match &args.target {
        Some(target) => crate::address(target)?,
        None => {
            let scratch = std::env::temp_dir().join(format!("holdfast-checkout-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch)?;
            let flags = [
                "--webhook-secret".to_owned(),
                args.webhook_secret.clone(),
                "--payment-status-url".to_owned(),
                provider.status_url(),
                "--payment-status-lead".to_owned(),
                format!("{}ms", args.status_lead.as_millis()),
                "--order-pending-extension".to_owned(),
                "2s".to_owned(),
            ];
            let server = crate::servers::holdfast_with(&scratch, &flags)?;
            let addr = server.addr;
            _server = Some(Scratch(Some(server), scratch));
            addr
        }
    };
    let target = format!("http://{addr}");
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let client = Client::new(addr, args.connections, timeout);
    let mut report = json!({
        "target": target,
        "provider_status_url": provider.status_url(),
        "scenario": args,
        "machine": crate::servers::machine(),
    });
    let mut passed = true;
    if args.users > 0 {
        let (ok, drill) = drill(args, client, provider.clone()).await?;
        passed &= ok;
        report["drill"] = drill;
    }
    if args.throughput_secs > 0 {
        report["throughput"] = throughput(addr, args).await?;
    }
    report["verification_passed"] = json!(passed);
    std::fs::create_dir_all(&args.report)?;
    std::fs::write(args.report.join("checkout.json"), serde_json::to_string_pretty(&report)?)?;
    summary(&report);
    Ok(passed)
}

/// The server started here and its scratch directory, both gone when dropped.
pub(crate) struct Scratch(Option<crate::servers::Server>, std::path::PathBuf);

impl Scratch {
    pub(crate) fn new(server: crate::servers::Server, dir: std::path::PathBuf) -> Scratch {
        Scratch(Some(server), dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.0.take());
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

async fn drill(
    args: &CheckoutArgs,
    client: Client,
    provider: Arc<Provider>,
) -> anyhow::Result<(bool, Value)> {
    ready(&client).await?;
    let stock = client.put(format!("/v1/skus/{}", args.sku), format!(r#"{{"on_hand":{}}}"#, args.units));
    let stock = stock.await.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(stock.status == 200, "creating the stock: {} {:?}", stock.status, stock.body);
    let start = Instant::now();
    let d = Arc::new(Drill {
        args: args.clone(),
        client,
        provider,
        pacer: crate::pacer::Pacer::new(),
        stats: Stats {
            latency: ROUTES.iter().map(|_| Mutex::new(histogram())).collect(),
            statuses: Mutex::default(),
            unanswered: AtomicU64::new(0),
            placed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            done: AtomicU64::new(0),
        },
        run: format!("{:x}", unix_ms()),
        start,
        deadline: start + args.deadline(),
    });
    let progress = tokio::spawn(d.clone().progress());
    let tasks: Vec<_> = (0..args.users).map(|i| tokio::spawn(d.clone().shopper(i))).collect();
    let mut shoppers = Vec::with_capacity(tasks.len());
    for t in tasks {
        shoppers.push(t.await?);
    }
    let wall = start.elapsed().as_secs_f64();
    progress.abort();
    let end = d.end_state(&shoppers).await;
    let checks = verify(&d.args, d.stats.unanswered.load(Relaxed), &shoppers, &end);
    let passed = checks.iter().all(|c| c.ok);
    for c in checks.iter().filter(|c| !c.ok) {
        eprintln!("VERIFICATION FAILED: {}: {}", c.name, c.detail);
    }
    Ok((passed, d.report(&shoppers, &end, &checks, wall)))
}

/// Waits (30 s at most) for the server to be ready.
async fn ready(client: &Client) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get("/readyz".into()).await {
            Ok(reply) if reply.status == 200 => return Ok(()),
            _ if Instant::now() > until => anyhow::bail!("the server is not ready within 30 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Drill {
    /// Sends a request, up to three times while no reply comes (a checkout service's retry on
    /// timeout: keyed or idempotent requests only), and records it.
    async fn call(
        &self,
        route: usize,
        method: hyper::Method,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
        headers: impl Fn() -> Vec<(&'static str, String)>,
    ) -> Option<Reply> {
        for _ in 0..3 {
            let sent = Instant::now();
            let call = self.client.call_with(
                method.clone(),
                path.to_owned(),
                body.map(str::to_owned),
                key.map(str::to_owned),
                headers(),
            );
            match call.await {
                Ok(reply) if reply.status != 503 => {
                    let micros = sent.elapsed().as_micros().max(1) as u64;
                    self.stats.latency[route].lock().saturating_record(micros);
                    *self.stats.statuses.lock().entry((ROUTES[route], reply.status)).or_default() += 1;
                    return Some(reply);
                }
                Ok(reply) => {
                    *self.stats.statuses.lock().entry((ROUTES[route], reply.status)).or_default() += 1;
                }
                Err(_) => {
                    self.stats.unanswered.fetch_add(1, Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    async fn shopper(self: Arc<Self>, i: u64) -> Shopper {
        let mut me = Shopper::default();
        let visit = tokio::time::timeout_at(self.deadline.into(), self.visit(i, &mut me)).await;
        me.deadline = visit.is_err();
        self.stats.done.fetch_add(1, Relaxed);
        me
    }

    async fn think(&self, i: u64, what: u64) {
        let ms = self.args.think_ms as f64 * (0.5 + draw(i, what));
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }

    async fn visit(&self, i: u64, me: &mut Shopper) {
        let a = &self.args;
        let arrive = self.start + Duration::from_secs_f64(a.arrival_secs * i as f64 / a.users.max(1) as f64);
        self.pacer.until(arrive).await;
        let key = format!("co-{}-{i}", self.run);
        let body = json!({
            "user_id": format!("shopper-{i}"),
            "items": [{"sku": a.sku, "qty": 1, "unit_price": UNIT_PRICE}],
            "currency": CURRENCY,
            "pay_within_ms": a.pay_within_ms,
        })
        .to_string();
        let mut attempt = 0;
        let placed = loop {
            let reply =
                self.call(ORDER, hyper::Method::POST, "/v1/orders", Some(&body), Some(&key), Vec::new).await;
            let Some(reply) = reply else {
                me.errors.push("order: no reply after 3 attempts with its key".into());
                return;
            };
            let v = json_of(&reply);
            match (reply.status, v["code"].as_str()) {
                (201, _) => break v,
                (409, Some("insufficient_stock")) if attempt < a.retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(a.retry_ms)).await;
                }
                (409, Some("insufficient_stock")) => {
                    me.no_stock = true;
                    return;
                }
                (status, _) => {
                    me.errors.push(format!("order: {status} {v}"));
                    return;
                }
            }
        };
        self.stats.placed.fetch_add(1, Relaxed);
        let id = placed["id"].as_str().unwrap_or_default().to_owned();
        let fate = a.fate(i);
        me.order = Some(Placed {
            id: id.clone(),
            pay_by_ms: parse_time(&placed["pay_by"]).unwrap_or(0),
            fate,
            duplicated: fate != Fate::Lost && fate != Fate::Abandoned && draw(i, 2) < a.duplicate_rate,
            reordered: fate == Fate::Paid && draw(i, 3) < a.reorder_rate,
            deliveries: Vec::new(),
        });
        if id.is_empty() || placed["state"] != "awaiting_payment" || placed["amount"] != UNIT_PRICE {
            me.errors.push(format!("order: 201 {placed}"));
            return;
        }
        if draw(i, 4) < a.key_retry {
            let again =
                self.call(ORDER, hyper::Method::POST, "/v1/orders", Some(&body), Some(&key), Vec::new).await;
            match again.map(|r| (r.status, json_of(&r))) {
                Some((201, v)) if v["id"] == id.as_str() => {}
                other => me.errors.push(format!("order resent with its key: {other:?}, expected {id}")),
            }
        }
        if fate == Fate::Abandoned {
            return;
        }
        let reference = format!("pi_{}_{i}", self.run);
        self.think(i, 5).await;
        if fate == Fate::Late {
            // The customer pays after the window: the reference comes with the success.
            let pay_by = me.order.as_ref().map_or(0, |o| o.pay_by_ms);
            let late = (a.late_by_ms as f64 * (0.2 + 0.8 * draw(i, 6))) as u64;
            let wait = (pay_by + late).saturating_sub(unix_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.provider.open(&reference, &id, UNIT_PRICE, CURRENCY);
            self.provider.settle(&reference, true);
            self.deliver(i, "payment_intent.succeeded", &reference, me).await;
            return;
        }
        self.provider.open(&reference, &id, UNIT_PRICE, CURRENCY);
        let attach = json!({"provider_ref": reference}).to_string();
        let path = format!("/v1/orders/{id}/payment");
        match self.call(ATTACH, hyper::Method::POST, &path, Some(&attach), None, Vec::new).await {
            Some(r) if r.status == 200 && json_of(&r)["provider_ref"] == reference.as_str() => {}
            Some(r) => {
                me.errors.push(format!("attach: {} {}", r.status, json_of(&r)));
                return;
            }
            None => {
                me.errors.push("attach: no reply after 3 attempts".into());
                return;
            }
        }
        self.think(i, 7).await;
        match fate {
            Fate::Paid => {
                self.provider.settle(&reference, true);
                self.deliver(i, "payment_intent.succeeded", &reference, me).await;
                if me.order.as_ref().is_some_and(|o| o.reordered) {
                    self.deliver(i, "payment_intent.processing", &reference, me).await;
                }
            }
            Fate::Failed => {
                self.provider.settle(&reference, false);
                self.deliver(i, "payment_intent.payment_failed", &reference, me).await;
            }
            // Paid, and the provider never tells: the status fallback must ask.
            Fate::Lost => self.provider.settle(&reference, true),
            Fate::Late | Fate::Abandoned => unreachable!("handled above"),
        }
    }

    /// Sends an event as the provider does (re-signed on each retry, the same event id), twice for
    /// a duplicated order (at once for half of them).
    async fn deliver(&self, i: u64, kind: &'static str, reference: &str, me: &mut Shopper) {
        let order = me.order.as_mut().expect("an order to pay");
        let event = format!("evt_{}_{i}_{}", self.run, order.deliveries.len());
        let duplicated = order.duplicated && kind != "payment_intent.processing";
        let copies = if duplicated && draw(i, 8) < 0.5 { 2 } else { 1 };
        let once = || async {
            let sent_ms = unix_ms();
            let signed = || {
                let (body, header) = self.provider.event(&event, kind, reference);
                (body, vec![("stripe-signature", header)])
            };
            let (body, _) = signed();
            let reply = self
                .call(WEBHOOK, hyper::Method::POST, "/v1/webhooks/payments", Some(&body), None, || signed().1)
                .await;
            self.stats.delivered.fetch_add(1, Relaxed);
            let answer = reply.map(|r| {
                let v = json_of(&r);
                let word = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                (r.status, word("status"), word("code"))
            });
            Delivery { event: event.clone(), kind, sent_ms, answer }
        };
        let mut made: Vec<Delivery> = futures_util::future::join_all((0..copies).map(|_| once())).await;
        if duplicated && copies == 1 {
            made.push(once().await);
        }
        for d in &made {
            match &d.answer {
                Some((200, _, _)) => {}
                other => me.errors.push(format!("webhook {} {kind}: {other:?}", d.event)),
            }
        }
        me.order.as_mut().expect("an order to pay").deliveries.extend(made);
    }

    async fn progress(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if !self.args.quiet {
                let s = &self.stats;
                eprintln!(
                    "{:>4}s  done {:>7} of {}  orders {:>6}  webhooks {:>6}  unanswered {}",
                    self.start.elapsed().as_secs(),
                    s.done.load(Relaxed),
                    self.args.users,
                    s.placed.load(Relaxed),
                    s.delivered.load(Relaxed),
                    s.unanswered.load(Relaxed),
                );
            }
        }
    }

    async fn read(&self, path: String) -> Option<Value> {
        match self.call(READ, hyper::Method::GET, &path, None, None, Vec::new).await {
            Some(r) if r.status == 200 => Some(json_of(&r)),
            _ => None,
        }
    }

    /// Once the last pay_by (and late payment) has passed: every order, read until none is open
    /// (10 s at most), the reservation each ended with, the SKU and the server's metrics.
    async fn end_state(&self, shoppers: &[Shopper]) -> EndState {
        let orders: Vec<&Placed> = shoppers.iter().filter_map(|s| s.order.as_ref()).collect();
        let last = orders.iter().map(|o| o.pay_by_ms).max().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis((last + 500).saturating_sub(unix_ms()))).await;
        let mut states: HashMap<String, Option<Value>> = HashMap::new();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let pending: Vec<&str> = (orders.iter().map(|o| o.id.as_str()))
                .filter(|id| states.get(*id).is_none_or(|v| v.as_ref().is_none_or(open)))
                .collect();
            let reads = pending
                .iter()
                .map(|id| async move { (id.to_string(), self.read(format!("/v1/orders/{id}")).await) });
            states.extend(futures_util::future::join_all(reads).await);
            let still = states.values().filter(|v| v.as_ref().is_some_and(open)).count();
            if still == 0 || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let reservations =
            states.values().flatten().filter_map(|o| o["reservation_id"].as_str()).map(|r| async move {
                let state = self.read(format!("/v1/reservations/{r}")).await;
                (r.to_owned(), state.and_then(|v| v["state"].as_str().map(str::to_owned)))
            });
        let reservations = futures_util::future::join_all(reservations).await.into_iter().collect();
        let stock = self.read(format!("/v1/skus/{}", self.args.sku)).await.unwrap_or(Value::Null);
        let metrics = match self.client.get("/metrics".into()).await {
            Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).into_owned(),
            _ => String::new(),
        };
        EndState { orders: states, reservations, stock, metrics }
    }

    fn report(&self, shoppers: &[Shopper], end: &EndState, checks: &[Check], wall: f64) -> Value {
        let mut routes = serde_json::Map::new();
        for (r, name) in ROUTES.iter().enumerate() {
            let h = self.stats.latency[r].lock();
            let q = |q: f64| (h.value_at_quantile(q) as f64 / 1000.0 * 1000.0).round() / 1000.0;
            let statuses: BTreeMap<String, u64> = (self.stats.statuses.lock().iter())
                .filter(|((route, _), _)| route == name)
                .map(|((_, status), n)| (status.to_string(), *n))
                .collect();
            routes.insert(
                name.to_string(),
                json!({"count": h.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": h.max() as f64 / 1000.0, "statuses": statuses}),
            );
        }
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_fate: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut lag = histogram();
        for o in shoppers.iter().filter_map(|s| s.order.as_ref()) {
            let label = end.orders.get(&o.id).cloned().flatten().map_or("unread".into(), |v| state_label(&v));
            *by_state.entry(label.clone()).or_default() += 1;
            let fate = serde_json::to_value(o.fate).ok().and_then(|v| v.as_str().map(str::to_owned));
            *by_fate.entry(fate.unwrap_or_default()).or_default().entry(label).or_default() += 1;
            if let Some(ms) = end.orders.get(&o.id).cloned().flatten().and_then(|v| cancel_lag_ms(&v)) {
                lag.saturating_record(ms.max(1));
            }
        }
        let m = Metrics(&end.metrics);
        let webhooks: BTreeMap<String, f64> = m.labelled("holdfast_payment_webhooks_total", "outcome");
        json!({
            "wall_secs": (wall * 10.0).round() / 10.0,
            "shoppers": {
                "users": self.args.users,
                "placed_an_order": shoppers.iter().filter(|s| s.order.is_some()).count(),
                "no_stock": shoppers.iter().filter(|s| s.no_stock).count(),
                "with_errors": shoppers.iter().filter(|s| !s.errors.is_empty()).count(),
                "at_deadline": shoppers.iter().filter(|s| s.deadline).count(),
            },
            "orders_by_state": by_state,
            "orders_by_fate_and_state": by_fate,
            "cancel_lag": {
                "server_histogram": {
                    "count": m.value("holdfast_order_cancel_lag_seconds_count"),
                    "p99_at_most_s": m.histogram_quantile("holdfast_order_cancel_lag_seconds", 0.99),
                    "sum_s": m.value("holdfast_order_cancel_lag_seconds_sum"),
                },
                "from_history_ms": {"count": lag.len(), "p50": lag.value_at_quantile(0.5), "p99": lag.value_at_quantile(0.99), "max": lag.max()},
            },
            "status_fallback": {
                "settled_metric": m.value("holdfast_orders_settled_by_status_check_total"),
                "checks_failed_metric": m.value("holdfast_payment_status_checks_failed_total"),
                "questions_answered_by_provider": self.provider.asked.load(Relaxed),
                "lost_webhooks": shoppers.iter().filter_map(|s| s.order.as_ref()).filter(|o| o.fate == Fate::Lost).count(),
            },
            "webhooks": {
                "sent": shoppers.iter().filter_map(|s| s.order.as_ref()).map(|o| o.deliveries.len()).sum::<usize>(),
                "server_outcomes": webhooks,
            },
            "routes": routes,
            "stock_at_end": end.stock,
            "verification": {
                "passed": checks.iter().all(|c| c.ok),
                "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
            },
        })
    }
}

fn open(order: &Value) -> bool {
    matches!(order["state"].as_str(), Some("awaiting_payment" | "payment_pending"))
}

/// `paid`, `cancelled:payment_failed`, …
fn state_label(order: &Value) -> String {
    let state = order["state"].as_str().unwrap_or("?");
    match order["cause"].as_str() {
        Some(cause) => format!("{state}:{cause}"),
        None => state.to_owned(),
    }
}

/// The order's history: (state, cause, at ms) in order.
fn history(order: &Value) -> Vec<(String, String, u64)> {
    let items = order["history"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .map(|t| {
            let word = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (word("state"), word("cause"), parse_time(&t["at"]).unwrap_or(0))
        })
        .collect()
}

/// From pay_by to the cancellation `pay_by` made, for an order cancelled so.
fn cancel_lag_ms(order: &Value) -> Option<u64> {
    let pay_by = parse_time(&order["pay_by"])?;
    let h = history(order);
    let (_, _, at) = h.iter().find(|(state, cause, _)| state == "cancelled" && cause == "pay_by")?;
    Some(at.saturating_sub(pay_by))
}

/// The server's word at the end.
pub struct EndState {
    /// Each order by id (`None`: no answer).
    pub orders: HashMap<String, Option<Value>>,
    /// Each order's (last) reservation and its state.
    pub reservations: HashMap<String, Option<String>>,
    pub stock: Value,
    /// The Prometheus text of /metrics.
    pub metrics: String,
}

/// Reads Prometheus text.
struct Metrics<'a>(&'a str);

impl Metrics<'_> {
    fn lines(&self, name: &str) -> impl Iterator<Item = (&str, f64)> + '_ {
        let name = name.to_owned();
        self.0.lines().filter_map(move |l| {
            let rest = l.strip_prefix(name.as_str())?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.trim(), value.parse().ok()?))
        })
    }

    fn value(&self, name: &str) -> Option<f64> {
        self.lines(name).find(|(labels, _)| labels.is_empty()).map(|(_, v)| v)
    }

    fn labelled(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{label}=\"");
        self.lines(name)
            .filter_map(|(labels, v)| {
                let start = labels.find(&prefix)? + prefix.len();
                let end = labels[start..].find('"')? + start;
                Some((labels[start..end].to_owned(), v))
            })
            .collect()
    }

    /// The upper bound of the bucket the `q` quantile falls in (seconds).
    fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        let count = self.value(&format!("{name}_count"))?;
        if count == 0.0 {
            return None;
        }
        let mut buckets: Vec<(f64, f64)> = self
            .labelled(&format!("{name}_bucket"), "le")
            .into_iter()
            .map(|(le, n)| {
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) }, n)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets.into_iter().find(|(_, n)| *n >= q * count).map(|(le, _)| le)
    }
}

/// What each order's end must be, given what its payment did, and what a delivery's answer says.
fn expected(o: &Placed) -> (&'static [&'static str], &'static str) {
    // A payment sent this close to pay_by may be decided after it: paid late (rebooked) or refund_due.
    let near = o.deliveries.first().is_some_and(|d| d.sent_ms + 250 >= o.pay_by_ms);
    match o.fate {
        Fate::Paid if near => (&["paid", "refund_due"], "succeeded near pay_by"),
        Fate::Paid => (&["paid"], "succeeded on time"),
        Fate::Failed if near => (&["cancelled:payment_failed", "cancelled:expired"], "failed near pay_by"),
        Fate::Failed => (&["cancelled:payment_failed"], "failed"),
        Fate::Lost => (&["paid"], "succeeded, its webhook lost"),
        Fate::Late => (&["paid", "refund_due"], "succeeded after pay_by"),
        Fate::Abandoned => (&["cancelled:expired"], "never paid"),
    }
}

/// The checkout drill's verdict: every order ended, as its payment says it must; units conserved
/// and sold only to paid orders; no event had a second effect; every effect acknowledged is in the
/// order's history.
pub fn verify(a: &CheckoutArgs, unanswered: u64, shoppers: &[Shopper], end: &EndState) -> Vec<Check> {
    let check = |name, ok, detail| Check { name, ok, detail };
    let orders: Vec<&Placed> = shoppers.iter().filter_map(|s| s.order.as_ref()).collect();
    let read = |o: &Placed| end.orders.get(&o.id).cloned().flatten();
    let (mut unread, mut still_open, mut wrong, mut twice, mut unlogged, mut backwards) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut paid_units, mut committed_units, mut uncommitted_paid) = (0u64, 0u64, Vec::new());
    for o in &orders {
        let Some(v) = read(o) else {
            unread.push(o.id.clone());
            continue;
        };
        let label = state_label(&v);
        let h = history(&v);
        if open(&v) {
            still_open.push(format!("{} {label}", o.id));
            continue;
        }
        let (allowed, why) = expected(o);
        let mut right = allowed.contains(&label.as_str());
        // How it got there: the fallback for a lost webhook; a cancellation at pay_by first for a late one.
        if o.fate == Fate::Lost {
            right &= h.iter().any(|(s, c, _)| s == "paid" && c == "status_check");
        }
        if o.fate == Fate::Late {
            right &= h.iter().any(|(s, c, _)| s == "cancelled" && c == "pay_by");
        }
        if !right {
            wrong.push(format!("{} ({why}): {label}, history {h:?}", o.id));
        }
        // No second effect: at most one paid and one cancellation, and of each event at most one applied.
        let paid = h.iter().filter(|(s, _, _)| s == "paid").count();
        let cancelled = h.iter().filter(|(s, _, _)| s == "cancelled").count();
        let mut applied: HashMap<&str, usize> = HashMap::new();
        for d in &o.deliveries {
            if d.answer.as_ref().is_some_and(|(_, status, _)| status == "applied") {
                *applied.entry(&d.event).or_default() += 1;
            }
        }
        if paid > 1 || cancelled > 1 || applied.values().any(|n| *n > 1) {
            twice.push(format!("{}: history {h:?}, applied {applied:?}", o.id));
        }
        // What the server acknowledged as applied is in the order's history, caused by a webhook.
        for d in &o.deliveries {
            if let Some((_, status, code)) = &d.answer {
                let logged = h.iter().any(|(s, c, _)| s == code && (c == "webhook" || c == "late_payment"));
                if status == "applied" && !logged {
                    unlogged.push(format!("{} {} answered applied {code}; history {h:?}", o.id, d.event));
                }
                if d.kind == "payment_intent.processing" && status == "applied" {
                    backwards.push(format!("{} moved by a stale processing event: {code}", o.id));
                }
            }
        }
        let reservation = v["reservation_id"].as_str().unwrap_or_default();
        let committed = end.reservations.get(reservation).cloned().flatten();
        if committed.as_deref() == Some("committed") {
            committed_units += 1;
        }
        if label == "paid" {
            paid_units += 1;
            if committed.as_deref() != Some("committed") {
                uncommitted_paid
                    .push(format!("{} paid, its reservation {reservation} reads {committed:?}", o.id));
            }
        }
    }
    let n = |k: &str| end.stock[k].as_u64().unwrap_or(u64::MAX);
    let (on_hand, available, reserved, sold) = (n("on_hand"), n("available"), n("reserved"), n("sold"));
    let first = |v: &Vec<String>| v.iter().take(3).cloned().collect::<Vec<_>>();
    let surprised: Vec<&String> = shoppers.iter().flat_map(|s| &s.errors).take(5).collect();
    let surprised_n = shoppers.iter().filter(|s| !s.errors.is_empty()).count();
    let deadline = shoppers.iter().filter(|s| s.deadline).count();
    let lost = orders.iter().filter(|o| o.fate == Fate::Lost).count() as f64;
    let settled = Metrics(&end.metrics).value("holdfast_orders_settled_by_status_check_total");
    vec![
        check(
            "every_order_read_back",
            unread.is_empty(),
            format!("{} of {} orders could not be read (first: {:?})", unread.len(), orders.len(), first(&unread)),
        ),
        check(
            "every_order_ended",
            still_open.is_empty(),
            format!("{} orders still open after their pay_by (first: {:?})", still_open.len(), first(&still_open)),
        ),
        check(
            "each_order_ended_as_its_payment_says",
            wrong.is_empty(),
            format!("{} orders ended otherwise (first: {:?})", wrong.len(), first(&wrong)),
        ),
        check(
            "conservation",
            available.checked_add(reserved).and_then(|x| x.checked_add(sold)) == Some(on_hand),
            format!("available {available} + reserved {reserved} + sold {sold} = on_hand {on_hand}?"),
        ),
        check(
            "no_oversell_nothing_left_reserved",
            on_hand == a.units && sold <= a.units && reserved == 0,
            format!("sold {sold} of {} units (on_hand {on_hand}), {reserved} still reserved", a.units),
        ),
        check(
            "paid_units_equal_sold_equal_committed",
            paid_units == sold && committed_units == sold && uncommitted_paid.is_empty(),
            format!(
                "paid orders hold {paid_units} units; the server sold {sold}; reservations read committed {committed_units} (first uncommitted: {:?})",
                first(&uncommitted_paid)
            ),
        ),
        check(
            "no_second_effect",
            twice.is_empty() && backwards.is_empty(),
            format!("{} orders moved twice (first: {:?}); stale events that moved one: {:?}", twice.len(), first(&twice), first(&backwards)),
        ),
        check(
            "applied_webhooks_are_in_the_history",
            unlogged.is_empty(),
            format!("{} webhooks answered applied that no transition shows (first: {:?})", unlogged.len(), first(&unlogged)),
        ),
        check(
            "lost_webhooks_settled_by_the_fallback",
            settled.is_some_and(|s| s >= lost),
            format!("{lost} webhooks lost; holdfast_orders_settled_by_status_check_total {settled:?}"),
        ),
        check(
            "every_answer_expected",
            surprised_n == 0 && unanswered == 0,
            format!("{unanswered} requests got no reply; {surprised_n} shoppers got an answer they did not expect; examples: {surprised:?}"),
        ),
        check(
            "finished_before_deadline",
            deadline == 0,
            format!("{deadline} shoppers still going at the deadline of {:?}", a.deadline()),
        ),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// Reserve, then commit: the two calls an order replaces.
    ReserveCommit,
    /// Place an order, then its signed `payment_intent.succeeded` webhook.
    OrderWebhook,
    /// The same with the payment reference attached in between.
    OrderAttachWebhook,
}

const PATHS: [(Path, &str); 3] = [
    (Path::ReserveCommit, "reserve+commit"),
    (Path::OrderWebhook, "order+webhook"),
    (Path::OrderAttachWebhook, "order+attach+webhook"),
];

/// Closed loop on `connections` connections for `secs`, alternating the paths `rounds` times on the
/// same server: operations per second and latency of each.
async fn throughput(addr: SocketAddr, a: &CheckoutArgs) -> anyhow::Result<Value> {
    let client = Client::new(addr, 2, Duration::from_secs(10));
    ready(&client).await?;
    for sku in ["tp-plain", "tp-order"] {
        let r = client.put(format!("/v1/skus/{sku}"), format!(r#"{{"on_hand":{}}}"#, 1u64 << 39)).await;
        anyhow::ensure!(r.as_ref().is_ok_and(|r| r.status == 200), "creating {sku}");
    }
    let run = format!("{:x}", unix_ms());
    let next = Arc::new(AtomicU64::new(0));
    let mut results: BTreeMap<&str, (u64, u64, f64, Histogram<u64>)> = BTreeMap::new();
    for _ in 0..a.throughput_rounds {
        for (path, name) in PATHS {
            let (ops, errors, secs, h) = closed_loop(addr, a, path, &run, &next).await?;
            let e = results.entry(name).or_insert_with(|| (0, 0, 0.0, histogram()));
            e.0 += ops;
            e.1 += errors;
            e.2 += secs;
            e.3.add(&h).expect("same bounds");
        }
    }
    let mut out = serde_json::Map::new();
    for (name, (ops, errors, secs, h)) in &results {
        out.insert(
            name.to_string(),
            json!({
                "ops": ops, "errors": errors, "ops_per_s": (*ops as f64 / secs).round(),
                "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            }),
        );
    }
    let rate = |n: &str| results.get(n).map_or(0.0, |r| r.0 as f64 / r.2);
    let plain = rate("reserve+commit");
    out.insert("cost_order_webhook_vs_reserve_commit".into(), json!(plain / rate("order+webhook")));
    out.insert(
        "cost_order_attach_webhook_vs_reserve_commit".into(),
        json!(plain / rate("order+attach+webhook")),
    );
    out.insert(
        "method".into(),
        json!(format!(
            "closed loop, {} connections, {} s per path per round, {} rounds alternating the paths on one server; cost = ops/s of reserve+commit ÷ ops/s of the path",
            a.throughput_connections, a.throughput_secs, a.throughput_rounds
        )),
    );
    Ok(Value::Object(out))
}

async fn closed_loop(
    addr: SocketAddr,
    a: &CheckoutArgs,
    path: Path,
    run: &str,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<(u64, u64, f64, Histogram<u64>)> {
    let started = Instant::now();
    let stop = started + Duration::from_secs(a.throughput_secs);
    let tasks: Vec<_> = (0..a.throughput_connections)
        .map(|_| {
            let (next, run, secret) = (next.clone(), run.to_owned(), a.webhook_secret.clone());
            tokio::spawn(async move {
                let mut conn = HttpConn::open(addr).await?;
                let (mut ops, mut errors, mut h) = (0u64, 0u64, histogram());
                while Instant::now() < stop {
                    let n = next.fetch_add(1, Relaxed);
                    let sent = Instant::now();
                    match one_op(&mut conn, path, &run, n, &secret).await {
                        Ok(()) => {
                            ops += 1;
                            h.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                        }
                        Err(e) => {
                            errors += 1;
                            if errors == 1 {
                                eprintln!("{path:?}: {e:#}");
                            }
                            conn = HttpConn::open(addr).await?;
                        }
                    }
                }
                anyhow::Ok((ops, errors, h))
            })
        })
        .collect();
    let (mut ops, mut errors, mut h) = (0, 0, histogram());
    for t in tasks {
        let (o, e, hh) = t.await??;
        ops += o;
        errors += e;
        h.add(&hh).expect("same bounds");
    }
    Ok((ops, errors, started.elapsed().as_secs_f64(), h))
}

async fn one_op(conn: &mut HttpConn, path: Path, run: &str, n: u64, secret: &str) -> anyhow::Result<()> {
    let key = format!("tp-{run}-{n}");
    let user = format!("tp-user-{}", n % 1000);
    if path == Path::ReserveCommit {
        let body =
            format!(r#"{{"items":[{{"sku":"tp-plain","qty":1}}],"ttl_ms":600000,"user_id":"{user}"}}"#);
        let (status, location, _) =
            conn.request("POST", "/v1/reservations", body, &[("idempotency-key", &key)]).await?;
        anyhow::ensure!(status == 201, "reserve answered {status}");
        let (status, _, _) = conn.request("POST", &format!("{location}/commit"), String::new(), &[]).await?;
        anyhow::ensure!(status == 200, "commit answered {status}");
        return Ok(());
    }
    let body = format!(
        r#"{{"user_id":"{user}","items":[{{"sku":"tp-order","qty":1,"unit_price":{UNIT_PRICE}}}],"currency":"usd","pay_within_ms":600000}}"#
    );
    let (status, location, _) =
        conn.request("POST", "/v1/orders", body, &[("idempotency-key", &key)]).await?;
    anyhow::ensure!(status == 201, "order answered {status}");
    let order = location.rsplit('/').next().unwrap_or_default().to_owned();
    let reference = format!("pi_tp_{run}_{n}");
    if path == Path::OrderAttachWebhook {
        let attach = format!(r#"{{"provider_ref":"{reference}"}}"#);
        let (status, _, _) = conn.request("POST", &format!("{location}/payment"), attach, &[]).await?;
        anyhow::ensure!(status == 200, "attach answered {status}");
    }
    let event = json!({
        "id": format!("evt_tp_{run}_{n}"), "type": "payment_intent.succeeded", "created": provider::unix_s(),
        "data": {"object": {"id": reference, "status": "succeeded", "amount": UNIT_PRICE, "currency": "usd",
            "metadata": {"order_id": order}}},
    })
    .to_string();
    let signature = provider::sign(secret.as_bytes(), provider::unix_s(), event.as_bytes());
    let (status, _, body) =
        conn.request("POST", "/v1/webhooks/payments", event, &[("stripe-signature", &signature)]).await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    anyhow::ensure!(status == 200 && v["code"] == "paid", "webhook answered {status} {v}");
    Ok(())
}

fn summary(r: &Value) {
    let d = &r["drill"];
    if !d.is_null() {
        println!(
            "checkout drill: {} shoppers, {} s; {}",
            d["shoppers"]["users"], d["wall_secs"], d["shoppers"]
        );
        println!("orders by state: {}", d["orders_by_state"]);
        println!("orders by fate: {}", d["orders_by_fate_and_state"]);
        let lag = &d["cancel_lag"];
        println!(
            "pay_by → cancellation: server histogram p99 ≤ {} s over {} cancellations; from the orders' history p50 {} ms, p99 {} ms, max {} ms",
            lag["server_histogram"]["p99_at_most_s"],
            lag["server_histogram"]["count"],
            lag["from_history_ms"]["p50"],
            lag["from_history_ms"]["p99"],
            lag["from_history_ms"]["max"]
        );
        println!("status fallback: {}", d["status_fallback"]);
        println!("webhooks: {}", d["webhooks"]);
        for route in ROUTES {
            let x = &d["routes"][route];
            println!(
                "{route:>8}: {:>7} requests  p50 {} ms  p99 {} ms  max {} ms  {}",
                x["count"], x["p50_ms"], x["p99_ms"], x["max_ms"], x["statuses"]
            );
        }
        let passed = d["verification"]["passed"].as_bool() == Some(true);
        println!("verification: {}", if passed { "passed" } else { "FAILED" });
    }
    let t = &r["throughput"];
    if !t.is_null() {
        for (_, name) in PATHS {
            let x = &t[name];
            println!(
                "{name:>22}: {:>7} ops/s  p50 {} ms  p99 {} ms  errors {}",
                x["ops_per_s"], x["p50_ms"], x["p99_ms"], x["errors"]
            );
        }
        println!(
            "cost vs reserve+commit: order+webhook {:.2}×, order+attach+webhook {:.2}×",
            t["cost_order_webhook_vs_reserve_commit"].as_f64().unwrap_or(f64::NAN),
            t["cost_order_attach_webhook_vs_reserve_commit"].as_f64().unwrap_or(f64::NAN)
        );
    }
}
