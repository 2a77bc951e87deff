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
//! `QUORATE_<SECTION>_<KEY>` environment variables override file values
//! (`QUORATE_RAFT_HEARTBEAT_INTERVAL_MS=50`, `QUORATE_SERVER_REQUEST_TIMEOUT_MS=2000`),
//! as do `QUORATE_CLUSTER_ID` and `QUORATE_DATA_DIR` for the top-level keys. Other
//! `QUORATE_*` variables (such as `QUORATE_LOG`) are not config and are ignored here.
//!
//! Two variables are for testing, not for production configuration:
//! - `QUORATE_PEER_ADDRS="2=127.0.0.1:41002,3=127.0.0.1:41003"` makes *this* node send
//!   everything it sends to peer 2 (Raft RPCs, forwarded requests, bootstrap probes) to
//!   `127.0.0.1:41002` instead of peer 2's `raft_addr`, and likewise for 3. Other peers
//!   keep their `raft_addr`; ids need not be in the file yet (a node added later).
//!   The chaos suite (`tests/chaos.rs`) uses it to route each directed link through a
//!   proxy it can cut. Parsed into [`ClusterConfig::peer_addrs`]; a malformed value
//!   stops the node at startup.
//! - `QUORATE_PLANTED_BUG=follower-local-grant` (debug builds only; ignored with an
//!   error in release builds) makes followers grant acquires from a private copy of
//!   their local state without Raft: a deliberate bug that proves the chaos checker can
//!   fail. See `node.rs`.
//!
//! Parsing is strict: unknown keys are errors, and so are values the state machine
//! would later reject (the same `quorate_core::validate` rules run here), so a typo
//! stops the node at startup with the file's name in the message instead of surfacing
//! as a rejected log entry later.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use quorate_core::{validate, Configuration, Policy, RateSpec, Settings};
use serde::Deserialize;

use crate::api::ApiConfig;
use crate::auth::{ApiAuth, AuthSection, PeerAuth};
use crate::error::ServerError;
use crate::tls::{Tls, TlsSection};

/// Prefix of environment variables that override file values.
pub const ENV_PREFIX: &str = "QUORATE_";

/// Per-peer outgoing address overrides (`id=host:port,...`; see the module docs).
pub const PEER_ADDRS_ENV: &str = "QUORATE_PEER_ADDRS";

/// Sections whose keys may be overridden by `QUORATE_<SECTION>_<KEY>` variables.
const ENV_SECTIONS: [&str; 3] = ["raft", "limits", "server"];

/// The whole of `cluster.toml`, after environment overrides and validation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// API tokens and the peer secret (see `auth.rs`).
    #[serde(default)]
    pub auth: AuthSection,
    /// Optional TLS for every listener and between peers (see `tls.rs`).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The file this was read from (for messages); empty when parsed from a string.
    #[serde(skip)]
    pub source: PathBuf,
    /// Peer id → address this node uses instead of the peer's `raft_addr`, from
    /// `QUORATE_PEER_ADDRS` (empty unless set; see the module docs).
    #[serde(skip)]
    pub peer_addrs: BTreeMap<u64, String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    /// `host:port` of the public HTTP API.
    pub api_addr: String,
    /// `host:port` of the Raft RPC and forwarding endpoint (peers only).
    pub raft_addr: String,
}

/// `[raft]`: Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Log entries kept behind a snapshot (lets slow followers catch up from the log).
    pub max_in_snapshot_log_to_keep: u64,
    /// Timeout of one snapshot chunk transfer.
    pub install_snapshot_timeout_ms: u64,
    /// TCP connect timeout of every node-to-node request.
    pub connect_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_logs_since_last: 5000,
            max_in_snapshot_log_to_keep: 1000,
            install_snapshot_timeout_ms: 5000,
            connect_timeout_ms: 500,
        }
    }
}

