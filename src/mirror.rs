//! The /v2 mirror: where a manifest or blob comes from, and how it is checked. The HTTP layer
//! ([`crate::http::registry`]) parses a request into a [`Route`] and an [`Ask`] and renders the
//! [`Answer`] this module returns.
//!
//! Sources, in order: the local content store (by digest), then the upstream registry. Tags go
//! upstream first (they are mutable) and fall back to the local image record only when the
//! upstream cannot be reached. Every full blob or manifest served by digest is verified while it
//! streams; a mismatch cuts the connection (see [`crate::stream::Verify`]). Two exceptions, so
//! that each byte is hashed once: blobs served to a peer (the peer verifies them) and blobs from a
//! local store that verified them on ingest (containerd; the client verifies them again).
//!
//! For a blob ([`blob`]): the local store → a swarm download already running here → peers
//! holding it (hedged, resumed, verified whole) → a new swarm download when no peer holds it →
//! the upstream through the admission gate (single flight for small blobs).

use crate::actors::peers::{Corrupt, Locate, Outcome, ServedPeer, Suspect};
use crate::actors::upstream::Gate;
use crate::config::RegistryConfig;
use crate::error::ApiError;
use crate::metrics::{Source, DIGEST_MISMATCHES, SERVED_BYTES};
use crate::oci::{media, validate_repository, validate_tag, Algorithm, Digest, Registry};
use crate::peer::auth::ClusterKey;
use crate::peer::client::PeerClient;
use crate::peer::PEER_SERVED_BYTES;
use crate::range::{ByteRange, RangeSpec};
use crate::routing::Peer;
use crate::store::LOCAL_STORE_ERRORS;
use crate::store::{self, ContentStore, StoreError};
use crate::stream::{self, ByteStream};
use crate::stream::{Count, Verify};
use crate::transfer::sources::{
    counted, follow, verified_whole, FlightError, Flights, Landed, Opener, PeerOpener, Resume, Seat, UpstreamOpener,
    COALESCED,
};
use crate::upstream::{Kind, UpstreamError, UpstreamRequest, UpstreamResponse};
use actix::Recipient;
use actix_web::http::StatusCode;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Tags answered from a local image record or a peer because the upstream was unreachable
/// (possibly an older image than the registry's), by `source`.
pub const STALE_TAGS: &str = "peerd_stale_tags_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        STALE_TAGS,
        "Tags served as last seen locally or by a peer while the upstream was unreachable"
    );
}

pub struct RegistryState {
    pub store: Arc<dyn ContentStore>,
    pub upstream: Gate,
    pub cfg: RegistryConfig,
    /// `None` on a single-node mirror.
    pub peers: Option<PeerPath>,
    /// `None` when swarming is off.
    pub swarm: Option<Arc<crate::swarm::Swarming>>,
    /// Concurrent whole-blob upstream GETs of one small blob share one fetch.
    pub flights: Arc<Flights>,
    /// Local blobs hashed once before this node first served them to a peer (see
    /// [`checked_for_peers`]).
    pub peer_checked: dashmap::DashSet<String>,
}

/// Most digests remembered as checked; beyond, the set starts over (a re-check costs one hash).
const MAX_PEER_CHECKED: usize = 100_000;

/// Before a local blob first goes to a peer, hash it whole, once per node run: containerd
/// verified it on ingest, but a file damaged since (a flipped bit, a tampered copy) would reach
/// the peer's containerd before the peer could see the mismatch, and containerd 1.6 keeps such a
/// partial download, failing every retry. A damaged blob is not served to peers (they go
/// elsewhere); a good one is not hashed again. Costs one hash per blob per node run, not per
/// byte served.
async fn checked_for_peers(st: &RegistryState, digest: &Digest, size: u64) -> bool {
    let key = digest.to_string();
    if st.peer_checked.contains(&key) {
        return true;
    }
    let body = match st.store.read_sized(digest, size, 0, None).await {
        Ok(b) => b,
        Err(e) => {
            store_miss(&e, digest);
            return false;
        }
    };
    let mut v = Verify::new(body, digest.clone(), Some(size), |d, why| mismatch(Source::Local, d, why));
    while let Some(item) = futures_util::StreamExt::next(&mut v).await {
        if item.is_err() {
            tracing::error!(%digest, "a local blob does not match its digest: not served to peers (containerd's copy is damaged; `ctr content rm` it to fetch it again)");
            return false;
        }
    }
    if st.peer_checked.len() >= MAX_PEER_CHECKED {
        st.peer_checked.clear();
    }
    st.peer_checked.insert(key);
    true
}

