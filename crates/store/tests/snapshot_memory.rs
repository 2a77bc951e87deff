//! A snapshot is streamed to its file, not built whole in memory: building one
//! allocates a small fraction of its size beyond the state (the cut's chunk buffers),
//! where building it in one buffer took twice its size (the cut's bytes, then the
//! framed copy). Measured with a counting global allocator, so this file holds one
//! test: nothing else may allocate meanwhile.

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
    Ok(())
}
