//! The drill's report: figures per route, outcomes, waiting times, fairness, the verification against
//! the server, and a timeline; written as JSON and as a self-contained HTML page with SVG charts.

use crate::drill::{Drill, Shopper, CLASSES, ROUTES};
use crate::verify::Check;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

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
    let series: Vec<Value> = timeline
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let q = |h: &Option<Histogram<u64>>, q: f64| {
                h.as_ref().map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
            };
            let p99 = q(&s.latency, 0.99);
            let by_class: serde_json::Map<String, Value> = CLASSES
                .iter()
                .enumerate()
                .map(|(c, name)| {
                    let h = &s.class_latency[c];
                    let n = h.as_ref().map_or(0, |h| h.len());
                    (name.to_string(), json!({"count": n, "p50_ms": q(h, 0.5), "p99_ms": q(h, 0.99)}))
                })
                .collect();
            json!({"t": t, "requests": s.requests, "errors": s.errors, "shed": s.shed,
                   "crowd_unanswered": s.unanswered_crowd, "expired_in_flight": s.expired_in_flight,
                   "p99_ms": p99,
                   "classes": by_class,
                   "arrived": s.arrived, "waiting": s.waiting, "admitted": s.admitted, "done": s.done,
                   "stock": s.stock, "server": s.server})
        })
        .collect();
    let polls_peak = timeline.iter().map(|s| s.requests[1]).max().unwrap_or(0);
    json!({
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

const COLORS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

/// A line chart as inline SVG.
fn chart(title: &str, unit: &str, series: &[(&str, Vec<f64>)]) -> String {
    let (w, h, pad) = (760.0, 220.0, 40.0);
    let len = series.iter().map(|s| s.1.len()).max().unwrap_or(0).max(2);
    let top = series.iter().flat_map(|s| s.1.iter().copied()).fold(0.0f64, f64::max).max(1e-9);
    let mut svg = format!(
        r#"<h3>{title}</h3><svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        svg,
        r##"<rect x="{pad}" y="10" width="{}" height="{}" fill="none" stroke="#ccc"/>"##,
        w - 2.0 * pad,
        h - pad - 10.0
    );
    let _ = write!(
        svg,
        r##"<text x="2" y="18" font-size="11">{top:.0} {unit}</text><text x="2" y="{}" font-size="11">0</text>"##,
        h - pad
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" font-size="11">{} s</text>"##,
        w - pad - 20.0,
        h - pad + 14.0,
        len - 1
    );
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let x = pad + (w - 2.0 * pad) * i as f64 / (len - 1) as f64;
                let y = h - pad - (h - pad - 10.0) * v / top;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" fill="{color}">{name}</text>"#,
            pad + 90.0 * k as f64,
            h - 8.0
        );
    }
    svg.push_str("</svg>");
    svg
}

