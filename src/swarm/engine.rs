//! The decisions of one download: who has or fetches which chunk, whom to ask for each, when
//! this node fetches from the upstream itself, and when a peer loses a chunk to a takeover.
//! The engine owns its state alone (one task per download); chunk transfers run as futures it
//! starts and whose outcome it receives. Bytes go from the network to the spool, never through
//! the engine's decisions.

use super::{owner, swarm_key, throttle, unbitmap, Download, End, PeerDoc, StatusDoc, Swarm};
use super::{SWARM_CHUNK_BYTES, SWARM_CHUNK_FAILURES, SWARM_PEERS_LOST, SWARM_TAKEOVERS};
use crate::oci::{Digest, Hasher};
use crate::peer::client::PeerError;
use crate::range::ByteRange;
use crate::routing::Peer;
use crate::stream::Slice;
use crate::upstream::{UpstreamError, UpstreamRequest};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a peer holds a chunk request open waiting for the chunk (below the idle timeout).
pub const LONG_POLL: Duration = Duration::from_secs(2);
/// How long a peer that could not be reached is left out.
const DEAD_FOR: Duration = Duration::from_secs(30);
/// Most peers in one download's view.
const MAX_VIEW: usize = 64;
/// One refresh in this many looks the download up in the DHT.
const DHT_EVERY: u64 = 3;
/// Upstream attempts per chunk before the download fails.
const UPSTREAM_ATTEMPTS: u32 = 4;

struct Known {
    peer: Peer,
    /// Answered a status request for this download (so it is downloading it too).
    active: bool,
    have: Vec<bool>,
    fetching: Vec<bool>,
    dead_until: Option<Instant>,
    busy_until: Option<Instant>,
    inflight: usize,
}

impl Known {
    /// It stopped answering: left out for a while.
    fn lost(&mut self) {
        if self.active {
            metrics::counter!(SWARM_PEERS_LOST).increment(1);
        }
        self.active = false;
        self.dead_until = Some(Instant::now() + DEAD_FOR);
    }

    fn usable(&self, now: Instant) -> bool {
        self.dead_until.is_none_or(|t| now >= t) && self.busy_until.is_none_or(|t| now >= t)
    }
}

/// Waiting for a chunk from a peer.
struct Wait {
    peer: String,
    /// Since when without progress.
    since: Instant,
    /// The peer's last reported progress (bytes it received from the upstream for this blob).
    progress: Option<u64>,
}

enum Lane {
    Upstream,
    Peer(String),
}

enum ChunkResult {
    Got(Bytes, [u8; 32]),
    Pending(Option<u64>),
    NotThere,
    Busy,
    Dead(String),
    Bad(String),
    UpstreamFailed(UpstreamError),
    /// The upstream fetch was given up: a peer has the chunk.
    Abandoned,
}

enum Done {
    Chunk { index: u64, lane: Lane, result: ChunkResult, took: Duration },
    Refresh(Vec<Peer>, Vec<(Peer, Result<StatusDoc, String>)>),
}

pub struct Engine {
    /// The digest as a string (the rendezvous key).
    key: String,
    sw: Arc<Swarm>,
    dl: Arc<Download>,
    request: UpstreamRequest,
    peers: HashMap<String, Known>,
    inflight: Vec<bool>,
    peer_inflight: usize,
    upstream_inflight: usize,
    /// Peers no longer asked for a chunk (took over from them, or they sent bad bytes).
    excluded: HashMap<u64, HashSet<String>>,
    /// chunk → the wait on the peer that should deliver it
    waiting: HashMap<u64, Wait>,
    upstream_attempts: HashMap<u64, (u32, Instant)>,
    /// Upstream fetches in flight, to give up on when a peer has the chunk first.
    aborts: HashMap<u64, futures_util::future::AbortHandle>,
    refreshing: bool,
    refreshes: u64,
    /// Candidates of the cached owners, and the owners (per chunk).
    cands: Vec<String>,
    owners: Vec<Option<String>>,
    /// No chunk below this index is missing.
    first_missing: u64,
    hashed: u64,
    hasher: Option<Hasher>,
    failed: Option<String>,
}

