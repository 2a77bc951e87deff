//! Turns the result lines of a benchmark session into `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::Path;

use crate::run::RunResult;

/// Everything the report is made of.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    pub results: Vec<RunResult>,
    /// `(section, label, value)` rows written by `scripts/bench.sh`.
    pub extras: Vec<(String, String, String)>,
    /// The exact command that produced the results.
    pub command: String,
    /// Directory whose filesystem held the data (for `df`).
    pub data_dir: String,
    /// Free-form markdown appended at the end (analysis, profile).
    pub notes: String,
    /// `perf report` excerpt, if a profile was taken.
    pub profile: String,
}

/// Reads a JSON-lines results file (lines that fail to parse are skipped).
pub fn read_results(path: &Path) -> std::io::Result<Vec<RunResult>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Reads `section<TAB>label<TAB>value` lines.
pub fn read_extras(path: &Path) -> std::io::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            Some((
                it.next()?.to_owned(),
                it.next()?.to_owned(),
                it.next()?.to_owned(),
            ))
        })
        .collect())
}

fn machine(data_dir: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    rows.push(("CPUs (nproc)".to_owned(), nproc.to_string()));
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = cpu
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
        {
            rows.push(("CPU model".to_owned(), model.1.trim().to_owned()));
        }
    }
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(total) = mem.lines().find(|l| l.starts_with("MemTotal:")) {
            let kib: u64 = total
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            rows.push((
                "Memory (MemTotal)".to_owned(),
                format!("{kib} kB ({:.1} GiB)", kib as f64 / 1024.0 / 1024.0),
            ));
        }
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        rows.push(("Kernel".to_owned(), k.trim().to_owned()));
    }
    if let Ok(out) = std::process::Command::new("df")
        .args(["-h", "--output=source,fstype,size,avail", data_dir])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = text.lines().nth(1) {
            rows.push((
                format!("Disk of {data_dir} (df: source fstype size avail)"),
                line.split_whitespace().collect::<Vec<_>>().join(" "),
            ));
        }
    }
    rows
}

fn find<'a>(
    rs: &'a [RunResult],
    system: &str,
    workload: &str,
    variant: &str,
    clients: usize,
) -> Option<&'a RunResult> {
    rs.iter().rev().find(|r| {
        r.system == system && r.workload == workload && r.variant == variant && r.clients == clients
    })
}

/// Variant labels of the cost-of-a-decision matrix: quorate clients sent straight to
/// the leader, and Redis with an fsync'd append-only file. Their cells are compared in
/// [`write_cost`], not in the classic three-system table.
pub const LEADER_DIRECT: &str = "leader-direct";
pub const REDIS_AOF: &str = "appendfsync always";
/// quorate clients sending decisions as frames on a decision stream (`--protocol
/// stream`): alone, round-robin over the nodes (followers forward); with
/// [`LEADER_DIRECT`], straight to the leader.
pub const STREAM: &str = "stream";
const LEADER_STREAM: &str = "leader-direct, stream";

