//! `quorate-bench`: load generator and report writer for `scripts/bench.sh`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use quorate_bench::fill::{self, FillSpec};
use quorate_bench::report::{self, ReportInput};
use quorate_bench::run::{self, Route, RunSpec, Workload};
use quorate_bench::systems::{base_url, EtcdSem, Params, Protocol, System};

#[derive(Debug, Parser)]
#[command(
    name = "quorate-bench",
    about = "Benchmark quorate against Redis+Lua and etcd"
)]
struct Cli {
    /// Tokio worker threads of the load generator.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one workload against one system at one or more client counts; appends one
    /// JSON line per run to --out and prints a summary line.
    Run(RunArgs),
    /// Fill a quorate cluster with live rate keys and leases.
    Fill(FillArgs),
    /// Poll a URL until it answers 200; prints the milliseconds it took.
    WaitReady(WaitReadyArgs),
    /// Time a (re)started quorate node: until its /readyz answers 200, and until its
    /// applied index reaches the leader's commit index read at start. Prints JSON.
    CatchUp {
        /// The node's API address.
        #[arg(long)]
        node: String,
        /// Another node's API address (asked for the commit index to reach).
        #[arg(long)]
        peer: String,
        #[arg(long, default_value_t = 300.0)]
        timeout_s: f64,
        /// Give up as soon as this process is gone.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Print the leader id seen by a quorate node (`GET /v1/cluster`).
    Leader {
        #[arg(long)]
        target: String,
    },
    /// Write the markdown report.
    Report(ReportArgs),
    /// Envoy ShouldRateLimit (gRPC) beside /v1/rate/check (HTTP): a markdown table.
    Envoy(quorate_bench::envoy::EnvoyArgs),
}

#[derive(Debug, clap::Args)]
struct FillArgs {
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 1_000_000)]
    rate_keys: u64,
    #[arg(long, default_value_t = 100_000)]
    leases: u64,
    #[arg(long, default_value_t = 10_000)]
    lease_keys: u64,
    /// TTL of the leases and period of the rate buckets (both stay live this long).
    #[arg(long, default_value_t = 3_600_000)]
    live_ms: u64,
    #[arg(long, default_value = "fill")]
    tag: String,
}

#[derive(Debug, clap::Args)]
struct WaitReadyArgs {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    #[arg(long)]
    results: PathBuf,
    #[arg(long)]
    extras: Option<PathBuf>,
    #[arg(long)]
    profile: Option<PathBuf>,
    #[arg(long)]
    notes: Option<PathBuf>,
    #[arg(long, default_value = "")]
    command: String,
    #[arg(long, default_value = "/tmp")]
    data_dir: String,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[arg(long, value_enum)]
    system: System,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Concurrent clients; a comma-separated list runs one cell per value.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    clients: Vec<usize>,
    /// Attempts per cell (acquires or rate checks), the same for every system.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Addresses (host:port) of the nodes / members; clients are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<String>,
    /// Append one JSON line per run here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Cap on one cell's measured phase.
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// How long a granted slot is held before release.
    #[arg(long, default_value_t = 1.0)]
    hold_ms: f64,
    /// Wait after a denied acquire before the next attempt.
    #[arg(long, default_value_t = 1.0)]
    deny_backoff_ms: f64,
    #[arg(long, default_value_t = 32)]
    org_limit: u32,
    #[arg(long, default_value_t = 1_000_000)]
    global_limit: u32,
    #[arg(long, default_value_t = 10_000)]
    org_keys: u32,
    #[arg(long, default_value_t = 100_000)]
    rate_keys: u32,
    #[arg(long, default_value_t = 30_000)]
    ttl_ms: u64,
    #[arg(long, default_value_t = 100)]
    rate_limit: u32,
    #[arg(long, default_value_t = 60_000)]
    rate_period_ms: u64,
    #[arg(long, default_value_t = 100)]
    rate_burst: u32,
    /// PIDs of the system's server processes, to report their CPU use.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// A name per pid, in the same order (quorate: the node ids, so the report can
    /// tell the leader from the followers).
    #[arg(long, value_delimiter = ',')]
    pid_names: Vec<String>,
    /// How quorate clients pick nodes: round-robin over --targets (followers
    /// forward), or every client to the leader, following its hint.
    #[arg(long, value_enum, default_value = "round-robin")]
    route: Route,
    /// How quorate clients send decisions: an HTTP/1.1 request each, or frames on a
    /// decision stream (`POST /v1/stream`), one stream per client.
    #[arg(long, value_enum, default_value = "http")]
    protocol: Protocol,
    /// A label added to the run's variant (e.g. "appendfsync always" for Redis with
    /// an fsync'd append-only file).
    #[arg(long, default_value = "")]
    label: String,
    /// etcd semaphore recipe.
    #[arg(long, value_enum, default_value = "ticket")]
    etcd_sem: EtcdSem,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async_main(cli.cmd))
}

