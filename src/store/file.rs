//! Reading blobs straight from containerd's content directory: the fast path of
//! [`super::containerd::ContainerdStore`].
//!
//! containerd keeps every committed (verified) blob as a plain file at
//! `<content root>/blobs/<algorithm>/<hex>` and writes a blob under `ingest/` until it is
//! committed, then renames it into `blobs/` — so a file under `blobs/` is always complete and
//! never rewritten in place. Reading it ourselves skips containerd's gRPC `ReadContent` (Go
//! copies and GC, about 1 CPU-second per GiB on 2 vCPU).
//!
//! Reads of up to [`READ_SIZE`] bytes: what the page cache holds is read at once on the polling
//! thread without blocking it (`RWF_NOWAIT`); what must come from the disk is one `spawn_blocking`
//! task, and one more runs ahead while the previous chunk is being sent, so disk and socket
//! overlap and a stream holds at most two chunks. No thread waits on a slow client: a read is
//! started only when the previous chunk was taken.
//!
//! Integrity: the file's size must equal the size containerd's metadata records, checked when it
//! is opened; a file that ends early while it is read (truncated in place) ends the stream with an
//! error, never with a short body. containerd deleting the blob while we read it unlinks the name
//! only: the open descriptor keeps reading the same, complete inode, so the bytes stay right.

use super::ByteStream;
use crate::oci::Digest;
use crate::stream::MAX_PIECE;
use bytes::Bytes;
use futures_util::Stream;
use std::fs::File;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::task::JoinHandle;

/// Bytes per blocking read. 1 MiB reads measured as fast as nginx's sendfile on 2 vCPU
/// (REFERENCE §6), but a stalled client then pinned ~2.6 MiB (the read ahead, the rest of the
/// piece being sent, actix's buffer: `make soak`, 150 stalled readers → 390 MiB). With 256 KiB
/// reads, 30 stalled readers peaked at 61 MiB RSS against 108 MiB with 1 MiB reads (soak
/// --quick, same run), so `http.max_transfers` (256) fits the chart's memory limit, for a few
/// more syscalls and blocking tasks per GiB.
pub const READ_SIZE: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No readable file for the blob (absent, or not readable by us): use another path.
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// The file exists but does not hold the blob containerd recorded: corrupt, never served.
    #[error("{path} holds {actual} bytes, containerd records {expected}")]
    SizeMismatch { path: PathBuf, expected: u64, actual: u64 },
    #[error("range {offset}+{len} is outside the {size} byte blob")]
    Range { offset: u64, len: u64, size: u64 },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Where containerd keeps `digest` under the content root `root`.
pub fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    // A parsed Digest is `<algorithm>:<lowercase hex>` only: no separator can reach the path.
    let s = digest.to_string();
    let (alg, hex) = s.split_once(':').unwrap_or(("sha256", digest.hex()));
    root.join("blobs").join(alg).join(hex)
}

/// Open `path`, check that it holds exactly `size` bytes, and stream `len` bytes (to the end when
/// `None`) from `offset`.
pub async fn open(path: PathBuf, size: u64, offset: u64, len: Option<u64>) -> Result<ByteStream, FileError> {
    let len = len.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(FileError::Range { offset, len, size });
    }
    let opened = tokio::task::spawn_blocking(move || -> Result<(File, PathBuf), FileError> {
        let file = File::open(&path).map_err(|source| FileError::Open { path: path.clone(), source })?;
        let actual = file.metadata().map_err(|source| FileError::Open { path: path.clone(), source })?.len();
        if actual != size {
            return Err(FileError::SizeMismatch { path, expected: size, actual });
        }
        Ok((file, path))
    })
    .await
    .map_err(|e| FileError::Io { path: PathBuf::new(), source: io::Error::other(e) })?;
    let (file, path) = opened?;
    Ok(stream(file, path, offset, len))
}

/// Stream `len` bytes from `offset` of `file` (open at `path`, checked by the caller), as
/// [`open`]'s streams do: what the page cache holds read on the polling thread into pooled
/// buffers, the rest in blocking tasks, and a file that ends early an error, never a short body.
pub fn stream(file: File, path: PathBuf, offset: u64, len: u64) -> ByteStream {
    Box::pin(FileStream::new(file, path, offset, len))
}

