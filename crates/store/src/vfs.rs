//! The file operations of the log, the snapshot file and the clean-stop marker, as a
//! seam: [`Vfs`] and [`VFile`]. Production uses [`RealFs`] (std files, nothing
//! added); tests use [`SimFs`] to lose power, tear writes and fail a chosen
//! operation.
//!
//! Only these files go through the seam. sled (vote, committed and purged ids,
//! format marker) and the one-time directory setup (`db.rs`, `migrate.rs`) use the
//! real filesystem directly: [`SimFs`] treats them as always durable.
//!
//! The calls are dynamic (`dyn VFile`): each is a few nanoseconds against a system
//! call of microseconds and an fsync of milliseconds, so a generic parameter
//! threaded through every type would buy nothing measurable.
//!
//! ## The simulation ([`SimFs`])
//!
//! It works on real files and remembers, per file, the content last made durable and
//! the writes and cuts made since; per directory, the creates, removes and renames not
//! yet made durable by a directory fsync. [`SimFs::crash`] freezes it (that operation
//! and every later one fails, as if the machine had stopped there), and
//! [`SimFs::restart`] rewrites the files to what a power loss at that moment could
//! leave: each unsynced write kept whole, dropped, or torn (a random subset of its
//! 512-byte sectors, so a record in the middle of a write can be lost while a later
//! one survives); each unsynced cut kept or not; a random prefix of each directory's
//! unsynced name changes. Faults: [`SimFs::fail_nth`] fails the n-th operation of a
//! kind with an errno (EIO...), and [`SimFs::set_space`] makes writes past a byte
//! budget fail with ENOSPC after writing what fits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenHow {
    /// Existing file, read and write.
    ReadWrite,
    /// Create, or empty an existing file.
    CreateTruncate,
}

/// An open file.
pub trait VFile: Send + Sync {
    /// Fills `buf` from `offset` (an error if the file ends first).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Cuts or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Current length.
    fn size(&self) -> io::Result<u64>;
    /// The whole file as the disk holds it: synced, cached pages dropped, read back.
    fn read_all_uncached(&self) -> io::Result<Vec<u8>>;
}

/// The filesystem operations of the store's own files.
pub trait Vfs: Send + Sync + 'static {
    fn open(&self, path: &Path, how: OpenHow) -> io::Result<Box<dyn VFile>>;
    /// Whole content of a file (`NotFound` if absent), through the page cache.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Names in a directory.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsync of a directory: the names created, removed or renamed in it stay so.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl VFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_all_uncached(&self) -> io::Result<Vec<u8>> {
        // Synced first (an error here means the disk may not hold what the cache
        // does), then the clean pages dropped, so the read comes from the disk.
        File::sync_data(self)?;
        rustix::fs::fadvise(self, 0, None, rustix::fs::Advice::DontNeed)?;
        let mut bytes = Vec::new();
        let mut f = self;
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

impl Vfs for RealFs {
    fn open(&self, path: &Path, how: OpenHow) -> io::Result<Box<dyn VFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if how == OpenHow::CreateTruncate {
            o.create(true).truncate(true);
        }
        Ok(Box::new(o.open(path)?))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The operations [`SimFs::fail_nth`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Write,
    Sync,
    SetLen,
    Create,
    Remove,
    Rename,
    SyncDir,
}

/// A small deterministic generator (splitmix64), so a seed replays a crash exactly.
#[derive(Debug, Clone)]
pub struct SimRng(pub u64);

impl SimRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// An unsynced change to a file's content.
#[derive(Debug, Clone)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Change>,
}

/// An unsynced change to a directory.
#[derive(Debug, Clone)]
enum NameChange {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    /// Atomic: a power loss keeps the old name or the new one.
    Rename(PathBuf, PathBuf, u64),
}

impl NameChange {
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            NameChange::Link(p, i) => {
                names.insert(p.clone(), *i);
            }
            NameChange::Unlink(p) => {
                names.remove(p);
            }
            NameChange::Rename(from, to, i) => {
                names.remove(from);
                names.insert(to.clone(), *i);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Names as the running process sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names a power loss keeps for sure.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Per directory, name changes since its last fsync.
    pending_names: BTreeMap<PathBuf, Vec<NameChange>>,
    /// Counts of operations done, per kind.
    counts: BTreeMap<Op, u64>,
    /// (kind, n, errno): the n-th operation of that kind fails.
    faults: Vec<(Op, u64, i32)>,
    /// Crash when this many mutating operations have been done.
    crash_at: Option<u64>,
    mutations: u64,
    /// Bytes the files may hold in all.
    space: Option<u64>,
    /// Frozen by a crash: every operation fails until `restart`.
    down: bool,
    /// Bumped by `restart`: handles from before it are dead.
    generation: u64,
}

impl State {
    fn used(&self) -> u64 {
        let live: std::collections::BTreeSet<u64> = self.names.values().copied().collect();
        live.iter()
            .filter_map(|i| self.inodes.get(i))
            .map(|n| n.current.len() as u64)
            .sum()
    }
}

/// The simulated disk (see the module docs). Cheap to clone; clones share the disk.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the `n`-th (1-based, counted from the start) operation of kind `op` with
    /// `errno` (e.g. `libc` EIO = 5, ENOSPC = 28).
    pub fn fail_nth(&self, op: Op, n: u64, errno: i32) {
        self.lock().faults.push((op, n, errno));
    }

