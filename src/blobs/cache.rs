//! The on-disk chunk cache for `/blobs`.
//!
//! A chunk is the file `<dir>/<id[..2]>/<id>/<index>.<sha256>`: written to a temporary name and
//! renamed when complete (so a crash never leaves a visible partial chunk), and hashed again
//! whenever it is read (a corrupt chunk is deleted and reported as a miss, never served). The
//! index of chunks lives in memory, rebuilt by scanning the directory at start, so the cache
//! survives restarts. Total size is bounded; the least recently used chunks are evicted.
//!
//! The directory may be shared with other programs (`blobs.cache_dir` is configurable): peerd
//! only ever removes files it wrote — chunks it indexed, and its own temporary files, named
//! with [`TMP_MARK`]. A write is admitted only when the disk has room for it
//! ([`crate::swarm::spool::has_room`]); otherwise the chunk is served uncached.

use crate::stream::ByteStream;
use bytes::Bytes;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub const CACHE_HITS: &str = "peerd_blobs_cache_hits_total";
pub const CACHE_MISSES: &str = "peerd_blobs_cache_misses_total";
pub const CACHE_CORRUPT: &str = "peerd_blobs_cache_corrupt_total";
pub const CACHE_EVICTIONS: &str = "peerd_blobs_cache_evictions_total";
pub const CACHE_BYTES: &str = "peerd_blobs_cache_bytes";

/// Describe the cache's metrics.
pub fn describe() {
    metrics::describe_counter!(CACHE_HITS, "/blobs chunk cache hits");
    metrics::describe_counter!(CACHE_MISSES, "/blobs chunk cache misses");
    metrics::describe_counter!(CACHE_CORRUPT, "/blobs cached chunks found corrupt and dropped");
    metrics::describe_counter!(CACHE_EVICTIONS, "/blobs chunks evicted");
    metrics::describe_gauge!(CACHE_BYTES, metrics::Unit::Bytes, "/blobs chunk cache size");
}

/// Mark of peerd's temporary files (`<index>.peerd-tmp-<uuid>`, `<meta key>.peerd-tmp`): the
/// start-up clean-up removes these and nothing else.
pub const TMP_MARK: &str = ".peerd-tmp";

/// A leftover temporary file of ours: `<index>.peerd-tmp-<uuid>`, or `<index>.tmp-<32 hex>` as
/// peerd named them before [`TMP_MARK`].
fn is_our_tmp(name: &str) -> bool {
    let Some((index, rest)) = name.split_once('.') else { return false };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let uuid_like = |u: &str| u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit());
    rest.strip_prefix(&TMP_MARK[1..]).is_some_and(|r| r.strip_prefix('-').is_some_and(uuid_like))
        || rest.strip_prefix("tmp-").is_some_and(uuid_like)
}

#[derive(Clone, Debug)]
struct Entry {
    sha256: String,
    size: u64,
    used: Instant,
    /// The file as it was when this process last saw its bytes match `sha256` (it wrote them,
    /// or hashed them on a read). While the file still looks the same, a range is read straight
    /// from it without hashing the whole chunk again.
    checked: Option<Stamp>,
}

/// What identifies one version of a file cheaply: inode, length, modification and change
/// times (a write or a `utimes` moves the change time, which no program can set back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

pub struct ChunkCache {
    dir: PathBuf,
    max_bytes: u64,
    index: DashMap<(String, u64), Entry>,
    total: AtomicU64,
    /// Chunks removed so far (evicted, or dropped as corrupt or missing).
    removed: AtomicU64,
    /// Bytes of chunks handed to their readers and being written now ([`Self::storing`]): not
    /// counted in `total` yet, but they will be.
    storing: AtomicU64,
}

/// `n` bytes about to be stored ([`ChunkCache::storing`]); released when dropped.
pub struct Storing<'a> {
    cache: &'a ChunkCache,
    n: u64,
}

