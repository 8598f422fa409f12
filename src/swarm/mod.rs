//! Swarming: many nodes wanting the same new blob at once fetch it from the upstream once.
//!
//! A node that needs a blob no peer holds completely starts a [`Download`]: it announces
//! `swarm/<digest>` in the DHT, waits `swarm.gather` for the others wanting it to do the same,
//! and splits the blob into chunks. Each chunk is fetched from the upstream by one node, its
//! *owner*, chosen by rendezvous hashing over the nodes downloading it (no coordinator: every
//! node computes the same owner from the same view, and views converge through the DHT and
//! the peers' status pages). Every other node takes the chunk from whichever peer has it —
//! several peers in parallel, the least loaded first, so faster peers serve more — and serves
//! the chunks it has to others while it is still downloading.
//!
//! - **Verification**: the node that fetches a chunk from the upstream computes its sha256; the
//!   hash travels with the chunk (in the signed answer) and is checked on every hop. The whole
//!   blob is hashed against its digest before the last byte reaches a client.
//! - **Takeover**: a node waiting for a chunk from a peer that dies, or that makes no progress
//!   for `swarm.takeover`, drops that peer for that chunk and recomputes the owner — possibly
//!   itself, which then fetches it from the upstream.
//! - **Bounds**: chunks in flight per blob (from peers, from the upstream, to one peer) and per
//!   node; chunks sent at once; spool bytes; optional upload and download rates.
//!
//! The engine that makes these decisions is in [`engine`]; the peer endpoints in [`http`]; the
//! bytes live in a sparse spool file ([`spool`]) and flow from it straight to the responses.

pub mod arrival;
pub mod engine;
mod serve;
pub mod spool;

use crate::actors::upstream::Gate;
use crate::config::SwarmConfig;
use crate::oci::Digest;
use crate::peer::client::PeerClient;
use crate::routing::Router;
use crate::stream::ByteStream;
use crate::upstream::UpstreamRequest;
use actix::Recipient;
use arrival::Arrival;
use bytes::Bytes;
use dashmap::DashMap;
#[cfg(test)]
use sha2::Digest as _;
use spool::Spool;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Semaphore};

/// Chunk bytes received, by `source` (peer, upstream).
pub const SWARM_CHUNK_BYTES: &str = "peerd_swarm_chunk_bytes_total";
/// Downloads by `outcome` (started, verified, failed, no_room: streamed directly, disk full).
pub const SWARM_DOWNLOADS: &str = "peerd_swarm_downloads_total";
/// Chunks taken over from a dead or stalled peer.
pub const SWARM_TAKEOVERS: &str = "peerd_swarm_takeovers_total";
/// Failed chunk fetches by `reason`.
pub const SWARM_CHUNK_FAILURES: &str = "peerd_swarm_chunk_failures_total";
/// Peers that were downloading with this node and stopped answering.
pub const SWARM_PEERS_LOST: &str = "peerd_swarm_peers_lost_total";
/// Chunk bytes sent to peers.
pub const SWARM_UPLOAD_BYTES: &str = "peerd_swarm_upload_bytes_total";
/// Chunks passed on to a peer while they arrived here (cut-through), by `from` (peer, upstream).
pub const SWARM_PASSED_ON: &str = "peerd_swarm_chunks_passed_on_total";

pub fn describe() {
    use metrics::{describe_counter, Unit};
    describe_counter!(SWARM_CHUNK_BYTES, Unit::Bytes, "Swarming chunk bytes received by source (peer, upstream)");
    describe_counter!(SWARM_DOWNLOADS, "Swarming downloads by outcome (started, verified, failed, no_room)");
    describe_counter!(SWARM_TAKEOVERS, "Swarming chunks taken over from a dead or stalled peer");
    describe_counter!(SWARM_CHUNK_FAILURES, "Failed swarm chunk fetches by reason");
    describe_counter!(SWARM_PEERS_LOST, "Peers downloading with this node that stopped answering");
    describe_counter!(SWARM_UPLOAD_BYTES, Unit::Bytes, "Swarming chunk bytes sent to peers");
    describe_counter!(
        SWARM_PASSED_ON,
        "Swarming chunks passed on to a peer while they arrived here (cut-through), by from (peer, upstream)"
    );
    metrics::describe_gauge!(
        spool::SPOOL_MEMORY_BYTES,
        Unit::Bytes,
        "Swarming chunks of downloads in progress held in memory instead of the spool file"
    );
}