    /// Operations of kind `op` done so far.
    pub fn count(&self, op: Op) -> u64 {
        self.lock().counts.get(&op).copied().unwrap_or(0)
    }

    /// Writes past `bytes` in all fail with ENOSPC (`None`: no limit).
    pub fn set_space(&self, bytes: Option<u64>) {
        self.lock().space = bytes;
    }

    /// Bytes the files hold now.
    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// Loses power once `n` more mutating operations (write, sync, cut, create,
    /// remove, rename, directory sync) have been done: the next one fails.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.lock();
        s.crash_at = Some(s.mutations + n);
    }

    /// Loses power now.
    pub fn crash(&self) {
        self.lock().down = true;
    }

    /// Whether power was lost.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Brings the disk back as a power loss at the crash could have left it (see the
    /// module docs), choosing with `rng`, and rewrites the real files to match.
    /// Faults and the crash point are cleared. Without a crash before it, this is a
    /// power loss now.
    pub fn restart(&self, rng: &mut SimRng) -> io::Result<()> {
        let mut s = self.lock();
        // Content of every inode after the power loss.
        for inode in s.inodes.values_mut() {
            let mut data = std::mem::take(&mut inode.durable);
            for change in std::mem::take(&mut inode.pending) {
                match change {
                    Change::SetLen(len) => {
                        if rng.below(2) == 0 {
                            data.resize(len as usize, 0);
                        }
                    }
                    Change::Write(off, bytes) => match rng.below(4) {
                        0 => {}
                        1 | 2 => apply_write(&mut data, off, &bytes, None),
                        _ => apply_write(&mut data, off, &bytes, Some(rng)),
                    },
                }
            }
            inode.current = data.clone();
            inode.durable = data;
        }
        // Names: the durable ones, then a random prefix of each directory's changes.
        let mut names = s.durable_names.clone();
        for changes in std::mem::take(&mut s.pending_names).into_values() {
            let keep = rng.below(changes.len() as u64 + 1) as usize;
            for change in &changes[..keep] {
                change.apply(&mut names);
            }
        }
        // The real files follow.
        for path in s.names.keys() {
            if !names.contains_key(path) {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        for (path, i) in &names {
            std::fs::write(path, &s.inodes[i].current)?;
        }
        let live: std::collections::BTreeSet<u64> = names.values().copied().collect();
        s.inodes.retain(|i, _| live.contains(i));
        s.durable_names = names.clone();
        s.names = names;
        s.faults.clear();
        s.crash_at = None;
        s.down = false;
        s.generation += 1;
        Ok(())
    }

    /// Counts a mutating operation of kind `op`: Err if power is (now) lost or a
    /// fault was set for it.
    fn begin(s: &mut State, op: Op, generation: u64) -> io::Result<()> {
        if s.down || generation != s.generation {
            return Err(power_lost());
        }
        s.mutations += 1;
        if s.crash_at.is_some_and(|at| s.mutations > at) {
            s.down = true;
            return Err(power_lost());
        }
        let n = {
            let c = s.counts.entry(op).or_insert(0);
            *c += 1;
            *c
        };
        if let Some(&(_, _, errno)) = s.faults.iter().find(|f| f.0 == op && f.1 == n) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    /// The inode behind `path`, adopting a file that exists on the real disk (it was
    /// there before the simulation: durable).
    fn inode_of(s: &mut State, path: &Path) -> io::Result<Option<u64>> {
        if let Some(&i) = s.names.get(path) {
            return Ok(Some(i));
        }
        match std::fs::read(path) {
            Ok(bytes) => {
                let i = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(
                    i,
                    Inode {
                        durable: bytes.clone(),
                        current: bytes,
                        pending: Vec::new(),
                    },
                );
                s.names.insert(path.to_path_buf(), i);
                s.durable_names.insert(path.to_path_buf(), i);
                Ok(Some(i))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn name_change(s: &mut State, path: &Path, change: NameChange) {
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        s.pending_names.entry(dir).or_default().push(change);
    }
}

/// Applies a write to `data`; with `torn`, only a random subset of its 512-byte
/// sectors (each kept with probability 1/2).
fn apply_write(data: &mut Vec<u8>, off: u64, bytes: &[u8], torn: Option<&mut SimRng>) {
    const SECTOR: usize = 512;
    let off = off as usize;
    match torn {
        None => {
            if data.len() < off + bytes.len() {
                data.resize(off + bytes.len(), 0);
            }
            data[off..off + bytes.len()].copy_from_slice(bytes);
        }
        Some(rng) => {
            let mut at = 0;
            while at < bytes.len() {
                // Sector boundaries are on the file's offsets, as on a disk.
                let end = ((off + at) / SECTOR + 1) * SECTOR - off;
                let end = end.min(bytes.len());
                if rng.below(2) == 0 {
                    if data.len() < off + end {
                        data.resize(off + end, 0);
                    }
                    data[off + at..off + end].copy_from_slice(&bytes[at..end]);
                }
                at = end;
            }
        }
    }
}

struct SimFile {
    fs: SimFs,
    inode: u64,
    real: File,
    generation: u64,
}

impl VFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.real, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        SimFs::begin(&mut s, Op::Write, self.generation)?;
        // What fits in the space left, then ENOSPC (a short write, as on a full disk).
        let mut take = buf.len();
        if let Some(space) = s.space {
            let cur = s.inodes[&self.inode].current.len() as u64;
            let grows = (offset + buf.len() as u64).saturating_sub(cur);
            let free = space.saturating_sub(s.used());
            if grows > free {
                take = (cur + free).saturating_sub(offset).min(buf.len() as u64) as usize;
            }
        }
        FileExt::write_all_at(&self.real, &buf[..take], offset)?;
        let inode = s.inodes.get_mut(&self.inode).expect("live inode");
        apply_write(&mut inode.current, offset, &buf[..take], None);
        inode
            .pending
            .push(Change::Write(offset, buf[..take].to_vec()));
        if take < buf.len() {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        SimFs::begin(&mut s, Op::SetLen, self.generation)?;
        self.real.set_len(len)?;
        let inode = s.inodes.get_mut(&self.inode).expect("live inode");
        inode.current.resize(len as usize, 0);
        inode.pending.push(Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.lock();
        SimFs::begin(&mut s, Op::Sync, self.generation)?;
        let inode = s.inodes.get_mut(&self.inode).expect("live inode");
        inode.durable = inode.current.clone();
        inode.pending.clear();
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.real.metadata()?.len())
    }

    fn read_all_uncached(&self) -> io::Result<Vec<u8>> {
        self.sync_data()?;
        let mut bytes = Vec::new();
        let mut f = &self.real;
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

impl Vfs for SimFs {
    fn open(&self, path: &Path, how: OpenHow) -> io::Result<Box<dyn VFile>> {
        let mut s = self.lock();
        let generation = s.generation;
        if s.down {
            return Err(power_lost());
        }
        let inode = match (Self::inode_of(&mut s, path)?, how) {
            (Some(i), OpenHow::ReadWrite) => i,
            (None, OpenHow::ReadWrite) => {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            (existing, OpenHow::CreateTruncate) => {
                Self::begin(&mut s, Op::Create, generation)?;
                match existing {
                    Some(i) => {
                        let inode = s.inodes.get_mut(&i).expect("live inode");
                        inode.current.clear();
                        inode.pending.push(Change::SetLen(0));
                        i
                    }
                    None => {
                        let i = s.next_inode;
                        s.next_inode += 1;
                        s.inodes.insert(i, Inode::default());
                        s.names.insert(path.to_path_buf(), i);
                        Self::name_change(&mut s, path, NameChange::Link(path.to_path_buf(), i));
                        i
                    }
                }
            }
        };
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if how == OpenHow::CreateTruncate {
            o.create(true).truncate(true);
        }
        let real = o.open(path)?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
            real,
            generation,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut s = self.lock();
        if s.down {
            return Err(power_lost());
        }
        match Self::inode_of(&mut s, path)? {
            Some(i) => Ok(s.inodes[&i].current.clone()),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        if self.lock().down {
            return Err(power_lost());
        }
        RealFs.read_dir(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let generation = s.generation;
        Self::begin(&mut s, Op::Remove, generation)?;
        if Self::inode_of(&mut s, path)?.is_none() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        std::fs::remove_file(path)?;
        s.names.remove(path);
        Self::name_change(&mut s, path, NameChange::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let generation = s.generation;
        Self::begin(&mut s, Op::Rename, generation)?;
        let Some(i) = Self::inode_of(&mut s, from)? else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        Self::inode_of(&mut s, to)?;
        std::fs::rename(from, to)?;
        s.names.remove(from);
        s.names.insert(to.to_path_buf(), i);
        // Within one directory (the snapshot's), which is all the store renames.
        let change = NameChange::Rename(from.to_path_buf(), to.to_path_buf(), i);
        Self::name_change(&mut s, to, change);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let generation = s.generation;
        Self::begin(&mut s, Op::SyncDir, generation)?;
        for change in s.pending_names.remove(dir).unwrap_or_default() {
            change.apply(&mut s.durable_names);
        }
        Ok(())
    }
}
