//! Running a drill: the sale and its stock made through the API, then every shopper on their own
//! schedule (open model: a shopper arrives on time whether or not the server keeps up), and latency
//! measured from when each request was meant to be sent, so a slow server cannot hide its queue
//! (coordinated omission): waiting for a free connection counts.

use crate::client::{Client, Reply};
use crate::scenario::Scenario;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const ROUTES: [&str; 5] = ["join", "poll", "reserve", "commit", "release"];

/// Who a request is from: admitted shoppers buying (reserve, commit, release) or the crowd waiting
/// (join, poll). Each has its own connections, as each shopper has their own in production: a buyer
/// never waits in the drill behind a stranger's poll, so the server is where the two meet.
pub const CLASSES: [&str; 2] = ["buyers", "crowd"];

pub fn class_of(route: usize) -> usize {
    usize::from(route <= 1)
}

/// How a shopper's visit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Bought,
    Released,
    /// Walked away from a hold, left to expire.
    Abandoned,
    /// Told by the waiting room that nothing is left.
    SoldOut,
    /// Admitted, but every attempt found no unit available.
    NoStock,
    /// Admitted, but the admission ran out before buying.
    SessionOver,
    Error,
    /// Still going when the drill's deadline came.
    Deadline,
}

/// What the server last told a shopper about one of its reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// 201, and nothing after it: left to expire (or not yet ended when the drill stopped).
    Held,
    Committed,
    Released,
    /// The commit came too late: 410.
    Expired,
    /// A commit or release got no reply: either outcome is possible.
    Unknown,
}

/// A reservation the server acknowledged to a shopper, and what it said of it since.
#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    pub told: Told,
    /// Server time (Unix ms) the hold runs out.
    pub expires_at_ms: u64,
}

/// The drill's own clock readings of a shopper's waiting (µs from the drill's start): when the
/// join was sent and its reply came, when the last poll that said "waiting" was sent, and when the
/// reply that said "admitted" came. They bound what the server did between them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clocks {
    pub join_sent_us: u64,
    pub join_answered_us: u64,
    pub last_waiting_sent_us: Option<u64>,
    pub admitted_answered_us: Option<u64>,
}

