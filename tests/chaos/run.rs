//! One chaos run, end to end: start three `quorate serve` processes whose peer links
//! all go through the proxy [`Mesh`], set the limits, start the clients, apply the
//! fault plan, heal, stop the clients, demand convergence, check the history, and
//! render a summary.
//!
//! Everything random derives from the seed, which is printed first (with the
//! schedule) so that a failure can be replayed:
//! `QUORATE_CHAOS_SEED=<seed> cargo test -p quorate --test chaos`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::checker::{self, Model, RateModel, Violation};
use crate::common::{Cluster, Options};
use crate::faults::{self, Injector, Step};
use crate::history::{Call, FaultRecord, Micros, Op, Outcome, Recorder};
use crate::proxy::Mesh;
use crate::workload::{Targets, Workload, WorkloadConfig};

/// What to do to the cluster while the clients run.
#[derive(Debug, Clone)]
pub enum Plan {
    /// These steps, in order.
    Steps(Vec<Step>),
    /// Random steps from the seed until this much time has passed.
    For(Duration),
    /// No faults: just load for this long.
    Quiet(Duration),
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub plan: Plan,
    /// Start the nodes with `QUORATE_PLANTED_BUG=follower-local-grant`.
    pub planted_bug: bool,
    /// How many nodes may be replaced (the mesh gets proxies for that many more ids).
    pub max_replacements: u64,
}

#[derive(Debug)]
pub struct RunResult {
    pub violations: Vec<Violation>,
    /// Recovery or membership problems (not safety violations, but failures).
    pub liveness: Vec<String>,
    pub summary: String,
    /// Operations sent on decision streams whose outcome is definite (answered).
    pub streamed_answered: usize,
}

const TTL_MS: u64 = 4000;
const REQUEST_TIMEOUT_MS: u64 = 2000;
/// Clock slack of the checker (see `checker.rs`).
const CLOCK_SLACK: Micros = 100_000;

fn limits() -> BTreeMap<String, u32> {
    [
        ("k1-a", 1),
        ("k1-b", 1),
        ("k1-c", 1),
        ("k3-a", 3),
        ("k3-b", 3),
        ("global", 4),
    ]
    .into_iter()
    .map(|(k, l)| (k.to_string(), l))
    .collect()
}

fn rates() -> BTreeMap<String, RateModel> {
    BTreeMap::from([
        (
            "r-fast".to_string(),
            RateModel {
                limit: 20,
                period_ms: 1000,
                burst: 5,
            },
        ),
        (
            "r-slow".to_string(),
            RateModel {
                limit: 4,
                period_ms: 500,
                burst: 2,
            },
        ),
    ])
}

fn log(rec: &Recorder, msg: impl AsRef<str>) {
    println!("[chaos {:>8.3}s] {}", rec.now() as f64 / 1e6, msg.as_ref());
}

