//! Test harness: real `quorate serve` processes on loopback.
//!
//! [`Cluster::start`] picks free ports, writes a `cluster.toml` into a temporary
//! directory (short Raft timeouts so elections take a fraction of a second), spawns one
//! process per node from the binary under test, and waits — polling `/readyz` with a
//! deadline, never sleeping blindly — until every node knows a leader and has caught
//! up. Nodes can then be killed (SIGKILL: a crash), stopped (SIGTERM: graceful),
//! paused (SIGSTOP/SIGCONT) and restarted on the same data directory. The `try_*`
//! variants of the waits return an error at their deadline instead of panicking, for
//! callers (the chaos suite) that record a failure and carry on.
//!
//! Each node's output goes to `<tmp>/node-<id>.log`; when a test panics, the end of
//! every log is printed so the failure can be understood from CI output alone.
//! Dropping the [`Cluster`] kills every process it started (set `QUORATE_TEST_KEEP=1`
//! to keep the temporary directory with data and logs).
//!
//! Usage from any file in `tests/`:
//! ```ignore
//! mod common;
//! let mut c = common::Cluster::start(3).await;
//! let leader = c.leader_id().await;
//! let (status, body) = c.post(leader, "/v1/slots/acquire", json!({"keys": ["k"]})).await;
//! ```
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use quorate_proto::ClusterResponse;
use quorate_server::config::envoy::{
    DescriptorEntry, DomainConfig, EnvoySection, RateLimitConfig, UnitConfig,
};
use quorate_server::config::{Millis, NodeConfig, NonZeroMillis};
use quorate_server::security::auth::TokenSpec;
use quorate_server::ClusterConfig;
use reqwest::StatusCode;
use serde_json::Value;

/// How long to wait for a cluster to become ready, elect, or converge.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How to build a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub request_timeout_ms: u64,
    pub expire_interval_ms: u64,
    pub default_ttl_ms: u64,
    /// Extra environment for every node process (e.g. `QUORATE_LOG`, or
    /// `QUORATE_<SECTION>_<KEY>` overrides).
    pub env: Vec<(String, String)>,
    /// Extra environment for one node (by id), applied after `env` (e.g. its
    /// `QUORATE_PEER_ADDRS`).
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
    /// `[[auth.tokens]]` (empty: open mode). With tokens, the helpers that read
    /// `/v1/cluster` without one (`leader_id`, `wait_converged`) do not work.
    pub tokens: Vec<TokenSpec>,
    /// Give every node a `grpc_addr` (Envoy's rate limit service).
    pub grpc: bool,
    /// Edits the typed config before it is written (e.g. an `[envoy]` table, tokens).
    pub config_edit: Option<fn(&mut ClusterConfig)>,
    /// A token the test client sends with every HTTP request (clusters with `[auth]`).
    pub bearer: Option<String>,
}

impl Options {
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            heartbeat_ms: 50,
            election_min_ms: 300,
            election_max_ms: 600,
            request_timeout_ms: 3000,
            expire_interval_ms: 500,
            default_ttl_ms: 60_000,
            env: Vec::new(),
            node_env: BTreeMap::new(),
            tokens: Vec::new(),
            grpc: false,
            config_edit: None,
            bearer: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeAddrs {
    pub api_addr: String,
    pub raft_addr: String,
    pub grpc_addr: Option<String>,
}

/// A running test cluster. Dropping it kills every node.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub options: Options,
    pub nodes: BTreeMap<u64, NodeAddrs>,
    procs: BTreeMap<u64, Child>,
    pub http: reqwest::Client,
}

/// The first set of ports from `draw` none of which is in `taken` (addresses
/// `127.0.0.1:<port>`).
pub fn ports_not_in(taken: &[String], mut draw: impl FnMut() -> Vec<u16>) -> Vec<u16> {
    loop {
        let ports = draw();
        if !ports
            .iter()
            .any(|p| taken.contains(&format!("127.0.0.1:{p}")))
        {
            return ports;
        }
    }
}

