//! Who may do what: every route against every role (generated from the router's own table, so a new
//! route cannot be left out), bad credentials, the shopper's keyless reserve, rotation through a
//! keys file, and protected mode (no keys: loopback only).

use super::harness::{options, request, TestServer, T0_MS};
use holdfast::clock::rfc3339;
use holdfast::http::auth::{rule, Keys, Role, Rule};
use holdfast::http::ROUTES;
use std::process::Command;

pub const ADMIN: &str = "admin-secret-0123456789";
pub const CHECKOUT: &str = "checkout-secret-0123456789";
const OPS: &str = "ops-secret-0123456789";

fn keys() -> Keys {
    let mut keys = Keys::default();
    for (role, secret) in [("admin", ADMIN), ("checkout", CHECKOUT), ("ops", OPS)] {
        keys.add_flag(&format!("{role}={secret}")).expect("a valid key");
    }
    keys
}

pub fn guarded(dir: &std::path::Path) -> TestServer {
    let mut o = options(dir);
    o.http.keys = keys();
    TestServer::start(o)
}

pub fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// A request for `route` with `authorization`, a concrete path and a body of the right shape.
fn call(s: &TestServer, route: holdfast::http::Route, authorization: Option<&str>) -> super::harness::Reply {
    let (method, template) = route.template();
    let path = template
        .replace("{sku}", "tee")
        .replace("{sale}", "noon")
        .replace("{id}", "rsv_0000000000000001")
        .replace("{ticket}", "t");
    let body = (method != "GET").then_some(r#"{}"#);
    let headers: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
    s.send(request(method, &path, &headers, body))
}

/// Whether the server refused the caller (rather than the request).
fn refused(reply: &super::harness::Reply) -> bool {
    reply.status == 401 || (reply.status == 403 && reply.code() == "forbidden")
}

#[test]
fn every_route_answers_every_role_as_its_rule_says_and_a_refusal_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = guarded(dir.path());
    let before = s.send(request("GET", "/metrics", &[("Authorization", &bearer(OPS))], None)).text();
    let mut refusals = 0;
    for route in ROUTES {
        let anonymous = call(&s, route, None);
        match rule(route) {
            Rule::Open => assert!(!refused(&anonymous), "{route:?} is open: {}", anonymous.text()),
            Rule::Roles(_) | Rule::RolesOrAdmitted(_) => {
                assert_eq!(
                    (anonymous.status, anonymous.code().as_str()),
                    (401, "unauthenticated"),
                    "{route:?}"
                );
                assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"), "{route:?}");
                refusals += 1;
            }
        }
        for (role, secret) in [(Role::Admin, ADMIN), (Role::Checkout, CHECKOUT), (Role::Ops, OPS)] {
            let reply = call(&s, route, Some(&bearer(secret)));
            let allowed = match rule(route) {
                Rule::Open => true,
                Rule::Roles(roles) | Rule::RolesOrAdmitted(roles) => roles.contains(&role),
            };
            if allowed {
                assert!(!refused(&reply), "{route:?} as {role:?}: {}", reply.text());
            } else {
                assert_eq!(
                    (reply.status, reply.code().as_str()),
                    (403, "forbidden"),
                    "{route:?} as {role:?}"
                );
                assert!(!reply.text().contains(secret), "the key is never echoed");
                refusals += 1;
            }
        }
    }
    // Nothing a refused request asked for happened: the PUTs above were all admin's or refused, and
    // admin's body was empty (400), so no SKU or sale exists.
    let sku = s.send(request("GET", "/v1/skus/tee", &[("Authorization", &bearer(OPS))], None));
    assert_eq!(sku.status, 404, "{}", sku.text());
    assert!(!before.contains("holdfast_requests_refused_total"), "no refusal before the test");
    let text = s.send(request("GET", "/metrics", &[("Authorization", &bearer(OPS))], None)).text();
    let counted: f64 = text
        .lines()
        .filter(|l| l.starts_with("holdfast_requests_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, refusals, "every refusal is counted, by reason and route");
    for secret in [ADMIN, CHECKOUT, OPS] {
        assert!(!text.contains(secret), "no key in the metrics");
    }
}

#[test]
fn bad_credentials_are_refused_with_a_clear_401_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = guarded(dir.path());
    let put =
        |headers: &[(&str, &str)]| s.send(request("PUT", "/v1/skus/tee", headers, Some(r#"{"on_hand": 5}"#)));
    let long = format!("Bearer {}", "k".repeat(600));
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no header", vec![]),
        ("basic scheme", vec![("Authorization", "Basic YWRtaW46c2VjcmV0")]),
        ("token scheme", vec![("Authorization", "Token admin-secret-0123456789")]),
        ("scheme only", vec![("Authorization", "Bearer")]),
        ("empty key", vec![("Authorization", "Bearer ")]),
        ("two spaces", vec![("Authorization", "Bearer  admin-secret-0123456789")]),
        ("a space inside", vec![("Authorization", "Bearer admin-secret 0123456789")]),
        ("a prefix of the key", vec![("Authorization", "Bearer admin-secret-012345678")]),
        ("the key and more", vec![("Authorization", "Bearer admin-secret-01234567890")]),
        ("another case", vec![("Authorization", "Bearer ADMIN-SECRET-0123456789")]),
        ("very long", vec![("Authorization", long.as_str())]),
        ("twice", vec![("Authorization", "Bearer admin-secret-0123456789"), ("Authorization", "Bearer x")]),
        ("the key's hash", vec![("Authorization", "Bearer sha256:00")]),
        ("a key in another header", vec![("X-Api-Key", ADMIN)]),
    ];
    for (what, headers) in &cases {
        let reply = put(headers);
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "unauthenticated"),
            "{what}: {}",
            reply.text()
        );
        assert!(!reply.text().contains("0123456789"), "{what}: the key is never echoed");
    }
    // The scheme is case-insensitive (RFC 9110); the key is not.
    assert_eq!(put(&[("Authorization", "bearer admin-secret-0123456789")]).status, 200);
    let sku = s.send(request("GET", "/v1/skus/tee", &[("Authorization", &bearer(ADMIN))], None)).json();
    assert_eq!(sku["on_hand"], 5, "only the one accepted PUT changed anything");
}

/// A sale `noon` with a waiting room over `tee`, open now with admissions flowing.
pub fn gated_sale(s: &TestServer) {
    let admin = bearer(ADMIN);
    let h = [("Authorization", admin.as_str())];
    assert_eq!(s.send(request("PUT", "/v1/skus/tee", &h, Some(r#"{"on_hand": 10}"#))).status, 200);
    let body = format!(
        r#"{{"per_user_limit":1,"skus":["tee"],"opens_at":"{}","admission_rate":100,"session_ms":60000}}"#,
        rfc3339(T0_MS)
    );
    assert_eq!(s.send(request("PUT", "/v1/sales/noon", &h, Some(&body))).status, 200);
}

pub fn admission(s: &TestServer, user: &str) -> String {
    let joined = s.post("/v1/sales/noon/queue", &format!(r#"{{"user_id":"{user}"}}"#)).json();
    let ticket = joined["ticket"].as_str().expect("ticket").to_owned();
    for _ in 0..10 {
        s.advance(1_000);
        let polled = s.get(&format!("/v1/sales/noon/queue/{ticket}")).json();
        if let Some(admission) = polled["admission"].as_str() {
            return admission.to_owned();
        }
    }
    panic!("{user} was not admitted")
}

#[test]
fn a_shopper_reserves_without_a_key_only_with_their_own_admission() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = guarded(dir.path());
    gated_sale(&s);
    let ada = admission(&s, "ada");
    let reserve = |user: &str, admission: Option<&str>| {
        let admission = admission.map_or(String::new(), |a| format!(r#","admission":"{a}""#));
        s.post(
            "/v1/reservations",
            &format!(r#"{{"items":[{{"sku":"tee","qty":1}}],"ttl_ms":60000,"user_id":"{user}","sale_id":"noon"{admission}}}"#),
        )
    };
    let none = reserve("ada", None);
    assert_eq!((none.status, none.code().as_str()), (401, "unauthenticated"), "{}", none.text());
    let forged = reserve("ada", Some("forged"));
    assert_eq!((forged.status, forged.code().as_str()), (403, "not_admitted"), "{}", forged.text());
    let other = reserve("bob", Some(&ada));
    assert_eq!((other.status, other.code().as_str()), (403, "not_admitted"), "another user's admission");
    let outside = s.post(
        "/v1/reservations",
        &format!(
            r#"{{"items":[{{"sku":"cap","qty":1}}],"ttl_ms":60000,"user_id":"ada","admission":"{ada}"}}"#
        ),
    );
    assert_eq!((outside.status, outside.code().as_str()), (401, "unauthenticated"), "no sale, no key");
    let keyed = |admission: &str| {
        let body = format!(
            r#"{{"items":[{{"sku":"tee","qty":1}}],"ttl_ms":120000,"user_id":"ada","sale_id":"noon","admission":"{admission}"}}"#
        );
        s.send(request("POST", "/v1/reservations", &[("Idempotency-Key", "order-1")], Some(&body)))
    };
    let mine = keyed(&ada);
    assert_eq!(mine.status, 201, "{}", mine.text());
    let id = mine.json()["id"].as_str().expect("id").to_owned();
    // A shopper's key is the shopper's own: the checkout service's same key is another key.
    let key = bearer(CHECKOUT);
    let service = s.send(request(
        "POST",
        "/v1/reservations",
        &[("Idempotency-Key", "order-1"), ("Authorization", &key)],
        Some(r#"{"items":[{"sku":"cap","qty":1}],"ttl_ms":60000}"#),
    ));
    assert_ne!(service.code(), "idempotency_conflict", "{}", service.text());
    // A retry after the admission's session ended gets the reservation back (invariant 3).
    s.advance(61_000);
    let again = keyed(&ada);
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.json()["id"].as_str(), Some(id.as_str()));
    // What comes after the reserve is the checkout service's, with its key.
    let commit = s.post(&format!("/v1/reservations/{id}/commit"), "{}");
    assert_eq!(commit.status, 401);
    let commit = s.send(request(
        "POST",
        &format!("/v1/reservations/{id}/commit"),
        &[("Authorization", &key)],
        Some("{}"),
    ));
    assert_eq!(commit.status, 200, "{}", commit.text());
}

fn holdfast(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_holdfast")).args(args).output().expect("run holdfast");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn without_keys_the_server_refuses_to_listen_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let (code, out) = holdfast(&["serve", "--data-dir", d, "--listen", "0.0.0.0:0"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--api-key") && out.contains("loopback"), "{out}");
    let (code, out) =
        holdfast(&["serve", "--data-dir", d, "--listen", "0.0.0.0:0", "--api-key", "admin=short"]);
    assert_ne!(code, 0, "a short secret is refused: {out}");
}

#[test]
fn keys_rotate_through_the_keys_file_which_holds_only_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let new_key = || {
        let (code, out) = holdfast(&["keys", "new", "checkout"]);
        assert_eq!(code, 0, "{out}");
        let field = |name: &str| {
            out.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).expect("printed")
        };
        (field("key:"), field("line:"))
    };
    let ((old, old_line), (new, new_line)) = (new_key(), new_key());
    assert!(
        !old_line.contains(&old) && old_line.starts_with("checkout sha256:"),
        "only the hash: {old_line}"
    );
    let start = |lines: &str| {
        let mut keys = Keys::default();
        keys.add_file(lines).expect("the printed lines are a keys file");
        let mut o = options(dir.path());
        o.http.keys = keys;
        TestServer::start(o)
    };
    let get = |s: &TestServer, key: &str| {
        s.send(request("GET", "/v1/skus/tee", &[("Authorization", &bearer(key))], None)).status
    };
    let s = start(&format!("# during the rotation\n{old_line}\n{new_line} next\n"));
    assert_eq!((get(&s, &old), get(&s, &new)), (404, 404), "both keys are let in (no such SKU)");
    s.stop().expect("stopped");
    let s = start(&format!("{new_line}\n"));
    assert_eq!((get(&s, &old), get(&s, &new)), (401, 404), "the old key is revoked");
}

/// The API description states each route's rule exactly as the router's table has it.
#[test]
fn the_api_description_states_every_routes_rule() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../src/http/openapi.json")).expect("the description parses");
    for route in ROUTES {
        let (method, path) = route.template();
        let op = &doc["paths"][path][method.to_ascii_lowercase()];
        let roles: Vec<&str> = op["x-holdfast-roles"]
            .as_array()
            .expect("x-holdfast-roles")
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        let security = op["security"].as_array().expect("security");
        let (want_roles, want_security): (Vec<&str>, serde_json::Value) = match rule(route) {
            Rule::Open => (vec![], serde_json::json!([])),
            Rule::Roles(r) => (r.iter().map(|r| r.as_str()).collect(), serde_json::json!([{"bearer": []}])),
            Rule::RolesOrAdmitted(r) => {
                (r.iter().map(|r| r.as_str()).collect(), serde_json::json!([{"bearer": []}, {}]))
            }
        };
        assert_eq!(roles, want_roles, "{route:?}");
        assert_eq!(&serde_json::Value::Array(security.clone()), &want_security, "{route:?}");
        if rule(route) != Rule::Open {
            for status in ["401", "403"] {
                assert!(op["responses"][status].is_object(), "{route:?} does not describe {status}");
            }
        }
    }
}