impl Engine {
    pub fn new(sw: Arc<Swarm>, dl: Arc<Download>, request: UpstreamRequest) -> Engine {
        let n = dl.chunks as usize;
        let key = dl.digest.to_string();
        let hasher = Some(Hasher::new(dl.digest.algorithm()));
        Engine {
            key,
            sw,
            dl,
            request,
            peers: HashMap::new(),
            inflight: vec![false; n],
            peer_inflight: 0,
            upstream_inflight: 0,
            excluded: HashMap::new(),
            waiting: HashMap::new(),
            upstream_attempts: HashMap::new(),
            aborts: HashMap::new(),
            refreshing: false,
            refreshes: 0,
            cands: Vec::new(),
            owners: vec![None; n],
            first_missing: 0,
            hashed: 0,
            hasher,
            failed: None,
        }
    }

    pub async fn run(mut self) -> End {
        let mut futs: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        if let Some(r) = &self.sw.router {
            if let Err(e) = r.provide_now(vec![swarm_key(&self.dl.digest)]).await {
                tracing::debug!(error = %e, "cannot announce the download");
            }
            tokio::time::sleep(self.sw.cfg.gather).await;
            let first = self.refresh_future().await;
            self.on_done(first, &mut futs).await;
        }
        let mut tick = tokio::time::interval(self.sw.cfg.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(why) = self.failed.take() {
                return End::Failed(why);
            }
            if self.hashed == self.dl.chunks {
                let hasher = self.hasher.take().expect("hashed once");
                let actual = hasher.finish();
                return if actual == self.dl.digest {
                    End::Verified
                } else {
                    metrics::counter!(crate::metrics::DIGEST_MISMATCHES, "source" => "swarm").increment(1);
                    tracing::error!(digest = %self.dl.digest, %actual, "assembled blob does not match its digest");
                    End::Failed(format!("assembled blob hashes to {actual}"))
                };
            }
            self.schedule(&mut futs);
            tokio::select! {
                Some(done) = futs.next() => self.on_done(done, &mut futs).await,
                _ = tick.tick() => {
                    if !self.refreshing && self.sw.router.is_some() {
                        self.refreshing = true;
                        futs.push(self.refresh_future());
                    }
                }
            }
        }
    }

