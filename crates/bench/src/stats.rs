//! Latency recording and process accounting.

use std::time::Duration;

/// Every sample kept (microseconds): runs are bounded, so exact quantiles are cheap.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    samples: Vec<u32>,
    sorted: bool,
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        self.samples
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        self.sorted = false;
    }

    pub fn merge(&mut self, other: Histogram) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank quantile in milliseconds (0 when empty).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let n = self.samples.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        f64::from(self.samples[rank - 1]) / 1000.0
    }
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`).
pub fn process_cpu_seconds() -> f64 {
    proc_cpu_seconds("self").unwrap_or(0.0)
}

/// User + system CPU seconds of a process (`pid` or `self`), assuming USER_HZ = 100.
pub fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    proc_cpu_split(pid).map(|(u, s)| u + s)
}

/// (user, system) CPU seconds of a process (`pid` or `self`) from `/proc/<pid>/stat`,
/// assuming USER_HZ = 100.
pub fn proc_cpu_split(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// utime and stime (fields 14 and 15, counted after the parenthesised command name,
/// which may itself contain spaces and parentheses) of a `/proc/<pid>/stat` line.
fn parse_stat_cpu(stat: &str) -> Option<(f64, f64)> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

/// The machine's 1-minute load average (0 if unknown).
pub fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// `VmHWM` (peak resident set since the process started) of a process in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&status, field)
}

/// A `<field> <n> kB` value of a `/proc/<pid>/status` text.
fn field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU seconds per 1,000 completed operations (0 when nothing completed): the cost of
/// a decision, which stays meaningful when servers and load generator share cores and
/// ops/s does not.
pub fn cpu_s_per_kop(cpu_s: f64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        cpu_s * 1000.0 / ops as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for i in 1..=100u64 {
            h.record(Duration::from_micros(i * 1000));
        }
        assert_eq!(h.quantile_ms(0.5), 50.0);
        assert_eq!(h.quantile_ms(0.99), 99.0);
        assert_eq!(h.quantile_ms(1.0), 100.0);
        assert!(process_cpu_seconds() >= 0.0);
    }

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu(line), Some((2.5, 0.75)));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let (u, s) = proc_cpu_split("self").unwrap();
        assert!(u >= 0.0 && s >= 0.0);
    }

    #[test]
    fn cpu_per_kop_and_peak_rss() {
        assert_eq!(cpu_s_per_kop(2.0, 4000), 0.5);
        assert_eq!(cpu_s_per_kop(1.0, 0), 0.0);
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0 && peak_rss_kib(me).unwrap() > 0);
        // Compared within one read: two reads of /proc may see the RSS fall in between
        // with the high-water mark not yet raised to the first (seen in CI: 3280 vs
        // 3276 KiB).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let (rss, peak) = (
            field_kib(&status, "VmRSS:").unwrap(),
            field_kib(&status, "VmHWM:").unwrap(),
        );
        assert!(rss > 0 && peak >= rss, "rss {rss} KiB, peak {peak} KiB");
    }
}
