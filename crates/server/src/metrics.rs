//! A tiny Prometheus registry: labelled counters, gauges and histograms rendered in the
//! text exposition format.
//!
//! Why not the `prometheus` crate: we need a dozen series, and a `Mutex<BTreeMap>` keyed
//! by (name, labels) is enough, costs no extra build time, and renders in a stable
//! order. Updates take a short uncontended lock; nothing on the request path holds it
//! across an await.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Histogram bucket upper bounds in seconds (request and apply latencies).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

type SeriesKey = (&'static str, String);

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
    counters: BTreeMap<SeriesKey, u64>,
    gauges: BTreeMap<SeriesKey, f64>,
    histograms: BTreeMap<SeriesKey, Histogram>,
}

/// Process-wide metrics registry (one per node).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn label_string(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent (every
        // update is a single insert), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add `by` to a counter.
    pub fn inc_by(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], by: u64) {
        let mut g = self.lock();
        g.help.entry(name).or_insert(("counter", help));
        *g.counters.entry((name, label_string(labels))).or_insert(0) += by;
    }

    /// Add one to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.inc_by(name, help, labels, 1);
    }

    /// Set a gauge.
    pub fn set_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let mut g = self.lock();
        g.help.entry(name).or_insert(("gauge", help));
        g.gauges.insert((name, label_string(labels)), v);
    }

    /// Record one observation (seconds) in a histogram.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        secs: f64,
    ) {
        let mut g = self.lock();
        g.help.entry(name).or_insert(("histogram", help));
        let h = g
            .histograms
            .entry((name, label_string(labels)))
            .or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Current value of a counter (tests and the CLI use it).
    pub fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> u64 {
        let g = self.lock();
        g.counters
            .get(&(name, label_string(labels)))
            .copied()
            .unwrap_or(0)
    }

    /// Render everything in Prometheus text format.
    pub fn render(&self) -> String {
        let g = self.lock();
        let mut out = String::new();
        for (name, (kind, help)) in &g.help {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for ((n, labels), v) in g.counters.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                let _ = writeln!(out, "{}", series(name, labels, "", &v.to_string()));
            }
            for ((n, labels), v) in g.gauges.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                let _ = writeln!(out, "{}", series(name, labels, "", &v.to_string()));
            }
            for ((n, labels), h) in g.histograms.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                for (i, b) in BUCKETS.iter().enumerate() {
                    let le = format!("le=\"{b}\"");
                    let l = if labels.is_empty() {
                        le
                    } else {
                        format!("{labels},{le}")
                    };
                    let _ = writeln!(out, "{name}_bucket{{{l}}} {}", h.counts[i]);
                }
                let l = if labels.is_empty() {
                    "le=\"+Inf\"".to_string()
                } else {
                    format!("{labels},le=\"+Inf\"")
                };
                let _ = writeln!(out, "{name}_bucket{{{l}}} {}", h.count);
                let _ = writeln!(out, "{}", series(name, labels, "_sum", &h.sum.to_string()));
                let _ = writeln!(
                    out,
                    "{}",
                    series(name, labels, "_count", &h.count.to_string())
                );
            }
        }
        out
    }
}

fn series(name: &str, labels: &str, suffix: &str, value: &str) -> String {
    if labels.is_empty() {
        format!("{name}{suffix} {value}")
    } else {
        format!("{name}{suffix}{{{labels}}} {value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new();
        m.inc(
            "quorate_requests_total",
            "Requests.",
            &[("route", "/v1/x"), ("status", "200")],
        );
        m.inc(
            "quorate_requests_total",
            "Requests.",
            &[("route", "/v1/x"), ("status", "200")],
        );
        m.set_gauge("quorate_raft_term", "Term.", &[], 3.0);
        m.observe("quorate_apply_seconds", "Apply.", &[], 0.003);
        let text = m.render();
        assert!(
            text.contains("quorate_requests_total{route=\"/v1/x\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("quorate_raft_term 3"), "{text}");
        assert!(
            text.contains("quorate_apply_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("quorate_apply_seconds_bucket{le=\"0.002\"} 0"),
            "{text}"
        );
        assert!(text.contains("quorate_apply_seconds_count 1"), "{text}");
        assert_eq!(
            m.counter(
                "quorate_requests_total",
                &[("route", "/v1/x"), ("status", "200")]
            ),
            2
        );
    }
}
