//! The driver of one download: it performs the decisions of the transfer planner
//! ([`crate::transfer::plan`]) with real I/O — the DHT and the peers' status pages, chunk
//! requests to peers, ranged upstream reads, the spool and the whole-blob hash. The engine owns
//! its state alone (one task per download); chunk transfers run as futures it starts and whose
//! outcome it feeds back to the planner. Bytes go from the network to the spool, never through
//! the planner.

use super::arrival::Arrival;
use super::{group_key, group_keys, swarm_key, throttle, unbitmap, Download, End, PeerDoc, StatusDoc, Swarming};
use super::{SWARM_CHUNK_BYTES, SWARM_CHUNK_FAILURES, SWARM_PEERS_LOST, SWARM_TAKEOVERS};
use crate::oci::{Digest, Hasher};
use crate::peer::client::PeerError;
use crate::peer::CHUNK_TRAILER_LEN;
use crate::range::ByteRange;
use crate::routing::keys::SWARM_GROUP_LEVELS;
use crate::routing::Peer;
use crate::transfer::plan::{
    ask_list, deepest_groups, Action, ChunkOutcome, PlanConfig, Planner, Source, Status, CUT_AT, MAX_VIEW,
};
use crate::transfer::Bits;
use crate::upstream::{UpstreamError, UpstreamRequest};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a peer holds a chunk request open waiting for the chunk (below the idle timeout).
pub const LONG_POLL: Duration = Duration::from_secs(2);

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

