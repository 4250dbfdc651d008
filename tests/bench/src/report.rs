//! Figures: latency summaries, per-process usage, the machine, and plain-text tables.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    cluster::{Cluster, Role},
    procstat::{self, Sample},
};

/// Percentiles of a µs histogram, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU use of each kind of process over an interval, in % of one core, and their memory at
/// its end.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Usage {
    /// Length of the interval, seconds.
    pub(crate) seconds: f64,
    pub(crate) gateway_cpu_pct: f64,
    pub(crate) fanout_cpu_pct: f64,
    pub(crate) node_cpu_pct: f64,
    pub(crate) redis_cpu_pct: f64,
    pub(crate) loadgen_cpu_pct: f64,
    /// The whole machine, % of all its cores (other processes included).
    pub(crate) machine_busy_pct: f64,
    /// Per process: name, RSS and peak RSS in MiB.
    pub(crate) memory: Vec<ProcMemory>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcMemory {
    pub(crate) name: String,
    pub(crate) rss_mib: f64,
    pub(crate) peak_mib: f64,
}

/// Everything sampled at one instant.
pub(crate) struct Snapshot {
    at: std::time::Instant,
    servers: Vec<(Role, String, Sample)>,
    loadgen: Vec<Sample>,
    machine: (u64, u64),
}

impl Snapshot {
    pub(crate) fn take(cluster: &Cluster, loadgen: Vec<Sample>) -> Self {
        Self {
            at: std::time::Instant::now(),
            servers: cluster.samples(),
            loadgen,
            machine: procstat::machine_jiffies(),
        }
    }

    /// Usage between `self` (earlier) and `later`.
    pub(crate) fn usage(&self, later: &Snapshot) -> Usage {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let pct = |role: Role| {
            let cpu: f64 = later
                .servers
                .iter()
                .zip(&self.servers)
                .filter(|((r, _, _), _)| *r == role)
                .map(|((_, _, b), (_, _, a))| b.cpu_seconds - a.cpu_seconds)
                .sum();
            100.0 * cpu / secs
        };
        let loadgen: f64 = later
            .loadgen
            .iter()
            .zip(&self.loadgen)
            .map(|(b, a)| b.cpu_seconds - a.cpu_seconds)
            .sum();
        let (busy, total) = (
            later.machine.0.saturating_sub(self.machine.0),
            later.machine.1.saturating_sub(self.machine.1),
        );
        Usage {
            seconds: secs,
            gateway_cpu_pct: pct(Role::Gateway),
            fanout_cpu_pct: pct(Role::Fanout),
            node_cpu_pct: pct(Role::Node),
            redis_cpu_pct: pct(Role::Redis),
            loadgen_cpu_pct: 100.0 * loadgen / secs,
            machine_busy_pct: if total == 0 {
                0.0
            } else {
                100.0 * busy as f64 / total as f64
            },
            memory: later
                .servers
                .iter()
                .map(|(_, name, s)| ProcMemory {
                    name: name.clone(),
                    rss_mib: s.rss_kib as f64 / 1024.0,
                    peak_mib: s.peak_kib as f64 / 1024.0,
                })
                .collect(),
        }
    }
}

impl Usage {
    /// CPU time the servers (Redis included, load generator excluded) spent per event, µs.
    pub(crate) fn server_us_per(&self, events: u64) -> f64 {
        let pct =
            self.gateway_cpu_pct + self.fanout_cpu_pct + self.node_cpu_pct + self.redis_cpu_pct;
        pct / 100.0 * self.seconds * 1e6 / events.max(1) as f64
    }

    /// "gw 120% fo 30% redis 40% lg 50%"-style summary.
    pub(crate) fn cpu_summary(&self) -> String {
        let mut parts = Vec::new();
        for (label, v) in [
            ("gw", self.gateway_cpu_pct),
            ("fanout", self.fanout_cpu_pct),
            ("node", self.node_cpu_pct),
            ("redis", self.redis_cpu_pct),
            ("loadgen", self.loadgen_cpu_pct),
        ] {
            if v >= 0.5 {
                parts.push(format!("{label} {v:.0}%"));
            }
        }
        parts.push(format!("machine {:.0}%", self.machine_busy_pct));
        parts.join(", ")
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    pub(crate) loadavg_before: [f64; 3],
    pub(crate) loadavg_after: [f64; 3],
}

impl Machine {
    pub(crate) fn now() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let mem_kib: f64 = field(&meminfo, "MemTotal")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name"),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            loadavg_before: procstat::loadavg(),
            loadavg_after: [0.0; 3],
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GiB, Linux {}; load average before {:.2} {:.2} {:.2}, after {:.2} {:.2} {:.2}",
            self.cpus,
            self.cpu_model,
            self.memory_gib,
            self.kernel,
            self.loadavg_before[0],
            self.loadavg_before[1],
            self.loadavg_before[2],
            self.loadavg_after[0],
            self.loadavg_after[1],
            self.loadavg_after[2],
        )
    }
}

/// A plain-text table with aligned columns.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let cells: Vec<String> = row
                .iter()
                .zip(&width)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// A rate with thousands separators.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands_and_tables() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["123".into(), "4".into()]);
        assert_eq!(t.render(), "|   a | bb |\n|-----|----|\n| 123 |  4 |\n");
    }
}
