//! The one driver of chunked, multi-source transfers: it performs the planner's decisions
//! ([`super::plan`]) with real I/O — the DHT and the peers' status pages, chunk requests to
//! peers, ranged upstream reads. What is moved and where it is kept is the [`Chunks`] of the
//! transfer: a /v2 swarm download (a spool, the whole blob hashed against its digest) or a /blobs
//! file (the chunk cache, chunks fetched on demand). The engine owns its state alone (one task
//! per transfer); chunk transfers run as futures it starts and whose outcome it feeds back to
//! the planner. Bytes go from the network to the store, never through the planner.

use super::plan::{
    ask_list, deepest_groups, Action, ChunkOutcome, PlanConfig, Planner, Source, Status, CUT_AT, MAX_VIEW,
};
use super::Bits;
use crate::peer::client::PeerError;
use crate::routing::keys::SWARM_GROUP_LEVELS;
use crate::routing::{Peer, Router};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
// Tokio's clock: the same as the system's, and virtual in tests with paused time.
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How a chunk transfer ended, as the [`Chunks`] saw it.
pub enum ChunkResult {
    /// The chunk, checked against its sha256.
    Got(Bytes, [u8; 32]),
    /// The peer does not have it yet ("425"), with its upstream progress.
    Pending(Option<u64>),
    /// The peer has no such transfer.
    NotThere,
    /// The peer has too many uploads (or lost the source it passed the chunk on from).
    Busy,
    Dead(String),
    Bad(String),
    /// The upstream read failed; `fatal`: retrying cannot help (a refusal).
    UpstreamFailed {
        fatal: bool,
        why: String,
    },
    /// The upstream fetch was given up: a peer has the chunk.
    Abandoned,
    /// The chunk arrived but could not be kept (the transfer fails).
    StoreFailed(String),
}

impl ChunkResult {
    /// The answer of a peer that did not send the chunk.
    pub fn of_peer_error(e: PeerError) -> ChunkResult {
        match e {
            PeerError::NotFound => ChunkResult::NotThere,
            PeerError::Pending(p) => ChunkResult::Pending(p),
            PeerError::Busy => ChunkResult::Busy,
            e @ PeerError::Auth(_) => ChunkResult::Bad(e.to_string()),
            e => ChunkResult::Dead(e.to_string()),
        }
    }
}

/// What a node tells peers about one transfer (`GET /swarm/<digest>/<chunk size>`,
/// `GET /blobs-status/<file id>`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusDoc {
    pub size: u64,
    pub chunk_size: u64,
    /// Bitmaps (hex, bit i of byte i/8, most significant first): chunks held, chunks arriving
    /// now (from the upstream, or from a peer that has them: a peer may wait here for them).
    pub have: String,
    pub fetching: String,
    /// Other nodes this one knows are in the transfer (so views converge).
    pub peers: Vec<PeerDoc>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PeerDoc {
    pub id: String,
    pub addr: SocketAddr,
}

impl From<&Peer> for PeerDoc {
    fn from(p: &Peer) -> Self {
        PeerDoc { id: p.id.clone(), addr: p.addr }
    }
}

pub fn bitmap(bits: impl Iterator<Item = bool>) -> String {
    let mut bytes = Vec::new();
    for (i, b) in bits.enumerate() {
        if i % 8 == 0 {
            bytes.push(0u8);
        }
        if b {
            *bytes.last_mut().expect("pushed") |= 0x80 >> (i % 8);
        }
    }
    hex::encode(bytes)
}

/// Bit `n` of `len` from a [`bitmap`]; a malformed or short map reads as all clear.
pub fn unbitmap(s: &str, len: u64) -> Vec<bool> {
    let bytes = hex::decode(s).unwrap_or_default();
    (0..len).map(|i| bytes.get((i / 8) as usize).is_some_and(|b| b & (0x80 >> (i % 8)) != 0)).collect()
}

