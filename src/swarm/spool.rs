//! A download's bytes: one file, its blocks reserved up front (so a disk that fills up later
//! cannot fail a write half-way through a response), written chunk by chunk at its offset as
//! parts arrive (in any order), read back by the readers and by peers. The file is removed when
//! the last handle goes.
//!
//! Chunks are kept in memory instead, as they arrived (the buffer they were checked in, no
//! copy), while the node's memory budget for them ([`Memory`], `swarm.memory_spool_bytes`)
//! has room: the blob goes on to containerd, which writes it to its own store, so the spool's
//! copy on disk was a second write of every byte (a copy into the page cache, then disk
//! bandwidth), and every read of it (the client, peers, the whole-blob hash) one more copy back.
//! Measured in the 8-node cluster benchmark before this: the spool's `pwrite` was half of
//! peerd's CPU (page-cache writes cost ~2.6 CPU-s/GiB once they grow into memory the VM has not
//! touched yet). A chunk that does not fit goes to the file as before.
//!
//! Also the free-space check every spool and cache write is admitted by ([`has_room`]).
//! `rustix::fs::statvfs` is used for it: a safe, well-kept wrapper (already in the build through
//! `tempfile`), where `nix` would add a second, larger syscall crate and `fs4`/`sysinfo` wrap the
//! same call with much more besides.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Gauge: bytes of swarm chunks held in memory instead of the spool file.
pub const SPOOL_MEMORY_BYTES: &str = "peerd_swarm_spool_memory_bytes";

/// The node's budget for chunks kept in memory, shared by every download.
pub struct Memory {
    limit: u64,
    used: AtomicU64,
}

impl Memory {
    pub fn new(limit: u64) -> Arc<Memory> {
        Arc::new(Memory { limit, used: AtomicU64::new(0) })
    }

    /// Take `n` bytes of the budget, if it has them.
    fn take(&self, n: u64) -> bool {
        let took = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_add(n).filter(|&t| t <= self.limit))
            .is_ok();
        if took {
            metrics::gauge!(SPOOL_MEMORY_BYTES).increment(n as f64);
        }
        took
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
        metrics::gauge!(SPOOL_MEMORY_BYTES).decrement(n as f64);
    }

    /// Bytes of the budget in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// Free space peerd leaves on the filesystem of its spool and cache: it never fills a node's
/// disk (kubelet evicts pods well before a disk is full) and a write it starts can finish.
pub const MIN_FREE_BYTES: u64 = 256 << 20;

