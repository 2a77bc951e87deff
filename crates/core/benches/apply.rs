//! Benchmark of the limiter state machine on one core (no criterion: `harness = false`).
//!
//! `cargo bench -p quorate-core` prints a table of:
//! - apply throughput of acquire+release pairs (one op per command, and 64 ops per
//!   command), and of rate checks, each the median of several runs, on a state that
//!   already holds 10k live leases and 10k rate buckets; commands are built before the
//!   clock starts, so only `State::apply` is timed;
//! - state memory per live lease and per rate key at 1M items, measured with a counting
//!   `#[global_allocator]` (bytes requested and still live after building the state,
//!   divided by the number of items; allocator overhead not included);
//! - snapshot size and snapshot / restore time of those 1M-item states, and the time of
//!   a state digest (what a `/v1/cluster` poll costs under the read lock).
//!
//! Times are the benchmark thread's own on-CPU time (first field of Linux's
//! `/proc/thread-self/schedstat`), so other processes competing for the cores do not
//! inflate them; where that file is missing, wall-clock time is used instead.
//!
//! `QUORATE_BENCH_SCALE=0.1` shrinks every size (for a quick smoke run).
#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use quorate_core::{Acquire, Command, Op, RateCheck, RateLimitRef, RateSpec, State};

/// `System`, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and
// only adds bookkeeping on an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const T0: u64 = 1_700_000_000_000;
const RUNS: usize = 7;

