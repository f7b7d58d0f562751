//! This process's (or another's) CPU time and resident memory, from Linux `/proc`.

/// User + system CPU seconds of this process (Linux `/proc/self/stat`).
pub(super) fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the full line (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/{pid}/status`, 0 when unreadable.
pub(super) fn status_kib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// This process's peak resident memory since the last [`reset_peak_rss`], MiB.
pub(super) fn peak_rss_mib() -> f64 {
    status_kib("self", "VmHWM:") / 1024.0
}

/// Resets the kernel's peak-RSS mark so each level reports its own peak.
pub(super) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
