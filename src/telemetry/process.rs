//! Process metrics in the Prometheus client libraries' standard names (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...), read from `/proc/self` at each scrape,
//! so the dashboards and alerts written for any exporter's process work here too. Linux only;
//! elsewhere nothing is exported.

use std::fmt::Write as _;

/// Kernel ticks per second of `/proc/<pid>/stat`'s CPU times: USER_HZ, which the Linux ABI fixes
/// at 100 on every architecture the worker ships for (x86_64, aarch64).
const USER_HZ: f64 = 100.0;

/// What one scrape read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// OS threads.
    pub threads: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Reads this process's stats (`None` where `/proc` is not available).
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15, starttime 22.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = (field(14)? + field(15)?) as f64 / USER_HZ;
    let kb = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<u64>().ok())
    };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok())));
    let start_time_seconds = match (boot, field(22)) {
        (Some(b), Some(ticks)) => Some(b as f64 + ticks as f64 / USER_HZ),
        _ => None,
    };
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse().ok())
    });
    Some(ProcessStats {
        cpu_seconds,
        resident_bytes: kb("VmRSS:").unwrap_or(0) * 1024,
        virtual_bytes: kb("VmSize:").unwrap_or(0) * 1024,
        open_fds: std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0),
        max_fds,
        threads: kb("Threads:").unwrap_or(0),
        start_time_seconds,
    })
}

/// The stats as Prometheus text, each series with the `stage` label.
pub fn render(stage: &str) -> String {
    let Some(p) = read() else { return String::new() };
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{stage=\"{stage}\"}} {value}\n");
    };
    series("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", format!("{:.2}", p.cpu_seconds));
    series("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", p.resident_bytes.to_string());
    series("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", p.virtual_bytes.to_string());
    series("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds.to_string());
    if let Some(m) = p.max_fds {
        series("process_max_fds", "gauge", "Maximum number of open file descriptors.", m.to_string());
    }
    series("process_threads", "gauge", "Number of OS threads in the process.", p.threads.to_string());
    if let Some(t) = p.start_time_seconds {
        series("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", format!("{t:.2}"));
    }
    out
}
