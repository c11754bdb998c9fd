//! Reservation ids cannot be guessed from one another: an id names its reservation only with the random
//! tag it was issued with. A data directory written before ids had tags keeps its short ids working.

use super::harness::{options, reserve_body, TestServer, T0_MS};
use holdfast::durable::codec;
use holdfast::engine::{Item, Record, ReservationId, ReservedRecord, SkuId, UserId};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{Wal, WalOptions};
use std::collections::HashSet;
use std::sync::Arc;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir")
}

/// Every way to act on a reservation by id, for one that must not be found.
fn refused_everywhere(s: &TestServer, id: &str) {
    assert_eq!(s.get(&format!("/v1/reservations/{id}")).code(), "not_found", "{id}");
    for action in ["commit", "release"] {
        assert_eq!(s.post(&format!("/v1/reservations/{id}/{action}"), "").code(), "not_found", "{id}");
    }
    let extend = s.post(&format!("/v1/reservations/{id}/extend"), r#"{"ttl_ms": 120000}"#);
    assert_eq!(extend.code(), "not_found", "{id}");
}

#[test]
fn an_id_with_another_tag_names_no_reservation() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 100);
    let ids: Vec<String> = (0..50)
        .map(|i| {
            let r = s.post("/v1/reservations", &reserve_body("tee", 1, &format!("u{i}")));
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_str().expect("an id").to_owned()
        })
        .collect();
    for id in &ids {
        let parsed = ReservationId::parse(id).expect("a valid id");
        assert!(id.len() == 36 && parsed.tag() != 0, "{id}");
    }
    let tags: HashSet<&str> = ids.iter().map(|id| &id[20..]).collect();
    assert_eq!(tags.len(), ids.len(), "every reservation has its own tag");

    // A shopper who holds ids[11] guesses its neighbour ids[10]: the sequence is easy, the tag is not.
    let victim = &ids[10];
    let mut flipped = victim.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let guesses = [
        format!("{}{}", &victim[..20], &ids[11][20..]),
        String::from_utf8(flipped).expect("ASCII"),
        victim[..20].to_owned(),
    ];
    for guess in &guesses {
        refused_everywhere(&s, guess);
    }
    // Enumerating around a known id finds no one else's: every nearby sequence, with no tag, the
    // known tag, or that tag one bit off.
    let mine = ReservationId::parse(&ids[25]).expect("valid");
    let mut found = Vec::new();
    for seq in mine.raw().saturating_sub(30)..=mine.raw() + 30 {
        for tag in [None, Some(mine.tag()), Some(mine.tag() ^ 1)] {
            let guess = tag.map_or(format!("rsv_{seq:016x}"), |t| format!("rsv_{seq:016x}{t:016x}"));
            if guess != ids[25] && s.get(&format!("/v1/reservations/{guess}")).status == 200 {
                found.push(guess);
            }
        }
    }
    assert!(found.is_empty(), "guesses that found a reservation: {found:?}");
    assert_eq!(s.get(&format!("/v1/reservations/{victim}")).json()["state"], "active");
    assert_eq!(s.counts("tee"), (50, 50, 0), "no guess changed anything");

    // A keyed retry answers with the whole id, tag included, after a restart too.
    let body = reserve_body("tee", 1, "retry");
    let first = s.post_keyed("/v1/reservations", "k-1", &body).json()["id"].clone();
    assert_eq!(s.post_keyed("/v1/reservations", "k-1", &body).json()["id"], first);
    s.stop().expect("stopped");
    let s = TestServer::start(options(dir.path()));
    assert_eq!(s.post_keyed("/v1/reservations", "k-1", &body).json()["id"], first);
    assert_eq!(s.post(&format!("/v1/reservations/{victim}/commit"), "").json()["state"], "committed");
    for guess in &guesses[..1] {
        refused_everywhere(&s, guess);
    }
}

#[test]
fn ids_issued_before_tags_keep_working() {
    let dir = scratch();
    let s = TestServer::start(options(dir.path()));
    s.stock("tee", 10);
    s.stop().expect("stopped");

    // Two reserves as an earlier build wrote them: ids without tags, in records of format version 1.
    let storage = Arc::new(FsStorage::new(dir.path().join("wal")).expect("wal dir"));
    let (wal, _) = Wal::open(storage, WalOptions::default(), 0, |_, _| Ok(())).expect("open the log");
    let mut payload = Vec::new();
    for seq in 1..=2 {
        let record = Record::Reserved(ReservedRecord {
            id: ReservationId::from_parts(seq, 0).expect("valid"),
            items: vec![Item { sku: SkuId::new("tee").expect("sku"), qty: 2 }],
            created_at_ms: T0_MS,
            expires_at_ms: T0_MS + 600_000,
            user: Some(UserId::new("old-shopper").expect("user")),
            sale: None,
            idempotency: None,
        });
        codec::encode(&record, &mut payload);
        assert_eq!(payload[4], 1, "written as the first format");
        let lsn = wal.append(&payload).expect("append");
        wal.wait(lsn).expect("sync");
    }
    wal.close().expect("close");

    let s = TestServer::start(options(dir.path()));
    assert_eq!(s.counts("tee"), (6, 4, 0));
    let old = "rsv_0000000000000001";
    assert_eq!(s.get(&format!("/v1/reservations/{old}")).json()["id"], old);
    assert_eq!(s.post(&format!("/v1/reservations/{old}/commit"), "").json()["state"], "committed");
    // The long form of an old id, whatever its tag, is another id.
    refused_everywhere(&s, "rsv_00000000000000020123456789abcdef");
    assert_eq!(s.post("/v1/reservations/rsv_0000000000000002/release", "").json()["state"], "released");
    // New reserves get tags and sequences past the old ones.
    let new = s.post("/v1/reservations", &reserve_body("tee", 1, "new")).json()["id"].clone();
    let new = ReservationId::parse(new.as_str().expect("id")).expect("valid");
    assert!(new.tag() != 0 && new.raw() != 1 && new.raw() != 2, "{new}");
    assert_eq!(s.counts("tee"), (7, 1, 2));
}