/// What the handlers need to use peers and to answer them.
pub struct PeerPath {
    pub locate: Recipient<Locate>,
    pub report: Recipient<Outcome>,
    pub served: Recipient<ServedPeer>,
    /// Peers whose content did not match its digest (they rest; the digest becomes suspect).
    pub corrupt: Recipient<Corrupt>,
    pub suspect: Recipient<Suspect>,
    pub client: Arc<PeerClient>,
    /// `None` when no cluster secret is configured (peer requests are then not authenticated).
    pub key: Option<Arc<ClusterKey>>,
    pub hedge: Duration,
    pub resolve_tags: bool,
    pub tags_on_upstream_error: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Manifest { repo: String, reference: Reference },
    Blob { repo: String, digest: Digest },
}

/// Parse the raw (still percent-encoded) request path. Anything but
/// `/v2/<name>/manifests/<ref>` and `/v2/<name>/blobs/<digest>` is not served.
pub fn parse_path(path: &str) -> Result<Route, ApiError> {
    let not_served = || ApiError::Unsupported {
        status: StatusCode::NOT_FOUND,
        message: format!("{path} is not served: peerd mirrors manifests and blobs only"),
    };
    let rest = path.strip_prefix("/v2/").ok_or_else(not_served)?;
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.len() < 3 {
        return Err(not_served());
    }
    let n = segs.len();
    let (kind, reference) = (segs[n - 2], segs[n - 1]);
    let repo = segs[..n - 2].join("/");
    match kind {
        "manifests" => {
            validate_repository(&repo)?;
            let reference = if reference.contains(':') {
                Reference::Digest(reference.parse()?)
            } else {
                validate_tag(reference)?;
                Reference::Tag(reference.to_owned())
            };
            Ok(Route::Manifest { repo, reference })
        }
        "blobs" => {
            validate_repository(&repo)?;
            Ok(Route::Blob { repo, digest: reference.parse()? })
        }
        _ => Err(not_served()),
    }
}

/// What one client request asked for, beyond the path.
pub struct Ask {
    pub registry: Registry,
    pub head: bool,
    pub accept: Option<String>,
    pub authorization: Option<String>,
    /// Blob GETs only (elsewhere `Range` is ignored, RFC 9110 §14.2).
    pub range: Option<RangeSpec>,
}

/// What the mirror answers; the HTTP layer renders it.
pub enum Answer {
    Manifest(ManifestAnswer),
    Blob(BlobAnswer),
}

/// A manifest: its bytes (none for a HEAD), media type, digest and size, and where it came
/// from. `stale`: a tag served as last seen while the upstream was unreachable.
pub struct ManifestAnswer {
    pub media_type: String,
    pub digest: Digest,
    pub len: u64,
    pub body: Option<Bytes>,
    pub source: Source,
    pub stale: bool,
}

/// A blob or one range of it. `size`: the whole blob's size (when known); `len`: the bytes of
/// the body (unknown only for an upstream that sent no length); `body`: empty for a HEAD.
pub struct BlobAnswer {
    pub digest: Digest,
    pub size: u64,
    pub range: Option<ByteRange>,
    pub len: Option<u64>,
    pub body: ByteStream,
    pub source: Source,
    /// The body passes a file stream's bytes on unchanged (counted only): it may be sent from the
    /// page cache straight to the socket ([`crate::sendfile`]).
    pub direct: bool,
}

impl BlobAnswer {
    /// The headers of a blob (HEAD), or a whole body already prepared.
    fn whole(digest: &Digest, size: u64, body: ByteStream, source: Source) -> BlobAnswer {
        BlobAnswer { digest: digest.clone(), size, range: None, len: Some(size), body, source, direct: false }
    }
}

struct Manifest {
    body: Bytes,
    media_type: String,
    digest: Digest,
}

fn empty() -> ByteStream {
    Box::pin(futures_util::stream::empty())
}

fn manifest_response(m: Manifest, head: bool, source: Source) -> Answer {
    let len = m.body.len() as u64;
    if !head {
        metrics::counter!(SERVED_BYTES, "source" => source.as_str()).increment(len);
    }
    Answer::Manifest(ManifestAnswer {
        media_type: m.media_type,
        digest: m.digest,
        len,
        body: (!head).then_some(m.body),
        source,
        stale: false,
    })
}

