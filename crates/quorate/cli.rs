//! Operator commands: `quorate status`, `limits`, `slots`, `acquire`, `release`,
//! `rate`, `policies`, `members`.
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

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use quorate_client::{Client, ClientConfig, Error as ClientError};
use quorate_proto as proto;
use serde::Serialize;

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
        cmd: LimitsCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Slot usage.
    Slots {
        #[command(subcommand)]
        cmd: SlotsCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Take one slot on every key (all or nothing); prints the lease. The lease is
    /// NOT released when the command exits: release it or let its TTL run out.
    Acquire {
        #[arg(required = true)]
        keys: Vec<String>,
        /// Lease TTL in milliseconds (cluster default if absent).
        #[arg(long)]
        ttl_ms: Option<u64>,
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
        cmd: RateCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Named policies and tiers.
    Policies {
        #[command(subcommand)]
        cmd: PoliciesCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Cluster membership.
    Members {
        #[command(subcommand)]
        cmd: MembersCmd,
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
            | Ops::Members { target, .. } => target,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// Set a per-key override.
    Set { key: String, limit: u32 },
    /// Show a key's effective limit and where it comes from.
    Get { key: String },
    /// List overrides and keys in use.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        /// Also show the used column (always fetched; this only widens the table).
        #[arg(long)]
        with_usage: bool,
        #[arg(long)]
        max: Option<u32>,
    },
    /// Delete a per-key override.
    Delete { key: String },
}

#[derive(Debug, Subcommand)]
pub enum SlotsCmd {
    /// Holders, fencing tokens and expiries of a key's live leases.
    Show { key: String },
}

#[derive(Debug, Subcommand)]
pub enum RateCmd {
    /// Check (and charge, if allowed) one request.
    Check {
        key: String,
        #[arg(long, conflicts_with_all = ["limit", "period_ms", "burst"])]
        policy: Option<String>,
        #[arg(long, requires = "policy")]
        tier: Option<String>,
        #[arg(long)]
        cost: Option<u32>,
        #[arg(long, requires = "period_ms")]
        limit: Option<u32>,
        #[arg(long, requires = "limit")]
        period_ms: Option<u64>,
        #[arg(long, requires = "limit")]
        burst: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoliciesCmd {
    /// List policies and tiers.
    List,
    /// Create or replace a policy.
    Set {
        name: String,
        /// `concurrency` (needs --pattern and --limit) or `rate` (--limit, --period-ms).
        #[arg(long, value_parser = ["concurrency", "rate"])]
        kind: String,
        #[arg(long)]
        pattern: Option<String>,
        #[arg(long)]
        limit: u32,
        #[arg(long)]
        period_ms: Option<u64>,
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Delete a policy.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// Add a node as learner, then promote it to voter (unless --learner-only).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        api_addr: String,
        #[arg(long)]
        raft_addr: String,
        #[arg(long)]
        learner_only: bool,
    },
    /// Remove a node from the cluster.
    Remove { id: u64 },
}

/// Node URLs from --node, else from the cluster file's `[[nodes]] api_addr`.
fn node_urls(t: &Target) -> anyhow::Result<Vec<String>> {
    if !t.nodes.is_empty() {
        return Ok(t.nodes.clone());
    }
    let config = quorate_server::config::ClusterConfig::load(&t.config).with_context(|| {
        format!(
            "no --node given and cannot load {} (pass --node http://host:port)",
            t.config.display()
        )
    })?;
    Ok(config
        .nodes
        .iter()
        .map(|n| {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", n.api_addr)
        })
        .collect())
}

/// Outcome of a CLI command: the process exit code.
pub type ExitCode = i32;

/// Map a client error to a message and exit code.
fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ClientError::LimitExceeded { .. } => 3,
        ClientError::Unavailable(_) => 4,
        _ => 1,
    }
}

fn print_json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

/// Print rows as an aligned table.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn source_str(e: &proto::LimitEntry) -> String {
    match (&e.source, &e.policy) {
        (proto::LimitSource::Policy, Some(p)) => format!("policy:{p}"),
        (proto::LimitSource::Policy, None) => "policy".into(),
        (proto::LimitSource::Override, _) => "override".into(),
        (proto::LimitSource::Default, _) => "default".into(),
    }
}

/// Run one operator command.
pub async fn run(cmd: Ops) -> anyhow::Result<ExitCode> {
    let t = cmd.target().clone();
    let urls = node_urls(&t)?;
    let mut cfg = ClientConfig::new(urls.clone());
    cfg.token = t.token.clone();
    cfg.deadline = Duration::from_millis(t.timeout_ms);
    cfg.request_timeout = Duration::from_millis(t.timeout_ms.clamp(100, 3000));
    cfg.holder = "quorate-cli".into();
    if let Some(path) = &t.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(path).with_context(|| format!("reading --ca-file {}", path.display()))?,
        );
    }
    let client = Client::new(cfg)?;
    let json = t.json;

    macro_rules! try_client {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Ok(fail(&e)),
            }
        };
    }

    match cmd {
        Ops::Status { .. } => {
            let mut views = Vec::new();
            for u in &urls {
                let ready = client.ready_at(u).await;
                views.push((u.clone(), client.cluster_at(u).await, ready));
            }
            if json {
                let out: Vec<_> = views
                    .iter()
                    .map(|(u, r, ready)| match r {
                        Ok(c) => serde_json::json!({"node": u, "ready": ready, "cluster": c}),
                        Err(e) => {
                            serde_json::json!({"node": u, "ready": false, "error": e.to_string()})
                        }
                    })
                    .collect();
                print_json(&out);
            } else {
                let rows = views
                    .iter()
                    .map(|(u, r, ready)| match r {
                        Ok(c) => vec![
                            c.node_id.to_string(),
                            u.clone(),
                            if c.leader_id == Some(c.node_id) {
                                "leader".into()
                            } else {
                                "follower".into()
                            },
                            opt(c.leader_id),
                            c.term.to_string(),
                            opt(c.committed_index),
                            opt(c.applied_index),
                            if *ready {
                                "ready".into()
                            } else {
                                "not ready".into()
                            },
                            c.state_digest.clone(),
                        ],
                        Err(e) => vec![
                            "?".into(),
                            u.clone(),
                            "down".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            format!("unreachable ({})", short(&e.to_string())),
                            "-".into(),
                        ],
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "NODE",
                        "ROLE",
                        "LEADER",
                        "TERM",
                        "COMMITTED",
                        "APPLIED",
                        "HEALTH",
                        "DIGEST",
                    ],
                    rows,
                );
                if let Some(Ok(c)) = views.iter().map(|v| &v.1).find(|r| r.is_ok()) {
                    println!();
                    members_table(&c.members);
                }
            }
            let any_up = views.iter().any(|v| v.1.is_ok());
            Ok(if any_up { 0 } else { 4 })
        }
        Ops::Limits {
            cmd: LimitsCmd::Set { key, limit },
            ..
        } => {
            let r = try_client!(client.set_limit(&key, limit).await);
            if json {
                print_json(&r);
            } else {
                println!("limit of {} set to {}", r.key, r.limit);
            }
            Ok(0)
        }
        Ops::Limits {
            cmd: LimitsCmd::Get { key },
            ..
        } => {
            let e = try_client!(client.get_limit(&key).await);
            if json {
                print_json(&e);
            } else {
                table(
                    &["KEY", "LIMIT", "USED", "SOURCE"],
                    vec![vec![
                        e.key.clone(),
                        e.limit.to_string(),
                        e.used.to_string(),
                        source_str(&e),
                    ]],
                );
            }
            Ok(0)
        }
        Ops::Limits {
            cmd:
                LimitsCmd::List {
                    prefix,
                    with_usage,
                    max,
                },
            ..
        } => {
            let r = try_client!(client.list_limits(&prefix, max).await);
            if json {
                print_json(&r);
            } else {
                let rows = r
                    .limits
                    .iter()
                    .map(|e| {
                        let mut row = vec![e.key.clone(), e.limit.to_string(), source_str(e)];
                        if with_usage {
                            row.push(e.used.to_string());
                        }
                        row
                    })
                    .collect();
                if with_usage {
                    table(&["KEY", "LIMIT", "SOURCE", "USED"], rows);
                } else {
                    table(&["KEY", "LIMIT", "SOURCE"], rows);
                }
                if r.truncated {
                    println!("(more rows matched; raise --max)");
                }
            }
            Ok(0)
        }
        Ops::Limits {
            cmd: LimitsCmd::Delete { key },
            ..
        } => {
            let deleted = try_client!(client.delete_limit(&key).await);
            if json {
                print_json(&serde_json::json!({"deleted": deleted}));
            } else if deleted {
                println!("override of {key} deleted");
            } else {
                println!("{key} had no override");
            }
            Ok(0)
        }
        Ops::Slots {
            cmd: SlotsCmd::Show { key },
            ..
        } => {
            let s = try_client!(client.slots(&key).await);
            if json {
                print_json(&s);
            } else {
                println!("{}: {}/{} slots in use", s.key, s.used, s.limit);
                if !s.leases.is_empty() {
                    table(
                        &["LEASE", "HOLDER", "TOKEN", "EXPIRES_AT_MS"],
                        s.leases
                            .iter()
                            .map(|l| {
                                vec![
                                    l.lease_id.clone(),
                                    l.holder.clone(),
                                    l.fencing_token.to_string(),
                                    l.expires_at_ms.to_string(),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Ok(0)
        }
        Ops::Acquire {
            keys,
            ttl_ms,
            lease_id,
            holder,
            ..
        } => {
            let req = proto::AcquireRequest {
                keys,
                lease_id,
                ttl_ms,
                holder: Some(holder),
            };
            let g = try_client!(client.acquire_raw(&req).await);
            if json {
                print_json(&g);
            } else {
                println!(
                    "granted lease {} (fencing token {}, expires at {} ms)",
                    g.lease_id, g.fencing_token, g.expires_at_ms
                );
                table(
                    &["KEY", "USED", "LIMIT"],
                    g.slots
                        .iter()
                        .map(|s| vec![s.key.clone(), s.used.to_string(), s.limit.to_string()])
                        .collect(),
                );
            }
            Ok(0)
        }
        Ops::Release { lease_id, .. } => {
            let released = try_client!(client.release(&lease_id).await);
            if json {
                print_json(&serde_json::json!({"released": released}));
            } else if released {
                println!("released {lease_id}");
            } else {
                println!("{lease_id} was not live (already released or expired)");
            }
            Ok(0)
        }
        Ops::Rate {
            cmd:
                RateCmd::Check {
                    key,
                    policy,
                    tier,
                    cost,
                    limit,
                    period_ms,
                    burst,
                },
            ..
        } => {
            if policy.is_none() && limit.is_none() {
                eprintln!("error: give --policy, or --limit and --period-ms");
                return Ok(2);
            }
            let req = proto::RateCheckRequest {
                key: Some(key),
                policy,
                tier,
                cost,
                limit,
                period_ms,
                burst,
                checks: None,
            };
            let r = try_client!(client.check_rates(&req).await);
            if json {
                print_json(&r);
            } else {
                println!(
                    "{}: limit {}, remaining {}, reset in {} ms{}",
                    if r.allowed { "allowed" } else { "rate limited" },
                    r.limit,
                    r.remaining,
                    r.reset_after_ms,
                    if r.allowed {
                        String::new()
                    } else {
                        format!(", retry in {} ms", r.retry_after_ms)
                    }
                );
            }
            Ok(if r.allowed { 0 } else { 3 })
        }
        Ops::Policies {
            cmd: PoliciesCmd::List,
            ..
        } => {
            let p = try_client!(client.policies().await);
            if json {
                print_json(&p);
            } else {
                println!("default concurrency limit: {}", p.default_limit);
                table(
                    &["POLICY", "KIND", "PATTERN", "LIMIT", "PERIOD_MS", "BURST"],
                    p.policies
                        .iter()
                        .map(|e| match &e.spec {
                            proto::PolicySpec::Concurrency { pattern, limit } => {
                                vec![
                                    e.name.clone(),
                                    "concurrency".into(),
                                    pattern.clone(),
                                    limit.to_string(),
                                    "-".into(),
                                    "-".into(),
                                ]
                            }
                            proto::PolicySpec::Rate {
                                limit,
                                period_ms,
                                burst,
                            } => {
                                vec![
                                    e.name.clone(),
                                    "rate".into(),
                                    "-".into(),
                                    limit.to_string(),
                                    period_ms.to_string(),
                                    opt(*burst),
                                ]
                            }
                        })
                        .collect(),
                );
                if !p.tiers.is_empty() {
                    println!();
                    table(
                        &["TIER", "MULTIPLIER"],
                        p.tiers
                            .iter()
                            .map(|t| vec![t.name.clone(), format!("x{}", t.multiplier)])
                            .collect(),
                    );
                }
            }
            Ok(0)
        }
        Ops::Policies {
            cmd:
                PoliciesCmd::Set {
                    name,
                    kind,
                    pattern,
                    limit,
                    period_ms,
                    burst,
                },
            ..
        } => {
            let spec = if kind == "concurrency" {
                let Some(pattern) = pattern else {
                    eprintln!("error: a concurrency policy needs --pattern");
                    return Ok(2);
                };
                proto::PolicySpec::Concurrency { pattern, limit }
            } else {
                let Some(period_ms) = period_ms else {
                    eprintln!("error: a rate policy needs --period-ms");
                    return Ok(2);
                };
                proto::PolicySpec::Rate {
                    limit,
                    period_ms,
                    burst,
                }
            };
            let e = try_client!(client.put_policy(&name, &spec).await);
            if json {
                print_json(&e);
            } else {
                println!("policy {} set", e.name);
            }
            Ok(0)
        }
        Ops::Policies {
            cmd: PoliciesCmd::Delete { name },
            ..
        } => {
            let deleted = try_client!(client.delete_policy(&name).await);
            if json {
                print_json(&serde_json::json!({"deleted": deleted}));
            } else {
                println!(
                    "{}",
                    if deleted {
                        format!("policy {name} deleted")
                    } else {
                        format!("no policy named {name}")
                    }
                );
            }
            Ok(0)
        }
        Ops::Members {
            cmd:
                MembersCmd::Add {
                    id,
                    api_addr,
                    raft_addr,
                    learner_only,
                },
            ..
        } => {
            let r = try_client!(
                client
                    .add_member(&proto::AddMemberRequest {
                        id,
                        api_addr,
                        raft_addr,
                        learner_only
                    })
                    .await
            );
            print_members(&r, json);
            Ok(0)
        }
        Ops::Members {
            cmd: MembersCmd::Remove { id },
            ..
        } => {
            let r = try_client!(client.remove_member(id).await);
            print_members(&r, json);
            Ok(0)
        }
    }
}

fn print_members(r: &proto::MembersResponse, json: bool) {
    if json {
        print_json(r);
    } else {
        members_table(&r.members);
    }
}

fn members_table(members: &[proto::Member]) {
    table(
        &["MEMBER", "API", "RAFT", "VOTER"],
        members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.api_addr.clone(),
                    m.raft_addr.clone(),
                    m.voter.to_string(),
                ]
            })
            .collect(),
    );
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}