type Read1 = (File, io::Result<Bytes>);

/// Read buffers kept for reuse (at most this many, [`READ_SIZE`] each): a fresh 256 KiB buffer
/// per read was page-faulted and zeroed by the kernel every time (`clear_page`, `exc_page_fault`:
/// 4% of the local path's CPU at 16 streams).
const POOLED: usize = 32;
static POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A read buffer from the pool (a fresh one when it is empty).
fn pooled() -> Vec<u8> {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(|| vec![0; READ_SIZE])
}

/// The first `len` bytes of a pooled buffer; the buffer goes back to the pool when the last view
/// of it is dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// Up to `n` (at most [`READ_SIZE`]) bytes of `file` at `at`, fewer only at its end, in a pooled
/// buffer.
fn read_at(file: &File, at: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = pooled();
    let mut done = 0;
    while done < n {
        match rustix::io::pread(file, &mut buf[done..n], at + done as u64) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Bytes::from_owner(Pooled { buf, len: done }))
}

/// The reads of one open file. What the page cache holds is read at once on the polling thread
/// (`preadv2` with `RWF_NOWAIT`, which fails rather than wait for the disk) into a pooled buffer;
/// otherwise a read is one `spawn_blocking` task, and after it one more runs ahead while the
/// chunk is being sent, so disk and socket overlap. Each read is handed on in views of at most
/// [`MAX_PIECE`] bytes: the HTTP layer takes bodies in such pieces (so a stalled client pins
/// little), and a read's buffer holds exactly its bytes, so views of it pin nothing more —
/// cutting it here spares the copy a larger chunk costs there. Measured on the local path: one
/// blocking task per 256 KiB cost two thread hand-offs per read.
struct FileStream {
    /// The file while no blocking read is running.
    file: Option<File>,
    pending: Option<JoinHandle<Read1>>,
    /// What is left of the last read, handed on piece by piece.
    current: Bytes,
    /// Where the next read starts.
    pos: u64,
    /// Bytes not yet asked for from the file.
    unread: u64,
    /// Bytes still to deliver (including a pending read).
    undelivered: u64,
    /// Reads that do not block are worth trying (the file system does them).
    nowait: bool,
    /// Reads that went to a blocking task.
    blocking_reads: u32,
    /// A read done without blocking right after a blocking one, handed on next (with the
    /// length asked for).
    ready: Option<(Bytes, u64)>,
    /// Tests: this many reads act as if the page cache did not hold them.
    #[cfg(test)]
    refuse_nowait: u32,
    path: PathBuf,
    done: bool,
}

impl FileStream {
    fn new(file: File, path: PathBuf, offset: u64, len: u64) -> Self {
        Self {
            file: Some(file),
            pending: None,
            current: Bytes::new(),
            pos: offset,
            unread: len,
            undelivered: len,
            nowait: true,
            blocking_reads: 0,
            ready: None,
            #[cfg(test)]
            refuse_nowait: 0,
            path,
            done: len == 0,
        }
    }

