//! `Idempotency-Key` on every mutating route: honoured where a retry would have a second effect
//! (reserve, adjust), accepted where a repeat is harmless by nature (commit, release, queue join),
//! refused with 400 where it cannot be honoured (PUT of a SKU or a sale, extend) — never ignored.

use super::harness::{options, request, reserve_body, TestServer};

const RESTOCK: &str = r#"{"delta": 10, "reason": "po-77 restock"}"#;

fn adjust(s: &TestServer, key: &str, body: &str) -> super::harness::Reply {
    s.post_keyed("/v1/skus/tee/adjust", key, body)
}

#[test]
fn a_keyed_adjust_counts_once_and_answers_the_same_also_after_restarts() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let first = {
        let s = TestServer::start(options(dir.path()));
        s.stock("tee", 10);
        let first = adjust(&s, "po-77", RESTOCK);
        assert_eq!((first.status, first.json()["on_hand"].as_u64()), (200, Some(20)));
        assert_eq!(first.header("idempotent-replayed"), None);
        // Stock moves meanwhile; the retry still answers what the restock left, and adds nothing.
        assert_eq!(s.post("/v1/reservations", &reserve_body("tee", 3, "ada")).status, 201);
        let retry = adjust(&s, "po-77", RESTOCK);
        assert_eq!((retry.status, retry.json()), (200, first.json()));
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(s.counts("tee"), (17, 3, 0), "one restock of 10");
        // The same key with another body, or for a reserve, is a conflict and changes nothing.
        let other = adjust(&s, "po-77", r#"{"delta": 20, "reason": "po-77 restock"}"#);
        assert_eq!((other.status, other.code()), (422, "idempotency_conflict".into()));
        let reserve = s.post_keyed("/v1/reservations", "po-77", &reserve_body("tee", 1, "bob"));
        assert_eq!((reserve.status, reserve.code()), (422, "idempotency_conflict".into()));
        assert_eq!(s.counts("tee"), (17, 3, 0));
        first.json()
    };
    // After a restart from the log alone, then from a snapshot that holds the key.
    let mut o = options(dir.path());
    o.snapshot.every_records = 1;
    let s = TestServer::start(o.clone());
    let retry = adjust(&s, "po-77", RESTOCK);
    assert_eq!((retry.status, retry.json()), (200, first.clone()), "after a restart");
    std::thread::sleep(std::time::Duration::from_millis(1_500)); // the snapshot thread's turn
    s.stop().expect("stops");
    let names: Vec<String> = (std::fs::read_dir(dir.path().join("wal")).expect("dir"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".snap")), "a snapshot was taken: {names:?}");
    let s = TestServer::start(o);
    let retry = adjust(&s, "po-77", RESTOCK);
    assert_eq!((retry.status, retry.json()), (200, first), "after a restart from a snapshot");
    assert_eq!(s.counts("tee"), (17, 3, 0));
}

#[test]
fn routes_that_cannot_honour_a_key_refuse_it_and_harmless_ones_accept_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 10);
    let keyed = |method: &str, path: &str, body: Option<&str>| {
        s.send(request(method, path, &[("Idempotency-Key", "k-1")], body))
    };
    let r = keyed("PUT", "/v1/skus/tee", Some(r#"{"on_hand": 50}"#));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    assert!(r.json()["detail"].as_str().unwrap_or("").contains("takes no Idempotency-Key"), "{}", r.text());
    let r = keyed("PUT", "/v1/sales/noon", Some(r#"{"per_user_limit": 2}"#));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    assert_eq!(s.get("/v1/sales/noon").status, 404, "nothing was set");
    let id = s.post("/v1/reservations", &reserve_body("tee", 1, "ada")).json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let expires_at = s.get(&format!("/v1/reservations/{id}")).json()["expires_at"].clone();
    s.clock.advance(1_000);
    let r = keyed("POST", &format!("/v1/reservations/{id}/extend"), Some(r#"{"ttl_ms": 60000}"#));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    assert_eq!(s.get(&format!("/v1/reservations/{id}")).json()["expires_at"], expires_at, "not extended");
    assert_eq!(s.counts("tee"), (9, 1, 0));
    // Commit and release are idempotent by reservation id: a key is harmless there.
    let r = keyed("POST", &format!("/v1/reservations/{id}/commit"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = keyed("POST", &format!("/v1/reservations/{id}/commit"), None);
    assert_eq!((r.status, s.counts("tee")), (200, (9, 0, 1)));
}
