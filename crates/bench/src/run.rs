//! The load loop, identical for every system.
//!
//! A run is `requests` *attempts* (slot acquires, or rate checks) split evenly over
//! `clients` concurrent clients, each with its own connection (client `i` talks to
//! `targets[i % targets.len()]`, round-robin; or, [`Route::Leader`], every client to
//! the quorate leader `/v1/cluster` names, following its `x-quorate-leader` hint),
//! one request in flight per client. For the slot
//! workloads a granted acquire is immediately followed by its release, so a pair is
//! 2 ops; a denied acquire (quorate 429, Lua `{0,..}`, etcd count at limit) is 1 op and
//! the client waits `deny_backoff_ms` before its next attempt (the same rule for every
//! system). A granted slot is held for `hold` (the "use") before the release is sent.
//! Throughput = completed ops / wall time of the measured phase (connections
//! are opened and warmed up before it starts).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;

use crate::stats::{self, Histogram};
use crate::systems::{self, Acquired, Conn, Params, System};
use crate::BenchError;

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// acquire+release on `org:hot` (+ `global`).
    Hot,
    /// acquire+release on one of `org_keys` random `org:N` keys (+ `global`).
    Spread,
    /// rate checks on one of `rate_keys` random `user:N` keys.
    Rate,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot",
            Workload::Spread => "spread",
            Workload::Rate => "rate",
        }
    }
}

/// How quorate clients pick the node they send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// Client `i` talks to `targets[i % targets.len()]`; followers forward.
    RoundRobin,
    /// Every client talks to the leader and follows its hint (quorate only).
    Leader,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::RoundRobin => "round-robin",
            Route::Leader => "leader-direct",
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub system: System,
    pub workload: Workload,
    pub clients: usize,
    pub requests: u64,
    pub targets: Vec<String>,
    pub params: Params,
    pub org_keys: u32,
    pub rate_keys: u32,
    pub deny_backoff: Duration,
    /// How long a client holds a granted slot before releasing it.
    pub hold: Duration,
    /// Stop early (and say so) when the measured phase exceeds this.
    pub max_duration: Duration,
    /// Makes lease ids/holders unique across runs.
    pub run_tag: String,
    /// Non-default settings ("no hold", "guard recipe"); part of the report's cell key.
    pub variant: String,
    /// Server processes whose CPU time is measured over the measured phase.
    pub server_pids: Vec<u32>,
    /// A name per server pid (quorate: its node id), for the per-process CPU rows.
    pub pid_names: Vec<String>,
    /// How clients pick nodes.
    pub route: Route,
}

/// One server process's CPU over the measured phase, per completed op.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcCpu {
    /// From `--pid-names` (quorate: the node id), else the pid.
    pub name: String,
    /// `leader` or `follower` for quorate nodes (the leader at the end of the run),
    /// else empty.
    #[serde(default)]
    pub role: String,
    pub user_us_per_op: f64,
    pub sys_us_per_op: f64,
}

/// One run's results (one JSON line in the results file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub system: String,
    pub workload: String,
    /// Non-default settings of this run ("" for the standard matrix).
    #[serde(default)]
    pub variant: String,
    pub clients: usize,
    /// Attempts asked for.
    pub requests: u64,
    /// Attempts made (less than `requests` only when `capped`).
    pub attempts: u64,
    /// Completed ops: acquires (granted or denied) + releases, or rate checks.
    pub ops: u64,
    pub granted: u64,
    pub denied: u64,
    pub errors: u64,
    /// A sample of error messages with counts.
    pub error_kinds: Vec<(String, u64)>,
    /// Times a client saw more concurrent grants on one key than its limit.
    pub over_admissions: u64,
    /// Highest concurrent grants observed client-side on one org key.
    pub max_held: i64,
    /// Compare-and-swap conflicts retried inside acquires/checks (etcd).
    pub conflicts: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub acquire_p50_ms: f64,
    pub acquire_p99_ms: f64,
    pub release_p50_ms: f64,
    pub release_p99_ms: f64,
    /// The measured phase hit `max_duration` before all attempts were made.
    pub capped: bool,
    /// CPU used by the load generator itself during the measured phase, % of one core.
    pub generator_cpu_pct: f64,
    /// CPU used by the system's server processes (all nodes) during the measured
    /// phase, % of one core (0 when no pids were given).
    #[serde(default)]
    pub server_cpu_pct: f64,
    /// Server CPU seconds (user + system, all nodes together) per 1,000 completed ops
    /// during the measured phase: the figure that stays meaningful when servers and
    /// load generator share cores (0 when no pids were given).
    #[serde(default)]
    pub server_cpu_s_per_kop: f64,
    /// The load generator's CPU seconds per 1,000 completed ops.
    #[serde(default)]
    pub generator_cpu_s_per_kop: f64,
    /// Peak resident set (`VmHWM`, MiB) of each server process at the end of the run,
    /// in the order the pids were given.
    #[serde(default)]
    pub server_peak_rss_mib: Vec<u64>,
    /// 1-minute load average of the machine at the end of the run.
    #[serde(default)]
    pub loadavg_1m: f64,
    /// `round-robin` or `leader-direct` (quorate clients; others are round-robin).
    #[serde(default)]
    pub route: String,
    /// Server CPU (all processes together) per completed op, microseconds, user and
    /// system: the cost of a decision.
    #[serde(default)]
    pub server_user_us_per_op: f64,
    #[serde(default)]
    pub server_sys_us_per_op: f64,
    /// The same per server process.
    #[serde(default)]
    pub server_procs: Vec<ProcCpu>,
}