    /// Look the download up in the DHT and ask every known peer what it has.
    fn refresh_future(&mut self) -> BoxFuture<'static, Done> {
        let (sw, dl) = (self.sw.clone(), self.dl.clone());
        // The DHT is asked every few refreshes (and while no peer is known); in between, the
        // peers' status pages name the nodes they know, which is cheaper than a lookup.
        self.refreshes += 1;
        let lookup = self.refreshes % DHT_EVERY == 1 || self.peers.values().all(|k| !k.active);
        let mut known: Vec<Peer> = self.peers.values().map(|k| k.peer.clone()).collect();
        let now = Instant::now();
        known.retain(|p| self.peers.get(&p.id).is_none_or(|k| k.dead_until.is_none_or(|t| now >= t)));
        async move {
            let found = match &sw.router {
                Some(r) if lookup => match r.resolve(swarm_key(&dl.digest), MAX_VIEW).await {
                    Ok(rx) => crate::routing::collect_peers(rx, Duration::from_millis(500)).await,
                    Err(_) => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut ask: Vec<Peer> = known;
            for p in &found {
                if !ask.iter().any(|k| k.id == p.id) {
                    ask.push(p.clone());
                }
            }
            ask.truncate(MAX_VIEW);
            let statuses = futures_util::future::join_all(ask.into_iter().map(|p| {
                let (sw, dl) = (sw.clone(), dl.clone());
                async move {
                    let r = fetch_status(&sw, &dl, &p).await;
                    (p, r)
                }
            }))
            .await;
            Done::Refresh(found, statuses)
        }
        .boxed()
    }

    fn learn(&mut self, p: Peer) {
        if p.id == self.sw.me || self.peers.len() >= MAX_VIEW && !self.peers.contains_key(&p.id) {
            return;
        }
        let n = self.dl.chunks as usize;
        self.peers.entry(p.id.clone()).or_insert_with(|| Known {
            peer: p,
            active: false,
            have: vec![false; n],
            fetching: vec![false; n],
            dead_until: None,
            busy_until: None,
            inflight: 0,
        });
    }

    /// Peers this node tells others about.
    fn view(&self) -> Vec<PeerDoc> {
        self.peers.values().filter(|k| k.active).map(|k| PeerDoc::from(&k.peer)).collect()
    }

    /// The nodes chunks are shared among now: this one and the peers downloading the blob that
    /// answer (a peer that is only busy stays; one that stopped answering does not).
    fn candidates(&self, now: Instant) -> Vec<String> {
        let mut c: Vec<String> = self
            .peers
            .values()
            .filter(|k| k.active && k.dead_until.is_none_or(|t| now >= t))
            .map(|k| k.peer.id.clone())
            .collect();
        c.push(self.sw.me.clone());
        c.sort();
        c
    }

    /// The owner of chunk `i`: cached while the candidates stay the same (hashing every chunk
    /// against every candidate on every event would cost more than the chunks).
    fn owner_of(&mut self, i: u64) -> String {
        if let Some(x) = self.excluded.get(&i) {
            let cands = self.cands.iter().filter(|c| !x.contains(*c)).map(String::as_str);
            return owner(&self.key, i, cands).unwrap_or(&self.sw.me).to_owned();
        }
        if let Some(o) = &self.owners[i as usize] {
            return o.clone();
        }
        let o = owner(&self.key, i, self.cands.iter().map(String::as_str)).unwrap_or(&self.sw.me).to_owned();
        self.owners[i as usize] = Some(o.clone());
        o
    }

    fn schedule(&mut self, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let now = Instant::now();
        let cfg = &self.sw.cfg;
        let (parallel, up_parallel, per_peer) = (cfg.parallel, cfg.upstream_parallel, cfg.per_peer);
        let cands = self.candidates(now);
        if cands != self.cands {
            self.cands = cands;
            self.owners.iter_mut().for_each(|o| *o = None);
        }
        while self.first_missing < self.dl.chunks && self.dl.has(self.first_missing).is_some() {
            self.first_missing += 1;
        }
        for i in self.first_missing..self.dl.chunks {
            if self.peer_inflight >= parallel && self.upstream_inflight >= up_parallel {
                break;
            }
            if self.inflight[i as usize] || self.dl.has(i).is_some() {
                continue;
            }
            let excluded = self.excluded.get(&i);
            let ok = |k: &Known| k.usable(now) && excluded.is_none_or(|x| !x.contains(&k.peer.id));
            // 1. A peer that has it: the least loaded.
            if self.peer_inflight < parallel {
                let holder = self
                    .peers
                    .values()
                    .filter(|k| k.have[i as usize] && ok(k) && k.inflight < per_peer)
                    .min_by_key(|k| (k.inflight, rand_tiebreak(&k.peer.id, i)))
                    .map(|k| k.peer.id.clone());
                if let Some(id) = holder {
                    self.start_peer(i, id, futs);
                    continue;
                }
            }
            // 2. A peer fetching it from the upstream now, else 3. its owner.
            let fetcher = self.peers.values().find(|k| k.fetching[i as usize] && k.active && ok(k));
            let target = match fetcher {
                Some(k) => k.peer.id.clone(),
                None => self.owner_of(i),
            };
            if target == self.sw.me {
                let retry_ok = self.upstream_attempts.get(&i).is_none_or(|(_, at)| now >= *at);
                if self.upstream_inflight < up_parallel && retry_ok {
                    self.start_upstream(i, futs);
                }
            } else if self.peer_inflight < parallel
                && self.peers.get(&target).is_some_and(|k| k.inflight < per_peer && k.usable(now))
            {
                self.start_peer(i, target, futs);
            }
        }
    }

    fn start_peer(&mut self, index: u64, id: String, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let Some(k) = self.peers.get_mut(&id) else { return };
        k.inflight += 1;
        self.peer_inflight += 1;
        self.inflight[index as usize] = true;
        let (sw, dl, peer) = (self.sw.clone(), self.dl.clone(), k.peer.clone());
        futs.push(
            async move {
                let t = Instant::now();
                let result = fetch_peer_chunk(&sw, &dl, &peer, index).await;
                Done::Chunk { index, lane: Lane::Peer(peer.id), result, took: t.elapsed() }
            }
            .boxed(),
        );
    }

    fn start_upstream(&mut self, index: u64, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        self.upstream_inflight += 1;
        self.inflight[index as usize] = true;
        self.dl.set_fetching(index, true);
        let (sw, dl, req) = (self.sw.clone(), self.dl.clone(), self.request.clone());
        let t = Instant::now();
        let (fetch, abort) = futures_util::future::abortable(async move {
            let result = fetch_upstream_chunk(&sw, &dl, req, index).await;
            Done::Chunk { index, lane: Lane::Upstream, result, took: t.elapsed() }
        });
        self.aborts.insert(index, abort);
        futs.push(
            fetch
                .map(move |r| {
                    r.unwrap_or_else(|_| Done::Chunk {
                        index,
                        lane: Lane::Upstream,
                        result: ChunkResult::Abandoned,
                        took: t.elapsed(),
                    })
                })
                .boxed(),
        );
    }

    /// Stop fetching from the upstream what a peer already has (a slow or stuck upstream read,
    /// or two nodes that both thought they owned a chunk): the peer is asked instead.
    fn abandon_fetched_elsewhere(&mut self) {
        let now = Instant::now();
        for (i, handle) in &self.aborts {
            if self.peers.values().any(|k| k.have[*i as usize] && k.usable(now)) {
                tracing::debug!(
                    chunk = i,
                    "a peer has the chunk being fetched from the upstream; taking it from the peer"
                );
                metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "abandoned").increment(1);
                handle.abort();
            }
        }
    }

