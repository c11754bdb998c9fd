//! Every route and error code of the contract, over real sockets.

use super::harness::{options, request, reserve_body, send, TestServer};
use holdfast::http::{Route, ROUTES};
use serde_json::Value;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")
}

#[test]
fn stock_routes_set_adjust_and_read() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    assert_eq!(s.get("/v1/skus/tee").code(), "not_found");
    s.stock("tee", 10);
    assert_eq!(s.counts("tee"), (10, 0, 0));
    let r = s.post("/v1/skus/tee/adjust", r#"{"delta": 5, "reason": "restock"}"#);
    assert_eq!((r.status, r.json()["on_hand"].as_u64()), (200, Some(15)));
    let r = s.post("/v1/skus/tee/adjust", r#"{"delta": -3, "reason": "shrinkage"}"#);
    assert_eq!((r.status, r.json()["available"].as_u64()), (200, Some(12)));
    assert_eq!(s.post("/v1/skus/none/adjust", r#"{"delta": 1, "reason": "x"}"#).code(), "not_found");

    // Stock may not fall below what is held.
    assert_eq!(s.post("/v1/reservations", &reserve_body("tee", 10, "u1")).status, 201);
    let r = s.put("/v1/skus/tee", r#"{"on_hand": 9}"#);
    assert_eq!((r.status, r.code().as_str()), (409, "below_held"));
    let r = s.post("/v1/skus/tee/adjust", r#"{"delta": -3, "reason": "lost"}"#);
    assert_eq!((r.status, r.code().as_str()), (409, "below_held"));
    assert_eq!(s.counts("tee"), (2, 10, 0));
}

#[test]
fn reservation_lifecycle_and_its_error_codes() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 5);
    s.stock("cap", 1);

    let r = s.post(
        "/v1/reservations",
        r#"{"items":[{"sku":"tee","qty":2},{"sku":"cap","qty":1}],"ttl_ms":60000,"user_id":"u1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(v["state"], "active");
    assert_eq!(v["expires_at"], "2027-01-15T08:01:00.000Z");
    assert_eq!(r.header("location"), Some(format!("/v1/reservations/{id}").as_str()));
    assert_eq!(s.counts("tee"), (3, 2, 0));

    // All or nothing: cap is gone, so tee is not taken either; the error names the SKU.
    let r = s.post(
        "/v1/reservations",
        r#"{"items":[{"sku":"tee","qty":1},{"sku":"cap","qty":1}],"ttl_ms":60000,"user_id":"u2"}"#,
    );
    assert_eq!((r.status, r.code().as_str()), (409, "insufficient_stock"));
    assert!(r.json()["detail"].as_str().is_some_and(|d| d.contains("cap")), "{}", r.text());
    assert_eq!(s.counts("tee"), (3, 2, 0));
    let r = s.post("/v1/reservations", &reserve_body("nope", 1, "u1"));
    assert_eq!((r.status, r.code().as_str()), (422, "unknown_sku"));

    let got = s.get(&format!("/v1/reservations/{id}")).json();
    assert_eq!((got["state"].as_str(), got["items"].as_array().map(Vec::len)), (Some("active"), Some(2)));

    let r = s.post(&format!("/v1/reservations/{id}/extend"), r#"{"ttl_ms": 120000}"#);
    assert_eq!((r.status, r.json()["expires_at"].as_str()), (200, Some("2027-01-15T08:02:00.000Z")));

    let r = s.post(&format!("/v1/reservations/{id}/commit"), "");
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("committed")));
    let again =
        s.send(request("POST", &format!("/v1/reservations/{id}/commit"), &[("Idempotency-Key", "c1")], None));
    assert_eq!(again.status, 200, "commit is idempotent");
    assert_eq!(s.post(&format!("/v1/reservations/{id}/release"), "{}").code(), "reservation_committed");
    assert_eq!(
        s.post(&format!("/v1/reservations/{id}/extend"), r#"{"ttl_ms": 5000}"#).code(),
        "reservation_committed"
    );
    assert_eq!(s.counts("tee"), (3, 0, 2));
    assert_eq!(s.counts("cap"), (0, 0, 1));

    let id2 = s.post("/v1/reservations", &reserve_body("tee", 1, "u3")).json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(s.post(&format!("/v1/reservations/{id2}/release"), "").json()["state"], "released");
    assert_eq!(s.post(&format!("/v1/reservations/{id2}/release"), "").status, 200, "release is idempotent");
    let r = s.post(&format!("/v1/reservations/{id2}/commit"), "");
    assert_eq!((r.status, r.code().as_str()), (409, "reservation_released"));

    // Expiry: not committable after expires_at (410), and the units come back within a tick.
    let id3 = s.post("/v1/reservations", &reserve_body("tee", 2, "u4")).json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(s.counts("tee"), (1, 2, 2));
    s.advance(60_001);
    assert_eq!(s.counts("tee"), (3, 0, 2), "expired units returned by the ticker");
    let r = s.post(&format!("/v1/reservations/{id3}/commit"), "");
    assert_eq!((r.status, r.code().as_str()), (410, "reservation_expired"));
    assert_eq!(s.get(&format!("/v1/reservations/{id3}")).json()["state"], "expired");
    assert_eq!(
        s.post(&format!("/v1/reservations/{id3}/extend"), r#"{"ttl_ms": 5000}"#).code(),
        "reservation_expired"
    );

    assert_eq!(s.get("/v1/reservations/rsv_00000000000000ff").code(), "not_found");
    assert_eq!(s.post("/v1/reservations/rsv_00000000000000ff/commit", "").code(), "not_found");
    assert!(s.metric("holdfast_reservations_expired_total") >= 1.0);
    assert!(s.metric("holdfast_operations_total{op=\"reserve\",outcome=\"insufficient_stock\"}") >= 1.0);
}

#[test]
fn sales_apply_a_per_user_limit() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 100);
    let body = |qty: u32, user: &str, sale: &str| {
        format!(
            r#"{{"items":[{{"sku":"tee","qty":{qty}}}],"ttl_ms":60000,"user_id":"{user}","sale_id":"{sale}"}}"#
        )
    };
    let r = s.post("/v1/reservations", &body(1, "ann", "noon"));
    assert_eq!((r.status, r.code().as_str()), (422, "unknown_sale"));
    let r = s.put("/v1/sales/noon", r#"{"per_user_limit": 2, "skus": ["tee"]}"#);
    assert_eq!((r.status, r.json()["per_user_limit"].as_u64()), (200, Some(2)));
    assert_eq!(r.json()["skus"], serde_json::json!(["tee"]));
    assert_eq!(s.post("/v1/reservations", &body(2, "ann", "noon")).status, 201);
    let r = s.post("/v1/reservations", &body(1, "ann", "noon"));
    assert_eq!((r.status, r.code().as_str()), (429, "limit_exceeded"));
    assert_eq!(s.post("/v1/reservations", &body(2, "bob", "noon")).status, 201);
    // Leaving sale_id out does not leave the sale: tee is its SKU.
    let unnamed = r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":60000,"user_id":"bob"}"#;
    assert_eq!(s.post("/v1/reservations", unnamed).code(), "limit_exceeded");
    assert_eq!(s.put("/v1/sales/noon", r#"{"per_user_limit": 0}"#).code(), "invalid_request");
    assert_eq!(s.counts("tee"), (96, 4, 0));
}

#[test]
fn idempotent_reserves_replay_and_conflict_also_after_a_restart() {
    let dir = scratch();
    let body = reserve_body("tee", 1, "u1");
    let first = {
        let s = TestServer::start(options(dir.path()));
        s.stock("tee", 10);
        let first = s.post_keyed("/v1/reservations", "order-42", &body);
        assert_eq!(first.status, 201);
        assert_eq!(first.header("idempotent-replayed"), None);
        let again = s.post_keyed("/v1/reservations", "order-42", &body);
        assert_eq!((again.status, again.body.as_slice()), (201, first.body.as_slice()), "the same response");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        let other = s.post_keyed("/v1/reservations", "order-42", &reserve_body("tee", 2, "u1"));
        assert_eq!((other.status, other.code().as_str()), (422, "idempotency_conflict"));
        assert_eq!(s.counts("tee"), (9, 1, 0), "reserved once");
        s.stop().expect("clean stop");
        first
    };
    let s = TestServer::start(options(dir.path()));
    let again = s.post_keyed("/v1/reservations", "order-42", &body);
    assert_eq!((again.status, again.body.as_slice()), (201, first.body.as_slice()), "replayed after restart");
    let other = s.post_keyed("/v1/reservations", "order-42", &reserve_body("tee", 3, "u1"));
    assert_eq!(other.code(), "idempotency_conflict");
    assert_eq!(s.counts("tee"), (9, 1, 0));
}

#[test]
fn a_thousand_concurrent_reserves_sell_exactly_the_hundred_units() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("hot", 100);
    let addr = s.addr;
    let replies = s.block_on(async move {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let bytes =
                    request("POST", "/v1/reservations", &[], Some(&reserve_body("hot", 1, &format!("u{i}"))));
                tokio::spawn(send(addr, bytes))
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.expect("task").expect("a response"));
        }
        replies
    });
    let won: Vec<String> = replies
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.json()["id"].as_str().expect("id").to_owned())
        .collect();
    let refused = replies.iter().filter(|r| r.status == 409 && r.code() == "insufficient_stock").count();
    assert_eq!((won.len(), refused), (100, 900));
    assert_eq!(s.counts("hot"), (0, 100, 0));

    for id in &won[..50] {
        assert_eq!(s.post(&format!("/v1/reservations/{id}/commit"), "").status, 200);
    }
    for id in &won[50..75] {
        assert_eq!(s.post(&format!("/v1/reservations/{id}/release"), "").status, 200);
    }
    assert_eq!(s.counts("hot"), (25, 25, 50));
    s.advance(60_001);
    assert_eq!(s.counts("hot"), (50, 0, 50), "the last 25 expired");
}

#[test]
fn health_readiness_metrics_and_the_api_description() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    assert_eq!(s.get("/healthz").json()["status"], "ok");
    let traced = s.send(request("GET", "/healthz", &[("X-Request-Id", "checkout-7f3a")], None));
    assert_eq!(traced.header("x-request-id"), Some("checkout-7f3a"), "the caller's request id comes back");
    assert!(s.get("/healthz").header("x-request-id").is_some_and(|id| !id.is_empty()), "or one of ours");
    assert_eq!(s.get("/readyz").json()["status"], "ready");
    s.stock("tee", 1);
    let metrics = s.get("/metrics");
    assert!(metrics.header("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")));
    let text = metrics.text();
    for name in [
        "holdfast_http_requests_total{",
        "holdfast_http_request_duration_seconds_bucket{",
        "holdfast_operations_total{",
        "holdfast_live_reservations ",
        "holdfast_reservations_expired_total ",
        "holdfast_wal_sync_seconds_bucket{",
        "holdfast_wal_batch_records_bucket{",
        "holdfast_snapshot_age_seconds ",
        "holdfast_ready 1",
    ] {
        assert!(text.contains(name), "no {name} in /metrics");
    }
    assert!(s.metric("holdfast_wal_sync_seconds_count") >= 1.0, "the PUT was synced and observed");
}

