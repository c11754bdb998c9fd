//! Under a storm: the crowd (waiting-room joins and polls) gives way to buyers, and a commit that
//! arrived before its hold's deadline is judged at its arrival though decided after it.

use super::harness::{options, read_response, TestServer, T0_MS};
use super::process::{call, runtime, start_with, wait_ready};
use holdfast::http::HttpConfig;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GRACE_MS: u64 = 50;

fn server(http: HttpConfig) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let mut o = options(dir.path());
    o.http = http;
    o.engine.commit_grace_ms = GRACE_MS;
    (TestServer::start(o), dir)
}

/// A reserve of one unit of `sku` held for `ttl_ms`: its id.
fn hold(s: &TestServer, sku: &str, ttl_ms: u64) -> String {
    let body = format!(r#"{{"items":[{{"sku":"{sku}","qty":1}}],"ttl_ms":{ttl_ms},"user_id":"u"}}"#);
    let r = s.post("/v1/reservations", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().expect("an id").to_owned()
}

/// Sends a commit's head now; returns the stream, to send its body ("{}") later.
async fn commit_head(addr: std::net::SocketAddr, id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/reservations/{id}/commit HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // Let the server read the head (and stamp its arrival) before the clock moves.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
}

#[test]
fn a_commit_that_arrived_before_the_deadline_commits_though_decided_after_it() {
    let (s, _dir) = server(HttpConfig::default());
    s.stock("w", 2);
    let id = hold(&s, "w", 1_000);
    s.advance(999);
    let mut stream = s.block_on(commit_head(s.addr, &id));
    // The deadline passes while the commit waits; the tick runs (within the grace) and must not
    // take the hold.
    s.advance(GRACE_MS - 5);
    assert_eq!(s.counts("w").1, 1, "still reserved in the grace");
    let reply = s.block_on(async {
        stream.write_all(b"{}").await.expect("body");
        read_response(&mut stream).await.expect("a response")
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["state"], "committed");
    assert_eq!(s.counts("w"), (1, 0, 1), "sold");

    // One whose wait ran past the grace is judged then: too late, as the tick already decided.
    let id = hold(&s, "w", 1_000);
    s.advance(999);
    let mut stream = s.block_on(commit_head(s.addr, &id));
    s.advance(GRACE_MS + 10);
    let reply = s.block_on(async {
        stream.write_all(b"{}").await.expect("body");
        read_response(&mut stream).await.expect("a response")
    });
    assert_eq!(reply.status, 410, "{}", reply.text());
    assert_eq!(reply.code(), "reservation_expired");
    assert_eq!(s.counts("w"), (1, 0, 1), "the unit came back");
}

#[test]
fn the_tick_returns_units_only_after_the_grace() {
    let (s, _dir) = server(HttpConfig::default());
    s.stock("g", 1);
    hold(&s, "g", 1_000);
    s.advance(1_000 + GRACE_MS - 10);
    assert_eq!(s.counts("g").1, 1, "held through the grace");
    s.advance(10);
    assert_eq!(s.counts("g"), (1, 0, 0), "returned once the grace has passed");
}

#[test]
fn the_crowd_is_shed_while_buyers_and_admitted_shoppers_are_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let opens = T0_MS + 1_000;
    let sale = format!(
        r#"{{"skus":["c"],"per_user_limit":1,"opens_at":"{}","admission_rate":10,"max_active":1,"session_ms":60000}}"#,
        holdfast::clock::rfc3339(opens)
    );
    // Two shoppers join while the server keeps up; the room opens and admits the first.
    let tickets: Vec<String> = {
        let mut o = options(dir.path());
        o.engine.commit_grace_ms = GRACE_MS;
        let s = TestServer::start(o);
        s.stock("c", 5);
        s.stock("d", 5);
        assert_eq!(s.put("/v1/sales/s", &sale).status, 200);
        let tickets = ["first", "second"].map(|user| {
            let r = s.post("/v1/sales/s/queue", &format!(r#"{{"user_id":"{user}"}}"#));
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["ticket"].as_str().expect("a ticket").to_owned()
        });
        s.advance(1_000);
        s.advance(2_000);
        let first = s.get(&format!("/v1/sales/s/queue/{}", tickets[0])).json();
        assert_eq!(first["status"], "admitted", "{first}");
        s.stop().expect("stops");
        tickets.to_vec()
    };
    // The same room on a server with no place for the crowd at all.
    let mut o = options(dir.path());
    o.http = HttpConfig { crowd_in_flight_max: 0, ..HttpConfig::default() };
    let s = TestServer::start_at(o, opens + 2_100);
    let join = s.post("/v1/sales/s/queue", r#"{"user_id":"third"}"#);
    assert_eq!(join.status, 503, "{}", join.text());
    assert_eq!(join.code(), "overloaded");
    assert_eq!(join.header("retry-after"), Some("1"));
    let joined = s.get("/v1/sales/s").json()["waiting_room"]["joined"].clone();
    assert_eq!(joined, 2, "a shed join changes nothing");
    // The admitted shopper's poll is served: it carries the admission whose session runs.
    let admitted = s.get(&format!("/v1/sales/s/queue/{}", tickets[0]));
    assert_eq!(admitted.status, 200, "{}", admitted.text());
    assert_eq!(admitted.json()["status"], "admitted");
    // The waiting one is told to come back when the room would have asked it to.
    let waiting = s.get(&format!("/v1/sales/s/queue/{}", tickets[1]));
    assert_eq!(waiting.status, 503, "{}", waiting.text());
    let retry: u64 = waiting.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!(retry >= 1, "{retry}");
    // A forged ticket is still refused for what it is.
    assert_eq!(s.get("/v1/sales/s/queue/forged").status, 403);
    // Buyers and checkout services are served.
    hold(&s, "d", 60_000);
    assert_eq!(s.metric("holdfast_requests_shed_total{class=\"crowd\"}"), 2.0);
    assert_eq!(s.metric("holdfast_requests_shed_total{class=\"buyer\"}"), 0.0);
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn rfc3339_ms(text: &str) -> u64 {
    let t = humantime::parse_rfc3339(text).expect("an RFC 3339 time");
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// The real binary: a commit whose head arrived before the deadline and whose body came after it is
/// committed, acknowledged, and still committed after SIGKILL and a restart (the log decides); one
/// left past the grace is expired, and stays so.
#[test]
fn a_late_decided_commit_survives_sigkill_as_the_log_decided_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let rt = runtime();
    let mut p = start_with(dir.path(), &["--commit-grace", "200ms"]);
    wait_ready(&rt, p.addr);
    let put = super::harness::request("PUT", "/v1/skus/k", &[], Some(r#"{"on_hand":2}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    let reserve = |ttl: u64| {
        let body = format!(r#"{{"items":[{{"sku":"k","qty":1}}],"ttl_ms":{ttl},"user_id":"u"}}"#);
        let r = call(&rt, p.addr, super::harness::request("POST", "/v1/reservations", &[], Some(&body)));
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json();
        (v["id"].as_str().expect("id").to_owned(), rfc3339_ms(v["expires_at"].as_str().expect("expires_at")))
    };
    let (on_time, deadline) = reserve(1_000);
    let (too_late, _) = reserve(1_000);
    let sleep_until = |ms: u64| std::thread::sleep(Duration::from_millis(ms.saturating_sub(unix_ms())));
    sleep_until(deadline - 60);
    let mut first = rt.block_on(commit_head(p.addr, &on_time));
    let mut second = rt.block_on(commit_head(p.addr, &too_late));
    // The body of the first comes 100 ms after the deadline (within the 200 ms grace)...
    sleep_until(deadline + 100);
    let reply = rt.block_on(async {
        first.write_all(b"{}").await.expect("body");
        read_response(&mut first).await.expect("a response")
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    // ...the second's past it.
    sleep_until(deadline + 400);
    let late = rt.block_on(async {
        second.write_all(b"{}").await.expect("body");
        read_response(&mut second).await.expect("a response")
    });
    assert_eq!(late.status, 410, "{}", late.text());
    p.child.kill().expect("SIGKILL");
    p.child.wait().expect("reaped");
    let p = start_with(dir.path(), &[]);
    wait_ready(&rt, p.addr);
    let state = |id: &str| {
        let r =
            call(&rt, p.addr, super::harness::request("GET", &format!("/v1/reservations/{id}"), &[], None));
        r.json()["state"].as_str().expect("a state").to_owned()
    };
    assert_eq!(state(&on_time), "committed");
    assert_eq!(state(&too_late), "expired");
    let sku = call(&rt, p.addr, super::harness::request("GET", "/v1/skus/k", &[], None)).json();
    assert_eq!((sku["sold"].as_u64(), sku["available"].as_u64()), (Some(1), Some(1)), "{sku}");
}
