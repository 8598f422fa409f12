//! `/blobs/<URL>`: byte ranges of files in any HTTP blob store (an Azure Blob SAS URL, an
//! nginx...), for overlaybd's lazy image streaming. Chunks are found in the local cache, then on
//! peers, then upstream (through the one transfer engine, [`run`]); cached and prefetched.
//!
//! - **Identity**: a file is `sha256(URL without query, ETag or Last-Modified, size)`, so two
//!   files never share chunks and a changed file gets new ones. Metadata is revalidated with a
//!   HEAD of the client's exact URL (`blobs.revalidate_after`), which also means cached bytes are
//!   served only for URLs the upstream accepted. When the upstream is unreachable or answers
//!   5xx/429 (not 401/403), RFC 5861 stale-if-error: the metadata last confirmed for this URL,
//!   else a validation of the URL without its query by this node or a peer within
//!   `blobs.stale_if_error` (`/blobs-meta/<hash>` on the peer listener).
//! - **Peers** see chunk ids only (`/blobs-chunk/<file id>/<index>`,
//!   `/blobs-status/<file id>/<segment>`): never the URL, its signature or the client's
//!   headers. Chunks missing here are fetched through the transfer of their segment ([`run`]):
//!   the one transfer engine, on demand.
//! - **Safety**: upstreams must match `blobs.allowed_hosts`; redirects are not followed; a
//!   resolver refuses link-local and cloud metadata addresses (so DNS cannot point around it).

pub mod cache;
pub mod run;

use crate::actors::peers::{Outcome, ServedPeer};
use crate::actors::upstream::Gate;
use crate::config::AllowRule;
use crate::config::BlobsConfig;
use crate::error::ApiError;
use crate::peer::client::PeerClient;
use crate::peer::LONG_POLL;
use crate::range::{ByteRange, RangeSpec};
use crate::routing::{keys, Router};
use crate::stream::ByteStream;
use crate::upstream::policy::{is_loopback_host, AddressPolicy};
use crate::upstream::Health;
use actix::Recipient;
use actix_web::http::{header, StatusCode};
use bytes::Bytes;
use cache::{hex_sha256, ChunkCache};
use dashmap::DashMap;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub const BLOBS_BYTES: &str = "peerd_blobs_bytes_total";
pub const PREFETCH_CHUNKS: &str = "peerd_blobs_prefetch_chunks_total";
pub const PREFETCH_FILES: &str = "peerd_blobs_prefetch_files_total";
/// Prefetches that stopped early, by `reason` (`size`, `cache`, `idle`).
pub const PREFETCH_STOPPED: &str = "peerd_blobs_prefetch_stopped_total";
/// Chunk fetches that failed for lack of progress (`reason`: `stalled`: no byte for
/// `progress_timeout`; `slow`: not complete in `chunk_timeout`; `queued`: no slot of the host
/// within `chunk_timeout`, or a reader's chunk not started within twice `chunk_timeout`).
pub const UPSTREAM_TIMEOUTS: &str = "peerd_blobs_upstream_timeouts_total";
/// Requests served while the upstream failed (RFC 5861 stale-if-error) from a validation of
/// the URL without its query (`by`: `self`, `peer`: found now; `cluster`: remembered).
pub const STALE_SERVED: &str = "peerd_blobs_stale_if_error_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    cache::describe();
    metrics::describe_counter!(
        BLOBS_BYTES,
        metrics::Unit::Bytes,
        "/blobs chunk bytes by source (local, peer, upstream)"
    );
    metrics::describe_counter!(PREFETCH_FILES, "/blobs files queued for prefetch");
    metrics::describe_counter!(
        STALE_SERVED,
        "/blobs requests served from a cluster validation while the upstream failed (stale-if-error)"
    );
    metrics::describe_counter!(PREFETCH_STOPPED, "/blobs prefetches stopped early by reason (size, cache, idle)");
    metrics::describe_counter!(
        UPSTREAM_TIMEOUTS,
        "/blobs upstream chunk fetches failed for lack of progress by reason (stalled, slow, queued)"
    );
    metrics::describe_counter!(PREFETCH_CHUNKS, "/blobs chunks prefetched");
}
/// Peers asked for a file's validation during an upstream outage.
const STALE_PEERS: usize = 8;
/// Prefetch never evicts chunks used more recently than this.
const PREFETCH_KEEP: Duration = Duration::from_secs(600);
/// Chunk fetches (peer or upstream) in flight on this node, all requests together.
const MAX_FETCHES: usize = 64;
/// Files whose metadata is remembered.
const MAX_META: usize = 100_000;

/// What peerd knows of one upstream file.
#[derive(Clone, Debug)]
struct Meta {
    id: String,
    size: u64,
    etag: Option<String>,
    checked: Instant,
    /// Borrowed from a cluster validation (stale-if-error): usable while the upstream fails,
    /// until the validation is `blobs.stale_if_error` old. `None`: this URL was confirmed here.
    stale_until: Option<Instant>,
    /// This version is in the metadata directory (written by this process, or read from it).
    persisted: bool,
}

/// Metadata as persisted under `<cache>/meta/<sha256(full URL)>`, so a restarted node can serve
/// its cache for URLs the upstream accepted before, while the upstream is down.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredMeta {
    id: String,
    size: u64,
    etag: Option<String>,
    /// The chunk size the id was made with: metadata from a run with another
    /// `blobs.chunk_size` names chunks of other offsets, and is ignored. (Files written before
    /// this field existed have none: ignored too.)
    #[serde(default)]
    chunk_size: u64,
}

/// A file (a URL without its query) this node validated with the upstream: what
/// `/blobs-meta/<key>` tells peers during an outage (stale-if-error).
#[derive(Clone, Debug)]
struct Validated {
    validator: String,
    size: u64,
    etag: Option<String>,
    at: Instant,
}

/// The answer of `/blobs-meta/<key>` (the id is recomputed by the asker from the URL).
#[derive(serde::Serialize, serde::Deserialize)]
struct ValidatedReply {
    validator: String,
    size: u64,
    etag: Option<String>,
    age_secs: u64,
}

