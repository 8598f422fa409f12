//! A /blobs file being fetched, as the transfer engine ([`crate::transfer::engine`]) sees it.
//!
//! A file is split into segments of [`SEGMENT_CHUNKS`] chunks (so what one transfer keeps per
//! chunk stays bounded whatever size a store claims); each segment being read is one transfer,
//! driven on demand: the chunks its readers, its prefetch and its peers ask for. Its chunks are
//! asked of the peers that have them (`/blobs-chunk/<file id>/<index>`, their status pages
//! `/blobs-status/<file id>/<segment>` say which) or of the node that owns them (rendezvous over
//! the nodes reading the segment, announced under `swarm/<file id>.<segment>`), which reads them
//! from the upstream with its own client's URL; kept in the chunk cache. One task per segment
//! decides (the engine); [`FileRun`] is what requests and peers share with it.

use super::{BlobsState, Meta, BLOBS_BYTES, UPSTREAM_TIMEOUTS};
use crate::actors::peers::Outcome;
use crate::peer::LONG_POLL;
use crate::routing::{keys, Peer};
use crate::transfer::engine::{self, ChunkResult, Chunks, Note, PeerDoc, StatusFn, Want};
use crate::transfer::Bits;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Chunks per segment (one transfer each).
pub const SEGMENT_CHUNKS: u64 = 1024;
/// A segment's transfer ends after this long without a want (a new read starts another).
pub const RUN_IDLE: Duration = Duration::from_secs(30);
/// Segments being fetched at once on this node.
pub const MAX_RUNS: usize = 1024;
/// Wants queued to one segment's engine.
const WANTS: usize = 256;

/// The DHT key of the nodes reading segment `seg` of file `id`.
pub fn segment_id(id: &str, seg: u64) -> String {
    format!("{id}.{seg}")
}

struct RunState {
    /// Chunks (of the segment) arriving now.
    fetching: Bits,
    /// Readers waiting per chunk: a chunk nobody waits for any more is no longer wanted.
    waiting: HashMap<u64, usize>,
    /// Chunks that arrived while readers waited for them, handed to those readers as they are
    /// (not read back and hashed again from the cache; and served when the cache could not take
    /// them, a full disk). Dropped when the last of their readers leaves, so bounded by the
    /// readers waiting.
    ready: HashMap<u64, (Bytes, [u8; 32])>,
    /// Chunks the engine could not get, with why (cleared when wanted again).
    failed: HashMap<u64, String>,
    view: Vec<PeerDoc>,
    /// The engine ended (idle, or the node stopping): wants are not heard any more.
    ended: bool,
}

/// What requests, peers and the engine of one segment share.
pub struct FileRun {
    pub id: String,
    pub seg: u64,
    /// Bytes in the segment.
    pub size: u64,
    pub chunk_size: u64,
    wants: mpsc::Sender<Want>,
    state: Mutex<RunState>,
    changed: watch::Sender<u64>,
}

/// A reader's claim on a chunk: when the last reader of a chunk leaves before it is here, the
/// chunk is no longer wanted.
struct Waiting<'a> {
    run: &'a FileRun,
    index: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let last = {
            let mut s = self.run.lock();
            let n = s.waiting.entry(self.index).or_insert(1);
            *n -= 1;
            let last = *n == 0;
            if last {
                s.waiting.remove(&self.index);
                s.ready.remove(&self.index);
            }
            last
        };
        if last {
            let _ = self.run.wants.try_send(Want::Drop(self.index));
        }
    }
}

impl FileRun {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the segment's chunk `index` is arriving now.
    pub fn arriving(&self, index: u64) -> bool {
        self.lock().fetching.get(index)
    }

    pub fn ended(&self) -> bool {
        self.lock().ended
    }

    /// The file's chunk index of the segment's chunk `index`.
    fn file_index(&self, index: u64) -> u64 {
        self.seg * SEGMENT_CHUNKS + index
    }

