//! The chaos suite: real `quorate serve` processes on loopback, clients hammering
//! random nodes, faults from a seeded schedule, and a checker that proves from the
//! recorded history alone that no promise was broken — no over-admission, no lost
//! acknowledgement, ordered unique fencing tokens, rate limits kept, and identical
//! state on every node after healing.
//!
//! - `checker::tests::*`: the checker on synthetic histories (fast, no processes).
//! - `proxy::tests::*`: the per-link TCP proxy cuts, refuses and heals.
//! - [`bounded_chaos_run`]: every kind of fault twice, fixed seed, about 80 s on two
//!   cores in a debug build. Must find no violation, and the cluster must recover.
//! - [`planted_bug_is_caught`]: followers grant from their local state
//!   (`QUORATE_PLANTED_BUG=follower-local-grant`, in builds with the `planted-bugs`
//!   feature only): the checker must
//!   report violations, proving that it can fail.
//! - [`soak`] (ignored): random faults for `QUORATE_CHAOS_MINUTES` (default 10);
//!   run through `scripts/chaos.sh [--minutes N] [--seed S]`.
//!
//! `QUORATE_CHAOS_SEED` replaces the seed of any run (each run prints its seed and
//! schedule first). Modules live in `tests/chaos/`; the process harness is
//! `tests/common`.

mod common;

#[path = "chaos/checker.rs"]
mod checker;
#[path = "chaos/faults.rs"]
mod faults;
#[path = "chaos/history.rs"]
mod history;
#[path = "chaos/proxy.rs"]
mod proxy;
#[path = "chaos/run.rs"]
mod run;
#[path = "chaos/workload.rs"]
mod workload;

use std::sync::Mutex;
use std::time::Duration;

use run::{Plan, RunConfig, RunResult};

/// Cluster runs take both cores; never two at once in this binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// The seed of the bounded run (and the default of the others).
const SEED: u64 = 20_240_605;

fn seed() -> u64 {
    match std::env::var("QUORATE_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("QUORATE_CHAOS_SEED={s:?} is not a number")),
        Err(_) => SEED,
    }
}

/// Run `cfg` on a fresh runtime, one cluster run at a time.
fn chaos(cfg: RunConfig) -> RunResult {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(run::run(cfg));
    println!("{}", result.summary);
    if let Ok(path) = std::env::var("QUORATE_CHAOS_SUMMARY") {
        std::fs::write(&path, &result.summary).expect("write the summary file");
    }
    result
}

#[test]
fn bounded_chaos_run() {
    let seed = seed();
    // Every kind of fault, twice (two shuffles).
    let mut steps = faults::covering(seed);
    steps.extend(faults::covering(seed.wrapping_add(1)));
    let result = chaos(RunConfig {
        seed,
        plan: Plan::Steps(steps),
        planted_bug: false,
        max_replacements: 2,
    });
    assert!(
        result.violations.is_empty(),
        "{} violations (replay with QUORATE_CHAOS_SEED={seed}):\n{}",
        result.violations.len(),
        result.summary
    );
    assert!(
        result.liveness.is_empty(),
        "the cluster did not recover (replay with QUORATE_CHAOS_SEED={seed}):\n{}",
        result.summary
    );
    // Half the workers decide on decision streams: those were checked too.
    assert!(
        result.streamed_answered > 1000,
        "too few decisions answered on streams:\n{}",
        result.summary
    );
}

#[test]
#[cfg_attr(
    not(feature = "planted-bugs"),
    ignore = "needs a binary built with --features planted-bugs (scripts/test.sh runs it)"
)]
fn planted_bug_is_caught() {
    let result = chaos(RunConfig {
        seed: seed(),
        plan: Plan::Quiet(Duration::from_secs(10)),
        planted_bug: true,
        max_replacements: 0,
    });
    let kinds: std::collections::BTreeSet<&str> =
        result.violations.iter().map(|v| v.kind).collect();
    assert!(
        kinds.contains("over_admission") || kinds.contains("lost_ack"),
        "the checker missed the planted bug:\n{}",
        result.summary
    );
}

#[test]
#[ignore = "long soak: scripts/chaos.sh [--minutes N] [--seed S]"]
fn soak() {
    let minutes: f64 = std::env::var("QUORATE_CHAOS_MINUTES")
        .ok()
        .map(|m| m.parse().expect("QUORATE_CHAOS_MINUTES must be a number"))
        .unwrap_or(10.0);
    let seed = seed();
    let result = chaos(RunConfig {
        seed,
        plan: Plan::For(Duration::from_secs_f64(minutes * 60.0)),
        planted_bug: false,
        max_replacements: 4,
    });
    assert!(
        result.violations.is_empty() && result.liveness.is_empty(),
        "soak failed (replay with QUORATE_CHAOS_SEED={seed}):\n{}",
        result.summary
    );
}
