//! `cluster.toml`: the one file that describes a cluster.
//!
//! Every node of a cluster reads the same file and picks its own `[[nodes]]` entry with
//! `--node <id>`. The file says where the nodes listen (an API port for clients, a
//! separate Raft port for peers), how Raft is timed, which limits the HTTP layer
//! enforces, and which policies and tiers the cluster starts with.
//!
//! Two kinds of settings live here and they travel differently:
//! - **Local settings** (`[raft]`, `[server]`, `limits.default_ttl_ms`, addresses,
//!   `data_dir`) configure this process only.
//! - **Replicated settings** (`[limits]` caps, `[[policies]]`, `[tiers]`) decide grants,
//!   so every replica must use the same numbers. They are not read from the file at
//!   decision time: [`ClusterConfig::core_configuration`] turns them into an
//!   [`Op::Configure`](quorate_core::Op::Configure) that the leader proposes through
//!   the Raft log whenever the replicated state holds a different
//!   [`source_digest`](ClusterConfig::source_digest). Runtime policy changes made via
//!   the API therefore survive restarts until someone edits the file.
//!
//! Loading is layered with [figment](https://docs.rs/figment): the file, then
//! `QUORATE_<SECTION>_<KEY>` environment variables over it
//! (`QUORATE_RAFT_HEARTBEAT_INTERVAL_MS=50`, `QUORATE_SERVER_REQUEST_TIMEOUT_MS=2000`,
//! and `QUORATE_CLUSTER_ID` / `QUORATE_DATA_DIR` for the top-level keys; see
//! [`env`]). Values are typed when parsed ([`units`]): durations are
//! [`NonZeroMillis`]/[`Millis`], counts that must be positive are `NonZero*`.
//! Secrets and certificates are *not* read here: [`ClusterConfig::security`] reads
//! them once, at startup, so a CLI that only wants the node list needs no secrets.
//!
//! Parsing is strict: unknown keys are errors, and so are values the state machine
//! would later reject (the same `quorate_core::validate` rules run in [`validate`]), so
//! a typo stops the node at startup with the file's name in the message instead of
//! surfacing as a rejected log entry later.
//!
//! Tests and scripts do not write this file from string templates: they build a
//! [`ClusterConfig`] value (usually the repository's `cluster.toml` with test
//! addresses, [`ClusterConfig::with_local_nodes`]) and serialize it with
//! [`ClusterConfig::to_toml`].

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use quorate_core::{Configuration, Policy, RateSpec, Settings};
use quorate_proto::PolicyMode;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;
use crate::security::auth::AuthSection;
use crate::security::tls::TlsSection;
use crate::security::Security;

pub mod env;
pub mod envoy;
pub mod units;
mod validate;

pub use env::{ENV_PREFIX, PEER_ADDRS_ENV};
use units::nz_ms;
pub use units::{Millis, NonZeroMillis};

/// The whole of `cluster.toml`, after environment overrides and validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names the cluster (Raft's `cluster_name`, logs). Nodes of different clusters
    /// refuse to bootstrap together.
    pub cluster_id: String,
    /// Parent of every node's data directory (`<data_dir>/node-<id>`). Relative paths
    /// in the file are resolved against the file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Tier name → multiplier (`superuser = 10`, `trial = 0.5`).
    #[serde(default)]
    pub tiers: BTreeMap<String, Multiplier>,
    /// API tokens and the peer secret (see `security::auth`).
    #[serde(default)]
    pub auth: AuthSection,
    /// The Envoy rate limit service's descriptor table (replicated; see [`envoy`]).
    #[serde(default, skip_serializing_if = "envoy::EnvoySection::is_empty")]
    pub envoy: envoy::EnvoySection,
    /// Optional TLS for every listener and between peers (see `security::tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// The file this was read from (for messages); empty when parsed from a string.
    #[serde(skip)]
    pub source: PathBuf,
    /// Peer id → address this node uses instead of the peer's `raft_addr`, from
    /// `QUORATE_PEER_ADDRS` (empty unless set; see [`env`]).
    #[serde(skip)]
    pub peer_addrs: BTreeMap<u64, String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    /// `host:port` of the public HTTP API.
    pub api_addr: String,
    /// `host:port` of the Raft RPC and forwarding endpoint (peers only).
    pub raft_addr: String,
    /// `host:port` of the Envoy rate limit service (gRPC); none: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<String>,
    /// The API's base URL as clients reach it (`https://q1.example.com:8443`), when
    /// that is not `api_addr` (a NAT, a load balancer, a container port mapping):
    /// every node names the leader by this URL in the `x-quorate-leader` header and
    /// `/v1/cluster`'s `leader_api`. None: `http://<api_addr>` (`https://` with
    /// `[tls]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_api: Option<String>,
}

impl NodeConfig {
    /// The API base URL clients are told to use for this node: `advertise_api`, else
    /// `api_addr` under `scheme` (`http` or `https`). No trailing slash.
    pub fn api_url(&self, scheme: &str) -> String {
        match &self.advertise_api {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("{scheme}://{}", self.api_addr),
        }
    }
}

