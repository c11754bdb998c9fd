//! The drill's report as one self-contained HTML page: the verification first, as a pass/fail block
//! with its evidence, then the sale second by second, latency, the waiting room and the server's side.
//! Charts are SVG drawn by `plot.rs`; the page loads nothing and runs no script.

use crate::drill::{CLASSES, ROUTES};
use crate::plot::{self, escape, text, Bar, Line, Scale, STYLE};
use serde_json::Value;
use std::fmt::Write;

pub fn html(report: &Value) -> String {
    let timeline = report["timeline"].as_array().cloned().unwrap_or_default();
    let mut page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>holdfast drill: {} shoppers</title>\
         <style>{STYLE}</style></head><body>",
        report["scenario"]["users"]
    );
    let _ = write!(
        page,
        "<h1>holdfast drill: {} shoppers, {} units</h1><p>{} · target {} · {} order, {} admitted a second, holds of {} ms</p>",
        report["scenario"]["users"],
        report["scenario"]["units"],
        if report["date"].is_null() { "not started".to_owned() } else { text(&report["date"]) },
        text(&report["target"]),
        text(&report["scenario"]["order"]),
        report["scenario"]["admission_rate"],
        report["scenario"]["hold_ttl_ms"],
    );
    page.push_str(&verdict(report));
    if timeline.is_empty() {
        page.push_str("</body></html>\n");
        return page;
    }
    page.push_str(&tiles(report));
    page.push_str("<h2>The sale, second by second</h2>");
    page.push_str(&sale(report, &timeline));
    page.push_str("<h2>Latency</h2>");
    page.push_str(&latency(report, &timeline));
    page.push_str("<h2>The waiting room</h2>");
    page.push_str(&waiting_room(report, &timeline));
    page.push_str("<h2>The server's side, read from its /metrics each second</h2>");
    let read = timeline.iter().filter(|t| t["server"].is_object()).count();
    if read < timeline.len() {
        let _ = write!(
            page,
            "<p class=\"bad\">The server's /metrics answered in {read} of the drill's {} seconds; \
             the rest are gaps below.</p>",
            timeline.len()
        );
    }
    page.push_str(&panels(&timeline, Some("server"), &SERVER));
    page.push_str("</body></html>\n");
    page
}

/// The verification as a block a reader cannot miss: passed or failed, and each check's evidence.
fn verdict(report: &Value) -> String {
    let passed = report["verification"]["passed"].as_bool().unwrap_or(false);
    let (class, word) = if passed { ("ok", "passed") } else { ("bad", "FAILED") };
    let mut block = format!(
        "<div class=\"verdict {class}\" id=\"verification\"><h2>Verification {word}</h2>\
         <p>Each check compares what the shoppers were told with the server's own state at the end.</p>\
         <table><tr><th>check</th><th>result</th><th>evidence</th></tr>"
    );
    for c in report["verification"]["checks"].as_array().into_iter().flatten() {
        let ok = c["ok"].as_bool().unwrap_or(false);
        let _ = write!(
            block,
            "<tr><td class=\"l\">{}</td><td class=\"{}\">{}</td><td class=\"l\">{}</td></tr>",
            escape(c["name"].as_str().unwrap_or("")),
            if ok { "ok" } else { "bad" },
            if ok { "pass" } else { "FAIL" },
            escape(c["detail"].as_str().unwrap_or(""))
        );
    }
    block.push_str("</table></div>");
    block
}

