//! The drill's report: figures per route, outcomes, waiting times, fairness, the verification against
//! the server, and a timeline second by second; written as JSON (the page is `report_page.rs`).

use crate::drill::{Drill, Shopper, CLASSES, ROUTES};
use crate::verify::Check;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn quantiles_ms(h: &Histogram<u64>, scale_to_ms: f64) -> Value {
    let q = |q: f64| (h.value_at_quantile(q) as f64 * scale_to_ms * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999),
        "max": (h.max() as f64 * scale_to_ms * 1000.0).round() / 1000.0,
    })
}

/// The percentiles a latency distribution is drawn at (100: the maximum).
const PERCENTILES: [f64; 8] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 100.0];

/// A route's latency at each of `PERCENTILES`, in ms: its distribution as a percentile curve.
fn distribution(h: &Histogram<u64>) -> Value {
    let at = |p: f64| (h.value_at_quantile(p / 100.0) as f64).round() / 1000.0;
    json!(PERCENTILES.iter().map(|&p| json!({"percentile": p, "ms": at(p)})).collect::<Vec<_>>())
}

/// Pairs (a, b) with a joined strictly before b but b admitted strictly before a (never admitted: last).
/// Counted by merge sort over the admission times in order of joining: O(n log n).
pub fn inversions(mut pairs: Vec<(u64, u64)>) -> (u64, u64) {
    pairs.sort_unstable();
    let mut admitted: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    let n = admitted.len() as u64;
    // Ties in joining time are not an order, so they are not compared: count them out.
    let mut tied = 0u64;
    let mut i = 0;
    while i < pairs.len() {
        let j = pairs[i..].iter().position(|p| p.0 != pairs[i].0).map_or(pairs.len(), |k| i + k);
        let run = (j - i) as u64;
        tied += run * (run - 1) / 2;
        // Inversions inside a tie run are not counted: sort the run by admission first.
        admitted[i..j].sort_unstable();
        i = j;
    }
    let mut buffer = vec![0u64; admitted.len()];
    let count = merge_count(&mut admitted, &mut buffer);
    (count, n * n.saturating_sub(1) / 2 - tied)
}

