//! Bad input gets a clear 4xx problem and changes nothing: each case is checked for its status and
//! `code`, and afterwards the log has not grown by a single record and every counter is as it was.

use super::harness::{options, request, TestServer};

const TTL: &str = r#""ttl_ms":60000,"user_id":"u1""#;

fn reserve(items: &str) -> String {
    format!(r#"{{"items":{items},{TTL}}}"#)
}

struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn post(what: &'static str, path: &str, body: &str, status: u16, code: &'static str) -> Case {
    Case { what, bytes: request("POST", path, &[], Some(body)), status, code }
}

fn raw(what: &'static str, text: &str, status: u16, code: &'static str) -> Case {
    Case { what, bytes: text.as_bytes().to_vec(), status, code }
}

fn put_sale(what: &'static str, body: String, status: u16, code: &'static str) -> Case {
    Case { what, bytes: request("PUT", "/v1/sales/gate", &[], Some(&body)), status, code }
}

/// A valid room for sale `gate`, with one field replaced (or added).
fn room(field: &str) -> String {
    let mut fields = vec![
        r#""per_user_limit":1"#.to_owned(),
        r#""skus":["cap"]"#.to_owned(),
        r#""opens_at":"2027-01-15T09:00:00Z""#.to_owned(),
        r#""admission_rate":5"#.to_owned(),
    ];
    let key = field.split(':').next().unwrap_or_default();
    fields.retain(|f| !f.starts_with(key));
    fields.push(field.to_owned());
    format!("{{{}}}", fields.join(","))
}

fn cases(id: &str) -> Vec<Case> {
    let r = "/v1/reservations";
    let bad = 400;
    let invalid = "invalid_request";
    let long_sku = "s".repeat(65);
    let long_user = "u".repeat(129);
    let many_items: Vec<String> = (0..33).map(|i| format!(r#"{{"sku":"s{i}","qty":1}}"#)).collect();
    let big = format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"pad":"{}"}}"#, "x".repeat(70_000));
    let commit = format!("/v1/reservations/{id}/commit");
    let extend = format!("/v1/reservations/{id}/extend");
    vec![
        // Malformed JSON.
        post("empty body", r, "", bad, invalid),
        post("not JSON", r, "hello", bad, invalid),
        post("truncated JSON", r, r#"{"items":[{"sku":"tee""#, bad, invalid),
        post("trailing garbage", r, &format!("{}xyz", reserve(r#"[{"sku":"tee","qty":1}]"#)), bad, invalid),
        post("a JSON array", r, "[]", bad, invalid),
        post("the fields as an array", r, r#"[[{"sku":"tee","qty":1}],60000,"u1"]"#, bad, invalid),
        post("an item as an array", r, &reserve(r#"[["tee",1]]"#), bad, invalid),
        post("an empty admission", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"admission":""}}"#), bad, invalid),
        post("an admission with a space", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"admission":"a b"}}"#), bad, invalid),
        post("a member named twice", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"ttl_ms":5000}}"#), bad, invalid),
        post("JSON null", r, "null", bad, invalid),
        post("invalid UTF-8 escape", r, r#"{"items":"\ud800"}"#, bad, invalid),
        // Wrong types.
        post("items not an array", r, &reserve(r#""tee""#), bad, invalid),
        post("qty a string", r, &reserve(r#"[{"sku":"tee","qty":"1"}]"#), bad, invalid),
        post("qty a float", r, &reserve(r#"[{"sku":"tee","qty":1.5}]"#), bad, invalid),
        post("sku a number", r, &reserve(r#"[{"sku":7,"qty":1}]"#), bad, invalid),
        post("ttl a string", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":"60s","user_id":"u1"}"#, bad, invalid),
        post("user a number", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":60000,"user_id":5}"#, bad, invalid),
        post("sale a bool", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"sale_id":true}}"#), bad, invalid),
        // Missing and unknown fields.
        post("no items", r, &format!("{{{TTL}}}"), bad, invalid),
        post("no ttl", r, r#"{"items":[{"sku":"tee","qty":1}],"user_id":"u1"}"#, bad, invalid),
        post("no user", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":60000}"#, bad, invalid),
        post("item without qty", r, &reserve(r#"[{"sku":"tee"}]"#), bad, invalid),
        post("item without sku", r, &reserve(r#"[{"qty":1}]"#), bad, invalid),
        post("unknown top-level field", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"coupon":"x"}}"#), bad, invalid),
        post("unknown item field", r, &reserve(r#"[{"sku":"tee","qty":1,"price":3}]"#), bad, invalid),
        // Quantities.
        post("zero qty", r, &reserve(r#"[{"sku":"tee","qty":0}]"#), bad, invalid),
        post("negative qty", r, &reserve(r#"[{"sku":"tee","qty":-1}]"#), bad, invalid),
        post("qty above the item maximum", r, &reserve(r#"[{"sku":"tee","qty":10001}]"#), bad, invalid),
        post("qty beyond u32", r, &reserve(r#"[{"sku":"tee","qty":99999999999}]"#), bad, invalid),
        post("empty items", r, &reserve("[]"), bad, invalid),
        post("duplicate SKUs", r, &reserve(r#"[{"sku":"tee","qty":1},{"sku":"tee","qty":1}]"#), bad, invalid),
        post("too many items", r, &reserve(&format!("[{}]", many_items.join(","))), bad, invalid),
        // TTL.
        post("ttl zero", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":0,"user_id":"u1"}"#, bad, invalid),
        post("ttl below the minimum", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":999,"user_id":"u1"}"#, bad, invalid),
        post("ttl above the maximum", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":3600001,"user_id":"u1"}"#, bad, invalid),
        post("ttl negative", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":-5,"user_id":"u1"}"#, bad, invalid),
        // Names.
        post("SKU too long", r, &reserve(&format!(r#"[{{"sku":"{long_sku}","qty":1}}]"#)), bad, invalid),
        post("SKU with a control character", r, &reserve(r#"[{"sku":"te\u0001e","qty":1}]"#), bad, invalid),
        post("SKU with a space", r, &reserve(r#"[{"sku":"t e","qty":1}]"#), bad, invalid),
        post("empty SKU", r, &reserve(r#"[{"sku":"","qty":1}]"#), bad, invalid),
        post("user too long", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],"ttl_ms":60000,"user_id":"{long_user}"}}"#), bad, invalid),
        post("user with a newline", r, r#"{"items":[{"sku":"tee","qty":1}],"ttl_ms":60000,"user_id":"a\nb"}"#, bad, invalid),
        Case {
            what: "idempotency key too long",
            bytes: request("POST", r, &[("Idempotency-Key", &"k".repeat(129))], Some(&reserve(r#"[{"sku":"tee","qty":1}]"#))),
            status: bad,
            code: invalid,
        },
        Case {
            what: "two idempotency keys",
            bytes: request("POST", r, &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")], Some(&reserve(r#"[{"sku":"tee","qty":1}]"#))),
            status: bad,
            code: invalid,
        },
        Case {
            what: "a restock's idempotency key on a reserve",
            bytes: request("POST", r, &[("Idempotency-Key", "pg-adjustment-1")], Some(&reserve(r#"[{"sku":"tee","qty":1}]"#))),
            status: bad,
            code: invalid,
        },
        Case {
            what: "a restock's idempotency key on an adjustment",
            bytes: request("POST", "/v1/skus/tee/adjust", &[("Idempotency-Key", "pg-adjustment-1")], Some(r#"{"delta":1,"reason":"x"}"#)),
            status: bad,
            code: invalid,
        },
        // Stock administration.
        Case { what: "a SKU named ..", bytes: request("PUT", "/v1/skus/..", &[], Some(r#"{"on_hand":1}"#)), status: bad, code: invalid },
        Case { what: "a sale named .", bytes: request("PUT", "/v1/sales/.", &[], Some(r#"{"per_user_limit":1}"#)), status: bad, code: invalid },
        Case { what: "on_hand as an array", bytes: request("PUT", "/v1/skus/tee", &[], Some("[7]")), status: bad, code: invalid },
        Case { what: "a sale as an array", bytes: request("PUT", "/v1/sales/noon", &[], Some(r#"[2,["tee"]]"#)), status: bad, code: invalid },
        Case { what: "negative on_hand", bytes: request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand":-1}"#)), status: bad, code: invalid },
        Case { what: "on_hand too large", bytes: request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand":1099511627777}"#)), status: bad, code: invalid },
        Case { what: "SKU path with a bad byte", bytes: request("PUT", "/v1/skus/te%20e", &[], Some(r#"{"on_hand":1}"#)), status: bad, code: invalid },
        post("zero adjustment", "/v1/skus/tee/adjust", r#"{"delta":0,"reason":"x"}"#, bad, invalid),
        post("adjustment without reason", "/v1/skus/tee/adjust", r#"{"delta":1}"#, bad, invalid),
        post("adjustment with an empty reason", "/v1/skus/tee/adjust", r#"{"delta":1,"reason":""}"#, bad, invalid),
        post("adjustment posing as a Postgres restock", "/v1/skus/tee/adjust", r#"{"delta":-1,"reason":"pg-adjustment:3: typo"}"#, bad, invalid),
        Case { what: "sale limit a string", bytes: request("PUT", "/v1/sales/noon", &[], Some(r#"{"per_user_limit":"2"}"#)), status: bad, code: invalid },
        // Sales with a waiting room, joining and polling.
        put_sale("admission rate zero", room(r#""admission_rate":0"#), bad, invalid),
        put_sale("opens_at not a time", room(r#""opens_at":"tomorrow""#), bad, invalid),
        put_sale("opens_at a number", room(r#""opens_at":1800000000000"#), bad, invalid),
        put_sale("unknown order", room(r#""order":"random""#), bad, invalid),
        put_sale("no skus", room(r#""skus":[]"#), bad, invalid),
        put_sale("a SKU twice", room(r#""skus":["tee","tee"]"#), bad, invalid),
        put_sale("too many skus", room(&format!(r#""skus":[{}]"#, vec![r#""tee""#; 65].join(","))), bad, invalid),
        put_sale("session too short", room(r#""session_ms":10"#), bad, invalid),
        put_sale("max_active zero", room(r#""max_active":0"#), bad, invalid),
        put_sale("an unknown SKU", room(r#""skus":["nope"]"#), 422, "unknown_sku"),
        put_sale("a room without skus", r#"{"per_user_limit":1,"opens_at":"2027-01-15T09:00:00Z","admission_rate":5}"#.into(), bad, invalid),
        put_sale("a gated sale without its room", r#"{"per_user_limit":3}"#.into(), 409, "sale_locked"),
        post("join without user", "/v1/sales/gate/queue", "{}", bad, invalid),
        post("join with an empty user", "/v1/sales/gate/queue", r#"{"user_id":""}"#, bad, invalid),
        post("join with an unknown field", "/v1/sales/gate/queue", r#"{"user_id":"u","vip":true}"#, bad, invalid),
        post("join a sale without a room", "/v1/sales/noon/queue", r#"{"user_id":"u"}"#, 404, "not_found"),
        post("join an unknown sale", "/v1/sales/nope/queue", r#"{"user_id":"u"}"#, 404, "not_found"),
        Case { what: "poll with garbage", bytes: request("GET", "/v1/sales/gate/queue/garbage", &[], None), status: 403, code: "invalid_ticket" },
        Case { what: "read an unknown sale", bytes: request("GET", "/v1/sales/nope", &[], None), status: 404, code: "not_found" },
        Case { what: "DELETE a queue", bytes: request("DELETE", "/v1/sales/gate/queue", &[], None), status: 405, code: "method_not_allowed" },
        post("reserve in a gated sale without admission", r, &format!(r#"{{"items":[{{"sku":"cap","qty":1}}],{TTL},"sale_id":"gate"}}"#), 403, "not_admitted"),
        post("reserve with a forged admission", r, &format!(r#"{{"items":[{{"sku":"cap","qty":1}}],{TTL},"sale_id":"gate","admission":"AAAA"}}"#), 403, "not_admitted"),
        // A sale's SKUs count against it whether or not the reserve names it.
        post("reserve a gated SKU without naming its sale", r, &reserve(r#"[{"sku":"cap","qty":1}]"#), 403, "not_admitted"),
        post("reserve a gated SKU naming another sale", r, &format!(r#"{{"items":[{{"sku":"cap","qty":1}}],{TTL},"sale_id":"noon"}}"#), 422, "sale_mismatch"),
        post("reserve naming a sale that covers none of its SKUs", r, &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],{TTL},"sale_id":"noon"}}"#), 422, "sale_mismatch"),
        Case { what: "a sale taking another sale's SKU", bytes: request("PUT", "/v1/sales/noon", &[], Some(r#"{"per_user_limit":2,"skus":["cap"]}"#)), status: 409, code: "sku_in_other_sale" },
        Case { what: "a sale naming an unknown SKU", bytes: request("PUT", "/v1/sales/noon", &[], Some(r#"{"per_user_limit":2,"skus":["nope"]}"#)), status: 422, code: "unknown_sku" },
        // Reservation ids and bodies of the reservation routes.
        post("malformed id", "/v1/reservations/abc/commit", "", bad, invalid),
        post("id with upper-case hex", "/v1/reservations/rsv_00000000000000AB/commit", "", bad, invalid),
        // Of the description's form, but no id can be it: no such reservation.
        post("id of sequence zero", "/v1/reservations/rsv_0000000000000000/release", "", 404, "not_found"),
        post("long id with tag zero", "/v1/reservations/rsv_00000000000000010000000000000000/commit", "", 404, "not_found"),
        post("unknown id", "/v1/reservations/rsv_00000000000000ab/commit", "", 404, "not_found"),
        // A path segment reads percent-decoded; a malformed or a slash-making encoding is refused.
        Case { what: "a malformed percent-encoding", bytes: request("GET", "/v1/skus/te%2", &[], None), status: 400, code: "invalid_request" },
        Case { what: "an encoded slash", bytes: request("GET", "/v1/skus/a%2Fb", &[], None), status: 400, code: "invalid_request" },
        Case { what: "an encoding that is not UTF-8", bytes: request("GET", "/v1/skus/%FF", &[], None), status: 400, code: "invalid_request" },
        post("commit with a body", &commit, r#"{"force":true}"#, bad, invalid),
        post("commit with an array body", &commit, "[]", bad, invalid),
        post("extend with ttl zero", &extend, r#"{"ttl_ms":0}"#, bad, invalid),
        post("extend with its fields as an array", &extend, "[120000]", bad, invalid),
        post("extend without ttl", &extend, "{}", bad, invalid),
        // Size, type, method and route.
        post("oversized body by Content-Length", r, &big, 413, "payload_too_large"),
        raw(
            "oversized chunked body",
            &format!(
                "POST /v1/reservations HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                70_000,
                "x".repeat(70_000)
            ),
            413,
            "payload_too_large",
        ),
        Case {
            what: "form content type",
            bytes: request("POST", r, &[("Content-Type", "application/x-www-form-urlencoded")], Some("items=tee")),
            status: 415,
            code: "unsupported_media_type",
        },
        raw(
            "no content type",
            "POST /v1/reservations HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            415,
            "unsupported_media_type",
        ),
        Case { what: "DELETE a SKU", bytes: request("DELETE", "/v1/skus/tee", &[], None), status: 405, code: "method_not_allowed" },
        Case { what: "GET the reservations list", bytes: request("GET", r, &[], None), status: 405, code: "method_not_allowed" },
        Case { what: "PUT a commit", bytes: request("PUT", &commit, &[], Some("{}")), status: 405, code: "method_not_allowed" },
        Case { what: "unknown route", bytes: request("GET", "/v2/skus/tee", &[], None), status: 404, code: "not_found" },
        Case { what: "unknown action", bytes: request("POST", "/v1/reservations/rsv_0000000000000001/refund", &[], Some("{}")), status: 404, code: "not_found" },
        Case { what: "too deep a path", bytes: request("GET", "/v1/skus/tee/a/b/c", &[], None), status: 404, code: "not_found" },
        Case { what: "root", bytes: request("GET", "/", &[], None), status: 404, code: "not_found" },
    ]
}

#[test]
fn bad_requests_get_a_clear_problem_and_change_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 10);
    s.stock("cap", 10);
    assert_eq!(s.put("/v1/sales/noon", r#"{"per_user_limit": 2}"#).status, 200);
    assert_eq!(s.put("/v1/sales/gate", &room(r#""max_active":10"#)).status, 200);
    let held = s.post("/v1/reservations", &super::harness::reserve_body("tee", 1, "u0"));
    let id = held.json()["id"].as_str().expect("id").to_owned();
    let before = (s.counts("tee"), s.get(&format!("/v1/reservations/{id}")).text());
    let lsn = s.metric("holdfast_wal_appended_lsn");

    let cases = cases(&id);
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let reply = s.send(case.bytes);
        let code = (reply.header("content-type") == Some("application/problem+json")).then(|| reply.code());
        if reply.status != case.status || code.as_deref() != Some(case.code) {
            failures.push(format!(
                "{}: got {} {:?}, want {} {}: {}",
                case.what,
                reply.status,
                code,
                case.status,
                case.code,
                reply.text()
            ));
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!((s.counts("tee"), s.get(&format!("/v1/reservations/{id}")).text()), before, "state unchanged");
    assert_eq!(s.counts("cap"), (10, 0, 0), "nothing of the gated SKU was reserved");
    assert_eq!(s.metric("holdfast_wal_appended_lsn"), lsn, "nothing was logged");
}

/// Headers beyond the limits are refused by the HTTP layer (431) before any handler runs, and a
/// request line that does not parse with 400, both with an empty body as the API description says.
#[test]
fn header_floods_are_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = TestServer::start(options(dir.path()));
    let many: String = (0..100).map(|i| format!("X-Flood-{i}: 1\r\n")).collect();
    let reply =
        s.send(format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n").into_bytes());
    assert_eq!(reply.status, 431);
    let huge = "v".repeat(20_000);
    let reply = s.send(
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    );
    assert_eq!((reply.status, reply.text()), (431, String::new()));
    let reply = s.send(b"GARBAGE\r\n\r\n".to_vec());
    assert_eq!((reply.status, reply.text()), (400, String::new()));
    assert_eq!(s.get("/healthz").status, 200, "and the server carries on");
}

#[test]
fn a_long_path_is_not_echoed_whole_by_404_or_405() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = TestServer::start(options(dir.path()));
    let long = "a".repeat(12_000);
    for (method, path, status) in
        [("DELETE", format!("/v1/skus/{long}"), 405), ("GET", format!("/v1/nothing/{long}"), 404)]
    {
        let reply = s.send(request(method, &path, &[], None));
        assert_eq!(reply.status, status, "{method}");
        assert!(reply.body.len() < 1_000, "{method}: {} bytes answered", reply.body.len());
    }
}
