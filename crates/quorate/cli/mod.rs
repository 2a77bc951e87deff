//! Operator commands: `quorate status`, `limits`, `slots`, `acquire`, `release`,
//! `rate`, `policies`, `allowlist`, `audit`, `members`.
//!
//! Every command talks to the cluster through [`quorate_client`] (any node; the
//! client fails over), prints a human table by default and JSON with `--json`, and
//! exits non-zero with a clear message on failure. Exit codes (stable, for scripts):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the cluster refused the request (invalid input, unknown lease, conflict, ...) |
//! | 2 | usage error (bad flags; printed by clap) |
//! | 3 | denied: an acquire hit a limit, or a rate check was limited |
//! | 4 | the cluster could not be reached or had no quorum |
//!
//! This file holds the flags ([`Target`], [`Ops`]) and the dispatch; each command
//! group lives in its own file (`status`, `limits`, `slots` for acquire/release/show,
//! `rate`, `policies`, `allowlist`, `audit`, `members`) and returns a value that `render` prints, as a
//! table or as JSON, in one place. The flags, help text, output and exit codes are a
//! contract: `tests/client_cli.rs` runs every command as a process and checks them.

mod allowlist;
mod audit;
mod limits;
mod members;
mod policies;
mod rate;
mod render;
mod slots;
mod status;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use quorate_client::{Client, ClientConfig};
use quorate_proto as proto;

/// How the CLI finds the cluster and prints results.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Node base URL (repeatable), e.g. http://127.0.0.1:7101. Default: every node's
    /// api_addr from --config.
    #[arg(
        long = "node",
        global = true,
        env = "QUORATE_NODES",
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,
    /// Cluster file whose [[nodes]] api_addr values are used when no --node is given.
    #[arg(
        long,
        global = true,
        default_value = "cluster.toml",
        env = "QUORATE_CONFIG"
    )]
    pub config: std::path::PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token, if the cluster requires one.
    #[arg(long, global = true, env = "QUORATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for https:// nodes (the cluster's tls.ca_file).
    #[arg(long, global = true, env = "QUORATE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Give up after this many milliseconds of retrying across nodes.
    #[arg(long, global = true, default_value_t = 5000)]
    pub timeout_ms: u64,
}

/// Operator subcommands (flattened into the binary's command list). Each carries the
/// [`Target`] flags, so they may be given before or after the subcommand's own.
#[derive(Debug, Subcommand)]
pub enum Ops {
    /// Members, leader, term, commit/applied index and health of every node.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Per-key concurrency limits (overrides, policies, defaults).
    Limits {
        #[command(subcommand)]
        cmd: limits::LimitsCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Slot usage.
    Slots {
        #[command(subcommand)]
        cmd: slots::SlotsCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Take one slot on every key (all or nothing); prints the lease. The lease is
    /// NOT released when the command exits: release it or let its TTL run out.
    /// With --wait, waits in the keys' FIFO queue for a slot instead of exiting 3
    /// at once (exit 3 when the wait ends, printing the place it had).
    Acquire {
        #[arg(required = true)]
        keys: Vec<String>,
        /// Lease TTL in milliseconds (cluster default if absent).
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Wait up to this long for a slot: `500ms`, `30s`, `2m`, or plain
        /// milliseconds (at most the cluster's limits.max_wait_ms, 60 s by default).
        #[arg(long, value_parser = parse_wait)]
        wait: Option<Duration>,
        /// Idempotency key; generated if absent.
        #[arg(long)]
        lease_id: Option<String>,
        #[arg(long, default_value = "quorate-cli")]
        holder: String,
        #[command(flatten)]
        target: Target,
    },
    /// Release a lease (idempotent).
    Release {
        lease_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Rate limit checks.
    Rate {
        #[command(subcommand)]
        cmd: rate::RateCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Named policies and tiers.
    Policies {
        #[command(subcommand)]
        cmd: policies::PoliciesCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Keys and addresses exempt from rate limits (key globs, IPv4/IPv6 CIDRs).
    Allowlist {
        #[command(subcommand)]
        cmd: allowlist::AllowlistCmd,
        #[command(flatten)]
        target: Target,
    },
    /// The trail of admin changes: who, when, log index, before and after (admin token).
    Audit {
        #[command(flatten)]
        args: audit::AuditArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Cluster membership.
    Members {
        #[command(subcommand)]
        cmd: members::MembersCmd,
        #[command(flatten)]
        target: Target,
    },
}

impl Ops {
    fn target(&self) -> &Target {
        match self {
            Ops::Status { target }
            | Ops::Limits { target, .. }
            | Ops::Slots { target, .. }
            | Ops::Acquire { target, .. }
            | Ops::Release { target, .. }
            | Ops::Rate { target, .. }
            | Ops::Policies { target, .. }
            | Ops::Allowlist { target, .. }
            | Ops::Audit { target, .. }
            | Ops::Members { target, .. } => target,
        }
    }
}

/// Outcome of a CLI command: the process exit code.
pub type ExitCode = i32;

/// Run one operator command.
pub async fn run(cmd: Ops) -> anyhow::Result<ExitCode> {
    let t = cmd.target().clone();
    let urls = node_urls(&t)?;
    let client = connect(&t, urls.clone())?;
    let outcome = match cmd {
        Ops::Status { .. } => status::run(&client, &urls).await,
        Ops::Limits { cmd, .. } => limits::run(&client, cmd).await,
        Ops::Slots { cmd, .. } => slots::run(&client, cmd).await,
        Ops::Acquire {
            keys,
            ttl_ms,
            wait,
            lease_id,
            holder,
            ..
        } => {
            let req = proto::AcquireRequest {
                keys,
                lease_id,
                ttl_ms,
                holder: Some(holder),
                wait_ms: wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            };
            slots::acquire(&client, &req, wait).await
        }
        Ops::Release { lease_id, .. } => slots::release(&client, lease_id).await,
        Ops::Rate { cmd, .. } => rate::run(&client, cmd).await,
        Ops::Policies { cmd, .. } => policies::run(&client, cmd).await,
        Ops::Allowlist { cmd, .. } => allowlist::run(&client, cmd).await,
        Ops::Audit { args, .. } => audit::run(&client, args).await,
        Ops::Members { cmd, .. } => members::run(&client, cmd).await,
    };
    Ok(render::emit(outcome, t.json))
}

/// `--wait`: a duration with a unit (`ms`, `s`, `m`), or plain milliseconds.
fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    n.checked_mul(scale_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A client for the target: its nodes, token, CA and time budget.
fn connect(t: &Target, urls: Vec<String>) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::new(urls);
    cfg.token = t.token.clone();
    cfg.deadline = Duration::from_millis(t.timeout_ms);
    cfg.request_timeout = Duration::from_millis(t.timeout_ms.clamp(100, 3000));
    cfg.holder = "quorate-cli".into();
    if let Some(path) = &t.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display()))?,
        );
    }
    Ok(Client::new(cfg)?)
}

/// Node URLs from --node, else from the cluster file's `[[nodes]] api_addr`.
fn node_urls(t: &Target) -> anyhow::Result<Vec<String>> {
    if !t.nodes.is_empty() {
        return Ok(t.nodes.clone());
    }
    let config = quorate_server::ClusterConfig::load(&t.config).with_context(|| {
        format!(
            "no --node given and cannot load {} (pass --node http://host:port)",
            t.config.display()
        )
    })?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(config
        .nodes
        .iter()
        .map(|n| format!("{scheme}://{}", n.api_addr))
        .collect())
}