pub struct BlobPeers {
    /// The node's upload slots (`swarm.upload_slots`, shared with swarm downloads): a chunk for
    /// a peer holds one until it is sent; none free, the peer gets 503 and asks elsewhere.
    pub uploads: Arc<Semaphore>,
    pub report: Recipient<Outcome>,
    pub served: Recipient<ServedPeer>,
    pub client: Arc<PeerClient>,
    pub router: Arc<dyn Router>,
    /// This node's peer id (rendezvous hashing).
    pub me: String,
}

/// How often a file's transfer refreshes its view of the other nodes reading it.
const INTEREST_TTL: Duration = Duration::from_secs(1);
/// Longest a node waits for the owner of a chunk, without progress, before fetching it itself.
const TAKEOVER: Duration = Duration::from_secs(10);

pub struct BlobsState {
    /// Cancelled at node shutdown: prefetches stop.
    stop: tokio_util::sync::CancellationToken,
    /// Upstream admission (the circuit breaker /v2 uses too), per store host.
    gate: Gate,
    cfg: BlobsConfig,
    allow: Vec<AllowRule>,
    /// Where fetches may connect (loopback only when an allowed host is on loopback).
    policy: AddressPolicy,
    http: reqwest::Client,
    cache: Arc<ChunkCache>,
    meta_dir: std::path::PathBuf,
    /// sha256(full URL) → metadata, for URLs the upstream accepted.
    meta: DashMap<String, Meta>,
    peers: Option<BlobPeers>,
    /// `<file id>.<segment>` → the transfer fetching chunks of that segment (one task decides
    /// for it; every request and peer asking for its chunks goes through it).
    runs: DashMap<String, Arc<run::FileRun>>,
    fetches: Arc<Semaphore>,
    /// Upstream host (`host:port`) → its share of the chunk fetches (`blobs.per_host_fetches`),
    /// taken before a slot of `fetches`, so one slow host cannot hold them all.
    hosts: DashMap<String, Arc<Semaphore>>,
    /// File id → bytes prefetched so far (a file is prefetched at most `prefetch_cap` bytes).
    prefetched: DashMap<String, u64>,
    /// File id → the cache's removal count when a prefetch found every chunk of the file cached:
    /// while the count is the same, reads of the file start no prefetch (it walked every chunk
    /// index on every read: ~1,000 look-ups per read of a cached 1 GiB file).
    prefetch_complete: DashMap<String, u64>,
    /// Prefetch walks started (tests).
    #[cfg(test)]
    prefetch_walks: std::sync::atomic::AtomicU64,
    /// File id → when a client last read it (prefetch runs only while a file is being read).
    last_read: DashMap<String, Instant>,
    prefetch_slots: Arc<Semaphore>,
    /// File id → the URL and metadata a client last used (so this node can fetch chunks of it
    /// for peers, with its own client's credentials; peers never see the URL).
    sources: DashMap<String, (url::Url, Meta)>,
    /// sha256(URL without query, chunk size) → what the upstream last confirmed for it.
    validated: DashMap<String, Validated>,
    /// When "no disk room" was last logged.
    no_room_warned: std::sync::atomic::AtomicU64,
}