    /// The segment's chunk `index` and its sha256 (hex), once it arrived for the readers waiting
    /// for it or is in `st`'s cache; `None` when the cache dropped it before it could be read
    /// (evicted, found corrupt). `Err`: it could not be had, or the transfer ended (`Ended`:
    /// start another one).
    pub async fn get(&self, st: &BlobsState, index: u64) -> Result<Option<(Bytes, String)>, RunError> {
        let fi = self.file_index(index);
        let mut rx = self.changed.subscribe();
        {
            let mut s = self.lock();
            s.failed.remove(&index);
            *s.waiting.entry(index).or_insert(0) += 1;
        }
        let _claim = Waiting { run: self, index };
        if self.wants.send(Want::Chunk(index)).await.is_err() {
            return Err(RunError::Ended);
        }
        loop {
            let cached = {
                let s = self.lock();
                if let Some((data, sha)) = s.ready.get(&index) {
                    return Ok(Some((data.clone(), hex::encode(sha))));
                }
                let cached = st.cache.contains(&self.id, fi);
                if !cached {
                    if let Some(why) = s.failed.get(&index) {
                        return Err(RunError::Failed(why.clone()));
                    }
                    if s.ended {
                        return Err(RunError::Ended);
                    }
                }
                cached
            };
            if cached {
                return Ok(st.cache.get(&self.id, fi).await);
            }
            if rx.changed().await.is_err() {
                return Err(RunError::Ended);
            }
        }
    }

    /// What a peer is told of this segment: the chunks in the cache, those arriving, the peers.
    pub fn status(&self, st: &BlobsState) -> engine::StatusDoc {
        let s = self.lock();
        segment_status(st, &self.id, self.seg, self.size, |i| s.fetching.get(i), s.view.clone())
    }
}

/// The status page of segment `seg` (`size` bytes) of file `id`: its chunks in the cache, those
/// `fetching` says arrive, the `peers` reading it.
pub fn segment_status(
    st: &BlobsState,
    id: &str,
    seg: u64,
    size: u64,
    fetching: impl Fn(u64) -> bool,
    peers: Vec<PeerDoc>,
) -> engine::StatusDoc {
    let cs = st.cfg.chunk_size;
    let n = size.div_ceil(cs);
    engine::StatusDoc {
        size,
        chunk_size: cs,
        have: engine::bitmap((0..n).map(|i| st.cache.contains(id, seg * SEGMENT_CHUNKS + i))),
        fetching: engine::bitmap((0..n).map(fetching)),
        peers,
    }
}

/// Bytes in segment `seg` of a `size`-byte file of `chunk_size`-byte chunks.
pub fn segment_size(size: u64, chunk_size: u64, seg: u64) -> u64 {
    let span = SEGMENT_CHUNKS * chunk_size;
    size.saturating_sub(seg.saturating_mul(span)).min(span)
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Failed(String),
    #[error("the file's transfer ended")]
    Ended,
}

/// The engine's side of one segment.
struct SegmentChunks {
    st: Arc<BlobsState>,
    run: Arc<FileRun>,
    url: url::Url,
    meta: Meta,
}

