//! Orders in the Postgres mirror: every order step applied exactly once (a batch applied twice is
//! refused, a mirror killed mid-way resumes where it was), each row equal to the engine's order, and
//! a row changed behind holdfast's back reported as drift.

use super::{caught_up, holdfast, metric, post, reconcile_is_clean, Pg};
use crate::http::harness::request;
use crate::http::process::{call, runtime, start_with, wait_ready};
use holdfast::durable::{codec, Durable};
use holdfast::engine::{EngineConfig, IdempotencyKey, Record, SkuId, UserId};
use holdfast::orders::{Order, OrderId, OrderLine, OrderRequest, OrderState, Payment, PaymentStatus};
use holdfast_wal::storage::FsStorage;
use holdfast_wal::{Lsn, WalOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_postgres::NoTls;

const T0: u64 = 1_800_000_000_000;
pub(crate) const SECRET: &str = "whsec_mirror_test_secret_0123456789";

/// What an order row holds that the engine also knows, in the row's words.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    state: String,
    cause: Option<String>,
    reservation_id: String,
    amount: i64,
    currency: String,
    provider_ref: Option<String>,
    pay_by_ms: i64,
    commit_owed: bool,
    user: String,
}

fn row_of(o: &Order) -> Row {
    Row {
        state: o.state.as_str().to_owned(),
        cause: match o.state {
            OrderState::Cancelled(c) => Some(c.as_str().to_owned()),
            _ => None,
        },
        reservation_id: o.reservation.to_string(),
        amount: o.placed.amount as i64,
        currency: o.placed.currency.clone(),
        provider_ref: o.provider_ref.clone(),
        pay_by_ms: o.pay_by_ms as i64,
        commit_owed: o.commit_owed,
        user: o.placed.user.as_str().to_owned(),
    }
}

fn pg_rows(pg: &Pg) -> BTreeMap<String, Row> {
    pg.query(
        "SELECT id, state, cause, reservation_id, amount, currency, provider_ref,
                (extract(epoch FROM pay_by) * 1000)::int8, commit_owed, user_id FROM holdfast_orders",
    )
    .iter()
    .map(|r| {
        let row = Row {
            state: r.get(1),
            cause: r.get(2),
            reservation_id: r.get(3),
            amount: r.get(4),
            currency: r.get(5),
            provider_ref: r.get(6),
            pay_by_ms: r.get(7),
            commit_owed: r.get(8),
            user: r.get(9),
        };
        (r.get(0), row)
    })
    .collect()
}

fn count(pg: &Pg, sql: &str) -> i64 {
    pg.query(sql)[0].get(0)
}

/// Orders through every step the saga logs, on a durable engine: paid, failed then paid late
/// (rebooked, commit owed, then committed), pending, mismatched, cancelled then paid with the units
/// gone (refund due), expired, and one left open.
pub(crate) fn order_log(d: &Durable) -> Vec<OrderId> {
    let sku = SkuId::new("tee").expect("sku");
    let mut now = T0;
    d.set_stock(&sku, 7, now).expect("stock");
    let mut ids = Vec::new();
    for i in 0..7u64 {
        now += 1;
        let req = OrderRequest {
            user: UserId::new(&format!("u{i}")).expect("user"),
            lines: vec![OrderLine { sku: sku.clone(), qty: 1, unit_price: 1_000 + i }],
            currency: "eur".into(),
            sale: None,
            pay_within_ms: if i == 5 { 1_000 } else { 600_000 },
            key: IdempotencyKey::new(&format!("k{i}")).expect("key"),
        };
        let placed = d.place_order(&req, None, now).expect("placed").value.0;
        if i < 5 {
            d.attach_payment(placed.id, &format!("pi_{i}"), now).expect("attached");
        }
        ids.push(placed.id);
    }
    let pay = |i: usize, status: PaymentStatus, amount: u64, now: u64| {
        let pref = format!("pi_{i}");
        let p = Payment { status, provider_ref: &pref, amount, currency: "eur" };
        d.payment_outcome(ids[i], &p, Some(&format!("evt_{i}_{now}")), now).expect("outcome");
    };
    now += 1;
    pay(0, PaymentStatus::Succeeded, 1_000, now);
    pay(1, PaymentStatus::Failed, 1_001, now);
    pay(2, PaymentStatus::Pending, 1_002, now);
    pay(3, PaymentStatus::Succeeded, 999, now);
    d.cancel_order(ids[4], now).expect("cancelled");
    now += 1;
    pay(1, PaymentStatus::Succeeded, 1_001, now); // rebooked: 1 unit back
    d.orders_tick(now).expect("tick"); // commits what the rebooking owes
                                       // The units are gone: order 4's late payment finds none.
    d.set_stock(&sku, 7 - d.engine().export(now).skus[0].1.available, now).expect("stock");
    pay(4, PaymentStatus::Succeeded, 1_004, now);
    now += 2_000;
    d.orders_tick(now).expect("tick"); // order 5's pay_by passed
    d.wal().wait(d.wal().appended_lsn()).expect("synced");
    ids
}