/// `[limits]`: caps replicated into the state machine, plus the API's default TTL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub default_limit: u32,
    pub max_limit: u32,
    /// TTL of an acquire that names none (API-side, not replicated).
    pub default_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub max_retry_after_ms: u64,
    pub max_period_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            default_limit: s.default_limit,
            max_limit: s.max_limit,
            default_ttl_ms: 60_000,
            max_ttl_ms: s.max_ttl_ms,
            max_retry_after_ms: s.max_retry_after_ms,
            max_period_ms: s.max_period_ms,
        }
    }
}

/// `[server]`: the HTTP layer and the leader's write pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// How long a request may wait for the cluster (leader election, quorum) before
    /// the answer is 503 `unavailable`.
    pub request_timeout_ms: u64,
    pub max_body_bytes: usize,
    /// Most ops the leader packs into one log entry.
    pub batch_max_ops: usize,
    /// Log entries the leader keeps in flight at once; requests arriving meanwhile
    /// accumulate into the next entry.
    pub batch_max_in_flight: usize,
    /// How often the leader proposes housekeeping (expire dead leases, advance time).
    pub expire_interval_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout_ms: u64,
    /// Most open connections per listener (API and Raft each); further connections
    /// are closed at once, so a flood cannot exhaust file descriptors or memory.
    pub max_connections: usize,
    /// A client must send its complete request headers within this time, or the
    /// connection is closed (slowloris).
    pub header_read_timeout_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            request_timeout_ms: 5000,
            max_body_bytes: 65536,
            batch_max_ops: 512,
            batch_max_in_flight: 3,
            expire_interval_ms: 1000,
            drain_timeout_ms: 10_000,
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
        }
    }
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// At most `limit` live leases on each key matching `pattern` (`org:*`, `global`).
    Concurrency {
        name: String,
        pattern: String,
        limit: u32,
    },
    /// `limit` requests per `period_ms`, bursts of up to `burst` (default `limit`).
    Rate {
        name: String,
        limit: u32,
        period_ms: u64,
        #[serde(default)]
        burst: Option<u32>,
    },
}