/// The DHT key under which nodes downloading `digest` announce themselves.
pub fn swarm_key(digest: &Digest) -> String {
    crate::routing::keys::swarm_key(&digest.to_string())
}

/// The DHT key under which the nodes of `me`'s group at `level` downloading `digest` announce
/// themselves.
pub fn group_key(digest: &Digest, level: u32, me: &str) -> String {
    crate::routing::keys::swarm_group_key(&digest.to_string(), level, me)
}

/// The keys of `me`'s groups at every level (announced once the swarm is cut at the DHT's cap).
pub fn group_keys(digest: &Digest, me: &str) -> Vec<String> {
    (1..=crate::routing::keys::SWARM_GROUP_LEVELS).map(|l| group_key(digest, l, me)).collect()
}

/// Every key a download of `digest` by `me` may be announced under.
pub fn download_keys(digest: &Digest, me: &str) -> Vec<String> {
    std::iter::once(swarm_key(digest)).chain(group_keys(digest, me)).collect()
}

/// The rendezvous owner of a chunk (moved to the transfer core).
pub use crate::transfer::owner;
pub use serve::PeerChunk;

type Limiter = governor::DefaultDirectRateLimiter;

/// Largest piece a reader takes from the spool at once.
const READ_PIECE: u64 = 256 << 10;

/// A byte-rate limiter counting KiB (governor's cells are u32), with bursts of one chunk.
fn limiter(bytes_per_s: u64, chunk: u64) -> Option<Limiter> {
    let rate = NonZeroU32::new(u32::try_from(bytes_per_s / 1024).unwrap_or(u32::MAX))?;
    let burst = NonZeroU32::new(u32::try_from(chunk.div_ceil(1024)).unwrap_or(u32::MAX))?.max(rate);
    Some(governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(burst)))
}

/// Wait until `bytes` may pass `limit` (none: at once).
pub(crate) async fn throttle(limit: Option<&Limiter>, bytes: usize) {
    if let (Some(l), Some(n)) = (limit, NonZeroU32::new(u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX))) {
        let _ = l.until_n_ready(n).await;
    }
}

/// In a status page's path: the page of the node's download of the blob whatever its chunk
/// size (a node that does not know the blob's size yet asks for it).
pub const ANY_CHUNK_SIZE: u64 = 0;

/// How a download ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Running,
    Verified,
    Failed(String),
}

struct State {
    /// sha256 of each chunk held.
    have: Vec<Option<[u8; 32]>>,
    /// Chunks arriving now: read from the upstream, or sent by a peer that has them.
    fetching: Vec<bool>,
    /// Chunks arriving (from a peer or the upstream) that are passed on while they arrive.
    arriving: HashMap<u64, Arc<Arrival>>,
    end: End,
    /// The other nodes the engine knows are downloading this blob.
    view: Vec<PeerDoc>,
}

/// One blob being downloaded by this node (shared by every request for it, and by peers).
pub struct Download {
    pub digest: Digest,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: u64,
    spool: Arc<Spool>,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// Bytes received from the upstream, all chunks together.
    upstream_bytes: AtomicU64,
}

pub use crate::transfer::engine::{bitmap, unbitmap, PeerDoc, StatusDoc};