/// `[raft]`: Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub heartbeat_interval_ms: NonZeroMillis,
    pub election_timeout_min_ms: NonZeroMillis,
    pub election_timeout_max_ms: NonZeroMillis,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: NonZeroU64,
    /// Log entries kept behind a snapshot (lets slow followers catch up from the log).
    pub max_in_snapshot_log_to_keep: u64,
    /// Timeout of one snapshot chunk transfer.
    pub install_snapshot_timeout_ms: NonZeroMillis,
    /// TCP connect timeout of every node-to-node request.
    pub connect_timeout_ms: NonZeroMillis,
}

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: nz_ms(100),
            election_timeout_min_ms: nz_ms(500),
            election_timeout_max_ms: nz_ms(1000),
            snapshot_logs_since_last: NonZeroU64::MIN.saturating_add(4999),
            max_in_snapshot_log_to_keep: 1000,
            install_snapshot_timeout_ms: nz_ms(5000),
            connect_timeout_ms: nz_ms(500),
        }
    }
}

/// `[limits]`: caps replicated into the state machine, plus the API's default TTL.
/// The replicated caps stay plain numbers: the core validates them (`validate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub default_limit: u32,
    pub max_limit: u32,
    /// TTL of an acquire that names none (API-side, not replicated).
    pub default_ttl_ms: NonZeroMillis,
    pub max_ttl_ms: u64,
    pub max_retry_after_ms: u64,
    pub max_period_ms: u64,
    /// Caps on the replicated state (see `quorate_core::command::DEFAULT_MAX_LEASES`
    /// for what they cost): live leases, keys with leases, rate buckets.
    pub max_leases: u64,
    pub max_slot_keys: u64,
    pub max_rate_keys: u64,
    /// Most allowlist entries. Replicated by its own op (`Op::SetAdminLimits`, with
    /// `audit_entries`), proposed only when it differs from the state's, so a file
    /// that leaves both at their defaults never writes it.
    pub max_allowlist: u32,
    /// Admin changes the audit ring keeps (the oldest are dropped).
    pub audit_entries: u32,
    /// Longest `wait_ms` a waiting acquire may ask for (API-side, not replicated:
    /// it bounds how long this node holds a request open; the queue itself is in
    /// the replicated state and bounded by its caps).
    pub max_wait_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            default_limit: s.default_limit,
            max_limit: s.max_limit,
            default_ttl_ms: nz_ms(60_000),
            max_ttl_ms: s.max_ttl_ms,
            max_retry_after_ms: s.max_retry_after_ms,
            max_period_ms: s.max_period_ms,
            max_leases: s.max_leases,
            max_slot_keys: s.max_slot_keys,
            max_rate_keys: s.max_rate_keys,
            max_allowlist: quorate_core::command::DEFAULT_MAX_ALLOWLIST,
            audit_entries: quorate_core::command::DEFAULT_AUDIT_ENTRIES,
            max_wait_ms: 60_000,
        }
    }
}

/// `[server]`: the HTTP layer and the leader's write pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// How long a request may wait for the cluster (leader election, quorum) before
    /// the answer is 503 `unavailable`.
    pub request_timeout_ms: NonZeroMillis,
    pub max_body_bytes: NonZeroUsize,
    /// Most ops the leader packs into one log entry.
    pub batch_max_ops: NonZeroUsize,
    /// Log entries the leader keeps in flight at once; requests arriving meanwhile
    /// accumulate into the next entry.
    pub batch_max_in_flight: NonZeroUsize,
    /// Forwarding requests a follower keeps in flight to the leader at once; writes
    /// arriving meanwhile share the next request.
    pub forward_max_in_flight: NonZeroUsize,
    /// How often the leader proposes housekeeping (expire dead leases, advance time).
    pub expire_interval_ms: NonZeroMillis,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout_ms: Millis,
    /// Most open connections per listener (API and Raft each); further connections
    /// are closed at once, so a flood cannot exhaust file descriptors or memory.
    pub max_connections: NonZeroUsize,
    /// A client must send its complete request headers within this time, or the
    /// connection is closed (slowloris).
    pub header_read_timeout_ms: NonZeroMillis,
    /// Warn when a peer's wall clock differs from this node's by more than this.
    /// Informational only: decisions run on cluster time, never on wall clocks.
    pub clock_offset_warn_ms: NonZeroMillis,
    /// How often the node samples its own counters for the status page's charts
    /// (`/ui`, `GET /v1/stats`; the last 15 minutes are kept in memory).
    pub stats_interval_ms: NonZeroMillis,
    /// Threads of the node's async runtime: 0 (the default) is one per CPU; 1 runs the
    /// whole node (HTTP, Raft, apply) on one thread, beside its log flusher. Nodes
    /// that share a machine (`quorate up`, the benchmarks) spend less CPU per decision
    /// with 1: a lone decision then crosses no thread boundary inside the node, and
    /// three nodes on two cores gain nothing from more threads each.
    pub worker_threads: usize,
    /// While at most one client operation is in progress on this node, sync a log
    /// append on the thread that made it instead of handing it to the flusher thread
    /// and back (two wake-ups less per entry: issue 22, `quorate_store::Load`). The
    /// price: while that fsync runs, the thread serves nothing else, so on a disk
    /// that stalls, a quiet node's API (metrics and health included) stalls with it
    /// instead of answering 503 at the request timeout. `false` keeps every sync on
    /// the flusher thread.
    pub sync_when_quiet: bool,
}

