//! The server's side of a drill, once a second on a connection of its own: the SKU's units
//! (available, reserved, sold) and the server's own figures from `/metrics` (live reservations, log
//! syncs and their mean latency and batch size, open connections, requests shed, and the server
//! process's CPU share and resident memory).

use crate::client::Client;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Counters from the previous sample, so that each second shows what happened in it.
#[derive(Default)]
pub struct Sampler {
    previous: HashMap<&'static str, f64>,
    /// When the previous sample was read: CPU time over wall time is the server's CPU share.
    previous_at: Option<std::time::Instant>,
}

const COUNTERS: [&str; 6] = [
    "process_cpu_seconds_total",
    "holdfast_wal_sync_seconds_sum",
    "holdfast_wal_sync_seconds_count",
    "holdfast_wal_batch_records_sum",
    "holdfast_wal_batch_records_count",
    "holdfast_requests_shed_total",
];
const GAUGES: [&str; 3] =
    ["holdfast_live_reservations", "holdfast_connections_open", "process_resident_memory_bytes"];

impl Sampler {
    /// `{"available", "reserved", "sold"}` of the SKU, and the server's figures for the last second;
    /// `Null` for what did not answer.
    pub async fn sample(&mut self, client: &Client, sku: &str) -> (Value, Value) {
        let stock = match client.get(format!("/v1/skus/{sku}")).await {
            Ok(r) if r.status == 200 => {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                json!({"available": v["available"], "reserved": v["reserved"], "sold": v["sold"]})
            }
            _ => Value::Null,
        };
        let server = match client.get("/metrics".to_owned()).await {
            Ok(r) if r.status == 200 => {
                let now = std::time::Instant::now();
                let elapsed = self.previous_at.map_or(0.0, |at| now.duration_since(at).as_secs_f64());
                self.previous_at = Some(now);
                self.figures(&String::from_utf8_lossy(&r.body), elapsed)
            }
            _ => Value::Null,
        };
        (stock, server)
    }

    /// The figures of a scrape `elapsed` seconds after the previous one.
    fn figures(&mut self, text: &str, elapsed: f64) -> Value {
        let now = totals(text);
        let delta = |name: &str, previous: &HashMap<&'static str, f64>| {
            now.get(name).copied().unwrap_or(0.0) - previous.get(name).copied().unwrap_or(0.0)
        };
        let syncs = delta("holdfast_wal_sync_seconds_count", &self.previous);
        let batches = delta("holdfast_wal_batch_records_count", &self.previous);
        // A mean of nothing is no figure (null, drawn as a gap), not zero.
        let mean = |sum: f64, n: f64| (n > 0.0).then(|| sum / n);
        let cpu = delta("process_cpu_seconds_total", &self.previous);
        // Only what the server exports, over long enough to be read (the kernel counts CPU in 10 ms
        // ticks), and not across a restart (a counter that went back).
        let cpu_known = now.contains_key("process_cpu_seconds_total") && elapsed >= 0.5 && cpu >= 0.0;
        let figures = json!({
            "live_reservations": now.get("holdfast_live_reservations"),
            "connections_open": now.get("holdfast_connections_open"),
            "log_syncs": syncs,
            "log_sync_ms_mean": mean(delta("holdfast_wal_sync_seconds_sum", &self.previous), syncs).map(|m| (m * 1e6).round() / 1e3),
            "log_batch_records_mean": mean(delta("holdfast_wal_batch_records_sum", &self.previous), batches).map(|m| (m * 10.0).round() / 10.0),
            "requests_shed": delta("holdfast_requests_shed_total", &self.previous),
            // 100 is one core busy all second.
            "cpu_percent": mean(cpu, elapsed).filter(|_| cpu_known).map(|c| (c * 1000.0).round() / 10.0),
            "rss_mb": now.get("process_resident_memory_bytes").map(|b| (b / 1e5).round() / 10.0),
        });
        let mut figures = figures;
        if self.previous.is_empty() {
            // The first sample's counters hold the server's whole life, not a second of the drill.
            for field in
                ["log_syncs", "log_sync_ms_mean", "log_batch_records_mean", "requests_shed", "cpu_percent"]
            {
                figures[field] = Value::Null;
            }
        }
        self.previous = COUNTERS.iter().map(|name| (*name, now.get(*name).copied().unwrap_or(0.0))).collect();
        figures
    }
}

/// Each metric of interest summed over its labels.
fn totals(text: &str) -> HashMap<&'static str, f64> {
    let mut totals = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let (Some(known), Ok(v)) =
            (COUNTERS.iter().chain(&GAUGES).find(|n| **n == name), value.parse::<f64>())
        {
            *totals.entry(*known).or_insert(0.0) += v;
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_shows_what_happened_in_it() {
        let mut s = Sampler::default();
        let first = "holdfast_wal_sync_seconds_sum 0.5\nholdfast_wal_sync_seconds_count 100\n\
                     holdfast_wal_batch_records_sum 400\nholdfast_wal_batch_records_count 100\n\
                     holdfast_requests_shed_total{route=\"join\"} 3\nholdfast_requests_shed_total{route=\"poll\"} 4\n\
                     # HELP holdfast_live_reservations x\nholdfast_live_reservations 7\n\
                     process_cpu_seconds_total 10.0\nprocess_resident_memory_bytes 52428800\n";
        let f = s.figures(first, 0.0);
        assert_eq!(
            (f["log_syncs"].clone(), f["live_reservations"].as_f64()),
            (Value::Null, Some(7.0)),
            "{f}"
        );
        let second = "holdfast_wal_sync_seconds_sum 0.8\nholdfast_wal_sync_seconds_count 200\n\
                      holdfast_wal_batch_records_sum 1400\nholdfast_wal_batch_records_count 200\n\
                      holdfast_requests_shed_total{route=\"join\"} 5\nholdfast_requests_shed_total{route=\"poll\"} 4\n\
                      process_cpu_seconds_total 10.75\nprocess_resident_memory_bytes 62914560\n";
        let f = s.figures(second, 0.5);
        assert_eq!((f["log_syncs"].as_f64(), f["log_sync_ms_mean"].as_f64()), (Some(100.0), Some(3.0)));
        assert_eq!(
            (f["log_batch_records_mean"].as_f64(), f["requests_shed"].as_f64()),
            (Some(10.0), Some(2.0))
        );
        assert_eq!((f["cpu_percent"].as_f64(), f["rss_mb"].as_f64()), (Some(150.0), Some(62.9)), "{f}");
        // No syncs: no mean latency (a gap, not 0 ms); no CPU metric, or a restart: no CPU figure.
        let third = "holdfast_wal_sync_seconds_sum 0.8\nholdfast_wal_sync_seconds_count 200\n";
        let f = s.figures(third, 1.0);
        assert_eq!(
            (f["log_sync_ms_mean"].clone(), f["cpu_percent"].clone()),
            (Value::Null, Value::Null),
            "{f}"
        );
        assert_eq!(s.figures("process_cpu_seconds_total 20.0\n", 1.0)["cpu_percent"].as_f64(), Some(2000.0));
        let f = s.figures("process_cpu_seconds_total 1.0\n", 1.0);
        assert_eq!(f["cpu_percent"], Value::Null, "a counter that went back: {f}");
        let f = s.figures("process_cpu_seconds_total 1.5\n", 0.01);
        assert_eq!(f["cpu_percent"], Value::Null, "too short to read: {f}");
    }
}