/// Every route the router serves is in `/openapi.json`, with the method, and the reverse.
#[test]
fn the_openapi_description_matches_the_router() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    let doc: Value = s.get("/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut described = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            described.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let served: Vec<(String, String)> =
        ROUTES.iter().map(|r| (r.template().0.to_owned(), r.template().1.to_owned())).collect();
    for route in &served {
        assert!(described.contains(route), "{route:?} is served but not described");
    }
    for route in &described {
        assert!(served.contains(route), "{route:?} is described but not served");
        // And the router really answers it: a concrete path finds this route, not 404/405.
        let concrete =
            route.1.replace("{sku}", "tee").replace("{sale}", "noon").replace("{id}", "rsv_0000000000000001");
        let method = route.0.parse::<hyper::Method>().expect("method");
        let (found, _) = Route::find(&method, &concrete).unwrap_or_else(|p| panic!("{route:?}: {p:?}"));
        assert_eq!(found.template(), (route.0.as_str(), route.1.as_str()));
    }
    // Every schema reference resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').expect("closing quote")];
        assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
    }
}

#[test]
fn a_full_server_sheds_with_503_overloaded_and_retry_after() {
    let dir = scratch();
    let mut o = options(dir.path());
    o.http.in_flight_max = 0;
    let s = TestServer::start(o);
    let r = s.put("/v1/skus/tee", r#"{"on_hand": 1}"#);
    assert_eq!((r.status, r.code().as_str(), r.header("retry-after")), (503, "overloaded", Some("1")));
    assert_eq!(s.get("/healthz").status, 200, "health is never shed");
    assert_eq!(s.metric("holdfast_requests_shed_total{class=\"buyer\"}"), 1.0);
}

/// An extend racing a commit of the same reservation: an extend that succeeded answers the state its
/// own record left (active, its deadline), never the commit that came after it.
#[test]
fn an_extend_answers_the_state_of_its_own_record_not_a_later_one() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 1_000);
    let ids: Vec<String> = (0..150)
        .map(|i| {
            let r = s.post("/v1/reservations", &reserve_body("tee", 1, &format!("u{i}")));
            r.json()["id"].as_str().expect("id").to_owned()
        })
        .collect();
    s.clock.advance(1_000);
    let addr = s.addr;
    let answers = s.block_on(async move {
        let mut tasks = Vec::new();
        for id in ids {
            let extend =
                request("POST", &format!("/v1/reservations/{id}/extend"), &[], Some(r#"{"ttl_ms":120000}"#));
            let commit = request("POST", &format!("/v1/reservations/{id}/commit"), &[], None);
            tasks.push(tokio::spawn(async move { tokio::join!(send(addr, extend), send(addr, commit)).0 }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("task").expect("answered"));
        }
        answers
    });
    let extended: Vec<_> = answers.iter().filter(|r| r.status == 200).collect();
    for r in &extended {
        assert_eq!(r.json()["state"], "active", "{}", r.text());
        assert_eq!(
            r.json()["expires_at"],
            holdfast::clock::rfc3339(super::harness::T0_MS + 1_000 + 120_000),
            "{}",
            r.text()
        );
    }
    assert!(answers.iter().all(|r| r.status == 200 || r.status == 409), "extend after commit: 409");
}

/// The description states the running server's TTL range, so that a value it allows is taken; and a
/// route that refuses an Idempotency-Key says so instead of listing one.
#[test]
fn the_openapi_description_states_this_servers_limits() {
    let dir = scratch();
    let mut o = options(dir.path());
    o.engine.ttl_ms_min = 2_000;
    o.engine.ttl_ms_max = 90_000;
    o.engine.pending_extension_ms = 90_000;
    let s = TestServer::start(o);
    let doc: Value = s.get("/openapi.json").json();
    for schema in ["ReserveRequest", "Extend"] {
        let ttl = &doc["components"]["schemas"][schema]["properties"]["ttl_ms"];
        assert_eq!(
            (ttl["minimum"].as_u64(), ttl["maximum"].as_u64()),
            (Some(2_000), Some(90_000)),
            "{schema}"
        );
    }
    s.stock("tee", 5);
    let at = |ttl: u64| format!(r#"{{"items":[{{"sku":"tee","qty":1}}],"ttl_ms":{ttl},"user_id":"u"}}"#);
    assert_eq!(s.post("/v1/reservations", &at(2_000)).status, 201);
    assert_eq!(s.post("/v1/reservations", &at(90_000)).status, 201);
    assert_eq!(s.post("/v1/reservations", &at(1_999)).code(), "invalid_request");
    // A route that refuses an Idempotency-Key says so, and lists no such header for clients to send.
    let mut refusing = 0;
    for (path, op) in doc["paths"].as_object().expect("paths") {
        for (method, op) in op.as_object().expect("operations") {
            let says = op["description"].as_str().is_some_and(|d| d.contains("Idempotency-Key: refused"));
            let lists =
                op["parameters"].as_array().into_iter().flatten().any(|p| p["name"] == "Idempotency-Key");
            assert!(!(says && lists), "{method} {path}");
            refusing += usize::from(says);
        }
    }
    assert_eq!(refusing, 5, "PUT of a SKU and a sale, extend, an order's payment and cancel");
    let put = s.send(super::harness::request(
        "PUT",
        "/v1/skus/tee",
        &[("Idempotency-Key", "k")],
        Some(r#"{"on_hand":1}"#),
    ));
    assert_eq!(put.code(), "invalid_request");
    // A name percent-encoded in the path is the name (the fuzzer sends `:` as `%3A`).
    assert_eq!(s.put("/v1/skus/tee%3Ared", r#"{"on_hand":2}"#).status, 200);
    assert_eq!(s.get("/v1/skus/tee:red").json()["on_hand"], 2);
    // An integral number written with a fraction is an integer, as JSON Schema says; others are not.
    assert_eq!(s.put("/v1/skus/tee", r#"{"on_hand":7.0}"#).json()["on_hand"], 7);
    for bad in ["7.5", "-1.0", "1e30", "\"7\""] {
        assert_eq!(
            s.put("/v1/skus/tee", &format!(r#"{{"on_hand":{bad}}}"#)).code(),
            "invalid_request",
            "{bad}"
        );
    }
    let r =
        s.post("/v1/reservations", r#"{"items":[{"sku":"tee","qty":1.0}],"ttl_ms":5000.0,"user_id":"f"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.counts("tee").1, 3, "two reserves above and this one");
    // An optional field sent as null is absent, as the description says.
    let r = s.post(
        "/v1/reservations",
        r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":5000,"user_id":"n","sale_id":null,"admission":null}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let sale = s.put(
        "/v1/sales/noon",
        r#"{"per_user_limit":1,"skus":null,"opens_at":null,"order":null,"session_ms":null}"#,
    );
    assert_eq!((sale.status, sale.json()["waiting_room"].is_null()), (200, true), "{}", sale.text());
    let huge = format!(r#"{{"delta":{},"reason":"r"}}"#, (1u64 << 40) + 1);
    assert_eq!(s.post("/v1/skus/tee/adjust", &huge).code(), "invalid_request");
    // A delta within its range that would take on_hand past the most a SKU may hold depends on the
    // stock, not the request: 409, as falling below what is held is.
    let max = format!(r#"{{"delta":{},"reason":"r"}}"#, 1u64 << 40);
    let r = s.post("/v1/skus/tee/adjust", &max);
    assert_eq!((r.status, r.code().as_str()), (409, "above_max"), "{}", r.text());
    // A reason's length is in characters, as JSON Schema counts it; a lone surrogate is not text.
    let r = s.post("/v1/skus/tee/adjust", &format!(r#"{{"delta":1,"reason":"{}"}}"#, "é".repeat(256)));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.post("/v1/skus/tee/adjust", &format!(r#"{{"delta":1,"reason":"{}"}}"#, "é".repeat(257)));
    assert_eq!(r.code(), "invalid_request");
    assert_eq!(s.post("/v1/skus/tee/adjust", r#"{"delta":1,"reason":"\ud800"}"#).code(), "invalid_request");
    assert_eq!(s.get("/v1/skus/tee").json()["on_hand"], 8, "7, and one adjustment taken");
    // A date-time with any offset, as the `date-time` format allows; answered in UTC.
    let r = s.put(
        "/v1/sales/dusk",
        r#"{"per_user_limit":1,"skus":["tee:red"],"opens_at":"2031-05-04T21:30:00.5+02:30","admission_rate":5}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["waiting_room"]["opens_at"], "2031-05-04T19:00:00.500Z");
}
