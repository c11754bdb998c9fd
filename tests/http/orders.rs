//! Orders and payment webhooks over real sockets: an order placed, paid by a signed event, cancelled
//! by a failed one or by its `pay_by`, extended while the provider processes, booked again after a
//! late success, never paid by money that does not match; each event has one effect, also after a
//! restart; secrets rotate; both signature schemes verify; and an order whose webhook never came is
//! settled by asking the provider's status address.

use super::harness::{options, request, Reply, TestServer, T0_MS};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use holdfast::clock::{rfc3339, Clock};
use holdfast::orders::fallback::FallbackOptions;
use holdfast::orders::webhook::Secrets;
use holdfast::serve::ServeOptions;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WEBHOOK: &str = "/v1/webhooks/payments";

/// The raw key of the Standard Webhooks secret (`whsec_` and its base64).
pub const STANDARD_KEY: &[u8; 32] = b"holdfast-test-webhook-secret-32b";

/// The secret in force: a Standard Webhooks secret (`whsec_` and the base64 of `STANDARD_KEY`), so
/// that both schemes verify with it (its text signs Stripe-style, its decoded bytes Standard
/// Webhooks-style).
pub const CURRENT: &str = "whsec_aG9sZGZhc3QtdGVzdC13ZWJob29rLXNlY3JldC0zMmI=";

/// A secret that was active before a rotation.
pub const RETIRED: &str = "whsec_retired_secret_9876543210";

pub fn secrets(texts: &[&str]) -> Secrets {
    Secrets::new(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>()).expect("valid secrets")
}

/// Server options with these webhook secrets active.
pub fn order_options(dir: &Path, active: &[&str]) -> ServeOptions {
    let mut o = options(dir);
    o.http.webhooks.secrets = secrets(active);
    o
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")
}

/// An order of user u1 in usd: lines of (sku, qty, unit_price).
pub fn order_body(lines: &[(&str, u32, u64)], pay_within_ms: u64) -> String {
    let items: Vec<Value> =
        lines.iter().map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "unit_price": price})).collect();
    json!({"user_id": "u1", "items": items, "currency": "usd", "pay_within_ms": pay_within_ms}).to_string()
}

