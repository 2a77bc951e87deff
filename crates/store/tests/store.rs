//! Behaviour of the sled store beyond openraft's suite: snapshot transfer between
//! stores, restart (snapshot + committed replay), log edges, group commit, and
//! refusing damaged or foreign data directories.

#[path = "../src/bin/store_crash_child/workload.rs"]
mod workload;

use std::path::Path;

use anyhow::{ensure, Result};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
use quorate_store::{open, Storage, StoreError, SyncHook, SyncReport};
use workload::{entry, log_id, replay};

/// Appends, commits and applies entries `from..=to` in term 1, the way openraft would.
async fn feed(st: &mut Storage, from: u64, to: u64) -> Result<()> {
    let entries: Vec<_> = (from..=to).map(|i| entry(1, i)).collect();
    let (tx, rx) = tokio::sync::oneshot::channel();
    st.log.append_with_callback(entries.clone(), move |r| {
        let _ = tx.send(r);
    })?;
    rx.await??;
    st.log.save_committed(Some(log_id(1, to))).await?;
    st.sm.apply(entries).await?;
    Ok(())
}

/// A store in `dir` fed entries `1..=to`, and the snapshot it then built.
async fn fed_and_snapshotted(
    dir: &Path,
    to: u64,
) -> Result<(
    Storage,
    openraft::storage::Snapshot<quorate_store::TypeConfig>,
)> {
    let mut st = open(dir)?;
    feed(&mut st, 1, to).await?;
    let snap = st.sm.get_snapshot_builder().await.build_snapshot().await?;
    Ok((st, snap))
}

/// What openraft does at startup (see `workload::recover`).
async fn recover(st: &mut Storage) -> Result<()> {
    workload::recover(&mut st.log, &mut st.sm)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trip_between_stores() -> Result<()> {
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a, snap) = fed_and_snapshotted(a_dir.path(), 300).await?;
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 300)));
    assert_eq!(a.sm.digest(), replay(300).digest());

    let mut b = open(b_dir.path())?;
    assert!(b.is_fresh());
    let mut rx = b.sm.begin_receiving_snapshot().await?;
    *rx = *snap.snapshot;
    b.sm.install_snapshot(&snap.meta, rx).await?;
    assert_eq!(b.sm.digest(), a.sm.digest());
    assert_eq!(b.sm.last_applied(), Some(log_id(1, 300)));
    assert!(!b.is_fresh());
    let current =
        b.sm.get_current_snapshot()
            .await?
            .expect("installed snapshot is current");
    assert_eq!(current.meta, snap.meta);

    // The installed snapshot survives a restart of the follower.
    let digest = b.sm.digest();
    drop(b);
    let b = open(b_dir.path())?;
    assert_eq!(b.sm.digest(), digest);
    assert_eq!(b.sm.last_applied(), Some(log_id(1, 300)));
    Ok(())
}