/// A store failure is a miss for the client, but an operator wants to know.
fn store_miss(e: &StoreError, what: &dyn std::fmt::Display) {
    match e {
        StoreError::Unavailable(why) => {
            metrics::counter!(LOCAL_STORE_ERRORS, "kind" => "unavailable").increment(1);
            tracing::debug!(%what, why, "local store unavailable");
        }
        StoreError::Other(why) => {
            metrics::counter!(LOCAL_STORE_ERRORS, "kind" => "other").increment(1);
            tracing::warn!(%what, why, "local store error");
        }
    }
}

fn mismatch(source: Source, digest: &Digest, why: &str) {
    metrics::counter!(DIGEST_MISMATCHES, "source" => source.as_str()).increment(1);
    tracing::error!(source = source.as_str(), %digest, why, "content does not match its digest; response aborted");
}

async fn local_manifest(st: &RegistryState, digest: &Digest, accept: Option<&str>) -> Option<Manifest> {
    let body = match store::read_bounded(st.store.as_ref(), digest, st.cfg.max_manifest_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            store_miss(&e, digest);
            return None;
        }
    };
    if Digest::compute(digest.algorithm(), &body) != *digest {
        mismatch(Source::Local, digest, "local manifest");
        return None;
    }
    let media_type = media::sniff_manifest(&body)?;
    if !media::accepts(accept, &media_type) {
        tracing::debug!(%digest, media_type, "local manifest not acceptable to client; asking upstream");
        return None;
    }
    Some(Manifest { body, media_type, digest: digest.clone() })
}

fn upstream_request(
    ask: &Ask,
    repo: &str,
    kind: Kind,
    reference: String,
    head: bool,
    range: Option<ByteRange>,
) -> UpstreamRequest {
    UpstreamRequest {
        registry: ask.registry.clone(),
        repository: repo.to_owned(),
        kind,
        reference,
        head,
        accept: ask.accept.clone(),
        authorization: ask.authorization.clone(),
        range,
    }
}

async fn upstream_manifest(
    st: &RegistryState,
    ask: &Ask,
    repo: &str,
    reference: &Reference,
) -> Result<Answer, ApiError> {
    let what = format!("{}/{repo}:{reference}", ask.registry);
    let map = |e| ApiError::from_upstream(e, Kind::Manifest, &what);
    if ask.head {
        // HEAD upstream (it does not count against Docker Hub's pull limit); fall through to
        // GET only if the upstream does not say which digest it has.
        let resp = st
            .upstream
            .fetch(upstream_request(ask, repo, Kind::Manifest, reference.to_string(), true, None))
            .await
            .map_err(map)?;
        let digest = resp.digest.as_deref().and_then(|d| d.parse::<Digest>().ok());
        if let (Some(digest), Some(len), Some(ct)) = (digest, resp.content_length, resp.content_type.clone()) {
            if matches!(reference, Reference::Digest(d) if *d != digest) {
                return Err(ApiError::BadGateway {
                    code: "DIGEST_INVALID",
                    message: format!("upstream answered {digest} for {what}"),
                });
            }
            return Ok(Answer::Manifest(ManifestAnswer {
                media_type: ct,
                digest,
                len,
                body: None,
                source: Source::Upstream,
                stale: false,
            }));
        }
    }
    let resp = st
        .upstream
        .fetch(upstream_request(ask, repo, Kind::Manifest, reference.to_string(), false, None))
        .await
        .map_err(map)?;
    let upstream_type = resp.content_type.clone();
    let limit = st.cfg.max_manifest_bytes;
    if resp.content_length.is_some_and(|n| n > limit) {
        return Err(ApiError::BadGateway {
            code: "MANIFEST_INVALID",
            message: format!("{what}: manifest over the {limit} byte limit"),
        });
    }
    let body = stream::collect(resp.body, limit)
        .await
        .map_err(|e| ApiError::BadGateway { code: "MANIFEST_INVALID", message: format!("{what}: {e}") })?;
    let digest = match reference {
        Reference::Digest(d) => {
            let actual = Digest::compute(d.algorithm(), &body);
            if actual != *d {
                mismatch(Source::Upstream, d, "upstream manifest");
                return Err(ApiError::BadGateway {
                    code: "DIGEST_INVALID",
                    message: format!("upstream manifest for {what} hashes to {actual}"),
                });
            }
            actual
        }
        Reference::Tag(_) => Digest::compute(Algorithm::Sha256, &body),
    };
    let media_type = manifest_media_type(upstream_type.as_deref(), &body).ok_or_else(|| ApiError::BadGateway {
        code: "MANIFEST_INVALID",
        message: format!(
            "{what}: the upstream's answer is not a manifest (content type {:?})",
            upstream_type.as_deref().unwrap_or("none")
        ),
    })?;
    Ok(manifest_response(Manifest { body, media_type, digest }, ask.head, Source::Upstream))
}

