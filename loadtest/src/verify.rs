//! The drill's verdict: the server's end state and every reservation read back, held against what each
//! shopper was told, one reservation at a time. A server that answers something it did not do (a
//! commit it never made, a release it never forwarded, a limit it did not apply) fails a check here,
//! and so does any answer a shopper did not expect.

use crate::drill::{Outcome, Shopper, Told};
use crate::scenario::{Order, Scenario};
use serde_json::Value;
use std::collections::HashMap;

/// One verification check: its name, whether it held, and the evidence.
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What the server said at the end: the SKU's counters, and each reservation's state by id (`None`:
/// no answer, or not found).
pub struct EndState<'a> {
    pub stock: &'a Value,
    pub states: &'a HashMap<String, Option<String>>,
}

fn check(name: &'static str, ok: bool, detail: String) -> Check {
    Check { name, ok, detail }
}

/// Checks the server's end state against what the shoppers were told. `unanswered` counts requests
/// that got no reply or a 5xx.
pub fn verify(s: &Scenario, unanswered: u64, shoppers: &[Shopper], end: &EndState<'_>) -> Vec<Check> {
    let n = |k: &str| end.stock[k].as_u64().unwrap_or(u64::MAX);
    let (on_hand, available, reserved, sold) = (n("on_hand"), n("available"), n("reserved"), n("sold"));
    let mut checks = vec![
        check(
            "conservation",
            available.checked_add(reserved).and_then(|x| x.checked_add(sold)) == Some(on_hand),
            format!("available {available} + reserved {reserved} + sold {sold} = on_hand {on_hand}?"),
        ),
        check(
            "no_oversell",
            on_hand == s.units && sold <= s.units,
            format!("sold {sold} of {} units (on_hand {on_hand})", s.units),
        ),
        check(
            "nothing_left_reserved",
            reserved == 0 && available == s.units.saturating_sub(sold),
            format!(
                "after every hold ran out: reserved {reserved}, available {available} of {} unsold",
                s.units.saturating_sub(sold)
            ),
        ),
    ];
    checks.extend(reservations(s, shoppers, end, sold));
    checks.extend(rules(s, shoppers, available));
    let samples: Vec<&String> = shoppers.iter().flat_map(|p| &p.errors).take(5).collect();
    let surprised = shoppers.iter().filter(|p| !p.errors.is_empty()).count();
    checks.push(check(
        "every_answer_expected",
        unanswered == 0 && surprised == 0,
        format!("{unanswered} requests got no reply or a 5xx; {surprised} shoppers got an answer they did not expect; examples: {samples:?}"),
    ));
    let lost: Vec<&(String, u64)> = shoppers.iter().flat_map(|p| &p.expired_in_flight).collect();
    checks.push(check(
        "no_hold_expired_in_flight",
        lost.is_empty(),
        format!(
            "{} commits were sent more than {} ms before their hold's deadline and refused 410 \
             (reservation, ms before the deadline; first: {:?})",
            lost.len(),
            crate::drill::IN_FLIGHT_SLACK_MS,
            &lost[..lost.len().min(5)]
        ),
    ));
    let unfinished = shoppers.iter().filter(|p| p.outcome == Some(Outcome::Deadline)).count();
    checks.push(check(
        "finished_before_deadline",
        unfinished == 0,
        format!("{unfinished} shoppers still going at the deadline of {:?}", s.deadline()),
    ));
    checks
}

/// With a bound set, admitted shoppers' calls at the 99th percentile (µs, from when each was meant to
/// go) within it.
pub fn buyers_served_first(s: &Scenario, p99_us: u64) -> Option<Check> {
    let bound = s.buyer_p99_max_ms;
    (bound > 0).then(|| {
        check(
            "buyers_served_first",
            p99_us <= bound * 1000,
            format!(
                "admitted shoppers' calls took {:.1} ms at p99 (bound {bound} ms)",
                p99_us as f64 / 1000.0
            ),
        )
    })
}