/// Places an order (201) and returns it.
pub fn place(s: &TestServer, key: &str, body: &str) -> Value {
    let r = s.post_keyed("/v1/orders", key, body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

pub fn order(s: &TestServer, id: &str) -> Value {
    let r = s.get(&format!("/v1/orders/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

pub fn attach(s: &TestServer, id: &str, provider_ref: &str) -> Reply {
    s.post(&format!("/v1/orders/{id}/payment"), &json!({"provider_ref": provider_ref}).to_string())
}

/// A provider's event for `order`, paid with PaymentIntent `pi`.
pub fn event(id: &str, kind: &str, order: &str, pi: &str, amount: u64, currency: &str) -> String {
    let status = match kind {
        "payment_intent.succeeded" => "succeeded",
        "payment_intent.processing" => "processing",
        "payment_intent.requires_action" => "requires_action",
        "payment_intent.canceled" => "canceled",
        _ => "requires_payment_method",
    };
    json!({
        "id": id,
        "object": "event",
        "type": kind,
        "created": T0_MS / 1000,
        "data": {"object": {
            "id": pi,
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "status": status,
            "metadata": {"order_id": order},
        }},
    })
    .to_string()
}

/// The server clock's time in seconds, moved by `skew_s`.
pub fn now_s(s: &TestServer, skew_s: i64) -> u64 {
    ((s.clock.now_ms() / 1000) as i64 + skew_s) as u64
}

/// Posts `body` to the webhook, signed Stripe-style with the first of `with` at the server's time.
pub fn stripe(s: &TestServer, with: &str, body: &str) -> Reply {
    let header = secrets(&[with]).sign_stripe(now_s(s, 0), body.as_bytes());
    s.send(request("POST", WEBHOOK, &[("Stripe-Signature", &header)], Some(body)))
}

/// A Standard Webhooks `v1,<base64>` signature of `body` by `key`.
pub fn standard_signature(key: &[u8], msg_id: &str, timestamp: &str, body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// A webhook answer that is 200 with this `status` and `code`; returns its `order_state`.
#[track_caller]
pub fn delivered(r: &Reply, status: &str, code: &str) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["status"].as_str(), v["code"].as_str()), (Some(status), Some(code)), "{v}");
    v["order_state"].clone()
}

#[track_caller]
fn problem(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "{}", r.text());
}

fn lsn(s: &TestServer) -> f64 {
    s.metric("holdfast_wal_appended_lsn")
}

/// Waits (polling) until the order is in `state`, and returns it. The wait is generous: it bounds a
/// ticker of the server's, never measures one.
#[track_caller]
fn wait_state(s: &TestServer, id: &str, state: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let o = order(s, id);
        if o["state"] == state {
            return o;
        }
        assert!(Instant::now() < until, "order {id} never became {state}: {o}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn last_transition(o: &Value) -> Value {
    o["history"].as_array().and_then(|h| h.last().cloned()).expect("a history")
}

#[test]
fn an_order_holds_its_units_and_a_retry_with_its_key_returns_it_also_after_a_restart() {
    let dir = scratch();
    let s = TestServer::start(order_options(dir.path(), &[CURRENT]));
    s.stock("tee", 10);
    s.stock("mug", 5);
    let body = order_body(&[("tee", 2, 1_500), ("mug", 1, 999)], 120_000);
    let r = s.post_keyed("/v1/orders", "o-1", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("idempotent-replayed"), None);
    let o = r.json();
    let id = o["id"].as_str().expect("id").to_owned();
    assert_eq!(r.header("location"), Some(format!("/v1/orders/{id}").as_str()));
    assert!(id.starts_with("ord_") && id.len() == 36, "{id}");
    assert_eq!(o["state"], "awaiting_payment");
    assert_eq!(o["amount"], 2 * 1_500 + 999, "amount = sum of qty * unit_price");
    assert_eq!(o["currency"], "usd");
    assert_eq!(o["pay_by"], rfc3339(T0_MS + 120_000), "pay_by = now + pay_within_ms");
    assert_eq!(o["created_at"], rfc3339(T0_MS));
    assert_eq!(o["user_id"], "u1");
    assert_eq!(o["reservation_id"], format!("rsv_{}", &id[4..]), "the order names its reservation");
    assert_eq!(
        o["items"],
        json!([{"sku":"tee","qty":2,"unit_price":1500},{"sku":"mug","qty":1,"unit_price":999}])
    );
    assert_eq!(o["history"], json!([{"at": rfc3339(T0_MS), "state": "awaiting_payment", "cause": "placed"}]));
    assert!(o.get("provider_ref").is_none() && o.get("cause").is_none(), "{o}");
    assert_eq!((s.counts("tee"), s.counts("mug")), ((8, 2, 0), (4, 1, 0)));
    let reservation = s.get(&format!("/v1/reservations/{}", o["reservation_id"].as_str().unwrap()));
    assert_eq!(reservation.json()["expires_at"], o["pay_by"], "the hold ends at pay_by");
    assert_eq!(order(&s, &id), o, "GET answers what the 201 said");

    let logged = lsn(&s);
    let again = s.post_keyed("/v1/orders", "o-1", &body);
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), o, "the same order");
    assert_eq!((s.counts("tee"), s.counts("mug")), ((8, 2, 0), (4, 1, 0)), "nothing reserved twice");
    assert_eq!(lsn(&s), logged, "a repeat logs nothing");

    s.stop().expect("a clean stop");
    let s = TestServer::start_at(order_options(dir.path(), &[CURRENT]), T0_MS + 1_000);
    let again = s.post_keyed("/v1/orders", "o-1", &body);
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), o, "the same order after a restart");
    assert_eq!((s.counts("tee"), s.counts("mug")), ((8, 2, 0), (4, 1, 0)));
    let other = s.post_keyed("/v1/orders", "o-1", &order_body(&[("tee", 1, 1_500)], 120_000));
    problem(&other, 422, "idempotency_conflict");
}