/// The media type to serve an upstream manifest with: the body must parse as a manifest, and the
/// upstream's content type, when it gives one, must be a manifest type (a redirected or
/// hijacked answer — `text/plain`, `text/html` — is never served as a manifest).
fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let sniffed = media::sniff_manifest(body)?;
    match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        None | Some("") => Some(sniffed),
        Some(ct) if media::is_manifest_type(ct) => Some(ct.to_owned()),
        Some(_) => None,
    }
}

async fn manifest(st: &RegistryState, ask: &Ask, repo: &str, reference: &Reference) -> Result<Answer, ApiError> {
    match reference {
        Reference::Digest(d) => {
            if let Some(m) = local_manifest(st, d, ask.accept.as_deref()).await {
                return Ok(manifest_response(m, ask.head, Source::Local));
            }
            if let Some(m) = peer_manifest(st, ask, repo, reference).await {
                return Ok(manifest_response(m, ask.head, Source::Peer));
            }
            upstream_manifest(st, ask, repo, reference).await
        }
        Reference::Tag(tag) => {
            if st.peers.as_ref().is_some_and(|p| p.resolve_tags) {
                if let Some(m) = peer_manifest(st, ask, repo, reference).await {
                    return Ok(manifest_response(m, ask.head, Source::Peer));
                }
            }
            match upstream_manifest(st, ask, repo, reference).await {
                // Only when the upstream cannot answer (unreachable, timing out, resting, or a
                // gateway saying it is down): never for an answer a client could provoke.
                Err(e @ ApiError::Unavailable { .. }) => {
                    if st.cfg.local_tags_on_upstream_error {
                        if let Some(m) = local_tag(st, ask, repo, tag).await {
                            return Ok(stale_tag(m, ask, repo, tag, &e, Source::Local));
                        }
                    }
                    if st.peers.as_ref().is_some_and(|p| p.tags_on_upstream_error) {
                        if let Some(m) = peer_manifest(st, ask, repo, reference).await {
                            return Ok(stale_tag(m, ask, repo, tag, &e, Source::Peer));
                        }
                    }
                    Err(e)
                }
                other => other,
            }
        }
    }
}

/// A tag as a local image record or a peer last saw it, while the upstream is unreachable: it
/// may be an older image than the registry's, so it is logged, counted and marked stale
/// (`Warning: 110`, RFC 7234 §5.5.1).
fn stale_tag(m: Manifest, ask: &Ask, repo: &str, tag: &str, e: &ApiError, source: Source) -> Answer {
    metrics::counter!(STALE_TAGS, "source" => source.as_str()).increment(1);
    tracing::warn!(registry = %ask.registry, repo, tag, digest = %m.digest, source = source.as_str(), upstream_error = %e,
        "upstream unreachable; serving a possibly stale tag");
    let mut answer = manifest_response(m, ask.head, source);
    if let Answer::Manifest(a) = &mut answer {
        a.stale = true;
    }
    answer
}

/// The manifest a tag points at in the local store.
async fn local_tag(st: &RegistryState, ask: &Ask, repo: &str, tag: &str) -> Option<Manifest> {
    let image = format!("{}/{repo}:{tag}", ask.registry);
    match st.store.resolve(&image).await {
        Ok(Some(desc)) => local_manifest(st, &desc.digest, ask.accept.as_deref()).await,
        Ok(None) => None,
        Err(e) => {
            store_miss(&e, &image);
            None
        }
    }
}

/// The routing key of a request: the digest, or `host/repo:tag`.
fn routing_key(ask: &Ask, repo: &str, reference: &Reference) -> String {
    match reference {
        Reference::Digest(d) => d.to_string(),
        Reference::Tag(t) => format!("{}/{repo}:{t}", ask.registry),
    }
}

fn peer_target(ask: &Ask, repo: &str, kind: Kind, reference: &str) -> String {
    let ns: String = url::form_urlencoded::byte_serialize(ask.registry.name().as_bytes()).collect();
    format!("/v2/{repo}/{}/{reference}?ns={ns}", kind.path())
}

