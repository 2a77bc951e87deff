//! The node's recent activity, kept in memory for the status page (`GET /v1/stats`).
//!
//! Contract: a background task ([`Stats::run`]) reads the node's own counters from
//! the metrics registry every interval and keeps the differences as a bounded ring of
//! [`StatsSample`]s (oldest dropped first), so the page can draw grants, denials,
//! 503s and latency over the last minutes. Nothing here is replicated or persisted:
//! each node reports what *it* answered since it started, and a restart begins empty.
//!
//! Cost: the sampler reads a few dozen counters per interval, off the request path,
//! and creates no metric series (the accessors only read). The one thing recorded on
//! the request path is the busiest rate keys: each rate check offers its results to
//! a small table ([`TopKeys`], at most [`TOP_KEYS_TRACKED`] keys) under a `try_lock`,
//! so a check never waits for the table; when two checks race, one of them is simply
//! not counted (the table is a view of what is busy, not an account). Counts halve
//! every [`TOP_KEYS_HALF_LIFE`], so the table forgets keys that went quiet.
//!
//! A poll of the page therefore costs a copy of at most `capacity` samples and a sort
//! of at most [`TOP_KEYS_TRACKED`] keys, whatever the size of the replicated state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quorate_core::RateResult;
use quorate_proto::routes::{RouteId, ROUTES};
use quorate_proto::{RateKeyStats, ShadowCount, StatsResponse, StatsSample};

use crate::telemetry::Metrics;

/// Most rate keys the busiest-keys table tracks.
pub const TOP_KEYS_TRACKED: usize = 64;
/// How often the busiest-keys counts halve.
pub const TOP_KEYS_HALF_LIFE: Duration = Duration::from_secs(60);
/// Most rate keys `/v1/stats` lists.
const TOP_KEYS_SHOWN: usize = 10;

/// Routes whose latency the charts show: the decisions callers wait for.
const DECISION_ROUTES: [RouteId; 4] = [
    RouteId::Acquire,
    RouteId::Release,
    RouteId::Renew,
    RouteId::RateCheck,
];

/// Counter totals at one instant; a sample is the difference of two.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    granted: u64,
    denied: u64,
    unavailable: u64,
    requests: u64,
    decision_requests: u64,
    decision_secs: f64,
}

impl Totals {
    fn read(m: &Metrics) -> Totals {
        let granted = m.decision_count("acquire", "granted")
            + m.decision_count("acquire", "reused")
            + m.decision_count("rate", "allowed");
        let denied = m.decision_count("acquire", "denied") + m.decision_count("rate", "limited");
        let mut t = Totals {
            granted,
            denied,
            ..Totals::default()
        };
        // `/readyz` answers 503 by design while a node is not ready; that is a
        // readiness answer, not a caller turned away.
        for r in ROUTES.iter().filter(|r| r.id != RouteId::Readyz) {
            t.unavailable += m.http_status_count(r.path, r.method.as_str(), 503);
        }
        // Latency is kept per path (a path may have several methods); "unmatched"
        // requests count as requests too.
        for (route, n, secs) in m.http_route_totals() {
            t.requests += n;
            let decision = DECISION_ROUTES.iter().any(|id| id.route().path == route);
            if decision {
                t.decision_requests += n;
                t.decision_secs += secs;
            }
        }
        t
    }

    /// What happened between `earlier` and `self` (counters only grow; saturating
    /// all the same, so a surprise cannot panic).
    fn since(&self, earlier: &Totals, at_ms: u64) -> StatsSample {
        let n = self
            .decision_requests
            .saturating_sub(earlier.decision_requests);
        let secs = (self.decision_secs - earlier.decision_secs).max(0.0);
        let mean_latency_us = if n == 0 {
            0
        } else {
            (secs * 1e6 / n as f64).round() as u64
        };
        StatsSample {
            at_ms,
            granted: self.granted.saturating_sub(earlier.granted),
            denied: self.denied.saturating_sub(earlier.denied),
            unavailable: self.unavailable.saturating_sub(earlier.unavailable),
            requests: self.requests.saturating_sub(earlier.requests),
            mean_latency_us,
        }
    }
}