/// The transfer openraft 0.9 does, chunk by chunk: the leader seeks and reads its
/// snapshot handle in chunks, the follower seeks and writes each chunk into the
/// handle it began receiving with. Both handles are files (the snapshot is never
/// whole in memory on either side) and the follower ends with the leader's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_moves_between_stores_in_chunks_through_files() -> Result<()> {
    use std::io::SeekFrom;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (mut a, mut snap) = fed_and_snapshotted(a_dir.path(), 400).await?;
    ensure!(snap.snapshot.is_file(), "built into the snapshot file");
    let sent = a.sm.get_current_snapshot().await?.expect("current");
    ensure!(sent.snapshot.is_file() && sent.meta == snap.meta);

    let mut b = open(b_dir.path())?;
    let mut rx = b.sm.begin_receiving_snapshot().await?;
    ensure!(rx.is_file(), "received into a file");
    let end = snap.snapshot.seek(SeekFrom::End(0)).await?;
    ensure!(end > 3 * 4096, "several chunks: {end} bytes");
    let mut offset = 0;
    while offset < end {
        snap.snapshot.seek(SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity(4096);
        while buf.len() < buf.capacity() {
            if snap.snapshot.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        rx.seek(SeekFrom::Start(offset)).await?;
        rx.write_all(&buf).await?;
        offset += buf.len() as u64;
    }
    rx.shutdown().await?;
    b.sm.install_snapshot(&snap.meta, rx).await?;
    ensure!(b.sm.digest() == a.sm.digest());
    ensure!(
        !b_dir.path().join("snapshot.recv").exists(),
        "the received file is gone"
    );
    let current = b.sm.get_current_snapshot().await?.expect("installed");
    ensure!(current.snapshot.to_vec()? == snap.snapshot.to_vec()?);
    drop(b);
    ensure!(open(b_dir.path())?.sm.digest() == a.sm.digest());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_rejects_data_that_disagrees_with_meta() -> Result<()> {
    let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (_a, snap) = fed_and_snapshotted(a_dir.path(), 10).await?;
    let mut b = open(b_dir.path())?;
    let mut meta = snap.meta.clone();
    meta.last_log_id = Some(log_id(1, 11));
    assert!(b
        .sm
        .install_snapshot(&meta, snap.snapshot.clone())
        .await
        .is_err());
    let garbage = Box::new(quorate_store::SnapshotData::from_bytes(
        b"not a snapshot".to_vec(),
    ));
    assert!(b.sm.install_snapshot(&snap.meta, garbage).await.is_err());
    assert!(b.is_fresh(), "a rejected install changes nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_loads_snapshot_and_replays_committed_log() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut st, _) = fed_and_snapshotted(dir.path(), 100).await?;
    st.log.purge(log_id(1, 90)).await?;
    feed(&mut st, 101, 150).await?;
    st.log.save_vote(&Vote::new(1, 1)).await?;
    let before = st.sm.digest();
    st.log.flush().await?;
    drop(st);

    // Reopening in the same process right away works: the flusher thread and sled's
    // lock are released on drop.
    let mut st = open(dir.path())?;
    assert_eq!(
        st.sm.last_applied(),
        Some(log_id(1, 100)),
        "state comes from the snapshot"
    );
    recover(&mut st).await?;
    assert_eq!(st.sm.last_applied(), Some(log_id(1, 150)));
    assert_eq!(st.sm.digest(), before);
    assert_eq!(st.sm.digest(), replay(150).digest());
    assert_eq!(st.log.read_vote().await?, Some(Vote::new(1, 1)));
    let state = st.log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 90)));
    assert_eq!(state.last_log_id, Some(log_id(1, 150)));
    assert!(!st.is_fresh());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_edges() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut st = open(dir.path())?;
    feed(&mut st, 1, 10).await?;
    let log = &mut st.log;

    // Odd ranges.
    assert!(log.try_get_log_entries(5..5).await?.is_empty());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = log.try_get_log_entries(7..3).await?;
    assert!(reversed.is_empty());
    assert_eq!(log.try_get_log_entries(..).await?.len(), 10);
    assert_eq!(log.try_get_log_entries(10..=u64::MAX).await?.len(), 1);
    assert_eq!(log.try_get_log_entries(..=0).await?.len(), 0);

    // Truncate the tail, then purge; purge never moves backwards.
    log.truncate(log_id(1, 8)).await?;
    assert_eq!(log.get_log_state().await?.last_log_id, Some(log_id(1, 7)));
    log.purge(log_id(1, 4)).await?;
    log.purge(log_id(1, 2)).await?;
    let s = log.get_log_state().await?;
    assert_eq!(s.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(
        log.try_get_log_entries(..)
            .await?
            .first()
            .map(|e| e.log_id.index),
        Some(5)
    );

    // Purge past the end: the log is empty and its last id is the purged one.
    log.purge(log_id(1, 20)).await?;
    let s = log.get_log_state().await?;
    assert_eq!(
        (s.last_purged_log_id, s.last_log_id),
        (Some(log_id(1, 20)), Some(log_id(1, 20)))
    );
    assert!(log.try_get_log_entries(..).await?.is_empty());

    // Appending continues after the purged id, and all of it survives a reopen.
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append_with_callback([entry(2, 21)], move |r| {
        let _ = tx.send(r);
    })?;
    rx.await??;
    // A purge becomes durable once a durable snapshot covers it (as openraft purges
    // past the log's end only for an installed snapshot): install one at 20.
    let other = tempfile::tempdir()?;
    let (_o, snap) = fed_and_snapshotted(other.path(), 20).await?;
    st.sm.install_snapshot(&snap.meta, snap.snapshot).await?;
    drop(st);
    let mut st = open(dir.path())?;
    let s = st.log.get_log_state().await?;
    assert_eq!(
        (s.last_purged_log_id, s.last_log_id),
        (Some(log_id(1, 20)), Some(log_id(2, 21)))
    );

    // Truncating everything.
    st.log.truncate(log_id(2, 21)).await?;
    assert_eq!(
        st.log.get_log_state().await?.last_log_id,
        Some(log_id(1, 20))
    );
    Ok(())
}

/// Appends entries 1..=n (term 1) all at once, as openraft keeps appends in flight,
/// and waits until every one is acknowledged durable.
async fn append_all(st: &Storage, n: u64) -> Result<()> {
    let mut waiters = Vec::new();
    for i in 1..=n {
        let (tx, rx) = tokio::sync::oneshot::channel();
        st.log.append_with_callback([entry(1, i)], move |r| {
            let _ = tx.send(r);
        })?;
        waiters.push(rx);
    }
    for rx in waiters {
        rx.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let st = open(dir.path())?;
    let before = st.log.flush_stats();
    let n = 200u64;
    append_all(&st, n).await?;
    let after = st.log.flush_stats();
    assert_eq!(after.callbacks - before.callbacks, n);
    assert!(
        after.flushes - before.flushes < n,
        "200 queued appends should share fsyncs: {after:?}"
    );
    Ok(())
}

/// The node's disk metrics come from this hook: every batch that reached the disk
/// is reported once, before its callbacks, with the writes it made durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_that_reached_the_disk_is_reported_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let st = open(dir.path())?;
    let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = reports.clone();
    let hook: SyncHook = std::sync::Arc::new(move |r: SyncReport| sink.lock().unwrap().push(r));
    ensure!(
        st.log.on_sync(hook.clone()).is_ok(),
        "the first hook is taken"
    );
    ensure!(
        st.log.on_sync(hook).is_err(),
        "a second hook is handed back"
    );
    // Whatever opening the store queued is on disk, and reported, once this is
    // answered: a batch reports before its callbacks fire.
    st.log.flush().await?;
    let before = st.log.flush_stats();
    let reported_before = reports.lock().unwrap().len();
    let n = 100u64;
    append_all(&st, n).await?;
    let after = st.log.flush_stats();
    let reports = reports.lock().unwrap()[reported_before..].to_vec();
    assert_eq!(reports.len() as u64, after.flushes - before.flushes);
    let acknowledged: usize = reports.iter().map(|r| r.acknowledged).sum();
    assert_eq!(acknowledged as u64, n);
    assert!(reports.iter().all(|r| !r.elapsed.is_zero()), "{reports:?}");
    Ok(())
}

/// `sled::open` of a store's database, polling while the lock is still held: a
/// dropped store's sled keeps its file lock until sled's IO threads let go of it,
/// a moment later (`quorate_store::open` waits for it the same way).
fn sled_unlocked(dir: &Path) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(dir.join("sled")) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            other => return Ok(other?),
        }
    }
}