async fn locate(p: &PeerPath, key: String) -> Vec<Peer> {
    p.locate.send(Locate { key }).await.unwrap_or_default()
}

/// A manifest from the first peer that has it (verified when asked by digest).
async fn peer_manifest(st: &RegistryState, ask: &Ask, repo: &str, reference: &Reference) -> Option<Manifest> {
    let p = st.peers.as_ref()?;
    let target = peer_target(ask, repo, Kind::Manifest, &reference.to_string());
    for peer in locate(p, routing_key(ask, repo, reference)).await {
        let resp = match p.client.fetch(&peer, &target, false, None, ask.accept.as_deref()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer.id, error = %e, "peer manifest fetch failed");
                let _ = p.report.try_send(Outcome { peer: peer.id, ok: false });
                continue;
            }
        };
        let Ok(body) = stream::collect(resp.body, st.cfg.max_manifest_bytes).await else { continue };
        let digest = match reference {
            Reference::Digest(d) => {
                if Digest::compute(d.algorithm(), &body) != *d {
                    mismatch(Source::Peer, d, "peer manifest");
                    let _ = p.corrupt.try_send(Corrupt { peers: vec![peer.id], key: d.to_string() });
                    continue;
                }
                d.clone()
            }
            Reference::Tag(_) => Digest::compute(Algorithm::Sha256, &body),
        };
        let Some(media_type) = resp.content_type.or_else(|| media::sniff_manifest(&body)) else { continue };
        let _ = p.report.try_send(Outcome { peer: peer.id, ok: true });
        return Some(Manifest { body, media_type, digest });
    }
    None
}

fn verified(body: ByteStream, digest: &Digest, len: Option<u64>, source: Source) -> ByteStream {
    Box::pin(Verify::new(body, digest.clone(), len, move |d, why| mismatch(source, d, why)))
}

/// 200 with the whole body (verified) or 206 with one range (unverifiable: a range alone cannot
/// be checked against the blob's digest; containerd verifies the assembled blob itself).
fn blob_body(
    digest: &Digest,
    size: u64,
    range: Option<ByteRange>,
    body: ByteStream,
    source: Source,
    to_peer: bool,
    verify: bool,
) -> BlobAnswer {
    let (len, body, direct) = match range {
        // A peer verifies the whole body itself; hashing it here too would double the CPU per byte.
        None if to_peer || !verify => (size, body, true),
        None => (size, verified(body, digest, Some(size), source), false),
        Some(r) => (r.len(), body, true),
    };
    let mut body = counted(body, source);
    if to_peer {
        let c = metrics::counter!(PEER_SERVED_BYTES);
        body = Box::pin(Count::new(body, move |n| c.increment(n)));
    }
    BlobAnswer { digest: digest.clone(), size, range, len: Some(len), body, source, direct }
}

async fn local_blob(
    st: &RegistryState,
    ask: &Ask,
    digest: &Digest,
    to_peer: bool,
) -> Option<Result<BlobAnswer, ApiError>> {
    let size = match st.store.size(digest).await {
        Ok(Some(size)) => size,
        Ok(None) => return None,
        Err(e) => {
            store_miss(&e, digest);
            return None;
        }
    };
    if ask.head {
        return Some(Ok(BlobAnswer::whole(digest, size, empty(), Source::Local)));
    }
    let range = match ask.range.map(|spec| spec.resolve(size)).transpose() {
        Ok(r) => r,
        Err(e) => return Some(Err(e.into())),
    };
    let (offset, len) = range.map_or((0, None), |r| (r.start, Some(r.len())));
    if to_peer && !checked_for_peers(st, digest, size).await {
        return None;
    }
    // Content the store verified on ingest is not hashed again (its length is still checked).
    let verify = !st.store.content_is_verified();
    match st.store.read_sized(digest, size, offset, len).await {
        Ok(body) => Some(Ok(blob_body(digest, size, range, body, Source::Local, to_peer, verify))),
        Err(e) => {
            store_miss(&e, digest);
            None
        }
    }
}

