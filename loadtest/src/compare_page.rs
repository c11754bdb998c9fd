//! `compare.html`: the comparison as one self-contained page — throughput, CPU per operation and
//! latency per system and workload as bar charts, the ratios, the paced run, the date and the machine.

use crate::plot::{self, escape, text, Bar, STYLE};
use serde_json::Value;
use std::fmt::Write;

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
    page.push_str("<h2>What ran</h2>");
    for (kind, list, what) in [("system", "systems", "what it is"), ("workload", "workloads", "what it does")]
    {
        let _ = write!(page, "<table><tr><th>{kind}</th><th>{what}</th></tr>");
        for item in r[list].as_array().into_iter().flatten().filter(|item| ran(kind, &item["name"])) {
            let _ = write!(
                page,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                text(&item["name"]),
                text(&item["what"])
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<h2>Throughput and cost</h2>");
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
    let latency: Vec<Bar> = results.iter().flat_map(|row| percentile_bars(row, &label(row))).collect();
    page.push_str(&plot::bars(
        "Latency percentiles, closed loop.",
        "Less is better. In a closed loop latency is the other face of throughput; the paced run below is \
         the fairer view of latency.",
        "ms",
        &latency,
        &PERCENTILES.map(|(name, _)| name),
    ));
    page.push_str(&table(&results, true));
    if let Some(first) = paced.first() {
        let _ = write!(
            page,
            "<h2>Paced at half of holdfast's hot-SKU maximum ({}/s)</h2><p>Open loop: latency from each \
             request's scheduled time, each system that sustains that rate.</p>",
            first["rate"]
        );
        let bars: Vec<Bar> =
            paced.iter().flat_map(|row| percentile_bars(row, &text(&row["system"]))).collect();
        page.push_str(&plot::bars(
            "Latency at the same offered rate.",
            "Less is better.",
            "ms",
            &bars,
            &PERCENTILES.map(|(name, _)| name),
        ));
        page.push_str(&table(&paced, false));
    }
    page.push_str("</body></html>\n");
    page
}

/// The latency percentiles drawn, each with its field in a run's row; each its own colour.
const PERCENTILES: [(&str, &str); 3] = [("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p99_9_ms")];

/// A run's latency at each of `PERCENTILES`, as bars labelled `label`.
fn percentile_bars(row: &Value, label: &str) -> [Bar; 3] {
    std::array::from_fn(|k| {
        let (name, field) = PERCENTILES[k];
        Bar { label: format!("{label} {name}"), value: row[field].as_f64().unwrap_or(f64::NAN), group: k }
    })
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
