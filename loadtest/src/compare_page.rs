//! `compare.html`: the comparison as one self-contained page — throughput, CPU per operation and
//! latency per system and workload as bar charts, the ratios, the paced run, the date and the machine.

use crate::plot::{self, escape, Bar};
use serde_json::Value;
use std::fmt::Write;

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:900px;color:#222;padding:0 1em}\
h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:3px 9px;text-align:right}th{background:#f6f6f6}td.l{text-align:left}\
figure{margin:1.2em 0}.bad{color:#b00}";

pub fn html(r: &Value) -> String {
    let systems: Vec<&str> =
        r["systems"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    let results = r["results"].as_array().cloned().unwrap_or_default();
    // A run's label, marked when it had errors: its figures are not those of a clean run.
    let label = |row: &Value| {
        let errors = row["errors"].as_u64().unwrap_or(0);
        let mark = if errors > 0 { format!(" ({errors} errors)") } else { String::new() };
        format!("{} · {}{mark}", text(&row["workload"]), text(&row["system"]))
    };
    let paced = r["paced_at_half_holdfast_max"].as_array().cloned().unwrap_or_default();
    let mut page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>holdfast compared</title>\
         <style>{STYLE}</style></head><body><h1>holdfast and the designs it replaces</h1>\
         <p>{} · {} · {} connections, {} s per run after 1 s of warm-up, the load generator on the same machine, \
         closed loop (each connection sends its next request when the last is answered).</p>",
        escape(r["date"].as_str().unwrap_or("")),
        escape(r["machine"].as_str().unwrap_or("")),
        r["connections"],
        r["seconds"]
    );
    // What ran: the systems and workloads with a result (a run may pick some).
    let ran = |kind: &str, name: &Value| results.iter().chain(&paced).any(|row| row[kind] == *name);
    page.push_str("<h2>What ran</h2><table><tr><th>system</th><th>what it is</th></tr>");
    for s in r["systems"].as_array().into_iter().flatten().filter(|s| ran("system", &s["name"])) {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            text(&s["name"]),
            text(&s["what"])
        );
    }
    page.push_str("</table><table><tr><th>workload</th><th>what it does</th></tr>");
    for w in r["workloads"].as_array().into_iter().flatten().filter(|w| ran("workload", &w["name"])) {
        let _ = write!(
            page,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            text(&w["name"]),
            text(&w["what"])
        );
    }
    page.push_str("</table><h2>Throughput and cost</h2>");
    let group = |row: &Value| systems.iter().position(|s| row["system"] == *s).unwrap_or(0);
    let rows = |field: &str| -> Vec<Bar> {
        results
            .iter()
            .map(|row| Bar {
                label: label(row),
                value: row[field].as_f64().unwrap_or(f64::NAN),
                group: group(row),
            })
            .collect()
    };
    page.push_str(&plot::bars(
        "Operations per second.",
        "More is better: each workload's systems together, coloured by system.",
        "operations/s",
        &rows("ops_per_s"),
        &systems,
    ));
    page.push_str(&plot::bars(
        "Server CPU per operation.",
        "Less is better: CPU time of the system's server processes over the run ÷ operations. On a shared \
         machine this moves less than throughput does.",
        "µs of CPU per operation",
        &rows("server_cpu_us_per_op"),
        &systems,
    ));
    let ratios: Vec<Bar> = results
        .iter()
        .filter(|row| row["system"] != "holdfast")
        .filter_map(|row| {
            let holdfast = results
                .iter()
                .find(|x| x["workload"] == row["workload"] && x["system"] == "holdfast")?["ops_per_s"]
                .as_f64()?;
            let other = row["ops_per_s"].as_f64().filter(|v| *v > 0.0)?;
            Some(Bar {
                label: format!("{} · vs {}", text(&row["workload"]), text(&row["system"])),
                value: holdfast / other,
                group: group(row),
            })
        })
        .collect();
    if !ratios.is_empty() {
        page.push_str(&plot::bars(
            "holdfast's throughput ÷ each system's, per workload.",
            "Above 1, holdfast served more operations a second than that system in the same run.",
            "ratio (×)",
            &ratios,
            &systems,
        ));
    }
    page.push_str("<h2>Latency</h2>");
    let latency: Vec<Bar> = results
        .iter()
        .flat_map(|row| {
            let label = label(row);
            [("p50", "p50_ms", 0), ("p99", "p99_ms", 1), ("p99.9", "p99_9_ms", 2)].map(|(q, field, group)| {
                Bar { label: format!("{label} {q}"), value: row[field].as_f64().unwrap_or(f64::NAN), group }
            })
        })
        .collect();
    page.push_str(&plot::bars(
        "Latency percentiles, closed loop.",
        "Less is better. In a closed loop latency is the other face of throughput; the paced run below is \
         the fairer view of latency.",
        "ms",
        &latency,
        &["p50", "p99", "p99.9"],
    ));
    page.push_str(&table(&results, true));
    if let Some(first) = paced.first() {
        let _ = write!(
            page,
            "<h2>Paced at half of holdfast's hot-SKU maximum ({}/s)</h2><p>Open loop: latency from each \
             request's scheduled time, each system that sustains that rate.</p>",
            first["rate"]
        );
        let bars: Vec<Bar> = paced
            .iter()
            .flat_map(|row| {
                [("p50", "p50_ms", 0), ("p99", "p99_ms", 1), ("p99.9", "p99_9_ms", 2)].map(
                    |(q, field, group)| Bar {
                        label: format!("{} {q}", text(&row["system"])),
                        value: row[field].as_f64().unwrap_or(f64::NAN),
                        group,
                    },
                )
            })
            .collect();
        page.push_str(&plot::bars(
            "Latency at the same offered rate.",
            "Less is better.",
            "ms",
            &bars,
            &["p50", "p99", "p99.9"],
        ));
        page.push_str(&table(&paced, false));
    }
    page.push_str("</body></html>\n");
    page
}

fn text(v: &Value) -> String {
    escape(&v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// Every figure of every run, as `compare.md` has them.
fn table(rows: &[Value], with_workload: bool) -> String {
    let mut out = String::from("<table><tr>");
    if with_workload {
        out.push_str("<th>workload</th>");
    }
    out.push_str(
        "<th>system</th><th>ops/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>server CPU/op µs</th>\
         <th>client CPU/op µs</th><th>stolen %</th><th>errors</th></tr>",
    );
    for row in rows {
        out.push_str("<tr>");
        if with_workload {
            let _ = write!(out, "<td class=\"l\">{}</td>", text(&row["workload"]));
        }
        let _ = write!(out, "<td class=\"l\">{}</td>", text(&row["system"]));
        for field in [
            "ops_per_s",
            "p50_ms",
            "p99_ms",
            "p99_9_ms",
            "server_cpu_us_per_op",
            "client_cpu_us_per_op",
            "stolen_percent",
            "errors",
        ] {
            let _ = write!(out, "<td>{}</td>", text(&row[field]));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}