pub async fn run(cfg: RunConfig) -> RunResult {
    let rec = Recorder::new();
    let started = Instant::now();
    log_schedule(&rec, &cfg);

    // Cluster with every peer link behind a proxy.
    let max_id = 3 + cfg.max_replacements;
    let ids: Vec<u64> = (1..=max_id).collect();
    let mesh = Mesh::new(&ids);
    let mut cluster = start_cluster(&cfg, &mesh, &ids, &rec).await;
    let targets = Targets::default();
    for (id, n) in &cluster.nodes {
        targets.set(*id, &n.api_addr);
    }
    let workload = start_workload(&cfg, &targets, &rec);

    let mut injector = Injector {
        members: cluster.ids().into_iter().collect(),
        cluster: &mut cluster,
        mesh: &mesh,
        targets: &targets,
        rec: &rec,
        max_id,
        liveness: Vec::new(),
    };
    // Let the load settle before the first fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    apply_plan(&mut injector, &cfg, &rec).await;

    // Heal everything, let the clients see a healthy cluster, stop them.
    mesh.heal_all();
    if let Err(e) = injector.wait_stable().await {
        injector.liveness.push(format!("after healing: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let members = injector.members.clone();
    let mut liveness = std::mem::take(&mut injector.liveness);
    log(&rec, "stopping clients");
    workload.stop().await;

    let mut violations = Vec::new();
    let convergence =
        check_convergence(&mut cluster, &members, &mut violations, &mut liveness, &rec).await;
    let ops = rec.ops();
    let report = check_history(&ops, &rec);
    violations.extend(report.violations);
    let summary = render(
        &cfg,
        started.elapsed(),
        &ops,
        &rec.faults(),
        &Verdict {
            convergence: &convergence,
            stats: &report.stats,
            violations: &violations,
            liveness: &liveness,
        },
    );
    if !violations.is_empty() || !liveness.is_empty() {
        keep_evidence(&mut cluster, &ops, &rec);
    }
    let streamed_answered = ops
        .iter()
        .filter(|o| o.streamed && !o.outcome.is_indefinite())
        .count();
    RunResult {
        violations,
        liveness,
        summary,
        streamed_answered,
    }
}

/// Prints the seed (how to replay) and the schedule, before anything happens.
fn log_schedule(rec: &Recorder, cfg: &RunConfig) {
    log(
        rec,
        format!(
            "seed {} (replay: QUORATE_CHAOS_SEED={}), planted bug: {}",
            cfg.seed, cfg.seed, cfg.planted_bug
        ),
    );
    match &cfg.plan {
        Plan::Steps(steps) => {
            for (i, s) in steps.iter().enumerate() {
                log(rec, format!("schedule step {i}: {s}"));
            }
        }
        Plan::For(d) => log(
            rec,
            format!("schedule: random steps from the seed for {:?}", d),
        ),
        Plan::Quiet(d) => log(rec, format!("schedule: no faults, load for {d:?}")),
    }
}

/// Starts three nodes whose peer links go through `mesh` (which has proxies for every
/// id in `ids`), waits until they are ready and sets the limits.
async fn start_cluster(cfg: &RunConfig, mesh: &Mesh, ids: &[u64], rec: &Recorder) -> Cluster {
    let mut options = Options::new(3);
    options.request_timeout_ms = REQUEST_TIMEOUT_MS;
    options.default_ttl_ms = TTL_MS;
    options.env = vec![
        // Snapshot often, so restarts and the replacement node exercise snapshots.
        ("QUORATE_RAFT_SNAPSHOT_LOGS_SINCE_LAST".into(), "400".into()),
        (
            "QUORATE_RAFT_MAX_IN_SNAPSHOT_LOG_TO_KEEP".into(),
            "100".into(),
        ),
    ];
    if cfg.planted_bug {
        options
            .env
            .push(("QUORATE_PLANTED_BUG".into(), "follower-local-grant".into()));
    }
    for id in ids {
        options.node_env.insert(
            *id,
            vec![("QUORATE_PEER_ADDRS".into(), mesh.peer_addrs_env(*id))],
        );
    }
    let mut cluster = Cluster::spawn_with(options);
    for (id, n) in &cluster.nodes {
        mesh.set_target(*id, &n.raft_addr);
    }
    cluster.wait_all_ready().await;
    let leader = cluster.leader_id().await;
    log(
        rec,
        format!(
            "cluster up in {}, leader {leader}",
            cluster.dir.path().display()
        ),
    );

    // Limits first; they do not change during the run.
    for (key, limit) in limits() {
        let (status, body) = cluster
            .put(
                leader,
                &format!("/v1/limits/{key}"),
                json!({ "limit": limit }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "set limit of {key}: {body}");
    }
    cluster
}

/// Starts the clients on every limited key (and `global`) and the rate keys.
fn start_workload(cfg: &RunConfig, targets: &Targets, rec: &Recorder) -> Workload {
    let mut keys: Vec<String> = limits().into_keys().collect();
    keys.retain(|k| k != "global");
    Workload::spawn(
        WorkloadConfig {
            seed: cfg.seed,
            run: format!("s{}", cfg.seed),
            lease_workers: 10,
            readers: 2,
            rate_workers_per_key: 2,
            keys,
            global: "global".into(),
            rate_keys: rates(),
            ttl_ms: TTL_MS,
            timeout: Duration::from_millis(REQUEST_TIMEOUT_MS + 1500),
        },
        targets.clone(),
        rec.clone(),
    )
}

/// The fault phase: the plan's steps in order, random ones until its time is up, or
/// just waiting. A step that fails is a liveness problem, and the run goes on.
async fn apply_plan(injector: &mut Injector<'_>, cfg: &RunConfig, rec: &Recorder) {
    let fault_phase = Instant::now();
    let steps: Box<dyn Iterator<Item = Step>> = match cfg.plan.clone() {
        Plan::Steps(steps) => Box::new(steps.into_iter()),
        Plan::For(d) => {
            Box::new(faults::random(cfg.seed).take_while(move |_| fault_phase.elapsed() < d))
        }
        Plan::Quiet(d) => {
            tokio::time::sleep(d).await;
            return;
        }
    };
    for (i, step) in steps.enumerate() {
        log(rec, format!("step {i}: {step}"));
        if let Err(e) = injector.apply(&step).await {
            injector.liveness.push(format!("step {i} ({step}): {e}"));
        }
    }
}

/// Every member applies the same log to the same state, and only members run.
/// Returns the convergence line of the summary.
async fn check_convergence(
    cluster: &mut Cluster,
    members: &BTreeSet<u64>,
    violations: &mut Vec<Violation>,
    liveness: &mut Vec<String>,
    rec: &Recorder,
) -> String {
    let convergence = match cluster
        .try_converged(Instant::now() + Duration::from_secs(60))
        .await
    {
        Ok((applied, digest)) => {
            format!("members {members:?} all at applied index {applied}, state digest {digest}")
        }
        Err(e) => {
            violations.push(Violation {
                kind: "divergence",
                detail: e.clone(),
            });
            format!("FAILED: {e}")
        }
    };
    if cluster.running().into_iter().collect::<BTreeSet<_>>() != *members {
        liveness.push(format!(
            "running nodes {:?} are not the members {members:?}",
            cluster.running()
        ));
    }
    log(rec, format!("convergence: {convergence}"));
    convergence
}

/// Runs the checker over the recorded history against this run's limits.
fn check_history(ops: &[Op], rec: &Recorder) -> checker::Report {
    let model = Model {
        limits: limits(),
        rates: rates(),
        clock_slack: CLOCK_SLACK,
    };
    let check_started = Instant::now();
    let report = checker::check_report(ops, &model);
    log(
        rec,
        format!(
            "checked {} operations in {:.1}s",
            ops.len(),
            check_started.elapsed().as_secs_f64()
        ),
    );
    report
}

/// Keeps data and logs of a failing run, writes the history next to them and prints
/// the end of every node log.
fn keep_evidence(cluster: &mut Cluster, ops: &[Op], rec: &Recorder) {
    cluster.dir.disable_cleanup(true);
    let mut history = String::new();
    for op in ops {
        let _ = writeln!(history, "{op:?}");
    }
    for f in rec.faults() {
        let _ = writeln!(history, "{f:?}");
    }
    let path = cluster.dir.path().join("history.txt");
    if let Err(e) = std::fs::write(&path, history) {
        println!("cannot write {}: {e}", path.display());
    }
    println!("{}", cluster.tails(40));
    println!(
        "kept data, node logs and history.txt in {}",
        cluster.dir.path().display()
    );
}

fn secs(us: Micros) -> String {
    format!("{:.2}s", us as f64 / 1e6)
}

fn median(mut v: Vec<Micros>) -> Micros {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// What a run concluded, for [`render`].
pub struct Verdict<'a> {
    pub convergence: &'a str,
    pub stats: &'a checker::Stats,
    pub violations: &'a [Violation],
    pub liveness: &'a [String],
}

/// The summary printed at the end of a run (and pasted into docs/chaos.md).
pub fn render(
    cfg: &RunConfig,
    elapsed: Duration,
    ops: &[Op],
    faults: &[FaultRecord],
    verdict: &Verdict<'_>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== chaos summary ==");
    let _ = writeln!(
        s,
        "seed {} | wall time {:.0}s | planted bug: {}",
        cfg.seed,
        elapsed.as_secs_f64(),
        cfg.planted_bug
    );
    render_operations(&mut s, ops);
    render_faults(&mut s, ops, faults);
    render_verdict(&mut s, verdict);
    s
}

/// Operations by kind and outcome.
fn render_operations(s: &mut String, ops: &[Op]) {
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for op in ops {
        *by_kind
            .entry(op.call.kind())
            .or_default()
            .entry(op.outcome.label())
            .or_default() += 1;
    }
    let unknown = ops.iter().filter(|o| o.outcome.is_indefinite()).count();
    let _ = writeln!(s, "operations: {}", ops.len());
    for (kind, outcomes) in &by_kind {
        let total: usize = outcomes.values().sum();
        let detail: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        let _ = writeln!(s, "  {kind:<8} {total:>7}  ({})", detail.join(", "));
    }
    let _ = writeln!(
        s,
        "unknown outcomes: {unknown} ({:.1}%)",
        100.0 * unknown as f64 / ops.len().max(1) as f64
    );
    let streamed: Vec<&Op> = ops.iter().filter(|o| o.streamed).collect();
    let _ = writeln!(
        s,
        "sent on decision streams: {} ({} with a definite outcome)",
        streamed.len(),
        streamed
            .iter()
            .filter(|o| !o.outcome.is_indefinite())
            .count()
    );
}

/// Faults by kind, with recovery times.
fn render_faults(s: &mut String, ops: &[Op], faults: &[FaultRecord]) {
    let mut grants: Vec<(Micros, Micros)> = ops
        .iter()
        .filter(|o| matches!(o.call, Call::Acquire { .. }))
        .filter(|o| matches!(o.outcome, Outcome::Granted { .. }))
        .map(|o| (o.invoke, o.ret))
        .collect();
    grants.sort_unstable();
    let _ = writeln!(s, "faults injected: {}", faults.len());
    let _ = writeln!(
        s,
        "  {:<15} {:>5}  {:>26}  {:>26}",
        "kind", "count", "first grant after (med/max)", "stable after heal (med/max)"
    );
    let mut kinds: BTreeMap<&str, Vec<&FaultRecord>> = BTreeMap::new();
    for f in faults {
        kinds.entry(f.kind).or_default().push(f);
    }
    for (kind, fs) in &kinds {
        // Time from injecting the fault to the first grant requested after it.
        let recovery: Vec<Micros> = fs
            .iter()
            .filter_map(|f| {
                let i = grants.partition_point(|g| g.0 < f.injected);
                grants[i..]
                    .iter()
                    .map(|g| g.1)
                    .min()
                    .map(|r| r - f.injected)
            })
            .collect();
        let stable: Vec<Micros> = fs
            .iter()
            .filter_map(|f| f.stable.map(|t| t - f.healed))
            .collect();
        let fmt = |v: &Vec<Micros>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{} / {}",
                    secs(median(v.clone())),
                    secs(v.iter().copied().max().unwrap_or(0))
                )
            }
        };
        let _ = writeln!(
            s,
            "  {kind:<15} {:>5}  {:>26}  {:>26}",
            fs.len(),
            fmt(&recovery),
            fmt(&stable)
        );
    }
}

/// Convergence, what the checker verified, liveness problems and violations.
fn render_verdict(s: &mut String, verdict: &Verdict<'_>) {
    let Verdict {
        convergence,
        stats,
        violations,
        liveness,
    } = verdict;
    let _ = writeln!(s, "convergence: {convergence}");
    let peaks: Vec<String> = stats
        .peak
        .iter()
        .map(|(k, p)| format!("{k} {p}/{}", limits().get(k).copied().unwrap_or(0)))
        .collect();
    let _ = writeln!(
        s,
        "checked: {} certainly-live leases (peak per key vs limit: {}), {} presence checks \
         in reads, {} allowed rate checks, {} single-attempt waiters seen queued (FIFO)",
        stats.certain_leases,
        peaks.join(", "),
        stats.presence_checks,
        stats.rate_checks,
        stats.fifo_waiters_seen
    );
    let _ = writeln!(s, "liveness problems: {}", liveness.len());
    for l in liveness.iter().take(10) {
        let _ = writeln!(s, "  {l}");
    }
    let mut violation_kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for v in violations.iter() {
        *violation_kinds.entry(v.kind).or_default() += 1;
    }
    let _ = writeln!(s, "violations: {} {violation_kinds:?}", violations.len());
    for v in violations.iter().take(20) {
        let _ = writeln!(s, "  {v}");
    }
}