/// Why a peer's status page could not be had.
#[derive(thiserror::Error, Debug)]
pub enum StatusError {
    #[error("no such download there")]
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

enum Done {
    Chunk { index: u64, lane: Lane, result: ChunkResult, took: Duration },
    Refresh(Vec<Peer>, Vec<(Peer, Result<StatusDoc, StatusError>)>),
}

pub struct Engine {
    sw: Arc<Swarming>,
    dl: Arc<Download>,
    request: UpstreamRequest,
    plan: Planner<SocketAddr>,
    /// The planner's time is the time since this.
    epoch: Instant,
    /// Upstream fetches in flight, to give up on when a peer has the chunk first.
    aborts: HashMap<u64, futures_util::future::AbortHandle>,
    hashed: u64,
    hasher: Option<Hasher>,
    failed: Option<String>,
    /// Announced in its groups: once a lookup came back full (small swarms never need them).
    grouped: bool,
}

impl Engine {
    pub fn new(sw: Arc<Swarming>, dl: Arc<Download>, request: UpstreamRequest) -> Engine {
        let hasher = Some(Hasher::new(dl.digest.algorithm()));
        let plan = Planner::new(dl.digest.to_string(), sw.me.clone(), dl.chunks, PlanConfig::from(&sw.cfg));
        Engine {
            sw,
            dl,
            request,
            plan,
            epoch: Instant::now(),
            aborts: HashMap::new(),
            hashed: 0,
            hasher,
            failed: None,
            grouped: false,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    pub async fn run(mut self) -> End {
        let mut futs: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        if let Some(r) = &self.sw.router {
            if let Err(e) = r.provide_now(vec![swarm_key(&self.dl.digest)]).await {
                tracing::debug!(error = %e, "cannot announce the download");
            }
            tokio::time::sleep(self.sw.cfg.gather).await;
            if let Some(first) = self.refresh_future() {
                let done = first.await;
                self.on_done(done, &mut futs).await;
            }
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
            let mut out = Vec::new();
            self.plan.schedule(self.now(), &mut out);
            self.perform(out, &mut futs);
            tokio::select! {
                Some(done) = futs.next() => self.on_done(done, &mut futs).await,
                _ = tick.tick() => {
                    if self.sw.router.is_some() {
                        if let Some(f) = self.refresh_future() {
                            futs.push(f);
                        }
                    }
                }
            }
        }
    }

    /// Look the download up in the DHT and ask every known peer what it has (none while a
    /// refresh runs).
    fn refresh_future(&mut self) -> Option<BoxFuture<'static, Done>> {
        let (sw, dl) = (self.sw.clone(), self.dl.clone());
        // The DHT is asked every few refreshes (and while no peer is known); in between, the
        // peers' status pages name the nodes they know, which is cheaper than a lookup.
        let refresh = self.plan.start_refresh(self.now())?;
        let me = self.plan.me().to_owned();
        Some(
            async move {
                // The swarm's key (the owners, when the DHT cut it), then, while a lookup comes
                // back full, this node's group one level deeper (`keys::SWARM_GROUP_LEVELS`):
                // the deepest groups first, they are the peers only this node's group knows.
                let (found, groups) = match &sw.router {
                    Some(r) if refresh.lookup => {
                        let lookup = async |key: String| match r.resolve(key, MAX_VIEW).await {
                            Ok(rx) => crate::routing::collect_peers(rx, Duration::from_millis(500)).await,
                            Err(_) => Vec::new(),
                        };
                        let found = lookup(swarm_key(&dl.digest)).await;
                        let mut levels: Vec<Vec<Peer>> = Vec::new();
                        let mut full = found.len() >= CUT_AT;
                        for level in 1..=SWARM_GROUP_LEVELS {
                            if !full {
                                break;
                            }
                            let g = lookup(group_key(&dl.digest, level, &me)).await;
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
                    let (sw, dl) = (sw.clone(), dl.clone());
                    async move {
                        let p = Peer { id, addr };
                        let r = fetch_status(&sw, &dl, &p).await;
                        (p, r)
                    }
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
                Action::FetchPeer { index, peer, addr } => self.start_peer(index, Peer { id: peer, addr }, futs),
                Action::FetchUpstream { index } => self.start_upstream(index, futs),
                Action::AbortUpstream { index } => {
                    if let Some(handle) = self.aborts.get(&index) {
                        tracing::debug!(
                            chunk = index,
                            "a peer has the chunk being fetched from the upstream; taking it from the peer"
                        );
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "abandoned").increment(1);
                        handle.abort();
                    }
                }
                Action::TookOver { index, from } => {
                    tracing::warn!(peer = %from, chunk = index, "no progress from the peer that should fetch this chunk (or it died); taking it over");
                    metrics::counter!(SWARM_TAKEOVERS).increment(1);
                }
                Action::PeerLost { peer } => {
                    tracing::debug!(%peer, "peer downloading with this node stopped answering");
                    metrics::counter!(SWARM_PEERS_LOST).increment(1);
                }
                Action::Complete => {}
                Action::Failed(e) => {
                    if self.failed.is_none() {
                        self.failed = Some(e.to_string());
                    }
                }
            }
        }
    }

    fn start_peer(&mut self, index: u64, peer: Peer, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let (sw, dl) = (self.sw.clone(), self.dl.clone());
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

    async fn on_done(&mut self, done: Done, futs: &mut FuturesUnordered<BoxFuture<'static, Done>>) {
        let mut out = Vec::new();
        match done {
            Done::Refresh(found, statuses) => {
                if found.len() >= CUT_AT && !self.grouped {
                    self.grouped = true;
                    if let Some(r) = &self.sw.router {
                        if let Err(e) = r.provide_now(group_keys(&self.dl.digest, &self.sw.me)).await {
                            tracing::debug!(error = %e, "cannot announce the download in its groups");
                        }
                    }
                }
                let n = self.dl.chunks;
                let found: Vec<(String, SocketAddr)> = found.into_iter().map(|p| (p.id, p.addr)).collect();
                let statuses = statuses
                    .into_iter()
                    .map(|(p, r)| {
                        let status = match r {
                            Ok(doc) if doc.size == self.dl.size && doc.chunk_size == self.dl.chunk_size => {
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
                self.dl.set_view(self.plan.view().into_iter().map(|(id, addr)| PeerDoc { id, addr }).collect());
            }
            Done::Chunk { index, lane, result, took } => {
                // No longer arriving (a chunk that arrived is cleared when it is stored).
                if !matches!(result, ChunkResult::Got(..)) {
                    self.dl.set_fetching(index, false);
                }
                let source = match lane {
                    Lane::Upstream => {
                        self.aborts.remove(&index);
                        Source::Upstream
                    }
                    Lane::Peer(id) => Source::Peer(id),
                };
                let outcome = match result {
                    ChunkResult::Got(data, sha) => {
                        if matches!(source, Source::Peer(_)) {
                            metrics::counter!(SWARM_CHUNK_BYTES, "source" => "peer").increment(data.len() as u64);
                        }
                        if let Err(e) = self.dl.put(index, data.clone(), sha).await {
                            self.failed = Some(format!("spool write failed: {e}"));
                            return;
                        }
                        self.advance_hash(index, data).await;
                        ChunkOutcome::Got
                    }
                    ChunkResult::Pending(progress) => ChunkOutcome::Pending { progress, took },
                    ChunkResult::NotThere => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "not_there").increment(1);
                        ChunkOutcome::NotThere
                    }
                    ChunkResult::Busy => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "busy").increment(1);
                        ChunkOutcome::Busy
                    }
                    ChunkResult::Dead(why) => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "unreachable").increment(1);
                        if let Source::Peer(id) = &source {
                            tracing::warn!(peer = %id, chunk = index, why, "peer unreachable; its chunks go to others");
                        }
                        ChunkOutcome::Dead
                    }
                    ChunkResult::Bad(why) => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "bad").increment(1);
                        if let Source::Peer(id) = &source {
                            tracing::warn!(peer = %id, chunk = index, why, "peer sent a bad chunk; not asked for it again");
                        }
                        ChunkOutcome::Bad
                    }
                    ChunkResult::Abandoned => ChunkOutcome::Abandoned,
                    ChunkResult::UpstreamFailed(e) => {
                        metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => "upstream").increment(1);
                        let fatal = matches!(e, UpstreamError::Status { status, .. } if (400..500).contains(&status))
                            || matches!(e, UpstreamError::NotMirrored(_));
                        self.plan.on_chunk(self.now(), index, source, ChunkOutcome::UpstreamFailed { fatal }, &mut out);
                        if out.iter().any(|a| matches!(a, Action::Failed(_))) {
                            self.failed = Some(format!("chunk {index} from upstream: {e}"));
                        } else {
                            tracing::info!(chunk = index, error = %e, "upstream chunk failed; retrying");
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

async fn fetch_status(sw: &Swarming, dl: &Download, peer: &Peer) -> Result<StatusDoc, StatusError> {
    status_of(sw, &dl.digest, dl.chunk_size, peer).await
}

/// A peer's status page for its download of `digest` in `chunk_size`-byte chunks.
pub(super) async fn status_of(
    sw: &Swarming,
    digest: &Digest,
    chunk_size: u64,
    peer: &Peer,
) -> Result<StatusDoc, StatusError> {
    let client = sw.client.as_ref().ok_or(StatusError::NoClient)?;
    let target = format!("/swarm/{digest}/{chunk_size}");
    let resp = client.fetch(peer, &target, false, None, None).await.map_err(|e| match e {
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

async fn fetch_peer_chunk(sw: &Swarming, dl: &Download, peer: &Peer, index: u64) -> ChunkResult {
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
    // The peer has the chunk and its bytes flow: announced like an upstream read, so that
    // nodes that need it wait here for it (a long poll) rather than learn at their next refresh
    // that this node has it — and, with cut-through, get its bytes as they arrive. Only now (not
    // while waiting on the peer): whoever waits here waits on a transfer that is under way, never
    // on a node that itself waits.
    let forwarded = resp.forwarded;
    // The chunk's sha256: in the signed header, or (passed on while it arrives there) in a
    // sealed trailer after the chunk.
    let header_sha = resp.digest.as_deref().and_then(|d| d.strip_prefix("sha256:")).and_then(|h| hex::decode(h).ok());
    let header_sha = header_sha.and_then(|c| <[u8; 32]>::try_from(c).ok());
    if header_sha.is_none() && !forwarded {
        return ChunkResult::Bad(format!("chunk {index}: no sha256 in the answer"));
    }
    let arrival = Arrival::new(want_len, "peer");
    // Readers of a transfer that ends in any other way than verified are cut.
    let _guard = arrival.guard();
    dl.arriving(index, &arrival, sw.cfg.cut_through);
    let mut resp = resp;
    let mut body = std::mem::replace(&mut resp.body, Box::pin(futures_util::stream::empty()));
    let (mut hasher, mut got, mut trailer) = (sha2::Sha256::new(), 0u64, bytes::BytesMut::new());
    while let Some(piece) = body.next().await {
        match piece {
            Ok(mut p) => {
                let room = (want_len - got) as usize;
                if p.len() > room {
                    let rest = p.split_off(room);
                    if !forwarded || trailer.len() + rest.len() > CHUNK_TRAILER_LEN as usize {
                        return ChunkResult::Bad(format!("chunk {index}: more than {want_len} bytes"));
                    }
                    trailer.extend_from_slice(&rest);
                }
                if !p.is_empty() {
                    got += p.len() as u64;
                    hasher.update(&p);
                    arrival.push(p);
                }
            }
            // A peer passing the chunk on while it arrives lost its own source: ask elsewhere.
            Err(_) if forwarded => return ChunkResult::Busy,
            Err(e) => return ChunkResult::Dead(e.to_string()),
        }
    }
    let sha: [u8; 32] = hasher.finalize().into();
    let claimed = match header_sha {
        Some(c) => c,
        None => {
            let Some((t_sha, tag)) = trailer.split_first_chunk::<32>().filter(|(_, tag)| tag.len() == 32) else {
                return ChunkResult::Bad(format!("chunk {index}: {got} bytes, a trailer of {}", trailer.len()));
            };
            if !resp.seal_ok(t_sha, tag) {
                return ChunkResult::Bad(format!("chunk {index}: the trailer's seal does not verify"));
            }
            *t_sha
        }
    };
    if got != want_len || sha != claimed {
        return ChunkResult::Bad(format!("chunk {index}: {got} bytes, checksum sha256:{}", hex::encode(claimed)));
    }
    arrival.verified(sha);
    ChunkResult::Got(arrival.joined(), sha)
}

async fn fetch_upstream_chunk(sw: &Swarming, dl: &Download, mut req: UpstreamRequest, index: u64) -> ChunkResult {
    let Ok(_slot) = sw.fetch_slots.acquire().await else { return ChunkResult::Dead("shutting down".into()) };
    let len = dl.chunk_len(index);
    throttle(sw.download_limit.as_ref(), len as usize).await;
    let range = ByteRange { start: index * dl.chunk_size, end: index * dl.chunk_size + len - 1 };
    req.head = false;
    req.range = Some(range);
    let resp = match sw.upstream.fetch(req).await {
        Ok(r) => r,
        Err(e) => return ChunkResult::UpstreamFailed(e),
    };
    let mut body = crate::stream::ranged(resp.body, resp.status, range);
    // Passed on to peers while it arrives (cut-through): they get the bytes as the upstream
    // sends them, and the sha256 at the end.
    let arrival = Arrival::new(len, "upstream");
    let _guard = arrival.guard();
    dl.arriving(index, &arrival, sw.cfg.cut_through);
    let (mut hasher, mut got) = (sha2::Sha256::new(), 0u64);
    // Counted as the bytes arrive (a chunk from a slow upstream takes a while).
    let received = metrics::counter!(SWARM_CHUNK_BYTES, "source" => "upstream");
    while let Some(piece) = body.next().await {
        match piece {
            Ok(p) => {
                got += p.len() as u64;
                dl.upstream_bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
                received.increment(p.len() as u64);
                if got > len {
                    break;
                }
                hasher.update(&p);
                arrival.push(p);
            }
            Err(e) => {
                return ChunkResult::UpstreamFailed(UpstreamError::Unreachable {
                    host: "upstream".into(),
                    reason: format!("chunk body: {e}"),
                })
            }
        }
    }
    if got != len {
        return ChunkResult::UpstreamFailed(UpstreamError::Protocol(format!("chunk {index}: {got} of {len} bytes")));
    }
    let sha: [u8; 32] = hasher.finalize().into();
    arrival.verified(sha);
    ChunkResult::Got(arrival.joined(), sha)
}
