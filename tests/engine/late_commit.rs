//! A commit that arrived before its hold's deadline but is decided after it (it waited in the
//! server) is judged at its arrival, within the commit grace; the expiry tick leaves holds that grace
//! past their deadline. So waiting in the server never costs a hold, and whatever the log holds first
//! (the commit or the expiry) is what happened, on replay too.

use holdfast::engine::*;
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
const TTL: u64 = 1_000;
const GRACE: u64 = 50;

/// An engine with `units` of SKU "a", and the log so far (the stock's record).
fn engine_logged(units: u64) -> (Engine, Vec<Record>) {
    let config = EngineConfig { shards: 2, commit_grace_ms: GRACE, ..EngineConfig::default() };
    let engine = Engine::new(config).expect("config");
    let mut log = Vec::new();
    engine.set_stock(&SkuId::new("a").expect("valid"), units, T0, &mut log).expect("stock");
    (engine, log)
}

fn engine(units: u64) -> Engine {
    engine_logged(units).0
}

fn hold(e: &Engine, at: u64, log: &mut Vec<Record>) -> ReservationId {
    let items = vec![Item { sku: SkuId::new("a").expect("valid"), qty: 1 }];
    let req = ReserveRequest { items, ttl_ms: TTL, user: None, sale: None, idempotency_key: None };
    e.reserve(&req, at, log).expect("reserve").id
}

#[test]
fn a_commit_that_arrived_in_time_commits_though_decided_after_the_deadline() {
    let e = engine(1);
    let mut log = Vec::new();
    let id = hold(&e, T0, &mut log);
    let deadline = T0 + TTL;
    // The tick runs during the wait: within the grace it leaves the hold alone.
    assert_eq!(e.expire_due(deadline + GRACE - 1, &mut log), vec![]);
    let judged = e.judged_at(deadline - 1, deadline + GRACE - 1);
    assert_eq!(judged, deadline - 1);
    e.commit(id, judged, &mut log).expect("on time by its arrival");
    assert_eq!(e.stock("a").map(|s| s.sold), Some(1));
    assert_eq!(log.last(), Some(&Record::Committed { id, at_ms: deadline - 1 }));
}

#[test]
fn a_commit_that_waited_past_the_grace_is_judged_then_and_agrees_with_the_tick() {
    let e = engine(1);
    let id = hold(&e, T0, &mut Vec::new());
    let deadline = T0 + TTL;
    let judged = e.judged_at(deadline - 1, deadline + GRACE + 10);
    assert_eq!(judged, deadline + 10, "never earlier than the grace before now");
    assert_eq!(e.commit(id, judged, &mut ()), Err(ReservationError::Expired));
    assert_eq!(e.expire_due(deadline + GRACE + 10, &mut ()), vec![id], "the tick agrees");
    // A commit that arrived late is late whatever the grace.
    let id = hold(&e, T0 + 5_000, &mut Vec::new());
    assert_eq!(e.judged_at(T0 + 5_000 + TTL, T0 + 5_000 + TTL + 1), T0 + 5_000 + TTL);
    assert_eq!(e.commit(id, T0 + 5_000 + TTL, &mut ()), Err(ReservationError::Expired));
}

#[test]
fn the_tick_expires_a_hold_once_the_grace_has_passed_and_logs_when_it_was_due() {
    let (e, mut log) = engine_logged(1);
    let id = hold(&e, T0, &mut log);
    let deadline = T0 + TTL;
    assert_eq!(e.expire_due(deadline + GRACE - 1, &mut log), vec![]);
    assert_eq!(e.stock("a").map(|s| s.available), Some(0), "the unit stays held in the grace");
    assert_eq!(e.expire_due(deadline + GRACE, &mut log), vec![id]);
    assert_eq!(e.stock("a").map(|s| s.available), Some(1));
    assert_eq!(log.last(), Some(&Record::Expired { id, at_ms: deadline + GRACE }), "logged when it ran");
    // Replay accepts it: an expiry at or after the deadline.
    let replayed = Engine::new(e.config().clone()).expect("config");
    for record in &log {
        replayed.apply(record).expect("replays");
    }
    assert_eq!(replayed.stock("a").map(|s| s.available), Some(1));
}

