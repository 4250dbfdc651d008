//! CPU time and memory of a process, from `/proc`.

/// One look at a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sample {
    /// User + system CPU seconds so far.
    pub(crate) cpu_seconds: f64,
    /// Resident set size now, KiB (`VmRSS`).
    pub(crate) rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub(crate) peak_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; zeros for a process that is gone.
pub(crate) fn sample(pid: u32) -> Sample {
    let mut out = Sample {
        cpu_seconds: roomcast_tests::bench_fanout::cpu_seconds(pid),
        ..Sample::default()
    };
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kib = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                out.rss_kib = kib(line);
            } else if line.starts_with("VmHWM:") {
                out.peak_kib = kib(line);
            }
        }
    }
    out
}

/// The machine's load averages (1, 5, 15 minutes).
pub(crate) fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = [0.0; 3];
    for (slot, v) in out.iter_mut().zip(text.split_whitespace()) {
        *slot = v.parse().unwrap_or(0.0);
    }
    out
}

/// Busy and total jiffies of the whole machine (`/proc/stat` line `cpu`).
pub(crate) fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id());
        assert!(s.rss_kib > 0 && s.peak_kib >= s.rss_kib);
        assert_eq!(sample(u32::MAX), Sample::default());
    }
}