fn records(storage: &FsStorage) -> Vec<(Lsn, Record)> {
    let mut out = Vec::new();
    holdfast_wal::inspect(storage, 1, &mut |r| {
        out.push((r.lsn, codec::decode(r.payload).map_err(|e| e.0)?));
        Ok(())
    })
    .expect("the log reads");
    out
}

#[test]
fn order_steps_are_mirrored_exactly_once_and_tampering_is_drift() {
    let pg = Pg::new("obatch");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let storage = Arc::new(FsStorage::new(dir.path().join("wal")).expect("dir"));
    let (d, _) =
        Durable::open(storage.clone(), EngineConfig::default(), WalOptions::default()).expect("open");
    let ids = order_log(&d);
    let engine: BTreeMap<String, Row> =
        d.engine().export(0).orders.iter().map(|o| (o.id.to_string(), row_of(o))).collect();
    let states: Vec<&str> = engine.values().map(|r| r.state.as_str()).collect();
    for s in ["paid", "payment_pending", "payment_mismatch", "refund_due", "cancelled", "awaiting_payment"] {
        assert!(states.contains(&s), "the log has an order {s}: {states:?}");
    }
    assert_eq!(engine.len(), ids.len());
    let log = records(&storage);
    let order_records = log.iter().filter(|(_, r)| matches!(r, Record::Order(_))).count() as i64;

    let rt = &pg.rt;
    let mut client = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&pg.url, NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    });
    rt.block_on(holdfast::reconcile::migrate(&mut client)).expect("migrated");
    // Batches of 1, 2 and 3 records in turn, so that steps of one order land in different
    // transactions and some batches hold only steps that carry no reservation record; each batch is
    // also tried a second time, as a mirror that lost its answer would, and is refused without a trace.
    let mut applied: Lsn = 0;
    let mut batches = Vec::new();
    let mut rest = &log[..];
    for size in [1, 2, 3].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at(size.min(rest.len()));
        batches.push(batch);
        rest = tail;
    }
    for batch in batches {
        rt.block_on(holdfast::reconcile::apply_batch(&mut client, applied, batch, None)).expect("applied");
        let before = (count(&pg, "SELECT count(*) FROM holdfast_order_events"), pg_rows(&pg));
        let again = rt.block_on(holdfast::reconcile::apply_batch(&mut client, applied, batch, None));
        assert!(again.is_err(), "a batch applied twice is refused");
        let last = batch.last().expect("a record").0;
        let behind = rt.block_on(holdfast::reconcile::apply_batch(&mut client, last, batch, None));
        assert!(behind.is_err(), "records at or below the checkpoint are refused");
        assert_eq!(before, (count(&pg, "SELECT count(*) FROM holdfast_order_events"), pg_rows(&pg)));
        applied = last;
    }
    assert_eq!(pg.applied_lsn(), applied);
    assert_eq!(pg_rows(&pg), engine, "each order row equals the engine's order");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM holdfast_order_events"),
        order_records,
        "one history row per order record"
    );
    let mismatch = &pg
        .query(&format!("SELECT paid_amount, paid_currency FROM holdfast_orders WHERE id = '{}'", ids[3]))[0];
    assert_eq!((mismatch.get::<_, i64>(0), mismatch.get::<_, String>(1)), (999, "eur".to_owned()));
    let webhook_steps = count(&pg, "SELECT count(*) FROM holdfast_order_events WHERE event_id IS NOT NULL");
    assert_eq!(webhook_steps, 6, "each step a payment event made names it");
    // The inner reservation records are mirrored as before: Postgres's SKU equals the engine's.
    let stock = d.engine().export(0).skus[0].1;
    assert_eq!(pg.skus()["tee"], [stock.on_hand, stock.available, stock.reserved, stock.sold]);

    let check = |client: &mut tokio_postgres::Client| {
        rt.block_on(holdfast::reconcile::drift::check(client, &*storage, d.config())).expect("checked")
    };
    let report = check(&mut client);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.orders_checked, ids.len());
    // Tampering, one field at a time: each is drift, named with both sides.
    let tampers = [
        (ids[0], "state = 'cancelled', cause = 'expired'"),
        (ids[2], "provider_ref = 'pi_other'"),
        (ids[3], "amount = amount + 1"),
        (ids[1], "reservation_id = 'rsv_0000000000000000'"),
        (ids[4], "currency = 'usd'"),
    ];
    for (id, set) in tampers {
        let saved = pg_rows(&pg);
        pg.execute(&format!("UPDATE holdfast_orders SET {set} WHERE id = '{id}'"));
        let report = check(&mut client);
        assert_eq!(report.orders.len(), 1, "{set}: {report:?}");
        assert_eq!(report.orders[0].id, id.to_string());
        assert_eq!(
            report.orders[0].engine.as_ref().map(|e| e.state.as_str()),
            Some(engine[&id.to_string()].state.as_str())
        );
        let r = &saved[&id.to_string()];
        pg.execute(&format!(
            "UPDATE holdfast_orders SET state = '{}', cause = {}, reservation_id = '{}', amount = {}, currency = '{}',
                 provider_ref = {} WHERE id = '{id}'",
            r.state,
            r.cause.as_ref().map_or("NULL".into(), |c| format!("'{c}'")),
            r.reservation_id,
            r.amount,
            r.currency,
            r.provider_ref.as_ref().map_or("NULL".into(), |c| format!("'{c}'")),
        ));
        assert!(check(&mut client).is_clean(), "restored after {set}");
    }
    // An open order Postgres lacks, and one only Postgres has, are drift; an ended order only
    // Postgres has is one the engine forgot after its retention, not drift.
    pg.execute(&format!("UPDATE holdfast_orders SET id = 'ord_ffffffffffffffff' WHERE id = '{}'", ids[6]));
    let report = check(&mut client);
    let drifted: Vec<&str> = report.orders.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(drifted, [ids[6].to_string().as_str(), "ord_ffffffffffffffff"], "{report:?}");
    pg.execute("UPDATE holdfast_orders SET state = 'paid' WHERE id = 'ord_ffffffffffffffff'");
    let report = check(&mut client);
    assert_eq!(report.orders.len(), 1, "{report:?}");
    assert_eq!(report.orders[0].postgres, None);
    d.close().expect("close");
}

