//! The comparison end to end, briefly: every system and workload runs without an error, and the
//! table, JSON and page are written. (Its figures come from longer runs; this proves the command works.)

use std::process::Command;

#[test]
fn compare_runs_every_system_and_workload_without_errors() {
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("scratch dir");
    let status = Command::new(env!("CARGO_BIN_EXE_holdfast-drill"))
        .args(["compare", "--seconds", "1", "--connections", "4", "--out"])
        .arg(out.path())
        .status()
        .expect("run holdfast-drill compare");
    assert!(status.success(), "compare failed (it needs redis-server and PostgreSQL's server binaries)");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("compare.json")).expect("JSON"))
            .expect("valid");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 20, "5 systems × 4 workloads");
    for r in results {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        let refused_all = r["workload"] == "sold-out";
        assert!(refused_all || r["reserved"].as_u64().unwrap_or(0) > 0, "{r}");
        // Every system's server processes were found and their CPU read (Postgres: a process per connection).
        assert!(r["server_cpu_us_per_op"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(r["client_cpu_us_per_op"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    let paced = report["paced_at_half_holdfast_max"].as_array().expect("paced runs");
    assert!(paced.iter().any(|p| p["system"] == "holdfast" && p["errors"] == 0), "{paced:?}");
    let table = std::fs::read_to_string(out.path().join("compare.md")).expect("markdown");
    assert!(table.contains("| hot | redis-aof |") && table.contains("Paced at half of holdfast"), "{table}");
    // The page: a chart each of throughput, CPU per operation, the ratios, latency and paced latency,
    // every one drawn (ops/render-reports.sh checks them in a browser).
    let page = std::fs::read_to_string(out.path().join("compare.html")).expect("compare.html");
    assert_eq!(page.matches("<figure class=\"chart\">").count(), 5, "{page}");
    assert_eq!(page.matches("<svg").count(), 5, "{page}");
    assert!(!page.contains("not drawn") && page.contains(report["date"].as_str().expect("a date")));
}