/// A late request (a client's retry, a heartbeat extend) judged past the deadline, while an earlier
/// commit that arrived in time is still being received: the late one is refused and leaves the hold
/// to the tick, so the earlier one still commits.
#[test]
fn a_late_request_inside_the_grace_leaves_the_hold_for_an_earlier_commit() {
    let (e, mut log) = engine_logged(2);
    let id = hold(&e, T0, &mut log);
    let deadline = T0 + TTL;
    let records = log.len();
    let retry = e.judged_at(deadline + 5, deadline + 5);
    assert_eq!(e.commit(id, retry, &mut log), Err(ReservationError::Expired));
    assert_eq!(e.release(id, retry, &mut log), Err(ReservationError::Expired));
    assert_eq!(e.extend(id, TTL, retry, &mut log), Err(ReservationError::Expired));
    assert_eq!(log.len(), records, "nothing logged: the hold is the tick's to end");
    assert_eq!(e.reservation(id, retry).map(|r| r.state), Some(ReservationState::Active));
    let first = e.judged_at(deadline - 20, deadline + 30);
    e.commit(id, first, &mut log).expect("the first commit arrived in time");
    // Past the grace a late call ends the hold itself, as before.
    let id = hold(&e, T0 + 10_000, &mut log);
    let late = T0 + 10_000 + TTL + GRACE;
    assert_eq!(e.release(id, late, &mut log), Err(ReservationError::Expired));
    assert_eq!(log.last(), Some(&Record::Expired { id, at_ms: late }));
}

#[test]
fn the_judged_time_never_runs_ahead_of_now() {
    let e = engine(1);
    assert_eq!(e.judged_at(T0 + 10, T0), T0, "an arrival stamped after now (clock step) is now");
    assert_eq!(e.judged_at(0, GRACE / 2), 0);
}

#[derive(Debug, Clone)]
enum Step {
    /// The tick runs `after` ms after the previous step.
    Tick { after: u64 },
    /// A commit (or release) of hold `which` arrives `after` ms after the previous step and is
    /// decided `waited` ms later (the clock then stands there).
    End { which: usize, after: u64, waited: u64, commit: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u64..120).prop_map(|after| Step::Tick { after }),
        (0usize..4, 0u64..400, 0u64..120, any::<bool>())
            .prop_map(|(which, after, waited, commit)| Step::End { which, after, waited, commit }),
    ]
}

proptest! {
    /// Four holds made together, then ticks and commits or releases at random times around their
    /// deadline, each decided after a random wait. Every one that arrived before the deadline and
    /// waited no longer than the grace succeeds; none judged at or after the deadline succeeds; the
    /// engine's own records replay to the same state.
    #[test]
    fn waiting_in_the_server_never_costs_a_hold(steps in prop::collection::vec(step(), 1..60)) {
        let (e, mut log) = engine_logged(4);
        let ids: Vec<ReservationId> = (0..4).map(|_| hold(&e, T0, &mut log)).collect();
        let deadline = T0 + TTL;
        // Start a little before the deadline so that most steps fall around it.
        let mut now = deadline - 300;
        let mut ended = [false; 4];
        for step in &steps {
            match *step {
                Step::Tick { after } => {
                    now += after;
                    for id in e.expire_due(now, &mut log) {
                        let i = ids.iter().position(|&x| x == id).expect("one of ours");
                        prop_assert!(!ended[i]);
                        prop_assert!(now >= deadline + GRACE, "expired {} ms after the deadline", now - deadline);
                        ended[i] = true;
                    }
                }
                Step::End { which, after, waited, commit } => {
                    let arrived = now + after;
                    now = arrived + waited;
                    let judged = e.judged_at(arrived, now);
                    let id = ids[which];
                    let result = if commit { e.commit(id, judged, &mut log) } else { e.release(id, judged, &mut log) };
                    if !ended[which] && arrived < deadline && waited <= GRACE {
                        prop_assert_eq!(result, Ok(()), "arrived {} ms before the deadline, waited {} ms", deadline - arrived, waited);
                    }
                    if result.is_ok() && !ended[which] {
                        prop_assert!(judged < deadline);
                    }
                    // A late call inside the grace leaves the hold to the tick.
                    ended[which] = e.reservation(id, now).map(|r| r.state) != Some(ReservationState::Active);
                    if !ended[which] {
                        prop_assert_eq!(result, Err(ReservationError::Expired));
                        prop_assert!(judged >= deadline && judged < deadline + GRACE);
                    }
                }
            }
            let s = e.stock("a").expect("exists");
            prop_assert_eq!(s.available + s.reserved + s.sold, s.on_hand);
        }
        let replayed = Engine::new(e.config().clone()).expect("config");
        for (i, record) in log.iter().enumerate() {
            replayed.apply(record).map_err(|err| TestCaseError::fail(format!("record {i} {record:?}: {err}")))?;
        }
        prop_assert_eq!(replayed.stock("a").map(|s| (s.available, s.reserved, s.sold)), e.stock("a").map(|s| (s.available, s.reserved, s.sold)));
        for &id in &ids {
            prop_assert_eq!(replayed.reservation(id, now).map(|r| r.state), e.reservation(id, now).map(|r| r.state));
        }
    }
}
