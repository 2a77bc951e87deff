//! `quorate`: one binary to serve a node, run a local cluster, and operate it.
//!
//! This file only parses the command line, sets up logging and dispatches; each
//! subcommand lives in its own module (`up.rs`, `init.rs`, `cli/`), and the node itself is
//! `quorate_server::run::serve`.
//!
//! Logging goes to stderr through `tracing`, filtered by `QUORATE_LOG` (or `RUST_LOG`),
//! default `info` (with openraft's chatter at `warn`).

mod cli;
mod init;
mod malloc;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quorate_server::ClusterConfig;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "quorate",
    version,
    about = "A replicated limiter: concurrency slots and rate limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node of the cluster described by the config file.
    Serve(ServeArgs),
    /// Run every node of the config file as child processes (local development).
    Up(up::UpArgs),
    /// Print a cluster.toml for a local cluster on the given ports.
    Init(init::InitArgs),
    #[command(flatten)]
    Ops(cli::Ops),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The cluster description.
    #[arg(long, short, default_value = "cluster.toml", env = "QUORATE_CONFIG")]
    config: PathBuf,
    /// Which `[[nodes]]` entry this process is.
    #[arg(long, short, env = "QUORATE_NODE")]
    node: u64,
}

fn init_logging() {
    let filter = std::env::var("QUORATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,openraft=warn".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("invalid log filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let ansi = match std::env::var("QUORATE_LOG_COLOR").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

async fn serve(config: ClusterConfig, node: u64) -> anyhow::Result<()> {
    quorate_server::run::serve(config, node, quorate_server::run::shutdown_signal()).await?;
    Ok(())
}

/// The async runtime: `[server] worker_threads` of a node's configuration (0: one
/// thread per CPU, tokio's default; 1: the current thread only).
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    init_logging();
    // `serve` reads its configuration first: it sizes the runtime.
    let (config, threads) = match &cli.command {
        Command::Serve(args) => match ClusterConfig::load(&args.config) {
            Ok(c) => {
                let n = c.server.worker_threads;
                (Some(c), n)
            }
            Err(e) => {
                eprintln!("quorate: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => (None, 0),
    };
    let runtime = match runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Option<ClusterConfig>) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => match config {
            Some(config) => serve(config, args.node).await,
            None => Err(anyhow::anyhow!("the configuration was not loaded")),
        },
        Command::Up(args) => up::run(args).await,
        Command::Init(args) => init::run(args),
        Command::Ops(ops) => match cli::run(ops).await {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quorate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