impl Download {
    fn new(digest: Digest, size: u64, chunk_size: u64, spool: Arc<Spool>) -> Download {
        let chunks = size.div_ceil(chunk_size);
        Download {
            digest,
            size,
            chunk_size,
            chunks,
            spool,
            state: Mutex::new(State {
                have: vec![None; chunks as usize],
                fetching: vec![false; chunks as usize],
                arriving: HashMap::new(),
                end: End::Running,
                view: Vec::new(),
            }),
            changed: watch::channel(0).0,
            upstream_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Byte length of chunk `index`.
    pub fn chunk_len(&self, index: u64) -> u64 {
        (self.size - index * self.chunk_size).min(self.chunk_size)
    }

    pub fn has(&self, index: u64) -> Option<[u8; 32]> {
        self.lock().have.get(index as usize).copied().flatten()
    }

    pub fn end(&self) -> End {
        self.lock().end.clone()
    }

    /// Bytes this node has received from the upstream for this blob so far (all chunks): a peer
    /// waiting on it for a chunk keeps waiting while this grows.
    pub fn progress(&self) -> u64 {
        self.upstream_bytes.load(Ordering::Relaxed)
    }

    fn set_fetching(&self, index: u64, fetching: bool) {
        let mut s = self.lock();
        s.fetching[index as usize] = fetching;
        if !fetching {
            s.arriving.remove(&index);
        }
    }

    /// Chunk `index` arrives (from a peer or the upstream): announced as arriving, and
    /// (`pass_on`) handed to peers that ask for it while it arrives.
    fn arriving(&self, index: u64, arrival: &Arc<Arrival>, pass_on: bool) {
        {
            let mut s = self.lock();
            s.fetching[index as usize] = true;
            if pass_on {
                s.arriving.insert(index, arrival.clone());
            }
        }
        self.bump();
    }

    /// Chunk `index` as it arrives, when it is passed on.
    pub fn arrival(&self, index: u64) -> Option<Arc<Arrival>> {
        self.lock().arriving.get(&index).cloned()
    }

    fn set_view(&self, view: Vec<PeerDoc>) {
        self.lock().view = view;
    }

    pub fn status(&self) -> StatusDoc {
        let s = self.lock();
        StatusDoc {
            size: self.size,
            chunk_size: self.chunk_size,
            have: bitmap(s.have.iter().map(Option::is_some)),
            fetching: bitmap(s.fetching.iter().copied()),
            peers: s.view.clone(),
        }
    }

    /// Store a chunk whose sha256 was checked.
    async fn put(&self, index: u64, data: Bytes, sha: [u8; 32]) -> std::io::Result<()> {
        self.spool.write(index * self.chunk_size, data).await?;
        {
            let mut s = self.lock();
            s.have[index as usize] = Some(sha);
            s.fetching[index as usize] = false;
            s.arriving.remove(&index);
        }
        self.bump();
        Ok(())
    }

    fn finish(&self, end: End) {
        self.lock().end = end;
        self.bump();
    }

    /// Wait until chunk `index` is here (or the download failed).
    pub async fn wait_chunk(&self, index: u64) -> Result<(), String> {
        self.wait(|s| s.have[index as usize].is_some()).await
    }

    /// Wait until the whole blob checked out against its digest.
    pub async fn wait_verified(&self) -> Result<(), String> {
        self.wait(|s| s.end == End::Verified).await
    }

    /// Wait up to `limit` until chunk `index` is here or arriving and passed on: `Ok(false)`
    /// when neither.
    pub async fn wait_chunk_for(&self, index: u64, limit: std::time::Duration) -> Result<bool, String> {
        let i = index as usize;
        let ready = self.wait(|s| s.have[i].is_some() || s.arriving.contains_key(&index));
        match tokio::time::timeout(limit, ready).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    async fn wait(&self, ready: impl Fn(&State) -> bool) -> Result<(), String> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let s = self.lock();
                if ready(&s) {
                    return Ok(());
                }
                if let End::Failed(e) = &s.end {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err("download dropped".into());
            }
        }
    }

    /// A chunk and its sha256, for a peer.
    pub async fn read_chunk(&self, index: u64) -> Option<(Bytes, [u8; 32])> {
        let sha = self.has(index)?;
        let data = self.spool.read(index * self.chunk_size, self.chunk_len(index) as usize).await.ok()?;
        Some((data, sha))
    }

    /// Bytes `start..=end` as they arrive. With `whole`, the last piece is held back until the
    /// whole blob matched its digest, so a client never gets a complete body with wrong bytes.
    pub fn body(self: Arc<Self>, start: u64, end: u64, whole: bool) -> ByteStream {
        Box::pin(futures_util::stream::unfold(Some(start), move |pos| {
            let dl = self.clone();
            async move {
                let pos = pos?;
                if pos > end {
                    return None;
                }
                let index = pos / dl.chunk_size;
                // At most READ_PIECE bytes at a time, so a reader holds little memory.
                let upto = end.min((index + 1) * dl.chunk_size - 1).min(pos + READ_PIECE - 1);
                let ready = async {
                    dl.wait_chunk(index).await?;
                    if whole && upto == end {
                        dl.wait_verified().await?;
                    }
                    dl.spool.read(pos, (upto - pos + 1) as usize).await.map_err(|e| e.to_string())
                };
                Some(match ready.await {
                    Ok(data) => (Ok(data), Some(upto + 1)),
                    Err(e) => (Err(std::io::Error::other(format!("swarm download failed: {e}"))), None),
                })
            }
        }))
    }
}

/// Everything a node's downloads share.
pub struct Swarming {
    pub cfg: SwarmConfig,
    dir: PathBuf,
    downloads: DashMap<String, Arc<Download>>,
    spooled: AtomicU64,
    /// Chunks kept in memory instead of the spool files (`swarm.memory_spool_bytes`).
    memory: Option<Arc<spool::Memory>>,
    /// When "no disk room" was last logged.
    no_room_warned: AtomicU64,
    router: Option<Arc<dyn Router>>,
    client: Option<Arc<PeerClient>>,
    upstream: Gate,
    /// This node's peer id (rendezvous hashing), "local" without p2p.
    me: String,
    /// Told when content moves between peers (the `P2PActive` event).
    active: Option<Recipient<crate::actors::peers::ServedPeer>>,
    fetch_slots: Arc<Semaphore>,
    upload_slots: Arc<Semaphore>,
    upload_limit: Option<Limiter>,
    download_limit: Option<Limiter>,
    /// Cancelled at node shutdown: every running download ends (its readers get an error).
    stop: tokio_util::sync::CancellationToken,
}

/// What the swarm needs from the p2p side.
pub struct SwarmPeers {
    pub router: Arc<dyn Router>,
    pub client: Arc<PeerClient>,
    pub me: String,
    pub active: Recipient<crate::actors::peers::ServedPeer>,
    /// The node's upload slots (`swarm.upload_slots`), shared with /blobs' chunks for peers.
    pub uploads: Arc<Semaphore>,
}

impl Swarming {
    pub fn new(
        cfg: SwarmConfig,
        dir: PathBuf,
        upstream: Gate,
        peers: Option<SwarmPeers>,
    ) -> Result<Arc<Swarming>, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Spools of a previous run are incomplete by definition. Only files named like a spool
        // are removed: the directory may be shared with other things.
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if spool::is_spool_name(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let (router, client, me, active, uploads) = match peers {
            Some(p) => (Some(p.router), Some(p.client), p.me, Some(p.active), p.uploads),
            None => (None, None, "local".to_owned(), None, Arc::new(Semaphore::new(cfg.upload_slots))),
        };
        Ok(Arc::new(Swarming {
            upload_limit: limiter(cfg.upload_rate, cfg.max_chunk_size),
            download_limit: limiter(cfg.download_rate, cfg.max_chunk_size),
            stop: tokio_util::sync::CancellationToken::new(),
            fetch_slots: Arc::new(Semaphore::new(cfg.max_fetches)),
            upload_slots: uploads,
            memory: (cfg.memory_spool_bytes > 0).then(|| spool::Memory::new(cfg.memory_spool_bytes)),
            cfg,
            dir,
            downloads: DashMap::new(),
            spooled: AtomicU64::new(0),
            no_room_warned: AtomicU64::new(0),
            router,
            client,
            upstream,
            me,
            active,
        }))
    }

