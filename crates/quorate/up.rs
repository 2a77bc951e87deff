//! `quorate up`: run every node of a `cluster.toml` on this machine.
//!
//! Each node is a child process of this same executable (`quorate serve --config ...
//! --node N`), so `up` exercises exactly what a real deployment runs: separate
//! processes, separate data directories, real sockets. Their stdout and stderr are
//! streamed line by line with a `[node-N]` prefix.
//!
//! On Ctrl-C or SIGTERM every child gets SIGTERM (graceful: drain, stop Raft, flush);
//! children still running after the drain timeout plus a grace period are killed. If
//! a child exits on its own, the others are stopped too and `up` fails, so a broken
//! config or a port already in use is not hidden behind two healthy nodes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use quorate_server::ClusterConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The cluster description; every `[[nodes]]` entry is started.
    #[arg(long, short, default_value = "cluster.toml", env = "QUORATE_CONFIG")]
    config: PathBuf,
}

struct Running {
    id: u64,
    child: Child,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Validate once here so a bad file fails fast with one message, not three.
    let config = ClusterConfig::load(&args.config)?;
    let exe = std::env::current_exe().context("cannot locate the quorate executable")?;
    let color = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        "always"
    } else {
        "never"
    };

    let mut nodes = Vec::new();
    let mut pipes = JoinSet::new();
    for n in &config.nodes {
        let mut child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&args.config)
            .arg("--node")
            .arg(n.id.to_string())
            .env("QUORATE_LOG_COLOR", color)
            // The nodes share this machine: one runtime thread each spends less CPU
            // per decision ([server] worker_threads), unless the file or the
            // environment chose (both are in `config`).
            .env(
                "QUORATE_SERVER_WORKER_THREADS",
                config.server.worker_threads.max(1).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {}", n.id))?;
        let prefix = format!("[node-{}] ", n.id);
        if let Some(out) = child.stdout.take() {
            pipes.spawn(stream(out, prefix.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            pipes.spawn(stream(err, prefix, true));
        }
        eprintln!(
            "quorate up: node {} (api http://{}, raft {}) pid {}",
            n.id,
            n.api_addr,
            n.raft_addr,
            child.id().unwrap_or(0)
        );
        nodes.push(Running { id: n.id, child });
    }

    // Run until a signal, or until some node exits by itself.
    let exited = tokio::select! {
        _ = quorate_server::run::shutdown_signal() => None,
        exited = first_exit(&mut nodes) => Some(exited),
    };
    if let Some((id, status)) = &exited {
        eprintln!("quorate up: node {id} exited ({status}); stopping the others");
    } else {
        eprintln!("quorate up: stopping all nodes");
    }

    let grace = config.server.drain_timeout_ms.get() + Duration::from_secs(5);
    let mut failed = Vec::new();
    let mut stopping = JoinSet::new();
    for mut node in nodes {
        stopping.spawn(async move {
            let status = stop(&mut node.child, grace).await;
            (node.id, status)
        });
    }
    while let Some(r) = stopping.join_next().await {
        if let Ok((id, Err(e))) = r {
            failed.push(format!("node {id}: {e}"));
        }
    }
    // Let the output pipes drain (they end when the children close them).
    while pipes.join_next().await.is_some() {}

    match exited {
        Some((id, status)) => anyhow::bail!("node {id} exited unexpectedly ({status})"),
        None if !failed.is_empty() => anyhow::bail!("{}", failed.join("; ")),
        None => Ok(()),
    }
}

/// Wait for the first child to exit; returns its id and a description of its status.
async fn first_exit(nodes: &mut [Running]) -> (u64, String) {
    let waits = nodes.iter_mut().map(|n| {
        Box::pin(async move {
            let status = n.child.wait().await;
            (
                n.id,
                match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                },
            )
        })
    });
    futures::future::select_all(waits).await.0
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn stop(child: &mut Child, grace: Duration) -> Result<(), String> {
    if let Ok(Some(status)) = child.try_wait() {
        return exit_result(status);
    }
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => exit_result(status),
        Ok(Err(e)) => Err(format!("wait failed: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("did not stop within {} s; killed", grace.as_secs()))
        }
    }
}

fn exit_result(status: std::process::ExitStatus) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("exited with {status}"))
    }
}

/// Copy lines from a child's pipe to our stdout or stderr with `prefix`.
async fn stream(pipe: impl AsyncRead + Unpin, prefix: String, to_stderr: bool) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if to_stderr {
                    eprintln!("{prefix}{text}");
                } else {
                    println!("{prefix}{text}");
                }
            }
        }
    }
}