/// Each reservation read back as the shopper was told, and sold units equal to the acknowledged commits.
fn reservations(s: &Scenario, shoppers: &[Shopper], end: &EndState<'_>, sold: u64) -> Vec<Check> {
    let (mut wrong, mut committed_units, mut told_units) = (Vec::new(), 0u64, 0u64);
    for (i, p) in shoppers.iter().enumerate() {
        for h in &p.holds {
            let state = end.states.get(&h.id).cloned().flatten();
            let expected: &[&str] = match h.told {
                Told::Held | Told::Expired => &["expired"],
                Told::Committed => &["committed"],
                Told::Released => &["released"],
                Told::Unknown => &["committed", "released", "expired"],
            };
            if !state.as_deref().is_some_and(|st| expected.contains(&st)) {
                wrong.push(format!("drill-user-{i} {}: told {:?}, reads {state:?}", h.id, h.told));
            }
            if state.as_deref() == Some("committed") {
                committed_units += u64::from(s.qty);
            }
            if h.told == Told::Committed {
                told_units += u64::from(s.qty);
            }
        }
    }
    vec![
        check(
            "reservations_read_back_as_told",
            wrong.is_empty(),
            format!("{} reservations differ from what their shopper was told (first: {:?})", wrong.len(), &wrong[..wrong.len().min(5)]),
        ),
        check(
            "sold_equals_acknowledged_commits",
            sold == committed_units && told_units <= committed_units,
            format!("the server sold {sold}; reservations read back committed hold {committed_units}; shoppers were told of {told_units} committed"),
        ),
    ]
}

/// The server's rules, as the shoppers met them: the per-user limit, sold-out announcements, and
/// (first come, first served) the order of admission.
fn rules(s: &Scenario, shoppers: &[Shopper], available: u64) -> Vec<Check> {
    let over: Vec<usize> =
        (0..shoppers.len()).filter(|&i| shoppers[i].reserved_units > u64::from(s.per_user_limit)).collect();
    let probes = shoppers.iter().filter(|p| p.limit_refused.is_some()).count();
    let sold_out = shoppers.iter().filter(|p| p.outcome == Some(Outcome::SoldOut)).count();
    let mut checks = vec![
        check(
            "per_user_limit",
            over.is_empty(),
            format!(
                "{} shoppers were granted more than the limit of {} ({probes} tried; first: {:?})",
                over.len(),
                s.per_user_limit,
                over.iter().take(5).map(|i| format!("drill-user-{i}")).collect::<Vec<_>>()
            ),
        ),
        check(
            "sold_out_only_when_gone",
            sold_out == 0 || available == 0,
            format!("{sold_out} shoppers were told sold out; {available} units are still available"),
        ),
    ];
    if s.order == Order::Fifo {
        let (jumps, first) = fifo_jumps(shoppers);
        checks.push(check(
            "admitted_in_joining_order",
            jumps == 0,
            format!("{jumps} shoppers were provably admitted while someone who joined before them still waited (first: {first:?})"),
        ));
    }
    checks
}