    /// Whether there is nobody to swarm with (no peer connected): then a new download would
    /// only wait `gather` for nobody, and the blob is streamed from the upstream directly.
    pub async fn alone(&self) -> bool {
        match &self.router {
            Some(r) => r.status().await.map_or(true, |s| s.connected_peers == 0),
            None => true,
        }
    }

    /// The download of `digest` in progress (or lingering), if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Download>> {
        // A failed download is on its way out: not joined, not served.
        self.downloads.get(&digest.to_string()).map(|d| d.clone()).filter(|d| !matches!(d.end(), End::Failed(_)))
    }

    /// Join the download of `digest`, starting it (fetching with `request`) if there is none.
    /// `None` when the spool has no room: the caller streams the blob directly.
    pub fn join(self: &Arc<Self>, digest: &Digest, size: u64, request: UpstreamRequest) -> Option<Arc<Download>> {
        use dashmap::mapref::entry::Entry;
        let entry = match self.downloads.entry(digest.to_string()) {
            Entry::Occupied(e) if !matches!(e.get().end(), End::Failed(_)) => return Some(e.get().clone()),
            // A failed one is being removed: this request streams directly.
            Entry::Occupied(_) => return None,
            Entry::Vacant(v) => v,
        };
        let used = self.spooled.fetch_add(size, Ordering::SeqCst);
        if used + size > self.cfg.max_spool_bytes {
            self.spooled.fetch_sub(size, Ordering::SeqCst);
            tracing::info!(%digest, size, used, "swarm spool full; streaming directly");
            return None;
        }
        // A full disk: stream straight through rather than fail half-way through a response.
        if !spool::has_room(&self.dir, size) {
            self.spooled.fetch_sub(size, Ordering::SeqCst);
            metrics::counter!(SWARM_DOWNLOADS, "outcome" => "no_room").increment(1);
            if spool::warn_now(&self.no_room_warned, std::time::Duration::from_secs(60)) {
                tracing::warn!(%digest, size, dir = %self.dir.display(), "no disk room for a swarm spool; streaming directly (said at most once a minute)");
            }
            return None;
        }
        let path = self.dir.join(format!("{}{}", digest.hex(), spool::SPOOL_SUFFIX));
        let spool = match Spool::create(path, size, self.memory.clone()) {
            Ok(s) => s,
            Err(e) => {
                self.spooled.fetch_sub(size, Ordering::SeqCst);
                tracing::warn!(%digest, error = %e, "cannot create a swarm spool; streaming directly");
                return None;
            }
        };
        let dl = Arc::new(Download::new(digest.clone(), size, self.cfg.chunk_size_for(size), spool));
        entry.insert(dl.clone());
        metrics::counter!(SWARM_DOWNLOADS, "outcome" => "started").increment(1);
        tracing::info!(%digest, size, chunks = dl.chunks, "swarm download started");
        let (this, d) = (self.clone(), dl.clone());
        actix_rt::spawn(async move {
            // A panicking engine, or the node shutting down, still ends the download: readers
            // waiting for its chunks get an error instead of waiting forever.
            let end = engine::run(this.clone(), d.clone(), request).await;
            this.retire(d, end).await;
        });
        Some(dl)
    }