#[test]
fn a_payment_reference_attaches_once_and_again_with_the_same_value() {
    let dir = scratch();
    let s = TestServer::start(order_options(dir.path(), &[CURRENT]));
    s.stock("tee", 10);
    let id = place(&s, "o-1", &order_body(&[("tee", 1, 500)], 60_000))["id"].as_str().unwrap().to_owned();
    let r = attach(&s, &id, "pi_1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["provider_ref"].as_str(), r.json()["state"].as_str()),
        (Some("pi_1"), Some("awaiting_payment"))
    );
    let logged = lsn(&s);
    let again = attach(&s, &id, "pi_1");
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json(), r.json());
    assert_eq!(lsn(&s), logged, "the same reference again logs nothing");
    problem(&attach(&s, &id, "pi_2"), 409, "provider_ref_conflict");
    assert_eq!(order(&s, &id)["provider_ref"], "pi_1");
    assert_eq!(s.counts("tee"), (9, 1, 0));
}

#[test]
fn a_signed_success_pays_the_order_once_also_after_a_restart() {
    let dir = scratch();
    let secret = CURRENT;
    let s = TestServer::start(order_options(dir.path(), &[secret]));
    s.stock("tee", 10);
    let id = place(&s, "o-1", &order_body(&[("tee", 2, 1_500)], 60_000))["id"].as_str().unwrap().to_owned();
    assert_eq!(attach(&s, &id, "pi_1").status, 200);
    let paid = event("evt_1", "payment_intent.succeeded", &id, "pi_1", 3_000, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &paid), "applied", "paid"), "paid");
    let o = order(&s, &id);
    assert_eq!(o["state"], "paid");
    assert_eq!(last_transition(&o), json!({"at": rfc3339(T0_MS), "state": "paid", "cause": "webhook"}));
    assert_eq!(s.counts("tee"), (8, 0, 2), "the units are sold");
    let rsv = s.get(&format!("/v1/reservations/{}", o["reservation_id"].as_str().unwrap())).json();
    assert_eq!(rsv["state"], "committed");

    let logged = lsn(&s);
    assert_eq!(delivered(&stripe(&s, secret, &paid), "duplicate", "duplicate_event"), "paid");
    assert_eq!(
        (s.counts("tee"), order(&s, &id), lsn(&s)),
        ((8, 0, 2), o.clone(), logged),
        "no second effect"
    );
    // A stale outcome never moves a paid order backwards.
    let failed = event("evt_2", "payment_intent.payment_failed", &id, "pi_1", 3_000, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &failed), "ignored", "no_change"), "paid");
    assert_eq!((s.counts("tee"), order(&s, &id), lsn(&s)), ((8, 0, 2), o.clone(), logged));
    assert_eq!(s.metric("holdfast_payment_webhooks_total{outcome=\"duplicate\"}"), 1.0);

    s.stop().expect("a clean stop");
    let s = TestServer::start_at(order_options(dir.path(), &[secret]), T0_MS + 5_000);
    let logged = lsn(&s);
    assert_eq!(delivered(&stripe(&s, secret, &paid), "duplicate", "duplicate_event"), "paid");
    assert_eq!(s.counts("tee"), (8, 0, 2), "no second sale after a restart");
    assert_eq!(order(&s, &id), o);
    assert_eq!(lsn(&s), logged);
}

/// What the API description allows is taken: a unit price at its maximum, and an event whose amount
/// is an integral number written with a fraction and whose `created` (not read) is anything at all.
#[test]
fn an_order_and_an_event_at_the_descriptions_bounds_are_taken() {
    let dir = scratch();
    let s = TestServer::start(order_options(dir.path(), &[CURRENT]));
    s.stock("tee", 10);
    let max = holdfast::orders::UNIT_PRICE_MAX;
    let id = place(&s, "o-max", &order_body(&[("tee", 1, max)], 60_000))["id"].as_str().unwrap().to_owned();
    assert_eq!(order(&s, &id)["amount"], max);
    let mut paid: Value =
        serde_json::from_str(&event("evt_f", "payment_intent.succeeded", &id, "pi_f", max, "usd")).unwrap();
    paid["data"]["object"]["amount"] = json!(max as f64);
    paid["created"] = json!("not read");
    assert!(paid.to_string().contains(&format!("{max}.0")), "{paid}");
    assert_eq!(delivered(&stripe(&s, CURRENT, &paid.to_string()), "applied", "paid"), "paid");
    assert_eq!(s.counts("tee"), (9, 0, 1));
}