/// Recently checked rate keys with decaying counts (see the module docs).
#[derive(Debug)]
pub struct TopKeys {
    keys: HashMap<String, KeyCount>,
    last_decay: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct KeyCount {
    checks: u64,
    limited: u64,
    limit: u32,
    burst: u32,
    remaining: u32,
}

impl TopKeys {
    /// Count one check of `key`. A new key, when the table is full, takes the place
    /// of the least checked one (so a burst on a new key shows up at once).
    fn offer(&mut self, key: &str, allowed: bool, limit: u32, burst: u32, remaining: u32) {
        if !self.keys.contains_key(key) && self.keys.len() >= TOP_KEYS_TRACKED {
            let quietest = self
                .keys
                .iter()
                .min_by_key(|(_, c)| c.checks)
                .map(|(k, _)| k.clone());
            if let Some(k) = quietest {
                self.keys.remove(&k);
            }
        }
        let c = self.keys.entry(key.to_string()).or_default();
        c.checks += 1;
        c.limited += u64::from(!allowed);
        c.limit = limit;
        c.burst = burst;
        c.remaining = remaining;
    }

    fn new() -> Self {
        TopKeys {
            keys: HashMap::new(),
            last_decay: Instant::now(),
        }
    }

    /// Halve the counts once a half-life has passed since the last time.
    fn decay_if_due(&mut self, now: Instant) {
        if now.duration_since(self.last_decay) >= TOP_KEYS_HALF_LIFE {
            self.last_decay = now;
            self.decay();
        }
    }

    /// Halve every count and forget keys that reached zero.
    fn decay(&mut self) {
        self.keys.retain(|_, c| {
            c.checks /= 2;
            c.limited /= 2;
            c.checks > 0
        });
    }

    /// The `n` most checked keys, most first (ties by name, so the order is stable).
    fn top(&self, n: usize) -> Vec<RateKeyStats> {
        let mut v: Vec<_> = self.keys.iter().collect();
        v.sort_by(|a, b| b.1.checks.cmp(&a.1.checks).then_with(|| a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(k, c)| RateKeyStats {
                key: k.clone(),
                checks: c.checks,
                limited: c.limited,
                limit: c.limit,
                burst: c.burst,
                remaining: c.remaining,
            })
            .collect()
    }
}

/// One node's sampled activity. Create one per process, share it with the HTTP
/// layer, and spawn [`Stats::run`].
#[derive(Debug)]
pub struct Stats {
    node_id: u64,
    interval: Duration,
    capacity: usize,
    metrics: Arc<Metrics>,
    samples: Mutex<Ring>,
    top: Mutex<TopKeys>,
}

#[derive(Debug)]
struct Ring {
    last: Totals,
    samples: VecDeque<StatsSample>,
}

impl Stats {
    /// Keep `capacity` samples taken every `interval` (a zero capacity keeps one).
    pub fn new(node_id: u64, metrics: Arc<Metrics>, interval: Duration, capacity: usize) -> Self {
        let last = Totals::read(&metrics);
        Stats {
            node_id,
            interval,
            capacity: capacity.max(1),
            metrics,
            samples: Mutex::new(Ring {
                last,
                samples: VecDeque::new(),
            }),
            top: Mutex::new(TopKeys::new()),
        }
    }

    /// Sample every interval, forever (abort the task to stop it).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the baseline is taken in new()
        loop {
            tick.tick().await;
            self.sample(wall_clock_ms());
        }
    }

    /// Take one sample now: the counters' growth since the previous one.
    pub fn sample(&self, at_ms: u64) {
        let now = Totals::read(&self.metrics);
        {
            let mut ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            let sample = now.since(&ring.last, at_ms);
            ring.last = now;
            if ring.samples.len() == self.capacity {
                ring.samples.pop_front();
            }
            ring.samples.push_back(sample);
        }
        self.top
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decay_if_due(Instant::now());
    }

    /// Offer a rate check's per-key results to the busiest-keys table; skipped,
    /// never waited for, while another check holds it.
    pub fn rate_checked<'a>(&self, results: impl IntoIterator<Item = &'a RateResult>) {
        if let Ok(mut top) = self.top.try_lock() {
            for r in results {
                top.offer(&r.key, r.allowed, r.limit, r.burst, r.remaining);
            }
        }
    }

