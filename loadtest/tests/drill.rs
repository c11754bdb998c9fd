//! CI-sized drills: the real server and the real drill tool, 5,000 shoppers through the waiting room,
//! and the drill's own verification must pass; and drills through a proxy that lies to the shoppers
//! in one way each, which the verification must catch.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The server binary, built into the same directory as this package's binary by the workspace build.
fn holdfast() -> PathBuf {
    let drill = PathBuf::from(env!("CARGO_BIN_EXE_holdfast-drill"));
    let server = drill.with_file_name(format!("holdfast{}", std::env::consts::EXE_SUFFIX));
    assert!(server.exists(), "{} is missing: run the tests of the whole workspace", server.display());
    server
}

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server in `dir`; returns it (killed on drop) and its address.
fn start_server(dir: &std::path::Path) -> (Server, String) {
    start_server_with(dir, &[])
}

/// `start_server` with further flags.
fn start_server_with(dir: &std::path::Path, extra: &[&str]) -> (Server, String) {
    let mut child = Command::new(holdfast())
        .args(["serve", "--listen", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start holdfast serve");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("a line");
    let server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_owned();
    (server, addr)
}

fn run_drill(order: &str, users: &str, units: &str) -> serde_json::Value {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (_server, addr) = start_server(dir.path());
    let report = dir.path().join("report");
    let status = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"))
        .args(["--target", &format!("http://{addr}"), "--quiet", "--users", users, "--units", units])
        .args([
            "--order",
            order,
            "--admission-rate",
            "2000",
            "--opens-in-ms",
            "1500",
            "--hold-ttl-ms",
            "2000",
        ])
        .args(["--think-ms", "50", "--connections", "64", "--deadline-secs", "120", "--report"])
        .arg(&report)
        .status()
        .expect("run holdfast-drill");
    let text = std::fs::read_to_string(report.join("report.json")).expect("a JSON report");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(status.success(), "the drill failed its verification: {}", json["verification"]);
    let html = std::fs::read_to_string(report.join("report.html")).expect("an HTML report");
    assert!(html.contains("<svg") && html.contains("Verification passed") && !html.contains("not drawn"));
    json
}

#[test]
fn a_fifo_drill_of_5000_shoppers_sells_every_unit_in_order_and_verifies() {
    let r = run_drill("fifo", "5000", "200");
    assert_eq!(r["verification"]["passed"], true);
    assert_eq!(r["stock_at_end"]["sold"], 200, "every unit sold: {}", r["stock_at_end"]);
    assert_eq!(r["outcomes"]["bought"], 200, "{}", r["outcomes"]);
    assert_eq!(r["fairness"]["later_admitted_before_earlier"], 0, "fifo: {}", r["fairness"]);
    // Second by second, the server's units add up to the stock, and the sale is seen happening.
    let timeline = r["timeline"].as_array().expect("a timeline");
    let stocks: Vec<&serde_json::Value> =
        timeline.iter().map(|t| &t["stock"]).filter(|s| !s.is_null()).collect();
    assert!(stocks.len() + 2 >= timeline.len(), "a sample nearly every second: {}", stocks.len());
    for s in &stocks {
        let sum: u64 =
            ["available", "reserved", "sold"].iter().map(|f| s[f].as_u64().expect("a count")).sum();
        assert_eq!(sum, 200, "{s}");
    }
    assert_eq!(stocks.first().map(|s| s["sold"].as_u64()), Some(Some(0)));
    assert!(stocks.iter().any(|s| s["reserved"].as_u64() > Some(0)), "holds seen");
    assert!(timeline.iter().any(|t| t["server"]["log_syncs"].as_f64() > Some(0.0)), "the log seen syncing");
    // The server process's CPU and memory, from its own /metrics.
    assert!(timeline.iter().any(|t| t["server"]["cpu_percent"].as_f64() > Some(0.0)), "the server's CPU");
    assert!(timeline.iter().all(|t| t["server"].is_null() || t["server"]["rss_mb"].as_f64() > Some(1.0)));
    assert!(
        r["server"]["rss_mb_peak"].as_f64() > Some(1.0)
            && r["server"]["cpu_percent_mean"].as_f64() > Some(0.0)
    );
    // Each second's requests by route, with their latency, add up to its requests; the seconds'
    // admissions add up to the shoppers admitted.
    for t in timeline {
        let by_route: Vec<u64> = ["join", "poll", "reserve", "commit", "release"]
            .iter()
            .map(|r| t["routes"][r]["count"].as_u64().expect("a count"))
            .collect();
        assert_eq!(serde_json::json!(by_route), t["requests"], "{t}");
        let reserves = by_route[2];
        assert!(reserves == 0 || t["routes"]["reserve"]["p99_ms"].as_f64() > Some(0.0), "{t}");
    }
    // (The last sample is taken once every shopper is done: nothing is left out.)
    let admissions: u64 = timeline.iter().filter_map(|t| t["admissions"].as_u64()).sum();
    let last = timeline.iter().rev().find(|t| !t["done"].is_null()).expect("a sampled second");
    assert_eq!(last["done"], r["users"], "every shopper done by the last sample: {last}");
    assert_eq!(admissions, r["admitted"].as_u64().expect("admitted"), "admissions per second add up");
    // Each route's latency distribution: a percentile curve that never falls, ending at the maximum.
    let curve: Vec<f64> = (r["routes"]["reserve"]["distribution"].as_array().expect("a distribution").iter())
        .map(|p| p["ms"].as_f64().expect("ms"))
        .collect();
    assert_eq!(curve.len(), 8, "{curve:?}");
    assert!(curve.windows(2).all(|w| w[0] <= w[1]), "{curve:?}");
    assert!((curve[7] - r["routes"]["reserve"]["max"].as_f64().expect("max")).abs() < 0.01, "{curve:?}");
    assert!(
        r["outcomes"]["sold_out"].as_u64().unwrap_or(0) > 4_000,
        "the rest told sold out: {}",
        r["outcomes"]
    );
}

#[test]
fn a_lottery_drill_admits_out_of_arrival_order_and_verifies() {
    let r = run_drill("lottery", "2000", "100");
    assert_eq!(r["stock_at_end"]["sold"], 100);
    assert!(
        r["fairness"]["later_admitted_before_earlier"].as_u64().unwrap_or(0) > 0,
        "drawn: {}",
        r["fairness"]
    );
    // `diff` reads real reports: the same one twice, then one whose drill differs and failed.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&a, r.to_string()).expect("write");
    let diff = |b: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_holdfast-drill")).arg("diff").arg(&a).arg(b).output();
        let out = out.expect("run holdfast-drill diff");
        (out.status.code(), String::from_utf8(out.stdout).expect("UTF-8"))
    };
    let (code, md) = diff(&a);
    assert_eq!(code, Some(0), "{md}");
    assert!(md.contains("Same scenario") && md.contains("| reserve p99 (ms) |"), "{md}");
    assert!(md.contains("| shoppers who bought | 100 | 100 | same |"), "{md}");
    let mut other = r.clone();
    other["scenario"]["users"] = 3000.into();
    other["verification"]["passed"] = false.into();
    std::fs::write(&b, other.to_string()).expect("write");
    let (code, md) = diff(&b);
    assert_eq!(code, Some(1), "a failed verification fails the diff: {md}");
    assert!(md.contains("`users`: 2000 → 3000") && md.contains("after FAILED"), "{md}");
}

mod lying_proxy {
    //! A proxy between the drill and a real server that lies to the shoppers in one way.

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use std::sync::Arc;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Lie {
        None,
        /// Every commit answered 404 without being forwarded.
        CommitNotFound,
        /// Every release answered 200 "released" without being forwarded.
        ReleaseNotForwarded,
        /// 20 commits answered 200 without being forwarded, and 20 later releases forwarded as
        /// commits (answered 200): the server sells as many units as the shoppers were told.
        CommitsSwapped,
        /// Every payment webhook answered 200 "applied" without being forwarded.
        WebhookSwallowed,
        /// Every commit held 1.5 s before it is forwarded: a server whose buyers wait in line.
        SlowCommits,
        /// Every cart line set answered as the server answered it, then removed behind the
        /// shopper's back: a server that drops acknowledged holds.
        HoldDropped,
        /// Every other cart told "sold out" without asking the server: a server that turns
        /// shoppers away while units are there.
        SoldOutFaked,
    }

    struct Proxy {
        upstream: String,
        lie: Lie,
        dropped: AtomicU32,
        swapped: AtomicU32,
    }

    fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
        let kind = if status >= 400 { "application/problem+json" } else { "application/json" };
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    }

    impl Proxy {
        async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
            let path = req.uri().path().to_owned();
            let id = path.trim_start_matches("/v1/reservations/").split('/').next().unwrap_or("").to_owned();
            let mut forward_path = path.clone();
            match self.lie {
                Lie::HoldDropped if req.method() == hyper::Method::PUT && path.starts_with("/v1/carts/") => {
                    let answered = self.forward(req, &path).await;
                    if answered.status() == 200 {
                        let delete = Request::delete(&path).body(Full::new(Bytes::new())).expect("request");
                        self.send(delete).await;
                    }
                    return answered;
                }
                Lie::SoldOutFaked
                    if path.starts_with("/v1/carts/") && self.dropped.fetch_add(1, Relaxed) % 2 == 1 =>
                {
                    let body =
                        r#"{"type":"/problems/insufficient_stock","status":409,"code":"insufficient_stock"}"#;
                    return reply(409, body.into());
                }
                Lie::WebhookSwallowed if path == "/v1/webhooks/payments" => {
                    return reply(200, r#"{"status":"applied","code":"paid","order_state":"paid"}"#.into())
                }
                Lie::SlowCommits if path.ends_with("/commit") => {
                    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
                }
                Lie::CommitNotFound if path.ends_with("/commit") => {
                    return reply(
                        404,
                        r#"{"type":"/problems/not_found","status":404,"code":"not_found"}"#.into(),
                    )
                }
                Lie::ReleaseNotForwarded if path.ends_with("/release") => {
                    return reply(200, format!(r#"{{"id":"{id}","state":"released"}}"#))
                }
                Lie::CommitsSwapped
                    if path.ends_with("/commit") && self.dropped.fetch_add(1, Relaxed) < 20 =>
                {
                    return reply(200, format!(r#"{{"id":"{id}","state":"committed"}}"#));
                }
                Lie::CommitsSwapped
                    if path.ends_with("/release") && self.swapped.fetch_add(1, Relaxed) < 20 =>
                {
                    forward_path = path.replace("/release", "/commit");
                    let forwarded = self.forward(req, &forward_path).await;
                    return match forwarded.status().as_u16() {
                        200 => reply(200, format!(r#"{{"id":"{id}","state":"released"}}"#)),
                        _ => forwarded,
                    };
                }
                _ => {}
            }
            self.forward(req, &forward_path).await
        }

        async fn forward(&self, req: Request<hyper::body::Incoming>, path: &str) -> Response<Full<Bytes>> {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let mut out = Request::builder().method(parts.method).uri(path);
            for (name, value) in &parts.headers {
                out = out.header(name, value);
            }
            self.send(out.body(Full::new(body)).expect("request")).await
        }

        async fn send(&self, request: Request<Full<Bytes>>) -> Response<Full<Bytes>> {
            let stream = tokio::net::TcpStream::connect(&self.upstream).await.expect("upstream");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(conn);
            let response = send.send_request(request).await.expect("upstream reply");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
    }

    /// Starts the proxy on a loopback port of its own; returns its address.
    pub fn start(upstream: &str, lie: Lie) -> String {
        let proxy = Arc::new(Proxy {
            upstream: upstream.to_owned(),
            lie,
            dropped: AtomicU32::new(0),
            swapped: AtomicU32::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address").to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let proxy = proxy.clone();
                            async move { Ok::<_, std::convert::Infallible>(proxy.handle(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        addr
    }
}

/// A storm, small enough for CI: 20,000 shoppers arrive within half a second, flooding joins and
/// polls over 512 connections while the admitted ones buy. The buyers must be served first (p99
/// within the bound) and no commit may be refused for a deadline that passed while it was on its way
/// (`no_hold_expired_in_flight`); and through a proxy that makes commits wait, both checks fail.
fn storm_through(lie: lying_proxy::Lie, users: &str, deadline_secs: &str) -> (bool, serde_json::Value) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (_server, addr) = start_server(dir.path());
    let target = match lie {
        lying_proxy::Lie::None => addr,
        lie => lying_proxy::start(&addr, lie),
    };
    let report = dir.path().join("report");
    let status = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"))
        .args(["--target", &format!("http://{target}"), "--quiet", "--users", users, "--units", "300"])
        .args(["--arrival-secs", "0.5", "--admission-rate", "2000", "--opens-in-ms", "1000"])
        .args(["--hold-ttl-ms", "1000", "--think-ms", "50", "--late-commit", "0"])
        .args([
            "--connections",
            "512",
            "--buyer-p99-max-ms",
            "400",
            "--deadline-secs",
            deadline_secs,
            "--report",
        ])
        .arg(&report)
        .status()
        .expect("run holdfast-drill");
    let text = std::fs::read_to_string(report.join("report.json")).expect("a JSON report");
    (status.success(), serde_json::from_str(&text).expect("valid JSON"))
}

#[test]
fn under_a_storm_of_joins_and_polls_the_admitted_shoppers_come_first() {
    let (passed, report) = storm_through(lying_proxy::Lie::None, "20000", "120");
    assert!(passed, "the storm drill failed: {}", report["verification"]);
    assert_eq!(report["expired_in_flight"], 0);
    assert!(report["classes"]["buyers"]["count"].as_u64() > Some(300), "{}", report["classes"]);
    let (passed, report) = storm_through(lying_proxy::Lie::SlowCommits, "2000", "30");
    let failed = failed_checks(&report);
    assert!(!passed, "commits held past their deadline passed: {}", report["verification"]);
    for must_fail in ["no_hold_expired_in_flight", "buyers_served_first"] {
        assert!(failed.iter().any(|f| f == must_fail), "failed {failed:?}, not {must_fail}");
    }
}

/// A small drill through a proxy: its report, and whether the drill passed.
fn drill_through(lie: lying_proxy::Lie) -> (bool, serde_json::Value) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (_server, addr) = start_server(dir.path());
    let proxy = lying_proxy::start(&addr, lie);
    let report = dir.path().join("report");
    let status = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"))
        .args(["--target", &format!("http://{proxy}"), "--quiet", "--users", "400", "--units", "100"])
        .args([
            "--admission-rate",
            "1000",
            "--opens-in-ms",
            "1000",
            "--hold-ttl-ms",
            "1500",
            "--think-ms",
            "50",
        ])
        .args([
            "--commit",
            "0.6",
            "--release",
            "0.3",
            "--connections",
            "32",
            "--deadline-secs",
            "60",
            "--report",
        ])
        .arg(&report)
        .status()
        .expect("run holdfast-drill");
    let text = std::fs::read_to_string(report.join("report.json")).expect("a JSON report");
    (status.success(), serde_json::from_str(&text).expect("valid JSON"))
}

fn failed_checks(report: &serde_json::Value) -> Vec<String> {
    let checks = report["verification"]["checks"].as_array().cloned().unwrap_or_default();
    checks.iter().filter(|c| c["ok"] == false).map(|c| c["name"].as_str().unwrap_or("").to_owned()).collect()
}

#[test]
fn the_drill_fails_against_every_lying_proxy_and_passes_an_honest_one() {
    use lying_proxy::Lie;
    let (passed, report) = drill_through(Lie::None);
    assert!(passed, "an honest proxy failed: {}", report["verification"]);
    for (lie, must_fail) in [
        (Lie::CommitNotFound, "every_answer_expected"),
        (Lie::ReleaseNotForwarded, "reservations_read_back_as_told"),
        (Lie::CommitsSwapped, "reservations_read_back_as_told"),
    ] {
        let (passed, report) = drill_through(lie);
        let failed = failed_checks(&report);
        assert!(!passed, "{lie:?}: the drill passed: {}", report["verification"]);
        assert!(failed.iter().any(|f| f == must_fail), "{lie:?}: failed {failed:?}, not {must_fail}");
    }
}

#[test]
fn against_a_server_that_never_answers_the_drill_stops_at_its_deadline_with_a_report() {
    // Connections are accepted by the kernel (the backlog) and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("address");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let started = std::time::Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"))
        .args(["--target", &format!("http://{addr}"), "--quiet", "--users", "100", "--units", "10"])
        .args(["--deadline-secs", "3", "--request-timeout-ms", "1000", "--report"])
        .arg(dir.path())
        .status()
        .expect("run holdfast-drill");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "a drill that could not run fails");
    assert!(took < std::time::Duration::from_secs(15), "took {took:?} with a 3 s deadline");
    let text = std::fs::read_to_string(dir.path().join("report.json")).expect("a report all the same");
    let report: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(report["verification"]["passed"], false);
    drop(silent);
}

const WEBHOOK_SECRET: &str = "whsec_checkout_test_0123456789";

/// A small checkout drill: orders placed, paid, failed, late, lost, abandoned and duplicated.
fn checkout(
    target: Option<&str>,
    provider: Option<&str>,
    users: &str,
    units: &str,
) -> (bool, serde_json::Value) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let report = dir.path().join("report");
    let mut command = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"));
    command.args(["checkout", "--quiet", "--users", users, "--units", units, "--arrival-secs", "1.5"]);
    command.args(["--pay-within-ms", "3000", "--status-lead", "1200ms", "--think-ms", "200"]);
    command.args(["--late-by-ms", "800", "--webhook-secret", WEBHOOK_SECRET, "--deadline-secs", "60"]);
    if let (Some(target), Some(provider)) = (target, provider) {
        command.args(["--target", target, "--provider-listen", provider]);
    }
    let status = command.arg("--report").arg(&report).status().expect("run holdfast-drill checkout");
    let text = std::fs::read_to_string(report.join("checkout.json")).expect("a JSON report");
    (status.success(), serde_json::from_str(&text).expect("valid JSON"))
}

#[test]
fn a_checkout_drill_ends_every_order_as_its_payment_says_and_verifies() {
    let (passed, r) = checkout(None, None, "1500", "150");
    let d = &r["drill"];
    assert!(passed, "the checkout drill failed its verification: {}", d["verification"]);
    assert_eq!(d["stock_at_end"]["sold"], d["orders_by_state"]["paid"], "{}", d["orders_by_state"]);
    // Every fate happened, and the fallback settled every lost webhook.
    for fate in ["paid", "failed", "late", "lost", "abandoned"] {
        assert!(
            d["orders_by_fate_and_state"][fate].is_object(),
            "no {fate} order: {}",
            d["orders_by_fate_and_state"]
        );
    }
    let fallback = &d["status_fallback"];
    assert!(fallback["settled_metric"].as_f64() >= fallback["lost_webhooks"].as_f64(), "{fallback}");
    assert!(d["webhooks"]["server_outcomes"]["duplicate"].as_f64().unwrap_or(0.0) > 0.0, "{}", d["webhooks"]);
    assert!(d["cancel_lag"]["server_histogram"]["p99_at_most_s"].as_f64().is_some(), "{}", d["cancel_lag"]);
}

/// A server for a checkout drill through a proxy: its status fallback points at `provider`.
fn checkout_through(lie: lying_proxy::Lie) -> (bool, serde_json::Value) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let provider = format!("127.0.0.1:{port}");
    let status_url = format!("http://{provider}/v1/payment_intents");
    let flags = ["--webhook-secret", WEBHOOK_SECRET, "--payment-status-url", &status_url];
    let (_server, addr) =
        start_server_with(dir.path(), &[&flags[..], &["--payment-status-lead", "1200ms"]].concat());
    let proxy = lying_proxy::start(&addr, lie);
    checkout(Some(&format!("http://{proxy}")), Some(&provider), "600", "100")
}

#[test]
fn the_checkout_drill_fails_when_webhooks_are_acknowledged_but_not_delivered() {
    let (passed, report) = checkout_through(lying_proxy::Lie::None);
    assert!(passed, "an honest proxy failed: {}", report["drill"]["verification"]);
    let (passed, report) = checkout_through(lying_proxy::Lie::WebhookSwallowed);
    assert!(!passed, "the drill passed: {}", report["drill"]["verification"]);
    let failed = failed_checks(&report["drill"]);
    for must_fail in ["applied_webhooks_are_in_the_history", "each_order_ended_as_its_payment_says"] {
        assert!(failed.iter().any(|f| f == must_fail), "failed {failed:?}, not {must_fail}");
    }
}

/// A small carts drill with soft holds, straight or through a proxy that lies.
fn carts_drill(target: Option<&str>) -> (bool, serde_json::Value) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let report = dir.path().join("report");
    let mut command = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"));
    command.args(["carts", "--users", "800", "--units", "200", "--hold-ms", "2000", "--arrival-secs", "1.5"]);
    command.args(["--think-ms", "300"]);
    if let Some(target) = target {
        command.args(["--target", target]);
    }
    let status = command.arg("--report").arg(&report).status().expect("run holdfast-drill carts");
    let text = std::fs::read_to_string(report.join("carts.json")).expect("a JSON report");
    (status.success(), serde_json::from_str(&text).expect("valid JSON"))
}

#[test]
fn the_carts_drill_verifies_holds_and_fails_against_a_server_that_drops_them() {
    let (passed, r) = carts_drill(None);
    assert!(passed, "the carts drill failed its verification: {}", r["verification"]);
    let s = &r["shoppers"];
    for what in ["held", "sold_out_at_cart", "abandoned", "checked_out", "checkout_repeats"] {
        assert!(s[what].as_u64() > Some(0), "no shopper {what}: {s}");
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (_server, addr) = start_server(dir.path());
    let proxy = lying_proxy::start(&addr, lying_proxy::Lie::HoldDropped);
    let (passed, r) = carts_drill(Some(&format!("http://{proxy}")));
    assert!(!passed, "the drill passed against a server that drops holds: {}", r["verification"]);
    let failed = failed_checks(&r);
    assert!(failed.iter().any(|f| f == "every_holder_got_their_units"), "failed {failed:?}");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let (_server, addr) = start_server(dir.path());
    let proxy = lying_proxy::start(&addr, lying_proxy::Lie::SoldOutFaked);
    let (passed, r) = carts_drill(Some(&format!("http://{proxy}")));
    assert!(!passed, "the drill passed against a server that fakes sold out: {}", r["verification"]);
    assert!(failed_checks(&r).iter().any(|f| f == "sold_out_only_when_it_was"), "{}", r["verification"]);
}