/// Client-side view of concurrently held grants per key (conservative: incremented
/// after the grant arrived, decremented before the release is sent, so it never counts
/// more than the server had granted).
#[derive(Debug)]
struct Tracker {
    org: Vec<AtomicI64>,
    global: AtomicI64,
    org_limit: i64,
    global_limit: i64,
    over: AtomicU64,
    max_held: AtomicI64,
}

impl Tracker {
    fn grant(&self, org_idx: usize) {
        let n = self.org[org_idx].fetch_add(1, Ordering::SeqCst) + 1;
        let g = self.global.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_held.fetch_max(n, Ordering::Relaxed);
        if n > self.org_limit {
            self.over.fetch_add(1, Ordering::Relaxed);
        }
        if g > self.global_limit {
            self.over.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release(&self, org_idx: usize) {
        self.org[org_idx].fetch_sub(1, Ordering::SeqCst);
        self.global.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct ClientOut {
    attempts: u64,
    ops: u64,
    granted: u64,
    denied: u64,
    errors: u64,
    conflicts: u64,
    error_kinds: Vec<(String, u64)>,
    acquire: Histogram,
    release: Histogram,
    capped: bool,
}

impl ClientOut {
    fn error(&mut self, e: &BenchError) {
        self.errors += 1;
        let kind = e.kind();
        if let Some(slot) = self.error_kinds.iter_mut().find(|(k, _)| *k == kind) {
            slot.1 += 1;
        } else if self.error_kinds.len() < 8 {
            self.error_kinds.push((kind, 1));
        }
    }

    /// Adds another client's counts and samples (every error kind kept).
    fn merge(&mut self, o: ClientOut) {
        self.attempts += o.attempts;
        self.ops += o.ops;
        self.granted += o.granted;
        self.denied += o.denied;
        self.errors += o.errors;
        self.conflicts += o.conflicts;
        self.capped |= o.capped;
        for (k, n) in o.error_kinds {
            if let Some(slot) = self.error_kinds.iter_mut().find(|(kk, _)| *kk == k) {
                slot.1 += n;
            } else {
                self.error_kinds.push((k, n));
            }
        }
        self.acquire.merge(o.acquire);
        self.release.merge(o.release);
    }
}

/// splitmix64: a tiny deterministic per-client RNG.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }
}

/// Runs one cell: setup, connect, measured phase, cleanup.
pub async fn run(spec: RunSpec) -> Result<RunResult, BenchError> {
    if spec.targets.is_empty() || spec.clients == 0 {
        return Err(BenchError::Protocol(
            "need at least one target and client".into(),
        ));
    }
    let http = systems::http_client()?;
    systems::setup(spec.system, &http, &spec.targets[0], &spec.params).await?;
    let mut spec = spec;
    let nodes = spec.targets.clone();
    if spec.system == System::Quorate && spec.route == Route::Leader {
        spec.targets = vec![systems::quorate_leader(&http, &nodes[0]).await?];
    }
    let tracker = Arc::new(Tracker::new(&spec));
    let spec = Arc::new(spec);
    // Connect every client first; the measured phase starts when all are ready.
    let barrier = Arc::new(Barrier::new(spec.clients + 1));
    let handles = spawn_clients(&spec, &http, &tracker, &barrier);
    barrier.wait().await;
    let phase = measured_phase(&spec.server_pids, handles).await?;
    let leader = match spec.system {
        System::Quorate => systems::quorate_leader_id(&http, &nodes[0]).await,
        _ => None,
    };
    Ok(summarize(&spec, &tracker, phase, leader))
}

impl Tracker {
    fn new(spec: &RunSpec) -> Self {
        let org_slots = match spec.workload {
            Workload::Hot => 1,
            Workload::Spread => spec.org_keys.max(1) as usize,
            Workload::Rate => 0,
        };
        Tracker {
            org: (0..org_slots).map(|_| AtomicI64::new(0)).collect(),
            global: AtomicI64::new(0),
            org_limit: i64::from(spec.params.org_limit),
            global_limit: i64::from(spec.params.global_limit),
            over: AtomicU64::new(0),
            max_held: AtomicI64::new(0),
        }
    }
}

type ClientTask = tokio::task::JoinHandle<Result<ClientOut, BenchError>>;

/// Starts every client: each connects, waits at `barrier` for the others, then makes
/// its share of the attempts.
fn spawn_clients(
    spec: &Arc<RunSpec>,
    http: &reqwest::Client,
    tracker: &Arc<Tracker>,
    barrier: &Arc<Barrier>,
) -> Vec<ClientTask> {
    let mut handles = Vec::with_capacity(spec.clients);
    for i in 0..spec.clients {
        let per = spec.requests / spec.clients as u64
            + u64::from((i as u64) < spec.requests % spec.clients as u64);
        let spec = spec.clone();
        let http = http.clone();
        let tracker = tracker.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            let target = &spec.targets[i % spec.targets.len()];
            let follow = spec.route == Route::Leader;
            let conn = Conn::connect(spec.system, &http, target, i, &spec.params, follow).await;
            barrier.wait().await;
            let mut conn = conn?;
            let out = client_loop(&spec, &mut conn, i, per, &tracker).await;
            conn.close().await;
            Ok::<ClientOut, BenchError>(out)
        }));
    }
    handles
}