    /// What `GET /v1/stats` answers.
    pub fn response(&self) -> StatsResponse {
        let samples = {
            let ring = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            ring.samples.iter().cloned().collect()
        };
        let busiest_rate_keys = self
            .top
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .top(TOP_KEYS_SHOWN);
        StatsResponse {
            node_id: self.node_id,
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            samples,
            busiest_rate_keys,
            shadow_denials: self
                .metrics
                .shadow_denial_counts()
                .into_iter()
                .map(|(policy, count)| ShadowCount { policy, count })
                .collect(),
            allowlisted: self
                .metrics
                .allowlisted_counts()
                .into_iter()
                .map(|(policy, count)| ShadowCount { policy, count })
                .collect(),
        }
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(capacity: usize) -> (Arc<Metrics>, Stats) {
        let m = Arc::new(Metrics::new());
        let s = Stats::new(7, m.clone(), Duration::from_secs(5), capacity);
        (m, s)
    }

    #[test]
    fn samples_are_differences_of_the_counters() {
        let (m, s) = stats(10);
        m.decision("acquire", "granted");
        m.decision("acquire", "granted");
        m.decision("rate", "limited");
        m.http_request("/v1/slots/acquire", "POST", 200, 0.002);
        m.http_request("/v1/slots/acquire", "POST", 503, 0.004);
        m.http_request("/v1/cluster", "GET", 200, 0.5);
        m.http_request("/readyz", "GET", 503, 0.0);
        // One path, several rows of the table (GET, PUT, DELETE): counted once.
        m.http_request("/v1/limits/{key}", "PUT", 200, 0.001);
        s.sample(1000);
        m.decision("rate", "allowed");
        s.sample(2000);
        let r = s.response();
        assert_eq!(r.node_id, 7);
        assert_eq!(r.interval_ms, 5000);
        let [a, b] = r.samples.as_slice() else {
            panic!("{r:?}")
        };
        assert_eq!(
            (a.at_ms, a.granted, a.denied, a.unavailable),
            (1000, 2, 1, 1)
        );
        assert_eq!(a.requests, 5);
        // Only the decision routes count towards latency: (2 + 4) ms / 2.
        assert_eq!(a.mean_latency_us, 3000);
        assert_eq!(
            (b.granted, b.denied, b.requests, b.mean_latency_us),
            (1, 0, 0, 0)
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_samples() {
        let (_, s) = stats(3);
        for t in 1..=5 {
            s.sample(t);
        }
        let at: Vec<u64> = s.response().samples.iter().map(|x| x.at_ms).collect();
        assert_eq!(at, [3, 4, 5]);
    }

    /// A rate result whose bucket (burst) is half its limit per period.
    fn result(key: &str, allowed: bool, limit: u32, remaining: u32) -> RateResult {
        RateResult {
            key: key.into(),
            allowed,
            limit,
            period_ms: 60_000,
            burst: limit / 2,
            remaining,
            reset_after_ms: 0,
            retry_after_ms: 0,
        }
    }

    #[test]
    fn busiest_keys_are_bounded_ranked_and_decay() {
        let (_, s) = stats(3);
        for _ in 0..5 {
            s.rate_checked([&result("user:hot", false, 10, 0)]);
        }
        s.rate_checked([
            &result("user:warm", true, 10, 7),
            &result("user:warm", true, 10, 6),
        ]);
        for i in 0..(TOP_KEYS_TRACKED * 2) {
            s.rate_checked([&result(&format!("ip:{i}"), true, 60, 59)]);
        }
        let top = s.response().busiest_rate_keys;
        assert_eq!(top.len(), TOP_KEYS_SHOWN);
        assert_eq!(
            (
                top[0].key.as_str(),
                top[0].checks,
                top[0].limited,
                top[0].remaining
            ),
            ("user:hot", 5, 5, 0)
        );
        // The bar on the status page is scaled by the bucket, not the rate.
        assert_eq!((top[0].limit, top[0].burst), (10, 5));
        assert_eq!((top[1].key.as_str(), top[1].checks), ("user:warm", 2));
        assert!(s.top.lock().unwrap().keys.len() <= TOP_KEYS_TRACKED);
        s.sample(1);
        assert_eq!(
            s.response().busiest_rate_keys[0].checks,
            5,
            "no decay before a half-life"
        );
        let mut t = s.top.lock().unwrap();
        let start = t.last_decay;
        t.decay_if_due(start + TOP_KEYS_HALF_LIFE); // hot 2, warm 1, single checks vanish
        t.decay_if_due(start + TOP_KEYS_HALF_LIFE); // not due again yet
        assert_eq!(t.keys.len(), 2);
        t.decay_if_due(start + 2 * TOP_KEYS_HALF_LIFE); // hot 1, warm gone
        drop(t);
        let top = s.response().busiest_rate_keys;
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!((top[0].key.as_str(), top[0].checks), ("user:hot", 1));
    }
}