/// The headline figures.
fn tiles(report: &Value) -> String {
    let route = |name: &str, q: &str| report["routes"][name][q].clone();
    let tiles = [
        ("sold", report["stock_at_end"]["sold"].clone(), "units"),
        ("wall time", report["wall_secs"].clone(), "s"),
        ("from opening to the last shopper", report["sale_secs"].clone(), "s"),
        ("admitted", report["admitted"].clone(), "shoppers"),
        ("reserve p99", route("reserve", "p99"), "ms"),
        ("commit p99", route("commit", "p99"), "ms"),
        ("wait p99", report["waiting_ms"]["p99"].clone(), "ms"),
        ("server CPU, mean", report["server"]["cpu_percent_mean"].clone(), "% of a core"),
        ("server memory, peak", report["server"]["rss_mb_peak"].clone(), "MB"),
    ];
    let mut out = String::from("<div class=\"tiles\">");
    for (what, v, unit) in tiles {
        let shown = if v.is_null() { "–".to_owned() } else { text(&v) };
        let _ = write!(out, "<div class=\"tile\">{what}<b>{shown} <small>{unit}</small></b></div>");
    }
    out.push_str("</div>");
    out
}

/// A value per second from the timeline.
fn column(timeline: &[Value], pick: impl Fn(&Value) -> &Value) -> Vec<Option<f64>> {
    timeline.iter().map(|t| pick(t).as_f64()).collect()
}

