//! Carts over HTTP: a guest cart filled, merged into a signed-in cart (capped by the sale's per-user
//! limit), checked out into an order in one record, all of it surviving a restart; and bad input to
//! every cart route answered clearly, documented, and changing nothing.

use super::harness::{options, request, TestServer, T0_MS};
use super::orders_bad_input::{case, run_cases, Case};
use serde_json::{json, Value};

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")
}

fn put_item(s: &TestServer, cart: &str, sku: &str, body: &str) -> Value {
    let r = s.put(&format!("/v1/carts/{cart}/items/{sku}"), body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn cart(s: &TestServer, cart: &str) -> Value {
    let r = s.get(&format!("/v1/carts/{cart}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// `(sku, qty, unit_price)` of a cart's lines.
fn lines(cart: &Value) -> Vec<(String, u64, Option<u64>)> {
    let items = cart["items"].as_array().expect("items");
    let line = |i: &Value| {
        (
            i["sku"].as_str().expect("sku").to_owned(),
            i["qty"].as_u64().expect("qty"),
            i["unit_price"].as_u64(),
        )
    };
    items.iter().map(line).collect()
}

fn checkout_body(cart: &str) -> String {
    json!({"user_id": "alice", "cart_id": cart, "currency": "usd", "pay_within_ms": 600_000}).to_string()
}

#[test]
fn a_guest_cart_merged_and_checked_out_in_one_record_survives_a_restart() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 10);
    s.stock("mug", 3);
    s.stock("cap", 5);
    let sale = r#"{"per_user_limit": 2, "skus": ["cap"]}"#;
    assert_eq!(s.put("/v1/sales/drop", sale).status, 200);

    // A guest fills a cart; GET shows what is available now.
    put_item(&s, "sess-9f2", "tee", r#"{"qty": 2, "unit_price": 1500}"#);
    put_item(&s, "sess-9f2", "cap", r#"{"qty": 2, "unit_price": 900}"#);
    let guest = put_item(&s, "sess-9f2", "mug", r#"{"qty": 1, "unit_price": 700}"#);
    assert_eq!(guest["units"], 5);
    let mug = guest["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["sku"] == "mug")
        .cloned()
        .expect("a mug line");
    assert_eq!(mug["available"], 3, "{guest}");
    // Carts without a hold take no stock.
    assert_eq!(s.counts("tee"), (10, 0, 0));

    // Alice already had a cart; she signs in and the guest cart merges into hers.
    put_item(&s, "alice@example.com", "cap", r#"{"qty": 1, "unit_price": 950}"#);
    put_item(&s, "alice@example.com", "tee", r#"{"qty": 1}"#);
    let r = s.post("/v1/carts/alice@example.com/merge", r#"{"from": "sess-9f2"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let merged = r.json();
    assert_eq!(merged["merged"], "merged");
    assert_eq!(
        lines(&merged),
        vec![
            // 1 + 2 caps, capped by the sale's per-user limit; her own price kept.
            ("cap".into(), 2, Some(950)),
            ("mug".into(), 1, Some(700)),
            // Her line had no price: the guest's is taken.
            ("tee".into(), 3, Some(1500)),
        ]
    );
    assert_eq!(s.get("/v1/carts/sess-9f2").code(), "cart_not_found");
    // A retried merge changes nothing and says so.
    let again = s.post("/v1/carts/alice@example.com/merge", r#"{"from": "sess-9f2"}"#);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["merged"], "already_merged");
    assert_eq!(lines(&again.json()), lines(&merged));

    // One order counts against one sale or none, as a reserve does: the sale's cap and the other
    // SKUs cannot check out together, and the refusal changes nothing.
    let mixed = s.post_keyed("/v1/orders", "ck-0", &checkout_body("alice@example.com"));
    assert_eq!((mixed.status, mixed.code()), (422, "sale_mismatch".into()), "{}", mixed.text());
    assert_eq!(lines(&cart(&s, "alice@example.com")), lines(&merged));
    // She lowers the tee to 2 and removes the cap.
    put_item(&s, "alice@example.com", "tee", r#"{"qty": 2}"#);
    let r = s.send(request("DELETE", "/v1/carts/alice@example.com/items/cap", &[], None));
    assert_eq!(r.status, 200, "{}", r.text());
    let lsn_before_restart = s.metric("holdfast_wal_appended_lsn");
    s.stop().expect("a clean stop");

    // Everything acknowledged is there after a restart (replayed from the log).
    let s = TestServer::start_at(options(dir.path()), T0_MS + 1_000);
    assert_eq!(s.metric("holdfast_wal_appended_lsn"), lsn_before_restart);
    let expected = vec![("mug".into(), 1, Some(700)), ("tee".into(), 2, Some(1500))];
    assert_eq!(lines(&cart(&s, "alice@example.com")), expected);
    assert_eq!(s.metric("holdfast_carts "), 1.0);
    assert_eq!(s.metric("holdfast_cart_items "), 2.0);

    // Checkout: the order's lines are the cart's, at its prices; the cart is gone with it.
    let r = s.post_keyed("/v1/orders", "ck-1", &checkout_body("alice@example.com"));
    assert_eq!(r.status, 201, "{}", r.text());
    let order = r.json();
    assert_eq!(order["amount"], 700 + 2 * 1500);
    assert_eq!(order["state"], "awaiting_payment");
    assert_eq!(s.counts("mug"), (2, 1, 0));
    assert_eq!(s.counts("tee"), (8, 2, 0));
    assert_eq!(s.get("/v1/carts/alice@example.com").code(), "cart_not_found");
    // The retry of the checkout (the cart is gone) returns the order; another body with the key is refused.
    let retry = s.post_keyed("/v1/orders", "ck-1", &checkout_body("alice@example.com"));
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json()["id"], order["id"]);
    assert_eq!(s.post_keyed("/v1/orders", "ck-1", &checkout_body("bob")).code(), "idempotency_conflict");
    assert_eq!(s.counts("tee"), (8, 2, 0));
    let lsn = s.metric("holdfast_wal_appended_lsn");
    s.stop().expect("a clean stop");

    let s = TestServer::start_at(options(dir.path()), T0_MS + 2_000);
    assert_eq!(s.metric("holdfast_wal_appended_lsn"), lsn);
    assert_eq!(
        s.get(&format!("/v1/orders/{}", order["id"].as_str().expect("id"))).json()["amount"],
        order["amount"]
    );
    assert_eq!(s.get("/v1/carts/alice@example.com").code(), "cart_not_found");
    assert_eq!((s.counts("mug"), s.counts("tee")), ((2, 1, 0), (8, 2, 0)));
}

#[test]
fn idle_carts_expire_and_are_counted() {
    let dir = scratch();
    let mut o = options(dir.path());
    o.engine.cart_idle_ms = 60_000;
    let s = TestServer::start(o);
    s.stock("tee", 10);
    put_item(&s, "old", "tee", r#"{"qty": 1}"#);
    s.advance(30_000);
    put_item(&s, "new", "tee", r#"{"qty": 1}"#);
    assert_eq!(cart(&s, "old")["expires_at"], holdfast::clock::rfc3339(T0_MS + 60_000));
    s.advance(30_001);
    assert_eq!(s.get("/v1/carts/old").code(), "cart_not_found");
    assert_eq!(cart(&s, "new")["units"], 1);
    assert_eq!(s.metric("holdfast_carts_expired_total"), 1.0);
}

fn cases() -> Vec<Case> {
    let json_req = |method: &str, path: &str, body: &str| request(method, path, &[], Some(body));
    let put = |path: &str, body: &str| json_req("PUT", &format!("/v1/carts/{path}"), body);
    let merge = |cart: &str, body: &str| json_req("POST", &format!("/v1/carts/{cart}/merge"), body);
    let del = |path: &str| request("DELETE", &format!("/v1/carts/{path}"), &[], None);
    let get = |path: &str| request("GET", &format!("/v1/carts/{path}"), &[], None);
    let long = "c".repeat(129);
    let (bad, invalid) = (400, "invalid_request");
    let c = |what: &str, bytes, status, code| case(what, bytes, status, code);
    let order =
        |body: Value| request("POST", "/v1/orders", &[("Idempotency-Key", "k-bad")], Some(&body.to_string()));
    let checkout = |cart: &str| order(json!({"user_id": "u1", "cart_id": cart, "currency": "usd"}));
    vec![
        c("qty negative", put("full/items/tee", r#"{"qty": -1}"#), bad, invalid),
        c("qty a fraction", put("full/items/tee", r#"{"qty": 1.5}"#), bad, invalid),
        c("qty a string", put("full/items/tee", r#"{"qty": "2"}"#), bad, invalid),
        c("qty missing", put("full/items/tee", r#"{"unit_price": 5}"#), bad, invalid),
        c("qty over the item limit", put("full/items/tee", r#"{"qty": 10001}"#), bad, invalid),
        c(
            "qty over the sale's per-user limit",
            put("full/items/cap", r#"{"qty": 3}"#),
            429,
            "limit_exceeded",
        ),
        c("qty zero on a missing item", put("full/items/mug", r#"{"qty": 0}"#), 404, "item_not_found"),
        c("qty zero in a missing cart", put("ghost/items/tee", r#"{"qty": 0}"#), 404, "cart_not_found"),
        c("an unknown SKU", put("full/items/nope", r#"{"qty": 1}"#), 422, "unknown_sku"),
        c("a SKU with a bad character", put("full/items/t%20e", r#"{"qty": 1}"#), bad, invalid),
        c("a SKU named ..", put("full/items/..", r#"{"qty": 1}"#), bad, invalid),
        c("price not a number", put("full/items/tee", r#"{"qty": 1, "unit_price": "9.99"}"#), bad, invalid),
        c("price negative", put("full/items/tee", r#"{"qty": 1, "unit_price": -5}"#), bad, invalid),
        c(
            "price above its maximum",
            put("full/items/tee", r#"{"qty": 1, "unit_price": 28147497672}"#),
            bad,
            invalid,
        ),
        c("an unknown field", put("full/items/tee", r#"{"qty": 1, "coupon": "X"}"#), bad, invalid),
        c("malformed JSON", put("full/items/tee", r#"{"qty": "#), bad, invalid),
        c("a JSON array", put("full/items/tee", "[1]"), bad, invalid),
        c(
            "text/plain",
            request(
                "PUT",
                "/v1/carts/full/items/tee",
                &[("Content-Type", "text/plain")],
                Some(r#"{"qty":1}"#),
            ),
            415,
            "unsupported_media_type",
        ),
        c(
            "an Idempotency-Key on an item",
            request("PUT", "/v1/carts/full/items/tee", &[("Idempotency-Key", "k")], Some(r#"{"qty":1}"#)),
            bad,
            invalid,
        ),
        c("a cart id too long", put(&format!("{long}/items/tee"), r#"{"qty": 1}"#), bad, invalid),
        c("a cart id with a bad character", put("a%24b/items/tee", r#"{"qty": 1}"#), bad, invalid),
        c("a cart id with a space", get("a%20b"), bad, invalid),
        c("a cart named .", get("."), bad, invalid),
        c("a 33rd SKU in a full cart", put("full/items/mug", r#"{"qty": 1}"#), 409, "cart_full"),
        c("a new cart past the carts bound", put("third/items/tee", r#"{"qty": 1}"#), 409, "carts_full"),
        c("merge from itself", merge("full", r#"{"from": "full"}"#), 422, "merge_into_itself"),
        c("merge of an unknown cart", merge("full", r#"{"from": "ghost"}"#), 404, "cart_not_found"),
        c(
            "merge into a new cart from an unknown cart",
            merge("third", r#"{"from": "ghost"}"#),
            404,
            "cart_not_found",
        ),
        c("merge past the items bound", merge("full", r#"{"from": "guest"}"#), 409, "cart_full"),
        c("merge without from", merge("full", "{}"), bad, invalid),
        c("merge from a bad id", merge("full", r#"{"from": "a b"}"#), bad, invalid),
        c("merge from a number", merge("full", r#"{"from": 7}"#), bad, invalid),
        c("merge with an unknown field", merge("full", r#"{"from": "guest", "all": true}"#), bad, invalid),
        c("GET a cart that does not exist", get("ghost"), 404, "cart_not_found"),
        c("DELETE a cart that does not exist", del("ghost"), 404, "cart_not_found"),
        c("DELETE an item not in the cart", del("full/items/mug"), 404, "item_not_found"),
        c("DELETE an item of a cart that does not exist", del("ghost/items/tee"), 404, "cart_not_found"),
        c("POST to a cart", json_req("POST", "/v1/carts/full", "{}"), 405, "method_not_allowed"),
        c("GET an item", get("full/items/tee"), 405, "method_not_allowed"),
        c("an unknown cart action", json_req("POST", "/v1/carts/full/empty", "{}"), 404, "not_found"),
        c("checkout of an unknown cart", checkout("ghost"), 404, "cart_not_found"),
        c("checkout of an unpriced line", checkout("guest"), 409, "cart_item_unpriced"),
        c(
            "checkout with items and cart_id",
            order(json!({"user_id": "u1", "cart_id": "full", "currency": "usd",
                "items": [{"sku": "tee", "qty": 1, "unit_price": 1}]})),
            bad,
            invalid,
        ),
        c("checkout naming a cart with a bad id", checkout("a b"), bad, invalid),
        c("checkout naming the cart .", checkout("."), 404, "cart_not_found"),
        c(
            "checkout without Idempotency-Key",
            request(
                "POST",
                "/v1/orders",
                &[],
                Some(&json!({"user_id": "u1", "cart_id": "full", "currency": "usd"}).to_string()),
            ),
            bad,
            invalid,
        ),
    ]
}

#[test]
fn bad_cart_requests_get_a_clear_answer_and_change_nothing() {
    let dir = scratch();
    let mut o = options(dir.path());
    o.engine.carts_max = 2;
    let s = TestServer::start(o);
    s.stock("tee", 5);
    s.stock("mug", 5);
    s.stock("cap", 5);
    for i in 0..32 {
        s.stock(&format!("s{i}"), 1);
    }
    assert_eq!(s.put("/v1/sales/drop", r#"{"per_user_limit": 2, "skus": ["cap"]}"#).status, 200);
    // `full` holds 32 SKUs, priced; `guest` holds one without a price that `full` lacks.
    for i in 0..31 {
        put_item(&s, "full", &format!("s{i}"), r#"{"qty": 1, "unit_price": 10}"#);
    }
    put_item(&s, "full", "tee", r#"{"qty": 1, "unit_price": 10}"#);
    put_item(&s, "guest", "s31", r#"{"qty": 1}"#);

    let state = |s: &TestServer| (cart(s, "full"), cart(s, "guest"), s.counts("tee"), s.counts("s31"));
    let before = state(&s);
    let lsn = s.metric("holdfast_wal_appended_lsn");
    let doc: Value = s.get("/openapi.json").json();
    let cases = cases();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let failures = run_cases(&s, &doc, cases);
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(state(&s), before, "carts and stock unchanged");
    assert_eq!(s.metric("holdfast_wal_appended_lsn"), lsn, "nothing was logged");
}

#[test]
fn soft_holds_keep_a_carts_units_until_checkout_or_their_deadline() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 3);
    let sale = r#"{"per_user_limit": 2, "skus": ["tee"], "cart_hold_ms": 600000}"#;
    let r = s.put("/v1/sales/drop", sale);
    assert_eq!((r.status, &r.json()["cart_hold_ms"]), (200, &json!(600_000)), "{}", r.text());

    // Adding to a cart holds the units: the shopper is not told "sold out" at checkout.
    let a = put_item(&s, "ann", "tee", r#"{"qty": 2, "unit_price": 1500}"#);
    assert_eq!(a["items"][0]["held_until"], holdfast::clock::rfc3339(T0_MS + 600_000));
    assert_eq!(s.counts("tee"), (1, 2, 0));
    assert_eq!(s.metric("holdfast_cart_held_lines "), 1.0);
    // Someone else is told at once that only one is left.
    let b = s.put("/v1/carts/bob/items/tee", r#"{"qty": 2, "unit_price": 1500}"#);
    assert_eq!((b.status, b.code()), (409, "insufficient_stock".into()), "{}", b.text());
    assert!(b.text().contains("tee has 1 available"), "{}", b.text());
    assert!(s.get("/v1/carts/bob").status == 404, "a refused hold makes no cart");
    // Ann lowers hers to one: the hold follows (one record: the old hold released, the new taken).
    s.advance(60_000);
    let a = put_item(&s, "ann", "tee", r#"{"qty": 1}"#);
    assert_eq!(a["items"][0]["held_until"], holdfast::clock::rfc3339(T0_MS + 660_000));
    assert_eq!(s.counts("tee"), (2, 1, 0));
    put_item(&s, "bob", "tee", r#"{"qty": 2, "unit_price": 1500}"#);
    assert_eq!(s.counts("tee"), (0, 3, 0));

    // Bob checks out: his held units become the order's reservation without ever being free.
    let r = s.post_keyed(
        "/v1/orders",
        "bob-1",
        &json!({"user_id": "bob", "cart_id": "bob", "currency": "usd"}).to_string(),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.counts("tee"), (0, 3, 0));
    let order = r.json();
    let reservation = s.get(&format!("/v1/reservations/{}", order["reservation_id"].as_str().expect("id")));
    assert_eq!(reservation.json()["items"], json!([{"sku": "tee", "qty": 2}]));

    // Ann abandons her cart: her hold lapses at its deadline and the unit returns.
    s.advance(600_001);
    assert_eq!(s.counts("tee"), (1, 2, 0));
    let a = cart(&s, "ann");
    assert!(a["items"][0].get("held_until").is_none(), "{a}");
    // Editing it again holds afresh, while the unit is there.
    put_item(&s, "ann", "tee", r#"{"qty": 1}"#);
    assert_eq!(s.counts("tee"), (0, 3, 0));
    // Deleting the cart returns the held unit at once.
    assert_eq!(s.send(request("DELETE", "/v1/carts/ann", &[], None)).status, 204);
    assert_eq!(s.counts("tee"), (1, 2, 0));
    let lsn = s.metric("holdfast_wal_appended_lsn");
    s.stop().expect("a clean stop");

    let s = TestServer::start_at(options(dir.path()), T0_MS + 700_000);
    assert_eq!(s.metric("holdfast_wal_appended_lsn"), lsn);
    assert_eq!(s.counts("tee"), (1, 2, 0));
    assert_eq!(s.get("/v1/sales/drop").json()["cart_hold_ms"], 600_000);
}

#[test]
fn behind_a_waiting_room_only_an_admitted_cart_holds_and_a_merge_moves_no_hold() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 5);
    let opens = holdfast::clock::rfc3339(T0_MS + 1_000);
    let sale = format!(
        r#"{{"per_user_limit": 1, "skus": ["tee"], "cart_hold_ms": 600000, "opens_at": "{opens}",
            "admission_rate": 100, "max_active": 100, "session_ms": 60000}}"#
    );
    assert_eq!(s.put("/v1/sales/noon", &sale).status, 200);
    let joined = s.post("/v1/sales/noon/queue", r#"{"user_id": "ann"}"#).json();
    let ticket = joined["ticket"].as_str().expect("a ticket").to_owned();
    s.advance(1_000);
    s.advance(500);
    let admitted = s.get(&format!("/v1/sales/noon/queue/{ticket}")).json();
    let admission =
        admitted["admission"].as_str().unwrap_or_else(|| panic!("admitted: {admitted}")).to_owned();

    // Without an admission, or with another cart's, nothing is held.
    let bare = s.put("/v1/carts/eve/items/tee", r#"{"qty": 1}"#);
    assert_eq!((bare.status, bare.code()), (403, "not_admitted".into()), "{}", bare.text());
    let borrowed = s.put("/v1/carts/eve/items/tee", &json!({"qty": 1, "admission": admission}).to_string());
    assert_eq!((borrowed.status, borrowed.code()), (403, "not_admitted".into()), "{}", borrowed.text());
    let held =
        put_item(&s, "ann", "tee", &json!({"qty": 1, "unit_price": 10, "admission": admission}).to_string());
    assert!(held["items"][0]["held_until"].is_string(), "{held}");
    assert_eq!(s.counts("tee"), (4, 1, 0));

    // A merge carries no admission: ann's line moves to eve's cart without its hold, and the unit returns.
    let merged = s.post("/v1/carts/eve/merge", r#"{"from": "ann"}"#);
    assert_eq!(merged.status, 200, "{}", merged.text());
    assert_eq!(lines(&merged.json()), vec![("tee".into(), 1, Some(10))]);
    assert!(merged.json()["items"][0].get("held_until").is_none(), "{}", merged.text());
    assert_eq!(s.counts("tee"), (5, 0, 0));
}
