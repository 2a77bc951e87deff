//! Faults: a seeded schedule, and the injector that applies it to a running cluster.
//!
//! A schedule is a list of [`Step`]s — what kind of fault, how long to hold it, how
//! long to let the cluster run calmly afterwards, and a random number that picks the
//! victim among the followers. It depends only on the seed, and every step is printed
//! before it is applied, so a failing run can be replayed with the same seed (the
//! interleaving with client traffic will differ; the fault sequence will not).
//!
//! Kinds of faults (the victim "leader" is whichever node leads when the step starts):
//! - `kill-leader`, `kill-follower`, `kill-all`: SIGKILL, hold, restart on the same
//!   data directory;
//! - `pause-leader`, `pause-follower`: SIGSTOP for longer than the election timeout,
//!   then SIGCONT (the old leader must acknowledge nothing stale once it resumes);
//! - `isolate-leader`: cut every link to and from the leader;
//! - `one-way-cut`: cut one direction between the leader and a follower;
//! - `replace-node`: SIGKILL a follower, remove it (`DELETE /v1/members/{id}`), start
//!   a fresh node with a new id and add it (`POST /v1/members`);
//! - `clock-skew`: restart a follower with its wall clock 2–10 minutes ahead or behind
//!   (libfaketime), crash the leader so the skewed node may be elected, hold, then
//!   restart both with true clocks (cluster time must neither jump nor freeze).
//!
//! After healing, the injector waits (polling, with a deadline) until every member is
//! ready and all agree on one leader, and records how long that took.

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{faketime_env, Cluster};
use crate::history::{FaultRecord, Recorder};
use crate::proxy::Mesh;
use crate::workload::Targets;

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    KillAll,
    PauseLeader,
    PauseFollower,
    IsolateLeader,
    OneWayCut,
    ReplaceNode,
    ClockSkew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::KillAll,
        FaultKind::PauseLeader,
        FaultKind::PauseFollower,
        FaultKind::IsolateLeader,
        FaultKind::OneWayCut,
        FaultKind::ReplaceNode,
        FaultKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillAll => "kill-all",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::OneWayCut => "one-way-cut",
            FaultKind::ReplaceNode => "replace-node",
            FaultKind::ClockSkew => "clock-skew",
        }
    }

    /// Relative frequency in long random schedules.
    fn weight(self) -> u64 {
        match self {
            FaultKind::KillAll | FaultKind::ReplaceNode => 1,
            _ => 3,
        }
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: FaultKind,
    pub hold_ms: u64,
    pub calm_ms: u64,
    /// Picks the victim among followers (and the direction of a one-way cut).
    pub pick: u64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (hold {} ms, calm {} ms, pick {})",
            self.kind.name(),
            self.hold_ms,
            self.calm_ms,
            self.pick
        )
    }
}

fn step(rng: &mut Rng, kind: FaultKind) -> Step {
    let hold_ms = match kind {
        // Longer than the election timeout (at most 600 ms in these clusters).
        FaultKind::PauseLeader | FaultKind::PauseFollower => rng.range(1200, 3000),
        FaultKind::ReplaceNode => 0,
        _ => rng.range(800, 3000),
    };
    Step {
        kind,
        hold_ms,
        calm_ms: rng.range(1000, 2500),
        pick: rng.next_u64() % 1000,
    }
}

/// Every kind of fault once, in an order that depends on the seed.
pub fn covering(seed: u64) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let mut kinds = FaultKind::ALL.to_vec();
    for i in (1..kinds.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        kinds.swap(i, j);
    }
    kinds.into_iter().map(|k| step(&mut rng, k)).collect()
}

/// An endless weighted random schedule.
pub fn random(seed: u64) -> impl Iterator<Item = Step> {
    let mut rng = Rng::new(seed);
    let total: u64 = FaultKind::ALL.iter().map(|k| k.weight()).sum();
    std::iter::repeat_with(move || {
        let mut x = rng.below(total);
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| {
                if x < k.weight() {
                    true
                } else {
                    x -= k.weight();
                    false
                }
            })
            .unwrap_or(FaultKind::KillFollower);
        step(&mut rng, kind)
    })
}

/// How long the injector waits for the cluster to recover before giving up.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(45);

