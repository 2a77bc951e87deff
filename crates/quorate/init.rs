//! `quorate init`: write a `cluster.toml` for a local cluster on chosen ports.
//!
//! Starts from a base file (the repository's `cluster.toml` by default, so the seed
//! policies and tiers come along), replaces its nodes with `--nodes` loopback nodes on
//! consecutive ports from `--api-port` and `--raft-port`, and prints the result,
//! serialized from the typed configuration. Scripts (`scripts/fuzz_api.sh`) use it
//! instead of string templates, so the file they run is always one the node accepts.

use std::path::PathBuf;

use anyhow::Context;
use quorate_server::ClusterConfig;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// File to start from (its policies, tiers and settings are kept).
    #[arg(long, default_value = "cluster.toml")]
    from: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// API port of node 1; node i gets api_port + i - 1.
    #[arg(long, default_value_t = 7101)]
    api_port: u16,
    /// Raft port of node 1; node i gets raft_port + i - 1.
    #[arg(long, default_value_t = 7201)]
    raft_port: u16,
    /// The cluster's id (default: the base file's).
    #[arg(long)]
    cluster_id: Option<String>,
    /// Data directory (relative paths resolve against the written file's folder).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Print the configuration to stdout.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let base = ClusterConfig::load(&args.from)
        .with_context(|| format!("reading the base file {}", args.from.display()))?;
    let ports = |first: u16| -> anyhow::Result<Vec<u16>> {
        (0..args.nodes)
            .map(|i| {
                first
                    .checked_add(i)
                    .context("ports run past 65535; pick lower first ports")
            })
            .collect()
    };
    let mut config = base.with_local_nodes(&ports(args.api_port)?, &ports(args.raft_port)?);
    if let Some(id) = args.cluster_id {
        config.cluster_id = id;
    }
    config.data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
    print!("{}", config.to_toml());
    Ok(())
}