async fn blob(st: &RegistryState, ask: &Ask, repo: &str, digest: &Digest) -> Result<BlobAnswer, ApiError> {
    if let Some(resp) = local_blob(st, ask, digest, false).await {
        return resp;
    }
    // A download in progress on this node is joined, whoever else holds the blob.
    if let Some(dl) = st.swarm.as_ref().and_then(|sw| sw.get(digest)) {
        if ask.head {
            return Ok(BlobAnswer::whole(digest, dl.size, empty(), Source::Swarm));
        }
        return swarm_response(ask, dl);
    }
    let holders = match &st.peers {
        Some(p) => locate(p, digest.to_string()).await,
        None => Vec::new(),
    };
    if !holders.is_empty() {
        if let Some(resp) = peer_blob(st, ask, repo, digest, holders).await {
            return resp;
        }
    } else if let Some(resp) = swarm_blob(st, ask, repo, digest).await {
        return resp;
    }
    upstream_blob(st, ask, repo, digest).await
}

/// No peer holds the blob completely: join (or start) a swarm download of it. `None` when
/// swarming does not apply (off, a HEAD, a small blob, no room, or no size from the upstream —
/// then the upstream path reports what is wrong).
async fn swarm_blob(
    st: &RegistryState,
    ask: &Ask,
    repo: &str,
    digest: &Digest,
) -> Option<Result<BlobAnswer, ApiError>> {
    let sw = st.swarm.as_ref()?;
    if ask.head || sw.alone().await {
        return None;
    }
    let size = match st.upstream.fetch(upstream_request(ask, repo, Kind::Blob, digest.to_string(), true, None)).await {
        Ok(head) => head.content_length?,
        // The upstream cannot be reached: other nodes downloading the blob know its size (and
        // hold some of its chunks), so join them rather than fail.
        Err(
            e @ (UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } | UpstreamError::CircuitOpen { .. }),
        ) => {
            let size = sw.size_from_peers(digest).await;
            tracing::info!(%digest, error = %e, from_peers = ?size, "upstream unreachable; size of the blob from swarm peers");
            size?
        }
        Err(_) => return None,
    };
    if size < sw.cfg.min_size.max(1) {
        return None;
    }
    let dl = sw.join(digest, size, upstream_request(ask, repo, Kind::Blob, digest.to_string(), false, None))?;
    Some(swarm_response(ask, dl))
}

/// The whole blob (the last piece held back until the digest checked out) or one range, as the
/// download's chunks arrive.
fn swarm_response(ask: &Ask, dl: Arc<crate::swarm::Download>) -> Result<BlobAnswer, ApiError> {
    let (digest, size) = (dl.digest.clone(), dl.size);
    let range = ask.range.map(|spec| spec.resolve(size)).transpose()?;
    let r = range.unwrap_or(ByteRange { start: 0, end: size - 1 });
    let body = counted(dl.body(r.start, r.end, range.is_none()), Source::Swarm);
    Ok(BlobAnswer { digest, size, range, len: Some(r.len()), body, source: Source::Swarm, direct: false })
}

/// A blob from peers: hedged start, resumed from the next peer or the upstream if a source fails
/// mid-body, verified as a whole. `None` when no peer can serve it (the caller goes upstream).
async fn peer_blob(
    st: &RegistryState,
    ask: &Ask,
    repo: &str,
    digest: &Digest,
    peers: Vec<Peer>,
) -> Option<Result<BlobAnswer, ApiError>> {
    let p = st.peers.as_ref()?;
    let target = peer_target(ask, repo, Kind::Blob, &digest.to_string());
    let peer_sources: Vec<Arc<dyn Opener>> = peers
        .into_iter()
        .map(|peer| {
            Arc::new(PeerOpener {
                client: p.client.clone(),
                peer,
                target: target.clone(),
                report: Some(p.report.clone()),
            }) as Arc<dyn Opener>
        })
        .collect();
    let upstream: Arc<dyn Opener> = Arc::new(UpstreamOpener {
        upstream: st.upstream.clone(),
        request: upstream_request(ask, repo, Kind::Blob, digest.to_string(), false, None),
    });
    // A client resuming a blob whose last whole read from peers did not verify may hold wrong
    // bytes from them: its range comes from the upstream, never unverified from a peer again.
    if ask.range.is_some() && p.suspect.send(Suspect { key: digest.to_string() }).await.unwrap_or(false) {
        tracing::info!(%digest, "range of a blob that failed verification from peers: asking the upstream");
        return None;
    }
    if ask.head || ask.range.is_some() {
        let mut size = None;
        for s in &peer_sources {
            match s.size().await {
                Ok(n) => {
                    size = Some(n);
                    break;
                }
                Err(e) => tracing::debug!(source = %s.label(), error = %e, "peer size failed"),
            }
        }
        let size = size?;
        if ask.head {
            return Some(Ok(BlobAnswer::whole(digest, size, empty(), Source::Peer)));
        }
        let range = match ask.range.map(|spec| spec.resolve(size)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Some(Err(e.into())),
            None => unreachable!("checked above"),
        };
        let mut sources: VecDeque<Arc<dyn Opener>> = peer_sources.into();
        sources.push_back(upstream);
        let body: ByteStream = Box::pin(Resume::lazy(sources, range.start, range.end));
        return Some(Ok(BlobAnswer {
            digest: digest.clone(),
            size,
            range: Some(range),
            len: Some(range.len()),
            body,
            source: Source::Peer,
            direct: false,
        }));
    }
    let corrupt = Some(p.corrupt.clone());
    let (body, size, source) =
        match verified_whole(peer_sources, upstream, p.hedge, digest, corrupt, |d, why| mismatch(Source::Peer, d, why))
            .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%digest, error = %e, "no peer could serve; going upstream");
                return None;
            }
        };
    Some(Ok(BlobAnswer::whole(digest, size, body, source)))
}