/// Suffix of spool files: the start-up clean-up removes only files peerd wrote.
pub const SPOOL_SUFFIX: &str = ".peerd-spool";

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether `bytes` more fit on the filesystem of `dir` with [`MIN_FREE_BYTES`] left over (no:
/// when the free space cannot be read either).
pub fn has_room(dir: &Path, bytes: u64) -> bool {
    free_bytes(dir).is_ok_and(|free| free >= bytes.saturating_add(MIN_FREE_BYTES))
}

/// Rate limit for a warning that could repeat on every request (a full disk): true at most
/// once per `every`, tracked in `last` (seconds since the Unix epoch).
pub fn warn_now(last: &std::sync::atomic::AtomicU64, every: std::time::Duration) -> bool {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prev = last.load(Ordering::Relaxed);
    (prev == 0 || now >= prev + every.as_secs())
        && last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// Whether `name` is a spool file peerd wrote: `<hex digest>.peerd-spool`, or a bare hex digest
/// (the name before this suffix existed).
pub fn is_spool_name(name: &str) -> bool {
    let stem = name.strip_suffix(SPOOL_SUFFIX).unwrap_or(name);
    matches!(stem.len(), 64 | 128) && stem.bytes().all(|b| b.is_ascii_hexdigit())
}

pub struct Spool {
    file: std::fs::File,
    path: PathBuf,
    /// Chunks held in memory, by offset (none of them is in the file).
    held: Mutex<BTreeMap<u64, Bytes>>,
    memory: Option<Arc<Memory>>,
}

impl Spool {
    /// A new file of `size` bytes at `path` (replacing a leftover one), its blocks allocated:
    /// fails now (`StorageFull`) rather than on a write once clients are being answered. Chunks
    /// are held in memory while `memory` has room.
    pub fn create(path: PathBuf, size: u64, memory: Option<Arc<Memory>>) -> std::io::Result<Arc<Spool>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        // From here the file is removed on any failure (Drop).
        let spool = Spool { file, path, held: Mutex::new(BTreeMap::new()), memory };
        if size > 0 {
            match rustix::fs::fallocate(&spool.file, rustix::fs::FallocateFlags::empty(), 0, size) {
                Ok(()) => {}
                // A filesystem without fallocate: a sparse file (the free-space check still ran).
                Err(rustix::io::Errno::OPNOTSUPP) => spool.file.set_len(size)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Arc::new(spool))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Bytes>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store the chunk `data` at `offset`: kept in memory if the budget has room, else written.
    pub async fn write(self: &Arc<Self>, offset: u64, data: Bytes) -> std::io::Result<()> {
        if self.memory.as_ref().is_some_and(|m| m.take(data.len() as u64)) {
            if let Some(old) = self.held().insert(offset, data) {
                // The same chunk twice (never done): its first copy's budget goes back.
                self.memory.as_ref().inspect(|m| m.give(old.len() as u64));
            }
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.file.write_all_at(&data, offset))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Bytes `offset..offset + len`: a view of a chunk held in memory, or read from the file.
    pub async fn read(self: &Arc<Self>, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let end = offset + len as u64;
        // What memory holds of the range: (offset within the range, bytes).
        let mut parts = Vec::new();
        for (&at, chunk) in self.held().range(..end).rev() {
            let chunk_end = at + chunk.len() as u64;
            if chunk_end <= offset {
                break;
            }
            let (from, to) = (offset.max(at), end.min(chunk_end));
            parts.push((from - offset, chunk.slice((from - at) as usize..(to - at) as usize)));
        }
        parts.reverse();
        if let [(0, whole)] = &parts[..] {
            if whole.len() == len {
                return Ok(whole.clone());
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            // The file holds what memory does not (a range across chunks of both kinds: rare).
            let mut at = 0;
            for (pos, part) in parts.iter().map(|(p, b)| (*p as usize, b)).chain(std::iter::once((len, &Bytes::new())))
            {
                if pos > at {
                    this.file.read_exact_at(&mut buf[at..pos], offset + at as u64)?;
                }
                buf[pos..pos + part.len()].copy_from_slice(part);
                at = pos + part.len();
            }
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(m) = &self.memory {
            m.give(self.held().values().map(|b| b.len() as u64).sum());
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_names_and_room() {
        let hex = "ab".repeat(32);
        assert!(is_spool_name(&format!("{hex}{SPOOL_SUFFIX}")) && is_spool_name(&hex));
        for other in ["notes.txt", "ab.peerd-spool", &format!("{hex}.txt"), &format!("{}x", "a".repeat(63))] {
            assert!(!is_spool_name(other), "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(!has_room(dir.path(), u64::MAX), "no filesystem has room for everything");
        assert!(!has_room(&dir.path().join("missing"), 1), "unknown free space: no room");
        let s = Spool::create(dir.path().join("x"), 1 << 20, None).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("x")).unwrap().len(), 1 << 20);
        drop(s);
        assert!(!dir.path().join("x").exists(), "removed with its last handle");
    }

    /// Chunks go to memory while the budget has room (the very buffer, nothing written to the
    /// file), the rest to the file; reads return either, also across the two; the budget comes
    /// back when the spool goes.
    #[tokio::test]
    async fn chunks_are_held_in_memory_while_the_budget_has_room() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Memory::new(6);
        let s = Spool::create(dir.path().join("m"), 12, Some(memory.clone())).unwrap();
        let (a, b, c) = (Bytes::from_static(b"AAAA"), Bytes::from_static(b"BBBB"), Bytes::from_static(b"CCCC"));
        s.write(0, a.clone()).await.unwrap();
        s.write(8, c.clone()).await.unwrap();
        s.write(4, b.clone()).await.unwrap();
        assert_eq!(memory.used(), 4, "only the first chunk fit in the budget of 6");
        let held = s.read(0, 4).await.unwrap();
        assert_eq!((held.as_ref(), held.as_ptr()), (&b"AAAA"[..], a.as_ptr()), "the chunk as it came, not a copy");
        assert_eq!(s.read(9, 2).await.unwrap(), "CC");
        assert_eq!(s.read(2, 8).await.unwrap(), "AABBBBCC", "a range across memory and the file");
        let on_disk = std::fs::read(dir.path().join("m")).unwrap();
        assert_eq!(&on_disk[..], b"\0\0\0\0BBBBCCCC", "the chunk in memory was not written");
        let other = Spool::create(dir.path().join("n"), 4, Some(memory.clone())).unwrap();
        other.write(0, Bytes::from_static(b"DD")).await.unwrap();
        assert_eq!(memory.used(), 6, "the budget is the node's, shared by its downloads");
        drop(s);
        assert_eq!(memory.used(), 2, "a spool gives its chunks' budget back when it goes");
        drop(other);
        assert_eq!(memory.used(), 0);
    }
}