#[test]
fn a_failed_payment_cancels_the_order_and_returns_its_units() {
    let dir = scratch();
    let secret = CURRENT;
    let s = TestServer::start(order_options(dir.path(), &[secret]));
    s.stock("tee", 10);
    let o = place(&s, "o-1", &order_body(&[("tee", 3, 700)], 60_000));
    let id = o["id"].as_str().unwrap();
    assert_eq!(s.counts("tee"), (7, 3, 0));
    let failed = event("evt_f", "payment_intent.payment_failed", id, "pi_9", 2_100, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &failed), "applied", "cancelled"), "cancelled");
    let o = order(&s, id);
    assert_eq!((o["state"].as_str(), o["cause"].as_str()), (Some("cancelled"), Some("payment_failed")));
    assert_eq!(last_transition(&o)["cause"], "webhook");
    assert_eq!(s.counts("tee"), (10, 0, 0), "the units are back");
    let rsv = s.get(&format!("/v1/reservations/{}", o["reservation_id"].as_str().unwrap())).json();
    assert_eq!(rsv["state"], "released");
    // The provider's cancellation of another order's payment cancels that one the same way.
    let other = place(&s, "o-2", &order_body(&[("tee", 1, 700)], 60_000));
    let other_id = other["id"].as_str().unwrap();
    let canceled = event("evt_c", "payment_intent.canceled", other_id, "pi_8", 700, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &canceled), "applied", "cancelled"), "cancelled");
    assert_eq!(order(&s, other_id)["cause"], "payment_failed");
    assert_eq!(s.counts("tee"), (10, 0, 0));
}

#[test]
fn processing_extends_pay_by_within_the_hold_bound_and_the_order_still_ends() {
    let dir = scratch();
    let secret = CURRENT;
    let mut o = order_options(dir.path(), &[secret]);
    o.engine.ttl_ms_max = 60_000;
    o.engine.hold_ms_max = 100_000;
    o.engine.pending_extension_ms = 60_000;
    let s = TestServer::start(o);
    s.stock("tee", 10);
    let id = place(&s, "o-1", &order_body(&[("tee", 1, 100)], 60_000))["id"].as_str().unwrap().to_owned();
    let pending = |evt: &str, kind: &str| event(evt, kind, &id, "pi_1", 100, "usd");

    s.clock.advance(10_000);
    let r = stripe(&s, secret, &pending("evt_p1", "payment_intent.processing"));
    assert_eq!(delivered(&r, "applied", "payment_pending"), "payment_pending");
    let o = order(&s, &id);
    assert_eq!(o["pay_by"], rfc3339(T0_MS + 70_000), "extended by the pending step from now");
    assert_eq!(
        last_transition(&o),
        json!({"at": rfc3339(T0_MS + 10_000), "state": "payment_pending", "cause": "webhook"})
    );
    let rsv = s.get(&format!("/v1/reservations/{}", o["reservation_id"].as_str().unwrap())).json();
    assert_eq!(rsv["expires_at"], o["pay_by"], "the hold moved with pay_by");

    s.clock.advance(40_000);
    let r = stripe(&s, secret, &pending("evt_p2", "payment_intent.requires_action"));
    assert_eq!(delivered(&r, "applied", "payment_pending"), "payment_pending");
    assert_eq!(order(&s, &id)["pay_by"], rfc3339(T0_MS + 100_000), "bounded by hold_ms_max from creation");

    s.clock.advance(40_000);
    let r = stripe(&s, secret, &pending("evt_p3", "payment_intent.processing"));
    assert_eq!(delivered(&r, "applied", "payment_pending"), "payment_pending");
    let o = order(&s, &id);
    assert_eq!(o["pay_by"], rfc3339(T0_MS + 100_000), "never past the bound");
    assert_eq!(o["history"].as_array().map(Vec::len), Some(2), "pending is entered once: {o}");
    assert_eq!(s.counts("tee"), (9, 1, 0));

    s.clock.advance(10_000);
    let o = wait_state(&s, &id, "cancelled");
    assert_eq!(o["cause"], "expired");
    assert_eq!(
        last_transition(&o),
        json!({"at": rfc3339(T0_MS + 100_000), "state": "cancelled", "cause": "pay_by"})
    );
    assert_eq!(s.counts("tee"), (10, 0, 0));
}

