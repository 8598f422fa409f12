//! A download's bytes on disk: one file, its blocks reserved up front (so a disk that fills up
//! later cannot fail a write half-way through a response), written chunk by chunk at its offset
//! as parts arrive (in any order), read back by the readers and by peers. The file is removed
//! when the last handle goes.
//!
//! Also the free-space check every spool and cache write is admitted by ([`has_room`]).
//! `rustix::fs::statvfs` is used for it: a safe, well-kept wrapper (already in the build through
//! `tempfile`), where `nix` would add a second, larger syscall crate and `fs4`/`sysinfo` wrap the
//! same call with much more besides.

use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

impl Spool {
    /// A new file of `size` bytes at `path` (replacing a leftover one), its blocks allocated:
    /// fails now (`StorageFull`) rather than on a write once clients are being answered.
    pub fn create(path: PathBuf, size: u64) -> std::io::Result<Arc<Spool>> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        // From here the file is removed on any failure (Drop).
        let spool = Spool { file, path };
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

    pub async fn write(self: &Arc<Self>, offset: u64, data: Bytes) -> std::io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.file.write_all_at(&data, offset))
            .await
            .map_err(std::io::Error::other)?
    }

    pub async fn read(self: &Arc<Self>, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            this.file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
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
        let s = Spool::create(dir.path().join("x"), 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("x")).unwrap().len(), 1 << 20);
        drop(s);
        assert!(!dir.path().join("x").exists(), "removed with its last handle");
    }
}
