//! A snapshot is streamed to its file, not built whole in memory: building one
//! allocates a small fraction of its size beyond the state (the cut's chunk buffers),
//! where building it in one buffer took over twice its size (the cut's bytes, then
//! the framed copy). Installing one restores while reading the file, so what passes
//! through memory beyond the new state is the restore's own work, not the snapshot's
//! bytes on top of it. Measured with a counting global allocator, so this file holds
//! one test: nothing else may allocate meanwhile.

#![allow(unsafe_code)] // the counting allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use anyhow::{ensure, Result};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use quorate_core::{Acquire, Command, Op};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Entry `index`: `per` acquires of keys no other entry uses, with long TTLs, so
/// every one is a live lease in the snapshot.
fn entry(index: u64, per: u64) -> Entry<quorate_store::TypeConfig> {
    let ops = (0..per)
        .map(|j| {
            let n = index * per + j;
            Op::Acquire(Acquire {
                keys: vec![format!("key:{n}")],
                lease_id: format!("lease-{n}"),
                holder: format!("worker-{}", n % 13),
                ttl_ms: 3_600_000,
            })
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::new(1_700_000_000_000 + index, ops)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn building_a_snapshot_does_not_hold_it_in_memory() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut st = quorate_store::open(dir.path())?;
    for index in 1..=150 {
        st.sm.apply([entry(index, 1000)]).await?;
    }
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let snap = st.sm.get_snapshot_builder().await.build_snapshot().await?;
    let extra = PEAK.load(Relaxed).saturating_sub(before);
    let len = usize::try_from(snap.snapshot.len())?;
    eprintln!(
        "snapshot {len} bytes; peak allocation during the build {extra} bytes above the state"
    );
    ensure!(len > 8 << 20, "the state is too small to tell: {len} bytes");
    ensure!(
        extra < len / 4,
        "building a {len}-byte snapshot allocated {extra} bytes at its peak"
    );
    ensure!(snap.snapshot.is_file(), "handed back from the file");

    // Installing it on a fresh store, streamed from the file: what stays is the new
    // state; what passes is the restore's own work, not the snapshot's bytes too.
    let b_dir = tempfile::tempdir()?;
    let mut b = quorate_store::open(b_dir.path())?;
    let rx = Box::new(*snap.snapshot);
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    b.sm.install_snapshot(&snap.meta, rx).await?;
    let peak = PEAK.load(Relaxed).saturating_sub(before);
    let kept = LIVE.load(Relaxed).saturating_sub(before);
    let passing = peak.saturating_sub(kept);
    eprintln!("install: peak {peak} bytes above the start, {kept} kept (the new state)");
    ensure!(b.sm.last_applied() == st.sm.last_applied());
    // Restoring passes through about one snapshot's worth of decoded entries; the
    // snapshot's bytes read whole on top of that would make it two.
    ensure!(
        passing < len * 3 / 2,
        "installing a {len}-byte snapshot passed through {passing} bytes beyond the new state"
    );
    Ok(())
}