#[test]
fn a_success_after_cancellation_books_again_or_owes_a_refund() {
    let dir = scratch();
    let secret = CURRENT;
    let s = TestServer::start(order_options(dir.path(), &[secret]));
    s.stock("tee", 5);
    let a = place(&s, "o-a", &order_body(&[("tee", 2, 1_000)], 60_000));
    let a_id = a["id"].as_str().unwrap();
    let r = s.post(&format!("/v1/orders/{a_id}/cancel"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["cause"].as_str()),
        (Some("cancelled"), Some("cancelled"))
    );
    assert_eq!(last_transition(&r.json())["cause"], "checkout");
    let again = s.post(&format!("/v1/orders/{a_id}/cancel"), "");
    assert_eq!((again.status, again.json()), (200, r.json()), "cancel is idempotent");
    assert_eq!(s.counts("tee"), (5, 0, 0));

    let paid = event("evt_a", "payment_intent.succeeded", a_id, "pi_a", 2_000, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &paid), "applied", "paid"), "paid");
    let o = order(&s, a_id);
    assert_eq!(o["state"], "paid");
    assert_ne!(o["reservation_id"], a["reservation_id"], "booked again with a new reservation");
    assert!(o["history"].as_array().unwrap().iter().any(|t| t["cause"] == "late_payment"), "{o}");
    assert_eq!(s.counts("tee"), (3, 0, 2), "sold from stock that was still there");
    let rsv = s.get(&format!("/v1/reservations/{}", o["reservation_id"].as_str().unwrap())).json();
    assert_eq!(rsv["state"], "committed");
    assert_eq!(delivered(&stripe(&s, secret, &paid), "duplicate", "duplicate_event"), "paid");
    assert_eq!(s.counts("tee"), (3, 0, 2));

    let b = place(&s, "o-b", &order_body(&[("tee", 3, 1_000)], 60_000));
    let b_id = b["id"].as_str().unwrap();
    assert_eq!(s.post(&format!("/v1/orders/{b_id}/cancel"), "").status, 200);
    let taken = s.post("/v1/reservations", &super::harness::reserve_body("tee", 3, "u2"));
    assert_eq!(taken.status, 201, "{}", taken.text());
    assert_eq!(s.counts("tee"), (0, 3, 2));
    let paid = event("evt_b", "payment_intent.succeeded", b_id, "pi_b", 3_000, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &paid), "applied", "refund_due"), "refund_due");
    let o = order(&s, b_id);
    assert_eq!(o["state"], "refund_due");
    assert_eq!(s.counts("tee"), (0, 3, 2), "nothing sold that was not there");
    assert_eq!(s.metric("holdfast_payment_webhooks_total{outcome=\"refund_due\"}"), 1.0);
    problem(&s.post(&format!("/v1/orders/{b_id}/cancel"), ""), 409, "order_ended");
}

#[test]
fn a_payment_that_does_not_match_is_never_marked_paid() {
    let dir = scratch();
    let secret = CURRENT;
    let s = TestServer::start(order_options(dir.path(), &[secret]));
    s.stock("tee", 10);
    let ids: Vec<String> = (0..3)
        .map(|n| {
            let o = place(&s, &format!("o-{n}"), &order_body(&[("tee", 2, 1_500)], 60_000));
            o["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(s.counts("tee"), (4, 6, 0));
    // Too little, another currency, and (after a cancellation) too much.
    let short = event("evt_m1", "payment_intent.succeeded", &ids[0], "pi_0", 2_999, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &short), "applied", "payment_mismatch"), "payment_mismatch");
    let euros = event("evt_m2", "payment_intent.succeeded", &ids[1], "pi_1", 3_000, "eur");
    assert_eq!(delivered(&stripe(&s, secret, &euros), "applied", "payment_mismatch"), "payment_mismatch");
    assert_eq!(s.post(&format!("/v1/orders/{}/cancel", ids[2]), "").status, 200);
    let more = event("evt_m3", "payment_intent.succeeded", &ids[2], "pi_2", 3_001, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &more), "applied", "payment_mismatch"), "payment_mismatch");
    for id in &ids {
        assert_eq!(order(&s, id)["state"], "payment_mismatch", "{id}");
    }
    assert_eq!(s.counts("tee"), (10, 0, 0), "never sold; the holds are returned");
    // The right amount afterwards still does not pay it: a person looks at it.
    let right = event("evt_m4", "payment_intent.succeeded", &ids[0], "pi_0", 3_000, "usd");
    assert_eq!(delivered(&stripe(&s, secret, &right), "ignored", "no_change"), "payment_mismatch");
    assert_eq!(order(&s, &ids[0])["state"], "payment_mismatch");
    assert_eq!(s.counts("tee"), (10, 0, 0));
    problem(&s.post(&format!("/v1/orders/{}/cancel", ids[0]), ""), 409, "order_ended");
    assert_eq!(s.metric("holdfast_payment_webhooks_total{outcome=\"payment_mismatch\"}"), 3.0);
}