/// A Stripe-style event for an order, signed as the provider would.
fn webhook(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    event: &str,
    kind: &str,
    order: &str,
    pref: &str,
    amount: u64,
) {
    let body = format!(
        r#"{{"id":"{event}","type":"{kind}","created":1,"data":{{"object":{{"id":"{pref}","amount":{amount},"currency":"eur","status":"x","metadata":{{"order_id":"{order}"}}}}}}}}"#
    );
    let secrets = holdfast::orders::webhook::Secrets::new(&[SECRET.to_owned()]).expect("secret");
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let sig = secrets.sign_stripe(t, body.as_bytes());
    let reply =
        call(rt, addr, request("POST", "/v1/webhooks/payments", &[("Stripe-Signature", &sig)], Some(&body)));
    assert!(reply.status < 300, "{event}: {} {}", reply.status, reply.text());
}

#[test]
fn orders_are_mirrored_once_across_sigkills_and_reconcile_reports_a_tampered_row() {
    let pg = Pg::new("orders");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let flags = ["--database-url", pg.url.as_str(), "--mirror-batch-max", "4", "--webhook-secret", SECRET];
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 1000}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    let mut ids = Vec::new();
    for i in 0..24u64 {
        // The mirror is killed mid-way, twice, wherever it is.
        if i == 8 || i == 16 {
            p.child.kill().expect("SIGKILL");
            p.child.wait().expect("reaped");
            p = start_with(dir.path(), &flags);
            wait_ready(&rt, p.addr);
        }
        let body = format!(
            r#"{{"user_id":"u{i}","items":[{{"sku":"tee","qty":{},"unit_price":250}}],"currency":"eur"}}"#,
            1 + i % 3
        );
        let key = format!("order-{i}");
        let reply = call(
            &rt,
            p.addr,
            request("POST", "/v1/orders", &[("Idempotency-Key", key.as_str())], Some(&body)),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        let order: Value = reply.json();
        let id = order["id"].as_str().expect("id").to_owned();
        let amount = order["amount"].as_u64().expect("amount");
        let pref = format!("pi_{i}");
        if i % 4 != 3 {
            post(
                &rt,
                p.addr,
                &format!("/v1/orders/{id}/payment"),
                &format!(r#"{{"provider_ref":"{pref}"}}"#),
            );
        }
        match i % 4 {
            0 => {
                webhook(&rt, p.addr, &format!("evt_{i}"), "payment_intent.succeeded", &id, &pref, amount);
                // The provider sends it again: no second effect.
                webhook(&rt, p.addr, &format!("evt_{i}"), "payment_intent.succeeded", &id, &pref, amount);
            }
            1 => {
                webhook(&rt, p.addr, &format!("evt_{i}"), "payment_intent.payment_failed", &id, &pref, amount)
            }
            2 => webhook(&rt, p.addr, &format!("evt_{i}"), "payment_intent.processing", &id, &pref, amount),
            _ => drop(post(&rt, p.addr, &format!("/v1/orders/{id}/cancel"), "{}")),
        }
        ids.push(id);
    }
    caught_up(&rt, &p, &pg);
    let rows = pg_rows(&pg);
    assert_eq!(rows.len(), ids.len(), "each order once");
    for id in &ids {
        let v = call(&rt, p.addr, request("GET", &format!("/v1/orders/{id}"), &[], None)).json();
        let row = &rows[id];
        assert_eq!(row.state, v["state"].as_str().expect("state"), "{id}");
        assert_eq!(row.cause.as_deref(), v["cause"].as_str(), "{id}");
        assert_eq!(row.reservation_id, v["reservation_id"].as_str().expect("rsv"), "{id}");
        assert_eq!(row.amount as u64, v["amount"].as_u64().expect("amount"), "{id}");
        assert_eq!(row.provider_ref.as_deref(), v["provider_ref"].as_str(), "{id}");
    }
    let (_, stats) = holdfast(&["wal", "stats", dir.path().to_str().expect("utf-8"), "--json"]);
    let stats: Value = serde_json::from_str(stats.lines().next().expect("a line")).expect("JSON");
    let logged = stats["by_kind"]["order"].as_u64().expect("order records");
    let events = pg.query("SELECT count(*), count(DISTINCT lsn) FROM holdfast_order_events");
    assert_eq!(events[0].get::<_, i64>(0) as u64, logged, "one history row per order record in the log");
    assert_eq!(events[0].get::<_, i64>(0), events[0].get::<_, i64>(1));
    assert!(metric(&rt, p.addr, "holdfast_mirror_errors") == 0.0, "no batch was refused");
    reconcile_is_clean(&pg, dir.path());

    let paid = &ids[0];
    pg.execute(&format!("UPDATE holdfast_orders SET state = 'refund_due' WHERE id = '{paid}'"));
    let d = dir.path().to_str().expect("utf-8");
    let (code, out) = holdfast(&["reconcile", "--database-url", &pg.url, "--data-dir", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("order {paid}")) && out.contains("refund_due"), "{out}");
    let (code, out) = holdfast(&["reconcile", "--database-url", &pg.url, "--data-dir", d, "--json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(out.lines().next().expect("a line")).expect("JSON");
    assert_eq!(report["orders"][0]["id"], paid.as_str());
    assert_eq!(report["orders"][0]["engine"]["state"], "paid");
    assert_eq!(report["orders"][0]["postgres"]["state"], "refund_due");
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}

#[test]
fn a_resync_from_a_snapshot_writes_the_orders_it_holds() {
    let pg = Pg::new("oresync");
    let rt = runtime();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let flags = [
        "--database-url",
        pg.url.as_str(),
        "--webhook-secret",
        SECRET,
        "--mirror-log-budget-bytes",
        "2097152",
        "--segment-bytes",
        "1048672",
        "--snapshot-every-records",
        "300",
    ];
    let mut p = start_with(dir.path(), &flags);
    wait_ready(&rt, p.addr);
    let put = request("PUT", "/v1/skus/tee", &[], Some(r#"{"on_hand": 1000000}"#));
    assert_eq!(call(&rt, p.addr, put).status, 200);
    caught_up(&rt, &p, &pg);
    // Orders made while Postgres is away, and a log that outgrows its budget before it is back: the
    // mirror resyncs from a snapshot, whose orders must reach Postgres without their records.
    pg.take_away();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let body = format!(
            r#"{{"user_id":"u{i}","items":[{{"sku":"tee","qty":1,"unit_price":500}}],"currency":"eur"}}"#
        );
        let key = format!("resync-{i}");
        let reply = call(
            &rt,
            p.addr,
            request("POST", "/v1/orders", &[("Idempotency-Key", key.as_str())], Some(&body)),
        );
        assert_eq!(reply.status, 201, "{}", reply.text());
        let id = reply.json()["id"].as_str().expect("id").to_owned();
        let pref = format!("pi_r{i}");
        post(&rt, p.addr, &format!("/v1/orders/{id}/payment"), &format!(r#"{{"provider_ref":"{pref}"}}"#));
        match i % 3 {
            0 => webhook(&rt, p.addr, &format!("evt_r{i}"), "payment_intent.succeeded", &id, &pref, 500),
            1 => drop(post(&rt, p.addr, &format!("/v1/orders/{id}/cancel"), "{}")),
            _ => {}
        }
        ids.push(id);
    }
    let addr = p.addr;
    let reserve_many = |n: usize| {
        rt.block_on(async move {
            for i in 0..n {
                let body = crate::http::harness::reserve_body("tee", 1, &format!("r{i}"));
                let reply =
                    crate::http::harness::send(addr, request("POST", "/v1/reservations", &[], Some(&body)))
                        .await
                        .expect("served");
                assert_eq!(reply.status, 201, "{}", reply.text());
            }
        })
    };
    reserve_many(20_000);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&rt, p.addr, "holdfast_mirror_retention_released") != 1.0
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    reserve_many(2_000); // another snapshot removes the segments
    pg.bring_back();
    caught_up(&rt, &p, &pg);
    assert!(metric(&rt, p.addr, "holdfast_mirror_resyncs") >= 1.0, "the mirror had to resync");
    let rows = pg_rows(&pg);
    for id in &ids {
        let v = call(&rt, p.addr, request("GET", &format!("/v1/orders/{id}"), &[], None)).json();
        let row = rows.get(id).unwrap_or_else(|| panic!("{id} not in Postgres after the resync"));
        assert_eq!(row.state, v["state"].as_str().expect("state"), "{id}");
        assert_eq!(row.cause.as_deref(), v["cause"].as_str(), "{id}");
        assert_eq!(row.provider_ref.as_deref(), v["provider_ref"].as_str(), "{id}");
        assert_eq!(row.reservation_id, v["reservation_id"].as_str().expect("rsv"), "{id}");
    }
    // An order placed after the resync, and a step of one from before it, follow as usual.
    webhook(&rt, p.addr, "evt_after", "payment_intent.succeeded", &ids[2], "pi_r2", 500);
    caught_up(&rt, &p, &pg);
    assert_eq!(pg_rows(&pg)[&ids[2]].state, "paid");
    reconcile_is_clean(&pg, dir.path());
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}