/// Why a peer's status page could not be had.
#[derive(thiserror::Error, Debug)]
pub enum StatusError {
    #[error("no such transfer there")]
    NotFound,
    #[error("no peer client")]
    NoClient,
    #[error(transparent)]
    Peer(PeerError),
    #[error("status body: {0}")]
    Body(std::io::Error),
    #[error("status does not match its checksum")]
    Checksum,
    #[error("status: {0}")]
    Json(#[from] serde_json::Error),
}

/// A peer's status page at `target` (a JSON [`StatusDoc`] whose sha256 the signed answer names).
pub async fn status_at(
    client: Option<&crate::peer::client::PeerClient>,
    peer: &Peer,
    target: &str,
) -> Result<StatusDoc, StatusError> {
    use sha2::Digest as _;
    let client = client.ok_or(StatusError::NoClient)?;
    let resp = client.fetch(peer, target, false, None, None).await.map_err(|e| match e {
        PeerError::NotFound => StatusError::NotFound,
        e => StatusError::Peer(e),
    })?;
    let want = resp.digest.clone().unwrap_or_default();
    let body = crate::stream::collect(resp.body, 1 << 20).await.map_err(StatusError::Body)?;
    if want != format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))) {
        return Err(StatusError::Checksum);
    }
    Ok(serde_json::from_slice(&body)?)
}

/// Asks each peer for its status page at `target` (the same path on every peer).
pub fn status_fn(client: Option<Arc<crate::peer::client::PeerClient>>, target: String) -> StatusFn {
    Arc::new(move |peer: Peer| {
        let (client, target) = (client.clone(), target.clone());
        async move { status_at(client.as_deref(), &peer, &target).await }.boxed()
    })
}

/// Something worth counting (each kind of transfer has its own metrics).
pub enum Note {
    /// A chunk fetch failed, by reason (`not_there`, `busy`, `unreachable`, `bad`, `upstream`,
    /// `abandoned`).
    Failure(&'static str),
    /// Chunk bytes received from a peer.
    PeerBytes(u64),
    TookOver,
    PeerLost,
}

/// Keeps a chunk that arrived checked (see [`Chunks::storer`]).
pub type StoreFn = Arc<dyn Fn(u64, Bytes, [u8; 32]) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Asks one peer for its status page of a transfer.
pub type StatusFn = Arc<dyn Fn(Peer) -> BoxFuture<'static, Result<StatusDoc, StatusError>> + Send + Sync>;

/// One kind of transfer: where its chunks come from and where they are kept.
pub trait Chunks: Send + 'static {
    /// Bytes in all, and in a chunk (the last one may be shorter).
    fn size(&self) -> u64;
    fn chunk_size(&self) -> u64;
    fn chunks(&self) -> u64 {
        self.size().div_ceil(self.chunk_size())
    }
    /// Chunk `index`'s size in bytes.
    fn chunk_len(&self, index: u64) -> u64 {
        (self.size() - index * self.chunk_size()).min(self.chunk_size())
    }
    /// The DHT key the nodes in this transfer announce.
    fn swarm_key(&self) -> String;
    /// The key of this node's group at `level` (announced once the swarm is cut at the DHT's cap).
    fn group_key(&self, level: u32) -> String;
    /// How to ask a peer for its status page of this transfer.
    fn status_of(&self) -> StatusFn;
    /// Chunk `index` from `peer`.
    fn fetch_peer(&self, peer: Peer, index: u64) -> BoxFuture<'static, ChunkResult>;
    /// Chunk `index` from the upstream.
    fn fetch_upstream(&self, index: u64) -> BoxFuture<'static, ChunkResult>;
    /// Chunk `index` is (or no longer is) arriving here, as peers should see it.
    fn set_fetching(&self, index: u64, on: bool);
    /// The peers in the transfer with this node (its status page names them).
    fn set_view(&self, view: Vec<PeerDoc>);
    /// How to keep a chunk that arrived checked: run as the end of the chunk's own transfer,
    /// beside the others (a disk write does not hold up the engine). An error ends the transfer.
    fn storer(&self) -> StoreFn;
    /// After a chunk was kept, on the engine's task, in the order chunks arrive (e.g. to feed a
    /// whole-blob hash). An error ends the transfer.
    fn stored(&mut self, _index: u64, _data: Bytes, _sha: [u8; 32]) -> BoxFuture<'_, Result<(), String>> {
        futures_util::future::ready(Ok(())).boxed()
    }
    /// Whether chunk `index` is in the store now (`None`: the planner's count is the truth).
    fn holds(&self, _index: u64) -> Option<bool> {
        None
    }
    /// Whether the transfer is over: `Ok`: done; `Err`: failed (e.g. a digest mismatch).
    fn end(&mut self) -> Option<Result<(), String>>;
    /// (On demand) chunk `index` could not be had: whoever waits for it gets `why`.
    fn chunk_failed(&self, _index: u64, _why: &str) {}
    fn note(&self, _note: Note) {}
}

