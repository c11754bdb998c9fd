//! CPU accounting for a comparison run, from `/proc`: what a server's processes (and this load
//! generator) spent per operation, and what share of the machine the hypervisor took away meanwhile.
//! On a shared machine, throughput moves from one hour to the next; CPU per operation and the stolen
//! share say whether a difference is the system's or the machine's.

/// CPU seconds so far of process `pid` with its live children and the children it has reaped (Postgres
/// runs a process per connection, reaped when the connection closes). None if `pid` is gone.
pub fn process_tree_seconds(pid: u32) -> Option<f64> {
    // A child reaped between reading it (or listing it) and reading the parent would be counted twice
    // or not at all; reaping changes the parent's children's time, so read until it held still.
    let mut ticks = 0;
    for _ in 0..10 {
        let first = stat(pid)?;
        let live: u64 = children(pid).into_iter().filter_map(stat).map(|c| c.utime + c.stime).sum();
        let last = stat(pid)?;
        ticks = last.utime + last.stime + last.cutime + last.cstime + live;
        if (first.cutime, first.cstime) == (last.cutime, last.cstime) {
            break;
        }
    }
    Some(ticks as f64 / ticks_per_second())
}

/// This process's CPU seconds so far (every thread).
pub fn own_seconds() -> f64 {
    stat(std::process::id()).map_or(0.0, |s| (s.utime + s.stime) as f64 / ticks_per_second())
}

/// The machine's CPU time so far: (stolen by the hypervisor, all), in ticks, from `/proc/stat`.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    (fields.get(7).copied().unwrap_or(0), fields.iter().sum())
}

/// The share of the machine's CPU time between two `machine_ticks` readings that was stolen.
pub fn stolen_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / all as f64
}

fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; the fields after it start at field 3.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: field(4)? as u32,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_is_counted_while_it_runs_and_after_it_is_reaped() {
        let me = std::process::id();
        let children_of_me = || process_tree_seconds(me).expect("this process exists") - own_seconds();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .expect("sh runs");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let child_so_far = process_tree_seconds(child.id()).expect("the child is running or a zombie");
        assert!(child_so_far >= 0.1, "the busy child has used CPU: {child_so_far} s");
        // One tick of slack: this process's own time is read again after the tree's.
        let slack = 1.0 / ticks_per_second();
        let live = children_of_me();
        assert!(live >= child_so_far - slack, "a live child counts: {live} s of {child_so_far} s");
        child.wait().expect("the child exits");
        let reaped = children_of_me();
        assert!(reaped >= child_so_far - slack, "a reaped child counts: {reaped} s of {child_so_far} s");
    }

    #[test]
    fn stolen_share_is_a_share() {
        assert_eq!(stolen_share((10, 1000), (20, 1100)), 0.1);
        assert_eq!(stolen_share((10, 1000), (10, 1000)), 0.0);
        let (steal, all) = machine_ticks();
        assert!(all > 0 && steal <= all);
    }
}