/// Applies faults to a cluster whose peer links all run through `mesh`.
pub struct Injector<'a> {
    pub cluster: &'a mut Cluster,
    pub mesh: &'a Mesh,
    pub targets: &'a Targets,
    pub rec: &'a Recorder,
    /// Current voters.
    pub members: BTreeSet<u64>,
    /// Highest node id the mesh has proxies for (bounds replacements).
    pub max_id: u64,
    /// Problems that are not safety violations (no recovery in time, a membership
    /// change that did not go through).
    pub liveness: Vec<String>,
}

impl Injector<'_> {
    /// Wait until every member is running, ready, and all name the same leader.
    pub async fn wait_stable(&mut self) -> Result<u64, String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        for id in self.members.clone() {
            self.cluster.try_wait_ready(id, deadline).await?;
        }
        self.cluster.try_leader_id(deadline).await
    }

    fn raft_addr(&self, id: u64) -> String {
        self.cluster.nodes[&id].raft_addr.clone()
    }

    /// Start node `id` and open its incoming links once it listens.
    async fn start_node(&mut self, id: u64) -> Result<(), String> {
        self.cluster.spawn(id);
        let addr = self.raft_addr(id);
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                return Err(format!("node {id} never listened on {addr}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.mesh.set_target(id, &addr);
        self.mesh.set_down(id, false);
        Ok(())
    }

    fn kill_node(&mut self, id: u64) {
        self.mesh.set_down(id, true);
        self.cluster.kill(id);
    }

    async fn hold(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Apply one step: inject, hold, heal, wait for recovery, stay calm.
    pub async fn apply(&mut self, step: &Step) -> Result<(), String> {
        let leader = self.wait_stable().await?;
        let followers: Vec<u64> = self
            .members
            .iter()
            .copied()
            .filter(|m| *m != leader)
            .collect();
        let follower = followers[(step.pick as usize) % followers.len()];
        let injected = self.rec.now();
        let target = self.inject_and_heal(step, leader, follower).await?;
        let healed = self.rec.now();
        let stable = match self.wait_stable().await {
            Ok(_) => Some(self.rec.now()),
            Err(e) => {
                self.liveness
                    .push(format!("{} {target}: no recovery: {e}", step.kind.name()));
                None
            }
        };
        println!(
            "[chaos {:>8.3}s]   {} {target}: healed, stable {}",
            self.rec.now() as f64 / 1e6,
            step.kind.name(),
            match stable {
                Some(t) => format!("{:.2}s after healing", (t - healed) as f64 / 1e6),
                None => "never".into(),
            }
        );
        self.rec.fault(FaultRecord {
            kind: step.kind.name(),
            target,
            injected,
            healed,
            stable,
        });
        self.hold(step.calm_ms).await;
        Ok(())
    }

    /// Injects the step's fault, holds it for `hold_ms` and undoes it. Returns what it
    /// hit, for the fault record.
    async fn inject_and_heal(
        &mut self,
        step: &Step,
        leader: u64,
        follower: u64,
    ) -> Result<String, String> {
        Ok(match step.kind {
            FaultKind::KillLeader | FaultKind::KillFollower => {
                let victim = if step.kind == FaultKind::KillLeader {
                    leader
                } else {
                    follower
                };
                self.kill_node(victim);
                self.hold(step.hold_ms).await;
                self.start_node(victim).await?;
                format!("node {victim}")
            }
            FaultKind::KillAll => {
                let all: Vec<u64> = self.members.iter().copied().collect();
                for id in &all {
                    self.kill_node(*id);
                }
                self.hold(step.hold_ms).await;
                for id in &all {
                    self.start_node(*id).await?;
                }
                format!("nodes {all:?}")
            }
            FaultKind::PauseLeader | FaultKind::PauseFollower => {
                let victim = if step.kind == FaultKind::PauseLeader {
                    leader
                } else {
                    follower
                };
                self.cluster.pause(victim);
                self.hold(step.hold_ms).await;
                self.cluster.resume(victim);
                format!("node {victim}")
            }
            FaultKind::IsolateLeader => {
                self.mesh.isolate(leader);
                self.hold(step.hold_ms).await;
                self.mesh.heal_all();
                format!("node {leader}")
            }
            FaultKind::OneWayCut => {
                let (from, to) = if step.pick.is_multiple_of(2) {
                    (leader, follower)
                } else {
                    (follower, leader)
                };
                self.mesh.cut(from, to);
                self.hold(step.hold_ms).await;
                self.mesh.heal_all();
                format!("{from}->{to}")
            }
            FaultKind::ReplaceNode => self.replace(follower).await?,
            FaultKind::ClockSkew => self.skew(step, leader, follower).await?,
        })
    }

    /// Restart `follower` with its wall clock minutes ahead or behind (libfaketime),
    /// then crash the leader so that the skewed node may be elected; hold; restart
    /// both with true clocks. Cluster time must not jump or freeze: the checker sees
    /// an over-admission if a lease expires early, and a rate bound violation if a
    /// bucket refills at once.
    async fn skew(&mut self, step: &Step, leader: u64, follower: u64) -> Result<String, String> {
        let minutes = 2 + step.pick % 9; // 2..=10
        let offset = if step.pick.is_multiple_of(2) {
            format!("+{minutes}m")
        } else {
            format!("-{minutes}m")
        };
        let true_env = self
            .cluster
            .options
            .node_env
            .get(&follower)
            .cloned()
            .unwrap_or_default();
        let mut skewed = true_env.clone();
        skewed.extend(faketime_env(&offset));
        self.cluster.options.node_env.insert(follower, skewed);
        self.kill_node(follower);
        self.start_node(follower).await?;
        self.wait_stable().await?;
        self.kill_node(leader);
        self.hold(step.hold_ms).await;
        self.start_node(leader).await?;
        self.wait_stable().await?;
        self.cluster.options.node_env.insert(follower, true_env);
        self.kill_node(follower);
        self.start_node(follower).await?;
        Ok(format!(
            "node {follower} at {offset}, leader {leader} crashed"
        ))
    }

    /// Kill `victim` for good, remove it, add a fresh node in its place.
    async fn replace(&mut self, victim: u64) -> Result<String, String> {
        let next = self.cluster.nodes.keys().max().copied().unwrap_or(0) + 1;
        if next > self.max_id {
            // The mesh has no proxies for more nodes: a plain crash instead.
            self.kill_node(victim);
            self.start_node(victim).await?;
            return Ok(format!("node {victim} (no spare id: restarted)"));
        }
        self.kill_node(victim);
        self.targets.remove(victim);
        self.members.remove(&victim);
        self.membership_change("DELETE", &format!("/v1/members/{victim}"), Value::Null)
            .await?;

        let new = self.cluster.add_node_to_config();
        assert_eq!(new, next);
        self.start_node(new).await?;
        let addrs = self.cluster.nodes[&new].clone();
        self.membership_change(
            "POST",
            "/v1/members",
            json!({"id": new, "api_addr": addrs.api_addr, "raft_addr": addrs.raft_addr}),
        )
        .await?;
        // Confirm through the new node itself that it is a voter now.
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        loop {
            let view = self.cluster.cluster_view(new).await;
            let voter = view
                .as_ref()
                .is_some_and(|v| v.members.iter().any(|m| m.id == new && m.voter));
            let gone = view
                .as_ref()
                .is_some_and(|v| v.members.iter().all(|m| m.id != victim));
            if voter && gone {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node {new} did not become a voter: {view:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.members.insert(new);
        self.targets.set(new, &addrs.api_addr);
        Ok(format!("node {victim} replaced by node {new}"))
    }

    /// Send a membership change through the members until one answers 200 (a retry
    /// of a change that was applied answers 400 "not a member"/"already", also fine).
    async fn membership_change(&self, method: &str, path: &str, body: Value) -> Result<(), String> {
        let deadline = Instant::now() + RECOVERY_DEADLINE;
        let mut last = String::new();
        let mut attempt = 0usize;
        while Instant::now() < deadline {
            let members: Vec<u64> = self.members.iter().copied().collect();
            let via = members[attempt % members.len()];
            attempt += 1;
            let url = self.cluster.url(via, path);
            let req = match method {
                "DELETE" => self.cluster.http.delete(url),
                _ => self.cluster.http.post(url).json(&body),
            };
            match req.timeout(Duration::from_secs(20)).send().await {
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if status == StatusCode::OK {
                        return Ok(());
                    }
                    if status == StatusCode::BAD_REQUEST && attempt > 1 {
                        // Most likely our previous, unanswered attempt took effect.
                        return Ok(());
                    }
                    last = format!("{status} {text}");
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("{method} {path} failed: {last}"))
    }
}