async fn async_main(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => run_cells(a).await,
        Cmd::Fill(a) => fill_cluster(a).await,
        Cmd::WaitReady(a) => wait_ready(a).await,
        Cmd::CatchUp {
            node,
            peer,
            timeout_s,
            pid,
        } => catch_up(&node, &peer, timeout_s, pid).await,
        Cmd::Leader { target } => print_leader(&target).await,
        Cmd::Report(a) => write_report(a),
        Cmd::Envoy(a) => quorate_bench::envoy::compare(&a).await.map(drop),
    }
}

async fn fill_cluster(a: FillArgs) -> anyhow::Result<()> {
    let r = fill::fill(FillSpec {
        targets: a.targets,
        clients: a.clients,
        rate_keys: a.rate_keys,
        leases: a.leases,
        lease_keys: a.lease_keys,
        ttl_ms: a.live_ms,
        rate_period_ms: a.live_ms,
        tag: a.tag,
    })
    .await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

async fn wait_ready(a: WaitReadyArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()?;
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http.get(&a.url).send().await {
            if r.status().is_success() {
                println!("{}", t0.elapsed().as_millis());
                return Ok(());
            }
        }
        if t0.elapsed().as_secs_f64() > a.timeout_s {
            bail!("{} not ready after {} s", a.url, a.timeout_s);
        }
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
    }
}

async fn print_leader(target: &str) -> anyhow::Result<()> {
    let base = base_url(target);
    let c: quorate_proto::ClusterResponse = reqwest::get(format!("{base}/v1/cluster"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    match c.leader_id {
        Some(id) => println!("{id}"),
        None => bail!("no leader known"),
    }
    Ok(())
}

fn write_report(a: ReportArgs) -> anyhow::Result<()> {
    let input = ReportInput {
        results: report::read_results(&a.results)
            .with_context(|| format!("reading {}", a.results.display()))?,
        extras: match a.extras {
            Some(p) => report::read_extras(&p).unwrap_or_default(),
            None => Vec::new(),
        },
        command: a.command,
        data_dir: a.data_dir,
        notes: a
            .notes
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default(),
        profile: a
            .profile
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default(),
    };
    let md = report::render(&input);
    if let Some(out) = a.out {
        std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    }
    print!("{md}");
    Ok(())
}

/// The label of non-default settings, shown next to the workload in the report.
fn variant(a: &RunArgs) -> String {
    let mut v = Vec::new();
    if a.workload != Workload::Rate && a.hold_ms == 0.0 {
        v.push("no hold".to_owned());
    }
    if a.system == System::Etcd && a.workload != Workload::Rate && a.etcd_sem == EtcdSem::Guard {
        v.push("guard recipe".to_owned());
    }
    if a.system == System::Quorate && a.route == Route::Leader {
        v.push(Route::Leader.name().to_owned());
    }
    if a.system == System::Quorate && a.protocol == Protocol::Stream {
        v.push("stream".to_owned());
    }
    if !a.label.is_empty() {
        v.push(a.label.clone());
    }
    v.join(", ")
}

async fn catch_up(node: &str, peer: &str, timeout_s: f64, pid: Option<u32>) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(1000))
        .build()?;
    let (node, peer) = (base_url(node), base_url(peer));
    let cluster = |base: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("{base}/v1/cluster")).send().await.ok()?;
            r.json::<quorate_proto::ClusterResponse>().await.ok()
        }
    };
    let target = loop {
        if let Some(c) = cluster(peer.clone()).await {
            if let Some(i) = c.committed_index {
                break i;
            }
        }
        if t0.elapsed().as_secs_f64() > timeout_s {
            bail!("peer {peer} reports no commit index");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut ready_ms = None;
    let mut caught_ms = None;
    let mut applied = None;
    let mut exited = false;
    while t0.elapsed().as_secs_f64() <= timeout_s {
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            exited = true;
            break;
        }
        if ready_ms.is_none() {
            if let Ok(r) = http.get(format!("{node}/readyz")).send().await {
                if r.status().is_success() {
                    ready_ms = Some(t0.elapsed().as_millis());
                }
            }
        }
        if caught_ms.is_none() {
            if let Some(c) = cluster(node.clone()).await {
                applied = c.applied_index;
                if c.applied_index.is_some_and(|a| a >= target) {
                    caught_ms = Some(t0.elapsed().as_millis());
                }
            }
        }
        if ready_ms.is_some() && caught_ms.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{}",
        serde_json::json!({
            "ready_ms": ready_ms,
            "caught_up_ms": caught_ms,
            "target_index": target,
            "applied_index": applied,
            "exited": exited,
        })
    );
    if ready_ms.is_none() || caught_ms.is_none() {
        if exited {
            bail!("node {node} exited");
        }
        bail!("node {node} did not become ready and caught up within {timeout_s} s");
    }
    Ok(())
}

