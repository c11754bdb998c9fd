//! `holdfast-drill diff A/report.json B/report.json`: the same drill before and after a change, side
//! by side, as a Markdown table with the change of each figure. Settings that differ are listed
//! first: a diff of two different drills says so instead of comparing them silently.

use serde_json::Value;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The report before the change (a drill's report.json).
    before: PathBuf,
    /// The report after the change.
    after: PathBuf,
    /// Also write the table to this file (Markdown).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints the table; Ok(false) when either drill's verification failed.
pub fn diff(args: &DiffArgs) -> anyhow::Result<bool> {
    let read = |path: &PathBuf| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a drill report: {e}", path.display()))
    };
    let (a, b) = (read(&args.before)?, read(&args.after)?);
    anyhow::ensure!(a["routes"].is_object() && b["routes"].is_object(), "not drill reports (no routes)");
    let table = render(&a, &b, &args.before.display().to_string(), &args.after.display().to_string());
    print!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    }
    Ok(passed(&a) && passed(&b))
}

fn passed(report: &Value) -> bool {
    report["verification"]["passed"].as_bool() == Some(true)
}

/// The figures a reader compares first, as (label, JSON pointer, how a change reads).
const FIGURES: &[(&str, &str, Better)] = &[
    ("sale duration (s)", "/sale_secs", Better::Lower),
    ("admitted per second", "/admitted_per_s", Better::Higher),
    ("waiting for admission p50 (ms)", "/waiting_ms/p50", Better::Lower),
    ("waiting for admission p99 (ms)", "/waiting_ms/p99", Better::Lower),
    ("buyers' calls p50 (ms)", "/classes/buyers/p50", Better::Lower),
    ("buyers' calls p99 (ms)", "/classes/buyers/p99", Better::Lower),
    ("crowd's calls p99 (ms)", "/classes/crowd/p99", Better::Lower),
    ("crowd requests shed", "/crowd_shed", Better::Lower),
    ("crowd requests unanswered", "/crowd_unanswered", Better::Lower),
    ("holds expired while committing", "/expired_in_flight", Better::Lower),
    ("polls per second at peak", "/polls_per_s_peak", Better::Neither),
    ("later joiners admitted first (share)", "/fairness/fraction", Better::Lower),
    ("server CPU, mean (% of a core)", "/server/cpu_percent_mean", Better::Lower),
    ("server resident memory, peak (MB)", "/server/rss_mb_peak", Better::Lower),
];

#[derive(Clone, Copy)]
enum Better {
    Lower,
    Higher,
    Neither,
}

fn render(a: &Value, b: &Value, a_name: &str, b_name: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Drill diff\n\nbefore: `{a_name}`  \nafter: `{b_name}`\n");
    let verdict = |r: &Value| if passed(r) { "passed" } else { "FAILED" };
    let _ = writeln!(md, "verification: before {}, after {}\n", verdict(a), verdict(b));
    let settings: Vec<String> = (a["scenario"].as_object().into_iter().flatten())
        .filter(|(k, v)| b["scenario"][k.as_str()] != **v)
        .map(|(k, v)| format!("- `{k}`: {v} → {}", b["scenario"][k.as_str()]))
        .collect();
    if settings.is_empty() {
        let _ = writeln!(md, "Same scenario in both.\n");
    } else {
        let _ = writeln!(md, "**The scenarios differ** (figures below compare different drills):\n");
        let _ = writeln!(md, "{}\n", settings.join("\n"));
    }
    let _ = writeln!(md, "| figure | before | after | change |\n| --- | ---: | ---: | ---: |");
    for (label, pointer, better) in FIGURES {
        row(&mut md, label, a.pointer(pointer), b.pointer(pointer), *better);
    }
    let routes = a["routes"].as_object().into_iter().flatten().map(|(k, _)| k.clone());
    for route in routes {
        for (field, label, better) in [
            ("per_s", "requests per second", Better::Neither),
            ("p50", "p50 (ms)", Better::Lower),
            ("p99", "p99 (ms)", Better::Lower),
            ("p99_9", "p99.9 (ms)", Better::Lower),
        ] {
            let pointer = format!("/routes/{route}/{field}");
            row(&mut md, &format!("{route} {label}"), a.pointer(&pointer), b.pointer(&pointer), better);
        }
    }
    let outcomes: std::collections::BTreeSet<&String> =
        [a, b].iter().flat_map(|r| r["outcomes"].as_object().into_iter().flatten().map(|(k, _)| k)).collect();
    for outcome in outcomes {
        let pointer = format!("/outcomes/{outcome}");
        let zero = Value::from(0);
        let (x, y) = (a.pointer(&pointer).unwrap_or(&zero), b.pointer(&pointer).unwrap_or(&zero));
        row(&mut md, &format!("shoppers who {outcome}"), Some(x), Some(y), Better::Neither);
    }
    md
}

fn row(md: &mut String, label: &str, a: Option<&Value>, b: Option<&Value>, better: Better) {
    let show = |v: Option<&Value>| v.map_or("–".to_owned(), |v| v.to_string());
    let change = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (Some(x), Some(y)) if x == y => "same".to_owned(),
        (Some(x), Some(y)) if x != 0.0 => {
            let pct = (y - x) / x * 100.0;
            let mark = match better {
                Better::Lower if y < x => " (better)",
                Better::Higher if y > x => " (better)",
                Better::Neither => "",
                _ => " (worse)",
            };
            format!("{pct:+.1}%{mark}")
        }
        _ => "–".to_owned(),
    };
    let _ = writeln!(md, "| {label} | {} | {} | {change} |", show(a), show(b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(p99: f64, shed: u64, users: u64, passed: bool) -> Value {
        json!({
            "scenario": {"users": users, "units": 100},
            "sale_secs": 10.0, "admitted_per_s": 100.0, "crowd_shed": shed,
            "classes": {"buyers": {"p50": 1.0, "p99": p99}},
            "routes": {"reserve": {"per_s": 50.0, "p50": 1.0, "p99": p99, "p99_9": p99}},
            "outcomes": {"bought": 90},
            "verification": {"passed": passed},
        })
    }

    #[test]
    fn a_diff_shows_each_change_and_which_way_it_went() {
        let md = render(&report(20.0, 5, 1000, true), &report(10.0, 8, 1000, true), "a", "b");
        assert!(md.contains("| buyers' calls p99 (ms) | 20.0 | 10.0 | -50.0% (better) |"), "{md}");
        assert!(md.contains("| crowd requests shed | 5 | 8 | +60.0% (worse) |"), "{md}");
        assert!(md.contains("| reserve requests per second | 50.0 | 50.0 | same |"), "{md}");
        assert!(md.contains("| shoppers who bought | 90 | 90 | same |"), "{md}");
        assert!(md.contains("Same scenario"), "{md}");
        let md = render(&report(20.0, 5, 1000, true), &report(20.0, 5, 2000, false), "a", "b");
        assert!(md.contains("**The scenarios differ**") && md.contains("`users`: 1000 → 2000"), "{md}");
        assert!(md.contains("before passed, after FAILED"), "{md}");
    }
}