/// What every transfer's engine shares.
#[derive(Clone)]
pub struct EngineConfig {
    pub router: Option<Arc<dyn Router>>,
    pub me: String,
    /// Wait this long after announcing, for the others starting at once to do the same.
    pub gather: Duration,
    pub refresh: Duration,
    pub plan: PlanConfig,
}

/// What the owner of an on-demand transfer asks of it.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// Fetch chunk `index` (a reader, the prefetch or a peer waits for it).
    Chunk(u64),
    /// Nobody waits for chunk `index` any more.
    Drop(u64),
}

/// How an on-demand transfer is asked for chunks, and when it ends: after `idle` without a
/// want while nothing is in flight.
pub struct OnDemand {
    pub wants: mpsc::Receiver<Want>,
    pub idle: Duration,
    /// Chunks already held when it starts.
    pub have: Bits,
}

enum Lane {
    Upstream,
    Peer(String),
}

enum Done {
    Chunk { index: u64, lane: Lane, result: ChunkResult, took: Duration },
    Refresh(Vec<Peer>, Vec<(Peer, Result<StatusDoc, StatusError>)>),
}

pub struct Engine<C: Chunks> {
    chunks: C,
    store: StoreFn,
    cfg: EngineConfig,
    plan: Planner<SocketAddr>,
    /// The planner's time is the time since this.
    epoch: Instant,
    /// Fetches in flight by (chunk, from the upstream): given up on when the planner says so
    /// (an upstream read of a chunk a peer has; a long poll for a chunk this node owns now).
    aborts: HashMap<(u64, bool), futures_util::future::AbortHandle>,
    failed: Option<String>,
    /// Announced in its groups: once a lookup came back full (small swarms never need them).
    grouped: bool,
    demand: Option<OnDemand>,
    /// When the view of the others was last refreshed.
    refreshed: Option<Instant>,
    /// (On demand) a chunk was asked for while the view was stale: nothing is scheduled until
    /// the refresh under way ends (a transfer with nothing to do does not refresh, so what the
    /// peers have may have changed a lot since).
    hold: bool,
}