/// The upstream URL of a `/blobs/<URL>` request (its raw path and query): an http(s) URL with a
/// host, no credentials, not a link-local or metadata address, and allowed by `allow`. Pure, so
/// it can be fuzzed (`tests/fuzz.rs`).
pub fn parse_blob_url(
    path: &str,
    query: Option<&str>,
    allow: &[AllowRule],
    policy: AddressPolicy,
) -> Result<url::Url, ApiError> {
    let raw = path.strip_prefix("/blobs/").unwrap_or("");
    let full = match query {
        Some(q) => format!("{raw}?{q}"),
        None => raw.to_owned(),
    };
    let url = url::Url::parse(&full).map_err(|e| ApiError::NameInvalid(format!("malformed blob URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::NameInvalid("blob URL must be http(s)://host/path".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::NameInvalid("blob URL must not carry credentials".into()));
    }
    if let Err(r) = policy.check_url(&url) {
        return Err(bad("DENIED", StatusCode::FORBIDDEN, r.to_string()));
    }
    if !allow.iter().any(|r| r.allows(&url)) {
        return Err(bad(
            "DENIED",
            StatusCode::FORBIDDEN,
            format!("{}://{} is not in blobs.allowed_hosts", url.scheme(), url.host_str().unwrap_or("")),
        ));
    }
    Ok(url)
}

fn bad(code: &'static str, status: StatusCode, message: String) -> ApiError {
    match status {
        StatusCode::FORBIDDEN => ApiError::Forbidden(message),
        _ => ApiError::BadGateway { code, message },
    }
}

impl BlobsState {
    pub fn new(
        cfg: BlobsConfig,
        cache_dir: &std::path::Path,
        connect_timeout: Duration,
        idle_timeout: Duration,
        peers: Option<BlobPeers>,
        gate: Gate,
    ) -> Result<BlobsState, String> {
        let allow = cfg.allowed_hosts.iter().map(|h| AllowRule::parse(h)).collect::<Result<Vec<_>, _>>()?;
        let policy = AddressPolicy { allow_loopback: allow.iter().any(|r| is_loopback_host(r.host())) };
        // Redirects are not followed: the client signed this URL, not another.
        let http = policy.client(0, connect_timeout, idle_timeout)?;
        let cache =
            ChunkCache::open(cache_dir, cfg.max_cache_bytes).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
        let workers = cfg.prefetch_workers;
        let meta_dir = cache_dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(|e| format!("{}: {e}", meta_dir.display()))?;
        // Temporary files of interrupted metadata writes (only ours, by their mark).
        for entry in std::fs::read_dir(&meta_dir).map_err(|e| format!("{}: {e}", meta_dir.display()))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(cache::TMP_MARK) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(BlobsState {
            stop: tokio_util::sync::CancellationToken::new(),
            gate,
            cfg,
            allow,
            policy,
            http,
            cache: Arc::new(cache),
            meta_dir,
            meta: DashMap::new(),
            peers,
            runs: DashMap::new(),
            fetches: Arc::new(Semaphore::new(MAX_FETCHES)),
            hosts: DashMap::new(),
            prefetched: DashMap::new(),
            prefetch_complete: DashMap::new(),
            #[cfg(test)]
            prefetch_walks: std::sync::atomic::AtomicU64::new(0),
            last_read: DashMap::new(),
            prefetch_slots: Arc::new(Semaphore::new(workers)),
            sources: DashMap::new(),
            validated: DashMap::new(),
            no_room_warned: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    async fn metadata(&self, url: &url::Url) -> Result<Meta, ApiError> {
        let key = hex_sha256(url.as_str().as_bytes());
        if let Some(m) = self.meta.get(&key).filter(|m| m.checked.elapsed() < self.cfg.revalidate_after) {
            return Ok(m.clone());
        }
        let host = &breaker_key(url);
        if let Err(e) = self.gate.admit(host, false).await {
            let resting = ApiError::Unavailable { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string() };
            return self.stale_if_error(url, &key, resting).await;
        }
        let sent = self.http.head(url.clone()).send().await.map_err(reqwest::Error::without_url);
        self.gate.report(host, Health::of_status(sent.as_ref().ok().map(|r| r.status().as_u16())));
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let unavailable = ApiError::Unavailable {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!("blob upstream unreachable: {e}"),
                };
                return self.stale_if_error(url, &key, unavailable).await;
            }
        };
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(ApiError::BlobUnknown("no such file upstream".into())),
            // A refusal is an answer about this URL: never served stale.
            401 | 403 => return Err(ApiError::Denied),
            s @ (429 | 500..=599) => {
                let failed = bad("UNKNOWN", StatusCode::BAD_GATEWAY, format!("upstream answered {s} to HEAD"));
                return self.stale_if_error(url, &key, failed).await;
            }
            s => return Err(bad("UNKNOWN", StatusCode::BAD_GATEWAY, format!("upstream answered {s} to HEAD"))),
        }
        let h = |n: header::HeaderName| resp.headers().get(n.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let size: u64 = h(header::CONTENT_LENGTH)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("UNKNOWN", StatusCode::BAD_GATEWAY, "upstream HEAD has no Content-Length".into()))?;
        let etag = h(header::ETAG);
        // A digest in the path (content-addressed stores) is the strongest validator.
        let digest = url.path_segments().and_then(|mut s| s.find(|p| p.starts_with("sha256:")).map(str::to_owned));
        let validator = digest.or(etag.clone()).or_else(|| h(header::LAST_MODIFIED)).unwrap_or_default();
        let id = self.file_id(url, &validator, size);
        let mut meta = Meta { id, size, etag, checked: Instant::now(), stale_until: None, persisted: false };
        self.validated_now(url, Validated { validator, size, etag: meta.etag.clone(), at: Instant::now() });
        if self.meta.len() >= MAX_META {
            self.meta.clear();
        }
        // Written unless the directory holds this version already: a file served again and
        // again costs no disk write per request.
        meta.persisted = self.meta.get(&key).is_some_and(|m| m.persisted && m.id == meta.id && m.etag == meta.etag);
        let json = (!meta.persisted)
            .then(|| StoredMeta { id: meta.id.clone(), size, etag: meta.etag.clone(), chunk_size: self.cfg.chunk_size })
            .and_then(|stored| serde_json::to_vec(&stored).ok());
        if let Some(json) = json {
            let tmp = self.meta_dir.join(format!("{key}{}", cache::TMP_MARK));
            match tokio::fs::write(&tmp, json).await {
                Ok(()) => meta.persisted = tokio::fs::rename(&tmp, self.meta_dir.join(&key)).await.is_ok(),
                // A full disk: the metadata lives in memory; leave no partial file behind.
                Err(_) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                }
            }
        }
        self.meta.insert(key, meta.clone());
        Ok(meta)
    }

    /// The URL without query or fragment: what a file's identity and its validation records
    /// are keyed by (the query holds the client's signature).
    fn stable(url: &url::Url) -> url::Url {
        let mut stable = url.clone();
        stable.set_query(None);
        stable.set_fragment(None);
        stable
    }

    /// A file's id: `sha256(URL without query, validator, size, chunk size)`. The chunk size is
    /// part of it: chunks are cached by index.
    fn file_id(&self, url: &url::Url, validator: &str, size: u64) -> String {
        let stable = Self::stable(url);
        hex_sha256(format!("{stable}\n{validator}\n{size}\n{}", self.cfg.chunk_size).as_bytes())
    }

    /// The key of a URL's validation record (`/blobs-meta/<key>`, DHT `blobs-url/<key>`).
    fn stable_key(&self, url: &url::Url) -> String {
        hex_sha256(format!("{}\n{}", Self::stable(url), self.cfg.chunk_size).as_bytes())
    }

    /// Record that the upstream confirmed `url`'s file, and (first time) tell the cluster.
    fn validated_now(&self, url: &url::Url, v: Validated) {
        if self.cfg.stale_if_error.is_zero() {
            return;
        }
        let key = self.stable_key(url);
        if self.validated.len() >= MAX_META {
            let window = self.cfg.stale_if_error;
            self.validated.retain(|_, v| v.at.elapsed() < window);
        }
        let first = self.validated.insert(key.clone(), v).is_none();
        if let (true, Some(p)) = (first, &self.peers) {
            let router = p.router.clone();
            actix_rt::spawn(async move {
                let _ = router.provide_now(vec![keys::validated_url_key(&key)]).await;
            });
        }
    }

    /// The upstream failed (unreachable, 5xx, 429) for `url` (metadata key `key`). RFC 5861
    /// stale-if-error: serve what this node last confirmed for this exact URL; else a file a
    /// cluster node (this one, or a peer) validated for the URL without its query within
    /// `blobs.stale_if_error`; else `failed`.
    async fn stale_if_error(&self, url: &url::Url, key: &str, failed: ApiError) -> Result<Meta, ApiError> {
        let known = self.meta.get(key).map(|m| m.clone()).or_else(|| self.load_meta(key));
        if let Some(m) = known.filter(|m| m.stale_until.is_none_or(|u| Instant::now() < u)) {
            tracing::debug!(error = %failed, "blob upstream failed; using the metadata last confirmed");
            if m.stale_until.is_some() {
                metrics::counter!(STALE_SERVED, "by" => "cluster").increment(1);
            }
            return Ok(m);
        }
        let window = self.cfg.stale_if_error;
        if window.is_zero() {
            return Err(failed);
        }
        let sk = self.stable_key(url);
        let mine = self.validated.get(&sk).filter(|v| v.at.elapsed() < window).map(|v| v.clone());
        let (found, by) = match mine {
            Some(v) => (Some((v.validator, v.size, v.etag, v.at.elapsed())), "self"),
            None => (self.validated_by_peers(&sk, window).await, "peer"),
        };
        let Some((validator, size, etag, age)) = found else { return Err(failed) };
        tracing::info!(error = %failed, by, "blob upstream failed; serving a file validated in the cluster (stale-if-error)");
        metrics::counter!(STALE_SERVED, "by" => by).increment(1);
        let id = self.file_id(url, &validator, size);
        let checked = Instant::now().checked_sub(self.cfg.revalidate_after).unwrap_or_else(Instant::now);
        let meta = Meta {
            id,
            size,
            etag,
            checked,
            stale_until: Some(Instant::now() + window.saturating_sub(age)),
            persisted: false,
        };
        // Remembered for this URL (in memory only), so the outage's next reads skip the lookup;
        // the upstream's next answer replaces it, and a 401/403 is passed on before this.
        if self.meta.len() < MAX_META {
            self.meta.insert(key.to_owned(), meta.clone());
        }
        Ok(meta)
    }

    /// Ask the peers that validated the URL-without-query `sk` what the upstream told them.
    async fn validated_by_peers(&self, sk: &str, window: Duration) -> Option<(String, u64, Option<String>, Duration)> {
        let p = self.peers.as_ref()?;
        let rx = p.router.resolve(keys::validated_url_key(sk), STALE_PEERS).await.ok()?;
        let peers = crate::routing::collect_peers(rx, Duration::from_millis(300)).await;
        let target = format!("/blobs-meta/{sk}");
        for peer in peers.into_iter().filter(|v| v.id != p.me).take(STALE_PEERS) {
            let got = async {
                let resp = p.client.fetch(&peer, &target, false, None, None).await.ok()?;
                let (body, _) = resp.checked_body(4096, false).await.ok()?;
                serde_json::from_slice::<ValidatedReply>(&body).ok()
            }
            .await;
            match got {
                Some(r) if Duration::from_secs(r.age_secs) < window => {
                    return Some((r.validator, r.size, r.etag, Duration::from_secs(r.age_secs)))
                }
                Some(r) => tracing::debug!(peer = %peer.id, age = r.age_secs, "peer's validation is too old"),
                None => tracing::debug!(peer = %peer.id, "peer did not confirm the file"),
            }
        }
        None
    }

    fn load_meta(&self, key: &str) -> Option<Meta> {
        let data = std::fs::read(self.meta_dir.join(key)).ok()?;
        let s: StoredMeta = serde_json::from_slice(&data).ok()?;
        if s.chunk_size != self.cfg.chunk_size {
            tracing::debug!(
                key,
                stored = s.chunk_size,
                now = self.cfg.chunk_size,
                "stored metadata is for another chunk size; ignored"
            );
            return None;
        }
        Some(Meta {
            id: s.id,
            size: s.size,
            etag: s.etag,
            checked: Instant::now().checked_sub(self.cfg.revalidate_after).unwrap_or_else(Instant::now),
            stale_until: None,
            persisted: true,
        })
    }

    fn chunk_range(&self, meta: &Meta, index: u64) -> ByteRange {
        let start = index * self.cfg.chunk_size;
        ByteRange { start, end: start.saturating_add(self.cfg.chunk_size).min(meta.size) - 1 }
    }

    /// A chunk from the local cache, counted as served locally.
    async fn cached(&self, id: &str, index: u64) -> Option<Bytes> {
        let (data, _) = self.cache.get(id, index).await?;
        metrics::counter!(BLOBS_BYTES, "source" => "local").increment(data.len() as u64);
        Some(data)
    }

    /// One chunk (its index in the file): from the cache, else through the transfer of its
    /// segment (peers that have it, the node that owns it, the upstream; see [`run`]).
    async fn chunk(self: &Arc<Self>, url: &url::Url, meta: &Meta, index: u64) -> Result<Bytes, String> {
        // A run that ended as this read joined it is replaced; a chunk evicted as soon as it
        // arrived is asked for again. Bounded either way.
        for _ in 0..3 {
            if let Some(data) = self.cached(&meta.id, index).await {
                return Ok(data);
            }
            let run = self.run(url, meta, index / run::SEGMENT_CHUNKS)?;
            let local = index % run::SEGMENT_CHUNKS;
            // Bounded: a chunk queued behind a host that slow (`chunk_timeout` for a slot,
            // `chunk_timeout` for its bytes) fails rather than arriving long after its client
            // may have left (actix does not drop a pending response body when the client
            // disconnects); its reader leaving takes it off the transfer's list.
            let limit = self.cfg.chunk_timeout.saturating_mul(2);
            let Ok(got) = tokio::time::timeout(limit, run.get(self, local)).await else {
                if !run.arriving(local) {
                    metrics::counter!(UPSTREAM_TIMEOUTS, "reason" => "queued").increment(1);
                }
                return Err(format!("chunk {index}: not here within {limit:?}"));
            };
            match got {
                Ok(Some((data, _))) => return Ok(data),
                Ok(None) => {}
                Err(run::RunError::Ended) => {
                    self.runs.remove_if(&run::segment_id(&meta.id, run.seg), |_, r| Arc::ptr_eq(r, &run));
                }
                Err(run::RunError::Failed(why)) => return Err(why),
            }
        }
        Err(format!("chunk {index} of the file could not be kept long enough to serve it"))
    }

    /// The transfer of segment `seg` of the file, started when none runs.
    fn run(self: &Arc<Self>, url: &url::Url, meta: &Meta, seg: u64) -> Result<Arc<run::FileRun>, String> {
        let key = run::segment_id(&meta.id, seg);
        if let Some(r) = self.runs.get(&key).filter(|r| !r.ended()) {
            return Ok(r.clone());
        }
        if self.runs.len() >= run::MAX_RUNS {
            self.runs.retain(|_, r| !r.ended());
            if self.runs.len() >= run::MAX_RUNS {
                return Err(format!("{} file segments are being fetched already", run::MAX_RUNS));
            }
        }
        // Started outside the map's lock; when two reads start one at once, the first one in
        // the map is used and the other ends idle.
        let started = run::start(self, url.clone(), meta.clone(), seg);
        let r = match self.runs.entry(key) {
            dashmap::mapref::entry::Entry::Occupied(e) if !e.get().ended() => e.get().clone(),
            dashmap::mapref::entry::Entry::Occupied(mut e) => {
                e.insert(started.clone());
                started
            }
            dashmap::mapref::entry::Entry::Vacant(e) => e.insert(started).clone(),
        };
        Ok(r)
    }

    /// Note the URL a client read a file with (this node fetches chunks of it for peers with
    /// it, and the file's transfers use the latest one).
    fn reading(&self, url: &url::Url, meta: &Meta) {
        if self.sources.len() >= MAX_META {
            self.sources.clear();
        }
        self.sources.insert(meta.id.clone(), (url.clone(), meta.clone()));
    }

    /// The fetch slots of `url`'s host. Hosts are bounded by the allow-list, but a wildcard
    /// entry admits any number: idle hosts are forgotten past `MAX_META`.
    fn host_slots(&self, url: &url::Url) -> Arc<Semaphore> {
        let host = format!("{}:{}", url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0));
        if let Some(s) = self.hosts.get(&host) {
            return s.clone();
        }
        if self.hosts.len() >= MAX_META {
            let n = self.cfg.per_host_fetches;
            self.hosts.retain(|_, s| s.available_permits() < n);
        }
        self.hosts.entry(host).or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_host_fetches))).clone()
    }

    /// A chunk from the upstream, failing when no byte arrives for `blobs.progress_timeout` or
    /// the whole chunk takes longer than `blobs.chunk_timeout` (a trickling upstream must not
    /// hold its fetch slot for ever).
    async fn chunk_from_upstream(
        &self,
        url: &url::Url,
        meta: &Meta,
        range: ByteRange,
    ) -> Result<(Bytes, [u8; 32]), String> {
        match tokio::time::timeout(self.cfg.chunk_timeout, self.upstream_range(url, meta, range)).await {
            Ok(r) => r,
            Err(_) => {
                metrics::counter!(UPSTREAM_TIMEOUTS, "reason" => "slow").increment(1);
                Err(format!("upstream: the chunk took longer than {:?}", self.cfg.chunk_timeout))
            }
        }
    }

    /// Bytes `range` of the file from the upstream, and their sha256.
    async fn upstream_range(&self, url: &url::Url, meta: &Meta, range: ByteRange) -> Result<(Bytes, [u8; 32]), String> {
        let stalled = || {
            metrics::counter!(UPSTREAM_TIMEOUTS, "reason" => "stalled").increment(1);
            format!("upstream: no bytes for {:?}", self.cfg.progress_timeout)
        };
        // Always an absolute range: some stores (Azurite) fail on suffix ranges.
        let mut req = self.http.get(url.clone()).header(header::RANGE.as_str(), range.header());
        if let Some(etag) = &meta.etag {
            req = req.header(header::IF_MATCH.as_str(), etag);
        }
        let host = &breaker_key(url);
        self.gate.admit(host, false).await.map_err(|e| e.to_string())?;
        // Errors never carry the URL: it holds the client's signature.
        let sent = tokio::time::timeout(self.cfg.progress_timeout, req.send()).await;
        let status = sent.as_ref().ok().and_then(|r| r.as_ref().ok()).map(|r| r.status().as_u16());
        self.gate.report(host, Health::of_status(status));
        let resp = sent.map_err(|_| stalled())?.map_err(|e| format!("upstream: {}", e.without_url()))?;
        let status = resp.status().as_u16();
        if status == 412 {
            self.meta.retain(|_, m| m.id != meta.id);
            return Err("the file changed upstream while it was being read".into());
        }
        if status != 206 && status != 200 {
            return Err(format!("upstream answered {status}"));
        }
        let body: crate::stream::ByteStream =
            Box::pin(resp.bytes_stream().map(|r| r.map_err(|e| std::io::Error::other(e.without_url().to_string()))));
        // A piece that does not come within `progress_timeout` ends the body as stalled.
        let body =
            tokio_stream::StreamExt::timeout(crate::stream::ranged(body, status, range), self.cfg.progress_timeout)
                .map(|piece| piece.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut))));
        // Hashed as it arrives (the hash overlaps the transfer instead of following it).
        let (data, sha) = crate::stream::collect_hashed(Box::pin(body), range.len(), range.len() as usize)
            .await
            .map_err(|e| if e.kind() == std::io::ErrorKind::TimedOut { stalled() } else { e.to_string() })?;
        if data.len() as u64 != range.len() {
            return Err(format!("upstream sent {} of {} bytes", data.len(), range.len()));
        }
        Ok((data, sha))
    }

    /// A client read file `id` now.
    fn touch(&self, id: &str) {
        if self.last_read.len() >= MAX_META {
            let idle = self.cfg.prefetch_idle;
            self.last_read.retain(|_, t| t.elapsed() < idle);
        }
        self.last_read.insert(id.to_owned(), Instant::now());
    }

    /// Bytes of one file prefetched at most: `blobs.prefetch_max_bytes`, and half the cache.
    fn prefetch_cap(&self) -> u64 {
        self.cfg.prefetch_max_bytes.min(self.cfg.max_cache_bytes / 2)
    }

    /// After a read of a file, fetch the chunks after it in the background (bounded workers),
    /// then those before it. Bounded: at most [`Self::prefetch_cap`] bytes per file per process,
    /// whatever size the upstream claims; never evicting chunks used in the last
    /// [`PREFETCH_KEEP`]; and only while clients read the file (one read within
    /// `blobs.prefetch_idle`): an idle file's prefetch stops, and resumes on its next read.
    fn prefetch(self: &Arc<Self>, url: url::Url, meta: Meta, from: u64) {
        if !self.cfg.prefetch || meta.size == 0 {
            return;
        }
        if self.prefetch_complete.get(&meta.id).is_some_and(|at| *at == self.cache.removals()) {
            return;
        }
        // Bounded: past `MAX_META` files, new ones are not prefetched (checked before taking the
        // entry: `len` locks every shard).
        let full = self.prefetched.len() >= MAX_META;
        let done = match self.prefetched.entry(meta.id.clone()) {
            // Running (`u64::MAX` marks it) or stopped for good (past its cap).
            dashmap::mapref::entry::Entry::Occupied(e) if *e.get() == u64::MAX || *e.get() >= self.prefetch_cap() => {
                return
            }
            dashmap::mapref::entry::Entry::Occupied(mut e) => std::mem::replace(e.get_mut(), u64::MAX),
            dashmap::mapref::entry::Entry::Vacant(_) if full => return,
            dashmap::mapref::entry::Entry::Vacant(e) => {
                e.insert(u64::MAX);
                metrics::counter!(PREFETCH_FILES).increment(1);
                0
            }
        };
        let this = self.clone();
        actix_rt::spawn(async move {
            let stop = this.stop.clone();
            tokio::select! {
                fetched = this.prefetch_run(&url, &meta, from, done) => {
                    this.prefetched.insert(meta.id.clone(), fetched);
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Stop prefetching (node shutdown); reads in flight finish on their own.
    pub fn shut_down(&self) {
        self.stop.cancel();
    }

    /// The prefetch of one file; returns the bytes it fetched (counted against the cap).
    async fn prefetch_run(self: &Arc<Self>, url: &url::Url, meta: &Meta, from: u64, mut fetched: u64) -> u64 {
        let cs = self.cfg.chunk_size;
        let cap = self.prefetch_cap();
        let chunks = meta.size.div_ceil(cs);
        let from = from.min(chunks);
        // Never more than the cap's worth of indexes looked at, whatever the claimed size.
        let span = cap.div_ceil(cs).saturating_add(1);
        let order = (from..chunks).take(span as usize).chain((0..from).rev().take(span as usize));
        #[cfg(test)]
        self.prefetch_walks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Taken before the walk: a chunk removed during it makes the file incomplete again.
        let removals = self.cache.removals();
        let mut fetching = false;
        let mut running = tokio::task::JoinSet::new();
        // Bytes of chunks in flight: not in the cache yet, but they will be.
        let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut stop = None;
        for index in order {
            if this_idle(self, &meta.id) {
                stop = Some("idle");
                break;
            }
            if self.cache.contains(&meta.id, index) {
                continue;
            }
            let len = self.chunk_range(meta, index).len();
            if fetched.saturating_add(len) > cap {
                stop = Some("size");
                break;
            }
            let coming = in_flight.load(std::sync::atomic::Ordering::Relaxed);
            if self.cache.evicts_recent(len.saturating_add(coming), PREFETCH_KEEP) {
                stop = Some("cache");
                break;
            }
            let Ok(slot) = self.prefetch_slots.clone().acquire_owned().await else { break };
            fetching = true;
            fetched += len;
            in_flight.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            let (t, u, m, f) = (self.clone(), url.clone(), meta.clone(), in_flight.clone());
            running.spawn_local(async move {
                if t.chunk(&u, &m, index).await.is_ok() {
                    metrics::counter!(PREFETCH_CHUNKS).increment(1);
                }
                f.fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
                drop(slot);
            });
            while running.try_join_next().is_some() {}
        }
        if stop.is_none() && !fetching && span >= chunks {
            // Every chunk of the file was cached: nothing to do until the cache loses one.
            if self.prefetch_complete.len() >= MAX_META {
                self.prefetch_complete.clear();
            }
            self.prefetch_complete.insert(meta.id.clone(), removals);
        }
        if let Some(reason) = stop {
            metrics::counter!(PREFETCH_STOPPED, "reason" => reason).increment(1);
            tracing::debug!(file = %meta.id, reason, fetched, "prefetch stopped");
        }
        if stop == Some("idle") {
            // The chunks in flight are not waited for: dropping them cancels their fetches.
            running.abort_all();
        }
        while running.join_next().await.is_some() {}
        // Stopped by size or cache: for good (the cap is reached); idle: resumable.
        match stop {
            Some("size") | Some("cache") => cap,
            _ => fetched,
        }
    }
}

/// The part of chunk `index` (of `chunk_size`-byte chunks of a `size`-byte file) that range `r`
/// covers, as offsets within the chunk.
fn part_of_chunk(size: u64, chunk_size: u64, r: ByteRange, index: u64) -> (u64, u64) {
    let start = index * chunk_size;
    let len = chunk_size.min(size - start);
    (r.start.saturating_sub(start), (r.end + 1).min(start + len) - start)
}

/// The upstream breaker's name for a store: host and port (two stores on one host are two).
fn breaker_key(url: &url::Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), url.port_or_known_default().unwrap_or(0))
}

/// No client has read file `id` within `blobs.prefetch_idle`.
fn this_idle(st: &BlobsState, id: &str) -> bool {
    st.last_read.get(id).is_none_or(|t| t.elapsed() >= st.cfg.prefetch_idle)
}

/// What a `/blobs` read answers: the file's size and ETag, the range served (none: all of it)
/// and, unless only the headers were asked for, the body.
pub struct BlobRead {
    pub size: u64,
    pub etag: Option<String>,
    pub range: Option<ByteRange>,
    pub body: Option<crate::stream::ByteStream>,
}

impl BlobsState {
    /// Read `range` (none: all) of the file at the `/blobs/<URL>` request path and query; with
    /// `head`, the headers only. The body streams chunk by chunk (cache, peers, upstream), at
    /// most `blobs.parallel_chunks` chunks ahead of the client, and starts a prefetch.
    pub async fn read(
        self: &Arc<Self>,
        path: &str,
        query: Option<&str>,
        range: Option<RangeSpec>,
        head: bool,
    ) -> Result<BlobRead, ApiError> {
        let url = parse_blob_url(path, query, &self.allow, self.policy)?;
        let cs = self.cfg.chunk_size;
        // While the upstream confirms the URL (by default a HEAD per request), the first chunk's
        // part is read from the cache if the URL's last known metadata names a cached chunk. Its
        // bytes are used only if the confirmation names the same file; nothing is released
        // before it.
        let known = self.meta.get(&hex_sha256(url.as_str().as_bytes())).map(|m| m.clone());
        let early = async {
            let m = known.as_ref().filter(|m| !head && m.size > 0)?;
            let r =
                range.map(|s| s.resolve(m.size)).transpose().ok()?.unwrap_or(ByteRange { start: 0, end: m.size - 1 });
            let index = r.start / cs;
            let (from, to) = part_of_chunk(m.size, cs, r, index);
            let bytes = self.cache.get_range(&m.id, index, from, to).await?;
            Some((m.id.clone(), bytes))
        };
        let (meta, early) = tokio::join!(self.metadata(&url), early);
        let meta = meta?;
        let mut early = early.filter(|(id, _)| *id == meta.id).map(|(_, b)| b);
        self.reading(&url, &meta);
        self.touch(&meta.id);
        let range = range.map(|s| s.resolve(meta.size)).transpose()?;
        let (size, etag) = (meta.size, meta.etag.clone());
        if head || meta.size == 0 {
            return Ok(BlobRead { size, etag, range, body: None });
        }
        let r = range.unwrap_or(ByteRange { start: 0, end: meta.size - 1 });
        let (first, last) = (r.start / cs, r.end / cs);
        let this = self.clone();
        self.prefetch(url.clone(), meta.clone(), last + 1);
        let chunks = futures_util::stream::iter(first..=last)
            .map(move |index| {
                let (t, u, m) = (this.clone(), url.clone(), meta.clone());
                let ready = if index == first { early.take() } else { None };
                async move {
                    t.touch(&m.id);
                    let (from, to) = part_of_chunk(m.size, cs, r, index);
                    // A cached chunk this node checked: just the bytes asked for.
                    let cached = match ready {
                        Some(b) => Some(b),
                        None => t.cache.get_range(&m.id, index, from, to).await,
                    };
                    if let Some(part) = cached {
                        metrics::counter!(BLOBS_BYTES, "source" => "local").increment(to - from);
                        return Ok(part);
                    }
                    let data = t.chunk(&u, &m, index).await.map_err(std::io::Error::other)?;
                    let to = to.min(data.len() as u64);
                    let part = data.slice(from as usize..to as usize);
                    Ok::<ByteStream, std::io::Error>(Box::pin(futures_util::stream::once(std::future::ready(Ok(part)))))
                }
            })
            .buffered(self.cfg.parallel_chunks)
            .try_flatten();
        // Cached parts come as file reads in pooled buffers, already in pieces; a fetched chunk
        // is a buffer of its own: handed on as views of at most a piece, the HTTP layer copies
        // a piece at a time into its write buffer instead of a whole part (up to a chunk).
        let body = crate::stream::Pieces::views(Box::pin(chunks), crate::stream::MAX_PIECE);
        Ok(BlobRead { size, etag, range, body: Some(Box::pin(body)) })
    }

    /// A peer asks whether this node validated the URL-without-query `key` with the upstream
    /// within `blobs.stale_if_error`, during an outage (stale-if-error). The answer (JSON)
    /// carries the validator and size, never the URL.
    pub fn validation_for_peer(&self, key: &str) -> Result<Vec<u8>, ApiError> {
        let window = self.cfg.stale_if_error;
        let found =
            self.validated.get(key).filter(|v| !window.is_zero() && v.at.elapsed() < window).map(|v| ValidatedReply {
                validator: v.validator.clone(),
                size: v.size,
                etag: v.etag.clone(),
                age_secs: v.at.elapsed().as_secs(),
            });
        found.and_then(|r| serde_json::to_vec(&r).ok()).ok_or_else(|| ApiError::BlobUnknown(key.into()))
    }

    /// A peer asks for chunk `index` of file `id`, answered from the cache, with its sha256.
    /// With `fetch` (the peer computed that this node fetches the chunk for everyone, or saw it
    /// arriving here), a missing chunk of a file this node reads is fetched through the file's
    /// transfer with this node's own URL; the request waits up to `wait` for it (at most
    /// [`LONG_POLL`]), then answers [`ApiError::Pending`] (ask again). A fetch that failed (an
    /// expired URL, a refusal) is "not here", so the asking node fetches the chunk itself.
    pub async fn chunk_for_peer(
        self: &Arc<Self>,
        id: &str,
        index: u64,
        fetch: bool,
        wait: Duration,
    ) -> Result<(crate::stream::ByteStream, u64, String), ApiError> {
        let mut found = self.cache.whole(id, index).await;
        if found.is_none() && fetch {
            let source = self.sources.get(id).map(|s| s.clone());
            if let Some((url, meta)) = source.filter(|(_, m)| index < m.size.div_ceil(self.cfg.chunk_size)) {
                let job = async {
                    let run = self.run(&url, &meta, index / run::SEGMENT_CHUNKS)?;
                    run.get(self, index % run::SEGMENT_CHUNKS).await.map_err(|e| e.to_string())
                };
                match tokio::time::timeout(wait.min(LONG_POLL), job).await {
                    Ok(Ok(got)) => {
                        found = got.map(|(data, sha)| {
                            let len = data.len() as u64;
                            (crate::stream::of_memory(data), len, sha)
                        })
                    }
                    Err(_) => return Err(ApiError::Pending { progress: None }),
                    Ok(Err::<_, String>(e)) => tracing::debug!(chunk = index, error = %e, "fetch for a peer failed"),
                }
            }
        }
        let (body, len, sha) = found.ok_or_else(|| ApiError::BlobUnknown(format!("{id}/{index}")))?;
        let p = self.peers.as_ref().ok_or_else(|| ApiError::BlobUnknown("no peers".into()))?;
        // Like a swarm chunk: the node's upload slot is held until the chunk is sent.
        let Ok(slot) = p.uploads.clone().try_acquire_owned() else { return Err(ApiError::Busy) };
        metrics::counter!(crate::peer::PEER_SERVED_BYTES).increment(len);
        let _ = p.served.try_send(ServedPeer);
        Ok((crate::stream::holding(body, slot), len, sha))
    }

    /// A peer asks what this node has of segment `seg` of file `id` (a file it reads).
    pub fn status_for_peer(&self, id: &str, seg: u64) -> Result<crate::transfer::engine::StatusDoc, ApiError> {
        if let Some(r) = self.runs.get(&run::segment_id(id, seg)) {
            return Ok(r.status(self));
        }
        let size = self.sources.get(id).map(|s| s.1.size).ok_or_else(|| ApiError::BlobUnknown(id.into()))?;
        let seg_size = run::segment_size(size, self.cfg.chunk_size, seg);
        if seg_size == 0 {
            return Err(ApiError::BlobUnknown(format!("{id}/{seg}")));
        }
        Ok(run::segment_status(self, id, seg, seg_size, |_| false, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /blobs chunk for a peer holds one of the node's upload slots (shared with swarm
    /// downloads) until it is sent: with one slot, a second asker gets 503 while the first
    /// chunk is unsent (before, /blobs chunks were bounded by nothing but the transfer budget).
    #[actix::test]
    async fn a_chunk_for_a_peer_holds_an_upload_slot_until_sent() {
        use actix::Actor;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::load(None, Vec::<(String, String)>::new(), Vec::new()).unwrap().blobs;
        cfg.chunk_size = 4;
        let me = crate::routing::Peer { id: "me".into(), addr: "127.0.0.1:9".parse().unwrap() };
        let net = Arc::new(crate::routing::memory::MemoryNetwork::default());
        let router: Arc<dyn Router> = Arc::new(crate::routing::memory::MemoryRouter::new(net, me));
        let selector =
            crate::actors::peers::PeerSelector::new(router.clone(), Duration::from_millis(50), 3, None).start();
        let client = PeerClient::new(Duration::from_millis(500), Duration::from_secs(5), None, "me".into()).unwrap();
        let uploads = Arc::new(Semaphore::new(1));
        let peers = BlobPeers {
            uploads: uploads.clone(),
            report: selector.clone().recipient(),
            served: selector.recipient(),
            client: Arc::new(client),
            router,
            me: "me".into(),
        };
        let up = Arc::new(crate::upstream::memory::MemoryUpstream::default());
        let gate = Gate::start(up, &[], crate::actors::upstream::Breaker::new(100, Duration::from_secs(1)));
        let st = Arc::new(
            BlobsState::new(cfg, dir.path(), Duration::from_secs(1), Duration::from_secs(5), Some(peers), gate)
                .unwrap(),
        );
        let id = hex_sha256(b"a file");
        for i in 0..2 {
            st.cache.put(&id, i, &Bytes::from_static(b"abcd")).await.unwrap();
        }
        let (first, len, sha) = st.chunk_for_peer(&id, 0, false, Duration::ZERO).await.unwrap();
        assert_eq!((len, sha), (4, hex_sha256(b"abcd")));
        let second = st.chunk_for_peer(&id, 1, false, Duration::ZERO).await;
        assert!(matches!(second, Err(ApiError::Busy)), "the one slot is taken while the first chunk is unsent");
        assert_eq!(crate::stream::collect(first, 16).await.unwrap(), Bytes::from_static(b"abcd"));
        assert!(st.chunk_for_peer(&id, 1, false, Duration::ZERO).await.is_ok(), "sent: the slot is free again");
        assert_eq!(uploads.available_permits(), 1, "and back once that one is dropped");
    }

    /// A file whose every chunk is cached starts no prefetch walk on its next reads (before, each
    /// read walked every chunk index), until the cache loses a chunk.
    #[actix::test]
    async fn a_fully_cached_file_is_not_walked_again_until_a_chunk_goes() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::config::Config::load(None, Vec::<(String, String)>::new(), Vec::new()).unwrap().blobs;
        cfg.chunk_size = 4;
        let up = Arc::new(crate::upstream::memory::MemoryUpstream::default());
        let gate = Gate::start(up, &[], crate::actors::upstream::Breaker::new(100, Duration::from_secs(1)));
        let st = Arc::new(
            BlobsState::new(cfg, dir.path(), Duration::from_secs(1), Duration::from_secs(5), None, gate).unwrap(),
        );
        let id = hex_sha256(b"a cached file");
        for i in 0..3 {
            st.cache.put(&id, i, &Bytes::from_static(b"abcd")).await.unwrap();
        }
        let url = url::Url::parse("http://127.0.0.1:9/f").unwrap();
        let meta =
            Meta { id: id.clone(), size: 12, etag: None, checked: Instant::now(), stale_until: None, persisted: true };
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        st.touch(&id);
        st.prefetch(url.clone(), meta.clone(), 1);
        settle().await;
        assert_eq!(st.prefetch_walks.load(Relaxed), 1, "the first read walks the file");
        for _ in 0..3 {
            st.touch(&id);
            st.prefetch(url.clone(), meta.clone(), 1);
        }
        settle().await;
        assert_eq!(st.prefetch_walks.load(Relaxed), 1, "every chunk was cached: no walk on later reads");
        // The cache loses a chunk (found corrupt): the next read walks again, to fetch it back.
        std::fs::write(st.cache.chunk_path(&id, 2).unwrap(), b"XXXX").unwrap();
        assert!(st.cache.get(&id, 2).await.is_none());
        st.touch(&id);
        st.prefetch(url.clone(), meta.clone(), 1);
        settle().await;
        assert_eq!(st.prefetch_walks.load(Relaxed), 2, "a removed chunk makes the file worth a walk again");
    }

    #[test]
    fn allow_rules() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let az = AllowRule::parse("*.blob.core.windows.net").unwrap();
        assert!(az.allows(&u("https://acct.blob.core.windows.net/c/b?sig=x")));
        assert!(!az.allows(&u("http://acct.blob.core.windows.net/c/b")), "https only by default");
        assert!(!az.allows(&u("https://blob.core.windows.net.evil.com/c")));
        assert!(!az.allows(&u("https://evilblob.core.windows.net/c")));
        let local = AllowRule::parse("http://127.0.0.1:8080").unwrap();
        assert!(local.allows(&u("http://127.0.0.1:8080/f")));
        assert!(!local.allows(&u("http://127.0.0.1:8081/f")));
        assert!(!local.allows(&u("https://127.0.0.1:8080/f")));
        let v6 = AllowRule::parse("http://[::169.254.169.254]:8080").unwrap();
        assert!(v6.allows(&u("http://[::a9fe:a9fe]:8080/f")), "IPv6 hosts compare in normalised form");
        let mapped = AllowRule::parse("http://[::ffff:169.254.169.254]").unwrap();
        assert!(mapped.allows(&u("http://[::ffff:a9fe:a9fe]/f")));
        for bad in ["ftp://x", "", "*.", "a/b", "h:port", "[::1", "[nope]", "[::1]x"] {
            assert!(AllowRule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