impl PolicyConfig {
    pub fn name(&self) -> &str {
        match self {
            PolicyConfig::Concurrency { name, .. } | PolicyConfig::Rate { name, .. } => name,
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
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
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
        Self::parse(&text, path, std::env::vars())
    }

    /// Parse `text` as if read from `path` (relative `data_dir` resolves against the
    /// path's directory), applying overrides from `env`, then validate.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ServerError> {
        let err = |message: String| ServerError::Config {
            path: path.to_path_buf(),
            message,
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let peer_addrs = match env.iter().find(|(k, _)| k == PEER_ADDRS_ENV) {
            Some((_, v)) => {
                parse_peer_addrs(v).map_err(|m| err(format!("{PEER_ADDRS_ENV}: {m}")))?
            }
            None => BTreeMap::new(),
        };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let applied = apply_env(&mut doc, env).map_err(err)?;
        let mut config: ClusterConfig = if applied.is_empty() {
            // Straight from the text: errors carry line and column.
            toml::from_str(text).map_err(|e| err(e.to_string()))?
        } else {
            toml::Value::Table(doc).try_into().map_err(|e| {
                err(format!(
                    "{e} (environment overrides: {})",
                    applied.join(", ")
                ))
            })?
        };
        let env_data_dir = applied.iter().any(|v| v == "QUORATE_DATA_DIR");
        if config.data_dir.is_relative() && !env_data_dir {
            // Relative to the file, so `quorate serve --config /etc/q/cluster.toml`
            // works from any working directory. A relative QUORATE_DATA_DIR stays
            // relative to the working directory, as shell users expect.
            let base = path.parent().unwrap_or(Path::new(""));
            config.data_dir = base.join(&config.data_dir);
        }
        config.source = path.to_path_buf();
        config.peer_addrs = peer_addrs;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Check everything that can be checked without touching the network or disk.
    fn validate(&self) -> Result<(), String> {
        if self.cluster_id.trim().is_empty() {
            return Err("cluster_id must not be empty".into());
        }
        if self.nodes.is_empty() {
            return Err("at least one [[nodes]] entry is required".into());
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for n in &self.nodes {
            if n.id == 0 {
                return Err("node id 0 is reserved; ids start at 1".into());
            }
            if !ids.insert(n.id) {
                return Err(format!("duplicate node id {}", n.id));
            }
            for (what, addr) in [("api_addr", &n.api_addr), ("raft_addr", &n.raft_addr)] {
                check_addr(addr).map_err(|m| format!("node {} {what} {addr:?}: {m}", n.id))?;
                if !addrs.insert(addr.as_str()) {
                    return Err(format!(
                        "node {} {what} {addr:?} is used twice (every api_addr and raft_addr must be distinct)",
                        n.id
                    ));
                }
            }
        }

        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err("raft.heartbeat_interval_ms must be at least 1".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err(format!(
                "raft.election_timeout_min_ms ({}) must exceed raft.heartbeat_interval_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_interval_ms
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(format!(
                "raft.election_timeout_max_ms ({}) must exceed raft.election_timeout_min_ms ({})",
                r.election_timeout_max_ms, r.election_timeout_min_ms
            ));
        }
        if r.snapshot_logs_since_last == 0 {
            return Err("raft.snapshot_logs_since_last must be at least 1".into());
        }
        if r.install_snapshot_timeout_ms == 0 || r.connect_timeout_ms == 0 {
            return Err(
                "raft.install_snapshot_timeout_ms and raft.connect_timeout_ms must be at least 1"
                    .into(),
            );
        }

        let s = &self.server;
        if s.request_timeout_ms == 0 {
            return Err("server.request_timeout_ms must be at least 1".into());
        }
        if s.request_timeout_ms <= r.heartbeat_interval_ms {
            return Err(format!(
                "server.request_timeout_ms ({}) must exceed raft.heartbeat_interval_ms ({})",
                s.request_timeout_ms, r.heartbeat_interval_ms
            ));
        }
        if s.max_body_bytes == 0 {
            return Err("server.max_body_bytes must be at least 1".into());
        }
        if s.batch_max_ops == 0 || s.batch_max_in_flight == 0 {
            return Err(
                "server.batch_max_ops and server.batch_max_in_flight must be at least 1".into(),
            );
        }
        if s.expire_interval_ms == 0 {
            return Err("server.expire_interval_ms must be at least 1".into());
        }
        if self.server.max_connections == 0 || self.server.header_read_timeout_ms == 0 {
            return Err(
                "server.max_connections and server.header_read_timeout_ms must be at least 1"
                    .into(),
            );
        }

        let settings = self.settings();
        validate::settings(&settings).map_err(|e| format!("[limits]: {e}"))?;
        if self.limits.default_ttl_ms == 0 || self.limits.default_ttl_ms > self.limits.max_ttl_ms {
            return Err(format!(
                "limits.default_ttl_ms ({}) must be in 1..=limits.max_ttl_ms ({})",
                self.limits.default_ttl_ms, self.limits.max_ttl_ms
            ));
        }

        let mut names = BTreeSet::new();
        for p in &self.policies {
            let name = p.name();
            validate::name("name", name).map_err(|e| format!("policy {name:?}: {e}"))?;
            if !names.insert(name) {
                return Err(format!("duplicate policy name {name:?}"));
            }
            match p.to_policy() {
                Policy::Concurrency { pattern, limit } => {
                    validate::pattern(&pattern).map_err(|e| format!("policy {name:?}: {e}"))?;
                    validate::limit("limit", limit, &settings)
                        .map_err(|e| format!("policy {name:?}: {e}"))?;
                }
                Policy::Rate(spec) => {
                    validate::rate_spec(&spec, &settings)
                        .map_err(|e| format!("policy {name:?}: {e}"))?;
                }
            }
        }
        for (name, m) in &self.tiers {
            validate::name("name", name).map_err(|e| format!("tier {name:?}: {e}"))?;
            let milli = m
                .milli()
                .ok_or_else(|| format!("tier {name:?}: multiplier must be a positive number"))?;
            validate::multiplier(milli).map_err(|e| format!("tier {name:?}: {e}"))?;
        }
        Ok(())
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
        put_str(&mut buf, "quorate-config-v1");
        let s = self.settings();
        for v in [
            u64::from(s.default_limit),
            u64::from(s.max_limit),
            s.max_ttl_ms,
            s.max_retry_after_ms,
            s.max_period_ms,
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
        quorate_core::state::fnv1a(&buf)
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

    /// openraft's configuration for this cluster.
    pub fn raft_config(&self) -> Result<openraft::Config, ServerError> {
        let r = &self.raft;
        let config = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
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

    /// Load the `[tls]` material, if configured.
    pub fn tls(&self) -> Result<Option<Tls>, ServerError> {
        let base = self.source.parent().unwrap_or_else(|| Path::new("."));
        self.tls
            .as_ref()
            .map(|t| t.load(base))
            .transpose()
            .map_err(|message| ServerError::Config {
                path: self.source.clone(),
                message,
            })
    }

    /// Resolve the `[auth]` secrets (files relative to the config file, env vars).
    pub fn auth(&self) -> Result<(ApiAuth, PeerAuth), ServerError> {
        let base = self.source.parent().unwrap_or_else(|| Path::new("."));
        self.auth
            .resolve(&self.cluster_id, base)
            .map_err(|message| ServerError::Config {
                path: self.source.clone(),
                message,
            })
    }

    /// The HTTP layer's settings for node `node_id` (open auth: loopback only; the
    /// caller installs the resolved tokens).
    pub fn api_config(&self, node_id: u64) -> ApiConfig {
        ApiConfig {
            auth: ApiAuth::default(),
            node_id,
            default_ttl_ms: self.limits.default_ttl_ms,
            max_body_bytes: self.server.max_body_bytes,
            request_timeout: self.request_timeout(),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }
}

/// `QUORATE_PEER_ADDRS`: `id=host:port` pairs separated by commas (blank = none).
fn parse_peer_addrs(value: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut map = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("{pair:?}: node id must be a positive integer"))?;
        let addr = addr.trim();
        check_addr(addr).map_err(|m| format!("{pair:?}: {m}"))?;
        if map.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is named twice"));
        }
    }
    Ok(map)
}

/// `host:port` with a non-zero port (host names are allowed: containers).
fn check_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    if host.is_empty() {
        return Err("missing host".into());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be in 1..=65535".into()),
        Ok(_) => Ok(()),
    }
}

/// Apply `QUORATE_*` overrides to the parsed document. Returns the names of the
/// variables applied (for error messages).
fn apply_env(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        match rest.as_str() {
            "cluster_id" | "data_dir" => {
                doc.insert(rest, toml::Value::String(value));
                applied.push(name);
                continue;
            }
            _ => {}
        }
        let Some((section, key)) = ENV_SECTIONS.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (*s, k.to_string()))
        }) else {
            continue; // QUORATE_LOG and friends: not config.
        };
        // Every key of the overridable sections is a non-negative integer.
        let v: i64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| format!("{name}={value:?}: expected a non-negative integer"))?;
        let table = doc
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(table) = table else {
            return Err(format!("[{section}] must be a table"));
        };
        table.insert(key, toml::Value::Integer(v));
        applied.push(name);
    }
    Ok(applied)
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

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<ClusterConfig, ServerError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        ClusterConfig::parse(text, Path::new("/etc/quorate/cluster.toml"), env)
    }

    fn message(r: Result<ClusterConfig, ServerError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
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
        assert_eq!(c.raft.heartbeat_interval_ms, 50);
        assert_eq!(c.raft.election_timeout_min_ms, 500);
        assert_eq!(c.limits.default_limit, 7);
        assert_eq!(c.server.request_timeout_ms, 5000);
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.server.batch_max_ops, 512);
        assert_eq!(c.server.expire_interval_ms, 1000);
        assert_eq!(c.node(2).unwrap().raft_addr, "127.0.0.1:7202");
        assert!(matches!(
            c.node(9),
            Err(ServerError::UnknownNode { id: 9, .. })
        ));
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
        assert_eq!(c.raft.heartbeat_interval_ms, 40);
        assert_eq!(c.raft.election_timeout_min_ms, 300);
        assert_eq!(c.raft.election_timeout_max_ms, 600);
        assert_eq!(c.limits.default_limit, 3);
        assert_eq!(c.limits.default_ttl_ms, 1500);
        assert_eq!(c.limits.max_ttl_ms, 90000);
        assert_eq!(c.server.request_timeout_ms, 2500);
        assert_eq!(c.api_config(1).request_timeout, Duration::from_millis(2500));
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
        let m = message(parse(
            SAMPLE,
            &[("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS", "fast")],
        ));
        assert!(m.contains("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS"), "{m}");
        assert!(m.contains("/etc/quorate/cluster.toml"), "{m}");
        let m = message(parse(SAMPLE, &[("QUORATE_SERVER_REQUEST_TIMOUT_MS", "5")]));
        assert!(m.contains("request_timout_ms"), "{m}");
        assert!(m.contains("QUORATE_SERVER_REQUEST_TIMOUT_MS"), "{m}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let m = message(parse(
            &SAMPLE.replace("[raft]", "[raft]\nheartbeat_ms = 5"),
            &[],
        ));
        assert!(m.contains("/etc/quorate/cluster.toml"), "{m}");
        assert!(m.contains("heartbeat_ms"), "{m}");
        let m = message(parse(&format!("extra = 1\n{SAMPLE}"), &[]));
        assert!(m.contains("extra"), "{m}");
        let m = message(parse(
            &SAMPLE.replace("kind = \"rate\"", "kind = \"speed\""),
            &[],
        ));
        assert!(m.contains("speed"), "{m}");
    }

    #[test]
    fn validation_catches_inconsistent_clusters() {
        let dup_id = SAMPLE.replace("id = 2", "id = 1");
        assert!(message(parse(&dup_id, &[])).contains("duplicate node id 1"));

        let shared = SAMPLE.replace("127.0.0.1:7202", "127.0.0.1:7102");
        assert!(message(parse(&shared, &[])).contains("used twice"));

        let same_node = SAMPLE.replace("127.0.0.1:7201", "127.0.0.1:7101");
        assert!(message(parse(&same_node, &[])).contains("used twice"));

        let no_port = SAMPLE.replace("127.0.0.1:7201", "127.0.0.1");
        assert!(message(parse(&no_port, &[])).contains("port"));

        let m = message(parse(
            SAMPLE,
            &[
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MIN_MS", "40"),
                ("QUORATE_RAFT_HEARTBEAT_INTERVAL_MS", "50"),
            ],
        ));
        assert!(m.contains("election_timeout_min_ms"), "{m}");

        let m = message(parse(
            SAMPLE,
            &[
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MIN_MS", "800"),
                ("QUORATE_RAFT_ELECTION_TIMEOUT_MAX_MS", "800"),
            ],
        ));
        assert!(m.contains("election_timeout_max_ms"), "{m}");

        let m = message(parse(SAMPLE, &[("QUORATE_SERVER_REQUEST_TIMEOUT_MS", "0")]));
        assert!(m.contains("request_timeout_ms"), "{m}");
    }

    #[test]
    fn validation_applies_core_rules_to_policies_and_tiers() {
        let dup = SAMPLE.replace("name = \"anon\"", "name = \"orgs\"");
        assert!(message(parse(&dup, &[])).contains("duplicate policy name"));

        let bad_pattern = SAMPLE.replace("org:*", "org:*:x");
        assert!(message(parse(&bad_pattern, &[])).contains("orgs"));

        let zero_limit = SAMPLE.replace("limit = 5", "limit = 0");
        assert!(message(parse(&zero_limit, &[])).contains("orgs"));

        let zero_tier = SAMPLE.replace("trial = 0.5", "trial = 0");
        assert!(message(parse(&zero_tier, &[])).contains("trial"));

        let neg_tier = SAMPLE.replace("trial = 0.5", "trial = -2");
        assert!(message(parse(&neg_tier, &[])).contains("trial"));

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
        let c = ClusterConfig::parse(
            &std::fs::read_to_string(&path).unwrap(),
            &path,
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.policies.len(), 5);
        assert_eq!(c.tiers().len(), 3);
    }
}
