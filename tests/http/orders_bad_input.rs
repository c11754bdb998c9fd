//! Bad input to the order routes and the payment webhook gets a clear answer and changes nothing:
//! each case is checked for its status and `code` (a problem's, or the webhook's 200 answer's), and
//! afterwards the log has not grown by a record, every stock counter is as it was and every order
//! reads the same. The server runs after a secret rotation, so signatures of the removed secret are
//! among the cases.

use super::harness::{request, Reply, TestServer, T0_MS};
use super::orders::{
    delivered, event, now_s, order, order_body, order_options, place, secrets, standard_signature, stripe,
    CURRENT, RETIRED, STANDARD_KEY, WEBHOOK,
};
use holdfast::http::Route;
use serde_json::{json, Value};

pub(super) struct Case {
    what: String,
    bytes: Vec<u8>,
    status: u16,
    code: &'static str,
}

/// Sends each case and returns what went wrong: an answer other than the case's status and `code`,
/// or one `/openapi.json` does not describe.
pub(super) fn run_cases(s: &TestServer, doc: &Value, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let reply = s.send(case.bytes.clone());
        let code = code_of(&reply);
        if let Some(gap) = undocumented(doc, &case.bytes, &reply, code.as_deref()) {
            failures.push(format!("{}: {gap}", case.what));
        }
        if reply.status != case.status || code.as_deref() != Some(case.code) {
            let (status, text) = (reply.status, reply.text());
            failures.push(format!(
                "{}: got {status} {code:?}, want {} {}: {text}",
                case.what, case.status, case.code
            ));
        }
    }
    failures
}

pub(super) fn case(what: impl Into<String>, bytes: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case { what: what.into(), bytes, status, code }
}

/// The `code` of an answer: a problem's, or the webhook's 200 JSON answer's.
fn code_of(reply: &Reply) -> Option<String> {
    match reply.header("content-type") {
        Some("application/problem+json") => Some(reply.code()),
        Some("application/json") => serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned)),
        _ => None,
    }
}

/// What `/openapi.json` fails to say of this answer, if anything: its status among the route's
/// responses, and its `code` in the documented codes and named by that response (Schemathesis
/// fuzzes the document; an answer it does not describe is a failure there).
fn undocumented(doc: &Value, bytes: &[u8], reply: &Reply, code: Option<&str>) -> Option<String> {
    let head = String::from_utf8_lossy(bytes);
    let mut line = head.lines().next()?.split(' ');
    let method: hyper::Method = line.next()?.parse().ok()?;
    let (route, _) = Route::find(&method, line.next()?).ok()?;
    let (m, template) = route.template();
    let status = reply.status.to_string();
    let response = &doc["paths"][template][m.to_ascii_lowercase()]["responses"][&status];
    if response.is_null() {
        return Some(format!("{m} {template}: {status} is not documented"));
    }
    let code = code?;
    let schemas = &doc["components"]["schemas"];
    let problem = reply.header("content-type") == Some("application/problem+json");
    let codes = if problem { &schemas["Problem"] } else { &schemas["WebhookAnswer"] };
    if !codes["properties"]["code"]["enum"].as_array().is_some_and(|a| a.iter().any(|c| c == code)) {
        return Some(format!("{m} {template}: code {code} is not among the documented codes"));
    }
    if problem && !response["description"].as_str().is_some_and(|d| d.contains(code)) {
        return Some(format!("{m} {template}: its {status} does not name {code}"));
    }
    None
}

struct Fixture {
    /// Open, with provider reference `pi_a`: 2 tee at 1000.
    open: String,
    open_reservation: String,
    /// Paid by event `evt_paid` (PaymentIntent `pi_p`).
    paid: String,
    paid_reservation: String,
    /// Cancelled by the checkout service, without a reference.
    cancelled: String,
}