    /// End every running download (node shutdown).
    pub fn shut_down(&self) {
        self.stop.cancel();
    }

    /// After the end: a verified download keeps serving peers for `linger`, then goes.
    async fn retire(&self, dl: Arc<Download>, end: End) {
        match &end {
            End::Verified => {
                metrics::counter!(SWARM_DOWNLOADS, "outcome" => "verified").increment(1);
                tracing::info!(digest = %dl.digest, "swarm download verified");
                dl.finish(end);
                tokio::time::sleep(self.cfg.linger).await;
            }
            End::Failed(why) => {
                metrics::counter!(SWARM_DOWNLOADS, "outcome" => "failed").increment(1);
                tracing::warn!(digest = %dl.digest, why, "swarm download failed");
                dl.finish(end);
            }
            End::Running => {}
        }
        self.downloads.remove_if(&dl.digest.to_string(), |_, d| Arc::ptr_eq(d, &dl));
        self.spooled.fetch_sub(dl.size, Ordering::SeqCst);
        if let Some(r) = &self.router {
            let _ = r.withdraw(download_keys(&dl.digest, &self.me)).await;
        }
    }

    /// The size of a blob other nodes are downloading (when the upstream cannot say): from the
    /// status page of the first node announcing `swarm/<digest>` that answers.
    pub async fn size_from_peers(&self, digest: &Digest) -> Option<u64> {
        let router = self.router.as_ref()?;
        let rx = router.resolve(swarm_key(digest), 8).await.ok()?;
        let peers = crate::routing::collect_peers(rx, std::time::Duration::from_millis(500)).await;
        for p in peers {
            // The chunk size follows from the size: ask for the page whatever its chunk size.
            if let Ok(doc) = engine::status_of(self, digest, ANY_CHUNK_SIZE, &p).await {
                return Some(doc.size);
            }
        }
        None
    }
}

