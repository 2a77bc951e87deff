//! Crash test with real processes: a child (`store_crash_child`) appends, commits,
//! applies, snapshots, purges and saves votes in a loop, printing what the store
//! acknowledged; we SIGKILL it at seeded random moments, reopen the directory and
//! check that
//!
//! - every index reported `durable` is still in the log (or covered by the purge),
//!   and every entry present is the one written at that index;
//! - the vote on disk is the last one reported saved (or the one being saved when
//!   the kill came), and never goes backwards across rounds;
//! - the state machine recovered the way openraft recovers it (last snapshot, then
//!   the committed entries after it) equals a fresh replay of the log from index 1,
//!   compared by `State::digest`.
//!
//! Several rounds run on the same directory, so recovery from a crashed recovery is
//! exercised too. Set `QUORATE_CRASH_SEED` to replay a failing schedule.

#[path = "../src/bin/store_crash_child/workload.rs"]
mod workload;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;
use workload::Rng;

const ROUNDS: usize = 20;

/// What the child said before it was killed.
#[derive(Default)]
struct Report {
    ready: bool,
    durable: BTreeSet<u64>,
    last_vote: Option<u64>,
    last_vote_saving: Option<u64>,
    snapshots: usize,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ready {}, durable {} entries in {:?}..={:?}, vote {:?}, saving {:?}, {} snapshots",
            self.ready,
            self.durable.len(),
            self.durable.first(),
            self.durable.last(),
            self.last_vote,
            self.last_vote_saving,
            self.snapshots
        )
    }
}

fn run_child(dir: &Path, seed: u64, kill_after: Duration) -> Result<Report> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store_crash_child"))
        .arg(dir)
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn store_crash_child")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    std::thread::sleep(kill_after);
    // std's kill is SIGKILL on Unix: no destructor, no flush, no goodbye.
    child.kill().context("kill child")?;
    let status = child.wait()?;
    ensure!(!status.success(), "child exited on its own: {status}");
    let lines = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;

    let mut r = Report::default();
    for line in lines {
        let (word, n) = line.split_once(' ').context("bad line")?;
        let n: u64 = n.parse().with_context(|| format!("bad line {line:?}"))?;
        match word {
            "ready" => r.ready = true,
            "durable" => {
                r.durable.insert(n);
            }
            "vote" => r.last_vote = Some(n),
            "vote-saving" => r.last_vote_saving = Some(n),
            "snapshot" => r.snapshots += 1,
            "purged" => {}
            _ => bail!("unknown line {line:?}"),
        }
    }
    Ok(r)
}

/// A fresh replay of `command(1..=upto)`, advanced incrementally across rounds.
struct Replay {
    state: quorate_core::State,
    upto: u64,
}
impl Replay {
    fn digest_at(&mut self, upto: u64) -> String {
        if upto < self.upto {
            self.state = quorate_core::State::new();
            self.upto = 0;
        }
        for i in self.upto + 1..=upto {
            self.state.apply_at(i, &workload::command(i));
        }
        self.upto = upto;
        self.state.digest()
    }
}

#[test]
fn sigkill_never_loses_acknowledged_writes() -> Result<()> {
    let seed = std::env::var("QUORATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_2024_u64);
    eprintln!("crash test seed {seed} (QUORATE_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("node");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut replay = Replay {
        state: quorate_core::State::new(),
        upto: 0,
    };
    let mut known_vote = 0u64;
    let mut max_durable = 0u64;
    let mut snapshots = 0;
    let started = Instant::now();

    for round in 0..ROUNDS {
        // Mostly mid-run kills, sometimes one during open/recovery.
        let kill_after = Duration::from_millis(if rng.next() % 5 < 1 {
            5 + rng.next() % 60
        } else {
            150 + rng.next() % 450
        });
        let report = run_child(&data, rng.next(), kill_after)?;
        snapshots += report.snapshots;
        max_durable = max_durable.max(report.durable.last().copied().unwrap_or(0));
        let ctx = format!("round {round} (seed {seed}, killed after {kill_after:?}): {report:?}");
        let found = rt.block_on(check_reopened(
            &data,
            &report,
            known_vote,
            &mut replay,
            &ctx,
        ))?;
        known_vote = found.vote;
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} durable reported, committed {}, \
             purged {}, vote {}",
            report.durable.len(),
            found.committed,
            found.purged,
            found.vote
        );
    }
    ensure!(
        max_durable > 500,
        "the child made too little progress ({max_durable})"
    );
    ensure!(snapshots > 0, "no snapshot was ever built");
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
    Ok(())
}

/// What a reopened store held, for the next round and the log line.
struct Reopened {
    vote: u64,
    purged: u64,
    committed: u64,
}

/// Reopens the killed child's store and checks the three promises of the module docs
/// against what the child reported; `known_vote` is the vote found the round before.
async fn check_reopened(
    data: &Path,
    report: &Report,
    known_vote: u64,
    replay: &mut Replay,
    ctx: &str,
) -> Result<Reopened> {
    let st = quorate_store::open(data).with_context(|| format!("reopen after {ctx}"))?;
    let (mut log, mut sm) = (st.log, st.sm);

    // Vote: the last reported, or the one whose save was under way.
    let vote = log.read_vote().await?.map_or(0, |v| v.leader_id.term);
    let reported = report.last_vote.unwrap_or(known_vote);
    let saving = report.last_vote_saving.unwrap_or(reported);
    ensure!(
        vote >= known_vote,
        "vote went backwards: {vote} < {known_vote}; {ctx}"
    );
    ensure!(
        vote == reported || vote == saving,
        "vote on disk {vote}, reported {reported}, saving {saving}; {ctx}"
    );

    // Log: durable entries survive, present entries are the right ones.
    let state = log.get_log_state().await?;
    let purged = state.last_purged_log_id.map_or(0, |l| l.index);
    let entries = log.try_get_log_entries(..).await?;
    let present: BTreeSet<u64> = entries.iter().map(|e| e.log_id.index).collect();
    for e in &entries {
        ensure!(
            e.payload == workload::entry(0, e.log_id.index).payload,
            "entry {} has the wrong payload; {ctx}",
            e.log_id
        );
    }
    for &i in &report.durable {
        ensure!(
            i <= purged || present.contains(&i),
            "durable entry {i} lost; {ctx}"
        );
    }

    // State: snapshot + committed replay == fresh replay of the log.
    let target = workload::recover(&mut log, &mut sm)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; {ctx}"))?;
    ensure!(
        sm.last_applied() == target,
        "applied {:?} != {target:?}; {ctx}",
        sm.last_applied()
    );
    let committed = target.map_or(0, |t| t.index);
    ensure!(
        sm.digest() == replay.digest_at(committed),
        "state after recovery differs from a fresh replay of 1..={committed}; {ctx}"
    );
    Ok(Reopened {
        vote,
        purged,
        committed,
    })
}