fn cases(s: &TestServer, f: &Fixture) -> Vec<Case> {
    let (bad, invalid) = (400, "invalid_request");
    let sign = |body: &str, skew: i64| secrets(&[CURRENT]).sign_stripe(now_s(s, skew), body.as_bytes());
    let hook = |headers: &[(&str, &str)], body: &str| request("POST", WEBHOOK, headers, Some(body));
    let signed = |body: &str| hook(&[("Stripe-Signature", &sign(body, 0))], body);
    let pay_open = event("evt_new", "payment_intent.succeeded", &f.open, "pi_a", 2_000, "usd");
    let good = sign(&pay_open, 0);
    let v1 = good.split_once(",v1=").expect("a v1").1.to_owned();
    let t = now_s(s, 0).to_string();
    let stale_t = now_s(s, -400).to_string();
    let std_good = standard_signature(STANDARD_KEY, "msg_1", &t, &pay_open);
    let std_stale = standard_signature(STANDARD_KEY, "msg_1", &stale_t, &pay_open);
    let retired = secrets(&[RETIRED]).sign_stripe(now_s(s, 0), pay_open.as_bytes());
    let unknown_order = event("evt_u", "payment_intent.succeeded", "ord_00000000000fffff", "pi_u", 1, "usd");
    let no_metadata = r#"{"id":"evt_nm","type":"payment_intent.succeeded","data":{"object":{"id":"pi_a","amount":2000,"currency":"usd"}}}"#;
    let bad_order_id = event("evt_bo", "payment_intent.succeeded", "xyz", "pi_a", 2_000, "usd");
    let refunded = event("evt_r", "charge.refunded", &f.paid, "ch_1", 1_000, "usd");
    let fail_paid = event("evt_fp", "payment_intent.payment_failed", &f.paid, "pi_p", 1_000, "usd");
    let paid_again = event("evt_paid", "payment_intent.succeeded", &f.paid, "pi_p", 1_000, "usd");
    let fail_cancelled = event("evt_fc", "payment_intent.payment_failed", &f.cancelled, "pi_c", 1_000, "usd");
    let no_amount = r#"{"id":"evt_na","type":"payment_intent.succeeded","data":{"object":{"id":"pi_a","currency":"usd","metadata":{"order_id":"x"}}}}"#;
    let numeric_order = r#"{"id":"evt_no","type":"payment_intent.succeeded","data":{"object":{"id":"pi_a","amount":1,"currency":"usd","metadata":{"order_id":7}}}}"#;
    let empty_id = event("", "payment_intent.succeeded", &f.open, "pi_a", 2_000, "usd");
    let two_letters = event("evt_2l", "payment_intent.succeeded", &f.open, "pi_a", 2_000, "us");
    let huge = format!(r#"{{"id":"evt_h","pad":"{}"}}"#, "x".repeat(70_000));
    let altered = pay_open.replace("2000", "20");
    let many: String = (0..17).map(|_| format!(",v1={v1}")).collect();

    let o = "/v1/orders";
    let keyed = |key: &str, body: &str| request("POST", o, &[("Idempotency-Key", key)], Some(body));
    let order_with = |field: &str| {
        let mut v = json!({"user_id":"u1","items":[{"sku":"tee","qty":1,"unit_price":100}],"currency":"usd"});
        let extra: serde_json::Value = serde_json::from_str(&format!("{{{field}}}")).expect("a field");
        for (k, x) in extra.as_object().expect("object") {
            if x.is_null() {
                v.as_object_mut().expect("object").remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        keyed("k-new", &v.to_string())
    };
    let many_items: Vec<String> =
        (0..33).map(|i| format!(r#"{{"sku":"s{i}","qty":1,"unit_price":1}}"#)).collect();
    let (open, paid, cancelled) = (&f.open, &f.paid, &f.cancelled);
    let payment = |id: &str| format!("/v1/orders/{id}/payment");
    let cancel = |id: &str| format!("/v1/orders/{id}/cancel");
    let post = |path: &str, body: &str| request("POST", path, &[], Some(body));
    let unknown = "ord_00000000000fffff";

    vec![
        // Signatures, Stripe-style.
        case("no signature header", hook(&[], &pay_open), bad, "signature_missing"),
        case(
            "a v1 of zeros",
            hook(&[("Stripe-Signature", &format!("t={t},v1={}", "0".repeat(64)))], &pay_open),
            bad,
            "signature_mismatch",
        ),
        case(
            "signed with the removed secret",
            hook(&[("Stripe-Signature", &retired)], &pay_open),
            bad,
            "signature_mismatch",
        ),
        case(
            "signed 301 s in the past",
            hook(&[("Stripe-Signature", &sign(&pay_open, -301))], &pay_open),
            bad,
            "signature_stale",
        ),
        case(
            "signed 301 s in the future",
            hook(&[("Stripe-Signature", &sign(&pay_open, 301))], &pay_open),
            bad,
            "signature_stale",
        ),
        case(
            "signed a day ago",
            hook(&[("Stripe-Signature", &sign(&pay_open, -86_400))], &pay_open),
            bad,
            "signature_stale",
        ),
        case(
            "body altered after signing",
            hook(&[("Stripe-Signature", &good)], &altered),
            bad,
            "signature_mismatch",
        ),
        case(
            "the same v1 twice",
            hook(&[("Stripe-Signature", &format!("{good},v1={v1}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "not key=value",
            hook(&[("Stripe-Signature", "garbage")], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "t not a number",
            hook(&[("Stripe-Signature", &format!("t=soon,v1={v1}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "t negative",
            hook(&[("Stripe-Signature", &format!("t=-1,v1={v1}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "no t",
            hook(&[("Stripe-Signature", &format!("v1={v1}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "no v1",
            hook(&[("Stripe-Signature", &format!("t={t},v0={v1}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "v1 not 64 hex digits",
            hook(&[("Stripe-Signature", &format!("t={t},v1=abcd"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "v1 not hex",
            hook(&[("Stripe-Signature", &format!("t={t},v1={}", "z".repeat(64)))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "t twice",
            hook(&[("Stripe-Signature", &format!("t={t},{good}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "too many entries",
            hook(&[("Stripe-Signature", &format!("t={t}{many}"))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "two Stripe-Signature headers",
            hook(&[("Stripe-Signature", &good), ("Stripe-Signature", &good)], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "an empty Stripe-Signature",
            hook(&[("Stripe-Signature", "")], &pay_open),
            bad,
            "signature_malformed",
        ),
        // Signatures, Standard Webhooks.
        case("only webhook-id", hook(&[("webhook-id", "msg_1")], &pay_open), bad, "signature_malformed"),
        case(
            "no webhook-signature",
            hook(&[("webhook-id", "msg_1"), ("webhook-timestamp", &t)], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "only webhook-signature",
            hook(&[("webhook-signature", &std_good)], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "webhook-signature not base64",
            hook(
                &[("webhook-id", "msg_1"), ("webhook-timestamp", &t), ("webhook-signature", "v1,!!!")],
                &pay_open,
            ),
            bad,
            "signature_malformed",
        ),
        case(
            "webhook-signature without a v1",
            hook(
                &[("webhook-id", "msg_1"), ("webhook-timestamp", &t), ("webhook-signature", "v1a,AAAA")],
                &pay_open,
            ),
            bad,
            "signature_malformed",
        ),
        case(
            "webhook-timestamp not a number",
            hook(
                &[("webhook-id", "msg_1"), ("webhook-timestamp", "now"), ("webhook-signature", &std_good)],
                &pay_open,
            ),
            bad,
            "signature_malformed",
        ),
        case(
            "webhook-timestamp with a plus sign",
            hook(
                &[
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &format!("+{t}")),
                    ("webhook-signature", &std_good),
                ],
                &pay_open,
            ),
            bad,
            "signature_malformed",
        ),
        case(
            "t with a plus sign",
            hook(&[("Stripe-Signature", &good.replacen("t=", "t=+", 1))], &pay_open),
            bad,
            "signature_malformed",
        ),
        case(
            "an empty webhook-id",
            hook(
                &[("webhook-id", ""), ("webhook-timestamp", &t), ("webhook-signature", &std_good)],
                &pay_open,
            ),
            bad,
            "signature_malformed",
        ),
        case(
            "webhook-timestamp 400 s old",
            hook(
                &[
                    ("webhook-id", "msg_1"),
                    ("webhook-timestamp", &stale_t),
                    ("webhook-signature", &std_stale),
                ],
                &pay_open,
            ),
            bad,
            "signature_stale",
        ),
        case(
            "signed for another webhook-id",
            hook(
                &[("webhook-id", "msg_2"), ("webhook-timestamp", &t), ("webhook-signature", &std_good)],
                &pay_open,
            ),
            bad,
            "signature_mismatch",
        ),
        // Bodies, signed.
        case("malformed JSON, signed", signed("{not json"), bad, invalid),
        case("a JSON array, signed", signed("[]"), bad, invalid),
        case(
            "an event as an array of its fields, signed",
            signed(r#"["evt_a","payment_intent.succeeded",[["pi_1",1999,"usd",{"order_id":"x"}]]]"#),
            bad,
            invalid,
        ),
        case(
            "data.object as an array, signed",
            signed(
                r#"{"id":"evt_b","type":"payment_intent.succeeded","data":{"object":["pi_1",1999,"usd"]}}"#,
            ),
            bad,
            invalid,
        ),
        case("a success without an amount", signed(no_amount), bad, invalid),
        case("order_id not a string", signed(numeric_order), bad, invalid),
        case("an empty event id", signed(&empty_id), bad, invalid),
        case("a two-letter currency", signed(&two_letters), bad, invalid),
        case(
            "a webhook as text/plain",
            request(
                "POST",
                WEBHOOK,
                &[("Stripe-Signature", &good), ("Content-Type", "text/plain")],
                Some(&pay_open),
            ),
            415,
            "unsupported_media_type",
        ),
        case(
            "a huge webhook body",
            hook(&[("Stripe-Signature", &sign(&huge, 0))], &huge),
            413,
            "payload_too_large",
        ),
        case("GET the webhook", request("GET", WEBHOOK, &[], None), 405, "method_not_allowed"),
        // Events answered 200 that move nothing.
        case("an event for an unknown order", signed(&unknown_order), 200, "unknown_order"),
        case("an event without metadata", signed(no_metadata), 200, "unknown_order"),
        case("an event naming a malformed order id", signed(&bad_order_id), 200, "unknown_order"),
        case("an event type not handled", signed(&refunded), 200, "unhandled_type"),
        case("a failure after the order was paid", signed(&fail_paid), 200, "no_change"),
        case("the event that paid the order, again", signed(&paid_again), 200, "duplicate_event"),
        case("a failure of a cancelled order", signed(&fail_cancelled), 200, "no_change"),
        // Placing orders.
        case(
            "an order without Idempotency-Key",
            post(o, &order_body(&[("tee", 1, 100)], 60_000)),
            bad,
            invalid,
        ),
        case(
            "a key reused with another body",
            keyed("k-open", &order_body(&[("tee", 1, 100)], 60_000)),
            422,
            "idempotency_conflict",
        ),
        case("malformed JSON order", keyed("k-new", "{\"user_id\":"), bad, invalid),
        case(
            "an order as text/plain",
            request("POST", o, &[("Idempotency-Key", "k-new"), ("Content-Type", "text/plain")], Some("{}")),
            415,
            "unsupported_media_type",
        ),
        case("a huge order", keyed("k-new", &huge), 413, "payload_too_large"),
        case("cart_id of no cart", order_with(r#""items":null,"cart_id":"c1""#), 404, "cart_not_found"),
        case("cart_id not a cart id", order_with(r#""items":null,"cart_id":"c 1""#), bad, invalid),
        case("cart_id beside items", order_with(r#""cart_id":"c1""#), bad, invalid),
        case("neither items nor cart_id", order_with(r#""items":null"#), bad, invalid),
        case("a two-letter currency order", order_with(r#""currency":"us""#), bad, invalid),
        case("a currency with a symbol", order_with(r#""currency":"u$d""#), bad, invalid),
        case("a currency number", order_with(r#""currency":840"#), bad, invalid),
        case("no currency", order_with(r#""currency":null"#), bad, invalid),
        case("zero items", order_with(r#""items":[]"#), bad, invalid),
        case("too many items", order_with(&format!(r#""items":[{}]"#, many_items.join(","))), bad, invalid),
        case(
            "unit_price above its maximum, (2^53-1) / (32 lines * 10000 units)",
            order_with(r#""items":[{"sku":"tee","qty":1,"unit_price":28147497672}]"#),
            bad,
            invalid,
        ),
        case(
            "a negative unit_price",
            order_with(r#""items":[{"sku":"tee","qty":1,"unit_price":-1}]"#),
            bad,
            invalid,
        ),
        case("no unit_price", order_with(r#""items":[{"sku":"tee","qty":1}]"#), bad, invalid),
        case(
            "an amount above 2^53-1",
            order_with(r#""items":[{"sku":"tee","qty":10000,"unit_price":1125899906842624}]"#),
            bad,
            invalid,
        ),
        case("pay_within_ms zero", order_with(r#""pay_within_ms":0"#), bad, invalid),
        case("pay_within_ms below the minimum", order_with(r#""pay_within_ms":999"#), bad, invalid),
        case("pay_within_ms above the maximum", order_with(r#""pay_within_ms":3600001"#), bad, invalid),
        case("pay_within_ms a string", order_with(r#""pay_within_ms":"1m""#), bad, invalid),
        case("an unknown field", order_with(r#""coupon":"FREE""#), bad, invalid),
        case(
            "an unknown item field",
            order_with(r#""items":[{"sku":"tee","qty":1,"unit_price":1,"tax":1}]"#),
            bad,
            invalid,
        ),
        case("qty zero", order_with(r#""items":[{"sku":"tee","qty":0,"unit_price":1}]"#), bad, invalid),
        case(
            "qty above the item maximum",
            order_with(r#""items":[{"sku":"tee","qty":10001,"unit_price":1}]"#),
            bad,
            invalid,
        ),
        case(
            "a SKU twice",
            order_with(
                r#""items":[{"sku":"tee","qty":1,"unit_price":1},{"sku":"tee","qty":1,"unit_price":1}]"#,
            ),
            bad,
            invalid,
        ),
        case(
            "a SKU with a space",
            order_with(r#""items":[{"sku":"t e","qty":1,"unit_price":1}]"#),
            bad,
            invalid,
        ),
        case(
            "an unknown SKU",
            order_with(r#""items":[{"sku":"nope","qty":1,"unit_price":1}]"#),
            422,
            "unknown_sku",
        ),
        case(
            "more than is available",
            order_with(r#""items":[{"sku":"tee","qty":9,"unit_price":1}]"#),
            409,
            "insufficient_stock",
        ),
        case("an unknown sale", order_with(r#""sale_id":"nope""#), 422, "unknown_sale"),
        case("an empty user_id", order_with(r#""user_id":"""#), bad, invalid),
        case("no user_id", order_with(r#""user_id":null"#), bad, invalid),
        case(
            "an Idempotency-Key too long",
            request(
                "POST",
                o,
                &[("Idempotency-Key", &"k".repeat(129))],
                Some(&order_body(&[("tee", 1, 100)], 60_000)),
            ),
            bad,
            invalid,
        ),
        case(
            "two Idempotency-Keys",
            request(
                "POST",
                o,
                &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
                Some(&order_body(&[("tee", 1, 100)], 60_000)),
            ),
            bad,
            invalid,
        ),
        case("GET the order list", request("GET", o, &[], None), 405, "method_not_allowed"),
        // Payment references.
        case(
            "a payment with Idempotency-Key",
            request("POST", &payment(open), &[("Idempotency-Key", "k")], Some(r#"{"provider_ref":"pi_a"}"#)),
            bad,
            invalid,
        ),
        case(
            "another reference",
            post(&payment(open), r#"{"provider_ref":"pi_b"}"#),
            409,
            "provider_ref_conflict",
        ),
        case("an empty reference", post(&payment(open), r#"{"provider_ref":""}"#), bad, invalid),
        case("a reference with a space", post(&payment(open), r#"{"provider_ref":"pi a"}"#), bad, invalid),
        case(
            "a reference of 256 characters",
            post(&payment(open), &format!(r#"{{"provider_ref":"{}"}}"#, "p".repeat(256))),
            bad,
            invalid,
        ),
        case(
            "a payment with an unknown field",
            post(&payment(open), r#"{"provider_ref":"pi_a","amount":1}"#),
            bad,
            invalid,
        ),
        case("a payment without a body", post(&payment(open), ""), bad, invalid),
        case(
            "a payment as text/plain",
            request(
                "POST",
                &payment(open),
                &[("Content-Type", "text/plain")],
                Some(r#"{"provider_ref":"pi_a"}"#),
            ),
            415,
            "unsupported_media_type",
        ),
        case(
            "a reference for a cancelled order",
            post(&payment(cancelled), r#"{"provider_ref":"pi_c"}"#),
            409,
            "order_ended",
        ),
        case(
            "a reference for an unknown order",
            post(&payment(unknown), r#"{"provider_ref":"pi"}"#),
            404,
            "not_found",
        ),
        case(
            "a reference for a malformed id",
            post(&payment("ord_xyz"), r#"{"provider_ref":"pi"}"#),
            404,
            "not_found",
        ),
        // Cancelling.
        case("cancel a paid order", post(&cancel(paid), ""), 409, "order_paid"),
        case(
            "cancel with Idempotency-Key",
            request("POST", &cancel(open), &[("Idempotency-Key", "k")], None),
            bad,
            invalid,
        ),
        case("cancel with a body", post(&cancel(open), r#"{"force":true}"#), bad, invalid),
        case(
            "cancel with a text/plain body",
            request("POST", &cancel(open), &[("Content-Type", "text/plain")], Some("now")),
            415,
            "unsupported_media_type",
        ),
        case("cancel an unknown order", post(&cancel(unknown), ""), 404, "not_found"),
        case("cancel a malformed id", post(&cancel("ord_12"), ""), 404, "not_found"),
        // Reading, methods and routes.
        case("read an unknown order", request("GET", &format!("{o}/{unknown}"), &[], None), 404, "not_found"),
        case(
            "read an id with upper-case hex",
            request("GET", &format!("{o}/ord_00000000000000AB"), &[], None),
            404,
            "not_found",
        ),
        case(
            "read a reservation id as an order",
            request("GET", &format!("{o}/{}", f.open_reservation), &[], None),
            404,
            "not_found",
        ),
        case(
            "read an order id of sequence zero",
            request("GET", &format!("{o}/ord_0000000000000000"), &[], None),
            404,
            "not_found",
        ),
        case(
            "DELETE an order",
            request("DELETE", &format!("{o}/{open}"), &[], None),
            405,
            "method_not_allowed",
        ),
        case("PUT a payment", request("PUT", &payment(open), &[], Some("{}")), 405, "method_not_allowed"),
        case("an unknown order action", post(&format!("{o}/{open}/refund"), ""), 404, "not_found"),
        // An order's reservation is the order's.
        case(
            "commit an open order's reservation",
            post(&format!("/v1/reservations/{}/commit", f.open_reservation), ""),
            409,
            "order_reservation",
        ),
        case(
            "release an open order's reservation",
            post(&format!("/v1/reservations/{}/release", f.open_reservation), ""),
            409,
            "order_reservation",
        ),
        case(
            "extend an open order's reservation",
            post(&format!("/v1/reservations/{}/extend", f.open_reservation), r#"{"ttl_ms":60000}"#),
            409,
            "order_reservation",
        ),
        case(
            "release a paid order's reservation",
            post(&format!("/v1/reservations/{}/release", f.paid_reservation), ""),
            409,
            "order_reservation",
        ),
    ]
}

#[test]
fn bad_order_and_webhook_requests_get_a_clear_answer_and_change_nothing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = TestServer::start(order_options(dir.path(), &[CURRENT, RETIRED]));
    s.stock("tee", 10);
    s.stock("mug", 10);
    let open = place(&s, "k-open", &order_body(&[("tee", 2, 1_000)], 600_000));
    let (open_id, open_rsv) = (open["id"].as_str().unwrap(), open["reservation_id"].as_str().unwrap());
    assert_eq!(super::orders::attach(&s, open_id, "pi_a").status, 200);
    let paid = place(&s, "k-paid", &order_body(&[("tee", 1, 1_000)], 600_000));
    let paid_id = paid["id"].as_str().unwrap();
    let pay = event("evt_paid", "payment_intent.succeeded", paid_id, "pi_p", 1_000, "usd");
    delivered(&stripe(&s, CURRENT, &pay), "applied", "paid");
    let cancelled = place(&s, "k-cancelled", &order_body(&[("mug", 1, 1_000)], 600_000));
    let cancelled_id = cancelled["id"].as_str().unwrap();
    assert_eq!(s.post(&format!("/v1/orders/{cancelled_id}/cancel"), "").status, 200);
    let f = Fixture {
        open: open_id.to_owned(),
        open_reservation: open_rsv.to_owned(),
        paid: paid_id.to_owned(),
        paid_reservation: paid["reservation_id"].as_str().unwrap().to_owned(),
        cancelled: cancelled_id.to_owned(),
    };
    // The retired secret is removed at a restart.
    s.stop().expect("a clean stop");
    let s = TestServer::start_at(order_options(dir.path(), &[CURRENT]), T0_MS + 1_000);

    let state = |s: &TestServer| {
        let orders = [&f.open, &f.paid, &f.cancelled].map(|id| order(s, id));
        (s.counts("tee"), s.counts("mug"), orders)
    };
    let before = state(&s);
    assert_eq!((before.0, before.1), ((7, 2, 1), (10, 0, 0)));
    let lsn = s.metric("holdfast_wal_appended_lsn");
    let doc: Value = s.get("/openapi.json").json();

    let cases = cases(&s, &f);
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let failures = run_cases(&s, &doc, cases);
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(state(&s), before, "stock and orders unchanged");
    assert_eq!(s.metric("holdfast_wal_appended_lsn"), lsn, "nothing was logged");
    // And the open order still takes its payment.
    let pay = event("evt_open", "payment_intent.succeeded", &f.open, "pi_a", 2_000, "usd");
    delivered(&stripe(&s, CURRENT, &pay), "applied", "paid");
    assert_eq!(s.counts("tee"), (7, 0, 3));
}