    /// Start a blocking read if there is something left to read and no read is running.
    fn start_read(&mut self) {
        if self.unread == 0 || self.pending.is_some() {
            return;
        }
        let Some(file) = self.file.take() else { return };
        let n = self.unread.min(READ_SIZE as u64);
        let at = self.pos;
        self.unread -= n;
        self.pos += n;
        self.blocking_reads += 1;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let result = read_at(&file, at, n as usize);
            (file, result)
        }));
    }

    /// What the page cache holds of the next read, read now without blocking, and the bytes it
    /// stands for (a short read is what the page cache had, the rest comes next; nothing at all
    /// is the end of the file, where a whole read was asked for): `None` when that would wait
    /// for the disk (or the file system cannot say), then a blocking read does it.
    fn read_now(&mut self) -> Option<io::Result<(Bytes, u64)>> {
        if !self.nowait || self.unread == 0 {
            return None;
        }
        #[cfg(test)]
        if self.refuse_nowait > 0 {
            self.refuse_nowait -= 1;
            return None;
        }
        let file = self.file.as_ref()?;
        let n = self.unread.min(READ_SIZE as u64) as usize;
        let mut buf = pooled();
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(&mut buf[..n])], self.pos, flags) {
            Ok(k) => {
                self.pos += k as u64;
                self.unread -= k as u64;
                let asked = if k == 0 { n } else { k };
                Some(Ok((Bytes::from_owner(Pooled { buf, len: k }), asked as u64)))
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => None,
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                self.nowait = false;
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }

    /// The next bytes sent straight from the page cache to the connection being answered, when
    /// there is one that takes them ([`crate::sendfile`]): a stand-in for the bytes sent. `None`:
    /// read them.
    fn send_direct(&mut self, cx: &mut Context<'_>) -> Option<Poll<Option<io::Result<Bytes>>>> {
        if !self.nowait || self.unread == 0 {
            return None;
        }
        let file = self.file.as_ref()?;
        Some(match crate::sendfile::send(file, self.pos, self.unread, cx)? {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(sent)) => {
                let n = sent.len() as u64;
                if n == 0 {
                    let why = format!("{} ended early (truncated while being sent?)", self.path.display());
                    return Some(self.fail(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
                }
                self.pos += n;
                self.unread -= n;
                self.undelivered -= n;
                if self.undelivered == 0 {
                    self.done = true;
                    self.file = None;
                }
                Poll::Ready(Some(Ok(sent)))
            }
            Poll::Ready(Err(e)) => self.fail(io::Error::new(e.kind(), format!("sending {}: {e}", self.path.display()))),
        })
    }

    /// The next piece of the last read (non-empty).
    fn next_piece(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        let n = self.current.len().min(MAX_PIECE);
        Poll::Ready(Some(Ok(self.current.split_to(n))))
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.current = Bytes::new();
        self.pending = None;
        self.ready = None;
        self.file = None;
        Poll::Ready(Some(Err(e)))
    }

    /// A read of `asked` bytes gave `chunk`: fewer means the file shrank under us (truncated in
    /// place), and a body never ends short.
    fn take(&mut self, chunk: Bytes, asked: u64) -> Poll<Option<io::Result<Bytes>>> {
        if chunk.is_empty() || (chunk.len() as u64) < asked {
            let why = format!(
                "{} ended early: got {} of the {} bytes asked for (truncated while being read?)",
                self.path.display(),
                chunk.len(),
                asked
            );
            return self.fail(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
        self.undelivered -= chunk.len() as u64;
        if self.undelivered == 0 {
            self.done = true;
            self.file = None;
        }
        self.current = chunk;
        self.next_piece()
    }
}

impl Stream for FileStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if !this.current.is_empty() {
            return this.next_piece();
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((chunk, asked)) = this.ready.take() {
            return this.take(chunk, asked);
        }
        if this.pending.is_none() {
            if let Some(sent) = this.send_direct(cx) {
                return sent;
            }
            match this.read_now() {
                Some(Ok((chunk, asked))) => return this.take(chunk, asked),
                Some(Err(e)) => {
                    let e = io::Error::new(e.kind(), format!("reading {}: {e}", this.path.display()));
                    return this.fail(e);
                }
                None => this.start_read(),
            }
        }
        let Some(pending) = this.pending.as_mut() else {
            return this.fail(io::Error::other(format!("{}: no read in flight", this.path.display())));
        };
        let (file, result) = match std::task::ready!(Pin::new(pending).poll(cx)) {
            Ok(r) => r,
            Err(e) => return this.fail(io::Error::other(format!("{}: read task: {e}", this.path.display()))),
        };
        this.pending = None;
        let chunk = match result {
            Ok(c) => c,
            Err(e) => return this.fail(io::Error::new(e.kind(), format!("reading {}: {e}", this.path.display()))),
        };
        let asked = this.undelivered - this.unread;
        this.file = Some(file);
        let polled = this.take(chunk, asked);
        if !this.done {
            // One read that had to wait (a page evicted, a readahead mark: `RWF_NOWAIT` refuses
            // to start readahead) does not make the rest wait: what the page cache holds of the
            // next read is taken now, without blocking. Only what it does not hold goes to a
            // blocking read, which runs while this one is sent, so disk and socket overlap.
            // (Measured before: after one refusal every later read of the stream went to a
            // blocking task, 3,280 of 4,096 reads of a cached 1 GiB blob.)
            match this.read_now() {
                Some(Ok(read)) => this.ready = Some(read),
                // An error is met again, and reported, by the blocking read.
                Some(Err(_)) | None => this.start_read(),
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use futures_util::StreamExt;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    async fn drain(mut s: ByteStream) -> (Vec<u8>, Vec<usize>, Option<io::Error>) {
        let (mut out, mut sizes) = (Vec::new(), Vec::new());
        while let Some(item) = s.next().await {
            match item {
                Ok(c) => {
                    sizes.push(c.len());
                    out.extend_from_slice(&c);
                }
                Err(e) => return (out, sizes, Some(e)),
            }
        }
        (out, sizes, None)
    }

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("blob");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn path_layout() {
        let d = Digest::compute(Algorithm::Sha256, b"x");
        assert_eq!(blob_path(Path::new("/c"), &d), PathBuf::from(format!("/c/blobs/sha256/{}", d.hex())));
        let d = Digest::compute(Algorithm::Sha512, b"x");
        assert_eq!(blob_path(Path::new("/c"), &d), PathBuf::from(format!("/c/blobs/sha512/{}", d.hex())));
    }

    #[tokio::test]
    async fn whole_file_in_reads_handed_on_as_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(3 * READ_SIZE + 123);
        let p = write(dir.path(), &bytes);
        let (out, sizes, err) = drain(open(p, bytes.len() as u64, 0, None).await.unwrap()).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, bytes);
        let per_read = (READ_SIZE / MAX_PIECE).max(1);
        let mut want = vec![READ_SIZE.min(MAX_PIECE); 3 * per_read];
        want.push(123);
        assert_eq!(sizes, want);
    }

    /// The pieces of one read are views of its buffer, one after the other (not copies): the
    /// HTTP layer's splitting (`stream::Pieces`) then passes them through as they are.
    #[tokio::test]
    async fn the_pieces_of_a_read_are_views_of_one_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(2 * READ_SIZE);
        let p = write(dir.path(), &bytes);
        let mut s = crate::stream::Pieces::new(open(p, bytes.len() as u64, 0, None).await.unwrap(), MAX_PIECE);
        let mut pieces = Vec::new();
        while let Some(piece) = s.next().await {
            pieces.push(piece.unwrap());
        }
        assert_eq!(pieces.concat(), bytes);
        let per_read = (READ_SIZE / MAX_PIECE).max(1);
        assert_eq!(pieces.len(), 2 * per_read, "a read split further, or pieces merged");
        for read in pieces.chunks(per_read) {
            for w in read.windows(2) {
                assert_eq!(w[1].as_ptr() as usize, w[0].as_ptr() as usize + w[0].len(), "a copy, not a view");
            }
        }
    }

    /// A file in the page cache is read on the polling thread without blocking it (no blocking
    /// task per read); one that is not, or a file system without `RWF_NOWAIT`, in blocking tasks.
    #[tokio::test]
    async fn cached_files_are_read_without_blocking_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(5 * READ_SIZE + 7);
        let p = write(dir.path(), &bytes);
        let file = File::open(&p).unwrap();
        let mut s = FileStream::new(file, p.clone(), 3, bytes.len() as u64 - 3);
        let mut out = Vec::new();
        while let Some(piece) = s.next().await {
            out.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(out, &bytes[3..]);
        if !s.nowait {
            eprintln!("SKIPPED (loudly): the file system of {} does not do RWF_NOWAIT reads", dir.path().display());
            return;
        }
        assert_eq!(s.blocking_reads, 0, "a file just written is in the page cache");
        // Without inline reads (as on a file system that refuses them): blocking tasks, same bytes.
        let file = File::open(&p).unwrap();
        let mut s = FileStream::new(file, p.clone(), 0, bytes.len() as u64);
        s.nowait = false;
        let mut out = Vec::new();
        while let Some(piece) = s.next().await {
            out.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(out, bytes);
        assert_eq!(s.blocking_reads, 6);

        // One read that must wait does not send the rest of the stream to blocking tasks.
        let file = File::open(&p).unwrap();
        let mut s = FileStream::new(file, p, 0, bytes.len() as u64);
        s.refuse_nowait = 1;
        let mut out = Vec::new();
        while let Some(piece) = s.next().await {
            out.extend_from_slice(&piece.unwrap());
        }
        assert_eq!(out, bytes);
        assert_eq!(s.blocking_reads, 1, "after one refused read, the cached rest is read inline");
    }

    #[tokio::test]
    async fn ranges() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(2 * READ_SIZE + 10);
        let size = bytes.len() as u64;
        let p = write(dir.path(), &bytes);
        for (offset, len) in [
            (0u64, Some(1u64)),
            (5, Some(100)),
            (READ_SIZE as u64 - 1, Some(2)),
            (READ_SIZE as u64 + 7, None),
            (size - 1, None),
            (size - 1, Some(1)),
            (100, Some(size - 100)),
        ] {
            let (out, _, err) = drain(open(p.clone(), size, offset, len).await.unwrap()).await;
            assert!(err.is_none(), "{offset}+{len:?}: {err:?}");
            let end = len.map_or(size, |l| offset + l) as usize;
            assert_eq!(out, &bytes[offset as usize..end], "{offset}+{len:?}");
        }
        // Empty reads: at the end, and an empty blob.
        let (out, sizes, err) = drain(open(p.clone(), size, size, None).await.unwrap()).await;
        assert!(out.is_empty() && sizes.is_empty() && err.is_none());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let (out, _, err) = drain(open(empty, 0, 0, None).await.unwrap()).await;
        assert!(out.is_empty() && err.is_none());
        // Outside the blob.
        assert!(matches!(open(p.clone(), size, size + 1, None).await, Err(FileError::Range { .. })));
        assert!(matches!(open(p.clone(), size, 10, Some(size)).await, Err(FileError::Range { .. })));
        assert!(matches!(open(p, size, u64::MAX, Some(2)).await, Err(FileError::Range { .. })));
    }

    #[tokio::test]
    async fn missing_or_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &data(100));
        assert!(matches!(open(dir.path().join("nope"), 100, 0, None).await, Err(FileError::Open { .. })));
        assert!(matches!(open(p.clone(), 101, 0, None).await, Err(FileError::SizeMismatch { actual: 100, .. })));
        assert!(matches!(open(p, 99, 0, None).await, Err(FileError::SizeMismatch { .. })));
        // A directory is not a blob.
        assert!(open(dir.path().to_owned(), 100, 0, None).await.is_err());
    }

    #[tokio::test]
    async fn truncated_while_read_fails_never_short() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(4 * READ_SIZE);
        let p = write(dir.path(), &bytes);
        let mut s = open(p.clone(), bytes.len() as u64, 0, None).await.unwrap();
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(&first[..], &bytes[..first.len()]);
        // Truncate in place (same inode): the read after the one already running must fail.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(READ_SIZE as u64 + 10).unwrap();
        let (rest, _, err) = drain(s).await;
        let err = err.expect("a truncated file must end the stream with an error");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(first.len() + rest.len() < bytes.len());
        assert_eq!(&rest[..], &bytes[first.len()..first.len() + rest.len()], "what was delivered is right");
    }

    #[tokio::test]
    async fn unlinked_while_read_keeps_the_right_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(3 * READ_SIZE + 5);
        let p = write(dir.path(), &bytes);
        let mut s = open(p.clone(), bytes.len() as u64, 0, None).await.unwrap();
        let first = s.next().await.unwrap().unwrap();
        // What containerd's delete does: unlink the name (then a new blob may take the name).
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, data(10)).unwrap();
        let (rest, _, err) = drain(s).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!([&first[..], &rest[..]].concat(), bytes);
    }

    #[tokio::test]
    async fn dropping_the_stream_mid_read_is_clean() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(3 * READ_SIZE);
        let p = write(dir.path(), &bytes);
        let mut s = open(p, bytes.len() as u64, 0, None).await.unwrap();
        let _ = s.next().await.unwrap().unwrap();
        drop(s); // a pending read finishes on its own and its result is dropped
    }
}
