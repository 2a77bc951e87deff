//! [`SnapshotData`]: openraft's snapshot handle, a file read and written in chunks.
//!
//! openraft 0.9 moves a snapshot through `SnapshotData` (`AsyncRead + AsyncWrite +
//! AsyncSeek`): the leader's replication reads it in chunks of
//! `snapshot_max_chunk_size` and sends each as an `InstallSnapshotRequest`; the
//! follower seeks and writes each chunk into the handle `begin_receiving_snapshot`
//! gave it, then hands the handle to `install_snapshot`. Backed by a file (the
//! snapshot file's leading snapshot bytes, or the follower's `snapshot.recv`), no
//! step holds more than a chunk in memory. A snapshot built while the disk was full,
//! or kept in sled by an older store, has no file and lives in memory instead.
//!
//! The file goes through the store's [`Vfs`](crate::vfs::Vfs), so the simulated
//! disk of the fault tests sees snapshot traffic too. Reads and writes are positional
//! and done inline in `poll_*`: a chunk is a few MiB of page-cache I/O, about a
//! millisecond, which openraft's replication task would otherwise wait for anyway.
//! Clones share the file and the bytes but each keeps its own position.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::vfs::VFile;

/// A snapshot's bytes for openraft: a file region or, failing a file, memory.
#[derive(Clone)]
pub struct SnapshotData {
    inner: Inner,
    pos: u64,
}

#[derive(Clone)]
enum Inner {
    /// The first `len` bytes of `file` (writes past `len` extend it).
    File {
        file: Arc<dyn VFile>,
        len: u64,
    },
    Mem(Arc<Vec<u8>>),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::File { .. } => "file",
            Inner::Mem(_) => "memory",
        };
        f.debug_struct("SnapshotData")
            .field("kind", &kind)
            .field("len", &self.len())
            .field("pos", &self.pos)
            .finish()
    }
}

impl SnapshotData {
    /// The first `len` bytes of `file`.
    pub(crate) fn file(file: Arc<dyn VFile>, len: u64) -> Self {
        SnapshotData {
            inner: Inner::File { file, len },
            pos: 0,
        }
    }

    /// Bytes held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SnapshotData {
            inner: Inner::Mem(Arc::new(bytes)),
            pos: 0,
        }
    }

    /// Length of the snapshot bytes.
    pub fn len(&self) -> u64 {
        match &self.inner {
            Inner::File { len, .. } => *len,
            Inner::Mem(b) => b.len() as u64,
        }
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are in a file (not in memory).
    pub fn is_file(&self) -> bool {
        matches!(self.inner, Inner::File { .. })
    }

    /// All the bytes, read into memory (tests; a snapshot restore reads them once).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        match &self.inner {
            Inner::File { file, len } => {
                let len = usize::try_from(*len)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "snapshot too big"))?;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, 0)?;
                Ok(buf)
            }
            Inner::Mem(b) => Ok(b.as_ref().clone()),
        }
    }

    /// A blocking reader of the bytes from the start (wrap it in a `BufReader`: each
    /// read is one positional read of the file).
    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader { data: self, pos: 0 }
    }

    /// Calls `f` on the bytes in order, at most `chunk` at a time.
    pub(crate) fn for_each_chunk(
        &self,
        chunk: usize,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match &self.inner {
            Inner::File { file, len } => {
                let mut buf = vec![0u8; chunk.max(1)];
                let mut at = 0u64;
                while at < *len {
                    let n = usize::try_from(*len - at).map_or(buf.len(), |l| l.min(buf.len()));
                    file.read_exact_at(&mut buf[..n], at)?;
                    f(&buf[..n])?;
                    at += n as u64;
                }
                Ok(())
            }
            Inner::Mem(b) => b.chunks(chunk.max(1)).try_for_each(f),
        }
    }
}

/// See [`SnapshotData::reader`].
pub(crate) struct Reader<'a> {
    data: &'a SnapshotData,
    pos: u64,
}

impl io::Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.data.len().saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        match &self.data.inner {
            Inner::File { file, .. } => file.read_exact_at(&mut buf[..n], self.pos)?,
            Inner::Mem(b) => {
                let at = self.pos as usize;
                buf[..n].copy_from_slice(&b[at..at + n]);
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let left = this.len().saturating_sub(this.pos);
        let n = usize::try_from(left).map_or(buf.remaining(), |l| l.min(buf.remaining()));
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        match &this.inner {
            Inner::File { file, .. } => {
                let dst = buf.initialize_unfilled_to(n);
                if let Err(e) = file.read_exact_at(dst, this.pos) {
                    return Poll::Ready(Err(e));
                }
                buf.advance(n);
            }
            Inner::Mem(b) => {
                let at = this.pos as usize;
                buf.put_slice(&b[at..at + n]);
            }
        }
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let pos = this.pos;
        match &mut this.inner {
            Inner::File { file, len } => {
                if let Err(e) = file.write_all_at(data, pos) {
                    return Poll::Ready(Err(e));
                }
                *len = (*len).max(pos + data.len() as u64);
            }
            Inner::Mem(b) => {
                let b = Arc::make_mut(b);
                let at = usize::try_from(pos)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too big"))?;
                if b.len() < at + data.len() {
                    b.resize(at + data.len(), 0);
                }
                b[at..at + data.len()].copy_from_slice(data);
            }
        }
        this.pos += data.len() as u64;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Durability is the installer's business: it fsyncs the file it keeps.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => this.len().checked_add_signed(d),
            SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        this.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{OpenHow, RealFs, Vfs};
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    /// Chunks written at their offsets (as openraft's follower does) read back in
    /// chunks (as its leader does), from a file and from memory alike.
    #[tokio::test]
    async fn chunks_round_trip_through_a_file_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = RealFs
            .open(&dir.path().join("f"), OpenHow::CreateTruncate)
            .unwrap();
        let want: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for mut d in [
            SnapshotData::file(Arc::from(file), 0),
            SnapshotData::from_bytes(Vec::new()),
        ] {
            for (i, chunk) in want.chunks(3000).enumerate() {
                d.seek(SeekFrom::Start(i as u64 * 3000)).await.unwrap();
                d.write_all(chunk).await.unwrap();
            }
            d.shutdown().await.unwrap();
            assert_eq!(d.len(), want.len() as u64);
            assert_eq!(d.seek(SeekFrom::End(0)).await.unwrap(), 10_000);
            let mut got = Vec::new();
            let mut at = 0;
            while at < want.len() {
                d.seek(SeekFrom::Start(at as u64)).await.unwrap();
                let mut buf = Vec::with_capacity(4096);
                while buf.len() < buf.capacity() {
                    if d.read_buf(&mut buf).await.unwrap() == 0 {
                        break;
                    }
                }
                at += buf.len();
                got.extend(buf);
            }
            assert_eq!(got, want);
            assert_eq!(d.to_vec().unwrap(), want);
            let mut read = Vec::new();
            std::io::Read::read_to_end(&mut d.reader(), &mut read).unwrap();
            assert_eq!(read, want);
            let mut chunks = Vec::new();
            d.for_each_chunk(999, |c| {
                chunks.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(chunks, want);
            assert!(d.seek(SeekFrom::Current(-20_000)).await.is_err());
        }
    }
}