    async fn on_done(&mut self, done: Done, _futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        match done {
            Done::Refresh(found, statuses) => {
                self.refreshing = false;
                for p in found {
                    self.learn(p);
                }
                for (p, r) in statuses {
                    self.learn(p.clone());
                    let n = self.dl.chunks;
                    let mut gossip = Vec::new();
                    if let Some(k) = self.peers.get_mut(&p.id) {
                        match r {
                            Ok(doc) if doc.size == self.dl.size && doc.chunk_size == self.dl.chunk_size => {
                                k.active = true;
                                k.have = unbitmap(&doc.have, n);
                                k.fetching = unbitmap(&doc.fetching, n);
                                gossip = doc.peers;
                            }
                            Ok(_) => k.active = false,
                            Err(e) => {
                                if e != "not found" {
                                    tracing::debug!(peer = %p.id, error = %e, "peer status failed");
                                    k.lost();
                                }
                                k.active = false;
                                k.have.iter_mut().for_each(|b| *b = false);
                                k.fetching.iter_mut().for_each(|b| *b = false);
                            }
                        }
                    }
                    for g in gossip {
                        self.learn(Peer { id: g.id, addr: g.addr });
                    }
                }
                self.dl.set_view(self.view());
                self.abandon_fetched_elsewhere();
            }
            Done::Chunk { index, lane, result, took } => {
                self.inflight[index as usize] = false;
                let source = match &lane {
                    Lane::Upstream => {
                        self.upstream_inflight -= 1;
                        self.aborts.remove(&index);
                        "upstream"
                    }
                    Lane::Peer(id) => {
                        self.peer_inflight -= 1;
                        if let Some(k) = self.peers.get_mut(id) {
                            k.inflight -= 1;
                        }
                        "peer"
                    }
                };
                if !matches!(result, ChunkResult::Got(..)) && matches!(lane, Lane::Upstream) {
                    self.dl.set_fetching(index, false);
                }
                match result {
                    ChunkResult::Got(data, sha) => {
                        if source == "peer" {
                            metrics::counter!(SWARM_CHUNK_BYTES, "source" => source).increment(data.len() as u64);
                        }
                        self.waiting.remove(&index);
                        if let Err(e) = self.dl.put(index, data.clone(), sha).await {
                            self.failed = Some(format!("spool write failed: {e}"));
                            return;
                        }
                        self.advance_hash(index, data).await;
                    }
                    ChunkResult::Pending(progress) => {
                        let Lane::Peer(id) = lane else { return };
                        if took < Duration::from_millis(100) {
                            // Answered "not yet" at once: do not ask again in a tight loop.
                            if let Some(k) = self.peers.get_mut(&id) {
                                k.busy_until = Some(Instant::now() + Duration::from_millis(200));
                            }
                        }
                        self.note_wait(index, id, progress);
                    }
                    ChunkResult::NotThere => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "not_there").increment(1);
                        if let Lane::Peer(id) = lane {
                            if let Some(k) = self.peers.get_mut(&id) {
                                k.active = false;
                                k.have[index as usize] = false;
                                k.fetching[index as usize] = false;
                            }
                        }
                    }
                    ChunkResult::Busy => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "busy").increment(1);
                        if let Lane::Peer(id) = lane {
                            if let Some(k) = self.peers.get_mut(&id) {
                                k.busy_until = Some(Instant::now() + Duration::from_millis(250));
                            }
                        }
                    }
                    ChunkResult::Dead(why) => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "unreachable").increment(1);
                        if let Lane::Peer(id) = lane {
                            tracing::warn!(peer = %id, chunk = index, why, "peer unreachable; its chunks go to others");
                            if let Some(k) = self.peers.get_mut(&id) {
                                k.lost();
                            }
                            if self.waiting.get(&index).is_some_and(|w| w.peer == id) {
                                metrics::counter!(SWARM_TAKEOVERS).increment(1);
                                self.waiting.remove(&index);
                            }
                        }
                    }
                    ChunkResult::Bad(why) => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "bad").increment(1);
                        if let Lane::Peer(id) = lane {
                            tracing::warn!(peer = %id, chunk = index, why, "peer sent a bad chunk; not asked for it again");
                            self.excluded.entry(index).or_default().insert(id);
                        }
                    }
                    ChunkResult::Abandoned => {}
                    ChunkResult::UpstreamFailed(e) => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "upstream").increment(1);
                        let attempts = self.upstream_attempts.entry(index).or_insert((0, Instant::now()));
                        attempts.0 += 1;
                        let fatal = matches!(e, UpstreamError::Status { status, .. } if (400..500).contains(&status))
                            || matches!(e, UpstreamError::NotMirrored(_));
                        if fatal || attempts.0 >= UPSTREAM_ATTEMPTS {
                            self.failed = Some(format!("chunk {index} from upstream: {e}"));
                        } else {
                            tracing::info!(chunk = index, error = %e, attempt = attempts.0, "upstream chunk failed; retrying");
                            attempts.1 = Instant::now() + Duration::from_millis(250 << attempts.0);
                        }
                    }
                }
            }
        }
    }

    /// A peer said "not yet". Keep waiting while it makes progress on this blob's upstream reads
    /// (it is working through the chunks it owns); take the chunk over when it made none for
    /// `swarm.takeover` (stuck, or not fetching at all). A peer that is slow but moving keeps its
    /// chunks: taking them over would read them from the upstream twice.
    fn note_wait(&mut self, index: u64, id: String, progress: Option<u64>) {
        let now = Instant::now();
        let entry = self.waiting.entry(index).or_insert(Wait { peer: id.clone(), since: now, progress });
        if entry.peer != id {
            *entry = Wait { peer: id.clone(), since: now, progress };
        } else if progress.is_some_and(|p| entry.progress.is_none_or(|q| p > q)) {
            entry.since = now;
            entry.progress = progress;
        }
        if now.duration_since(entry.since) >= self.sw.cfg.takeover {
            tracing::warn!(peer = %id, chunk = index, "no progress from the peer that should fetch this chunk; taking it over");
            metrics::counter!(SWARM_TAKEOVERS).increment(1);
            self.excluded.entry(index).or_default().insert(id);
            self.waiting.remove(&index);
        }
    }

    /// Feed the whole-blob hash with every chunk that is next in order.
    async fn advance_hash(&mut self, index: u64, data: Bytes) {
        let Some(hasher) = self.hasher.as_mut() else { return };
        if index == self.hashed {
            hasher.update(&data);
            self.hashed += 1;
        }
        while self.hashed < self.dl.chunks && self.dl.has(self.hashed).is_some() {
            match self.dl.read_chunk(self.hashed).await {
                Some((d, _)) => {
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&d);
                    }
                    self.hashed += 1;
                }
                None => {
                    self.failed = Some("spool read failed".into());
                    return;
                }
            }
        }
    }
}