/// Free loopback ports for nodes to bind, from below the kernel's ephemeral range.
///
/// Ports the kernel hands out for `bind(0)` come from the same range it uses for the
/// source ports of outgoing connections, so between this function releasing one and a
/// node binding it, a client connection of a test running beside it could take it
/// ("Address already in use", seen in CI). Ports in 20000..32000 are never picked as
/// source ports (the range starts at 32768), so only another test choosing the same
/// one at random can collide, and each is checked free here.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    let mut tries = 0u64;
    while held.len() < n {
        tries += 1;
        assert!(tries < 10_000, "no free port in 20000..32000");
        // splitmix64 over (seed, counter): spread, not predictable across processes.
        let mut z = seed.wrapping_add(NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let port = 20_000 + (z % 12_000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Cluster {
    /// Start `n` nodes with default [`Options`] and wait until all are ready.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(Options::new(n)).await
    }

    /// Start a cluster and wait until all nodes are ready.
    pub async fn start_with(options: Options) -> Cluster {
        let c = Self::spawn_with(options);
        c.wait_all_ready().await;
        c
    }

    /// Write the config and spawn every node, without waiting.
    pub fn spawn_with(options: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("quorate-test-")
            .tempdir()
            .expect("create temp dir");
        let ports = free_ports(options.nodes * 3);
        let mut nodes = BTreeMap::new();
        for i in 0..options.nodes {
            nodes.insert(
                i as u64 + 1,
                NodeAddrs {
                    api_addr: format!("127.0.0.1:{}", ports[3 * i]),
                    raft_addr: format!("127.0.0.1:{}", ports[3 * i + 1]),
                    grpc_addr: options
                        .grpc
                        .then(|| format!("127.0.0.1:{}", ports[3 * i + 2])),
                },
            );
        }
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, render_config(&options, &nodes)).expect("write cluster.toml");
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.bearer {
            let value = format!("Bearer {token}").parse().expect("a header value");
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .default_headers(headers)
            .build()
            .expect("http client");
        let mut c = Cluster {
            dir,
            config_path,
            options,
            nodes,
            procs: BTreeMap::new(),
            http,
        };
        for id in c.ids() {
            c.spawn(id);
        }
        c
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Nodes whose process is running.
    pub fn running(&mut self) -> Vec<u64> {
        let mut ids = Vec::new();
        for (id, child) in self.procs.iter_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                ids.push(*id);
            }
        }
        ids
    }

    pub fn api_url(&self, id: u64) -> String {
        format!("http://{}", self.nodes[&id].api_addr)
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("{}{path}", self.api_url(id))
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join("data").join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    /// The node's log so far.
    pub fn logs(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Add a node to `cluster.toml` (fresh ports, next id) without starting it: the
    /// running nodes keep their config; the new node reads the file when spawned and
    /// joins once added through `POST /v1/members`.
    pub fn add_node_to_config(&mut self) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        // A port is free when no process holds it, but a node that is down (killed,
        // or removed yet still in the file) keeps its addresses in the config: the
        // node refuses a file that names one address twice, so skip them (a chaos
        // soak's replace-node once drew a stopped node's api port, seed 866818011).
        let taken: Vec<String> = self
            .nodes
            .values()
            .flat_map(|n| [Some(&n.api_addr), Some(&n.raft_addr), n.grpc_addr.as_ref()])
            .flatten()
            .cloned()
            .collect();
        let ports = ports_not_in(&taken, || free_ports(3));
        self.nodes.insert(
            id,
            NodeAddrs {
                api_addr: format!("127.0.0.1:{}", ports[0]),
                raft_addr: format!("127.0.0.1:{}", ports[1]),
                grpc_addr: self.options.grpc.then(|| format!("127.0.0.1:{}", ports[2])),
            },
        );
        std::fs::write(&self.config_path, render_config(&self.options, &self.nodes))
            .expect("rewrite cluster.toml");
        id
    }

    /// Start node `id`'s process (on its existing data directory, if any).
    pub fn spawn(&mut self, id: u64) {
        assert!(
            !self.procs.contains_key(&id),
            "node {id} is already running"
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open node log");
        let err = log.try_clone().expect("clone log handle");
        // QUORATE_TEST_BIN runs the suite against another build (e.g. to show that a
        // regression test fails on an older binary).
        let bin = std::env::var_os("QUORATE_TEST_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_quorate")),
            PathBuf::from,
        );
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--node")
            .arg(id.to_string())
            .env("QUORATE_LOG", "info,openraft=warn")
            .env("QUORATE_LOG_COLOR", "never")
            .env_remove("QUORATE_DATA_DIR")
            // Node 1 runs on one runtime thread ([server] worker_threads = 1, as
            // `quorate up` and the benchmarks run nodes), the others on the default
            // pool: every multi-process test covers both, in one cluster.
            .env(
                "QUORATE_SERVER_WORKER_THREADS",
                if id == 1 { "1" } else { "0" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        for (k, v) in self.options.node_env.get(&id).into_iter().flatten() {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn quorate serve");
        self.procs.insert(id, child);
    }

    /// SIGKILL node `id` (a crash: no drain, no flush) and reap it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The OS process id of node `id`, if it was started and not killed.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).map(Child::id)
    }

    fn signal(&self, id: u64, signal: rustix::process::Signal) {
        let pid = self
            .pid(id)
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            .unwrap_or_else(|| panic!("node {id} is not running"));
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("signal {signal:?} to node {id}: {e}"));
    }

    /// SIGSTOP node `id`: the process freezes with its sockets open (a long GC pause,
    /// a stalled VM). Resume with [`Cluster::resume`]; [`Cluster::kill`] also works.
    pub fn pause(&self, id: u64) {
        self.signal(id, rustix::process::Signal::STOP);
    }

    /// SIGCONT a paused node.
    pub fn resume(&self, id: u64) {
        self.signal(id, rustix::process::Signal::CONT);
    }

    /// SIGTERM node `id` and wait for it to exit (graceful shutdown).
    pub fn stop(&mut self, id: u64) -> ExitStatus {
        let mut child = self.procs.remove(&id).expect("node is running");
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node {id} did not stop within {DEADLINE:?} of SIGTERM");
                }
            }
        }
    }

    /// Wait (polling, up to [`DEADLINE`]) for node `id` to exit on its own; its exit
    /// status, or `None` if it is still running at the deadline.
    pub async fn wait_exit(&mut self, id: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            let child = self.procs.get_mut(&id).expect("node was started");
            if let Ok(Some(status)) = child.try_wait() {
                self.procs.remove(&id);
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Start a stopped or killed node again and wait until it is ready.
    pub async fn restart(&mut self, id: u64) {
        self.kill(id);
        self.spawn(id);
        self.wait_ready(id).await;
    }

    /// Poll `/readyz` until it answers 200.
    pub async fn wait_ready(&self, id: u64) {
        if let Err(e) = self.try_wait_ready(id, Instant::now() + DEADLINE).await {
            panic!("{e}\n{}", self.tail(id, 40));
        }
    }

    /// Poll `/readyz` until it answers 200, or fail at `deadline`.
    pub async fn try_wait_ready(&self, id: u64, deadline: Instant) -> Result<(), String> {
        loop {
            let probe = self
                .http
                .get(self.url(id, "/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status() == StatusCode::OK) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("node {id} not ready by the deadline"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_all_ready(&self) {
        for id in self.procs.keys() {
            self.wait_ready(*id).await;
        }
    }

    /// `GET /v1/cluster` on node `id`.
    pub async fn cluster_view(&self, id: u64) -> Option<ClusterResponse> {
        let r = self
            .http
            .get(self.url(id, "/v1/cluster"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::OK {
            return None;
        }
        r.json().await.ok()
    }

    /// The leader, once every running node names the same running leader.
    pub async fn leader_id(&mut self) -> u64 {
        match self.try_leader_id(Instant::now() + DEADLINE).await {
            Ok(l) => l,
            Err(e) => panic!("{e}\n{}", self.tails(30)),
        }
    }

    /// The leader, once every running node names the same running leader; an error
    /// at `deadline`.
    pub async fn try_leader_id(&mut self, deadline: Instant) -> Result<u64, String> {
        loop {
            let running = self.running();
            let mut leaders = Vec::new();
            for id in &running {
                leaders.push(self.cluster_view(*id).await.and_then(|v| v.leader_id));
            }
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && running.contains(l) {
                    return Ok(*l);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "running nodes {running:?} did not agree on a running leader: {leaders:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every running node reports the same applied index and state digest;
    /// returns them.
    pub async fn wait_converged(&mut self) -> (u64, String) {
        match self.try_converged(Instant::now() + DEADLINE).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.tails(30)),
        }
    }

    /// Like [`Cluster::wait_converged`], with an error at `deadline`. Nodes keep
    /// applying housekeeping entries, so views are compared until one round finds
    /// them all at the same applied index with the same digest.
    pub async fn try_converged(&mut self, deadline: Instant) -> Result<(u64, String), String> {
        loop {
            let running = self.running();
            let mut views = Vec::new();
            for id in &running {
                views.push(
                    self.cluster_view(*id)
                        .await
                        .map(|v| (v.applied_index, v.state_digest)),
                );
            }
            if let Some(Some((Some(applied), digest))) = views.first() {
                if views
                    .iter()
                    .all(|v| v.as_ref() == Some(&(Some(*applied), digest.clone())))
                {
                    return Ok((*applied, digest.clone()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("nodes {running:?} did not converge: {views:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on node `id`: status and JSON body (`Value::Null` if not JSON).
    pub async fn get(&self, id: u64, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(self.url(id, path)).send().await;
        json_response(r).await
    }

    /// `POST path` with a JSON body on node `id`.
    pub async fn post(&self, id: u64, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.http.post(self.url(id, path)).json(&body).send().await;
        json_response(r).await
    }

    /// `PUT path` with a JSON body on node `id`.
    pub async fn put(&self, id: u64, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self.http.put(self.url(id, path)).json(&body).send().await;
        json_response(r).await
    }

    /// `DELETE path` on node `id`.
    pub async fn delete(&self, id: u64, path: &str) -> (StatusCode, Value) {
        let r = self.http.delete(self.url(id, path)).send().await;
        json_response(r).await
    }

    /// Node `id`'s `/metrics` text.
    pub async fn metrics(&self, id: u64) -> String {
        match self.http.get(self.url(id, "/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn tail(&self, id: u64, lines: usize) -> String {
        let text = self.logs(id);
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        let mut out = format!("----- node {id} log (last {lines} lines) -----\n");
        for l in &all[start..] {
            let _ = writeln!(out, "{l}");
        }
        out
    }

    pub fn tails(&self, lines: usize) -> String {
        self.ids().iter().map(|id| self.tail(*id, lines)).collect()
    }
}

/// A sum of a metric's series whose line starts with `prefix` (name plus labels).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn json_response(r: reqwest::Result<reqwest::Response>) -> (StatusCode, Value) {
    match r {
        Ok(r) => {
            let status = r.status();
            let body = r.json::<Value>().await.unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => panic!("request failed: {e}"),
    }
}

/// The repository's `cluster.toml` (its policies and tiers are the seeds every test
/// cluster runs), as a typed value.
pub fn repository_config() -> ClusterConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
    let text = std::fs::read_to_string(&path).expect("read the repository's cluster.toml");
    ClusterConfig::parse(&text, &path).expect("the repository's cluster.toml is valid")
}

/// A test cluster's file: the repository's `cluster.toml` with these nodes, a data
/// directory beside the file and the short timings of `o`, written from the typed
/// value (never a string template).
fn render_config(o: &Options, nodes: &BTreeMap<u64, NodeAddrs>) -> String {
    let ms = |v: u64| NonZeroMillis::new(v).expect("test timings are positive");
    let mut c = repository_config();
    c.cluster_id = "test".into();
    c.data_dir = PathBuf::from("data");
    c.nodes = nodes
        .iter()
        .map(|(id, n)| NodeConfig {
            id: *id,
            api_addr: n.api_addr.clone(),
            raft_addr: n.raft_addr.clone(),
            grpc_addr: n.grpc_addr.clone(),
            advertise_api: None,
        })
        .collect();
    c.raft.heartbeat_interval_ms = ms(o.heartbeat_ms);
    c.raft.election_timeout_min_ms = ms(o.election_min_ms);
    c.raft.election_timeout_max_ms = ms(o.election_max_ms);
    c.limits.default_ttl_ms = ms(o.default_ttl_ms);
    c.server.request_timeout_ms = ms(o.request_timeout_ms);
    c.server.expire_interval_ms = ms(o.expire_interval_ms);
    c.server.drain_timeout_ms = Millis::new(3000);
    c.auth.tokens = o.tokens.clone();
    if let Some(edit) = o.config_edit {
        edit(&mut c);
    }
    c.to_toml()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.tails(60));
        }
        if std::env::var_os("QUORATE_TEST_KEEP").is_some() {
            // Keep data and logs for inspection.
            self.dir.disable_cleanup(true);
            eprintln!("kept {}", self.dir.path().display());
        }
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// Environment that runs a node with its wall clock shifted by `offset` (libfaketime
/// syntax: `"+600s"`, `"-10m"`), keeping its monotonic clock true. Panics with the
/// install command when libfaketime is missing: a clock-skew test must never pass by
/// not skewing anything.
pub fn faketime_env(offset: &str) -> Vec<(String, String)> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    let lib = candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("libfaketime not found (apt-get install faketime); looked in {candidates:?}")
        });
    vec![
        ("LD_PRELOAD".into(), lib.to_string()),
        ("FAKETIME".into(), offset.to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        // Do not cache the offset file lookups; the value is fixed anyway.
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ]
}

/// One Envoy `ShouldRateLimit` of one descriptor (`entries` in order) through node
/// `id`'s gRPC listener ([`Options::grpc`] must be on). The status is returned, not
/// unwrapped: a node whose descriptor table has not applied yet answers
/// INVALID_ARGUMENT, which callers wait out.
pub async fn should_rate_limit(
    c: &Cluster,
    id: u64,
    domain: &str,
    entries: &[(&str, &str)],
) -> Result<RateLimitResponse, tonic::Status> {
    let addr = c.nodes[&id].grpc_addr.clone().expect("grpc_addr");
    let mut client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the gRPC listener");
    let req = RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: entries
                .iter()
                .map(|(key, value)| Entry {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    };
    client.should_rate_limit(req).await.map(|r| r.into_inner())
}

/// The value of response header `name` that an Envoy answer asks the proxy to add.
pub fn envoy_header(r: &RateLimitResponse, name: &str) -> Option<String> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.clone())
}

/// An `[envoy]` section with one domain whose entries are `(key, requests per hour,
/// limit name, shadow_mode)`: top-level descriptors with no value, hourly so that no
/// bucket refills while a test runs.
pub fn hourly_envoy_domain(domain: &str, limits: &[(&str, u32, &str, bool)]) -> EnvoySection {
    EnvoySection {
        domains: vec![DomainConfig {
            domain: domain.into(),
            descriptors: limits
                .iter()
                .map(|&(key, n, name, shadow_mode)| DescriptorEntry {
                    key: key.into(),
                    value: None,
                    rate_limit: Some(RateLimitConfig {
                        requests_per_unit: n,
                        unit: UnitConfig::Hour,
                        burst: None,
                        name: Some(name.into()),
                    }),
                    policy: None,
                    unlimited: false,
                    shadow_mode,
                    descriptors: vec![],
                })
                .collect(),
        }],
    }
}

/// Poll `f` until it returns true; panic after `within` (an event awaited, not a blind
/// sleep).
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually_within`] 20 s.
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(20), f).await;
}

/// A Rust client of every node of `c`, as `holder`, with a 15 s deadline; decisions on
/// a decision stream when `stream`.
pub fn client(c: &Cluster, holder: &str, stream: bool) -> quorate_client::Client {
    let mut cfg = quorate_client::ClientConfig::new(c.ids().iter().map(|id| c.api_url(*id)))
        .decision_stream(stream);
    cfg.deadline = Duration::from_secs(15);
    cfg.holder = holder.into();
    quorate_client::Client::new(cfg).expect("client")
}