async fn upstream_blob(st: &RegistryState, ask: &Ask, repo: &str, digest: &Digest) -> Result<BlobAnswer, ApiError> {
    let what = format!("{}/{repo}@{digest}", ask.registry);
    let map = |e| ApiError::from_upstream(e, Kind::Blob, &what);
    let req = |head, range| upstream_request(ask, repo, Kind::Blob, digest.to_string(), head, range);
    if ask.head {
        let resp = st.upstream.fetch(req(true, None)).await.map_err(map)?;
        let len = resp.content_length.ok_or_else(|| ApiError::BadGateway {
            code: "UNKNOWN",
            message: format!("{what}: upstream sent no Content-Length"),
        })?;
        return Ok(BlobAnswer::whole(digest, len, empty(), Source::Upstream));
    }
    let Some(spec) = ask.range else {
        return upstream_whole_blob(st, ask, repo, digest).await;
    };
    // A range from upstream: learn the size first, so suffix ranges become absolute (some blob
    // stores reject suffix ranges) and an unsatisfiable range is answered here.
    let head = st.upstream.fetch(req(true, None)).await.map_err(map)?;
    let size = head.content_length.ok_or_else(|| ApiError::BadGateway {
        code: "UNKNOWN",
        message: format!("{what}: upstream sent no Content-Length"),
    })?;
    let range = spec.resolve(size)?;
    let resp = st.upstream.fetch(req(false, Some(range))).await.map_err(map)?;
    let body = stream::ranged(resp.body, resp.status, range);
    Ok(blob_body(digest, size, Some(range), body, Source::Upstream, false, true))
}

/// A whole blob from the upstream. Concurrent requests for the same small blob share one fetch
/// (see [`Flights`]): the leader reads the body into memory, verifies it and hands the same bytes
/// to every follower. Only blobs of at most [`crate::transfer::sources::FLIGHT_MAX_BLOB`] bytes are shared
/// (larger ones are the swarm's job, or fetched per request when swarming is off); a follower
/// whose flight was not shared fetches on its own, so it never gets unverified bytes. The key is
/// the registry and digest, not the client's credentials: like the local store and the peers,
/// the node serves content it verified by digest.
async fn upstream_whole_blob(
    st: &RegistryState,
    ask: &Ask,
    repo: &str,
    digest: &Digest,
) -> Result<BlobAnswer, ApiError> {
    let what = format!("{}/{repo}@{digest}", ask.registry);
    let map = |e| ApiError::from_upstream(e, Kind::Blob, &what);
    let mut lead = match st.flights.board(format!("{}@{digest}", ask.registry)) {
        Seat::Leader(lead) => lead,
        Seat::Follower(rx) => match follow(rx).await {
            Landed::Done(body) => {
                metrics::counter!(COALESCED, "outcome" => "shared").increment(1);
                return Ok(whole_blob_bytes(digest, body));
            }
            // The upstream could not be reached a moment ago: asking again now would only
            // pile onto it (the leader's client got the same answer).
            Landed::Failed(FlightError::Upstream(
                e @ (UpstreamError::Unreachable { .. }
                | UpstreamError::Timeout { .. }
                | UpstreamError::CircuitOpen { .. }),
            )) => {
                metrics::counter!(COALESCED, "outcome" => "failed").increment(1);
                return Err(map(e));
            }
            // Anything else may be the leader's own (credentials, a cut body): fetch alone.
            _ => {
                metrics::counter!(COALESCED, "outcome" => "solo").increment(1);
                return upstream_stream_blob(st, ask, repo, digest).await;
            }
        },
    };
    let resp = match st.upstream.fetch(upstream_request(ask, repo, Kind::Blob, digest.to_string(), false, None)).await {
        Ok(r) => r,
        Err(e) => {
            lead.land(Landed::Failed(FlightError::Upstream(e.clone())));
            return Err(map(e));
        }
    };
    let len = match resp.content_length {
        Some(len) if lead.reserve(len) => len,
        // Too large, no size or no room: followers fetch on their own, this one streams.
        _ => {
            drop(lead);
            return Ok(whole_blob_stream(digest, resp));
        }
    };
    let body = match stream::collect(resp.body, len).await {
        Ok(b) if b.len() as u64 == len && Digest::compute(digest.algorithm(), &b) == *digest => b,
        Ok(b) => {
            drop(lead);
            mismatch(Source::Upstream, digest, "upstream blob");
            return Err(ApiError::BadGateway {
                code: "DIGEST_INVALID",
                message: format!("upstream blob {what}: {} bytes that do not match the digest", b.len()),
            });
        }
        Err(e) => {
            drop(lead);
            return Err(ApiError::BadGateway { code: "UNKNOWN", message: format!("{what}: {e}") });
        }
    };
    lead.land(Landed::Done(body.clone()));
    Ok(whole_blob_bytes(digest, body))
}