/// A stable pseudo-random order among equally loaded peers (so nodes do not all pick the same).
fn rand_tiebreak(id: &str, index: u64) -> u64 {
    let h = sha2::Sha256::new().chain_update(id).chain_update(index.to_le_bytes()).finalize();
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

async fn fetch_status(sw: &Swarm, dl: &Download, peer: &Peer) -> Result<StatusDoc, String> {
    status_of(sw, &dl.digest, dl.chunk_size, peer).await
}

/// A peer's status page for its download of `digest` in `chunk_size`-byte chunks.
pub(super) async fn status_of(sw: &Swarm, digest: &Digest, chunk_size: u64, peer: &Peer) -> Result<StatusDoc, String> {
    let client = sw.client.as_ref().ok_or("no peer client")?;
    let target = format!("/swarm/{digest}/{chunk_size}");
    let resp = client.fetch(peer, &target, false, None, None).await.map_err(|e| match e {
        PeerError::NotFound => "not found".to_owned(),
        e => e.to_string(),
    })?;
    let want = resp.digest.clone().unwrap_or_default();
    let body = crate::store::collect(resp.body, 1 << 20).await.map_err(|e| e.to_string())?;
    if want != format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))) {
        return Err("status does not match its checksum".into());
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

async fn fetch_peer_chunk(sw: &Swarm, dl: &Download, peer: &Peer, index: u64) -> ChunkResult {
    let Some(client) = &sw.client else { return ChunkResult::Dead("no peer client".into()) };
    let Ok(_slot) = sw.fetch_slots.acquire().await else { return ChunkResult::Dead("shutting down".into()) };
    let want_len = dl.chunk_len(index);
    throttle(sw.download_limit.as_ref(), want_len as usize).await;
    let target = format!("/swarm/{}/{}/{index}?wait={}", dl.digest, dl.chunk_size, LONG_POLL.as_millis());
    let resp = match client.fetch(peer, &target, false, None, None).await {
        Ok(r) => r,
        Err(PeerError::NotFound) => return ChunkResult::NotThere,
        Err(PeerError::Pending(p)) => return ChunkResult::Pending(p),
        Err(PeerError::Busy) => return ChunkResult::Busy,
        Err(e @ PeerError::Auth(_)) => return ChunkResult::Bad(e.to_string()),
        Err(e) => return ChunkResult::Dead(e.to_string()),
    };
    let claimed = resp.digest.clone().unwrap_or_default();
    let body = match crate::store::collect(resp.body, want_len).await {
        Ok(b) => b,
        Err(e) => return ChunkResult::Dead(e.to_string()),
    };
    let sha: [u8; 32] = sha2::Sha256::digest(&body).into();
    if body.len() as u64 != want_len || claimed != format!("sha256:{}", hex::encode(sha)) {
        return ChunkResult::Bad(format!("chunk {index}: {} bytes, checksum {claimed}", body.len()));
    }
    ChunkResult::Got(body, sha)
}

async fn fetch_upstream_chunk(sw: &Swarm, dl: &Download, mut req: UpstreamRequest, index: u64) -> ChunkResult {
    let Ok(_slot) = sw.fetch_slots.acquire().await else { return ChunkResult::Dead("shutting down".into()) };
    let len = dl.chunk_len(index);
    throttle(sw.download_limit.as_ref(), len as usize).await;
    let range = ByteRange { start: index * dl.chunk_size, end: index * dl.chunk_size + len - 1 };
    req.head = false;
    req.range = Some(range);
    let resp = match crate::fetch::send(&sw.upstream, req).await {
        Ok(r) => r,
        Err(e) => return ChunkResult::UpstreamFailed(e),
    };
    let mut body: crate::store::ByteStream = if resp.status == 200 {
        // The upstream ignored Range: cut the chunk out of the whole body.
        Box::pin(Slice::new(resp.body, range.start, len))
    } else {
        Box::pin(Slice::new(resp.body, 0, len))
    };
    let mut buf = bytes::BytesMut::with_capacity(len as usize);
    // Counted as the bytes arrive (a chunk from a slow upstream takes a while).
    let received = metrics::counter!(SWARM_CHUNK_BYTES, "source" => "upstream");
    while let Some(piece) = body.next().await {
        match piece {
            Ok(p) => {
                buf.extend_from_slice(&p);
                dl.upstream_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                received.increment(p.len() as u64);
            }
            Err(e) => {
                return ChunkResult::UpstreamFailed(UpstreamError::Unreachable {
                    host: "upstream".into(),
                    reason: format!("chunk body: {e}"),
                })
            }
        }
    }
    if buf.len() as u64 != len {
        return ChunkResult::UpstreamFailed(UpstreamError::Protocol(format!(
            "chunk {index}: {} of {len} bytes",
            buf.len()
        )));
    }
    let data = buf.freeze();
    let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
    ChunkResult::Got(data, sha)
}