/// The variant quorate and Redis runs are compared under (etcd-only settings removed).
fn base_variant(v: &str) -> String {
    v.split(", ")
        .filter(|p| *p != "guard recipe" && !p.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// True for a variant of the cost matrix (see [`LEADER_DIRECT`], [`REDIS_AOF`],
/// [`STREAM`]).
fn cost_variant(v: &str) -> bool {
    v.split(", ")
        .any(|p| p == LEADER_DIRECT || p == REDIS_AOF || p == STREAM)
}

fn fmt_rate(r: Option<&RunResult>) -> String {
    match r {
        None => "not measured".to_owned(),
        Some(r) => format!("{:.0}{}", r.ops_per_s, if r.capped { "*" } else { "" }),
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_lat(r: Option<&RunResult>) -> String {
    r.map_or("–".to_owned(), |r| {
        format!("{} / {}", fmt_ms(r.p50_ms), fmt_ms(r.p99_ms))
    })
}

/// Server CPU seconds per 1,000 ops, or "–" when not measured (no pids).
fn fmt_cpu(r: Option<&RunResult>) -> String {
    match r {
        Some(r) if r.server_cpu_s_per_kop > 0.0 => format!("{:.3}", r.server_cpu_s_per_kop),
        _ => "–".to_owned(),
    }
}

/// Peak RSS of each server process, MiB, slash-separated.
fn fmt_peak_rss(r: &RunResult) -> String {
    if r.server_peak_rss_mib.is_empty() {
        return "–".to_owned();
    }
    let v: Vec<String> = r.server_peak_rss_mib.iter().map(u64::to_string).collect();
    v.join("/")
}

fn ratio(q: Option<&RunResult>, o: Option<&RunResult>) -> String {
    match (q, o) {
        (Some(q), Some(o)) if o.ops_per_s > 0.0 => format!("{:.2}×", q.ops_per_s / o.ops_per_s),
        _ => "–".to_owned(),
    }
}

/// Renders the whole markdown document.
pub fn render(input: &ReportInput) -> String {
    let rs = &input.results;
    let mut md = String::new();
    write_machine(&mut md, input);
    write_method(&mut md);
    write_targets(&mut md, rs);
    write_cost(&mut md, rs);
    write_results(&mut md, rs);
    write_every_run(&mut md, rs);
    write_state_profile_notes(&mut md, input);
    md
}

/// Title, how the results were produced, and the machine they ran on.
fn write_machine(md: &mut String, input: &ReportInput) {
    let _ = writeln!(md, "# Benchmarks: quorate vs Redis + Lua vs etcd\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench.sh` (load generator: `crates/bench`, binary \
         `quorate-bench`). Everything — the three systems and the load generator — ran on \
         the one machine below, on loopback, sharing its CPUs.\n"
    );
    let _ = writeln!(md, "Command:\n\n```\n{}\n```\n", input.command);

    let _ = writeln!(md, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in machine(&input.data_dir) {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let env: Vec<_> = input.extras.iter().filter(|e| e.0 == "env").collect();
    for (_, k, v) in &env {
        let _ = writeln!(md, "| {k} | {v} |");
    }
}

/// How each system is deployed and what is measured (fixed text).
fn write_method(md: &mut String) {
    let _ = writeln!(
        md,
        "\n## Systems and method\n\n\
         | system | deployment | durability |\n|---|---|---|\n\
         | quorate | 3 nodes (`quorate serve`), Raft (openraft) + sled, HTTP/1.1 JSON API on each node | a grant is committed on a majority before it is answered |\n\
         | Redis + Lua | **single node**, no replica, `appendonly no`, `save \"\"` (no persistence at all) | none: a crash loses every lease |\n\
         | Redis + Lua, `appendfsync always` | the same single node with `appendonly yes`, `appendfsync always` | every write fsync'd before the reply; no replica |\n\
         | etcd | 3 members, v3 JSON gateway (`/v3/kv/txn`, `/v3/lease/*`) | Raft + fsync'd WAL on every member |\n\n\
         - **Same work for every system**: each cell makes exactly `requests` attempts \
         (slot acquires, or rate checks), split evenly over the clients. One request in \
         flight per client connection, HTTP/1.1 keep-alive (quorate, etcd) or one RESP \
         connection per client (Redis); no pipelining, no batching on the client side. \
         Clients are spread round-robin over all nodes/members; quorate cells marked \
         *leader-direct* send every client to the leader instead (the node \
         `/v1/cluster` names, following the `x-quorate-leader` header if it changes), \
         so no request is forwarded.\n\
         - **Ops**: an acquire (granted or denied) is 1 op and its release is 1 op, so a \
         granted acquire+release pair counts as **2 ops**; a rate check is 1 op. \
         Throughput = ops / wall time of the measured phase (connections are opened and \
         warmed up before it starts).\n\
         - **Denials**: a denied acquire (quorate 429, Lua `{{0,..}}`, etcd count at the \
         limit) is a valid outcome: counted as 1 op and as `denied`; the client waits \
         1 ms before its next attempt. A granted slot is held 1 ms (the \"use\") before \
         it is released. Same rule for every system.\n\
         - **Latency**: per op (acquire or release or rate check), client-side, including \
         etcd's internal retries of lost compare races.\n\
         - **Over-admissions**: each client increments a per-key atomic counter when a \
         grant arrives (before use) and decrements it before sending the release; a \
         value above the key's limit is an over-admission. The client-side count can \
         only under-count what the server holds, so any non-zero value is real.\n\
         - **Workloads** (limit 32 on every `org:*` key, `global` limit 1,000,000): \
         `hot` = acquire+release on `org:hot` + `global`; `spread` = the same on a random \
         one of 10,000 `org:N` keys; `rate` = GCRA rate checks (limit 100 per 60 s, burst \
         100) on a random one of 100,000 `user:N` keys.\n\
         - **etcd semaphore** (default, \"ticket\" recipe): holder keys \
         `sem/<key>/<session lease>` attached to the client's session lease (as etcd's own \
         `concurrency.Mutex` names its keys). One txn puts the holder keys of both keys and \
         counts both prefixes (`count_only` ranges, which see the txn's own puts) and \
         reads the limits: every live holder created up to that revision is counted, so \
         counts within the limits mean admitted; otherwise a second txn deletes the keys \
         (denied). Release deletes the holder keys in one txn. Rows marked \
         *guard recipe* use the compare-and-swap recipe instead: read counts + \
         `mod_revision` of guard keys `semguard/<key>` in one txn, then a txn comparing \
         both guards' `mod_revision` that puts the holder keys and bumps the guards, \
         retried on conflict (every acquire serializes on the `global` guard). etcd rate \
         checks: GCRA by compare-and-swap on the bucket key's `mod_revision` (client \
         clock; buckets never expire).\n\
         - `*` after a throughput: the cell hit its time cap before making all its \
         attempts; the number is still completed ops / elapsed time.\n"
    );
}

/// The hot-key, 64-client cell against the targets, and its no-hold variant.
fn write_targets(md: &mut String, rs: &[RunResult]) {
    let _ = writeln!(md, "## Targets (hot key, 64 clients)\n");
    let q = find(rs, "quorate", "hot", "", 64);
    let r = find(rs, "redis", "hot", "", 64);
    let e = find(rs, "etcd", "hot", "", 64);
    let _ = writeln!(md, "| target | measured | verdict |\n|---|---|---|");
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    };
    let qe = q.zip(e).map(|(q, e)| q.ops_per_s / e.ops_per_s.max(1e-9));
    let qr = q.zip(r).map(|(q, r)| q.ops_per_s / r.ops_per_s.max(1e-9));
    let _ = writeln!(
        md,
        "| quorate ≥ 10× etcd throughput | {} | {} |",
        qe.map_or("–".into(), |v| format!("{v:.1}×")),
        verdict(qe.map(|v| v >= 10.0))
    );
    let _ = writeln!(
        md,
        "| quorate ≥ 0.3× single-node Redis+Lua | {} | {} |",
        qr.map_or("–".into(), |v| format!("{v:.2}×")),
        verdict(qr.map(|v| v >= 0.3))
    );
    let _ = writeln!(
        md,
        "| quorate p99 ≤ 25 ms | {} | {} |",
        q.map_or("–".into(), |q| format!("{} ms", fmt_ms(q.p99_ms))),
        verdict(q.map(|q| q.p99_ms <= 25.0))
    );
    let _ = writeln!(
        md,
        "| quorate over-admissions = 0 (all cells) | {} | {} |\n",
        rs.iter()
            .filter(|r| r.system == "quorate")
            .map(|r| r.over_admissions)
            .sum::<u64>(),
        verdict(rs.iter().any(|r| r.system == "quorate").then(|| {
            rs.iter()
                .filter(|r| r.system == "quorate")
                .all(|r| r.over_admissions == 0)
        }))
    );

    let qn = find(rs, "quorate", "hot", "no hold", 64);
    let rn = find(rs, "redis", "hot", "no hold", 64);
    let en = find(rs, "etcd", "hot", "no hold", 64);
    if let Some(qn) = qn {
        let _ = writeln!(
            md,
            "Same cell with no hold time (slot released as soon as it is granted): \
             quorate/etcd {}, quorate/Redis {}, quorate p99 {} ms.\n",
            ratio(Some(qn), en),
            ratio(Some(qn), rn),
            fmt_ms(qn.p99_ms)
        );
    }
}

/// Microseconds of CPU per op, user + system, or "–" when not measured.
fn fmt_us(r: &RunResult) -> String {
    let total = r.server_user_us_per_op + r.server_sys_us_per_op;
    if total > 0.0 {
        format!(
            "**{total:.0}** ({:.0} + {:.0})",
            r.server_user_us_per_op, r.server_sys_us_per_op
        )
    } else {
        "–".to_owned()
    }
}

/// Per server process: `name role user+sys` µs per op, leader first.
fn fmt_procs(r: &RunResult) -> String {
    if r.server_procs.len() < 2 {
        return "".to_owned();
    }
    let mut procs: Vec<_> = r.server_procs.iter().collect();
    procs.sort_by_key(|p| (p.role != "leader", p.name.clone()));
    procs
        .iter()
        .map(|p| {
            let who = if p.role.is_empty() {
                p.name.clone()
            } else {
                format!("{} {}", p.name, p.role)
            };
            format!(
                "{who}: {:.0} ({:.0} + {:.0})",
                p.user_us_per_op + p.sys_us_per_op,
                p.user_us_per_op,
                p.sys_us_per_op
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The cost of a decision, the way a user compares (issue 22): per workload and client
/// count, quorate round-robin and leader-direct beside Redis without persistence and
/// Redis with `appendfsync always`, with server CPU per op for the whole system and
/// per process (user + system), and quorate's ratios to both Redis setups.
fn write_cost(md: &mut String, rs: &[RunResult]) {
    let rows = [
        ("quorate", "", "quorate ×3, round-robin"),
        (
            "quorate",
            STREAM,
            "quorate ×3, round-robin, decision stream",
        ),
        ("quorate", LEADER_DIRECT, "quorate ×3, leader-direct"),
        (
            "quorate",
            LEADER_STREAM,
            "quorate ×3, leader-direct, decision stream",
        ),
        ("redis", "", "Redis (no persistence)"),
        ("redis", REDIS_AOF, "Redis `appendfsync always`"),
    ];
    let mut cells: Vec<(String, usize)> = Vec::new();
    for r in rs {
        if base_variant(&r.variant)
            .split(", ")
            .all(|p| p.is_empty() || p == LEADER_DIRECT || p == REDIS_AOF || p == STREAM)
            && rows.iter().any(|(s, _, _)| *s == r.system)
        {
            let c = (r.workload.clone(), r.clients);
            if !cells.contains(&c) {
                cells.push(c);
            }
        }
    }
    if cells.is_empty() {
        return;
    }
    let order = |w: &str| match w {
        "hot" => 0,
        "spread" => 1,
        _ => 2,
    };
    cells.sort_by_key(|(w, c)| (order(w), *c));
    let _ = writeln!(
        md,
        "## The cost of a decision
"
    );
    let _ = writeln!(
        md,
        "Server CPU per completed op in µs, **total** (user + system) over every process \
         of the system, from `/proc/<pid>/stat` over the measured phase; per node for \
         quorate (the leader at the end of the cell first). Ratios are ops/s of the \
         quorate row over Redis without persistence / Redis `appendfsync always` in the \
         same cell. Leader-direct clients all talk to the node `/v1/cluster` names as \
         leader and follow its `x-quorate-leader` hint. *Decision stream* rows send the \
         same decisions as frames on one upgraded connection per client (`POST \
         /v1/stream`, one request in flight, like a RESP connection) instead of one \
         HTTP/1.1 request each.\n"
    );
    let _ = writeln!(
        md,
        "| workload | clients | system | ops/s | p50 / p99 ms | × Redis / × AOF | CPU µs/op (user + sys) | per process µs/op (user + sys) | errors | over-adm. |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---|---:|---:|");
    for (w, c) in &cells {
        let redis = find(rs, "redis", w, "", *c);
        let aof = find(rs, "redis", w, REDIS_AOF, *c);
        for (system, variant, label) in rows {
            let Some(r) = find(rs, system, w, variant, *c) else {
                continue;
            };
            let ratios = if system == "quorate" {
                format!("{} / {}", ratio(Some(r), redis), ratio(Some(r), aof))
            } else {
                "".to_owned()
            };
            let _ = writeln!(
                md,
                "| {w} | {c} | {label} | {} | {} | {ratios} | {} | {} | {} | {} |",
                fmt_rate(Some(r)),
                fmt_lat(Some(r)),
                fmt_us(r),
                fmt_procs(r),
                r.errors,
                r.over_admissions,
            );
        }
    }
    let _ = writeln!(md);
}

/// One row per (workload, variant, clients) cell with the three systems side by side.
fn write_results(md: &mut String, rs: &[RunResult]) {
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Throughput in ops/s (acquire+release pair = 2 ops); latency p50 / p99 in ms; \
         CPU = server CPU seconds (user + system, all of a system's processes together) \
         per 1,000 completed ops, the cost of a decision, which holds when servers and \
         load generator compete for the same cores and ops/s does not.\n"
    );
    let _ = writeln!(
        md,
        "| workload | clients | quorate ops/s | quorate p50/p99 | Redis ops/s | Redis p50/p99 | etcd ops/s | etcd p50/p99 | quorate/etcd | quorate/Redis | CPU s/1k ops q/r/e | errors q/r/e | over-adm. q/r/e |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut cells: Vec<(String, String, usize)> = Vec::new();
    for r in rs.iter().filter(|r| !cost_variant(&r.variant)) {
        let c = (r.workload.clone(), r.variant.clone(), r.clients);
        if !cells.contains(&c) {
            cells.push(c);
        }
    }
    let order = |w: &str| match w {
        "hot" => 0,
        "spread" => 1,
        _ => 2,
    };
    cells.sort_by_key(|(w, v, c)| (v.clone(), order(w), *c));
    for (w, v, c) in &cells {
        let base = base_variant(v);
        let q = find(rs, "quorate", w, &base, *c);
        let r = find(rs, "redis", w, &base, *c);
        let e = find(rs, "etcd", w, v, *c);
        let label = if v.is_empty() {
            w.clone()
        } else {
            format!("{w} ({v})")
        };
        let w = &label;
        let n = |x: Option<&RunResult>, f: fn(&RunResult) -> u64| {
            x.map_or("–".to_owned(), |x| f(x).to_string())
        };
        let _ = writeln!(
            md,
            "| {w} | {c} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {}/{}/{} | {}/{}/{} |",
            fmt_rate(q),
            fmt_lat(q),
            fmt_rate(r),
            fmt_lat(r),
            fmt_rate(e),
            fmt_lat(e),
            ratio(q, e),
            ratio(q, r),
            fmt_cpu(q),
            fmt_cpu(r),
            fmt_cpu(e),
            n(q, |x| x.errors),
            n(r, |x| x.errors),
            n(e, |x| x.errors),
            n(q, |x| x.over_admissions),
            n(r, |x| x.over_admissions),
            n(e, |x| x.over_admissions),
        );
    }
}

/// One row per run with every figure, then the error kinds seen.
fn write_every_run(md: &mut String, rs: &[RunResult]) {
    let _ = writeln!(md, "\n### Every run\n");
    let _ = writeln!(
        md,
        "| system | workload | variant | clients | attempts | ops | granted | denied | errors | etcd conflicts | max held (org key) | s | ops/s | p50 | p99 | p99.9 | max | acq p99 | rel p99 | server CPU % | generator CPU % | server CPU s/1k ops | generator CPU s/1k ops | peak RSS MiB per process | load 1m |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {} | {:.1} |",
            r.system,
            r.workload,
            r.variant,
            r.clients,
            r.attempts,
            if r.capped { format!(" of {}*", r.requests) } else { String::new() },
            r.ops,
            r.granted,
            r.denied,
            r.errors,
            r.conflicts,
            if r.workload == "rate" { "–".to_owned() } else { r.max_held.to_string() },
            r.elapsed_s,
            r.ops_per_s,
            fmt_ms(r.p50_ms),
            fmt_ms(r.p99_ms),
            fmt_ms(r.p999_ms),
            fmt_ms(r.max_ms),
            fmt_ms(r.acquire_p99_ms),
            if r.workload == "rate" { "–".to_owned() } else { fmt_ms(r.release_p99_ms) },
            r.server_cpu_pct,
            r.generator_cpu_pct,
            r.server_cpu_s_per_kop,
            r.generator_cpu_s_per_kop,
            fmt_peak_rss(r),
            r.loadavg_1m,
        );
    }
    let errs: Vec<_> = rs
        .iter()
        .filter(|r| !r.error_kinds.is_empty())
        .map(|r| {
            format!(
                "- {} {} {}: {:?}",
                r.system, r.workload, r.clients, r.error_kinds
            )
        })
        .collect();
    if !errs.is_empty() {
        let _ = writeln!(md, "\nErrors by kind:\n\n{}", errs.join("\n"));
    }
}

/// The extra measurements, the profile and the notes, where given.
fn write_state_profile_notes(md: &mut String, input: &ReportInput) {
    let state: Vec<_> = input.extras.iter().filter(|e| e.0 == "state").collect();
    if !state.is_empty() {
        let _ = writeln!(
            md,
            "\n## quorate: state size, restart, catch-up\n\n| measurement | value |\n|---|---|"
        );
        for (_, k, v) in state {
            let _ = writeln!(md, "| {k} | {v} |");
        }
    }
    if !input.profile.trim().is_empty() {
        let _ = writeln!(
            md,
            // scripts/bench.sh writes one fenced section per node role and cell.
            "\n## Profiles of quorate nodes under load\n\n{}",
            input.profile.trim_end()
        );
    }
    if !input.notes.trim().is_empty() {
        let _ = writeln!(md, "\n{}", input.notes.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ProcCpu;

    fn result(
        system: &str,
        variant: &str,
        ops_per_s: f64,
        procs: &[(&str, &str, f64)],
    ) -> RunResult {
        RunResult {
            system: system.into(),
            workload: "hot".into(),
            variant: variant.into(),
            clients: 64,
            requests: 100,
            attempts: 100,
            ops: 200,
            granted: 100,
            denied: 0,
            errors: 0,
            error_kinds: Vec::new(),
            over_admissions: 0,
            max_held: 3,
            conflicts: 0,
            elapsed_s: 1.0,
            ops_per_s,
            p50_ms: 1.0,
            p99_ms: 5.0,
            p999_ms: 6.0,
            max_ms: 7.0,
            acquire_p50_ms: 1.0,
            acquire_p99_ms: 5.0,
            release_p50_ms: 1.0,
            release_p99_ms: 5.0,
            capped: false,
            generator_cpu_pct: 50.0,
            server_cpu_pct: 100.0,
            server_cpu_s_per_kop: 0.1,
            generator_cpu_s_per_kop: 0.05,
            server_peak_rss_mib: Vec::new(),
            loadavg_1m: 1.0,
            route: String::new(),
            server_user_us_per_op: procs.iter().map(|p| p.2 * 0.75).sum(),
            server_sys_us_per_op: procs.iter().map(|p| p.2 * 0.25).sum(),
            server_procs: procs
                .iter()
                .map(|(name, role, us)| ProcCpu {
                    name: (*name).into(),
                    role: (*role).into(),
                    user_us_per_op: us * 0.75,
                    sys_us_per_op: us * 0.25,
                })
                .collect(),
        }
    }

    #[test]
    fn the_cost_table_compares_every_routing_with_both_redis_setups() {
        // A quorate cell: node 2 leads, nodes 1 and 3 follow.
        let quorate = |variant: &str, ops: f64, leader: f64, follower: f64| {
            result(
                "quorate",
                variant,
                ops,
                &[
                    ("1", "follower", follower),
                    ("2", "leader", leader),
                    ("3", "follower", follower),
                ],
            )
        };
        let rs = vec![
            quorate("", 10_000.0, 80.0, 20.0),
            quorate(LEADER_DIRECT, 20_000.0, 40.0, 8.0),
            quorate(LEADER_STREAM, 25_000.0, 28.0, 8.0),
            quorate(STREAM, 15_000.0, 30.0, 20.0),
            result("redis", "", 50_000.0, &[("redis", "", 16.0)]),
            result("redis", REDIS_AOF, 40_000.0, &[("redis", "", 20.0)]),
        ];
        let md = render(&ReportInput {
            results: rs,
            ..Default::default()
        });
        let cost = md
            .split("## The cost of a decision")
            .nth(1)
            .and_then(|s| s.split("## Results").next())
            .expect("cost section before the results");
        assert!(
            cost.contains("| hot | 64 | quorate ×3, leader-direct | 20000 | 1.00 / 5.00 | 0.40× / 0.50× | **56** (42 + 14) | 2 leader: 40 (30 + 10); 1 follower: 8 (6 + 2); 3 follower: 8 (6 + 2) |"),
            "{cost}"
        );
        assert!(
            cost.contains("| hot | 64 | quorate ×3, round-robin | 10000 |"),
            "{cost}"
        );
        assert!(
            cost.contains("| hot | 64 | quorate ×3, leader-direct, decision stream | 25000 | 1.00 / 5.00 | 0.50× / 0.62× | **44** (33 + 11) |"),
            "{cost}"
        );
        assert!(
            cost.contains("| hot | 64 | quorate ×3, round-robin, decision stream | 15000 | 1.00 / 5.00 | 0.30× / 0.38× |"),
            "{cost}"
        );
        assert!(
            cost.contains("| hot | 64 | Redis `appendfsync always` | 40000 |"),
            "{cost}"
        );
        // The classic table keeps its one row per cell, without the cost variants.
        let results = md.split("## Results").nth(1).unwrap();
        let table = results.split("### Every run").next().unwrap();
        assert!(!table.contains(LEADER_DIRECT), "{table}");
        assert!(!table.contains(STREAM), "{table}");
        assert!(table.contains("| hot | 64 | 10000 |"), "{table}");
    }
}
