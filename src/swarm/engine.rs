//! A /v2 swarm download as the transfer engine ([`crate::transfer::engine`]) sees it: chunks
//! of a blob asked of peers at `/swarm/<digest>/<chunk size>/<index>` (passed on while they
//! arrive, cut-through) or read from the registry with a Range, kept in the download's spool,
//! and the whole blob hashed against its digest as its chunks arrive in order.

use super::arrival::Arrival;
use super::{group_key, swarm_key, throttle, Download, End, Swarming};
use super::{SWARM_CHUNK_BYTES, SWARM_CHUNK_FAILURES, SWARM_PEERS_LOST, SWARM_TAKEOVERS};
use crate::oci::{Digest, Hasher};
use crate::peer::CHUNK_TRAILER_LEN;
use crate::range::ByteRange;
use crate::routing::Peer;
use crate::transfer::engine::{self, ChunkResult, Chunks, EngineConfig, Note, StatusDoc, StatusError, StatusFn};
use crate::transfer::plan::PlanConfig;
use crate::upstream::{UpstreamError, UpstreamRequest};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use sha2::Digest as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use crate::peer::LONG_POLL;

/// One swarm download's chunks.
pub struct SwarmChunks {
    sw: Arc<Swarming>,
    dl: Arc<Download>,
    request: UpstreamRequest,
    /// Chunks fed to the whole-blob hash (all below this index).
    hashed: u64,
    hasher: Option<Hasher>,
}

/// The engine of one download.
pub fn engine(sw: Arc<Swarming>, dl: Arc<Download>, request: UpstreamRequest) -> engine::Engine<SwarmChunks> {
    let cfg = EngineConfig {
        router: sw.router.clone(),
        me: sw.me.clone(),
        gather: sw.cfg.gather,
        refresh: sw.cfg.refresh,
        plan: PlanConfig::from(&sw.cfg),
    };
    let key = dl.digest.to_string();
    let hasher = Some(Hasher::new(dl.digest.algorithm()));
    engine::Engine::new(SwarmChunks { sw, dl, request, hashed: 0, hasher }, key, cfg, None)
}

/// Run a download to its end (failed when the engine panics or the node stops).
pub async fn run(sw: Arc<Swarming>, dl: Arc<Download>, request: UpstreamRequest) -> End {
    let stop = sw.stop.clone();
    match engine(sw, dl, request).run_until(&stop).await {
        Ok(()) => End::Verified,
        Err(why) => End::Failed(why),
    }
}

impl Chunks for SwarmChunks {
    fn size(&self) -> u64 {
        self.dl.size
    }

    fn chunk_size(&self) -> u64 {
        self.dl.chunk_size
    }

    fn swarm_key(&self) -> String {
        swarm_key(&self.dl.digest)
    }

    fn group_key(&self, level: u32) -> String {
        group_key(&self.dl.digest, level, &self.sw.me)
    }

    fn status_of(&self) -> StatusFn {
        engine::status_fn(self.sw.client.clone(), status_target(&self.dl.digest, self.dl.chunk_size))
    }