/// Start the transfer of segment `seg` of the file `meta` names, read with `url`.
pub(super) fn start(st: &Arc<BlobsState>, url: url::Url, meta: Meta, seg: u64) -> Arc<FileRun> {
    let cs = st.cfg.chunk_size;
    let size = segment_size(meta.size, cs, seg);
    let (tx, rx) = mpsc::channel(WANTS);
    let n = size.div_ceil(cs);
    let run = Arc::new(FileRun {
        id: meta.id.clone(),
        seg,
        size,
        chunk_size: cs,
        wants: tx,
        state: Mutex::new(RunState {
            fetching: Bits::new(n),
            waiting: HashMap::new(),
            ready: HashMap::new(),
            failed: HashMap::new(),
            view: Vec::new(),
            ended: false,
        }),
        changed: watch::channel(0).0,
    });
    let have = Bits::from_bools(n, (0..n).map(|i| st.cache.contains(&meta.id, run.file_index(i))));
    let peers = st.peers.as_ref();
    let mut plan = crate::transfer::plan::PlanConfig::new(16, st.cfg.per_host_fetches, 4, super::TAKEOVER);
    // A chunk the upstream fails is the reader's error at once (overlaybd retries), as before.
    plan.upstream_attempts = 1;
    plan.split_owners = st.cfg.coalesce;
    let cfg = engine::EngineConfig {
        router: peers.map(|p| p.router.clone()),
        me: peers.map_or_else(|| "local".to_owned(), |p| p.me.clone()),
        gather: st.cfg.coalesce_gather,
        refresh: super::INTEREST_TTL,
        plan,
    };
    let key = segment_id(&meta.id, seg);
    let chunks = SegmentChunks { st: st.clone(), run: run.clone(), url, meta };
    let demand = engine::OnDemand { wants: rx, idle: RUN_IDLE, have };
    let eng = engine::Engine::new(chunks, key, cfg, Some(demand));
    let (r, stop) = (run.clone(), st.stop.clone());
    actix_rt::spawn(async move {
        if let Err(why) = &eng.run_until(&stop).await {
            tracing::warn!(file = %r.id, segment = r.seg, why, "/blobs transfer ended");
        }
        r.lock().ended = true;
        r.bump();
    });
    run
}

impl Chunks for SegmentChunks {
    fn size(&self) -> u64 {
        self.run.size
    }

    fn chunk_size(&self) -> u64 {
        self.run.chunk_size
    }

    fn swarm_key(&self) -> String {
        keys::swarm_key(&segment_id(&self.run.id, self.run.seg))
    }

    fn group_key(&self, level: u32) -> String {
        let me = self.st.peers.as_ref().map_or("local", |p| p.me.as_str());
        keys::swarm_group_key(&segment_id(&self.run.id, self.run.seg), level, me)
    }

    fn status_of(&self) -> StatusFn {
        let client = self.st.peers.as_ref().map(|p| p.client.clone());
        engine::status_fn(client, format!("/blobs-status/{}/{}", self.run.id, self.run.seg))
    }