#[cfg(test)]
mod engine_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    #[test]
    fn owners_are_spread_and_stable() {
        let d = Digest::compute(Algorithm::Sha256, b"blob").to_string();
        let ids = ["a", "b", "c", "d"];
        let mut count = std::collections::HashMap::new();
        for i in 0..400 {
            let o = owner(&d, i, ids).unwrap();
            assert_eq!(owner(&d, i, ids.iter().rev().copied()), Some(o), "order of the view does not matter");
            *count.entry(o).or_insert(0) += 1;
        }
        for id in ids {
            assert!((60..140).contains(&count[id]), "{id} owns {} of 400", count[id]);
        }
        // Dropping a node moves only its chunks.
        for i in 0..400 {
            let o = owner(&d, i, ids).unwrap();
            let o2 = owner(&d, i, ["a", "b", "c"]).unwrap();
            assert!(o == "d" || o == o2);
        }
        assert_eq!(owner(&d, 0, []), None);
    }

    #[tokio::test]
    async fn rate_limits_hold_transfers_to_the_rate() {
        assert!(limiter(0, 1 << 20).is_none(), "0: no limit");
        // 1 MiB/s with 256 KiB chunks: the first second's worth passes at once (the burst), the
        // next 1 MiB can only pass a second later. (A lower bound: a limiter is never faster.)
        let l = limiter(1 << 20, 256 << 10).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..8 {
            throttle(Some(&l), 256 << 10).await;
        }
        let took = t.elapsed();
        assert!(took >= std::time::Duration::from_millis(900), "2 MiB at 1 MiB/s took {took:?}");
        let t = std::time::Instant::now();
        throttle(None, 1 << 30).await;
        assert!(t.elapsed() < std::time::Duration::from_millis(100), "no limiter: no wait");
    }

    #[test]
    fn bitmaps_round_trip() {
        let bits: Vec<bool> = (0..19).map(|i| i % 3 == 0 || i == 18).collect();
        let s = bitmap(bits.iter().copied());
        assert_eq!(unbitmap(&s, 19), bits);
        assert_eq!(unbitmap("zz", 4), vec![false; 4], "malformed reads as empty");
        assert_eq!(unbitmap("", 3), vec![false; 3]);
    }

    #[tokio::test]
    async fn readers_wait_for_chunks_and_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..10u8).collect();
        let digest = Digest::compute(Algorithm::Sha256, &data);
        let spool = Spool::create(dir.path().join("x"), 10, None).unwrap();
        let dl = Arc::new(Download::new(digest, 10, 4, spool));
        assert_eq!((dl.chunks, dl.chunk_len(2)), (3, 2));
        let reader = tokio::spawn(crate::stream::collect(dl.clone().body(0, 9, true), 100));
        let part = tokio::spawn(crate::stream::collect(dl.clone().body(5, 8, false), 100));
        for i in [2u64, 0, 1] {
            let (s, e) = ((i * 4) as usize, ((i * 4 + 4) as usize).min(10));
            let sha: [u8; 32] = sha2::Sha256::digest(&data[s..e]).into();
            dl.put(i, Bytes::copy_from_slice(&data[s..e]), sha).await.unwrap();
        }
        assert_eq!(&part.await.unwrap().unwrap()[..], &data[5..=8], "a range needs no verification");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the last piece waits for the digest check");
        dl.finish(End::Verified);
        assert_eq!(&reader.await.unwrap().unwrap()[..], &data[..]);
        assert_eq!(dl.read_chunk(1).await.unwrap().0, &data[4..8]);

        let failing = Arc::new(Download::new(
            Digest::compute(Algorithm::Sha256, b"x"),
            10,
            4,
            Spool::create(dir.path().join("y"), 10, None).unwrap(),
        ));
        let r = tokio::spawn(crate::stream::collect(failing.clone().body(0, 9, true), 100));
        failing.finish(End::Failed("digest mismatch".into()));
        assert!(r.await.unwrap().unwrap_err().to_string().contains("digest mismatch"));
    }

    /// An upstream that panics on every ranged read (a bug in a source, say).
    struct Panics;

    #[async_trait::async_trait]
    impl crate::upstream::Upstream for Panics {
        async fn fetch(
            &self,
            _req: UpstreamRequest,
        ) -> Result<crate::upstream::UpstreamResponse, crate::upstream::UpstreamError> {
            panic!("a source that panics");
        }
    }

    /// An upstream that never answers.
    struct Stalls;

    #[async_trait::async_trait]
    impl crate::upstream::Upstream for Stalls {
        async fn fetch(
            &self,
            _req: UpstreamRequest,
        ) -> Result<crate::upstream::UpstreamResponse, crate::upstream::UpstreamError> {
            std::future::pending().await
        }
    }

    fn lone_swarm(dir: &std::path::Path, upstream: Arc<dyn crate::upstream::Upstream>) -> Arc<Swarming> {
        let mut cfg = crate::config::Config::load(None, Vec::<(String, String)>::new(), Vec::new()).unwrap().swarm;
        cfg.chunk_size = 4;
        let breaker = crate::actors::upstream::Breaker::new(100, std::time::Duration::from_secs(1));
        let gate = crate::actors::upstream::Gate::start(upstream, &[], breaker);
        Swarming::new(cfg, dir.join("spool"), gate, None).unwrap()
    }

    fn request() -> UpstreamRequest {
        UpstreamRequest {
            registry: crate::oci::parse_ns(Some("example.com"), "docker.io").unwrap(),
            repository: "app".into(),
            kind: crate::upstream::Kind::Blob,
            reference: "x".into(),
            head: false,
            accept: None,
            authorization: None,
            range: None,
        }
    }

    /// A panicking download used to leave its readers waiting forever.
    #[actix::test]
    async fn a_panicking_download_ends_its_readers_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sw = lone_swarm(dir.path(), Arc::new(Panics));
        let digest = Digest::compute(Algorithm::Sha256, b"0123456789");
        let dl = sw.join(&digest, 10, request()).expect("a download starts");
        let read = crate::stream::collect(dl.clone().body(0, 9, true), 100);
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("readers are not left waiting");
        assert!(got.is_err(), "the reader gets an error, not bytes");
        assert!(matches!(dl.end(), End::Failed(_)));
    }

    /// A chunk that was arriving when a peer's request woke, and whose transfer failed before
    /// the request looked (here: while it waited for the upload rate), used to be answered 404
    /// ("no such chunk here"); now 503, so the asker goes elsewhere without doubting the node.
    #[actix::test]
    async fn a_chunk_whose_arrival_failed_under_a_waiting_asker_is_busy_not_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::load(None, Vec::<(String, String)>::new(), Vec::new()).unwrap().swarm;
        (cfg.chunk_size, cfg.max_chunk_size) = (4, 4);
        cfg.upload_rate = 1024; // one KiB a second: the second chunk sent waits a second
        let breaker = crate::actors::upstream::Breaker::new(100, std::time::Duration::from_secs(1));
        let gate = crate::actors::upstream::Gate::start(Arc::new(Stalls), &[], breaker);
        let sw = Swarming::new(cfg, dir.path().join("spool"), gate, None).unwrap();
        let digest = Digest::compute(Algorithm::Sha256, b"0123456789");
        let dl = sw.join(&digest, 10, request()).expect("a download starts");
        let arrival = Arrival::new(4, "peer");
        dl.arriving(1, &arrival, true);
        throttle(sw.upload_limit.as_ref(), 4).await; // the burst is used up
        let (sw2, d) = (sw.clone(), digest.to_string());
        let asked = tokio::spawn(async move { sw2.chunk_for_peer(&d, 4, 1, std::time::Duration::from_secs(2)).await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!asked.is_finished(), "the request waits for the upload rate");
        dl.set_fetching(1, false); // the chunk's transfer failed: no longer arriving
        let got = asked.await.unwrap();
        assert!(matches!(got, Err(crate::error::ApiError::Busy)), "got {:?}", got.err());
    }

    /// A chunk this node holds goes to a peer read from the spool a piece at a time, not as one
    /// buffer of the chunk (chunks may be `max_chunk_size`, and up to `upload_slots` go out at
    /// once): pieces of at most READ_PIECE bytes, the chunk's bytes, its sha256 alongside.
    #[actix::test]
    async fn a_held_chunk_goes_to_a_peer_in_pieces_read_from_the_spool() {
        const CHUNK: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::load(None, Vec::<(String, String)>::new(), Vec::new()).unwrap().swarm;
        (cfg.chunk_size, cfg.max_chunk_size) = (CHUNK, CHUNK);
        let breaker = crate::actors::upstream::Breaker::new(100, std::time::Duration::from_secs(1));
        let gate = crate::actors::upstream::Gate::start(Arc::new(Stalls), &[], breaker);
        let sw = Swarming::new(cfg, dir.path().join("spool"), gate, None).unwrap();
        let data: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 251) as u8).collect();
        let digest = Digest::compute(Algorithm::Sha256, &data);
        let dl = sw.join(&digest, data.len() as u64, request()).expect("a download starts");
        let first = &data[..CHUNK as usize];
        let sha: [u8; 32] = sha2::Sha256::digest(first).into();
        dl.put(0, Bytes::copy_from_slice(first), sha).await.unwrap();
        let Ok(PeerChunk::Held { mut body, sha: sent, len }) =
            sw.chunk_for_peer(&digest.to_string(), CHUNK, 0, std::time::Duration::ZERO).await
        else {
            panic!("a held chunk")
        };
        assert_eq!((sent, len), (sha, CHUNK));
        let mut got = Vec::new();
        while let Some(piece) = futures_util::StreamExt::next(&mut body).await {
            let piece = piece.unwrap();
            assert!(piece.len() as u64 <= READ_PIECE, "a piece of {} bytes", piece.len());
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, first);
        let any = sw.chunk_for_peer(&digest.to_string(), ANY_CHUNK_SIZE, 0, std::time::Duration::ZERO).await;
        assert!(matches!(any, Err(crate::error::ApiError::BlobUnknown(_))), "chunks only in their download's size");
        assert_eq!(sw.status_for_peer(&digest.to_string(), ANY_CHUNK_SIZE).unwrap().chunk_size, CHUNK);
    }

    #[actix::test]
    async fn shutdown_ends_running_downloads() {
        let dir = tempfile::tempdir().unwrap();
        // A download that cannot finish (its upstream never answers), stopped while a reader waits.
        let sw = lone_swarm(dir.path(), Arc::new(Stalls));
        let digest = Digest::compute(Algorithm::Sha256, b"abcdefghij");
        let dl = sw.join(&digest, 10, request()).expect("a download starts");
        let read = tokio::spawn(crate::stream::collect(dl.clone().body(0, 9, true), 100));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!read.is_finished(), "the reader waits for a stalled download");
        sw.shut_down();
        let read = async { read.await.unwrap() };
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("readers are not left waiting");
        assert!(got.is_err());
    }
}