async fn run_cells(a: RunArgs) -> anyhow::Result<()> {
    let params = Params {
        org_limit: a.org_limit,
        global_limit: a.global_limit,
        ttl_ms: a.ttl_ms,
        rate_limit: a.rate_limit,
        rate_period_ms: a.rate_period_ms,
        rate_burst: a.rate_burst,
        etcd_sem: a.etcd_sem,
        protocol: a.protocol,
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    for &clients in &a.clients {
        let spec = RunSpec {
            system: a.system,
            workload: a.workload,
            clients,
            requests: a.requests,
            targets: a.targets.clone(),
            params: params.clone(),
            org_keys: a.org_keys,
            rate_keys: a.rate_keys,
            deny_backoff: Duration::from_secs_f64(a.deny_backoff_ms / 1000.0),
            hold: Duration::from_secs_f64(a.hold_ms / 1000.0),
            max_duration: Duration::from_secs_f64(a.max_seconds),
            run_tag: format!(
                "b{stamp}-{}-{}-{clients}",
                a.system.name(),
                a.workload.name()
            ),
            variant: variant(&a),
            server_pids: a.pids.clone(),
            pid_names: a.pid_names.clone(),
            route: a.route,
        };
        let r = run::run(spec).await.with_context(|| {
            format!(
                "{} {} {clients} clients",
                a.system.name(),
                a.workload.name()
            )
        })?;
        eprintln!(
            "{:<8} {:<6} {:<13} {} clients={:<4} ops/s={:>9.0} p50={:.2}ms p99={:.2}ms granted={} denied={} errors={} over={} max_held={} conflicts={} {:.1}s{} gen_cpu={:.0}% server_cpu={:.0}% cpu/op={:.0}+{:.0}us load={:.1}",
            r.system,
            r.workload,
            r.route,
            r.variant,
            r.clients,
            r.ops_per_s,
            r.p50_ms,
            r.p99_ms,
            r.granted,
            r.denied,
            r.errors,
            r.over_admissions,
            r.max_held,
            r.conflicts,
            r.elapsed_s,
            if r.capped { " CAPPED" } else { "" },
            r.generator_cpu_pct,
            r.server_cpu_pct,
            r.server_user_us_per_op,
            r.server_sys_us_per_op,
            r.loadavg_1m,
        );
        if !r.error_kinds.is_empty() {
            eprintln!("  errors: {:?}", r.error_kinds);
        }
        if let Some(out) = &a.out {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)
                .with_context(|| format!("opening {}", out.display()))?;
            writeln!(f, "{}", serde_json::to_string(&r)?)?;
        }
    }
    Ok(())
}