/// What one shopper saw, kept for the verification and the fairness figures.
#[derive(Debug, Clone, Default)]
pub struct Shopper {
    pub outcome: Option<Outcome>,
    /// Server times (Unix ms): when the queue took them, when they were admitted.
    pub joined_at_ms: Option<u64>,
    pub admitted_at_ms: Option<u64>,
    pub clocks: Clocks,
    /// Every reservation the server acknowledged, with what it said of it since.
    pub holds: Vec<Hold>,
    /// Units in reservations the server acknowledged (201), and of those, committed (200).
    pub reserved_units: u64,
    pub bought_units: u64,
    /// A greedy shopper's attempt past the limit, refused as it must be (`Some(true)`) or not.
    pub limit_refused: Option<bool>,
    /// Commits sent before their hold's deadline and refused 410 anyway: the hold ran out while the
    /// commit was on its way or waiting in the server. Each is (reservation, ms the commit was sent
    /// before the deadline).
    pub expired_in_flight: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

/// One second of the drill.
#[derive(Default, Clone)]
pub struct Second {
    pub requests: [u64; ROUTES.len()],
    pub errors: u64,
    /// Answers other than 2xx by (route, status), and requests with no answer (status 0).
    pub not_ok: BTreeMap<(usize, u16), u64>,
    /// Crowd requests the server shed (503 overloaded: the shopper retries after Retry-After), and
    /// crowd requests that got no answer in time (retried).
    pub shed: u64,
    pub unanswered_crowd: u64,
    /// Commits refused 410 though sent before their hold's deadline (see `Shopper::expired_in_flight`).
    pub expired_in_flight: u64,
    pub route_latency: [Option<Histogram<u64>>; ROUTES.len()],
    pub class_latency: [Option<Histogram<u64>>; CLASSES.len()],
    pub arrived: u64,
    pub waiting: u64,
    pub admitted: u64,
    pub done: u64,
    /// Whether the shoppers' counts and the server's side were sampled at the end of this second.
    pub sampled: bool,
    /// The server's side at the end of the second (`sample.rs`): the SKU's units and its own figures.
    pub stock: Value,
    pub server: Value,
}

pub struct Stats {
    pub latency: Vec<Mutex<Histogram<u64>>>,
    pub class_latency: [Mutex<Histogram<u64>>; CLASSES.len()],
    pub shed: AtomicU64,
    pub unanswered_crowd: AtomicU64,
    pub statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub timeline: Mutex<Vec<Second>>,
    pub arrived: AtomicU64,
    pub waiting: AtomicU64,
    pub admitted: AtomicU64,
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl Stats {
    fn new() -> Self {
        Stats {
            latency: ROUTES.iter().map(|_| Mutex::new(histogram())).collect(),
            class_latency: [Mutex::new(histogram()), Mutex::new(histogram())],
            shed: AtomicU64::new(0),
            unanswered_crowd: AtomicU64::new(0),
            statuses: Mutex::default(),
            timeline: Mutex::default(),
            arrived: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn second(&self, at: Instant, start: Instant) -> usize {
        at.saturating_duration_since(start).as_secs() as usize
    }

    /// Records a request meant to go at `intended`: its latency runs to when its reply reached the
    /// connection (or to now, for no reply).
    fn record(&self, route: usize, intended: Instant, start: Instant, reply: Option<&Reply>) {
        let now = reply.map_or_else(Instant::now, |r| r.received);
        let micros = now.saturating_duration_since(intended).as_micros().max(1) as u64;
        let mut timeline = self.timeline.lock();
        let s = self.second(now, start);
        if timeline.len() <= s {
            timeline.resize(s + 1, Second::default());
        }
        let second = &mut timeline[s];
        let class = class_of(route);
        match reply.map(|r| r.status) {
            Some(status) => {
                second.requests[route] += 1;
                second.route_latency[route].get_or_insert_with(histogram).saturating_record(micros);
                if !(200..300).contains(&status) {
                    *second.not_ok.entry((route, status)).or_default() += 1;
                }
                second.class_latency[class].get_or_insert_with(histogram).saturating_record(micros);
                // The crowd being shed is the server doing as it should: the shopper comes back.
                let shed = status == 503 && class == 1;
                second.shed += u64::from(shed);
                drop(timeline);
                self.latency[route].lock().saturating_record(micros);
                self.class_latency[class].lock().saturating_record(micros);
                *self.statuses.lock().entry((ROUTES[route], status)).or_default() += 1;
                if shed {
                    self.shed.fetch_add(1, Relaxed);
                } else if status >= 500 {
                    self.errors.fetch_add(1, Relaxed);
                }
            }
            // A waiting shopper whose join or poll got no answer tries again, as a waiting-room
            // page does (a join keeps the place already taken): counted, not a failure. A buyer's
            // unanswered call is one.
            None if class == 1 => {
                second.unanswered_crowd += 1;
                *second.not_ok.entry((route, 0)).or_default() += 1;
                drop(timeline);
                self.unanswered_crowd.fetch_add(1, Relaxed);
            }
            None => {
                second.errors += 1;
                *second.not_ok.entry((route, 0)).or_default() += 1;
                drop(timeline);
                self.errors.fetch_add(1, Relaxed);
            }
        }
    }
}

pub struct Drill {
    pub scenario: Scenario,
    /// The crowd's connections (joins, polls, and the drill's own setup and read-back).
    client: Client,
    /// Admitted shoppers' connections (reserve, commit, release).
    buyers: Client,
    pacer: crate::pacer::Pacer,
    pub stats: Stats,
    pub start: Instant,
    pub opening: Instant,
    pub opens_at_ms: u64,
    deadline: Instant,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

/// The hold a 201 to a reserve describes.
fn hold_of(v: &Value) -> Hold {
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    Hold { id, told: Told::Held, expires_at_ms: parse_time(&v["expires_at"]).unwrap_or(0) }
}

fn parse_time(v: &Value) -> Option<u64> {
    let t = humantime::parse_rfc3339(v.as_str()?).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

impl Drill {
    /// Creates the drill's stock and sale on the server (opening `opens_in_ms` from now).
    pub async fn setup(scenario: Scenario, client: Client, buyers: Client) -> anyhow::Result<Arc<Drill>> {
        let s = &scenario;
        let reply = client.put(format!("/v1/skus/{}", s.sku), format!(r#"{{"on_hand":{}}}"#, s.units)).await;
        let reply = reply.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            reply.status == 200,
            "creating the stock: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let opens_at_ms = unix_ms() + s.opens_in_ms;
        let sale = serde_json::json!({
            "per_user_limit": s.per_user_limit,
            "skus": [s.sku],
            "opens_at": rfc3339(opens_at_ms),
            "admission_rate": s.admission_rate,
            "max_active": s.max_active,
            "session_ms": s.session_ms,
            "order": match s.order { crate::scenario::Order::Fifo => "fifo", crate::scenario::Order::Lottery => "lottery" },
        });
        let reply = client
            .put(format!("/v1/sales/{}", s.sale), sale.to_string())
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            reply.status == 200,
            "creating the sale: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        let start = Instant::now();
        let opening = start + Duration::from_millis(opens_at_ms.saturating_sub(unix_ms()));
        let deadline = start + scenario.deadline();
        let pacer = crate::pacer::Pacer::new();
        Ok(Arc::new(Drill {
            scenario,
            client,
            buyers,
            pacer,
            stats: Stats::new(),
            start,
            opening,
            opens_at_ms,
            deadline,
        }))
    }

    fn at(&self, seconds_from_opening: f64) -> Instant {
        if seconds_from_opening >= 0.0 {
            self.opening + Duration::from_secs_f64(seconds_from_opening)
        } else {
            self.opening
                .checked_sub(Duration::from_secs_f64(-seconds_from_opening))
                .unwrap_or(self.start)
                .max(self.start)
        }
    }

    /// Sends a request meant to go at `intended`, records it, and returns the reply (None: no reply).
    async fn request(
        &self,
        route: usize,
        intended: Instant,
        path: String,
        body: Option<String>,
    ) -> Option<Reply> {
        self.request_keyed(route, intended, path, body, None).await
    }

    async fn request_keyed(
        &self,
        route: usize,
        intended: Instant,
        path: String,
        body: Option<String>,
        key: Option<String>,
    ) -> Option<Reply> {
        let method = match (route, &body) {
            (_, None) => hyper::Method::GET,
            _ => hyper::Method::POST,
        };
        let reply = if class_of(route) == 0 {
            // Buyers wait and send on their client's own thread.
            self.buyers.call_at(intended, method, path, body, key).await
        } else {
            self.pacer.until(intended).await;
            self.client.call_keyed(method, path, body, key).await
        };
        match reply {
            Ok(reply) => {
                self.stats.record(route, intended, self.start, Some(&reply));
                Some(reply)
            }
            Err(_) => {
                self.stats.record(route, intended, self.start, None);
                None
            }
        }
    }

    /// One shopper's visit, cut off at the drill's deadline (what it saw until then is kept).
    pub async fn shopper(self: Arc<Self>, i: u64) -> Shopper {
        let mut me = Shopper::default();
        let visit = tokio::time::timeout_at(self.deadline.into(), self.visit(i, &mut me)).await;
        me.outcome = Some(visit.unwrap_or(Outcome::Deadline));
        self.stats.done.fetch_add(1, Relaxed);
        me
    }

    /// How long shopper `i` waits before trying again after `tries` unanswered tries: doubling from
    /// a second, up to 16, spread by the shopper's own draw so that retries do not come in waves.
    fn backoff(&self, i: u64, tries: u32) -> Duration {
        let base = 1_000u64 << tries.min(4);
        Duration::from_millis(base / 2 + (self.scenario.draw(i, 100 + u64::from(tries)) * base as f64) as u64)
    }

    /// Microseconds since the drill's start.
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    async fn visit(&self, i: u64, me: &mut Shopper) -> Outcome {
        let s = &self.scenario;
        let user = format!("drill-user-{i}");
        let sale = &s.sale;
        let mut arrive = self.at(s.arrival_at(i));
        let mut tries = 0;
        let reply = loop {
            let joined = self.request(
                0,
                arrive,
                format!("/v1/sales/{sale}/queue"),
                Some(format!(r#"{{"user_id":"{user}"}}"#)),
            );
            me.clocks.join_sent_us = arrive.saturating_duration_since(self.start).as_micros() as u64;
            tries += 1;
            // Shed, or no answer: come back later (a join keeps any place already taken).
            match joined.await {
                Some(reply) => match shed_for(&reply) {
                    Some(wait) => arrive = Instant::now() + wait,
                    None => break reply,
                },
                None if tries < CROWD_TRIES => arrive = Instant::now() + self.backoff(i, tries),
                None => {
                    me.errors.push(format!("join: no answer in {CROWD_TRIES} tries"));
                    return Outcome::Error;
                }
            }
        };
        me.clocks.join_answered_us = self.now_us();
        self.stats.arrived.fetch_add(1, Relaxed);
        let mut state = json(&reply);
        if reply.status != 201 && reply.status != 200 {
            me.errors.push(format!("join: {} {state}", reply.status));
            return Outcome::Error;
        }
        me.joined_at_ms = parse_time(&state["joined_at"]);
        let ticket = state["ticket"].as_str().unwrap_or_default().to_owned();
        self.stats.waiting.fetch_add(1, Relaxed);
        let mut sent_us = me.clocks.join_sent_us;
        let mut unanswered_polls = 0;
        let waited = loop {
            match state["status"].as_str() {
                Some("admitted") => {
                    me.clocks.admitted_answered_us = Some(self.now_us());
                    break None;
                }
                Some("sold_out") => break Some(Outcome::SoldOut),
                Some("session_over") => break Some(Outcome::SessionOver),
                Some("waiting") => me.clocks.last_waiting_sent_us = Some(sent_us),
                _ => {
                    me.errors.push(format!("poll: {state}"));
                    break Some(Outcome::Error);
                }
            }
            let next =
                Instant::now() + Duration::from_millis(state["poll_after_ms"].as_u64().unwrap_or(1_000));
            if next > self.deadline {
                break Some(Outcome::Deadline);
            }
            let answered_waiting_sent_us = sent_us;
            sent_us = next.saturating_duration_since(self.start).as_micros() as u64;
            let Some(reply) = self.request(1, next, format!("/v1/sales/{sale}/queue/{ticket}"), None).await
            else {
                unanswered_polls += 1;
                if unanswered_polls >= CROWD_TRIES {
                    me.errors.push(format!("poll: no answer in {CROWD_TRIES} tries"));
                    break Some(Outcome::Error);
                }
                state["poll_after_ms"] = (self.backoff(i, unanswered_polls).as_millis() as u64).into();
                sent_us = answered_waiting_sent_us;
                continue;
            };
            unanswered_polls = 0;
            if let Some(wait) = shed_for(&reply) {
                // Shed: ask again later; the last answer (waiting) still stands.
                // A shed poll said nothing: the last poll known to say "waiting" stays the one before.
                state["poll_after_ms"] = (wait.as_millis() as u64).into();
                sent_us = answered_waiting_sent_us;
                continue;
            }
            state = json(&reply);
            if reply.status != 200 {
                me.errors.push(format!("poll: {} {state}", reply.status));
                break Some(Outcome::Error);
            }
        };
        self.stats.waiting.fetch_sub(1, Relaxed);
        if let Some(outcome) = waited {
            return outcome;
        }
        self.stats.admitted.fetch_add(1, Relaxed);
        let expires = parse_time(&state["admission_expires_at"]);
        me.admitted_at_ms = expires.map(|e| e.saturating_sub(s.session_ms));
        let admission = state["admission"].as_str().unwrap_or_default().to_owned();
        self.shop(i, &user, &admission, me).await
    }

    async fn shop(&self, i: u64, user: &str, admission: &str, me: &mut Shopper) -> Outcome {
        let s = &self.scenario;
        let think = Duration::from_millis(s.think_ms);
        let reserve_body = |qty: u32| {
            format!(
                r#"{{"items":[{{"sku":"{}","qty":{qty}}}],"ttl_ms":{},"user_id":"{user}","sale_id":"{}","admission":"{admission}"}}"#,
                s.sku, s.hold_ttl_ms, s.sale
            )
        };
        // One key for the shopper's reserve, kept across its retries: a checkout service's way.
        let key = format!("drill-{i}");
        let mut intended = Instant::now() + think;
        let mut attempt = 0;
        let hold = loop {
            let path = "/v1/reservations".to_owned();
            let reply = self.request_keyed(2, intended, path, Some(reserve_body(s.qty)), Some(key.clone()));
            let Some(reply) = reply.await else { return Outcome::Error };
            let v = json(&reply);
            match (reply.status, v["code"].as_str()) {
                (201, _) => break hold_of(&v),
                (409, Some("insufficient_stock")) if attempt < s.retries => {
                    attempt += 1;
                    intended = Instant::now() + Duration::from_millis(s.retry_ms);
                }
                (409, Some("insufficient_stock")) => return Outcome::NoStock,
                (403, Some("not_admitted")) => return Outcome::SessionOver,
                (status, _) => {
                    me.errors.push(format!("reserve: {status} {v}"));
                    return Outcome::Error;
                }
            }
        };
        let id = hold.id.clone();
        me.reserved_units += u64::from(s.qty);
        me.holds.push(hold);
        if s.draw(i, 2) < s.key_retry {
            if let Err(e) = self.retry_with_key(&key, &reserve_body(s.qty), &id).await {
                me.errors.push(e);
                return Outcome::Error;
            }
        }
        if s.draw(i, 3) < s.greedy {
            self.try_past_the_limit(i, &reserve_body, me).await;
        }
        self.end_hold(i, &id, me).await
    }

    /// Sends the same reserve with the same key again: the answer must name the same reservation.
    async fn retry_with_key(&self, key: &str, body: &str, id: &str) -> Result<(), String> {
        let path = "/v1/reservations".to_owned();
        let reply = self.request_keyed(2, Instant::now(), path, Some(body.to_owned()), Some(key.to_owned()));
        let reply = reply.await.ok_or("reserve retried with its key: no reply")?;
        let v = json(&reply);
        match reply.status {
            200 | 201 if v["id"].as_str() == Some(id) => Ok(()),
            status => Err(format!("reserve retried with its key: {status} {v}, expected {id} again")),
        }
    }

    /// A second session of the same user asks for more than the limit leaves: it must be refused.
    async fn try_past_the_limit(&self, i: u64, body: &(dyn Fn(u32) -> String + Sync), me: &mut Shopper) {
        let s = &self.scenario;
        let qty = (u64::from(s.per_user_limit) + 1).saturating_sub(me.reserved_units).max(1) as u32;
        let path = "/v1/reservations".to_owned();
        let key = Some(format!("drill-{i}-again"));
        let Some(reply) = self.request_keyed(2, Instant::now(), path, Some(body(qty)), key).await else {
            me.errors.push("reserve past the limit: no reply".into());
            return;
        };
        let v = json(&reply);
        match (reply.status, v["code"].as_str()) {
            (429, Some("limit_exceeded")) => me.limit_refused = Some(true),
            // Nothing left to take: refused, but that proves nothing of the limit.
            (409, Some("insufficient_stock")) => {}
            (201, _) => {
                me.limit_refused = Some(false);
                me.reserved_units += u64::from(qty);
                me.holds.push(hold_of(&v));
            }
            (status, _) => me.errors.push(format!("reserve past the limit: {status} {v}")),
        }
    }

    /// Commits, releases or abandons the hold, and notes what the server said of it.
    async fn end_hold(&self, i: u64, id: &str, me: &mut Shopper) -> Outcome {
        let s = &self.scenario;
        let draw = s.draw(i, 1);
        let (route, action, outcome) = if draw < s.commit {
            (3, "commit", Outcome::Bought)
        } else if draw < s.commit + s.release {
            (4, "release", Outcome::Released)
        } else {
            return Outcome::Abandoned;
        };
        // A few buyers commit about when the hold runs out: up to 300 ms either side of it.
        let wait = if outcome == Outcome::Bought && s.draw(i, 4) < s.late_commit {
            let around = s.hold_ttl_ms as f64 + (s.draw(i, 5) - 0.5) * 600.0;
            Duration::from_millis(around.max(0.0) as u64)
        } else {
            Duration::from_millis(s.think_ms)
        };
        let path = format!("/v1/reservations/{id}/{action}");
        let hold = me.holds.iter().position(|h| h.id == id).expect("the shopper's own hold");
        let Some(reply) = self.request(route, Instant::now() + wait, path, Some("{}".into())).await else {
            me.holds[hold].told = Told::Unknown;
            return Outcome::Error;
        };
        match reply.status {
            200 if outcome == Outcome::Bought => {
                me.holds[hold].told = Told::Committed;
                me.bought_units += u64::from(s.qty);
                outcome
            }
            200 => {
                me.holds[hold].told = Told::Released;
                outcome
            }
            // The hold ran out first: as good as abandoned, and not sold. Sent before the deadline,
            // the hold was lost in flight: the verification fails on it.
            410 => {
                let deadline = me.holds[hold].expires_at_ms;
                if outcome == Outcome::Bought && reply.sent_unix_ms + IN_FLIGHT_SLACK_MS < deadline {
                    me.expired_in_flight.push((id.to_owned(), deadline - reply.sent_unix_ms));
                    let mut timeline = self.stats.timeline.lock();
                    let s = self.stats.second(reply.received, self.start);
                    if timeline.len() <= s {
                        timeline.resize(s + 1, Second::default());
                    }
                    timeline[s].expired_in_flight += 1;
                }
                me.holds[hold].told = Told::Expired;
                Outcome::Abandoned
            }
            status => {
                me.holds[hold].told = Told::Unknown;
                me.errors.push(format!("{action}: {status} {}", json(&reply)));
                Outcome::Error
            }
        }
    }

    /// Samples the shoppers' counts into the timeline and prints a line a second until `done`, then
    /// samples once more: the last, partial second. At the end of each second of the drill: the
    /// shoppers' figures, and the server's read on `observer`, a connection of its own so that the
    /// crowd's queue does not delay the sample. A sample that runs late skips the ticks it missed
    /// (the seconds stay unsampled) rather than catching up with samples milliseconds apart.
    pub async fn progress(
        self: Arc<Self>,
        mut done: tokio::sync::watch::Receiver<bool>,
        quiet: bool,
        observer: Client,
    ) {
        let first = tokio::time::Instant::from_std(self.start + Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(first, Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_requests = 0u64;
        let mut sampler = crate::sample::Sampler::default();
        loop {
            let last = *done.borrow()
                || tokio::select! {
                    _ = tick.tick() => false,
                    _ = done.changed() => true,
                };
            // A tick at k s after the start closes second k - 1; the last sample is of the second
            // under way.
            let elapsed = Instant::now().saturating_duration_since(self.start);
            let s = if last {
                elapsed.as_secs()
            } else {
                (elapsed.as_secs_f64().round() as u64).saturating_sub(1)
            };
            let s = s as usize;
            let (stock, server) = sampler.sample(&observer, &self.scenario.sku).await;
            let st = &self.stats;
            let (arrived, waiting, admitted, finished) = (
                st.arrived.load(Relaxed),
                st.waiting.load(Relaxed),
                st.admitted.load(Relaxed),
                st.done.load(Relaxed),
            );
            let requests: u64 = {
                let mut timeline = st.timeline.lock();
                if timeline.len() <= s {
                    timeline.resize(s + 1, Second::default());
                }
                let second = &mut timeline[s];
                (second.arrived, second.waiting, second.admitted, second.done) =
                    (arrived, waiting, admitted, finished);
                (second.stock, second.server, second.sampled) = (stock, server, true);
                timeline.iter().map(|t| t.requests.iter().sum::<u64>()).sum()
            };
            if !quiet {
                eprintln!(
                    "{:>4}s  arrived {arrived:>7}  waiting {waiting:>7}  admitted {admitted:>6}  done {finished:>7}  |  {:>6} req/s  errors {}",
                    s,
                    requests - last_requests,
                    st.errors.load(Relaxed)
                );
            }
            last_requests = requests;
            if last {
                return;
            }
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A commit sent this close to its deadline may arrive after it (the wall clock's millisecond, and the
/// loopback hop): its 410 is fair. Sent earlier than that, a 410 means the hold was lost in flight.
pub const IN_FLIGHT_SLACK_MS: u64 = 2;

/// How long to wait before retrying a request the server shed (503 with Retry-After), if it was.
fn shed_for(reply: &Reply) -> Option<Duration> {
    (reply.status == 503).then(|| Duration::from_secs(reply.retry_after_s.unwrap_or(1).clamp(1, 60)))
}

/// Tries a waiting shopper makes of a join or a poll that gets no answer before giving up.
pub const CROWD_TRIES: u32 = 6;