pub fn html(report: &Value) -> String {
    let timeline = report["timeline"].as_array().cloned().unwrap_or_default();
    let col = |f: &dyn Fn(&Value) -> f64| timeline.iter().map(f).collect::<Vec<f64>>();
    let per_route: Vec<(&str, Vec<f64>)> = ROUTES
        .iter()
        .enumerate()
        .map(|(r, name)| (*name, col(&|t: &Value| t["requests"][r].as_f64().unwrap_or(0.0))))
        .collect();
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>holdfast drill</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:900px}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.bad{color:#c00}.ok{color:#080}</style></head><body>",
    );
    let passed = report["verification"]["passed"].as_bool().unwrap_or(false);
    let _ = write!(
        page,
        "<h1>holdfast drill: {} users, {} units</h1><p>target {} · wall {} s, from the opening {} s (goal {} s) · verification <b class=\"{}\">{}</b></p>",
        report["users"], report["scenario"]["units"], report["target"], report["wall_secs"], report["sale_secs"], report["goal_secs"],
        if passed { "ok" } else { "bad" }, if passed { "passed" } else { "FAILED" }
    );
    page.push_str("<h2>Verification</h2><table><tr><th>check</th><th>ok</th><th>evidence</th></tr>");
    for c in report["verification"]["checks"].as_array().into_iter().flatten() {
        let ok = c["ok"].as_bool().unwrap_or(false);
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td style=\"text-align:left\">{}</td></tr>",
            c["name"].as_str().unwrap_or(""),
            if ok { "ok" } else { "bad" },
            ok,
            escape(c["detail"].as_str().unwrap_or(""))
        );
    }
    page.push_str("</table><h2>Routes (latency in ms, from when each request was meant to go)</h2><table><tr><th>route</th><th>count</th><th>per s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for name in ROUTES {
        let r = &report["routes"][name];
        let _ = write!(page, "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r["count"], r["per_s"], r["p50"], r["p90"], r["p99"], r["p99_9"], r["max"]);
    }
    let w = &report["waiting_ms"];
    let _ = write!(page, "</table><h2>Outcomes</h2><pre>{}</pre><h2>Waiting room</h2><p>admitted {} ({} /s) · wait p50 {} ms, p90 {} ms, p99 {} ms, max {} ms · polls peak {} /s · fairness: {} of {} pairs admitted out of joining order</p>",
        escape(&serde_json::to_string_pretty(&report["outcomes"]).unwrap_or_default()),
        report["admitted"], report["admitted_per_s"], w["p50"], w["p90"], w["p99"], w["max"], report["polls_per_s_peak"],
        report["fairness"]["later_admitted_before_earlier"], report["fairness"]["pairs_compared"]);
    let stock = |field: &'static str| col(&move |t: &Value| t["stock"][field].as_f64().unwrap_or(0.0));
    page.push_str(&chart(
        "Units of the SKU, second by second",
        "units",
        &[("available", stock("available")), ("reserved", stock("reserved")), ("sold", stock("sold"))],
    ));
    page.push_str(&chart("Throughput by route", "req/s", &per_route));
    let curves: Vec<(&str, Vec<f64>)> = ROUTES
        .iter()
        .map(|name| {
            let points = report["routes"][name]["distribution"].as_array().cloned().unwrap_or_default();
            (*name, points.iter().map(|p| p["ms"].as_f64().unwrap_or(0.0)).collect())
        })
        .collect();
    page.push_str(&chart(
        "Latency distribution by route: at p50, p75, p90, p95, p99, p99.9, p99.99 and the maximum, left to right",
        "ms",
        &curves,
    ));
    page.push_str("<h2>Buyers and the crowd (latency in ms)</h2><table><tr><th>class</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for name in CLASSES {
        let r = &report["classes"][name];
        let _ = write!(
            page,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r["count"], r["p50"], r["p90"], r["p99"], r["p99_9"], r["max"]
        );
    }
    let _ = write!(page, "</table><p>crowd requests shed by the server (503, retried after Retry-After): {} · crowd requests unanswered in time (retried): {} · commits refused 410 though sent before the deadline: {}</p>",
        report["crowd_shed"], report["crowd_unanswered"], report["expired_in_flight"]);
    let by_class = |class: &'static str, q: &'static str| {
        col(&move |t: &Value| t["classes"][class][q].as_f64().unwrap_or(0.0))
    };
    page.push_str(&chart(
        "Latency p99 by class, second by second",
        "ms",
        &[("buyers p99", by_class("buyers", "p99_ms")), ("crowd p99", by_class("crowd", "p99_ms"))],
    ));
    page.push_str(&chart(
        "Crowd requests shed or unanswered (both retried), and commits lost in flight, per second",
        "per s",
        &[
            ("shed", col(&|t: &Value| t["shed"].as_f64().unwrap_or(0.0))),
            ("unanswered", col(&|t: &Value| t["crowd_unanswered"].as_f64().unwrap_or(0.0))),
            ("commits lost in flight", col(&|t: &Value| t["expired_in_flight"].as_f64().unwrap_or(0.0))),
        ],
    ));
    page.push_str(&chart(
        "Buyers' latency, second by second",
        "ms",
        &[("buyers p50", by_class("buyers", "p50_ms")), ("buyers p99", by_class("buyers", "p99_ms"))],
    ));
    let server = |field: &'static str| col(&move |t: &Value| t["server"][field].as_f64().unwrap_or(0.0));
    page.push_str(&chart(
        "The server's log: mean sync latency and records per sync, second by second",
        "ms / records",
        &[
            ("sync latency (ms)", server("log_sync_ms_mean")),
            ("records per sync", server("log_batch_records_mean")),
        ],
    ));
    page.push_str(&chart(
        "The server's live reservations and open connections",
        "count",
        &[("live reservations", server("live_reservations")), ("connections", server("connections_open"))],
    ));
    page.push_str(&chart(
        "Queue",
        "shoppers",
        &[
            ("waiting", col(&|t: &Value| t["waiting"].as_f64().unwrap_or(0.0))),
            ("admitted", col(&|t: &Value| t["admitted"].as_f64().unwrap_or(0.0))),
            ("done", col(&|t: &Value| t["done"].as_f64().unwrap_or(0.0))),
        ],
    ));
    page.push_str("</body></html>\n");
    page
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
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
