//! Reading blobs straight from containerd's content directory: the fast path of
//! [`super::containerd::ContainerdStore`].
//!
//! containerd keeps every committed (verified) blob as a plain file at
//! `<content root>/blobs/<algorithm>/<hex>` and writes a blob under `ingest/` until it is
//! committed, then renames it into `blobs/` — so a file under `blobs/` is always complete and
//! never rewritten in place. Reading it ourselves skips containerd's gRPC `ReadContent` (Go
//! copies and GC, about 1 CPU-second per GiB on 2 vCPU).
//!
//! Each read is one `spawn_blocking` task reading up to [`READ_SIZE`] bytes; one read runs ahead
//! while the previous chunk is being sent, so disk and socket overlap and a stream holds at most
//! two chunks. No thread waits on a slow client: a read is started only when the previous chunk
//! was taken.
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
use std::io::{self, Read, Seek, SeekFrom};
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
        let mut file = File::open(&path).map_err(|source| FileError::Open { path: path.clone(), source })?;
        let actual = file.metadata().map_err(|source| FileError::Open { path: path.clone(), source })?.len();
        if actual != size {
            return Err(FileError::SizeMismatch { path, expected: size, actual });
        }
        file.seek(SeekFrom::Start(offset)).map_err(|source| FileError::Io { path: path.clone(), source })?;
        Ok((file, path))
    })
    .await
    .map_err(|e| FileError::Io { path: PathBuf::new(), source: io::Error::other(e) })?;
    let (file, path) = opened?;
    Ok(Box::pin(FileStream::new(file, path, len)))
}

type Read1 = (File, io::Result<Bytes>);

/// The blocking reads of one open file, one running ahead of the consumer. Each read is handed
/// on in views of at most [`MAX_PIECE`] bytes: the HTTP layer takes bodies in such pieces (so a
/// stalled client pins little), and a read's buffer holds exactly its bytes, so views of it pin
/// nothing more — cutting it here spares the copy a larger chunk costs there (every byte but the
/// first piece's, measured as part of the memmove on the local path's profile).
struct FileStream {
    /// The file while no read is running.
    file: Option<File>,
    pending: Option<JoinHandle<Read1>>,
    /// What is left of the last read, handed on piece by piece.
    current: Bytes,
    /// Bytes not yet asked for from the file.
    unread: u64,
    /// Bytes still to deliver (including a pending read).
    undelivered: u64,
    path: PathBuf,
    done: bool,
}

impl FileStream {
    fn new(file: File, path: PathBuf, len: u64) -> Self {
        let mut s = Self {
            file: Some(file),
            pending: None,
            current: Bytes::new(),
            unread: len,
            undelivered: len,
            path,
            done: len == 0,
        };
        s.start_read();
        s
    }

    /// Start the next read if there is something left to read and no read is running.
    fn start_read(&mut self) {
        if self.unread == 0 || self.pending.is_some() {
            return;
        }
        let Some(file) = self.file.take() else { return };
        let n = self.unread.min(READ_SIZE as u64);
        self.unread -= n;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(n as usize);
            // `read_to_end` on a `Take` fills the spare capacity without zeroing it first, and
            // stops at `n` bytes or at the end of the file, whichever comes first.
            let result = (&file).take(n).read_to_end(&mut buf).map(|_| Bytes::from(buf));
            (file, result)
        }));
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
        self.file = None;
        Poll::Ready(Some(Err(e)))
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
        if (chunk.len() as u64) < asked {
            // The file shrank under us (truncated in place): never end a body short.
            let why = format!(
                "{} ended early: got {} of the {} bytes asked for (truncated while being read?)",
                this.path.display(),
                chunk.len(),
                asked
            );
            return this.fail(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
        this.undelivered -= chunk.len() as u64;
        this.file = Some(file);
        if this.undelivered == 0 {
            this.done = true;
            this.file = None;
        } else {
            this.start_read();
        }
        this.current = chunk;
        this.next_piece()
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
        let per_read = READ_SIZE / MAX_PIECE;
        let mut want = vec![MAX_PIECE; 3 * per_read];
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
        for read in pieces.chunks(READ_SIZE / MAX_PIECE) {
            for w in read.windows(2) {
                assert_eq!(w[1].as_ptr() as usize, w[0].as_ptr() as usize + w[0].len(), "a copy, not a view");
            }
        }
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