    fn fetch_peer(&self, peer: Peer, index: u64) -> BoxFuture<'static, ChunkResult> {
        let (sw, dl) = (self.sw.clone(), self.dl.clone());
        async move { fetch_peer_chunk(&sw, &dl, &peer, index).await }.boxed()
    }

    fn fetch_upstream(&self, index: u64) -> BoxFuture<'static, ChunkResult> {
        let (sw, dl, req) = (self.sw.clone(), self.dl.clone(), self.request.clone());
        async move { fetch_upstream_chunk(&sw, &dl, req, index).await }.boxed()
    }

    fn set_fetching(&self, index: u64, on: bool) {
        self.dl.set_fetching(index, on);
    }

    fn set_view(&self, view: Vec<engine::PeerDoc>) {
        self.dl.set_view(view);
    }

    fn storer(&self) -> engine::StoreFn {
        let dl = self.dl.clone();
        Arc::new(move |index, data, sha| {
            let dl = dl.clone();
            async move { dl.put(index, data, sha).await.map_err(|e| format!("spool write failed: {e}")) }.boxed()
        })
    }

    fn stored(&mut self, index: u64, data: Bytes, _sha: [u8; 32]) -> BoxFuture<'_, Result<(), String>> {
        self.advance_hash(index, data).boxed()
    }

    fn end(&mut self) -> Option<Result<(), String>> {
        if self.hashed < self.dl.chunks {
            return None;
        }
        let actual = self.hasher.take()?.finish();
        Some(if actual == self.dl.digest {
            Ok(())
        } else {
            metrics::counter!(crate::metrics::DIGEST_MISMATCHES, "source" => "swarm").increment(1);
            tracing::error!(digest = %self.dl.digest, %actual, "assembled blob does not match its digest");
            Err(format!("assembled blob hashes to {actual}"))
        })
    }

    fn note(&self, note: Note) {
        match note {
            Note::Failure(reason) => metrics::counter!(SWARM_CHUNK_FAILURES, "reason" => reason).increment(1),
            Note::PeerBytes(n) => metrics::counter!(SWARM_CHUNK_BYTES, "source" => "peer").increment(n),
            Note::TookOver => metrics::counter!(SWARM_TAKEOVERS).increment(1),
            Note::PeerLost => metrics::counter!(SWARM_PEERS_LOST).increment(1),
        }
    }
}

impl SwarmChunks {
    /// Feed the whole-blob hash with every chunk that is next in order.
    async fn advance_hash(&mut self, index: u64, data: Bytes) -> Result<(), String> {
        let Some(hasher) = self.hasher.as_mut() else { return Ok(()) };
        if index == self.hashed {
            hasher.update(&data);
            self.hashed += 1;
        }
        while self.hashed < self.dl.chunks && self.dl.has(self.hashed).is_some() {
            let (d, _) = self.dl.read_chunk(self.hashed).await.ok_or("spool read failed")?;
            if let Some(h) = self.hasher.as_mut() {
                h.update(&d);
            }
            self.hashed += 1;
        }
        Ok(())
    }
}

/// A peer's status page for its download of `digest` in `chunk_size`-byte chunks.
pub(super) async fn status_of(
    sw: &Swarming,
    digest: &Digest,
    chunk_size: u64,
    peer: &Peer,
) -> Result<StatusDoc, StatusError> {
    engine::status_at(sw.client.as_deref(), peer, &status_target(digest, chunk_size)).await
}

/// Where a peer's status page of its download of `digest` in `chunk_size`-byte chunks is.
fn status_target(digest: &Digest, chunk_size: u64) -> String {
    format!("/swarm/{digest}/{chunk_size}")
}

async fn fetch_peer_chunk(sw: &Swarming, dl: &Download, peer: &Peer, index: u64) -> ChunkResult {
    let Some(client) = &sw.client else { return ChunkResult::Dead("no peer client".into()) };
    let Ok(_slot) = sw.fetch_slots.acquire().await else { return ChunkResult::Dead("shutting down".into()) };
    let want_len = dl.chunk_len(index);
    throttle(sw.download_limit.as_ref(), want_len as usize).await;
    let target = format!("/swarm/{}/{}/{index}?wait={}", dl.digest, dl.chunk_size, LONG_POLL.as_millis());
    let resp = match client.fetch(peer, &target, false, None, None).await {
        Ok(r) => r,
        Err(e) => return ChunkResult::of_peer_error(e),
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
        Err(e) => return upstream_failed(e),
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
            Err(e) => return ChunkResult::UpstreamFailed { fatal: false, why: format!("chunk body: {e}") },
        }
    }
    if got != len {
        return ChunkResult::UpstreamFailed { fatal: false, why: format!("chunk {index}: {got} of {len} bytes") };
    }
    let sha: [u8; 32] = hasher.finalize().into();
    arrival.verified(sha);
    ChunkResult::Got(arrival.joined(), sha)
}

/// A failed upstream read: fatal when retrying cannot help (a refusal, a registry not mirrored).
fn upstream_failed(e: UpstreamError) -> ChunkResult {
    let fatal = matches!(e, UpstreamError::Status { status, .. } if (400..500).contains(&status))
        || matches!(e, UpstreamError::NotMirrored(_));
    ChunkResult::UpstreamFailed { fatal, why: e.to_string() }
}