#[test]
fn an_order_past_pay_by_is_cancelled_within_one_expiry_tick_also_across_a_restart() {
    let dir = scratch();
    let s = TestServer::start(order_options(dir.path(), &[CURRENT]));
    s.stock("tee", 10);
    let id = place(&s, "o-1", &order_body(&[("tee", 4, 100)], 5_000))["id"].as_str().unwrap().to_owned();
    s.advance(4_999);
    assert_eq!(order(&s, &id)["state"], "awaiting_payment", "not before pay_by");
    assert_eq!(s.counts("tee"), (6, 4, 0));
    // The clock stands at pay_by from here on: the cancellation is stamped with the tick that saw it.
    s.clock.advance(1);
    let o = wait_state(&s, &id, "cancelled");
    assert_eq!(o["cause"], "expired");
    assert_eq!(
        last_transition(&o),
        json!({"at": rfc3339(T0_MS + 5_000), "state": "cancelled", "cause": "pay_by"})
    );
    assert_eq!(s.counts("tee"), (10, 0, 0));
    assert_eq!(s.metric("holdfast_orders_expired_total"), 1.0);

    // An order still open at a stop is cancelled by the first tick after a restart past its pay_by.
    let id = place(&s, "o-2", &order_body(&[("tee", 3, 100)], 5_000))["id"].as_str().unwrap().to_owned();
    s.stop().expect("a clean stop");
    let s = TestServer::start_at(order_options(dir.path(), &[CURRENT]), T0_MS + 60_000);
    let o = wait_state(&s, &id, "cancelled");
    assert_eq!(o["cause"], "expired");
    assert_eq!(s.counts("tee"), (10, 0, 0));
}