/// `NonZeroUsize` for constants known to be positive.
const fn nz(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("zero count constant"),
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            request_timeout_ms: nz_ms(5000),
            max_body_bytes: nz(65536),
            batch_max_ops: nz(512),
            batch_max_in_flight: nz(3),
            forward_max_in_flight: nz(12),
            expire_interval_ms: nz_ms(1000),
            drain_timeout_ms: Millis::new(10_000),
            max_connections: nz(4096),
            header_read_timeout_ms: nz_ms(10_000),
            clock_offset_warn_ms: nz_ms(1_000),
            stats_interval_ms: nz_ms(5_000),
            worker_threads: 0,
            sync_when_quiet: true,
        }
    }
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// At most `limit` live leases on each key matching `pattern` (`org:*`, `global`).
    Concurrency {
        name: String,
        pattern: String,
        limit: u32,
        /// `shadow`: decided and counted, never denies (see [`PolicyMode`]).
        #[serde(default, skip_serializing_if = "is_enforce")]
        mode: PolicyMode,
    },
    /// `limit` requests per `period_ms`, bursts of up to `burst` (default `limit`).
    Rate {
        name: String,
        limit: u32,
        period_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        burst: Option<u32>,
        #[serde(default, skip_serializing_if = "is_enforce")]
        mode: PolicyMode,
    },
}

fn is_enforce(m: &PolicyMode) -> bool {
    *m == PolicyMode::Enforce
}

impl PolicyConfig {
    pub fn name(&self) -> &str {
        match self {
            PolicyConfig::Concurrency { name, .. } | PolicyConfig::Rate { name, .. } => name,
        }
    }

    /// `enforce` (the default) or `shadow`.
    pub fn mode(&self) -> PolicyMode {
        match self {
            PolicyConfig::Concurrency { mode, .. } | PolicyConfig::Rate { mode, .. } => *mode,
        }
    }

    /// The state machine's form of this policy.
    pub fn to_policy(&self) -> Policy {
        match self {
            PolicyConfig::Concurrency { pattern, limit, .. } => Policy::Concurrency {
                pattern: pattern.clone(),
                limit: *limit,
            },
            PolicyConfig::Rate {
                limit,
                period_ms,
                burst,
                ..
            } => Policy::Rate(RateSpec {
                limit: *limit,
                period_ms: *period_ms,
                burst: burst.unwrap_or(*limit),
            }),
        }
    }
}

/// A tier multiplier as written in the file: `10` or `0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Multiplier {
    Int(i64),
    Float(f64),
}

impl Multiplier {
    /// The multiplier in thousandths (`2.5` → 2500), or `None` when it is not a
    /// positive finite number representable that way.
    pub fn milli(self) -> Option<u32> {
        let v = match self {
            Multiplier::Int(i) => i as f64,
            Multiplier::Float(f) => f,
        };
        let m = (v * 1000.0).round();
        (v.is_finite() && m >= 1.0 && m <= f64::from(u32::MAX)).then_some(m as u32)
    }
}

