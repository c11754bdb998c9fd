//! The server process's own figures, under the names Prometheus clients give them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`), read from
//! `/proc/self` when scraped: a drill or a dashboard sees what the server spends, local or not.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((cpu_seconds, resident_bytes)) = own_stat() else { return Ok(()) };
        let cpu = ConstCounter::new(cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the server process, every thread",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(metric)?;
        let rss = ConstGauge::new(resident_bytes as i64);
        let metric = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the server process",
            None,
            rss.metric_type(),
        )?;
        rss.encode(metric)?;
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(dir.count() as i64);
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors of the server process (connections, log segments, snapshots)",
                None,
                fds.metric_type(),
            )?;
            fds.encode(metric)?;
        }
        Ok(())
    }
}

/// (CPU seconds, resident bytes) from `/proc/self/stat`; None where there is no such file.
fn own_stat() -> Option<(f64, u64)> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, field 2, is in parentheses and may hold spaces: count fields after it.
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, rss (pages) 24.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let cpu = (field(14)? + field(15)?) as f64 / ticks;
    Some((cpu, field(24)? * rustix::param::page_size() as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_reads_its_own_cpu_and_memory() {
        let (cpu, rss) = super::own_stat().expect("/proc/self/stat");
        assert!(rss > 1 << 20, "{rss} bytes resident");
        // Spin until the kernel's tick counts this thread's work (a few ms), for at most 10 s.
        let start = std::time::Instant::now();
        let mut later = cpu;
        while later <= cpu && start.elapsed() < std::time::Duration::from_secs(10) {
            std::hint::black_box((0..10_000u64).sum::<u64>());
            later = super::own_stat().expect("/proc/self/stat").0;
        }
        assert!(later > cpu, "CPU time stayed at {cpu} s through 10 s of spinning");
    }
}