fn sale(report: &Value, timeline: &[Value]) -> String {
    let units = Panel {
        title: "Units of the SKU.",
        tells:
            "Available falls as shoppers reserve; a hold that runs out or is released puts its units back; \
                sold only rises. The three add up to the stock every second.",
        unit: "units",
        lines: &[("available", "available"), ("reserved", "reserved"), ("sold", "sold")],
        scale: Scale::Linear,
    };
    let mut out = panels(timeline, Some("stock"), &[units]);
    let mut outcomes: Vec<(String, f64)> = report["outcomes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.replace('_', " "), v.as_f64().unwrap_or(0.0)))
        .collect();
    outcomes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let bars: Vec<Bar> = outcomes
        .into_iter()
        .map(|(label, value)| {
            // A shopper the drill's deadline stopped, or with no outcome, failed as an error did.
            let group = usize::from(matches!(label.as_str(), "error" | "none" | "deadline"));
            Bar { label, value, group }
        })
        .collect();
    out.push_str(&plot::bars(
        "How each shopper's visit ended.",
        "Bought, told sold out, gave up or let the hold run out, as the shopper saw it; an error, a shopper \
         still going at the drill's deadline, or none, is a failure.",
        "shoppers",
        &bars,
        &["outcome", "a failure"],
    ));
    let routes = |names: &[&'static str]| -> Vec<Line<'static>> {
        names
            .iter()
            .map(|&name| Line { name, values: column(timeline, move |t| &t["routes"][name]["count"]) })
            .collect()
    };
    out.push_str(&plot::timeline(
        "Requests answered per second, buyers.",
        "Admitted shoppers' reserves, commits and releases: what the sale is made of. Requests that got no \
         answer are under \"Answers other than 2xx\".",
        "requests/s",
        &routes(&["reserve", "commit", "release"]),
        Scale::Linear,
    ));
    out.push_str(&plot::timeline(
        "Requests answered per second, the crowd.",
        "Joins to the waiting room and the waiting shoppers' polls: usually far more than the buyers' requests.",
        "requests/s",
        &routes(&["join", "poll"]),
        Scale::Linear,
    ));
    let mut kinds: Vec<(String, u64)> = Vec::new();
    for t in timeline {
        for (k, n) in t["not_ok"].as_object().into_iter().flatten() {
            match kinds.iter_mut().find(|(name, _)| name == k) {
                Some(kind) => kind.1 += n.as_u64().unwrap_or(0),
                None => kinds.push((k.clone(), n.as_u64().unwrap_or(0))),
            }
        }
    }
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    kinds.truncate(8);
    let lines: Vec<Line> = kinds
        .iter()
        .map(|(k, _)| Line {
            name: k,
            values: timeline.iter().map(|t| Some(t["not_ok"][k].as_f64().unwrap_or(0.0))).collect(),
        })
        .collect();
    out.push_str(&plot::timeline(
        "Answers other than 2xx per second, by route and status (the eight most frequent).",
        "409 on reserve: sold out; 429: the sale's per-user limit reached (the drill tries past it); 410 on commit: \
         the hold ran out first; 503 on join or poll: the crowd shed (retried); \"no answer\": timed out.",
        "answers/s",
        &lines,
        Scale::Linear,
    ));
    out
}

fn latency(report: &Value, timeline: &[Value]) -> String {
    let mut out = String::from(
        "<p>Latency runs from when each request was meant to go (corrected for coordinated omission): \
         a stalled server shows as latency, not as fewer requests.</p>",
    );
    let curves: Vec<(&str, Vec<(f64, f64)>)> = ROUTES
        .iter()
        .map(|name| {
            let points = report["routes"][name]["distribution"].as_array().cloned().unwrap_or_default();
            let curve = points
                .iter()
                .map(|p| (p["percentile"].as_f64().unwrap_or(0.0), p["ms"].as_f64().unwrap_or(0.0)))
                .collect();
            (*name, curve)
        })
        .collect();
    out.push_str(&plot::percentiles(
        "Latency distribution by route.",
        "How slow the slowest half, 10%, 1%, 0.1%… of each route's requests were, over the whole drill.",
        &curves,
    ));
    let by_route = |names: &[&'static str], q: &'static str| -> Vec<Line<'static>> {
        names
            .iter()
            .map(|&name| Line { name, values: column(timeline, move |t| &t["routes"][name][q]) })
            .collect()
    };
    let mut buyers = by_route(&["reserve", "commit", "release"], "p99_ms");
    for line in &mut buyers {
        line.name = match line.name {
            "reserve" => "reserve p99",
            "commit" => "commit p99",
            _ => "release p99",
        };
    }
    buyers
        .push(Line { name: "reserve p50", values: column(timeline, |t| &t["routes"]["reserve"]["p50_ms"]) });
    out.push_str(&plot::timeline(
        "Buyers' latency per second: p99 of each route, and reserve's p50.",
        "If admitted shoppers wait behind the crowd, it shows here while the joins run.",
        "ms",
        &buyers,
        Scale::Log,
    ));
    out.push_str(&plot::timeline(
        "The crowd's latency per second: p99 of joins and polls.",
        "The waiting room's pages: slower here is acceptable, slower for buyers is not.",
        "ms",
        &[
            Line { name: "join p99", values: column(timeline, |t| &t["routes"]["join"]["p99_ms"]) },
            Line { name: "poll p99", values: column(timeline, |t| &t["routes"]["poll"]["p99_ms"]) },
        ],
        Scale::Log,
    ));
    out.push_str("<table><tr><th>route</th><th>requests</th><th>per s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>answers by status</th></tr>");
    for name in ROUTES {
        let r = &report["routes"][name];
        let _ = write!(
            out,
            "<tr><td class=\"l\">{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            r["count"], r["per_s"], r["p50"], r["p90"], r["p99"], r["p99_9"], r["max"],
            escape(&statuses(&r["statuses"]))
        );
    }
    out.push_str("</table><table><tr><th>class</th><th>requests</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>");
    for name in CLASSES {
        let r = &report["classes"][name];
        let _ = write!(
            out,
            "<tr><td class=\"l\">{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r["count"], r["p50"], r["p90"], r["p99"], r["p99_9"], r["max"]
        );
    }
    out.push_str("</table>");
    out
}

/// `200: 4,981 · 409: 19` from `{"200": 4981, "409": 19}`.
fn statuses(v: &Value) -> String {
    let parts: Vec<String> =
        v.as_object().into_iter().flatten().map(|(status, n)| format!("{status}: {n}")).collect();
    parts.join(" · ")
}

fn waiting_room(report: &Value, timeline: &[Value]) -> String {
    let w = &report["waiting_ms"];
    let mut out = format!(
        "<p>admitted {} ({} a second, peak {}) · wait p50 {} ms, p90 {} ms, p99 {} ms, max {} ms · \
         fairness: {} of {} pairs admitted out of joining order ({} order) · crowd requests shed {} and \
         unanswered {} (both retried) · commits refused 410 though sent before the deadline: {}</p>",
        report["admitted"],
        report["admitted_per_s"],
        report["admitted_peak_per_s"],
        w["p50"],
        w["p90"],
        w["p99"],
        w["max"],
        report["fairness"]["later_admitted_before_earlier"],
        report["fairness"]["pairs_compared"],
        text(&report["fairness"]["order"]),
        report["crowd_shed"],
        report["crowd_unanswered"],
        report["expired_in_flight"],
    );
    out.push_str(&panels(timeline, None, &WAITING_ROOM));
    out
}

/// A chart of figures from the timeline: its title, what it tells, its unit, its lines (each a name
/// and the field it draws), its scale.
struct Panel {
    title: &'static str,
    tells: &'static str,
    unit: &'static str,
    lines: &'static [(&'static str, &'static str)],
    scale: Scale,
}

/// The panels' charts, their fields read each second from `group` (the top level for None).
fn panels(timeline: &[Value], group: Option<&str>, panels: &[Panel]) -> String {
    let mut out = String::new();
    for panel in panels {
        let lines: Vec<Line> = panel
            .lines
            .iter()
            .map(|&(name, field)| Line {
                name,
                values: column(timeline, |t| match group {
                    Some(group) => &t[group][field],
                    None => &t[field],
                }),
            })
            .collect();
        out.push_str(&plot::timeline(panel.title, panel.tells, panel.unit, &lines, panel.scale));
    }
    out
}

const WAITING_ROOM: [Panel; 3] = [
    Panel {
        title: "Arrivals and admissions per second.",
        tells: "Shoppers arrive in a storm; the room lets them in at its admission rate.",
        unit: "shoppers/s",
        lines: &[("arrivals", "arrivals"), ("admissions", "admissions")],
        scale: Scale::Linear,
    },
    Panel {
        title: "Shoppers waiting, admitted so far, and done so far.",
        tells: "Waiting rises with the storm and drains at the admission rate; done catches up with arrived.",
        unit: "shoppers",
        lines: &[("waiting", "waiting"), ("admitted", "admitted"), ("done", "done")],
        scale: Scale::Linear,
    },
    Panel {
        title: "Crowd requests shed or unanswered (both retried), and commits lost in flight, per second.",
        tells: "Shedding the crowd keeps buyers fast; a commit lost in flight is a failure.",
        unit: "requests/s",
        lines: &[
            ("shed", "shed"),
            ("unanswered", "crowd_unanswered"),
            ("commits lost in flight", "expired_in_flight"),
        ],
        scale: Scale::Linear,
    },
];

/// The server's side, from its `/metrics` (`sample.rs`).
const SERVER: [Panel; 5] = [
    Panel {
        title: "CPU of the server process.",
        tells: "100% is one core busy all second; the server's own figure (process_cpu_seconds_total).",
        unit: "% of one core",
        lines: &[("CPU", "cpu_percent")],
        scale: Scale::Linear,
    },
    Panel {
        title: "Resident memory of the server process.",
        tells: "Memory grows with live holds and connections, and should fall back as they end.",
        unit: "MB",
        lines: &[("resident memory", "rss_mb")],
        scale: Scale::Linear,
    },
    Panel {
        title: "The log's mean sync latency.",
        tells: "How long one group commit took to reach the disk: every acknowledged request waits for one.",
        unit: "ms",
        lines: &[("mean sync", "log_sync_ms_mean")],
        scale: Scale::Linear,
    },
    Panel {
        title: "Log syncs per second and records per sync.",
        tells: "Under load, more records share each sync (group commit), so syncs stay few.",
        unit: "count",
        lines: &[("syncs", "log_syncs"), ("records per sync", "log_batch_records_mean")],
        scale: Scale::Log,
    },
    Panel {
        title: "Live reservations and open connections.",
        tells: "Holds live at once, and the connections the server holds open.",
        unit: "count",
        lines: &[("live reservations", "live_reservations"), ("connections", "connections_open")],
        scale: Scale::Linear,
    },
];