/// What the measured phase produced: every client's output merged, and the time and
/// CPU it took.
struct Phase {
    total: ClientOut,
    elapsed_s: f64,
    generator_cpu_s: f64,
    server_cpu_s: f64,
    /// (user, system) CPU seconds of each server pid, in order.
    server_split: Vec<(f64, f64)>,
}

/// Waits for every client to finish (the clients are already past the barrier),
/// timing it and measuring the CPU used meanwhile. The first client error fails it.
async fn measured_phase(
    server_pids: &[u32],
    handles: Vec<ClientTask>,
) -> Result<Phase, BenchError> {
    let split = |pids: &[u32]| -> Vec<(f64, f64)> {
        pids.iter()
            .map(|p| stats::proc_cpu_split(&p.to_string()).unwrap_or((0.0, 0.0)))
            .collect()
    };
    let split0 = split(server_pids);
    let cpu0 = stats::process_cpu_seconds();
    let t0 = Instant::now();

    let mut total = ClientOut::default();
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(o)) => total.merge(o),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(BenchError::Protocol(format!("client task: {e}")));
            }
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    let generator_cpu_s = stats::process_cpu_seconds() - cpu0;
    let server_split: Vec<(f64, f64)> = split(server_pids)
        .into_iter()
        .zip(split0)
        .map(|((u1, s1), (u0, s0))| (u1 - u0, s1 - s0))
        .collect();
    let server_cpu_s = server_split.iter().map(|(u, s)| u + s).sum();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Phase {
        total,
        elapsed_s,
        generator_cpu_s,
        server_cpu_s,
        server_split,
    })
}

/// Microseconds per op of `cpu_s` CPU seconds over `ops` ops (0 when none).
fn us_per_op(cpu_s: f64, ops: u64) -> f64 {
    stats::cpu_s_per_kop(cpu_s, ops) * 1000.0
}