    fn fetch_peer(&self, peer: Peer, index: u64) -> BoxFuture<'static, ChunkResult> {
        let (st, run, len) = (self.st.clone(), self.run.clone(), self.chunk_len(index));
        async move {
            let Some(p) = st.peers.as_ref() else { return ChunkResult::Dead("no peer client".into()) };
            let Ok(_slot) = st.fetches.acquire().await else { return ChunkResult::Dead("shutting down".into()) };
            // `fetch=1`: a peer that does not have it yet fetches it for everyone (it owns it,
            // or it is fetching it now) and answers when it is there.
            let target =
                format!("/blobs-chunk/{}/{}?fetch=1&wait={}", run.id, run.file_index(index), LONG_POLL.as_millis());
            let got = match p.client.fetch(&peer, &target, false, None, None).await {
                Ok(resp) => resp.checked_body(len, true).await.map_err(|e| ChunkResult::Bad(e.to_string())),
                Err(e) => Err(ChunkResult::of_peer_error(e)),
            };
            let ok = got.is_ok();
            if ok || matches!(got, Err(ChunkResult::Bad(_) | ChunkResult::Dead(_))) {
                let _ = p.report.try_send(Outcome { peer: peer.id, ok });
            }
            match got {
                Ok((body, sha)) => {
                    metrics::counter!(BLOBS_BYTES, "source" => "peer").increment(body.len() as u64);
                    ChunkResult::Got(body, sha)
                }
                Err(r) => r,
            }
        }
        .boxed()
    }

    fn fetch_upstream(&self, index: u64) -> BoxFuture<'static, ChunkResult> {
        // The URL a client used last (a signature that expired is replaced by the next read's).
        let url = self.st.sources.get(&self.run.id).map_or_else(|| self.url.clone(), |s| s.0.clone());
        let (st, meta) = (self.st.clone(), self.meta.clone());
        let fi = self.run.file_index(index);
        async move {
            match upstream_chunk(&st, &url, &meta, fi).await {
                Ok((data, sha)) => {
                    metrics::counter!(BLOBS_BYTES, "source" => "upstream").increment(data.len() as u64);
                    ChunkResult::Got(data, sha)
                }
                Err(why) => ChunkResult::UpstreamFailed { fatal: false, why },
            }
        }
        .boxed()
    }

    fn set_fetching(&self, index: u64, on: bool) {
        self.run.lock().fetching.set(index, on);
        self.run.bump();
    }

    fn set_view(&self, view: Vec<PeerDoc>) {
        self.run.lock().view = view;
    }

    fn storer(&self) -> engine::StoreFn {
        let (st, run) = (self.st.clone(), self.run.clone());
        Arc::new(move |index, data, sha| {
            let (st, run) = (st.clone(), run.clone());
            async move {
                // Readers waiting for the chunk get it now, as it is (checked), not after it was
                // written to the cache: the write (a file, a rename) took as long as the chunk's
                // transfer from a peer (measured on a 1 MiB chunk, ~1-3 ms before the first byte).
                // Until it is written it counts as cached for prefetch's room check (a reader
                // done early must not let prefetch take room this chunk is about to fill).
                let _storing = st.cache.storing(data.len() as u64);
                {
                    let mut s = run.lock();
                    if s.waiting.contains_key(&index) {
                        s.ready.insert(index, (data.clone(), sha));
                    }
                }
                run.bump();
                if let Err(e) = st.cache.put_hashed(&run.id, run.file_index(index), &data, sha).await {
                    // Served all the same, from memory, to the readers waiting for it. A full
                    // disk would say this for every chunk.
                    if e.kind() != std::io::ErrorKind::StorageFull
                        || crate::swarm::spool::warn_now(&st.no_room_warned, Duration::from_secs(60))
                    {
                        tracing::warn!(error = %e, "caching a chunk failed; serving it uncached");
                    }
                }
                run.lock().fetching.set(index, false);
                run.bump();
                Ok(())
            }
            .boxed()
        })
    }

    fn holds(&self, index: u64) -> Option<bool> {
        Some(self.st.cache.contains(&self.run.id, self.run.file_index(index)))
    }

    fn end(&mut self) -> Option<Result<(), String>> {
        None
    }

    fn chunk_failed(&self, index: u64, why: &str) {
        tracing::debug!(file = %self.run.id, chunk = self.run.file_index(index), why, "/blobs chunk failed");
        self.run.lock().failed.insert(index, why.to_owned());
        self.run.bump();
    }

    fn note(&self, note: Note) {
        if let Note::TookOver = note {
            metrics::counter!(crate::swarm::SWARM_TAKEOVERS).increment(1);
        }
    }
}

/// File chunk `index` from the upstream, within the host's share of the fetches and the
/// node's; failing when the host has no slot within `blobs.chunk_timeout`.
async fn upstream_chunk(st: &BlobsState, url: &url::Url, meta: &Meta, index: u64) -> Result<(Bytes, [u8; 32]), String> {
    // The host's share first: waiting for a slow host holds none of the node's slots. The
    // wait is bounded by `chunk_timeout`: a read queued behind a host that slow fails rather
    // than fetching long after its client may have left.
    let _host = match tokio::time::timeout(st.cfg.chunk_timeout, st.host_slots(url).acquire_owned()).await {
        Ok(slot) => slot.map_err(|e| e.to_string())?,
        Err(_) => {
            metrics::counter!(UPSTREAM_TIMEOUTS, "reason" => "queued").increment(1);
            return Err(format!("upstream host busy: no fetch slot within {:?}", st.cfg.chunk_timeout));
        }
    };
    let _slot = st.fetches.acquire().await.map_err(|e| e.to_string())?;
    st.chunk_from_upstream(url, meta, st.chunk_range(meta, index)).await
}