fn merge_count(v: &mut [u64], buffer: &mut [u64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut count =
        merge_count(&mut v[..mid], &mut buffer[..mid]) + merge_count(&mut v[mid..], &mut buffer[mid..]);
    let (mut i, mut j, mut k) = (0, mid, 0);
    while i < mid && j < n {
        if v[j] < v[i] {
            count += (mid - i) as u64;
            buffer[k] = v[j];
            j += 1;
        } else {
            buffer[k] = v[i];
            i += 1;
        }
        k += 1;
    }
    buffer[k..k + mid - i].copy_from_slice(&v[i..mid]);
    k += mid - i;
    buffer[k..k + n - j].copy_from_slice(&v[j..n]);
    v.copy_from_slice(&buffer[..n]);
    count
}

pub fn build(
    drill: &Drill,
    shoppers: &[Shopper],
    checks: &[Check],
    (wall_secs, sale_secs): (f64, f64),
    target: &str,
    stock: &Value,
) -> Value {
    let stats = &drill.stats;
    let mut routes = serde_json::Map::new();
    let statuses = stats.statuses.lock().clone();
    for (r, name) in ROUTES.iter().enumerate() {
        let h = stats.latency[r].lock();
        let mut v = quantiles_ms(&h, 0.001);
        v["per_s"] = json!((h.len() as f64 / wall_secs).round());
        let by_status: BTreeMap<String, u64> = statuses
            .iter()
            .filter(|((route, _), _)| route == name)
            .map(|((_, st), n)| (st.to_string(), *n))
            .collect();
        v["statuses"] = json!(by_status);
        v["distribution"] = distribution(&h);
        routes.insert(name.to_string(), v);
    }
    let mut classes = serde_json::Map::new();
    for (c, name) in CLASSES.iter().enumerate() {
        classes.insert(name.to_string(), quantiles_ms(&stats.class_latency[c].lock(), 0.001));
    }
    let expired_in_flight: Vec<&(String, u64)> = shoppers.iter().flat_map(|p| &p.expired_in_flight).collect();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for p in shoppers {
        let key = p.outcome.map_or("none".to_owned(), |o| {
            serde_json::to_value(o).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        });
        *outcomes.entry(key).or_default() += 1;
    }
    let mut waits = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid bounds");
    for p in shoppers {
        if let (Some(j), Some(a)) = (p.joined_at_ms, p.admitted_at_ms) {
            waits.saturating_record(a.saturating_sub(j.max(drill.opens_at_ms)).max(1));
        }
    }
    let admitted = shoppers.iter().filter(|p| p.admitted_at_ms.is_some()).count() as u64;
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for t in shoppers.iter().filter_map(|p| p.admitted_at_ms) {
        *per_second.entry(t / 1000).or_default() += 1;
    }
    let admitted_peak = per_second.values().copied().max().unwrap_or(0);
    let first_last = shoppers
        .iter()
        .filter_map(|p| p.admitted_at_ms)
        .fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let admitting_secs = (first_last.1.saturating_sub(first_last.0) as f64 / 1000.0).max(0.001);
    let pairs: Vec<(u64, u64)> = shoppers
        .iter()
        .filter_map(|p| Some((p.joined_at_ms?, p.admitted_at_ms.unwrap_or(u64::MAX))))
        .collect();
    let (inverted, compared) = inversions(pairs);
    let timeline = stats.timeline.lock().clone();
    // The shoppers' counts are running totals: each second shows its own arrivals and admissions.
    let (mut arrived_before, mut admitted_before) = (0, 0);
    let series: Vec<Value> = timeline
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let q = |h: &Option<Histogram<u64>>, q: f64| {
                h.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
            };
            let mut all: Option<Histogram<u64>> = None;
            for h in s.route_latency.iter().flatten() {
                let _ = all.get_or_insert_with(|| Histogram::new_from(h)).add(h);
            }
            let p99 = q(&all, 0.99);
            let by_route: serde_json::Map<String, Value> = ROUTES
                .iter()
                .zip(&s.route_latency)
                .map(|(name, h)| {
                    let n = h.as_ref().map_or(0, |h| h.len());
                    (name.to_string(), json!({"count": n, "p50_ms": q(h, 0.5), "p99_ms": q(h, 0.99)}))
                })
                .collect();
            let not_ok: BTreeMap<String, u64> = s
                .not_ok
                .iter()
                .map(|((route, status), n)| {
                    let what = if *status == 0 { "no answer".to_owned() } else { status.to_string() };
                    (format!("{} {what}", ROUTES[*route]), *n)
                })
                .collect();
            // A second left unsampled (a late sample skipped it) has no counts; the next sampled
            // second's arrivals and admissions include its.
            let counted = |n: u64| s.sampled.then_some(n);
            let arrivals = counted(s.arrived.saturating_sub(arrived_before));
            let admissions = counted(s.admitted.saturating_sub(admitted_before));
            if s.sampled {
                (arrived_before, admitted_before) = (s.arrived, s.admitted);
            }
            let by_class: serde_json::Map<String, Value> = CLASSES
                .iter()
                .enumerate()
                .map(|(c, name)| {
                    let h = &s.class_latency[c];
                    let n = h.as_ref().map_or(0, |h| h.len());
                    (name.to_string(), json!({"count": n, "p50_ms": q(h, 0.5), "p99_ms": q(h, 0.99)}))
                })
                .collect();
            json!({"t": t, "requests": s.requests, "routes": by_route, "errors": s.errors, "not_ok": not_ok, "shed": s.shed,
                   "crowd_unanswered": s.unanswered_crowd, "expired_in_flight": s.expired_in_flight,
                   "p99_ms": p99,
                   "classes": by_class,
                   "arrivals": arrivals, "admissions": admissions,
                   "arrived": counted(s.arrived), "waiting": counted(s.waiting),
                   "admitted": counted(s.admitted), "done": counted(s.done),
                   "stock": s.stock, "server": s.server})
        })
        .collect();
    let polls_peak = timeline.iter().map(|s| s.requests[1]).max().unwrap_or(0);
    let server_figure = |field: &'static str| series.iter().filter_map(move |t| t["server"][field].as_f64());
    let cpu_mean =
        server_figure("cpu_percent").sum::<f64>() / server_figure("cpu_percent").count().max(1) as f64;
    json!({
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "target": target,
        "scenario": drill.scenario,
        "wall_secs": (wall_secs * 1000.0).round() / 1000.0,
        "sale_secs": (sale_secs * 1000.0).round() / 1000.0,
        "goal_secs": drill.scenario.users as f64 / f64::from(drill.scenario.admission_rate) + 10.0,
        "users": shoppers.len(),
        "outcomes": outcomes,
        "routes": routes,
        "classes": classes,
        "crowd_shed": stats.shed.load(std::sync::atomic::Ordering::Relaxed),
        "crowd_unanswered": stats.unanswered_crowd.load(std::sync::atomic::Ordering::Relaxed),
        "expired_in_flight": expired_in_flight.len(),
        "expired_in_flight_first": expired_in_flight.iter().take(10).collect::<Vec<_>>(),
        "admitted": admitted,
        "admitted_per_s": (admitted as f64 / admitting_secs).round(),
        "admitted_peak_per_s": admitted_peak,
        "waiting_ms": quantiles_ms(&waits, 1.0),
        "polls_per_s_peak": polls_peak,
        // The server process over the drill, from its /metrics (null where it did not answer).
        "server": {
            "cpu_percent_mean": (server_figure("cpu_percent").count() > 0).then(|| (cpu_mean * 10.0).round() / 10.0),
            "cpu_percent_peak": server_figure("cpu_percent").reduce(f64::max),
            "rss_mb_peak": server_figure("rss_mb").reduce(f64::max),
        },
        "fairness": {
            "order": drill.scenario.order,
            "later_admitted_before_earlier": inverted,
            "pairs_compared": compared,
            "fraction": if compared == 0 { 0.0 } else { inverted as f64 / compared as f64 },
        },
        "stock_at_end": stock,
        "verification": {
            "passed": checks.iter().all(|c| c.ok),
            "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        },
        "timeline": series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inversions_count_later_arrivals_admitted_first() {
        assert_eq!(inversions(vec![(1, 10), (2, 20), (3, 30)]), (0, 3));
        assert_eq!(inversions(vec![(1, 30), (2, 20), (3, 10)]), (3, 3));
        assert_eq!(inversions(vec![(1, u64::MAX), (2, 5)]), (1, 1), "never admitted counts as last");
        assert_eq!(inversions(vec![(1, 9), (1, 5), (2, 7)]), (1, 2), "a tie in joining is not compared");
    }
}