#[test]
fn two_secrets_verify_during_a_rotation_and_a_removed_one_no_longer_does() {
    let dir = scratch();
    let new = CURRENT;
    let s = TestServer::start(order_options(dir.path(), &[new, RETIRED]));
    s.stock("tee", 10);
    let ids: Vec<String> = (0..3)
        .map(|n| {
            let o = place(&s, &format!("o-{n}"), &order_body(&[("tee", 1, 100)], 600_000));
            o["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let paid = |n: usize| event(&format!("evt_{n}"), "payment_intent.succeeded", &ids[n], "pi", 100, "usd");
    assert_eq!(delivered(&stripe(&s, RETIRED, &paid(0)), "applied", "paid"), "paid");
    assert_eq!(delivered(&stripe(&s, new, &paid(1)), "applied", "paid"), "paid");
    s.stop().expect("a clean stop");

    let s = TestServer::start_at(order_options(dir.path(), &[new]), T0_MS + 1_000);
    let before = (order(&s, &ids[2]), s.counts("tee"), lsn(&s));
    problem(&stripe(&s, RETIRED, &paid(2)), 400, "signature_mismatch");
    assert_eq!((order(&s, &ids[2]), s.counts("tee"), lsn(&s)), before, "a refused event changes nothing");
    assert_eq!(delivered(&stripe(&s, new, &paid(2)), "applied", "paid"), "paid");
    assert_eq!(s.counts("tee"), (7, 0, 3));
}

#[test]
fn a_standard_webhooks_signature_verifies() {
    let dir = scratch();
    let s = TestServer::start(order_options(dir.path(), &[CURRENT]));
    s.stock("tee", 10);
    let id = place(&s, "o-1", &order_body(&[("tee", 1, 250)], 60_000))["id"].as_str().unwrap().to_owned();
    assert_eq!(CURRENT, format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(STANDARD_KEY)));
    let body = event("evt_std", "payment_intent.succeeded", &id, "pi_s", 250, "usd");
    let ts = now_s(&s, -30).to_string();
    let good = standard_signature(STANDARD_KEY, "msg_1", &ts, &body);
    let wrong = standard_signature(b"some-other-key-of-32-bytes-long!", "msg_1", &ts, &body);
    // Several signatures, space-separated: one made with the active secret is enough.
    let header = format!("{wrong} {good}");
    let headers =
        [("webhook-id", "msg_1"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", header.as_str())];
    let r = s.send(request("POST", WEBHOOK, &headers, Some(&body)));
    assert_eq!(delivered(&r, "applied", "paid"), "paid");
    assert_eq!(s.counts("tee"), (9, 0, 1));
    let r = s.send(request("POST", WEBHOOK, &headers, Some(&body)));
    assert_eq!(delivered(&r, "duplicate", "duplicate_event"), "paid");
}

#[test]
fn webhooks_without_a_configured_secret_are_refused_and_change_nothing() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 10);
    let o = place(&s, "o-1", &order_body(&[("tee", 1, 250)], 60_000));
    let id = o["id"].as_str().unwrap();
    let body = event("evt_1", "payment_intent.succeeded", id, "pi", 250, "usd");
    let header = secrets(&[CURRENT]).sign_stripe(now_s(&s, 0), body.as_bytes());
    let logged = lsn(&s);
    let r = s.send(request("POST", WEBHOOK, &[("Stripe-Signature", &header)], Some(&body)));
    problem(&r, 503, "webhooks_unconfigured");
    assert_eq!((order(&s, id), s.counts("tee"), lsn(&s)), (o, (9, 1, 0), logged));
}

/// A stand-in for the provider's status address: answers `GET /pay/{ref}` with a succeeded payment
/// object of `amount` usd, and records the paths it was asked.
struct StatusStandIn {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl StatusStandIn {
    fn start(amount: u64) -> Self {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let url = format!("http://{}/pay", listener.local_addr().expect("addr"));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        rt.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let path = text.split(' ').nth(1).unwrap_or_default().to_owned();
                    log.lock().expect("log").push(path.clone());
                    let id = path.rsplit('/').next().unwrap_or_default();
                    let body = json!({"id": id, "object": "payment_intent", "status": "succeeded", "amount": amount, "currency": "usd"}).to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { url, asked, _rt: rt }
    }
}

#[test]
fn the_status_fallback_settles_an_order_whose_webhook_never_came() {
    let dir = scratch();
    let provider = StatusStandIn::start(1_200);
    let mut o = order_options(dir.path(), &[CURRENT]);
    o.fallback = Some(FallbackOptions {
        url: provider.url.clone(),
        lead: Duration::from_secs(600),
        every: Duration::from_secs(1),
        ..FallbackOptions::default()
    });
    let s = TestServer::start(o);
    s.stock("tee", 10);
    // One order without a reference: nothing to ask about. One with: asked, and paid.
    let silent = place(&s, "o-0", &order_body(&[("tee", 1, 1_200)], 120_000));
    let id = place(&s, "o-1", &order_body(&[("tee", 1, 1_200)], 120_000))["id"].as_str().unwrap().to_owned();
    assert_eq!(attach(&s, &id, "pi_fallback").status, 200);
    let o = wait_state(&s, &id, "paid");
    assert_eq!(last_transition(&o)["cause"], "status_check");
    assert!(s.clock.now_ms() < T0_MS + 120_000, "settled before pay_by");
    assert_eq!(s.counts("tee"), (8, 1, 1));
    let until = Instant::now() + Duration::from_secs(20);
    while s.metric("holdfast_orders_settled_by_status_check_total") < 1.0 {
        assert!(Instant::now() < until, "the settlement was never counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.metric("holdfast_orders_settled_by_status_check_total"), 1.0);
    assert_eq!(order(&s, silent["id"].as_str().unwrap())["state"], "awaiting_payment");
    let asked = provider.asked.lock().expect("log").clone();
    assert!(!asked.is_empty() && asked.iter().all(|p| p == "/pay/pi_fallback"), "{asked:?}");
}

/// A checkout service that commits (or releases, or extends) an order's reservation directly would
/// take it from under the order: committed, a failed payment then cancels the order with its units
/// still sold. The reservation routes refuse, and the order's own flow still works after.
#[test]
fn an_orders_reservation_cannot_be_ended_or_extended_through_the_reservation_routes() {
    let dir = scratch();
    let secret = CURRENT;
    let s = TestServer::start(order_options(dir.path(), &[secret]));
    s.stock("tee", 10);
    let o = place(&s, "o-1", &order_body(&[("tee", 2, 500)], 60_000));
    let (id, rsv) = (o["id"].as_str().unwrap(), o["reservation_id"].as_str().unwrap());
    let logged = lsn(&s);
    let commit = s.post(&format!("/v1/reservations/{rsv}/commit"), "");
    let after_commit = (commit.status, commit.text(), s.counts("tee"), order(&s, id)["state"].clone());
    let failed = event("evt_f", "payment_intent.payment_failed", id, "pi", 1_000, "usd");
    let r = stripe(&s, secret, &failed);
    let after_failure = (r.text(), s.counts("tee"), order(&s, id));
    assert_eq!(
        (commit.status, after_commit.2),
        (409, (8, 2, 0)),
        "a direct commit of an order's reservation must be refused; what happened: commit {after_commit:?}, \
         then the payment failed: {after_failure:?}"
    );
    assert_eq!(commit.code(), "order_reservation");
    for path in [format!("/v1/reservations/{rsv}/release"), format!("/v1/reservations/{rsv}/extend")] {
        let body = if path.ends_with("extend") { r#"{"ttl_ms":60000}"# } else { "" };
        problem(&s.post(&path, body), 409, "order_reservation");
    }
    assert_eq!(lsn(&s) - logged, 1.0, "only the failure was logged");
    assert_eq!(after_failure.2["state"], "cancelled");
    assert_eq!(after_failure.1, (10, 0, 0), "the failed payment returned the units");
    // Ended, the order still owns it: a commit now would sell units nobody paid for.
    problem(&s.post(&format!("/v1/reservations/{rsv}/commit"), ""), 409, "order_reservation");
    assert_eq!(s.counts("tee"), (10, 0, 0));
}

/// Orders, their keys, their reservations' ownership and the payment events already applied are in
/// the snapshot: restarted from a snapshot that replaced the log, nothing is decided twice.
#[test]
fn orders_and_applied_events_survive_a_snapshot_that_replaced_the_log() {
    let dir = scratch();
    let mut o = order_options(dir.path(), &[CURRENT]);
    o.snapshot.every_records = 1;
    let s = TestServer::start(o.clone());
    s.stock("tee", 10);
    let body = order_body(&[("tee", 1, 500)], 60_000);
    let paid =
        place(&s, "o-paid", &order_body(&[("tee", 2, 500)], 60_000))["id"].as_str().unwrap().to_owned();
    let pay = event("evt_1", "payment_intent.succeeded", &paid, "pi_1", 1_000, "usd");
    assert_eq!(delivered(&stripe(&s, CURRENT, &pay), "applied", "paid"), "paid");
    let open = place(&s, "o-open", &body);
    let open_id = open["id"].as_str().unwrap().to_owned();
    assert_eq!(attach(&s, &open_id, "pi_2").status, 200);
    let logged = lsn(&s);
    let until = Instant::now() + Duration::from_secs(30);
    while s.metric("holdfast_snapshot_lsn") < logged {
        assert!(Instant::now() < until, "no snapshot covered LSN {logged}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = (order(&s, &paid), order(&s, &open_id), s.counts("tee"));
    assert_eq!(before.2, (7, 1, 2));
    s.stop().expect("a clean stop");

    let s = TestServer::start_at(o, T0_MS + 1_000);
    assert_eq!((order(&s, &paid), order(&s, &open_id), s.counts("tee")), before);
    assert_eq!(delivered(&stripe(&s, CURRENT, &pay), "duplicate", "duplicate_event"), "paid");
    let again = s.post_keyed("/v1/orders", "o-open", &body);
    assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")), "{}", again.text());
    assert_eq!(again.json()["id"], open["id"]);
    let rsv = open["reservation_id"].as_str().unwrap();
    problem(&s.post(&format!("/v1/reservations/{rsv}/commit"), ""), 409, "order_reservation");
    assert_eq!(s.counts("tee"), (7, 1, 2), "nothing decided twice");
    // The open order is still driven to its end.
    s.clock.advance(60_000);
    assert_eq!(wait_state(&s, &open_id, "cancelled")["cause"], "expired");
    assert_eq!(s.counts("tee"), (8, 0, 2));
}