/// A whole blob from the upstream, each request on its own, verified while it streams.
async fn upstream_stream_blob(
    st: &RegistryState,
    ask: &Ask,
    repo: &str,
    digest: &Digest,
) -> Result<BlobAnswer, ApiError> {
    let what = format!("{}/{repo}@{digest}", ask.registry);
    let resp = st
        .upstream
        .fetch(upstream_request(ask, repo, Kind::Blob, digest.to_string(), false, None))
        .await
        .map_err(|e| ApiError::from_upstream(e, Kind::Blob, &what))?;
    Ok(whole_blob_stream(digest, resp))
}

fn whole_blob_stream(digest: &Digest, resp: UpstreamResponse) -> BlobAnswer {
    let body = counted(verified(resp.body, digest, resp.content_length, Source::Upstream), Source::Upstream);
    let len = resp.content_length;
    BlobAnswer {
        digest: digest.clone(),
        size: len.unwrap_or(0),
        range: None,
        len,
        body,
        source: Source::Upstream,
        direct: false,
    }
}

/// A whole blob already verified, from memory.
fn whole_blob_bytes(digest: &Digest, body: Bytes) -> BlobAnswer {
    let len = body.len() as u64;
    let stream: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(body) }));
    BlobAnswer::whole(digest, len, counted(stream, Source::Upstream), Source::Upstream)
}

/// A client's request on the node-local front end: every source.
pub async fn get(st: &RegistryState, ask: &Ask, route: Route) -> Result<Answer, ApiError> {
    match route {
        Route::Manifest { repo, reference } => manifest(st, ask, &repo, &reference).await,
        Route::Blob { repo, digest } => blob(st, ask, &repo, &digest).await.map(Answer::Blob),
    }
}

/// A request from another peerd (already authenticated): only what this node holds — never
/// peers or the upstream (no loops).
pub async fn get_for_peer(st: &RegistryState, ask: &Ask, route: Route) -> Result<Answer, ApiError> {
    let answer = match route {
        Route::Blob { digest, .. } => match local_blob(st, ask, &digest, true).await {
            Some(r) => r.map(Answer::Blob),
            None => Err(ApiError::BlobUnknown(digest.to_string())),
        },
        Route::Manifest { repo, reference } => {
            let m = match &reference {
                Reference::Digest(d) => local_manifest(st, d, ask.accept.as_deref()).await,
                Reference::Tag(t) => local_tag(st, ask, &repo, t).await,
            };
            m.map(|m| {
                metrics::counter!(PEER_SERVED_BYTES).increment(m.body.len() as u64);
                manifest_response(m, ask.head, Source::Local)
            })
            .ok_or_else(|| ApiError::ManifestUnknown(reference.to_string()))
        }
    };
    if answer.is_ok() {
        if let Some(p) = &st.peers {
            let _ = p.served.try_send(ServedPeer);
        }
    }
    answer
}
