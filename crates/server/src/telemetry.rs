//! Metrics: typed families declared once, in one registry, rendered as OpenMetrics.
//!
//! Every series the node exports is a field of [`Metrics`], registered with its name
//! and help text in [`Metrics::new`] and nowhere else; call sites use typed methods
//! (`decision("acquire", "granted")`), not name strings. Label sets are small structs
//! of `&'static str` and integers, so recording on the request path allocates nothing:
//! a family lookup is a read lock on a hash map, and the update an atomic add.
//!
//! Gauges that mirror Raft state (term, indices, leadership, sled size) are sampled by
//! the node just before a scrape ([`crate::backend::Backend::refresh_metrics`]) rather
//! than pushed on every change.
//!
//! The HTTP layer and the Raft node share one `Arc<Metrics>`, so `/metrics` is one
//! registry rendered once.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Histogram bucket upper bounds in seconds (request and write latencies).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Bucket upper bounds in seconds of a batch of log writes (`quorate_log_sync_seconds`):
/// 0.1–0.3 ms on an idle local SSD or this VM's virtio disk, a few ms on network
/// storage, more on a disk in trouble.
const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0,
];

/// Bucket upper bounds in seconds of a waiting acquire's time in the queue (waits
/// are bounded by `limits.max_wait_ms`, 60 s by default).
const WAIT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WaitOutcome {
    /// `granted`, `timeout` (the wait ended ungranted) or `gone` (the client went
    /// away, or the cluster could not settle the wait: 503).
    outcome: &'static str,
}

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    /// The matched route pattern from the route table, never the raw path, so label
    /// cardinality stays bounded whatever callers send.
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindOutcome {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Peer {
    peer: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateKind {
    /// `leases`, `slot_keys` or `rate_keys`.
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EnvoyLabels {
    /// A domain of the node's `[envoy]` table, or `other` (never the caller's string).
    domain: &'static str,
    /// `ok`, `over_limit`, or the gRPC status code name of a refusal.
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabel {
    /// A policy name: set by admins only, and bounded like the policies themselves.
    policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EnvoyDomain {
    domain: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Usage above this share of a cap is worth a warning (percent).
const STATE_WARN_PERCENT: u64 = 90;

/// The node's metrics. Create one per process and share it.
pub struct Metrics {
    registry: Registry,
    /// Only `http_seconds`, for [`Metrics::http_route_totals`].
    latency_registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: HistogramFamily<RouteLabels>,
    decisions: Family<KindOutcome, Counter>,
    forwarded: Family<KindOutcome, Counter>,
    peer_rejected: Family<Reason, Counter>,
    clock_offsets: Family<Peer, Gauge>,
    envoy_requests: Family<EnvoyLabels, Counter>,
    envoy_seconds: HistogramFamily<EnvoyDomain>,
    shadow_denials: Family<PolicyLabel, Counter>,
    /// The same counts, readable by policy for `/v1/stats` (a `Family` cannot be
    /// listed without encoding it).
    shadow_counts: Mutex<std::collections::BTreeMap<String, u64>>,
    allowlisted: Family<PolicyLabel, Counter>,
    /// The same counts, readable by policy for `/v1/stats`.
    allowlisted_counts: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Log entries proposed by the leader's batcher.
    pub batches: Counter,
    /// Client ops proposed by the batcher (ops / batches = mean batch size).
    pub batched_ops: Counter,
    /// Time from a write entering the batcher to its reply.
    pub write_seconds: Histogram,
    /// In-flight entries whose slot was given back unanswered (term ended, timeout).
    pub batches_abandoned: Counter,
    /// Each batch of Raft log writes, until it was on disk (`quorate_store::SyncReport`).
    pub log_sync_seconds: Histogram,
    /// Writes those batches made durable.
    pub log_synced_writes: Counter,
    /// Peer requests a follower sent to carry forwarded writes to the leader.
    pub forward_batches: Counter,
    /// Writes those requests carried (ops / requests = mean forward batch size).
    pub forward_batched_ops: Counter,
    /// Dead leases purged by housekeeping (leader's count).
    pub expired_leases: Counter,
    pub raft_term: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_committed_index: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_is_leader: Gauge,
    pub sled_size_bytes: Gauge,
    /// 1 once a write or fsync of the store failed other than for space (`run.rs`).
    pub storage_failed: Gauge,
    /// Peer streams (`http::peer`) this node serves now: on a follower, the leader's
    /// append stream; on the leader, the followers' forwarding streams.
    pub peer_streams: Gauge,
    /// Decision streams (`POST /v1/stream`, `http::api::stream`) this node serves now.
    pub api_streams: Gauge,
    state_entries: Family<StateKind, Gauge>,
    state_cap: Family<StateKind, Gauge>,
    /// Kinds whose usage is above the warning threshold (so the warning is logged
    /// once per crossing, not at every scrape).
    state_high: Mutex<HashMap<&'static str, bool>>,
    /// Waiting acquires this node holds open (`waiters::Waiters`).
    pub queue_waiters: Gauge,
    queue_wait_seconds: HistogramFamily<WaitOutcome>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Declare and register every family. Long by design: it is the one list of
    /// every series the node exports, one registration each.
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            latency_registry: Registry::default(),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            decisions: Family::default(),
            forwarded: Family::default(),
            peer_rejected: Family::default(),
            clock_offsets: Family::default(),
            envoy_requests: Family::default(),
            envoy_seconds: Family::new_with_constructor(latency_histogram),
            shadow_denials: Family::default(),
            shadow_counts: Mutex::default(),
            allowlisted: Family::default(),
            allowlisted_counts: Mutex::default(),
            batches: Counter::default(),
            batched_ops: Counter::default(),
            write_seconds: latency_histogram(),
            batches_abandoned: Counter::default(),
            log_sync_seconds: Histogram::new(SYNC_BUCKETS),
            log_synced_writes: Counter::default(),
            forward_batches: Counter::default(),
            forward_batched_ops: Counter::default(),
            expired_leases: Counter::default(),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_committed_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_is_leader: Gauge::default(),
            sled_size_bytes: Gauge::default(),
            storage_failed: Gauge::default(),
            peer_streams: Gauge::default(),
            api_streams: Gauge::default(),
            state_entries: Family::default(),
            state_cap: Family::default(),
            state_high: Mutex::new(HashMap::new()),
            queue_waiters: Gauge::default(),
            queue_wait_seconds: Family::new_with_constructor(wait_histogram),
        };
        let mut r = Registry::default();
        r.register(
            "quorate_http_requests",
            "HTTP requests by route, method and status.",
            m.http_requests.clone(),
        );
        r.register(
            "quorate_http_request_seconds",
            "HTTP request latency by route.",
            m.http_seconds.clone(),
        );
        r.register(
            "quorate_decisions",
            "Decisions returned to callers, by kind and outcome.",
            m.decisions.clone(),
        );
        r.register(
            "quorate_forwarded",
            "Requests this node forwarded to the leader, by kind and outcome.",
            m.forwarded.clone(),
        );
        r.register(
            "quorate_peer_rejected",
            "Peer (Raft/forwarding) requests refused, by reason.",
            m.peer_rejected.clone(),
        );
        r.register(
            "quorate_shadow_denials",
            "Requests allowed that a shadow-mode policy would have denied, by policy.",
            m.shadow_denials.clone(),
        );
        r.register(
            "quorate_allowlisted",
            "Checks (rate and Envoy descriptors) an allowlist entry exempted, by the check's policy (inline: an inline limit).",
            m.allowlisted.clone(),
        );
        r.register(
            "quorate_clock_offset_ms",
            "Each peer's wall clock minus this node's, last measured (informational: decisions use cluster time).",
            m.clock_offsets.clone(),
        );
        r.register(
            "quorate_batches",
            "Log entries proposed by the batcher.",
            m.batches.clone(),
        );
        r.register(
            "quorate_batched_ops",
            "Client ops proposed by the batcher (ops / batches = mean batch size).",
            m.batched_ops.clone(),
        );
        r.register(
            "quorate_write_seconds",
            "Time from a write entering the leader's batcher to its reply (applied).",
            m.write_seconds.clone(),
        );
        r.register(
            "quorate_batches_abandoned",
            "In-flight entries whose slot the batcher took back unanswered (term ended or timeout).",
            m.batches_abandoned.clone(),
        );
        r.register(
            "quorate_log_sync_seconds",
            "Time each batch of Raft log writes took to reach the disk: its writes and fdatasync (and sled's flush for a vote or snapshot). Every decision waits for one on the leader and then one on a follower.",
            m.log_sync_seconds.clone(),
        );
        r.register(
            "quorate_log_synced_writes",
            "Writes (log appends, votes, flush requests) those batches made durable; divided by quorate_log_sync_seconds_count it is the group-commit factor.",
            m.log_synced_writes.clone(),
        );
        r.register(
            "quorate_forward_batches",
            "Peer requests this node sent to carry forwarded writes to the leader.",
            m.forward_batches.clone(),
        );
        r.register(
            "quorate_forward_batched_ops",
            "Writes carried by those requests (ops / requests = mean forward batch size).",
            m.forward_batched_ops.clone(),
        );
        r.register(
            "quorate_expired_leases",
            "Dead leases purged by housekeeping (leader's count).",
            m.expired_leases.clone(),
        );
        let gauges = [
            ("quorate_raft_term", "Current Raft term.", &m.raft_term),
            (
                "quorate_raft_last_log_index",
                "Index of the last entry in this node's log.",
                &m.raft_last_log_index,
            ),
            (
                "quorate_raft_committed_index",
                "Highest index this node knows to be committed (refreshed every expire interval).",
                &m.raft_committed_index,
            ),
            (
                "quorate_raft_applied_index",
                "Index of the last entry applied to the state machine.",
                &m.raft_applied_index,
            ),
            (
                "quorate_raft_is_leader",
                "1 if this node is the leader.",
                &m.raft_is_leader,
            ),
            (
                "quorate_sled_size_bytes",
                "Bytes the store uses on disk: Raft log segments, snapshot file and sled (the name is from when all three were in sled).",
                &m.sled_size_bytes,
            ),
            (
                "quorate_storage_failed",
                "1 once a write or fsync of this node's store failed (not for space): the node no longer takes part in Raft and must be checked by an operator.",
                &m.storage_failed,
            ),
            (
                "quorate_peer_streams",
                "Peer streams this node serves now: a follower serves the leader's append stream (0 means appends come as one HTTP request each, from a leader that predates streams); the leader serves the followers' forwarding streams.",
                &m.peer_streams,
            ),
            (
                "quorate_api_streams",
                "Decision streams (POST /v1/stream) clients hold open on this node now; their frames count in quorate_http_requests with method STREAM.",
                &m.api_streams,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "quorate_state_entries",
            "Entries in the replicated state, by kind (leases, slot_keys, rate_keys: rate buckets and counters, which share max_rate_keys).",
            m.state_entries.clone(),
        );
        r.register(
            "quorate_state_cap",
            "The replicated cap on each kind of state entry ([limits] max_*); at the cap, new ones get 503 state_full.",
            m.state_cap.clone(),
        );
        r.register(
            "quorate_queue_waiters",
            "Waiting acquires (wait_ms) this node holds open until granted or their wait ends.",
            m.queue_waiters.clone(),
        );
        r.register(
            "quorate_queue_wait_seconds",
            "Time waiting acquires spent queued, by outcome (granted, timeout, gone).",
            m.queue_wait_seconds.clone(),
        );
        r.register(
            "quorate_envoy_requests",
            "Envoy ShouldRateLimit calls by domain ([envoy] domains, else other) and code.",
            m.envoy_requests.clone(),
        );
        r.register(
            "quorate_envoy_request_seconds",
            "Envoy ShouldRateLimit latency by domain.",
            m.envoy_seconds.clone(),
        );
        let mut latency = Registry::default();
        latency.register(
            "quorate_http_request_seconds",
            "HTTP request latency by route.",
            m.http_seconds.clone(),
        );
        Self {
            registry: r,
            latency_registry: latency,
            ..m
        }
    }

    /// One Envoy `ShouldRateLimit` call answered (`grpc::ratelimit`).
    pub fn envoy_request(&self, domain: &'static str, code: &'static str, secs: f64) {
        self.envoy_requests
            .get_or_create(&EnvoyLabels { domain, code })
            .inc();
        self.envoy_seconds
            .get_or_create(&EnvoyDomain { domain })
            .observe(secs);
    }

    /// One HTTP request answered.
    pub fn http_request(&self, route: &'static str, method: &'static str, status: u16, secs: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method,
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels { route })
            .observe(secs);
    }

    /// A decision returned to a caller (`acquire`/`granted`, `rate`/`limited`, ...).
    pub fn decision(&self, kind: &'static str, outcome: &'static str) {
        self.decisions
            .get_or_create(&KindOutcome { kind, outcome })
            .inc();
    }

    /// A waiting acquire that was queued ended after `secs`: `granted`, `timeout`
    /// or `gone`.
    pub fn queue_wait(&self, outcome: &'static str, secs: f64) {
        self.queue_wait_seconds
            .get_or_create(&WaitOutcome { outcome })
            .observe(secs);
    }

    /// A request allowed that the shadow-mode `policy` would have denied.
    pub fn shadow_denial(&self, policy: &str) {
        self.shadow_denials
            .get_or_create(&PolicyLabel {
                policy: policy.to_string(),
            })
            .inc();
        let mut counts = self.shadow_counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(policy.to_string()).or_insert(0) += 1;
    }

    /// Shadow denials so far, by policy (sorted by name).
    pub fn shadow_denial_counts(&self) -> Vec<(String, u64)> {
        let counts = self.shadow_counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(p, n)| (p.clone(), *n)).collect()
    }

    /// A check exempted by an allowlist entry, under `policy`.
    pub fn allowlisted(&self, policy: &str) {
        self.allowlisted
            .get_or_create(&PolicyLabel {
                policy: policy.to_string(),
            })
            .inc();
        let mut counts = self
            .allowlisted_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry(policy.to_string()).or_insert(0) += 1;
    }

    /// Allowlisted checks so far, by policy (sorted by name).
    pub fn allowlisted_counts(&self) -> Vec<(String, u64)> {
        let counts = self
            .allowlisted_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(p, n)| (p.clone(), *n)).collect()
    }

    /// A request forwarded to the leader, by kind and outcome.
    pub fn forwarded(&self, kind: &'static str, outcome: &'static str) {
        self.forwarded
            .get_or_create(&KindOutcome { kind, outcome })
            .inc();
    }

    /// A peer request refused before decoding.
    pub fn peer_rejected(&self, reason: &'static str) {
        self.peer_rejected.get_or_create(&Reason { reason }).inc();
    }

    /// The last measured wall clock offset of `peer` (ms).
    pub fn clock_offset(&self, peer: u64, offset_ms: i64) {
        self.clock_offsets
            .get_or_create(&Peer { peer })
            .set(offset_ms);
    }

    /// How many peer requests were refused for `reason` (tests, status).
    pub fn peer_rejected_count(&self, reason: &'static str) -> u64 {
        self.peer_rejected.get_or_create(&Reason { reason }).get()
    }

    /// Record one kind of state entry against its cap. Returns true when the usage
    /// has just risen above 90 % of the cap (once per crossing; it re-arms when the
    /// usage falls back below), so the caller can log a warning.
    pub fn state_usage(&self, kind: &'static str, used: u64, cap: u64) -> bool {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let label = StateKind { kind };
        self.state_entries.get_or_create(&label).set(gauge(used));
        self.state_cap.get_or_create(&label).set(gauge(cap));
        let high = u128::from(used) * 100 > u128::from(cap) * u128::from(STATE_WARN_PERCENT);
        let mut flags = self.state_high.lock().unwrap_or_else(|e| e.into_inner());
        let was = flags.insert(kind, high).unwrap_or(false);
        high && !was
    }

    /// Decisions of `kind` with `outcome` so far. Reads only: a series that does not
    /// exist yet counts 0 and is not created (the status page's sampler, `stats.rs`).
    pub fn decision_count(&self, kind: &'static str, outcome: &'static str) -> u64 {
        self.decisions
            .get(&KindOutcome { kind, outcome })
            .map_or(0, |c| c.get())
    }

    /// Requests on `route` (a route table pattern) with `method` answered `status`
    /// so far. Reads only, like [`Self::decision_count`].
    pub fn http_status_count(&self, route: &'static str, method: &'static str, status: u16) -> u64 {
        self.http_requests
            .get(&HttpLabels {
                route,
                method,
                status,
            })
            .map_or(0, |c| c.get())
    }

    /// Requests answered so far and their summed latency (seconds), by route.
    /// prometheus-client shows a histogram's sum and count only through encoding, so
    /// this encodes that one family (a line pair per route) from its own small
    /// registry: a few microseconds, for the status page's sampler every few seconds,
    /// never on the request path.
    pub fn http_route_totals(&self) -> Vec<(String, u64, f64)> {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.latency_registry);
        let mut rows: Vec<(String, u64, f64)> = Vec::new();
        for line in text.lines() {
            let Some((name, rest)) = line.split_once("{route=\"") else {
                continue;
            };
            let Some((route, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let row = match rows.iter().position(|r| r.0 == route) {
                Some(i) => &mut rows[i],
                None => {
                    rows.push((route.to_string(), 0, 0.0));
                    rows.last_mut().expect("just pushed")
                }
            };
            let value = value.split(' ').next().unwrap_or("");
            if name.ends_with("_count") {
                row.1 = value.parse().unwrap_or(0);
            } else if name.ends_with("_sum") {
                row.2 = value.parse().unwrap_or(0.0);
            }
        }
        rows
    }

    /// Everything, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::new();
        m.http_request("/v1/x", "GET", 200, 0.003);
        m.http_request("/v1/x", "GET", 200, 0.0001);
        m.raft_term.set(3);
        m.batches.inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"quorate_http_requests_total{route="/v1/x",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains("quorate_raft_term 3"), "{text}");
        assert!(text.contains("quorate_batches_total 1"), "{text}");
        assert!(
            text.contains(r#"quorate_http_request_seconds_bucket{le="0.005",route="/v1/x"} 2"#)
                || text
                    .contains(r#"quorate_http_request_seconds_bucket{route="/v1/x",le="0.005"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("# HELP quorate_raft_term Current Raft term."),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counts_and_latency_totals_are_read_without_creating_series() {
        let m = Metrics::new();
        assert_eq!(m.decision_count("acquire", "granted"), 0);
        assert_eq!(m.http_status_count("/v1/x", "GET", 503), 0);
        assert!(m.http_route_totals().is_empty());
        assert!(
            !m.render().contains("quorate_decisions_total{"),
            "reading created a series"
        );
        m.decision("acquire", "granted");
        m.http_request("/v1/x", "GET", 503, 0.25);
        m.http_request("/v1/x", "GET", 200, 0.5);
        m.http_request("/v1/{key}", "PUT", 200, 0.125);
        assert_eq!(m.decision_count("acquire", "granted"), 1);
        assert_eq!(m.http_status_count("/v1/x", "GET", 503), 1);
        let mut totals = m.http_route_totals();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            totals,
            [
                ("/v1/x".to_string(), 2, 0.75),
                ("/v1/{key}".to_string(), 1, 0.125)
            ]
        );
    }

    #[test]
    fn state_usage_is_exported_and_warns_once_per_crossing() {
        let m = Metrics::new();
        assert!(
            !m.state_usage("leases", 90, 100),
            "exactly 90 % is not above"
        );
        assert!(m.state_usage("leases", 91, 100), "crossing warns");
        assert!(
            !m.state_usage("leases", 95, 100),
            "staying above does not repeat"
        );
        assert!(!m.state_usage("leases", 10, 100));
        assert!(
            m.state_usage("leases", 100, 100),
            "a new crossing warns again"
        );
        assert!(
            m.state_usage("rate_keys", u64::MAX, u64::MAX),
            "no overflow"
        );
        let text = m.render();
        assert!(
            text.contains(r#"quorate_state_entries{kind="leases"} 100"#),
            "{text}"
        );
        assert!(
            text.contains(r#"quorate_state_cap{kind="leases"} 100"#),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"quorate_state_cap{{kind="rate_keys"}} {}"#,
                i64::MAX
            )),
            "{text}"
        );
    }
}