impl Drop for Storing<'_> {
    fn drop(&mut self) {
        self.cache.storing.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// Bytes `from..to` of the file at `path` if it is still the version `stamp` describes (checked
/// on the open file itself, so a file replaced between the check and the read cannot slip in),
/// streamed like a local blob ([`crate::store::file::stream`]: page-cache reads on this thread,
/// into pooled buffers). The open and `fstat` run here too: the chunk is one this process wrote
/// or hashed, so its directory entry and inode are in memory, and a blocking task per read cost
/// two thread hand-offs and a fresh buffer of the range's size (page faults and zeroing) each.
fn open_if_unchanged(path: &Path, stamp: Stamp, from: u64, to: u64) -> Option<ByteStream> {
    let file = std::fs::File::open(path).ok()?;
    if Stamp::of(&file.metadata().ok()?) != stamp {
        return None;
    }
    Some(crate::store::file::stream(file, path.to_owned(), from, to - from))
}

pub(crate) fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ChunkCache {
    /// Open (creating) the cache directory and index what is already there.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<ChunkCache> {
        std::fs::create_dir_all(dir)?;
        let cache = ChunkCache {
            dir: dir.to_owned(),
            max_bytes,
            index: DashMap::new(),
            total: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            storing: AtomicU64::new(0),
        };
        for shard in std::fs::read_dir(dir)?.flatten() {
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            // Chunk shards are two lowercase hex digits; anything else (the metadata directory,
            // another program's files) is not looked into.
            if shard_name.len() != 2 || !shard_name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            for file_dir in files.flatten() {
                let id = file_dir.file_name().to_string_lossy().into_owned();
                if !valid_id(&id) || !id.starts_with(&shard_name) {
                    continue;
                }
                let Ok(chunks) = std::fs::read_dir(file_dir.path()) else { continue };
                for chunk in chunks.flatten() {
                    let name = chunk.file_name().to_string_lossy().into_owned();
                    let parsed = name.split_once('.').and_then(|(i, h)| Some((i.parse::<u64>().ok()?, h.to_owned())));
                    match parsed {
                        Some((index, sha256)) if valid_id(&sha256) => {
                            let size = chunk.metadata().map(|m| m.len()).unwrap_or(0);
                            cache.total.fetch_add(size, Ordering::Relaxed);
                            cache.index.insert(
                                (id.clone(), index),
                                Entry { sha256, size, used: Instant::now(), checked: None },
                            );
                        }
                        // A temporary file of an interrupted write of ours.
                        _ if is_our_tmp(&name) => {
                            let _ = std::fs::remove_file(chunk.path());
                        }
                        // Not ours: left alone.
                        _ => {}
                    }
                }
            }
        }
        cache.gauge();
        Ok(cache)
    }

    fn chunk_dir(&self, id: &str) -> PathBuf {
        self.dir.join(&id[..2]).join(id)
    }

    fn path(&self, id: &str, index: u64, sha256: &str) -> PathBuf {
        self.chunk_dir(id).join(format!("{index}.{sha256}"))
    }

    fn gauge(&self) {
        metrics::gauge!(CACHE_BYTES).set(self.total.load(Ordering::Relaxed) as f64);
    }

    pub fn contains(&self, id: &str, index: u64) -> bool {
        self.index.contains_key(&(id.to_owned(), index))
    }

    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The chunk and its sha256, verified; `None` when absent or found corrupt (then removed).
    pub async fn get(&self, id: &str, index: u64) -> Option<(Bytes, String)> {
        let key = (id.to_owned(), index);
        let entry = self.index.get(&key).map(|e| e.clone());
        let Some(entry) = entry else {
            metrics::counter!(CACHE_MISSES).increment(1);
            return None;
        };
        let path = self.path(id, index, &entry.sha256);
        let data = match tokio::fs::read(&path).await {
            Ok(d) => Bytes::from(d),
            Err(_) => {
                self.forget(&key, entry.size);
                metrics::counter!(CACHE_MISSES).increment(1);
                return None;
            }
        };
        let stamp = tokio::fs::metadata(&path).await.ok().map(|m| Stamp::of(&m));
        if hex_sha256(&data) != entry.sha256 {
            metrics::counter!(CACHE_CORRUPT).increment(1);
            tracing::warn!(path = %path.display(), "cached chunk is corrupt; dropped");
            let _ = tokio::fs::remove_file(&path).await;
            self.forget(&key, entry.size);
            metrics::counter!(CACHE_MISSES).increment(1);
            return None;
        }
        if let Some(mut e) = self.index.get_mut(&key) {
            e.used = Instant::now();
            // The stamp taken before the hash: a file replaced meanwhile does not match it.
            e.checked = stamp;
        }
        metrics::counter!(CACHE_HITS).increment(1);
        Some((data, entry.sha256))
    }

    /// Bytes `from..to` of a cached chunk, as a stream. A chunk whose file this process checked
    /// (wrote, or hashed on a read) and that still looks the same (inode, length, times) is read
    /// in that range only, with no hashing: the cost of a small random read is an `open`, an
    /// `fstat` and a `pread`, as for nginx. Otherwise the whole chunk is read and verified
    /// ([`Self::get`]). A file truncated while it is read ends the stream with an error.
    pub async fn get_range(&self, id: &str, index: u64, from: u64, to: u64) -> Option<ByteStream> {
        let key = (id.to_owned(), index);
        let entry = self.index.get(&key).map(|e| e.clone())?;
        if to > entry.size || from > to {
            return None;
        }
        if let Some(data) = self.unchanged(&key, &entry, from, to) {
            return Some(data);
        }
        let (data, _) = self.get(id, index).await?;
        let part = (to as usize <= data.len()).then(|| data.slice(from as usize..to as usize))?;
        Some(Box::pin(futures_util::stream::once(std::future::ready(Ok(part)))))
    }

    /// A whole chunk for a peer: its bytes, its length and its sha256. As for a local read
    /// ([`Self::get_range`]), a chunk whose file this process checked and that still looks the
    /// same is streamed from the file without hashing (so what the page cache holds can go by
    /// sendfile); otherwise it is read whole and verified. The peer checks the bytes against
    /// the sha256 either way.
    pub async fn whole(&self, id: &str, index: u64) -> Option<(ByteStream, u64, String)> {
        let key = (id.to_owned(), index);
        let entry = self.index.get(&key).map(|e| e.clone())?;
        if let Some(data) = self.unchanged(&key, &entry, 0, entry.size) {
            return Some((data, entry.size, entry.sha256));
        }
        let (data, sha) = self.get(id, index).await?;
        let len = data.len() as u64;
        Some((crate::stream::of_memory(data), len, sha))
    }

    /// Bytes `from..to` of the chunk's file, when this process checked it and it still looks
    /// the same (a hit); `None` otherwise.
    fn unchanged(&self, key: &(String, u64), entry: &Entry, from: u64, to: u64) -> Option<ByteStream> {
        let path = self.path(&key.0, key.1, &entry.sha256);
        let data = open_if_unchanged(&path, entry.checked?, from, to)?;
        if let Some(mut e) = self.index.get_mut(key) {
            e.used = Instant::now();
        }
        metrics::counter!(CACHE_HITS).increment(1);
        Some(data)
    }

    fn forget(&self, key: &(String, u64), size: u64) {
        if self.index.remove(key).is_some() {
            self.total.fetch_sub(size, Ordering::Relaxed);
            self.removed.fetch_add(1, Ordering::SeqCst);
            self.gauge();
        }
    }

    /// How many chunks were removed so far: unchanged, every chunk seen cached is still there.
    pub fn removals(&self) -> u64 {
        self.removed.load(Ordering::SeqCst)
    }

    /// Store a chunk; returns its sha256. Evicts least recently used chunks past the bound.
    pub async fn put(&self, id: &str, index: u64, data: &Bytes) -> std::io::Result<String> {
        use sha2::Digest as _;
        self.put_hashed(id, index, data, sha2::Sha256::digest(data).into()).await
    }

    /// [`put`](Self::put) of a chunk whose sha256 the caller computed from these very bytes (a
    /// transfer checks every chunk as it arrives: no second hash).
    pub async fn put_hashed(&self, id: &str, index: u64, data: &Bytes, sha: [u8; 32]) -> std::io::Result<String> {
        let sha256 = hex::encode(sha);
        if !crate::swarm::spool::has_room(&self.dir, data.len() as u64) {
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no disk room for the chunk cache"));
        }
        let dir = self.chunk_dir(id);
        tokio::fs::create_dir_all(&dir).await?;
        let tmp = dir.join(format!("{index}{TMP_MARK}-{}", uuid::Uuid::new_v4().simple()));
        let written = match tokio::fs::write(&tmp, data).await {
            Ok(()) => tokio::fs::rename(&tmp, self.path(id, index, &sha256)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // No partial file left behind (a full disk fails writes half-way).
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        // Hashed from the very bytes written: the file is checked as it is now.
        let checked = tokio::fs::metadata(self.path(id, index, &sha256)).await.ok().map(|m| Stamp::of(&m));
        let old = self.index.insert(
            (id.to_owned(), index),
            Entry { sha256: sha256.clone(), size: data.len() as u64, used: Instant::now(), checked },
        );
        if let Some(old) = old {
            self.total.fetch_sub(old.size, Ordering::Relaxed);
            if old.sha256 != sha256 {
                let _ = tokio::fs::remove_file(self.path(id, index, &old.sha256)).await;
            }
        }
        self.total.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.evict().await;
        self.gauge();
        Ok(sha256)
    }

    async fn evict(&self) {
        if self.total.load(Ordering::Relaxed) <= self.max_bytes {
            return;
        }
        // Down to 90% so eviction does not run on every put.
        let target = self.max_bytes / 10 * 9;
        let mut entries: Vec<((String, u64), Entry)> =
            self.index.iter().map(|e| (e.key().clone(), e.value().clone())).collect();
        entries.sort_by_key(|(_, e)| e.used);
        for ((id, index), e) in entries {
            if self.total.load(Ordering::Relaxed) <= target {
                break;
            }
            let _ = tokio::fs::remove_file(self.path(&id, index, &e.sha256)).await;
            self.forget(&(id, index), e.size);
            metrics::counter!(CACHE_EVICTIONS).increment(1);
        }
    }

    /// A chunk of `n` bytes is about to be stored (its readers got it before the write): until
    /// the guard drops, [`Self::evicts_recent`] counts it as if it were here.
    pub fn storing(&self, n: u64) -> Storing<'_> {
        self.storing.fetch_add(n, Ordering::Relaxed);
        Storing { cache: self, n }
    }

    /// Whether storing `extra` more bytes would evict a chunk used within `within`: eviction
    /// removes the least recently used chunks down to 90% of the bound, and prefetch must not
    /// push out what clients are reading. Chunks being stored now count as stored.
    pub fn evicts_recent(&self, extra: u64, within: std::time::Duration) -> bool {
        let coming = self.storing.load(Ordering::Relaxed).saturating_add(extra);
        let total = self.total.load(Ordering::Relaxed).saturating_add(coming);
        if total <= self.max_bytes {
            return false;
        }
        let mut entries: Vec<(Instant, u64)> = self.index.iter().map(|e| (e.used, e.size)).collect();
        entries.sort_unstable_by_key(|(used, _)| *used);
        let (mut left, target) = (total, self.max_bytes / 10 * 9);
        for (used, size) in entries {
            if left <= target {
                return false;
            }
            if used.elapsed() < within {
                return true;
            }
            left = left.saturating_sub(size);
        }
        left > target
    }

    /// The file path of a cached chunk (tests corrupt it on purpose).
    pub fn chunk_path(&self, id: &str, index: u64) -> Option<PathBuf> {
        self.index.get(&(id.to_owned(), index)).map(|e| self.path(id, index, &e.sha256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range read to the end (`None`: not served).
    async fn range(cache: &ChunkCache, id: &str, index: u64, from: u64, to: u64) -> Option<Bytes> {
        use futures_util::TryStreamExt;
        let parts: Vec<Bytes> = cache.get_range(id, index, from, to).await?.try_collect().await.ok()?;
        Some(parts.concat().into())
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn put_get_persist_corrupt_evict() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 10).unwrap();
        assert!(cache.get(ID, 0).await.is_none());
        cache.put(ID, 0, &Bytes::from_static(b"abcd")).await.unwrap();
        cache.put(ID, 1, &Bytes::from_static(b"efgh")).await.unwrap();
        assert_eq!(cache.get(ID, 0).await.unwrap().0, "abcd");
        // A leftover temporary file is not a chunk, and is removed; other files are not ours.
        let tmp = format!("2{TMP_MARK}-{}", "a".repeat(32));
        std::fs::write(cache.chunk_dir(ID).join(&tmp), b"partial").unwrap();
        std::fs::write(cache.chunk_dir(ID).join("notes.txt"), b"someone else's").unwrap();

        let reopened = ChunkCache::open(dir.path(), 10).unwrap();
        assert_eq!(reopened.total_bytes(), 8);
        assert_eq!(reopened.get(ID, 1).await.unwrap().0, "efgh");
        assert!(!reopened.chunk_dir(ID).join(&tmp).exists());
        assert!(reopened.chunk_dir(ID).join("notes.txt").exists(), "not ours: left alone");

        let path = reopened.chunk_path(ID, 1).unwrap();
        std::fs::write(&path, b"EFGH").unwrap();
        assert!(reopened.get(ID, 1).await.is_none(), "corrupt chunk is never served");
        assert!(!path.exists(), "and is dropped");
        assert!(!reopened.contains(ID, 1));

        // Bound 10 bytes: a third 4-byte chunk evicts the least recently used one.
        reopened.get(ID, 0).await.unwrap();
        reopened.put(ID, 3, &Bytes::from_static(b"ijkl")).await.unwrap();
        reopened.put(ID, 4, &Bytes::from_static(b"mnop")).await.unwrap();
        assert!(reopened.total_bytes() <= 10);
        assert!(reopened.contains(ID, 4), "the newest stays");
    }

    /// A range of a chunk this process checked is read without hashing the chunk; a file that
    /// changed since (replaced, or rewritten in place) is verified again and, if wrong, dropped.
    #[tokio::test]
    async fn ranges_of_checked_chunks_and_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        cache.put(ID, 0, &Bytes::from_static(b"0123456789")).await.unwrap();
        cache.put(ID, 1, &Bytes::from_static(b"abcdefghij")).await.unwrap();
        assert_eq!(range(&cache, ID, 0, 2, 5).await.unwrap(), "234", "written here: checked");
        assert_eq!(range(&cache, ID, 0, 0, 10).await.unwrap(), "0123456789");
        assert!(range(&cache, ID, 0, 4, 11).await.is_none(), "past the chunk");
        assert!(range(&cache, ID, 9, 0, 1).await.is_none(), "not cached");

        // Replaced by another file (a new inode): not trusted, verified, found wrong, dropped.
        let path = cache.chunk_path(ID, 0).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"0123XX6789").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(range(&cache, ID, 0, 0, 3).await.is_none(), "a replaced chunk is not served");
        assert!(!cache.contains(ID, 0), "and is dropped");

        // Rewritten in place (same inode and length, later times): verified again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let path = cache.chunk_path(ID, 1).unwrap();
        std::fs::write(&path, b"abcdeXghij").unwrap();
        assert!(range(&cache, ID, 1, 0, 3).await.is_none(), "a rewritten chunk is not served");
        assert!(!cache.contains(ID, 1));

        // A cache reopened (another process run) checks each chunk once, on its first read.
        cache.put(ID, 2, &Bytes::from_static(b"klmnopqrst")).await.unwrap();
        let reopened = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(range(&reopened, ID, 2, 7, 10).await.unwrap(), "rst", "verified whole, then sliced");
        assert_eq!(range(&reopened, ID, 2, 0, 2).await.unwrap(), "kl", "then read as a range");
    }

    /// A whole chunk for a peer: a checked, unchanged chunk comes from its file (no hash), one
    /// that changed is verified and, if wrong, not given at all; the sha256 is the chunk's.
    #[tokio::test]
    async fn whole_chunks_for_peers() {
        use futures_util::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let whole = |i: u64| {
            let cache = &cache;
            async move {
                let (body, len, sha) = cache.whole(ID, i).await?;
                let parts: Vec<Bytes> = body.try_collect().await.ok()?;
                Some((Bytes::from(parts.concat()), len, sha))
            }
        };
        let sha = cache.put(ID, 0, &Bytes::from_static(b"0123456789")).await.unwrap();
        assert_eq!(whole(0).await.unwrap(), (Bytes::from_static(b"0123456789"), 10, sha.clone()));
        assert!(whole(1).await.is_none(), "not cached");
        // Checked here: read from the file as it is (what the peer's check is for). Rewritten
        // in place with other bytes (later times): verified, found wrong, dropped.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(cache.chunk_path(ID, 0).unwrap(), b"01234X6789").unwrap();
        assert!(whole(0).await.is_none(), "a changed chunk that is wrong is not given");
        assert!(!cache.contains(ID, 0));
        // Another run of the process: verified once, whole from memory, then from the file.
        cache.put(ID, 2, &Bytes::from_static(b"klmnopqrst")).await.unwrap();
        let reopened = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let (body, len, _) = reopened.whole(ID, 2).await.unwrap();
        assert_eq!(len, 10);
        assert_eq!(body.try_collect::<Vec<Bytes>>().await.unwrap().concat(), b"klmnopqrst");
        assert!(reopened.index.get(&(ID.to_owned(), 2)).unwrap().checked.is_some(), "checked by that read");
    }

    /// `blobs.cache_dir` pointed at a directory other programs use: opening the cache and
    /// filling it past its bound removes no file peerd did not write.
    #[tokio::test]
    async fn a_shared_directory_keeps_other_programs_files() {
        let dir = tempfile::tempdir().unwrap();
        // Another program's tree, shaped like ours (two-character directories and all).
        let theirs = [
            "ab/cdef/data.bin",
            "ab/config.toml",
            "01/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/readme",
            "01/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef/7.tmp-1",
            "zz/1.tmp-0123456789abcdef0123456789abcdef",
            "notes.tmp",
            "meta.tmp",
        ];
        for f in theirs {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"not peerd's").unwrap();
        }
        let cache = ChunkCache::open(dir.path(), 8).unwrap();
        assert_eq!(cache.total_bytes(), 0, "nothing of theirs indexed");
        for i in 0..6 {
            cache.put(ID, i, &Bytes::from_static(b"abcd")).await.unwrap();
        }
        assert!(cache.total_bytes() <= 8, "evicted down to the bound");
        drop(ChunkCache::open(dir.path(), 8).unwrap());
        for f in theirs {
            assert!(dir.path().join(f).exists(), "{f} was removed");
        }
    }

    #[tokio::test]
    async fn evicts_recent_sees_what_eviction_would_remove() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 20).unwrap();
        for i in 0..4 {
            cache.put(ID, i, &Bytes::from_static(b"abcd")).await.unwrap();
        }
        let hour = std::time::Duration::from_secs(3600);
        assert!(!cache.evicts_recent(4, hour), "room for it: nothing evicted");
        assert!(cache.evicts_recent(8, hour), "past the bound, chunks used just now would go");
        assert!(!cache.evicts_recent(8, std::time::Duration::ZERO), "nothing counts as recent");
        // A chunk handed to its readers and being written counts as here until it is.
        let storing = cache.storing(4);
        assert!(cache.evicts_recent(4, hour), "the chunk being stored takes the room");
        drop(storing);
        assert!(!cache.evicts_recent(4, hour));
    }

    #[test]
    fn only_our_temporary_files_match() {
        assert!(is_our_tmp(&format!("3{TMP_MARK}-{}", "0f".repeat(16))));
        assert!(is_our_tmp(&format!("12.tmp-{}", "0f".repeat(16))), "the older naming");
        for other in ["3.tmp", "x.tmp-0123", "3.peerd-tmp", ".peerd-tmp-0", "notes.tmp-abc", "tmp"] {
            assert!(!is_our_tmp(other), "{other}");
        }
    }
}