impl<C: Chunks> Engine<C> {
    /// `key`: the rendezvous key of the transfer (a digest, a file id).
    pub fn new(chunks: C, key: String, cfg: EngineConfig, demand: Option<OnDemand>) -> Engine<C> {
        let mut plan = Planner::new(key, cfg.me.clone(), chunks.chunks(), cfg.plan.clone());
        if let Some(d) = &demand {
            plan = plan.on_demand();
            for i in d.have.ones() {
                plan.on_chunk(Duration::ZERO, i, Source::Upstream, ChunkOutcome::Got, &mut Vec::new());
            }
        }
        Engine {
            store: chunks.storer(),
            chunks,
            cfg,
            plan,
            epoch: Instant::now(),
            aborts: HashMap::new(),
            failed: None,
            grouped: false,
            demand,
            refreshed: None,
            hold: false,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Run the transfer to its end: `Ok` when it completed (or, on demand, went idle).
    pub async fn run(mut self) -> Result<(), String> {
        let mut futs: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        if let Some(r) = &self.cfg.router {
            if let Err(e) = r.provide_now(vec![self.chunks.swarm_key()]).await {
                tracing::debug!(error = %e, "cannot announce the transfer");
            }
            tokio::time::sleep(self.cfg.gather).await;
            if let Some(first) = self.refresh_future() {
                let done = first.await;
                self.on_done(done, &mut futs).await;
            }
        }
        let mut tick = tokio::time::interval(self.cfg.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_want = Instant::now();
        loop {
            if let Some(why) = self.failed.take() {
                return Err(why);
            }
            if let Some(end) = self.chunks.end() {
                return end;
            }
            if !self.hold {
                let mut out = Vec::new();
                self.plan.schedule(self.now(), &mut out);
                self.perform(out, &mut futs);
            }
            let idle = self.demand.as_ref().map(|d| d.idle.saturating_sub(last_want.elapsed()));
            if idle.is_some_and(|left| left.is_zero()) && futs.is_empty() {
                return Ok(());
            }
            let want = async {
                match self.demand.as_mut() {
                    Some(d) => d.wants.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = futs.next() => self.on_done(done, &mut futs).await,
                w = want => match w {
                    Some(w) => {
                        last_want = Instant::now();
                        match w {
                            Want::Chunk(i) => {
                                // Asked for, so not here: it may have left the store (a cache
                                // evicts) since the planner counted it held.
                                if self.chunks.holds(i) == Some(false) {
                                    self.plan.forget(i);
                                }
                                self.plan.want(i, true);
                                let stale = self.refreshed.is_none_or(|t| t.elapsed() >= self.cfg.refresh);
                                if stale && self.cfg.router.is_some() {
                                    if let Some(f) = self.refresh_future() {
                                        futs.push(f);
                                    }
                                    self.hold = true;
                                }
                            }
                            Want::Drop(i) => self.plan.want(i, false),
                        }
                    }
                    // Its owner is gone: nobody can ask for anything any more.
                    None => if futs.is_empty() { return Ok(()) } else { self.demand = None },
                },
                _ = tick.tick() => {
                    // An on-demand transfer with nothing to do asks nobody.
                    let work = self.demand.is_none() || self.plan.busy();
                    if self.cfg.router.is_some() && work {
                        if let Some(f) = self.refresh_future() {
                            futs.push(f);
                        }
                    }
                }
                _ = tokio::time::sleep(idle.unwrap_or(Duration::MAX)), if idle.is_some() => {}
            }
        }
    }

    /// [`Engine::run`], ended with an error rather than leaving readers waiting when the engine
    /// panics or `stop` is cancelled (the node shuts down).
    pub async fn run_until(self, stop: &tokio_util::sync::CancellationToken) -> Result<(), String> {
        let run = std::panic::AssertUnwindSafe(self.run());
        tokio::select! {
            end = futures_util::FutureExt::catch_unwind(run) => end.unwrap_or_else(|_| {
                tracing::error!("a transfer's engine panicked");
                Err("the transfer's engine failed".into())
            }),
            _ = stop.cancelled() => Err("the node is shutting down".into()),
        }
    }

    /// Look the transfer up in the DHT and ask every known peer what it has (none while a
    /// refresh runs).
    fn refresh_future(&mut self) -> Option<BoxFuture<'static, Done>> {
        // The DHT is asked every few refreshes (and while no peer is known); in between, the
        // peers' status pages name the nodes they know, which is cheaper than a lookup.
        let refresh = self.plan.start_refresh(self.now())?;
        let me = self.plan.me().to_owned();
        let router = self.cfg.router.clone();
        let keys: Vec<String> = std::iter::once(self.chunks.swarm_key())
            .chain((1..=SWARM_GROUP_LEVELS).map(|l| self.chunks.group_key(l)))
            .collect();
        let status_of = self.chunks.status_of();
        Some(
            async move {
                // The swarm's key (the owners, when the DHT cut it), then, while a lookup comes
                // back full, this node's group one level deeper (`keys::SWARM_GROUP_LEVELS`):
                // the deepest groups first, they are the peers only this node's group knows.
                let (found, groups) = match &router {
                    Some(r) if refresh.lookup => {
                        let lookup = async |key: String| match r.resolve(key, MAX_VIEW).await {
                            Ok(rx) => crate::routing::collect_peers(rx, Duration::from_millis(500)).await,
                            Err(_) => Vec::new(),
                        };
                        let mut keys = keys.into_iter();
                        let found = lookup(keys.next().expect("the swarm key")).await;
                        let mut levels: Vec<Vec<Peer>> = Vec::new();
                        let mut full = found.len() >= CUT_AT;
                        for key in keys {
                            if !full {
                                break;
                            }
                            let g = lookup(key).await;
                            full = g.len() >= CUT_AT;
                            levels.push(g);
                        }
                        (found, deepest_groups(levels))
                    }
                    _ => (Vec::new(), Vec::new()),
                };
                let pairs: Vec<(String, SocketAddr)> =
                    groups.iter().chain(&found).map(|p| (p.id.clone(), p.addr)).collect();
                let ask = ask_list(refresh.known, &pairs, &me, MAX_VIEW);
                let statuses = futures_util::future::join_all(ask.into_iter().map(|(id, addr)| {
                    let p = Peer { id, addr };
                    let status = status_of(p.clone());
                    async move { (p, status.await) }
                }))
                .await;
                Done::Refresh(found, statuses)
            }
            .boxed(),
        )
    }

    /// Do what the planner decided.
    fn perform(&mut self, actions: Vec<Action<SocketAddr>>, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        for a in actions {
            match a {
                Action::FetchPeer { index, peer, addr } => {
                    let fetch =
                        kept(&self.store, index, self.chunks.fetch_peer(Peer { id: peer.clone(), addr }, index));
                    self.start(index, Lane::Peer(peer), fetch, futs);
                }
                Action::FetchUpstream { index } => {
                    self.chunks.set_fetching(index, true);
                    let fetch = kept(&self.store, index, self.chunks.fetch_upstream(index));
                    self.start(index, Lane::Upstream, fetch, futs);
                }
                Action::AbortPeer { index, peer } => self.give_up(
                    index,
                    false,
                    &format!(
                        "this node owns the chunk now and nobody fetches it; reading it instead of waiting for {peer}"
                    ),
                ),
                Action::AbortUpstream { index } => self.give_up(
                    index,
                    true,
                    "a peer has the chunk being fetched from the upstream; taking it from the peer",
                ),
                Action::TookOver { index, from } => {
                    tracing::warn!(peer = %from, chunk = index, "no progress from the peer that should fetch this chunk (or it died); taking it over");
                    self.chunks.note(Note::TookOver);
                }
                Action::PeerLost { peer } => {
                    tracing::debug!(%peer, "peer in a transfer with this node stopped answering");
                    self.chunks.note(Note::PeerLost);
                }
                Action::Complete => {}
                Action::ChunkFailed { index, error } => self.chunks.chunk_failed(index, &error.to_string()),
                Action::Failed(e) => {
                    if self.failed.is_none() {
                        self.failed = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Give up the fetch of chunk `index` in flight (from the upstream or a peer), if it still
    /// is: it ends `Abandoned`.
    fn give_up(&self, index: u64, upstream: bool, why: &str) {
        if let Some(handle) = self.aborts.get(&(index, upstream)) {
            tracing::debug!(chunk = index, "{why}");
            self.chunks.note(Note::Failure("abandoned"));
            handle.abort();
        }
    }

    /// Run one chunk fetch (given up on through [`Self::aborts`]: `Abandoned`).
    fn start(
        &mut self,
        index: u64,
        lane: Lane,
        fetch: BoxFuture<'static, ChunkResult>,
        futs: &mut FuturesUnordered<BoxFuture<'static, Done>>,
    ) {
        let t = Instant::now();
        let (fetch, abort) = futures_util::future::abortable(fetch);
        self.aborts.insert((index, matches!(lane, Lane::Upstream)), abort);
        futs.push(
            fetch
                .map(move |r| Done::Chunk {
                    index,
                    lane,
                    result: r.unwrap_or(ChunkResult::Abandoned),
                    took: t.elapsed(),
                })
                .boxed(),
        );
    }

    async fn on_done(&mut self, done: Done, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let mut out = Vec::new();
        match done {
            Done::Refresh(found, statuses) => {
                self.refreshed = Some(Instant::now());
                self.hold = false;
                if found.len() >= CUT_AT && !self.grouped {
                    self.grouped = true;
                    if let Some(r) = &self.cfg.router {
                        let keys = (1..=SWARM_GROUP_LEVELS).map(|l| self.chunks.group_key(l)).collect();
                        if let Err(e) = r.provide_now(keys).await {
                            tracing::debug!(error = %e, "cannot announce the transfer in its groups");
                        }
                    }
                }
                let n = self.chunks.chunks();
                let found: Vec<(String, SocketAddr)> = found.into_iter().map(|p| (p.id, p.addr)).collect();
                let statuses = statuses
                    .into_iter()
                    .map(|(p, r)| {
                        let status = match r {
                            Ok(doc) if doc.size == self.chunks.size() && doc.chunk_size == self.chunks.chunk_size() => {
                                Status::Active {
                                    have: Bits::from_bools(n, unbitmap(&doc.have, n)),
                                    fetching: Bits::from_bools(n, unbitmap(&doc.fetching, n)),
                                    peers: doc.peers.into_iter().map(|g| (g.id, g.addr)).collect(),
                                }
                            }
                            Ok(_) => Status::Other,
                            Err(StatusError::NotFound) => Status::NotFound,
                            Err(e) => {
                                tracing::debug!(peer = %p.id, error = %e, "peer status failed");
                                Status::Unreachable
                            }
                        };
                        (p.id, p.addr, status)
                    })
                    .collect();
                self.plan.on_refresh(self.now(), &found, statuses, &mut out);
                self.chunks.set_view(self.plan.view().into_iter().map(|(id, addr)| PeerDoc { id, addr }).collect());
            }
            Done::Chunk { index, lane, result, took } => {
                // No longer arriving (a chunk that arrived is cleared when it is stored).
                if !matches!(result, ChunkResult::Got(..)) {
                    self.chunks.set_fetching(index, false);
                }
                self.aborts.remove(&(index, matches!(lane, Lane::Upstream)));
                let source = match lane {
                    Lane::Upstream => Source::Upstream,
                    Lane::Peer(id) => Source::Peer(id),
                };
                let outcome = match result {
                    ChunkResult::Got(data, sha) => {
                        if matches!(source, Source::Peer(_)) {
                            self.chunks.note(Note::PeerBytes(data.len() as u64));
                        }
                        if let Err(e) = self.chunks.stored(index, data, sha).await {
                            self.failed = Some(e);
                            return;
                        }
                        ChunkOutcome::Got
                    }
                    ChunkResult::Pending(progress) => ChunkOutcome::Pending { progress, took },
                    ChunkResult::NotThere => {
                        self.chunks.note(Note::Failure("not_there"));
                        ChunkOutcome::NotThere
                    }
                    ChunkResult::Busy => {
                        self.chunks.note(Note::Failure("busy"));
                        ChunkOutcome::Busy
                    }
                    ChunkResult::Dead(why) => {
                        self.chunks.note(Note::Failure("unreachable"));
                        if let Source::Peer(id) = &source {
                            tracing::warn!(peer = %id, chunk = index, why, "peer unreachable; its chunks go to others");
                        }
                        ChunkOutcome::Dead
                    }
                    ChunkResult::Bad(why) => {
                        self.chunks.note(Note::Failure("bad"));
                        if let Source::Peer(id) = &source {
                            tracing::warn!(peer = %id, chunk = index, why, "peer sent a bad chunk; not asked for it again");
                        }
                        ChunkOutcome::Bad
                    }
                    ChunkResult::Abandoned => ChunkOutcome::Abandoned,
                    ChunkResult::StoreFailed(e) => {
                        self.failed = Some(e);
                        return;
                    }
                    ChunkResult::UpstreamFailed { fatal, why } => {
                        self.chunks.note(Note::Failure("upstream"));
                        self.plan.on_chunk(self.now(), index, source, ChunkOutcome::UpstreamFailed { fatal }, &mut out);
                        if out.iter().any(|a| matches!(a, Action::Failed(_))) {
                            self.failed = Some(format!("chunk {index} from upstream: {why}"));
                        } else if out.iter().any(|a| matches!(a, Action::ChunkFailed { .. })) {
                            // Whoever waits for it gets the upstream's own words, not the plan's.
                            out.retain(|a| !matches!(a, Action::ChunkFailed { .. }));
                            self.chunks.chunk_failed(index, &why);
                        } else {
                            tracing::info!(chunk = index, error = %why, "upstream chunk failed; retrying");
                        }
                        self.perform(out, futs);
                        return;
                    }
                };
                self.plan.on_chunk(self.now(), index, source, outcome, &mut out);
            }
        }
        self.perform(out, futs);
    }
}

/// A chunk transfer that ends with the chunk kept (`store`) when it arrived.
fn kept(store: &StoreFn, index: u64, fetch: BoxFuture<'static, ChunkResult>) -> BoxFuture<'static, ChunkResult> {
    let store = store.clone();
    async move {
        match fetch.await {
            ChunkResult::Got(data, sha) => match store(index, data.clone(), sha).await {
                Ok(()) => ChunkResult::Got(data, sha),
                Err(e) => ChunkResult::StoreFailed(e),
            },
            other => other,
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A transfer of 4 chunks of 4 bytes with no peers: the upstream gives every chunk but 2.
    struct Fake {
        fetched: Arc<Mutex<Vec<u64>>>,
        kept: Arc<Mutex<Vec<u64>>>,
        failed: Arc<Mutex<Vec<(u64, String)>>>,
    }

    impl Chunks for Fake {
        fn size(&self) -> u64 {
            16
        }
        fn chunk_size(&self) -> u64 {
            4
        }
        fn swarm_key(&self) -> String {
            "swarm/fake".into()
        }
        fn group_key(&self, level: u32) -> String {
            format!("swarm/fake/{level}")
        }
        fn status_of(&self) -> StatusFn {
            Arc::new(|_| futures_util::future::ready(Err(StatusError::NoClient)).boxed())
        }
        fn fetch_peer(&self, _peer: Peer, _index: u64) -> BoxFuture<'static, ChunkResult> {
            futures_util::future::ready(ChunkResult::Dead("no peers here".into())).boxed()
        }
        fn fetch_upstream(&self, index: u64) -> BoxFuture<'static, ChunkResult> {
            self.fetched.lock().unwrap().push(index);
            futures_util::future::ready(if index == 2 {
                ChunkResult::UpstreamFailed { fatal: false, why: "the store said 500".into() }
            } else {
                ChunkResult::Got(Bytes::from(vec![index as u8; 4]), [index as u8; 32])
            })
            .boxed()
        }
        fn set_fetching(&self, _index: u64, _on: bool) {}
        fn set_view(&self, _view: Vec<PeerDoc>) {}
        fn storer(&self) -> StoreFn {
            let kept = self.kept.clone();
            Arc::new(move |index, _, _| {
                kept.lock().unwrap().push(index);
                futures_util::future::ready(Ok(())).boxed()
            })
        }
        fn end(&mut self) -> Option<Result<(), String>> {
            None
        }
        fn chunk_failed(&self, index: u64, why: &str) {
            self.failed.lock().unwrap().push((index, why.to_owned()));
        }
    }

    /// The engine of an on-demand transfer, in paused (virtual) time: it fetches only the chunks
    /// asked for, a chunk the upstream fails fails alone (its waiters get the upstream's words)
    /// while the transfer goes on, and it ends `idle` after the last want, not before.
    #[tokio::test(start_paused = true)]
    async fn on_demand_fetches_what_is_wanted_fails_a_chunk_alone_and_ends_when_idle() {
        let (fetched, kept, failed) = (Arc::default(), Arc::default(), Arc::default());
        let fake = Fake { fetched: Arc::clone(&fetched), kept: Arc::clone(&kept), failed: Arc::clone(&failed) };
        let plan = PlanConfig { upstream_attempts: 1, ..PlanConfig::new(4, 2, 4, Duration::from_secs(10)) };
        let cfg = EngineConfig {
            router: None,
            me: "me".into(),
            gather: Duration::ZERO,
            refresh: Duration::from_secs(1),
            plan,
        };
        let (tx, rx) = mpsc::channel(8);
        let idle = Duration::from_secs(30);
        let demand = OnDemand { wants: rx, idle, have: Bits::new(4) };
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(Engine::new(fake, "fake".into(), cfg, Some(demand)).run());
        tx.send(Want::Chunk(1)).await.unwrap();
        tx.send(Want::Chunk(2)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*kept.lock().unwrap(), vec![1], "the chunk asked for, kept");
        assert_eq!(failed.lock().unwrap().len(), 1);
        assert_eq!(failed.lock().unwrap()[0], (2, "the store said 500".to_owned()), "its reader gets the why");
        assert!(!run.is_finished(), "one chunk failing does not end the transfer");
        tx.send(Want::Chunk(3)).await.unwrap();
        let last_want = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*kept.lock().unwrap(), vec![1, 3]);
        tokio::time::sleep_until(last_want + idle - Duration::from_secs(1)).await;
        assert!(!run.is_finished(), "not idle long enough yet");
        let end = tokio::time::timeout(2 * idle, run).await.expect("an idle transfer ends");
        assert_eq!(end.unwrap(), Ok(()));
        let ended = tokio::time::Instant::now();
        assert!(ended - last_want >= idle && ended - started < idle + Duration::from_secs(5), "ends when idle");
        let mut f = fetched.lock().unwrap().clone();
        f.sort();
        assert_eq!(f, vec![1, 2, 3], "chunk 0 was never asked for, never fetched; none twice");
    }
}