/// Shoppers admitted, by the drill's own clocks, while one who had certainly joined before them was
/// certainly still waiting: A's join was answered before B's was sent, and a poll A sent after B's
/// admission was answered still said "waiting". Joins whose request and reply overlap are not
/// ordered, so ties never count. Returns how many such B, and the first pair (A, B).
pub fn fifo_jumps(shoppers: &[Shopper]) -> (usize, Option<(usize, usize)>) {
    // Shoppers by when their join was answered, with the latest "waiting" poll of any of them so far.
    let mut by_join: Vec<usize> =
        (0..shoppers.len()).filter(|&i| shoppers[i].clocks.join_answered_us > 0).collect();
    by_join.sort_by_key(|&i| shoppers[i].clocks.join_answered_us);
    let mut latest_waiting: Vec<(u64, usize)> = Vec::with_capacity(by_join.len());
    for &i in &by_join {
        let w = shoppers[i].clocks.last_waiting_sent_us.unwrap_or(0);
        let best = latest_waiting.last().copied().unwrap_or((0, i));
        latest_waiting.push(if w > best.0 { (w, i) } else { best });
    }
    let (mut jumps, mut first) = (0, None);
    for (b, p) in shoppers.iter().enumerate() {
        let Some(admitted) = p.clocks.admitted_answered_us else { continue };
        // The shoppers whose join was answered before B's was sent.
        let before =
            by_join.partition_point(|&a| shoppers[a].clocks.join_answered_us < p.clocks.join_sent_us);
        if let Some(&(waiting_sent, a)) = before.checked_sub(1).and_then(|k| latest_waiting.get(k)) {
            if waiting_sent > admitted {
                jumps += 1;
                first.get_or_insert((a, b));
            }
        }
    }
    (jumps, first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::{Clocks, Hold};
    use serde_json::json;

    fn failed(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }

    fn buyer(id: &str) -> Shopper {
        Shopper {
            outcome: Some(Outcome::Bought),
            reserved_units: 1,
            bought_units: 1,
            holds: vec![Hold { id: id.into(), told: Told::Committed, expires_at_ms: 0 }],
            ..Shopper::default()
        }
    }

    fn states(pairs: &[(&str, &str)]) -> HashMap<String, Option<String>> {
        pairs.iter().map(|(id, st)| (id.to_string(), Some(st.to_string()))).collect()
    }

    fn stock(available: u64, reserved: u64, sold: u64, on_hand: u64) -> Value {
        json!({"on_hand": on_hand, "available": available, "reserved": reserved, "sold": sold})
    }

    #[test]
    fn verification_fails_on_each_kind_of_violation() {
        let s = Scenario { units: 10, per_user_limit: 1, ..Scenario::default() };
        let both = states(&[("r1", "committed"), ("r2", "committed")]);
        let run = |shoppers: &[Shopper], stock: &Value, states: &HashMap<String, Option<String>>| {
            failed(&verify(&s, 0, shoppers, &EndState { stock, states }))
        };
        let two = [buyer("r1"), buyer("r2")];
        assert!(run(&two, &stock(8, 0, 2, 10), &both).is_empty());
        assert_eq!(run(&two, &stock(9, 0, 2, 10), &both), ["conservation", "nothing_left_reserved"]);
        assert_eq!(run(&two, &stock(7, 1, 2, 10), &both), ["nothing_left_reserved"]);
        // A commit acknowledged but never made: the reservation reads expired, one unit fewer sold.
        let lost = states(&[("r1", "committed"), ("r2", "expired")]);
        assert_eq!(
            run(&two, &stock(9, 0, 1, 10), &lost),
            ["reservations_read_back_as_told", "sold_equals_acknowledged_commits"]
        );
        // A release acknowledged but never made: the unit is sold, or still held.
        let released = Shopper {
            outcome: Some(Outcome::Released),
            bought_units: 0,
            holds: vec![Hold { id: "r2".into(), told: Told::Released, expires_at_ms: 0 }],
            ..buyer("r2")
        };
        assert_eq!(
            run(&[buyer("r1"), released], &stock(9, 0, 1, 10), &lost),
            ["reservations_read_back_as_told"]
        );
        let greedy = Shopper { reserved_units: 2, limit_refused: Some(false), ..buyer("r2") };
        assert_eq!(run(&[buyer("r1"), greedy], &stock(8, 0, 2, 10), &both), ["per_user_limit"]);
        let surprised = Shopper { errors: vec!["commit: 404".into()], ..buyer("r2") };
        assert_eq!(run(&[buyer("r1"), surprised], &stock(8, 0, 2, 10), &both), ["every_answer_expected"]);
        assert_eq!(
            failed(&verify(&s, 3, &two, &EndState { stock: &stock(8, 0, 2, 10), states: &both })),
            ["every_answer_expected"]
        );
        let turned_away = Shopper { outcome: Some(Outcome::SoldOut), ..Shopper::default() };
        assert_eq!(
            run(&[buyer("r1"), buyer("r2"), turned_away], &stock(8, 0, 2, 10), &both),
            ["sold_out_only_when_gone"]
        );
        let late = Shopper { outcome: Some(Outcome::Deadline), ..Shopper::default() };
        assert_eq!(
            run(&[buyer("r1"), buyer("r2"), late], &stock(8, 0, 2, 10), &both),
            ["finished_before_deadline"]
        );
    }

    fn waiter(join: (u64, u64), last_waiting: Option<u64>, admitted: Option<u64>) -> Shopper {
        let clocks = Clocks {
            join_sent_us: join.0,
            join_answered_us: join.1,
            last_waiting_sent_us: last_waiting,
            admitted_answered_us: admitted,
        };
        Shopper { clocks, ..Shopper::default() }
    }

    #[test]
    fn a_provable_queue_jump_is_found_and_overlapping_joins_are_not_ordered() {
        // A joined first and still waited at 50 after B was admitted at 40.
        let a = waiter((0, 10), Some(50), Some(60));
        let b = waiter((20, 30), None, Some(40));
        assert_eq!(fifo_jumps(&[a.clone(), b.clone()]), (1, Some((0, 1))));
        // A's last "waiting" poll was sent before B's admission: nothing proven.
        let a_early = waiter((0, 10), Some(35), Some(60));
        assert_eq!(fifo_jumps(&[a_early, b.clone()]), (0, None));
        // Joins that overlap (A answered after B was sent) are a tie: not compared.
        let tied = waiter((0, 25), Some(50), Some(60));
        assert_eq!(fifo_jumps(&[tied, b]), (0, None));
    }
}