/// `open` waits for a directory lock that another handle lets go of a moment later
/// (as a dropped store's sled does when its IO threads finish) instead of failing:
/// the raft_log unit tests that reopen a directory failed "could not acquire lock"
/// in CI before it did.
#[test]
fn open_waits_for_a_lock_released_a_moment_later() -> Result<()> {
    let dir = tempfile::tempdir()?;
    drop(open(dir.path())?);
    let holder = sled_unlocked(dir.path())?;
    let release = std::thread::spawn(move || {
        // The other handle's owner finishing its work: the cause of the release.
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(holder);
    });
    let reopened = open(dir.path());
    release.join().expect("the holder's thread");
    ensure!(reopened.is_ok(), "open failed: {:?}", reopened.err());
    Ok(())
}

fn expect_corrupt(dir: &Path) -> Result<String> {
    check_refused(dir, open(dir))
}

fn check_refused(dir: &Path, opened: Result<Storage, StoreError>) -> Result<String> {
    match opened {
        Ok(_) => anyhow::bail!("opened a bad data dir {}", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            ensure!(
                msg.contains(&dir.display().to_string()),
                "error does not name the path: {msg}"
            );
            ensure!(
                matches!(e, StoreError::Corrupt { .. } | StoreError::Open { .. }),
                "unexpected error kind: {e:?}"
            );
            Ok(msg)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_foreign_or_damaged_dirs() -> Result<()> {
    // A directory with unrelated content is not silently turned into an empty store.
    let foreign = tempfile::tempdir()?;
    std::fs::write(foreign.path().join("notes.txt"), b"hello")?;
    expect_corrupt(foreign.path())?;

    // A crash during the very first open leaves only `sled.creating`: that is retried.
    let half = tempfile::tempdir()?;
    std::fs::create_dir(half.path().join("sled.creating"))?;
    std::fs::write(half.path().join("sled.creating/db"), b"partial")?;
    assert!(open(half.path())?.is_fresh());

    // The sled files overwritten with garbage.
    let dir = tempfile::tempdir()?;
    {
        let mut st = open(dir.path())?;
        feed(&mut st, 1, 20).await?;
        st.log.save_vote(&Vote::new(3, 1)).await?;
    }
    for entry in std::fs::read_dir(dir.path().join("sled"))? {
        let path = entry?.path();
        if path.is_file() {
            let len = std::fs::metadata(&path)?.len() as usize;
            std::fs::write(&path, vec![0xA5; len.max(64)])?;
        }
    }
    let msg = expect_corrupt(dir.path())?;
    eprintln!("garbage sled files: {msg}");

    // The sled directory emptied: no marker, no data.
    let dir = tempfile::tempdir()?;
    drop(open(dir.path())?);
    std::fs::remove_dir_all(dir.path().join("sled"))?;
    std::fs::create_dir(dir.path().join("sled"))?;
    let msg = expect_corrupt(dir.path())?;
    eprintln!("emptied sled dir: {msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_live_dir_fails_with_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = open(dir.path())?;
    let msg = check_refused(dir.path(), open(dir.path()))?;
    assert!(msg.contains("lock"), "{msg}");
    Ok(())
}

/// A store with 20 entries, a vote and a snapshot.
async fn make() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let mut st = open(dir.path())?;
    feed(&mut st, 1, 20).await?;
    st.log.save_vote(&Vote::new(3, 1)).await?;
    st.sm.get_snapshot_builder().await.build_snapshot().await?;
    Ok(dir)
}

/// The one segment file of a store made by [`make`].
fn segment(dir: &Path) -> Result<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("raftlog"))?
        .map(|e| e.map(|e| e.path()))
        .filter(|p| !p.as_ref().is_ok_and(|p| p.ends_with("clean")))
        .collect::<Result<_, _>>()?;
    ensure!(files.len() == 1, "expected one segment, found {files:?}");
    Ok(files.remove(0))
}

/// Byte offsets of the records of a (format 3) segment: a 16-byte segment header, then
/// records of a 28-byte header (u32 length, u32 crc, u64 index, u64 synced, u32 header
/// crc) and the payload.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 16;
    while off + 28 <= bytes.len() {
        out.push(off);
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 28 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_undecodable_or_inconsistent_content() -> Result<()> {
    // Tamper with one key through sled directly, then expect `open` to refuse.
    let tamper = |dir: &Path, tree: &str, key: &[u8], value: Option<&[u8]>| -> Result<String> {
        {
            let db = sled_unlocked(dir)?;
            let t = db.open_tree(tree)?;
            match value {
                Some(v) => t.insert(key, v)?,
                None => t.remove(key)?,
            };
            db.flush()?;
        }
        expect_corrupt(dir)
    };
    let d = make().await?;
    eprintln!(
        "{}",
        tamper(d.path(), "meta", b"vote", Some(b"\xff\xff\xff"))?
    );
    // A damaged snapshot file (its crc catches any flipped byte).
    let d = make().await?;
    let snap = d.path().join("snapshot");
    let mut bytes = std::fs::read(&snap)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&snap, &bytes)?;
    let msg = expect_corrupt(d.path())?;
    ensure!(
        msg.contains("snapshot") && msg.contains("checksum"),
        "{msg}"
    );
    let d = make().await?;
    eprintln!("{}", tamper(d.path(), "meta", b"format", Some(b"other/9"))?);

    // A record damaged in the middle of the log (an intact one follows it).
    let d = make().await?;
    let path = segment(d.path())?;
    let mut bytes = std::fs::read(&path)?;
    let at = record_offsets(&bytes)[6] + 30; // inside entry 7's payload
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes)?;
    let msg = expect_corrupt(d.path())?;
    ensure!(msg.contains("index 7") && msg.contains("checksum"), "{msg}");

    // A lost record (entries 6 and 8 would be neighbours).
    let d = make().await?;
    let path = segment(d.path())?;
    let bytes = std::fs::read(&path)?;
    let offs = record_offsets(&bytes);
    let mut cut = bytes[..offs[6]].to_vec();
    cut.extend_from_slice(&bytes[offs[7]..]);
    std::fs::write(&path, &cut)?;
    let msg = expect_corrupt(d.path())?;
    ensure!(msg.contains("index 7"), "{msg}");

    // The log directory itself is gone: never start with an empty log.
    let d = make().await?;
    std::fs::remove_dir_all(d.path().join("raftlog"))?;
    let msg = expect_corrupt(d.path())?;
    ensure!(msg.contains("raftlog/ is missing"), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_dropped_and_the_log_goes_on() -> Result<()> {
    // What a crash in the middle of a write leaves: the last record cut short, or
    // garbage after the last complete record. Neither was acknowledged.
    for tear in ["short", "garbage", "zeros"] {
        let d = make().await?;
        let path = segment(d.path())?;
        let mut bytes = std::fs::read(&path)?;
        match tear {
            "short" => {
                let last = *record_offsets(&bytes).last().unwrap();
                bytes.truncate(last + 19);
            }
            "garbage" => bytes.extend_from_slice(&[7u8; 40]),
            _ => bytes.extend_from_slice(&[0u8; 4096]),
        }
        std::fs::write(&path, &bytes)?;
        // A crash leaves no clean-stop marker; with it, every bad record is damage.
        std::fs::remove_file(d.path().join("raftlog").join("clean"))?;
        let mut st = open(d.path())?;
        let last = st.log.get_log_state().await?.last_log_id.map(|l| l.index);
        let expect = if tear == "short" { 19 } else { 20 };
        ensure!(last == Some(expect), "{tear}: log ends at {last:?}");
        // Appending goes on from there, and survives a reopen.
        let (tx, rx) = tokio::sync::oneshot::channel();
        st.log
            .append_with_callback([entry(1, expect + 1)], move |r| {
                let _ = tx.send(r);
            })?;
        rx.await??;
        drop(st);
        let mut st = open(d.path())?;
        let got = st.log.try_get_log_entries(..).await?;
        ensure!(
            got.iter().map(|e| e.log_id.index).eq(1..=expect + 1),
            "{tear}: {:?}",
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_store_moves_its_log_out_of_sled() -> Result<()> {
    // Format 1 kept the log in sled's `logs` tree (big-endian index keys, the store's
    // bincode options). Build one by hand: entries 1..=30, 1..=10 purged, and the
    // snapshot at 10 that covers them (kept in sled's `snapshot` tree by then).
    let d = tempfile::tempdir()?;
    let snap_dir = tempfile::tempdir()?;
    let (_s, snap) = fed_and_snapshotted(snap_dir.path(), 10).await?;
    {
        let codec = || bincode::DefaultOptions::new().reject_trailing_bytes();
        use bincode::Options;
        std::fs::create_dir_all(d.path())?;
        let db = sled_unlocked(d.path())?;
        let meta = db.open_tree("meta")?;
        meta.insert("format", &b"quorate-store/1"[..])?;
        meta.insert("vote", codec().serialize(&Vote::<u64>::new(2, 1))?)?;
        meta.insert("last_purged", codec().serialize(&log_id(1, 10))?)?;
        meta.insert("committed", codec().serialize(&log_id(1, 30))?)?;
        let logs = db.open_tree("logs")?;
        for i in 5..=30u64 {
            logs.insert(i.to_be_bytes(), codec().serialize(&entry(1, i))?)?;
        }
        let snaps = db.open_tree("snapshot")?;
        snaps.insert("meta", codec().serialize(&snap.meta)?)?;
        snaps.insert("data", snap.snapshot.to_vec()?)?;
        db.flush()?;
    }
    for _ in 0..2 {
        let mut st = open(d.path())?;
        let s = st.log.get_log_state().await?;
        ensure!(s.last_purged_log_id == Some(log_id(1, 10)), "{s:?}");
        ensure!(s.last_log_id == Some(log_id(1, 30)), "{s:?}");
        let got = st.log.try_get_log_entries(..).await?;
        ensure!(got.iter().map(|e| e.log_id.index).eq(11..=30));
        ensure!(got.iter().all(|e| *e == entry(1, e.log_id.index)));
        let vote = st.log.read_vote().await?;
        ensure!(vote == Some(Vote::new(2, 1)), "{vote:?}");
    }
    // The sled copy is gone and the store says format 2: a binary that only knows
    // format 1 refuses it instead of finding an empty log. (Opened last: sled's own
    // threads may hold its lock a moment after a handle is dropped.)
    let db = sled_unlocked(d.path())?;
    ensure!(!db.tree_names().iter().any(|n| n.as_ref() == b"logs"));
    let format = db.open_tree("meta")?.get("format")?;
    ensure!(format.as_deref() == Some(&b"quorate-store/3"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_kept_in_sled_by_an_older_version_is_restored_then_moved() -> Result<()> {
    // Before snapshots got their own file they were two sled values, `snapshot/meta`
    // (bincode SnapshotMeta) and `snapshot/data`. Put one there by hand, taken apart
    // from a real snapshot file (data | meta | u64 meta length | u32 crc).
    let d = make().await?;
    let digest = {
        let st = open(d.path())?;
        st.sm.digest()
    };
    let file = std::fs::read(d.path().join("snapshot"))?;
    let body = file.len() - 4;
    let meta_len = u64::from_le_bytes(file[body - 8..body].try_into()?) as usize;
    let meta_at = body - 8 - meta_len;
    {
        let db = sled_unlocked(d.path())?;
        let snap = db.open_tree("snapshot")?;
        snap.insert("meta", &file[meta_at..meta_at + meta_len])?;
        snap.insert("data", &file[..meta_at])?;
        db.flush()?;
    }
    std::fs::remove_file(d.path().join("snapshot"))?;

    let mut st = open(d.path())?;
    assert_eq!(st.sm.digest(), digest);
    assert_eq!(st.sm.last_applied(), Some(log_id(1, 20)));
    // The next snapshot is a file, and the sled copy goes.
    st.sm.get_snapshot_builder().await.build_snapshot().await?;
    drop(st);
    assert!(d.path().join("snapshot").exists());
    let db = sled_unlocked(d.path())?;
    assert!(db.open_tree("snapshot")?.is_empty());
    Ok(())
}

/// Issue 21: on a follower's snapshot install openraft purges the log up to the
/// snapshot at once, while the state machine decodes the snapshot for seconds before
/// writing it. A crash in between used to leave `last_purged` past the durable
/// snapshot: the entries between were gone and the node could not start again. Now
/// the purge is durable only as far as a durable snapshot covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_durable_only_as_far_as_the_durable_snapshot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut st, _) = fed_and_snapshotted(dir.path(), 50).await?;
    feed(&mut st, 51, 300).await?;
    // What openraft does on an install of a snapshot at 200: purge first.
    st.log.purge(log_id(1, 200)).await?;
    // openraft sees the purge at once.
    let s = st.log.get_log_state().await?;
    assert_eq!(s.last_purged_log_id, Some(log_id(1, 200)));
    let first = st
        .log
        .try_get_log_entries(..)
        .await?
        .first()
        .map(|e| e.log_id.index);
    assert_eq!(first, Some(201));
    st.log.flush().await?;
    // The process dies before the install has written its snapshot.
    drop(st);

    let mut st = open(dir.path())?;
    assert_eq!(st.sm.last_applied(), Some(log_id(1, 50)));
    let s = st.log.get_log_state().await?;
    assert!(
        s.last_purged_log_id.is_none_or(|p| p.index <= 50),
        "purged past the durable snapshot: {s:?}"
    );
    recover(&mut st).await?;
    assert_eq!(st.sm.last_applied(), Some(log_id(1, 300)));
    assert_eq!(st.sm.digest(), replay(300).digest());

    // The same purge, and then the install completes: now it is made durable.
    st.log.purge(log_id(1, 200)).await?;
    let (_other_dir, snap) = {
        let d = tempfile::tempdir()?;
        let (_o, snap) = fed_and_snapshotted(d.path(), 200).await?;
        (d, snap)
    };
    st.sm.install_snapshot(&snap.meta, snap.snapshot).await?;
    drop(st);
    let st = open(dir.path())?;
    let mut log = st.log.clone();
    let s = log.get_log_state().await?;
    assert_eq!(s.last_purged_log_id, Some(log_id(1, 200)));
    assert_eq!(s.last_log_id, Some(log_id(1, 300)));
    Ok(())
}

/// A store an older version left purged past its snapshot is refused with what to
/// do, instead of starting with a state machine that would skip the lost entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_purged_past_its_snapshot_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut st, _) = fed_and_snapshotted(dir.path(), 50).await?;
    feed(&mut st, 51, 300).await?;
    st.log.flush().await?;
    drop(st);
    {
        let db = sled_unlocked(dir.path())?;
        let meta = db.open_tree("meta")?;
        use bincode::Options;
        let codec = bincode::DefaultOptions::new().reject_trailing_bytes();
        meta.insert("last_purged", codec.serialize(&log_id(1, 200))?)?;
        db.flush()?;
    }
    let msg = expect_corrupt(dir.path())?;
    ensure!(
        msg.contains("purged") && msg.contains("snapshot ends at 50"),
        "{msg}"
    );
    Ok(())
}