/// The result line of a run; `leader` is the quorate leader's node id at its end.
fn summarize(spec: &RunSpec, tracker: &Tracker, phase: Phase, leader: Option<u64>) -> RunResult {
    let Phase {
        total: mut t,
        elapsed_s: elapsed,
        generator_cpu_s: cpu,
        server_cpu_s: server,
        server_split,
    } = phase;
    let server_procs: Vec<ProcCpu> = server_split
        .iter()
        .enumerate()
        .map(|(i, (u, s))| {
            let name = spec
                .pid_names
                .get(i)
                .cloned()
                .unwrap_or_else(|| spec.server_pids[i].to_string());
            let role = match leader {
                Some(l) if name == l.to_string() => "leader",
                Some(_) => "follower",
                None => "",
            };
            ProcCpu {
                name,
                role: role.to_owned(),
                user_us_per_op: us_per_op(*u, t.ops),
                sys_us_per_op: us_per_op(*s, t.ops),
            }
        })
        .collect();
    let (user, sys) = server_split
        .iter()
        .fold((0.0, 0.0), |(a, b), (u, s)| (a + u, b + s));
    let mut all = t.acquire.clone();
    all.merge(t.release.clone());
    RunResult {
        system: spec.system.name().to_owned(),
        workload: spec.workload.name().to_owned(),
        variant: spec.variant.clone(),
        clients: spec.clients,
        requests: spec.requests,
        attempts: t.attempts,
        ops: t.ops,
        granted: t.granted,
        denied: t.denied,
        errors: t.errors,
        error_kinds: std::mem::take(&mut t.error_kinds),
        over_admissions: tracker.over.load(Ordering::SeqCst),
        max_held: tracker.max_held.load(Ordering::SeqCst),
        conflicts: t.conflicts,
        elapsed_s: elapsed,
        ops_per_s: t.ops as f64 / elapsed.max(1e-9),
        p50_ms: all.quantile_ms(0.50),
        p99_ms: all.quantile_ms(0.99),
        p999_ms: all.quantile_ms(0.999),
        max_ms: all.quantile_ms(1.0),
        acquire_p50_ms: t.acquire.quantile_ms(0.50),
        acquire_p99_ms: t.acquire.quantile_ms(0.99),
        release_p50_ms: t.release.quantile_ms(0.50),
        release_p99_ms: t.release.quantile_ms(0.99),
        capped: t.capped,
        generator_cpu_pct: 100.0 * cpu / elapsed.max(1e-9),
        server_cpu_pct: 100.0 * server / elapsed.max(1e-9),
        server_cpu_s_per_kop: stats::cpu_s_per_kop(server, t.ops),
        generator_cpu_s_per_kop: stats::cpu_s_per_kop(cpu, t.ops),
        server_peak_rss_mib: spec
            .server_pids
            .iter()
            .map(|&p| stats::peak_rss_kib(p).unwrap_or(0) / 1024)
            .collect(),
        loadavg_1m: stats::loadavg_1m(),
        route: match spec.system {
            System::Quorate => spec.route.name(),
            _ => Route::RoundRobin.name(),
        }
        .to_owned(),
        server_user_us_per_op: us_per_op(user, t.ops),
        server_sys_us_per_op: us_per_op(sys, t.ops),
        server_procs,
    }
}

async fn client_loop(
    spec: &RunSpec,
    conn: &mut Conn,
    client: usize,
    attempts: u64,
    tracker: &Tracker,
) -> ClientOut {
    let mut out = ClientOut::default();
    let mut rng = Rng(0x5EED ^ ((client as u64) << 32) ^ spec.run_tag.len() as u64);
    let start = Instant::now();
    for seq in 0..attempts {
        if start.elapsed() > spec.max_duration {
            out.capped = true;
            break;
        }
        out.attempts += 1;
        match spec.workload {
            Workload::Hot | Workload::Spread => {
                let (org, idx) = if spec.workload == Workload::Hot {
                    ("org:hot".to_owned(), 0usize)
                } else {
                    let n = rng.below(spec.org_keys);
                    (format!("org:{n}"), n as usize)
                };
                let lease_id = format!("{}-c{client}-{seq}", spec.run_tag);
                slot_attempt(spec, conn, &org, idx, &lease_id, tracker, &mut out).await;
            }
            Workload::Rate => {
                let key = format!("user:{}", rng.below(spec.rate_keys));
                rate_attempt(conn, &key, &mut out).await;
            }
        }
    }
    out
}

/// One acquire on `org` (tracked as org slot `idx`); if granted, the hold and release.
async fn slot_attempt(
    spec: &RunSpec,
    conn: &mut Conn,
    org: &str,
    idx: usize,
    lease_id: &str,
    tracker: &Tracker,
    out: &mut ClientOut,
) {
    let t = Instant::now();
    let res = conn.acquire(org, lease_id).await;
    out.acquire.record(t.elapsed());
    match res {
        Ok((Acquired::Granted(g), conflicts)) => {
            out.conflicts += u64::from(conflicts);
            out.ops += 1;
            out.granted += 1;
            tracker.grant(idx);
            // "Use" the slot, then give it back.
            if !spec.hold.is_zero() {
                tokio::time::sleep(spec.hold).await;
            }
            tracker.release(idx);
            let t = Instant::now();
            let rel = conn.release(&g).await;
            out.release.record(t.elapsed());
            match rel {
                Ok(true) => out.ops += 1,
                Ok(false) => out.error(&BenchError::Protocol("release: lease unknown".into())),
                Err(e) => out.error(&e),
            }
        }
        Ok((Acquired::Denied, conflicts)) => {
            out.conflicts += u64::from(conflicts);
            out.ops += 1;
            out.denied += 1;
            if !spec.deny_backoff.is_zero() {
                tokio::time::sleep(spec.deny_backoff).await;
            }
        }
        Err(e) => {
            out.error(&e);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One rate check on `key`.
async fn rate_attempt(conn: &mut Conn, key: &str, out: &mut ClientOut) {
    let t = Instant::now();
    let res = conn.rate(key).await;
    out.acquire.record(t.elapsed());
    match res {
        Ok((allowed, conflicts)) => {
            out.conflicts += u64::from(conflicts);
            out.ops += 1;
            if allowed {
                out.granted += 1;
            } else {
                out.denied += 1;
            }
        }
        Err(e) => {
            out.error(&e);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
