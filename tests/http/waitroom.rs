//! The waiting room over HTTP: order, the draw, tickets and admissions, sold-out, re-admission after
//! an expiry, and a restart in the middle of a sale. The test moves the server's clock.

use super::harness::{options, request, TestServer, T0_MS};
use holdfast::clock::rfc3339;
use serde_json::Value;

const OPENS_IN_MS: u64 = 60_000;

/// A sale `noon` over SKU `tee` (with `units`), opening a minute after the test clock's start.
fn sale(s: &TestServer, units: u64, order: &str, rate: u32, session_ms: u64) {
    s.stock("tee", units);
    let body = format!(
        r#"{{"per_user_limit":1,"skus":["tee"],"opens_at":"{}","admission_rate":{rate},"max_active":1000,"session_ms":{session_ms},"order":"{order}"}}"#,
        rfc3339(T0_MS + OPENS_IN_MS)
    );
    let reply = s.put("/v1/sales/noon", &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn join(s: &TestServer, user: &str) -> Value {
    let reply = s.post("/v1/sales/noon/queue", &format!(r#"{{"user_id":"{user}"}}"#));
    assert!(reply.status == 201 || reply.status == 200, "{}", reply.text());
    reply.json()
}

fn poll(s: &TestServer, ticket: &str) -> Value {
    let reply = s.get(&format!("/v1/sales/noon/queue/{ticket}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

fn ticket(v: &Value) -> String {
    v["ticket"].as_str().unwrap_or_else(|| panic!("no ticket in {v}")).to_owned()
}

fn reserve(s: &TestServer, user: &str, admission: Option<&str>, ttl_ms: u64) -> super::harness::Reply {
    let admission = admission.map_or(String::new(), |a| format!(r#","admission":"{a}""#));
    s.post(
        "/v1/reservations",
        &format!(
            r#"{{"items":[{{"sku":"tee","qty":1}}],"ttl_ms":{ttl_ms},"user_id":"{user}","sale_id":"noon"{admission}}}"#
        ),
    )
}

/// Moves the clock to the opening, and a little past it so the rate has admitted `n` shoppers.
fn open_and_admit(s: &TestServer, ms_after_opening: u64) {
    s.clock.advance(OPENS_IN_MS);
    s.advance(0);
    s.advance(ms_after_opening);
}

#[test]
fn fifo_places_shoppers_in_order_of_arrival_and_admits_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(options(dir.path()));
    sale(&s, 100, "fifo", 2, 60_000);
    let tickets: Vec<String> = (0..5)
        .map(|i| {
            let v = join(&s, &format!("u{i}"));
            assert_eq!((v["status"].as_str(), v["position"].as_u64()), (Some("waiting"), Some(i + 1)), "{v}");
            assert!(v["poll_after_ms"].as_u64().is_some() && v["eta"].is_string(), "{v}");
            ticket(&v)
        })
        .collect();
    let again = join(&s, "u0");
    assert_eq!(again["position"].as_u64(), Some(1), "joining again keeps the place");
    open_and_admit(&s, 1_000);
    let states: Vec<Value> = tickets.iter().map(|t| poll(&s, t)).collect();
    let statuses: Vec<&str> = states.iter().map(|v| v["status"].as_str().unwrap_or("?")).collect();
    assert_eq!(statuses, ["admitted", "admitted", "waiting", "waiting", "waiting"], "2/s for 1 s");
    assert_eq!(states[2]["position"].as_u64(), Some(1));
    let sale = s.get("/v1/sales/noon").json();
    assert_eq!(sale["waiting_room"]["admitted"].as_u64(), Some(2), "{sale}");
    assert_eq!(sale["waiting_room"]["waiting"].as_u64(), Some(3), "{sale}");
}

#[test]
fn lottery_draws_the_early_shoppers_at_opening_and_queues_later_ones_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(options(dir.path()));
    sale(&s, 100, "lottery", 1, 60_000);
    let early: Vec<String> = (0..30)
        .map(|i| {
            let v = join(&s, &format!("early{i}"));
            assert!(v.get("position").is_none(), "no place before the draw: {v}");
            ticket(&v)
        })
        .collect();
    s.clock.advance(OPENS_IN_MS);
    s.advance(0);
    let late = ticket(&join(&s, "late"));
    // The rate (1/s) admits nobody while the clock stands at the opening: every place is a position.
    let mut places: Vec<u64> =
        early.iter().map(|t| poll(&s, t)["position"].as_u64().expect("placed after the draw")).collect();
    assert_ne!(places, (1..=30).collect::<Vec<_>>(), "drawn, not in order of arrival");
    places.sort_unstable();
    assert_eq!(places, (1..=30).collect::<Vec<_>>(), "every early shopper placed once");
    let late = poll(&s, &late);
    assert_eq!(late["position"].as_u64(), Some(31), "the later arrival is behind every early one: {late}");
}

#[test]
fn forged_foreign_and_expired_tickets_and_admissions_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(options(dir.path()));
    sale(&s, 100, "fifo", 100, 2_000);
    s.stock("cap", 10);
    let other =
        r#"{"per_user_limit":1,"skus":["cap"],"opens_at":"2027-01-15T08:01:00Z","admission_rate":10}"#;
    assert_eq!(s.put("/v1/sales/dusk", other).status, 200);
    let ada = ticket(&join(&s, "ada"));
    let mut forged = ada.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let reply = s.get(&format!("/v1/sales/noon/queue/{forged}"));
    assert_eq!((reply.status, reply.code()), (403, "invalid_ticket".into()));
    let reply = s.get(&format!("/v1/sales/dusk/queue/{ada}"));
    assert_eq!((reply.status, reply.code()), (403, "invalid_ticket".into()), "another sale's ticket");
    assert!(reply.json()["detail"].as_str().unwrap_or("").contains("another sale"));

    // No admission, before being admitted.
    let reply = reserve(&s, "ada", None, 60_000);
    assert_eq!((reply.status, reply.code()), (403, "not_admitted".into()));
    let reply = reserve(&s, "ada", Some(&ada), 60_000);
    assert_eq!((reply.status, reply.code()), (403, "not_admitted".into()), "a ticket is not an admission");

    open_and_admit(&s, 100);
    let admitted = poll(&s, &ada);
    assert_eq!(admitted["status"], "admitted", "{admitted}");
    let token = admitted["admission"].as_str().expect("token").to_owned();
    let reply = reserve(&s, "bob", Some(&token), 60_000);
    assert_eq!((reply.status, reply.code()), (403, "not_admitted".into()), "someone else's admission");
    // The session is 2 s: past it, the admission is refused and the poll says so.
    s.advance(2_500);
    let reply = reserve(&s, "ada", Some(&token), 60_000);
    assert_eq!((reply.status, reply.code()), (403, "not_admitted".into()), "expired");
    assert!(reply.json()["detail"].as_str().unwrap_or("").contains("expired"));
    assert_eq!(poll(&s, &ada)["status"], "session_over");
    // The ticket itself expires a day after the opening.
    s.advance(25 * 60 * 60 * 1000);
    let reply = s.get(&format!("/v1/sales/noon/queue/{ada}"));
    assert_eq!((reply.status, reply.code()), (403, "invalid_ticket".into()), "expired ticket");
    assert_eq!(s.counts("tee"), (100, 0, 0), "nothing was reserved");
}

#[test]
fn a_keyed_retry_after_the_admission_ended_gets_its_reservation_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(options(dir.path()));
    sale(&s, 100, "fifo", 100, 2_000);
    let ada = ticket(&join(&s, "ada"));
    open_and_admit(&s, 100);
    let token = poll(&s, &ada)["admission"].as_str().expect("admitted").to_owned();
    let body = format!(
        r#"{{"items":[{{"sku":"tee","qty":1}}],"ttl_ms":600000,"user_id":"ada","sale_id":"noon","admission":"{token}"}}"#
    );
    let first = s.post_keyed("/v1/reservations", "checkout-7", &body);
    assert_eq!(first.status, 201, "{}", first.text());
    let id = first.json()["id"].as_str().expect("id").to_owned();
    // The session (2 s) ends; the checkout service retries the same request with the same key.
    s.advance(2_500);
    let retry = s.post_keyed("/v1/reservations", "checkout-7", &body);
    assert_eq!(retry.status, 201, "the retry learns its id: {}", retry.text());
    assert_eq!(
        (retry.json()["id"].as_str(), retry.header("idempotent-replayed")),
        (Some(&*id), Some("true"))
    );
    // Another key is a new reserve: that one needs a live admission.
    let other = s.post_keyed("/v1/reservations", "checkout-8", &body);
    assert_eq!((other.status, other.code()), (403, "not_admitted".into()));
    assert_eq!(s.counts("tee"), (99, 1, 0), "one unit held, once");
    s.stop().expect("stops");
    let s = TestServer::start_at(options(dir.path()), T0_MS + OPENS_IN_MS + 10_000);
    let retry = s.post_keyed("/v1/reservations", "checkout-7", &body);
    assert_eq!((retry.status, retry.json()["id"].as_str()), (201, Some(&*id)), "also after a restart");
}

#[test]
fn sold_out_is_told_to_everyone_waiting_and_an_expired_hold_readmits_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(options(dir.path()));
    sale(&s, 1, "fifo", 100, 60_000);
    let tickets: Vec<String> = (0..4).map(|i| ticket(&join(&s, &format!("u{i}")))).collect();
    open_and_admit(&s, 1_000);
    let states: Vec<String> =
        tickets.iter().map(|t| poll(&s, t)["status"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(states, ["admitted", "waiting", "waiting", "waiting"], "one unit: one shopper admitted");

    // u0 reserves with a short hold and abandons it: the unit comes back and u1 is admitted.
    let token = poll(&s, &tickets[0])["admission"].as_str().expect("token").to_owned();
    let reply = reserve(&s, "u0", Some(&token), 1_000);
    assert_eq!(reply.status, 201, "{}", reply.text());
    s.advance(100);
    assert_eq!(poll(&s, &tickets[1])["status"], "waiting", "a held unit may come back: still waiting");
    s.advance(1_000);
    s.advance(100);
    let u1 = poll(&s, &tickets[1]);
    assert_eq!(u1["status"], "admitted", "{u1}");
    // u1 buys it: nothing available, nothing held; everyone still waiting is told at once.
    let reply = reserve(&s, "u1", u1["admission"].as_str(), 60_000);
    assert_eq!(reply.status, 201, "{}", reply.text());
    let id = reply.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(s.post(&format!("/v1/reservations/{id}/commit"), "{}").status, 200);
    s.advance(50);
    for t in &tickets[2..] {
        let v = poll(&s, t);
        assert_eq!(v["status"], "sold_out", "{v}");
        assert!(v.get("poll_after_ms").is_none(), "nothing more to wait for: {v}");
    }
    assert_eq!(join(&s, "latecomer")["status"], "sold_out");
    assert_eq!(s.metric("holdfast_waitroom_sold_out_announcements_total"), 1.0);
    assert_eq!(s.counts("tee"), (0, 0, 1));
}

#[test]
fn a_restart_mid_sale_keeps_every_place_and_admission() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tickets, before) = {
        let s = TestServer::start(options(dir.path()));
        sale(&s, 100, "lottery", 3, 60_000);
        let tickets: Vec<String> = (0..12).map(|i| ticket(&join(&s, &format!("u{i}")))).collect();
        open_and_admit(&s, 1_000);
        let before: Vec<Value> = tickets.iter().map(|t| poll(&s, t)).collect();
        s.stop().expect("stops");
        (tickets, before)
    };
    let s = TestServer::start_at(options(dir.path()), T0_MS + OPENS_IN_MS + 1_100);
    let after: Vec<Value> = tickets.iter().map(|t| poll(&s, t)).collect();
    let places = |vs: &[Value]| -> Vec<(String, Option<u64>)> {
        vs.iter().map(|v| (v["status"].as_str().unwrap_or("").to_owned(), v["position"].as_u64())).collect()
    };
    assert_eq!(places(&after), places(&before), "the same draw, the same admissions, after a restart");
    assert!(before.iter().filter(|v| v["status"] == "admitted").count() >= 3, "{before:?}");
    // An admission given before the restart still buys.
    let admitted = after.iter().position(|v| v["status"] == "admitted").expect("someone admitted");
    let token = after[admitted]["admission"].as_str().expect("token");
    let reply = reserve(&s, &format!("u{admitted}"), Some(token), 60_000);
    assert_eq!(reply.status, 201, "{}", reply.text());
}

/// The real binary killed with SIGKILL while shoppers join, then after admissions: every join and
/// every admission a shopper was told of is there after the restart, in the same place.
#[test]
fn acknowledged_places_and_admissions_survive_sigkill() {
    use super::harness::{request, send};
    use super::process::{runtime, start_with, wait_ready};
    use holdfast::clock::Clock;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let mut p = start_with(dir.path(), &[]);
    wait_ready(&rt, p.addr);
    let call = |addr, method, path: &str, body: Option<&str>| {
        rt.block_on(send(addr, request(method, path, &[], body))).ok()
    };
    assert_eq!(call(p.addr, "PUT", "/v1/skus/tee", Some(r#"{"on_hand":1000}"#)).map(|r| r.status), Some(200));
    let opens_at = rfc3339(holdfast::clock::SystemClock.now_ms() + 2_500);
    let sale =
        format!(r#"{{"per_user_limit":1,"skus":["tee"],"opens_at":"{opens_at}","admission_rate":40}}"#);
    assert_eq!(call(p.addr, "PUT", "/v1/sales/noon", Some(&sale)).map(|r| r.status), Some(200));

    // Joins from 8 tasks; SIGKILL lands in the middle of them.
    let (addr, pid) = (p.addr, p.child.id().to_string());
    let acked: Vec<(String, u64)> = rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..2_000 {
                        let body = format!(r#"{{"user_id":"t{t}-{i}"}}"#);
                        match send(addr, request("POST", "/v1/sales/noon/queue", &[], Some(&body))).await {
                            Ok(r) if r.status == 201 => {
                                let v = r.json();
                                acked.push((
                                    v["ticket"].as_str().expect("ticket").to_owned(),
                                    v["position"].as_u64().expect("position"),
                                ));
                            }
                            _ => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let killed = std::process::Command::new("kill").args(["-KILL", &pid]).status().expect("kill");
        assert!(killed.success());
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let _ = p.child.wait();
    assert!(acked.len() > 10 && acked.len() < 16_000, "killed mid-joins: {} acknowledged", acked.len());
    let mut p = start_with(dir.path(), &[]);
    wait_ready(&rt, p.addr);
    for (ticket, position) in &acked {
        let v = call(p.addr, "GET", &format!("/v1/sales/noon/queue/{ticket}"), None).expect("reply").json();
        assert_eq!(v["position"].as_u64(), Some(*position), "{v}");
    }

    // Admissions: wait for some, kill, and find them admitted after the restart.
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let admitted: Vec<&String> = acked
        .iter()
        .map(|(t, _)| t)
        .filter(|t| {
            call(p.addr, "GET", &format!("/v1/sales/noon/queue/{t}"), None).expect("reply").json()["status"]
                == "admitted"
        })
        .collect();
    assert!(!admitted.is_empty(), "some shoppers admitted a second after opening");
    let _ = p.child.kill();
    let _ = p.child.wait();
    let p = start_with(dir.path(), &[]);
    wait_ready(&rt, p.addr);
    for t in admitted {
        let v = call(p.addr, "GET", &format!("/v1/sales/noon/queue/{t}"), None).expect("reply").json();
        assert_eq!(v["status"], "admitted", "{v}");
    }
}

/// A join from `address`, as a proxy on loopback forwards it.
fn join_from(s: &TestServer, address: &str, user: &str) -> super::harness::Reply {
    let body = format!(r#"{{"user_id":"{user}"}}"#);
    s.send(super::harness::request(
        "POST",
        "/v1/sales/noon/queue",
        &[("X-Forwarded-For", address)],
        Some(&body),
    ))
}

#[test]
fn one_address_joins_at_a_bounded_rate_and_others_are_not_held_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = options(dir.path());
    o.http.join_limit = holdfast::http::limit::JoinLimit {
        per_s: 1,
        burst: 5,
        forwarded_by: vec!["127.0.0.1".parse().expect("ip")],
    };
    let s = TestServer::start(o);
    sale(&s, 100, "fifo", 2, 60_000);
    // Joins that add no one are not counted: malformed ones, and joins to a sale that is not there.
    for _ in 0..3 {
        assert_eq!(join_from(&s, "203.0.113.9", "").status, 400);
        let body = r#"{"user_id":"x"}"#;
        let unknown =
            request("POST", "/v1/sales/none/queue", &[("X-Forwarded-For", "203.0.113.9")], Some(body));
        assert_eq!(s.send(unknown).status, 404);
    }
    // A bot behind one address mints user ids: its burst goes through, then 429 with Retry-After.
    // Repeats of a shopper already queued, between them, cost nothing.
    for i in 0..5 {
        assert_eq!(join_from(&s, "203.0.113.9", &format!("bot-{i}")).status, 201);
        assert_eq!(join_from(&s, "203.0.113.9", "bot-0").status, 200);
    }
    // A shopper joining again keeps its place whatever the address's budget.
    assert_eq!(join_from(&s, "203.0.113.9", "bot-0").status, 200);
    let refused = join_from(&s, "198.51.100.1, 203.0.113.9", "bot-5");
    assert_eq!((refused.status, refused.code().as_str()), (429, "rate_limited"), "{}", refused.text());
    let wait: u64 = refused.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&wait), "{wait}");
    // Nothing was recorded for the refused join.
    assert_eq!(s.get("/v1/sales/noon").json()["waiting_room"]["joined"], 5);
    // Other addresses, and loopback itself (the proxy's own requests), are not held back by it.
    assert_eq!(join_from(&s, "203.0.113.10", "shopper").status, 201);
    assert_eq!(s.post("/v1/sales/noon/queue", r#"{"user_id":"local"}"#).status, 201);
    assert_eq!(s.metric("holdfast_requests_refused_total{reason=\"rate_limited\""), 1.0);
    // A second later the address may join once more.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(join_from(&s, "203.0.113.9", "bot-5").status, 201);
}