impl ClusterConfig {
    /// Read `path`, apply `QUORATE_*` overrides from the process environment, validate.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        Self::layered(&text, path)
    }

    /// `text` (as if read from `path`) with the process environment over it.
    pub fn layered(text: &str, path: &Path) -> Result<Self, ServerError> {
        let peer_addrs = env::peer_addrs_from_process().map_err(|m| ServerError::Config {
            path: path.to_path_buf(),
            message: m,
        })?;
        let figment = Figment::from(Toml::string(text)).merge(env::provider());
        let mut config = Self::extract(&figment, path, &env::applied_vars())?;
        config.peer_addrs = peer_addrs;
        Ok(config)
    }

    /// Parse `text` as if read from `path` (relative `data_dir` resolves against the
    /// path's directory), without environment overrides, then validate.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ServerError> {
        Self::extract(&Figment::from(Toml::string(text)), path, &[])
    }

    /// Extract and validate from any layering; `applied` names the environment
    /// variables in it, for error messages.
    fn extract(figment: &Figment, path: &Path, applied: &[String]) -> Result<Self, ServerError> {
        let err = |message: String| ServerError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut config: ClusterConfig = figment.extract().map_err(|e| {
            let mut m = e.to_string();
            if !applied.is_empty() {
                m.push_str(&format!(" (environment overrides: {})", applied.join(", ")));
            }
            err(m)
        })?;
        let data_dir_from_env = figment
            .find_metadata("data_dir")
            .is_some_and(|md| md.name.contains("environment"));
        if config.data_dir.is_relative() && !data_dir_from_env {
            // Relative to the file, so `quorate serve --config /etc/q/cluster.toml`
            // works from any working directory. A relative QUORATE_DATA_DIR stays
            // relative to the working directory, as shell users expect.
            let base = path.parent().unwrap_or(Path::new(""));
            config.data_dir = base.join(&config.data_dir);
        }
        config.source = path.to_path_buf();
        validate::cluster(&config).map_err(err)?;
        Ok(config)
    }

    /// The file's text for this value (tests and scripts write configs this way).
    pub fn to_toml(&self) -> String {
        // Every field serializes to TOML (no maps with non-string keys, no NaN).
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    /// A one-node cluster on `api_addr`/`raft_addr` with data under `data_dir`, every
    /// other setting at its default, no policies, and fast Raft timing (heartbeat
    /// 50 ms, elections 150–300 ms): the base of in-process tests.
    pub fn single_node(cluster_id: &str, api_addr: &str, raft_addr: &str, data_dir: &Path) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            data_dir: data_dir.to_path_buf(),
            nodes: vec![NodeConfig {
                id: 1,
                api_addr: api_addr.to_string(),
                raft_addr: raft_addr.to_string(),
                grpc_addr: None,
                advertise_api: None,
            }],
            raft: RaftSection {
                heartbeat_interval_ms: nz_ms(50),
                election_timeout_min_ms: nz_ms(150),
                election_timeout_max_ms: nz_ms(300),
                ..RaftSection::default()
            },
            limits: LimitsSection::default(),
            server: ServerSection::default(),
            policies: Vec::new(),
            tiers: BTreeMap::new(),
            auth: AuthSection::default(),
            envoy: envoy::EnvoySection::default(),
            tls: None,
            // As if the file sat beside the data directory (relative TLS paths).
            source: data_dir.parent().unwrap_or(data_dir).join("cluster.toml"),
            peer_addrs: BTreeMap::new(),
        }
    }

    /// This configuration with `nodes` on loopback in place of the file's nodes: node
    /// `i` (1-based) gets `api_ports[i-1]` and `raft_ports[i-1]`. For tests and local
    /// scripts, which start from the repository's `cluster.toml` so they run the same
    /// policies and tiers as a newcomer's `quorate up`.
    pub fn with_local_nodes(mut self, api_ports: &[u16], raft_ports: &[u16]) -> Self {
        self.nodes = api_ports
            .iter()
            .zip(raft_ports)
            .enumerate()
            .map(|(i, (api, raft))| NodeConfig {
                id: i as u64 + 1,
                api_addr: format!("127.0.0.1:{api}"),
                raft_addr: format!("127.0.0.1:{raft}"),
                grpc_addr: None,
                advertise_api: None,
            })
            .collect();
        self
    }

    /// The `[[nodes]]` entry of `id`.
    pub fn node(&self, id: u64) -> Result<&NodeConfig, ServerError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ServerError::UnknownNode {
                path: self.source.clone(),
                id,
            })
    }

    /// Where node `id` keeps its sled database.
    pub fn node_data_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    /// The replicated decision settings of `[limits]`.
    pub fn settings(&self) -> Settings {
        let l = &self.limits;
        Settings {
            default_limit: l.default_limit,
            max_limit: l.max_limit,
            max_ttl_ms: l.max_ttl_ms,
            max_retry_after_ms: l.max_retry_after_ms,
            max_period_ms: l.max_period_ms,
            max_leases: l.max_leases,
            max_slot_keys: l.max_slot_keys,
            max_rate_keys: l.max_rate_keys,
        }
    }

    /// The replicated bounds of `[limits]` that live outside [`Settings`].
    pub fn admin_limits(&self) -> quorate_core::AdminLimits {
        quorate_core::AdminLimits {
            max_allowlist: self.limits.max_allowlist,
            audit_entries: self.limits.audit_entries,
        }
    }

    /// Policies in file order (concurrency policies match in this order).
    pub fn policies(&self) -> Vec<(String, Policy)> {
        self.policies
            .iter()
            .map(|p| (p.name().to_string(), p.to_policy()))
            .collect()
    }

    /// Tiers by name, multipliers in thousandths.
    pub fn tiers(&self) -> Vec<(String, u32)> {
        self.tiers
            .iter()
            .filter_map(|(n, m)| m.milli().map(|milli| (n.clone(), milli)))
            .collect()
    }

    /// A stable digest (FNV-1a, 64 bit) of the replicated part of the file: settings,
    /// policies and tiers, in a canonical length-prefixed encoding that does not depend
    /// on serde or on the core's type layout. Comments, key order, local settings and
    /// node addresses do not change it.
    pub fn source_digest(&self) -> u64 {
        let mut buf = Vec::with_capacity(256);
        let put_u64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
        let put_str = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        // v2: the state caps joined the settings. A new version string (not only new
        // fields) so that every cluster re-proposes its configuration once after the
        // upgrade and installs the caps, even where the file did not change.
        put_str(&mut buf, "quorate-config-v2");
        let s = self.settings();
        for v in [
            u64::from(s.default_limit),
            u64::from(s.max_limit),
            s.max_ttl_ms,
            s.max_retry_after_ms,
            s.max_period_ms,
            s.max_leases,
            s.max_slot_keys,
            s.max_rate_keys,
        ] {
            put_u64(&mut buf, v);
        }
        let policies = self.policies();
        put_u64(&mut buf, policies.len() as u64);
        for (name, p) in &policies {
            put_str(&mut buf, name);
            match p {
                Policy::Concurrency { pattern, limit } => {
                    put_str(&mut buf, "concurrency");
                    put_str(&mut buf, pattern);
                    put_u64(&mut buf, u64::from(*limit));
                }
                Policy::Rate(r) => {
                    put_str(&mut buf, "rate");
                    put_u64(&mut buf, u64::from(r.limit));
                    put_u64(&mut buf, r.period_ms);
                    put_u64(&mut buf, u64::from(r.burst));
                }
            }
        }
        let tiers = self.tiers();
        put_u64(&mut buf, tiers.len() as u64);
        for (name, m) in &tiers {
            put_str(&mut buf, name);
            put_u64(&mut buf, u64::from(*m));
        }
        // Only when some policy is in shadow mode, so a file without one keeps the
        // digest it had before modes existed (no re-proposal after an upgrade).
        let shadow = self.shadow_policies();
        if !shadow.is_empty() {
            put_str(&mut buf, "shadow");
            put_u64(&mut buf, shadow.len() as u64);
            for name in &shadow {
                put_str(&mut buf, name);
            }
        }
        quorate_core::state::fnv1a(&buf)
    }

    /// Names of the policies the file puts in shadow mode, in file order.
    pub fn shadow_policies(&self) -> Vec<String> {
        self.policies
            .iter()
            .filter(|p| p.mode() == PolicyMode::Shadow)
            .map(|p| p.name().to_string())
            .collect()
    }

    /// What the leader proposes with `Op::Configure` when the replicated state holds a
    /// different digest.
    pub fn core_configuration(&self) -> Configuration {
        Configuration {
            source_digest: self.source_digest(),
            settings: self.settings(),
            policies: self.policies(),
            tiers: self.tiers(),
        }
    }

    /// The op that installs this file's configuration: `Op::Configure`, or
    /// `Op::ConfigureModes` when the file puts a policy in shadow mode (a newer op,
    /// written only by a file that uses the newer feature; see docs/upgrading.md).
    pub fn configure_op(&self) -> quorate_core::Op {
        let config = self.core_configuration();
        let shadow = self.shadow_policies();
        if shadow.is_empty() {
            quorate_core::Op::Configure(Box::new(config))
        } else {
            quorate_core::Op::ConfigureModes(Box::new(quorate_core::ModedConfiguration {
                config,
                shadow,
            }))
        }
    }

    /// What the leader proposes (`Op::ConfigureDescriptors`, or
    /// `Op::ConfigureDescriptorModes` when an entry is in shadow mode) when the
    /// replicated state holds another table, and that table's digest (validated at
    /// load, so this only fails on a value built by hand).
    pub fn descriptors_op(&self) -> Result<(u64, quorate_core::Op), String> {
        self.envoy.core_op()
    }

    /// openraft's configuration for this cluster.
    pub fn raft_config(&self) -> Result<openraft::Config, ServerError> {
        let r = &self.raft;
        let config = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: r.heartbeat_interval_ms.ms(),
            election_timeout_min: r.election_timeout_min_ms.ms(),
            election_timeout_max: r.election_timeout_max_ms.ms(),
            install_snapshot_timeout: r.install_snapshot_timeout_ms.ms(),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                r.snapshot_logs_since_last.get(),
            ),
            max_in_snapshot_log_to_keep: r.max_in_snapshot_log_to_keep,
            // Chunks well under the Raft RPC body limit.
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        };
        config.validate().map_err(|e| ServerError::Config {
            path: self.source.clone(),
            message: format!("[raft]: {e}"),
        })
    }

    /// Read the `[auth]` secrets and node `node_id`'s `[tls]` files, once (files
    /// relative to the config file), and refuse a configuration whose peer traffic would leave the
    /// host unprotected (`security::links`: any non-loopback `raft_addr` or
    /// `QUORATE_PEER_ADDRS` override needs `[tls]`).
    pub fn security(&self, node_id: u64) -> Result<Security, ServerError> {
        let base = self.source.parent().unwrap_or_else(|| Path::new("."));
        let err = |message: String| ServerError::Config {
            path: self.source.clone(),
            message,
        };
        let (api, peer) = self.auth.resolve(&self.cluster_id, base).map_err(err)?;
        let links = self
            .nodes
            .iter()
            .map(|n| (format!("node {} raft_addr", n.id), n.raft_addr.as_str()))
            .chain(self.peer_addrs.iter().map(|(id, a)| {
                (
                    format!("QUORATE_PEER_ADDRS override for node {id}"),
                    a.as_str(),
                )
            }));
        crate::security::links::require_protected_peer_links(
            links,
            peer.signs(),
            self.tls.is_some(),
        )
        .map_err(err)?;
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.load(base, node_id))
            .transpose()
            .map_err(err)?;
        Ok(Security { api, peer, tls })
    }

    pub fn request_timeout(&self) -> Duration {
        self.server.request_timeout_ms.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
cluster_id = "test"
data_dir = "data"

[[nodes]]
id = 1
api_addr = "127.0.0.1:7101"
raft_addr = "127.0.0.1:7201"

[[nodes]]
id = 2
api_addr = "127.0.0.1:7102"
raft_addr = "127.0.0.1:7202"

[raft]
heartbeat_interval_ms = 50

[limits]
default_limit = 7

[[policies]]
name = "orgs"
kind = "concurrency"
pattern = "org:*"
limit = 5

[[policies]]
name = "worker"
kind = "rate"
limit = 30
period_ms = 60000
burst = 10

[[policies]]
name = "anon"
kind = "rate"
limit = 60
period_ms = 60000

[tiers]
superuser = 10
trial = 0.5
"#;

    /// Parse `text` as `/etc/quorate/cluster.toml` with `env` set in a figment jail
    /// (which restores the environment afterwards).
    #[allow(clippy::result_large_err)] // figment's own error type, in a test
    fn parse(text: &str, env: &[(&str, &str)]) -> Result<ClusterConfig, ServerError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in env {
                jail.set_env(k, v);
            }
            result = Some(ClusterConfig::layered(
                text,
                Path::new("/etc/quorate/cluster.toml"),
            ));
            Ok(())
        });
        result.expect("jail ran")
    }

    fn message(r: Result<ClusterConfig, ServerError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    /// `SAMPLE` with each `from` replaced by its `to` is refused with a message
    /// containing the case's `why`.
    fn assert_edits_refused(cases: &[(&str, &str, &str)]) {
        for (from, to, why) in cases {
            let m = message(parse(&SAMPLE.replace(from, to), &[]));
            assert!(m.contains(why), "{from} -> {to}: {m}");
        }
    }

    /// `SAMPLE` under `env` is refused with a message containing each of `whys`.
    fn assert_env_refused(env: &[(&str, &str)], whys: &[&str]) {
        let m = message(parse(SAMPLE, env));
        for why in whys {
            assert!(m.contains(why), "{env:?}: {m}");
        }
    }

    #[test]
    fn parses_sample_with_defaults() {
        let c = parse(SAMPLE, &[]).unwrap();
        assert_eq!(c.cluster_id, "test");
        assert_eq!(c.data_dir, PathBuf::from("/etc/quorate/data"));
        assert_eq!(
            c.node_data_dir(2),
            PathBuf::from("/etc/quorate/data/node-2")
        );
        assert_eq!(c.raft.heartbeat_interval_ms.ms(), 50);
        assert_eq!(c.raft.election_timeout_min_ms.ms(), 500);
        assert_eq!(c.limits.default_limit, 7);
        assert_eq!(c.request_timeout(), Duration::from_millis(5000));
        assert_eq!(c.server.max_body_bytes.get(), 65536);
        assert_eq!(c.server.batch_max_ops.get(), 512);
        assert_eq!(c.server.expire_interval_ms.ms(), 1000);
        assert_eq!(c.node(2).unwrap().raft_addr, "127.0.0.1:7202");
        assert!(matches!(
            c.node(9),
            Err(ServerError::UnknownNode { id: 9, .. })
        ));
    }

    /// `mode = "shadow"` makes the file's configuration an `Op::ConfigureModes` and
    /// changes its digest; a file without one keeps `Op::Configure` and the digest it
    /// had before modes existed.
    #[test]
    fn a_shadow_policy_in_the_file_is_installed_with_its_mode() {
        let plain = parse(SAMPLE, &[]).unwrap();
        assert!(matches!(
            plain.configure_op(),
            quorate_core::Op::Configure(_)
        ));
        let text = SAMPLE.replace(
            "name = \"worker\"\nkind = \"rate\"",
            "name = \"worker\"\nkind = \"rate\"\nmode = \"shadow\"",
        );
        let shadow = parse(&text, &[]).unwrap();
        assert_eq!(shadow.shadow_policies(), ["worker"]);
        assert_ne!(shadow.source_digest(), plain.source_digest());
        match shadow.configure_op() {
            quorate_core::Op::ConfigureModes(c) => {
                assert_eq!(c.shadow, ["worker"]);
                assert_eq!(c.config.source_digest, shadow.source_digest());
            }
            other => panic!("{other:?}"),
        }
        // Explicit enforce is the default: same digest as saying nothing.
        let text = SAMPLE.replace(
            "name = \"worker\"\nkind = \"rate\"",
            "name = \"worker\"\nkind = \"rate\"\nmode = \"enforce\"",
        );
        assert_eq!(
            parse(&text, &[]).unwrap().source_digest(),
            plain.source_digest()
        );
        let bad = SAMPLE.replace(
            "name = \"worker\"\nkind = \"rate\"",
            "name = \"worker\"\nkind = \"rate\"\nmode = \"loud\"",
        );
        assert!(parse(&bad, &[]).is_err());
    }

    /// `advertise_api` is the URL clients are told to use; it defaults to the API
    /// address and must be a bare http(s) base URL.
    #[test]
    fn advertise_api_defaults_to_the_api_address_and_is_checked() {
        let c = parse(SAMPLE, &[]).unwrap();
        assert_eq!(c.node(1).unwrap().api_url("http"), "http://127.0.0.1:7101");
        let with = |url: &str| {
            let text = SAMPLE.replacen(
                "raft_addr = \"127.0.0.1:7201\"",
                &format!("raft_addr = \"127.0.0.1:7201\"\nadvertise_api = \"{url}\""),
                1,
            );
            parse(&text, &[])
        };
        let c = with("https://q1.example.com:8443/").unwrap();
        assert_eq!(
            c.node(1).unwrap().api_url("http"),
            "https://q1.example.com:8443"
        );
        for bad in [
            "q1.example.com:8443",
            "http://h:1/prefix",
            "http://u:p@h:1",
            "ftp://h:1",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("advertise_api"), "{bad}: {e}");
        }
    }

    #[test]
    fn policies_and_tiers_become_core_configuration() {
        let c = parse(SAMPLE, &[]).unwrap();
        let conf = c.core_configuration();
        assert_eq!(conf.settings.default_limit, 7);
        assert_eq!(
            conf.policies,
            vec![
                (
                    "orgs".to_string(),
                    Policy::Concurrency {
                        pattern: "org:*".into(),
                        limit: 5
                    }
                ),
                (
                    "worker".to_string(),
                    Policy::Rate(RateSpec {
                        limit: 30,
                        period_ms: 60000,
                        burst: 10
                    })
                ),
                (
                    "anon".to_string(),
                    Policy::Rate(RateSpec {
                        limit: 60,
                        period_ms: 60000,
                        burst: 60
                    })
                ),
            ]
        );
        assert_eq!(
            conf.tiers,
            vec![
                ("superuser".to_string(), 10_000),
                ("trial".to_string(), 500)
            ]
        );
        assert_eq!(conf.source_digest, c.source_digest());
    }

    #[test]
    fn digest_is_stable_and_ignores_local_settings() {
        let a = parse(SAMPLE, &[]).unwrap();
        // Same replicated content, different comments, layout and local settings.
        let b_text = SAMPLE
            .replace(
                "heartbeat_interval_ms = 50",
                "heartbeat_interval_ms = 60 # faster",
            )
            .replace("cluster_id = \"test\"", "cluster_id = \"other\"\n# comment");
        let b = parse(&b_text, &[("QUORATE_SERVER_REQUEST_TIMEOUT_MS", "900")]).unwrap();
        assert_eq!(a.source_digest(), b.source_digest());
        // Fixed value: the digest must not change between builds or platforms.
        assert_eq!(
            a.source_digest(),
            parse(SAMPLE, &[]).unwrap().source_digest()
        );

        let c = parse(&SAMPLE.replace("limit = 5", "limit = 6"), &[]).unwrap();
        assert_ne!(a.source_digest(), c.source_digest());
        let d = parse(SAMPLE, &[("QUORATE_LIMITS_DEFAULT_LIMIT", "8")]).unwrap();
        assert_ne!(a.source_digest(), d.source_digest());
        let e = parse(&SAMPLE.replace("trial = 0.5", "trial = 0.25"), &[]).unwrap();
        assert_ne!(a.source_digest(), e.source_digest());
        // Every state cap is part of the digest: changing one re-proposes the config.
        for var in [
            "QUORATE_LIMITS_MAX_LEASES",
            "QUORATE_LIMITS_MAX_SLOT_KEYS",
            "QUORATE_LIMITS_MAX_RATE_KEYS",
        ] {
            let f = parse(SAMPLE, &[(var, "12345")]).unwrap();
            assert_ne!(a.source_digest(), f.source_digest(), "{var}");
        }
    }

    #[test]
    fn state_caps_come_from_limits_and_are_validated() {
        let c = parse(SAMPLE, &[]).unwrap();
        let d = Settings::default();
        let s = c.core_configuration().settings;
        assert_eq!(
            (s.max_leases, s.max_slot_keys, s.max_rate_keys),
            (d.max_leases, d.max_slot_keys, d.max_rate_keys)
        );
        let text = SAMPLE.replace(
            "default_limit = 7",
            "default_limit = 7\nmax_leases = 500\nmax_slot_keys = 600\nmax_rate_keys = 700",
        );
        let s = parse(&text, &[]).unwrap().settings();
        assert_eq!(
            (s.max_leases, s.max_slot_keys, s.max_rate_keys),
            (500, 600, 700)
        );
        assert_env_refused(
            &[("QUORATE_LIMITS_MAX_SLOT_KEYS", "0")],
            &["max_slot_keys", "at least 1"],
        );
    }

    /// The admin bounds come from `[limits]` but stay out of the configuration's
    /// digest (their own op carries them), and are validated.
    #[test]
    fn admin_bounds_come_from_limits_outside_the_digest() {
        let a = parse(SAMPLE, &[]).unwrap();
        assert_eq!(a.admin_limits(), quorate_core::AdminLimits::default());
        let text = SAMPLE.replace(
            "default_limit = 7",
            "default_limit = 7\nmax_allowlist = 20\naudit_entries = 30",
        );
        let b = parse(&text, &[]).unwrap();
        assert_eq!(
            b.admin_limits(),
            quorate_core::AdminLimits {
                max_allowlist: 20,
                audit_entries: 30
            }
        );
        assert_eq!(a.source_digest(), b.source_digest());
        assert_env_refused(
            &[("QUORATE_LIMITS_AUDIT_ENTRIES", "0")],
            &["audit_entries", "1..=100000"],
        );
        assert_env_refused(
            &[("QUORATE_LIMITS_MAX_ALLOWLIST", "100001")],
            &["max_allowlist", "1..=100000"],
        );
    }

    /// `max_wait_ms` is a local setting: it changes no replicated digest, and is
    /// bounded.
    #[test]
    fn max_wait_is_local_and_bounded() {
        let a = parse(SAMPLE, &[]).unwrap();
        assert_eq!(a.limits.max_wait_ms, 60_000);
        let b = parse(
            &SAMPLE.replace("default_limit = 7", "default_limit = 7\nmax_wait_ms = 1500"),
            &[],
        )
        .unwrap();
        assert_eq!(b.limits.max_wait_ms, 1500);
        assert_eq!(a.source_digest(), b.source_digest());
        assert_env_refused(
            &[("QUORATE_LIMITS_MAX_WAIT_MS", "3600001")],
            &["max_wait_ms", "0..=3600000"],
        );
    }

    #[test]
    fn env_overrides_file_values() {
        let c = parse(
            SAMPLE,
            &[
                ("QUORATE_DATA_DIR", "/var/lib/q"),
                ("QUORATE_CLUSTER_ID", "prod"),
                ("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS", "40"),
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MIN_MS", "300"),
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MAX_MS", "600"),
                ("QUORATE_LIMITS_DEFAULT_LIMIT", "3"),
                ("QUORATE_LIMITS_DEFAULT_TTL_MS", "1500"),
                ("QUORATE_LIMITS_MAX_TTL_MS", "90000"),
                ("QUORATE_SERVER_REQUEST_TIMEOUT_MS", "2500"),
                ("QUORATE_LOG", "debug"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/q"));
        assert_eq!(c.cluster_id, "prod");
        assert_eq!(c.raft.heartbeat_interval_ms.ms(), 40);
        assert_eq!(c.raft.election_timeout_min_ms.ms(), 300);
        assert_eq!(c.raft.election_timeout_max_ms.ms(), 600);
        assert_eq!(c.limits.default_limit, 3);
        assert_eq!(c.limits.default_ttl_ms.ms(), 1500);
        assert_eq!(c.limits.max_ttl_ms, 90000);
        assert_eq!(c.request_timeout(), Duration::from_millis(2500));
    }

    #[test]
    fn peer_addrs_come_from_the_environment() {
        assert!(parse(SAMPLE, &[]).unwrap().peer_addrs.is_empty());
        let c = parse(
            SAMPLE,
            &[(
                "QUORATE_PEER_ADDRS",
                "2=127.0.0.1:41002, 4=localhost:41004,",
            )],
        )
        .unwrap();
        assert_eq!(
            c.peer_addrs,
            BTreeMap::from([
                (2, "127.0.0.1:41002".to_string()),
                (4, "localhost:41004".to_string())
            ])
        );
        // File values are untouched: the override is about where this node sends.
        assert_eq!(c.node(2).unwrap().raft_addr, "127.0.0.1:7202");
        for bad in [
            "2",
            "x=127.0.0.1:1",
            "0=127.0.0.1:1",
            "2=127.0.0.1",
            "2=a:1,2=b:2",
        ] {
            let m = message(parse(SAMPLE, &[("QUORATE_PEER_ADDRS", bad)]));
            assert!(m.contains("QUORATE_PEER_ADDRS"), "{bad}: {m}");
        }
    }

    #[test]
    fn bad_env_values_are_named() {
        assert_env_refused(
            &[("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS", "fast")],
            &[
                "QUORATE_RAFT_HEARTBEAT_INTERVAL_MS",
                "/etc/quorate/cluster.toml",
            ],
        );
        assert_env_refused(
            &[("QUORATE_SERVER_REQUEST_TIMOUT_MS", "5")],
            &["request_timout_ms", "QUORATE_SERVER_REQUEST_TIMOUT_MS"],
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        assert_edits_refused(&[
            (
                "[raft]",
                "[raft]\nheartbeat_ms = 5",
                "/etc/quorate/cluster.toml",
            ),
            ("[raft]", "[raft]\nheartbeat_ms = 5", "heartbeat_ms"),
            ("kind = \"rate\"", "kind = \"speed\"", "speed"),
        ]);
        let m = message(parse(&format!("extra = 1\n{SAMPLE}"), &[]));
        assert!(m.contains("extra"), "{m}");
    }

    #[test]
    fn validation_catches_inconsistent_clusters() {
        assert_edits_refused(&[
            ("id = 2", "id = 1", "duplicate node id 1"),
            // One address shared by two nodes, or by one node's two ports.
            ("127.0.0.1:7202", "127.0.0.1:7102", "used twice"),
            ("127.0.0.1:7201", "127.0.0.1:7101", "used twice"),
            ("127.0.0.1:7201", "127.0.0.1", "port"),
        ]);

        assert_env_refused(
            &[
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MIN_MS", "40"),
                ("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS", "50"),
            ],
            &["election_timeout_min_ms"],
        );
        assert_env_refused(
            &[
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MIN_MS", "800"),
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MAX_MS", "800"),
            ],
            &["election_timeout_max_ms"],
        );
        assert_env_refused(
            &[("QUORATE_SERVER_REQUEST_TIMEOUT_MS", "0")],
            &["QUORATE_SERVER_REQUEST_TIMEOUT_MS", "at least 1"],
        );
    }

    #[test]
    fn validation_applies_core_rules_to_policies_and_tiers() {
        assert_edits_refused(&[
            (
                "name = \"anon\"",
                "name = \"orgs\"",
                "duplicate policy name",
            ),
            ("org:*", "org:*:x", "orgs"),
            ("limit = 5", "limit = 0", "orgs"),
            ("trial = 0.5", "trial = 0", "trial"),
            ("trial = 0.5", "trial = -2", "trial"),
        ]);

        let long_ttl = parse(SAMPLE, &[("QUORATE_LIMITS_DEFAULT_TTL_MS", "999999999999")]);
        assert!(message(long_ttl).contains("default_ttl_ms"));
    }

    #[test]
    fn raft_config_is_valid() {
        let c = parse(SAMPLE, &[]).unwrap();
        let rc = c.raft_config().unwrap();
        assert_eq!(rc.cluster_name, "test");
        assert_eq!(rc.heartbeat_interval, 50);
        assert_eq!(
            rc.snapshot_policy,
            openraft::SnapshotPolicy::LogsSinceLast(5000)
        );
    }

    #[test]
    fn repository_cluster_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster.toml");
        let c = ClusterConfig::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.policies.len(), 5);
        assert_eq!(c.tiers().len(), 3);
        assert!(c.server.sync_when_quiet, "the file states the default");
    }

    /// A config written from a typed value reads back as the same value: tests and
    /// scripts rely on this instead of string templates.
    #[test]
    fn typed_configs_round_trip_through_toml() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster.toml");
        let repo = ClusterConfig::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        let mut c = repo
            .clone()
            .with_local_nodes(&[17101, 17102], &[17201, 17202]);
        c.data_dir = PathBuf::from("/tmp/q-test");
        c.raft.heartbeat_interval_ms = units::nz_ms(50);
        let text = c.to_toml();
        let back = ClusterConfig::parse(&text, Path::new("/x/cluster.toml")).unwrap();
        assert_eq!(back.nodes, c.nodes);
        assert_eq!(back.raft, c.raft);
        assert_eq!(back.source_digest(), repo.source_digest());
        assert_eq!(
            ClusterConfig {
                source: c.source.clone(),
                ..back
            },
            c
        );
    }

    #[test]
    fn zero_durations_and_counts_are_refused_by_type() {
        for (k, v) in [
            ("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS", "0"),
            ("QUORATE_SERVER_BATCH_MAX_OPS", "0"),
            ("QUORATE_SERVER_MAX_BODY_BYTES", "0"),
            ("QUORATE_LIMITS_DEFAULT_TTL_MS", "0"),
        ] {
            assert_env_refused(&[(k, v)], &[k]);
        }
        // A zero drain timeout is allowed: stop at once.
        assert!(parse(SAMPLE, &[("QUORATE_SERVER_DRAIN_TIMEOUT_MS", "0")]).is_ok());
    }
}