fn scale(n: usize) -> usize {
    let f: f64 = std::env::var("QUORATE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * f) as usize).max(64)
}

/// On-CPU nanoseconds of the current thread, if the kernel tells us.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// A stopwatch of this thread's CPU time (wall time as a fallback).
struct Stopwatch {
    wall: Instant,
    cpu: Option<u64>,
}

impl Stopwatch {
    fn start() -> Self {
        let cpu = cpu_ns();
        Stopwatch {
            wall: Instant::now(),
            cpu,
        }
    }

    fn elapsed(&self) -> Duration {
        match (self.cpu, cpu_ns()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => self.wall.elapsed(),
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn acquire(i: usize, keys: Vec<String>) -> Op {
    Op::Acquire(Acquire {
        keys,
        lease_id: format!("lease-{i}"),
        holder: "bench".into(),
        ttl_ms: 30_000,
    })
}

fn release(i: usize) -> Op {
    Op::Release {
        lease_id: format!("lease-{i}"),
    }
}

fn rate(key: String) -> Op {
    Op::RateCheck {
        checks: vec![RateCheck {
            key,
            cost: 1,
            limit: RateLimitRef::Inline(RateSpec {
                limit: 1_000,
                period_ms: 1_000,
                burst: 1_000,
            }),
        }],
    }
}

/// A state where "global" allows everything the benchmark throws at it.
fn base_state() -> State {
    let mut s = State::new();
    // Caps above what the 1M-item cases hold (the defaults stop at 1M slot keys, and
    // the "[own key, global]" case needs one more).
    let settings = quorate_core::Settings {
        max_leases: 4_000_000,
        max_slot_keys: 4_000_000,
        max_rate_keys: 4_000_000,
        ..quorate_core::Settings::default()
    };
    s.apply(&Command::single(
        T0,
        Op::Configure(Box::new(quorate_core::Configuration {
            source_digest: 1,
            settings,
            // Room for the shared-keys case: 1M leases over 10k `fill:*` keys.
            policies: vec![(
                "fill".into(),
                quorate_core::Policy::Concurrency {
                    pattern: "fill:*".into(),
                    limit: 1_000,
                },
            )],
            tiers: Vec::new(),
        })),
    ));
    s.apply(&Command::single(
        T0,
        Op::SetLimit {
            key: "global".into(),
            limit: 1_000_000,
        },
    ));
    s
}

/// Live leases and rate buckets present while throughput is measured, so the maps
/// have a realistic size whatever the batch size.
const BACKGROUND: usize = 10_000;

fn background_state() -> State {
    let mut s = base_state();
    for start in (0..BACKGROUND).step_by(1000) {
        let ops = (start..start + 1000)
            .flat_map(|i| {
                [
                    Op::Acquire(Acquire {
                        keys: vec![format!("bg:{i}")],
                        lease_id: format!("bg-{i}"),
                        holder: "background".into(),
                        ttl_ms: 3_600_000,
                    }),
                    rate(format!("bg:{i}")),
                ]
            })
            .collect();
        s.apply(&Command::new(T0, ops));
    }
    s
}

/// Median time of `RUNS` runs of applying `cmds` to a fresh `background_state()`.
fn time_apply(build: impl Fn() -> Vec<Command>) -> Duration {
    let runs = (0..RUNS)
        .map(|_| {
            let cmds = build();
            let mut s = background_state();
            let start = Stopwatch::start();
            for c in &cmds {
                black_box(s.apply(c));
            }
            start.elapsed()
        })
        .collect();
    median(runs)
}

fn row(name: &str, items: usize, unit: &str, d: Duration, ops_per_item: usize) {
    let per_s = items as f64 / d.as_secs_f64();
    println!(
        "{name:<44} {items:>9} {unit:<6} {:>9.1} ms {:>10.0} {unit}/s {:>8.2} M ops/s {:>7.0} ns/{unit}",
        d.as_secs_f64() * 1e3,
        per_s,
        per_s * ops_per_item as f64 / 1e6,
        d.as_nanos() as f64 / items as f64,
    );
}

fn throughput() {
    let pairs = scale(200_000);
    let org = |i: usize| vec![format!("org:{}", i % 1000), "global".to_string()];

    let d = time_apply(|| {
        (0..pairs)
            .flat_map(|i| {
                let t = T0 + (i / 1000) as u64;
                [
                    Command::single(t, acquire(i, org(i))),
                    Command::single(t, release(i)),
                ]
            })
            .collect()
    });
    row(
        "acquire+release [org,global], 1 op/cmd",
        pairs,
        "pair",
        d,
        2,
    );

    let d = time_apply(|| {
        (0..pairs / 64)
            .flat_map(|b| {
                let t = T0 + b as u64;
                let ids = b * 64..(b + 1) * 64;
                [
                    Command::new(t, ids.clone().map(|i| acquire(i, org(i))).collect()),
                    Command::new(t, ids.map(release).collect()),
                ]
            })
            .collect()
    });
    row(
        "acquire+release [org,global], 64 ops/cmd",
        pairs / 64 * 64,
        "pair",
        d,
        2,
    );

    let checks = scale(400_000);
    let user = |i: usize| format!("user:{}", i % 100_000);
    let d = time_apply(|| {
        (0..checks)
            .map(|i| Command::single(T0 + (i / 1000) as u64, rate(user(i))))
            .collect()
    });
    row("rate check (100k keys), 1 op/cmd", checks, "check", d, 1);

    let d = time_apply(|| {
        (0..checks / 64)
            .map(|b| {
                Command::new(
                    T0 + b as u64,
                    (b * 64..(b + 1) * 64).map(|i| rate(user(i))).collect(),
                )
            })
            .collect()
    });
    row(
        "rate check (100k keys), 64 ops/cmd",
        checks / 64 * 64,
        "check",
        d,
        1,
    );
}

/// Builds a state from `n` ops made by `op`, 1024 per command (commands are dropped
/// as they go), and returns it with the bytes it holds.
fn build(n: usize, op: impl Fn(usize) -> Op) -> (State, usize) {
    let before = LIVE.load(Relaxed);
    let mut s = base_state();
    for start in (0..n).step_by(1024) {
        let cmd = Command::new(T0, (start..(start + 1024).min(n)).map(&op).collect());
        black_box(s.apply(&cmd));
    }
    let bytes = LIVE.load(Relaxed).saturating_sub(before);
    (s, bytes)
}

fn memory_and_snapshots() {
    let n = scale(1_000_000);
    type MakeOp = Box<dyn Fn(usize) -> Op>;
    let cases: Vec<(&str, MakeOp)> = vec![
        (
            "live leases, 1 own key each",
            Box::new(|i| acquire(i, vec![format!("job:{i}")])),
        ),
        (
            "live leases, [own key, global]",
            Box::new(|i| acquire(i, vec![format!("job:{i}"), "global".into()])),
        ),
        (
            // What `quorate-bench fill` creates: leases spread over 10k shared keys.
            "live leases, 1 of 10k shared keys each",
            Box::new(|i| acquire(i, vec![format!("fill:{}", i % 10_000)])),
        ),
        (
            "rate keys (one check each)",
            Box::new(|i| rate(format!("user:{i}"))),
        ),
    ];
    println!();
    println!(
        "{:<44} {:>9} {:>11} {:>10} {:>15} | {:>10} {:>13} {:>12} {:>10} {:>22}",
        "state at 1M items (counting allocator)",
        "items",
        "live bytes",
        "B/item",
        "restored B/item",
        "snapshot",
        "snapshot ms",
        "restore ms",
        "digest µs",
        "cut: longest lock, ms"
    );
    for (name, op) in cases {
        let (mut state, bytes) = build(n, op);
        let st = state.stats();
        let items = st.leases.max(st.rate_keys);
        assert_eq!(items, n, "{name}: every op must have been granted");
        let mut snap_t = Vec::new();
        let mut restore_t = Vec::new();
        let mut digest_t = Vec::new();
        let mut size = 0;
        let mut restored_bytes = 0;
        for _ in 0..RUNS {
            let t = Stopwatch::start();
            let bytes = state.snapshot();
            snap_t.push(t.elapsed());
            size = bytes.len();
            let t = Stopwatch::start();
            let live = LIVE.load(Relaxed);
            let restored = State::restore(&bytes).unwrap();
            restore_t.push(t.elapsed());
            // What a node holds after a restart: the state as `restore` builds it.
            restored_bytes = LIVE.load(Relaxed).saturating_sub(live);
            assert_eq!(restored.stats(), st);
            drop(restored);
            // What a `/v1/cluster` poll costs under the state's read lock.
            let t = Stopwatch::start();
            black_box(state.digest());
            digest_t.push(t.elapsed());
        }
        // A snapshot cut as the store runs it (4096 entries a chunk): the longest
        // stretch that holds the state (open, any one chunk, close) bounds how long an
        // apply can wait while a snapshot is built. Wall-clock time, second of two
        // cuts (the first pays for fresh pages after the restores above).
        let mut longest = std::time::Duration::ZERO;
        for round in 0..2 {
            longest = std::time::Duration::ZERO;
            let t = Instant::now();
            let mut cut = state.begin_cut();
            longest = longest.max(t.elapsed());
            loop {
                let t = Instant::now();
                let done = state.continue_cut(&mut cut, 4096).unwrap();
                longest = longest.max(t.elapsed());
                if done {
                    break;
                }
            }
            let t = Instant::now();
            let cut = state.end_cut(cut).unwrap();
            longest = longest.max(t.elapsed());
            let cut_bytes = cut.into_bytes();
            assert_eq!(
                cut_bytes.len(),
                size,
                "{name} (cut {round}): the cut differs from the snapshot"
            );
        }
        println!(
            "{name:<44} {items:>9} {:>8.1} MB {:>10.1} {:>15.1} | {:>7.1} MB {:>13.1} {:>12.1} {:>10.1} {:>22.2}",
            bytes as f64 / 1e6,
            bytes as f64 / items as f64,
            restored_bytes as f64 / items as f64,
            size as f64 / 1e6,
            median(snap_t).as_secs_f64() * 1e3,
            median(restore_t).as_secs_f64() * 1e3,
            median(digest_t).as_secs_f64() * 1e6,
            longest.as_secs_f64() * 1e3,
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this as a smoke test.
    if !std::env::args().any(|a| a == "--bench") {
        std::env::set_var("QUORATE_BENCH_SCALE", "0.001");
    }
    println!(
        "quorate-core apply benchmark: 1 thread, median of {RUNS} runs, {} time",
        if cpu_ns().is_some() {
            "thread on-CPU"
        } else {
            "wall-clock"
        }
    );
    println!();
    println!(
        "{:<44} {:>9} {:<6} {:>12} {:>17} {:>14} {:>10}",
        "throughput (10k leases + 10k buckets live)", "items", "", "median", "rate", "", "per item"
    );
    throughput();
    memory_and_snapshots();
}
