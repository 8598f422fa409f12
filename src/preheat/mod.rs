//! Preheat: put an image into chosen nodes' containerd before a rollout, without a coordinator.
//!
//! # How a request reaches the cluster
//! The node that receives `POST /preheat` on its node-local front end (`peerd preheat` talks to
//! 127.0.0.1) is the *requester* for that request, and nothing else is:
//! 1. it checks the images (mirrored registries only), resolves each tag to a digest through its
//!    own `/v2` mirror (so tag resolution is the mirror's, with its upstream auth and breaker);
//! 2. it finds the nodes: every node announces itself in the DHT when it starts
//!    ([`crate::routing::members`]: sharded keys, so the listing is not cut at the DHT's 20
//!    providers per key), with its peer listener (the requester adds itself);
//! 3. per image it takes all of them (`--all`) or the `copies` with the highest rendezvous
//!    score for the image digest — [`crate::swarm::owner`]'s scoring, called once per pick —
//!    so the choice is stable (the same image lands on the same nodes from any requester) and
//!    spread (different images land on different nodes);
//! 4. it asks each chosen node with a signed `POST /preheat/<id>?image=..&platform=..` on the
//!    authenticated peer listener (the request is entirely in the signed path and query: no
//!    body to forge), and answers with the request id;
//! 5. `GET /preheat/<id>` on the requester asks every chosen node (signed `GET /preheat/<id>`)
//!    for its progress; a node that cannot be reached is reported failed.
//!
//! Why not gossip or DHT records the nodes poll: a preheat has one requester that must report
//! the outcome of each chosen node anyway, the peer listener is already authenticated and
//! reachable, and the rendezvous choice needs no agreement — so direct, signed requests are the
//! simplest transport with a clear failure signal (a refused or timed-out request).
//!
//! # What a chosen node does
//! [`Preheater::start_job`] queues a job (bounded: `preheat.max_concurrent` running, 4× that
//! waiting, then 503). The job reads the manifest (and, for an index, the platform's manifest),
//! the config and the layers from the node's OWN front end (`http.addr`) — the exact path a
//! containerd pull takes, so a blob comes from the local store, a peer, the swarm or, once for
//! the cluster, the registry — at most `preheat.rate` bytes/s for all preheats together, and
//! writes each blob into containerd through its content API under a lease that expires after
//! `preheat.lease_ttl` ([`containerd_write`]). Blobs containerd already holds are only added to
//! the lease. Then the digests are provided in the DHT like any other content.

pub mod cli;
pub mod containerd_write;

use crate::config::PreheatConfig;
use crate::events::{Emit, Event, Reason};
use crate::oci::{media, Digest};
use crate::peer::client::PeerClient;
use crate::routing::{Peer, Router};
use containerd_write::{ContainerdWriter, WriteError};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Preheats by `outcome`: requested (per image, on the requester), done, failed (per node job).
pub const PREHEATS: &str = "peerd_preheats_total";
/// Bytes written into containerd by preheats.
pub const PREHEAT_BYTES: &str = "peerd_preheat_bytes_total";
/// Duration of preheat jobs on this node, by `outcome`.
pub const PREHEAT_SECONDS: &str = "peerd_preheat_duration_seconds";

pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(PREHEATS, "Preheats by outcome (requested: images asked for here; done, failed: jobs here)");
    describe_counter!(PREHEAT_BYTES, Unit::Bytes, "Bytes preheats wrote into containerd");
    describe_histogram!(PREHEAT_SECONDS, Unit::Seconds, "Duration of preheat jobs on this node by outcome");
}

/// Most nodes a listing returns.
pub const MAX_NODES: usize = 100_000;
/// How long the requester collects nodes.
const NODES_WAIT: Duration = Duration::from_secs(2);
/// Timeout of one control request to a peer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before asking an unreachable node again.
const RETRY_AFTER: Duration = Duration::from_millis(300);
/// Largest control answer.
const CONTROL_LIMIT: u64 = 64 << 10;
/// Largest `POST /preheat` body.
pub const MAX_BODY: usize = 16 << 10;
/// Longest image reference.
const MAX_REF_LEN: usize = 512;
/// Longest lease label value written (containerd refuses values over 4096 bytes).
const MAX_LABEL: usize = 1024;
/// Finished jobs and requests remembered (for progress queries and the debug page).
const KEEP_FINISHED: usize = 64;
/// The lease of job `id`.
pub fn lease_id(id: &str) -> String {
    format!("peerd-preheat-{id}")
}

#[derive(Debug, thiserror::Error)]
pub enum PreheatError {
    #[error("{image:?}: {reason}")]
    BadImage { image: String, reason: String },
    #[error("{image:?}: registry {registry} is not mirrored by this cluster (registry.hosts: {hosts})")]
    NotMirrored { image: String, registry: String, hosts: String },
    #[error("platform {0:?}: expected os/arch or os/arch/variant, e.g. linux/amd64")]
    BadPlatform(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("preheat is disabled on this node (preheat.enabled)")]
    Disabled,
    #[error("this node runs and queues {0} preheats already; try later")]
    Busy(usize),
    #[error("no preheat {0} here")]
    Unknown(String),
    #[error("{image}: {reason}")]
    Resolve { image: String, reason: String },
    #[error("{image}: no manifest for platform {platform} in the index")]
    NoPlatform { image: String, platform: String },
    #[error("{digest}: {reason}")]
    Source { digest: String, reason: String },
    #[error("containerd: {0}")]
    Containerd(#[from] WriteError),
    #[error("still running after {0:?} (preheat.timeout)")]
    Timeout(Duration),
}

/// An image reference `host[:port]/repo[:tag][@digest]` (`docker.io` for a name without host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repo: String,
    /// A tag or a digest.
    pub reference: String,
}

impl ImageRef {
    pub fn parse(s: &str, default_ns: &str) -> Result<ImageRef, PreheatError> {
        let bad = |reason: &str| PreheatError::BadImage { image: clip(s, 80), reason: reason.into() };
        if s.is_empty() || s.len() > MAX_REF_LEN {
            return Err(bad("empty or too long"));
        }
        let (name, reference) = match s.split_once('@') {
            Some((n, d)) => {
                d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?;
                (n, d.to_owned())
            }
            None => match s.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                Some((n, t)) => {
                    crate::oci::validate_tag(t).map_err(|e| bad(&e.to_string()))?;
                    (n, t.to_owned())
                }
                None => (s, "latest".to_owned()),
            },
        };
        // With a digest, a tag before it is informational only.
        let name = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') && reference.contains(':') && s.contains('@') => n,
            _ => name,
        };
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_owned(), r.to_owned()),
            _ => (default_ns.to_owned(), name.to_owned()),
        };
        let repo = if matches!(host.as_str(), "docker.io" | "index.docker.io") && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        let registry = crate::oci::parse_ns(Some(&host), "").map_err(|e| bad(&e.to_string()))?;
        crate::oci::validate_repository(&repo).map_err(|e| bad(&e.to_string()))?;
        Ok(ImageRef { registry: registry.name().to_owned(), repo, reference })
    }

    /// The same image pinned to `digest`.
    pub fn pinned(&self, digest: &Digest) -> ImageRef {
        ImageRef { reference: digest.to_string(), ..self.clone() }
    }

    fn ns(&self) -> String {
        url::form_urlencoded::byte_serialize(self.registry.as_bytes()).collect()
    }
    pub fn manifest_path(&self, reference: &str) -> String {
        format!("/v2/{}/manifests/{reference}?ns={}", self.repo, self.ns())
    }
    pub fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{digest}?ns={}", self.repo, self.ns())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.contains(':') { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.registry, self.repo, self.reference)
    }
}

/// `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Platform, PreheatError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant: Some(v.to_string()) })
            }
            _ => Err(PreheatError::BadPlatform(clip(s, 64))),
        }
    }

    /// This node's platform, in OCI words.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform { os: std::env::consts::OS.into(), arch: arch.into(), variant: None }
    }

    fn matches(&self, p: &serde_json::Value) -> bool {
        p["os"].as_str() == Some(&self.os)
            && p["architecture"].as_str() == Some(&self.arch)
            && self.variant.as_deref().is_none_or(|v| p["variant"].as_str() == Some(v))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// `POST /preheat` on the front end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatRequest {
    pub images: Vec<String>,
    #[serde(default)]
    pub platform: Option<String>,
    /// Nodes per image (default 1 unless `all`).
    #[serde(default)]
    pub copies: Option<usize>,
    #[serde(default)]
    pub all: bool,
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

/// One node's progress on one request (the answer of `GET /preheat/<id>` on the peer listener,
/// and one entry of the requester's answer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeProgress {
    pub node: String,
    pub addr: String,
    pub state: JobState,
    pub images: Vec<String>,
    pub bytes: u64,
    pub total: u64,
    pub error: Option<String>,
    pub seconds: f64,
}

/// The requester's answer: the request and every chosen node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestProgress {
    pub id: String,
    pub nodes: Vec<NodeProgress>,
    /// Every node finished (done or failed).
    pub finished: bool,
    pub failed: usize,
}

/// A job on this node.
pub struct Job {
    pub id: String,
    pub images: Vec<String>,
    platform: Platform,
    started: Instant,
    bytes: AtomicU64,
    total: AtomicU64,
    state: Mutex<(JobState, Option<String>, Option<Duration>)>,
}

impl Job {
    pub fn progress(&self, node: &str, addr: &str) -> NodeProgress {
        let (state, error, took) = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        NodeProgress {
            node: node.into(),
            addr: addr.into(),
            state,
            images: self.images.clone(),
            bytes: self.bytes.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            error,
            seconds: took.unwrap_or_else(|| self.started.elapsed()).as_secs_f64(),
        }
    }
    fn set(&self, state: JobState, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let took = state.finished().then(|| self.started.elapsed());
        *s = (state, error, took);
    }
    pub fn state(&self) -> JobState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

/// A target of a request made here.
#[derive(Clone, Debug)]
struct Target {
    node: String,
    addr: SocketAddr,
    images: Vec<String>,
    /// The node refused or could not be asked.
    refused: Option<String>,
    /// Its last answer once finished (done or failed): kept, so a node that goes away after it
    /// finished is not reported failed.
    finished: Option<NodeProgress>,
}

/// What the node's other parts give the preheater.
pub struct PreheatParts {
    pub cfg: PreheatConfig,
    /// `registry.hosts` (empty: any).
    pub mirrored: Vec<String>,
    pub default_ns: String,
    pub max_manifest: u64,
    /// The node's own front end, e.g. `http://127.0.0.1:5000`.
    pub front: String,
    pub writer: Option<ContainerdWriter>,
    pub router: Option<Arc<dyn Router>>,
    pub client: Option<Arc<PeerClient>>,
    /// This node's peer id and peer listener.
    pub me: String,
    pub my_addr: SocketAddr,
    pub events: Option<actix::Recipient<Emit>>,
}

type Limiter = governor::DefaultDirectRateLimiter;

/// The preheat service of one node: requester and target.
pub struct Preheater {
    p: PreheatParts,
    http: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
    limiter: Option<Arc<Limiter>>,
    jobs: Mutex<VecDeque<Arc<Job>>>,
    requests: Mutex<VecDeque<(String, Vec<Target>)>>,
}

impl Preheater {
    pub fn new(p: PreheatParts) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(containerd_write::STEP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("peerd-preheat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("preheat HTTP client: {e}"))?;
        // Cells of 1 KiB, bursts of 1 MiB (or a second's worth).
        let burst = NonZeroU32::new(1024).expect("non-zero");
        let limiter = NonZeroU32::new(u32::try_from(p.cfg.rate / 1024).unwrap_or(u32::MAX)).map(|rate| {
            Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(rate.max(burst))))
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(p.cfg.max_concurrent.max(1)));
        Ok(Arc::new(Preheater { p, http, slots, limiter, jobs: Mutex::default(), requests: Mutex::default() }))
    }

    /// Announce this node as a preheat target (call once the router runs).
    pub async fn announce(&self) {
        if let (Some(r), true) = (&self.p.router, self.p.cfg.enabled) {
            if let Err(e) = crate::routing::members::announce(r.as_ref(), &self.p.me).await {
                tracing::warn!(error = %e, "cannot announce this node for preheats");
            }
        }
    }

    fn check_mirrored(&self, image: &str, r: &ImageRef) -> Result<(), PreheatError> {
        if self.p.mirrored.is_empty() || self.p.mirrored.iter().any(|h| h.eq_ignore_ascii_case(&r.registry)) {
            return Ok(());
        }
        Err(PreheatError::NotMirrored {
            image: clip(image, 80),
            registry: r.registry.clone(),
            hosts: self.p.mirrored.join(", "),
        })
    }

    /// Parse and check a request (no I/O): images, platform, copies.
    pub fn check(&self, req: &PreheatRequest) -> Result<(Vec<ImageRef>, Platform), PreheatError> {
        if req.images.is_empty() {
            return Err(PreheatError::BadRequest("no image given".into()));
        }
        if req.images.len() > self.p.cfg.max_images {
            return Err(PreheatError::BadRequest(format!(
                "{} images; at most {} per request (preheat.max_images)",
                req.images.len(),
                self.p.cfg.max_images
            )));
        }
        if req.all && req.copies.is_some() {
            return Err(PreheatError::BadRequest("give copies or all, not both".into()));
        }
        if req.copies == Some(0) {
            return Err(PreheatError::BadRequest("copies must be at least 1".into()));
        }
        let platform = match &req.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let mut refs = Vec::new();
        for i in &req.images {
            let r = ImageRef::parse(i, &self.p.default_ns)?;
            self.check_mirrored(i, &r)?;
            refs.push(r);
        }
        Ok((refs, platform))
    }

    /// Resolve `image` to its manifest digest through this node's front end.
    async fn digest_of(&self, image: &ImageRef) -> Result<Digest, PreheatError> {
        if let Ok(d) = image.reference.parse::<Digest>() {
            return Ok(d);
        }
        let url = format!("{}{}", self.p.front, image.manifest_path(&image.reference));
        let fail = |reason: String| PreheatError::Resolve { image: image.to_string(), reason };
        let resp = self
            .http
            .head(url)
            .header("accept", media::ACCEPT_MANIFESTS)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("the mirror answered {} for the manifest", resp.status())));
        }
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| fail("the mirror gave no Docker-Content-Digest".into()))
    }

    /// The nodes a request may go to: this one and every member the DHT lists
    /// ([`crate::routing::members`]).
    async fn nodes(&self) -> Vec<Peer> {
        let mut nodes = vec![Peer { id: self.p.me.clone(), addr: self.p.my_addr }];
        if let Some(r) = &self.p.router {
            let listing = crate::routing::members::list(r.as_ref(), NODES_WAIT, MAX_NODES).await;
            if listing.truncated > 0 {
                tracing::warn!(
                    shards = listing.truncated,
                    "the node listing may be incomplete (full shards at the deepest level)"
                );
            }
            tracing::debug!(nodes = listing.peers.len(), lookups = listing.lookups, "listed the nodes");
            nodes.extend(listing.peers.into_iter().filter(|p| p.id != self.p.me));
        }
        nodes
    }

    /// Handle `POST /preheat` (the requester's side): choose, ask, remember. Returns the id.
    pub async fn request(self: &Arc<Self>, req: PreheatRequest) -> Result<RequestProgress, PreheatError> {
        let (refs, platform) = self.check(&req)?;
        let mut pinned = Vec::new();
        for r in &refs {
            let d = self.digest_of(r).await?;
            pinned.push((r.pinned(&d), d));
            metrics::counter!(PREHEATS, "outcome" => "requested").increment(1);
        }
        let nodes = self.nodes().await;
        let copies = if req.all { nodes.len() } else { req.copies.unwrap_or(1) };
        // node id → images for it, in the order of the nodes.
        let mut per_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (image, digest) in &pinned {
            for id in choose(&digest.to_string(), nodes.iter().map(|n| n.id.as_str()), copies) {
                let i = nodes.iter().position(|n| n.id == id).expect("chosen from nodes");
                per_node.entry(i).or_default().push(image.to_string());
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        // Every chosen node is asked at once.
        let asks = per_node.into_iter().map(|(i, images)| {
            let (node, id, platform) = (&nodes[i], &id, &platform);
            async move {
                let refused = if node.id == self.p.me {
                    self.start_job(id, &images, platform).err().map(|e| e.to_string())
                } else {
                    self.ask(node.addr, id, &images, platform).await.err()
                };
                if let Some(e) = &refused {
                    tracing::warn!(node = %node.id, error = %e, "preheat refused or not delivered");
                }
                Target { node: node.id.clone(), addr: node.addr, images, refused, finished: None }
            }
        });
        let targets = futures_util::future::join_all(asks).await;
        tracing::info!(id, images = ?req.images, nodes = targets.len(), %platform, "preheat requested");
        remember(&self.requests, (id.clone(), targets));
        Ok(self.progress(&id).await.expect("just remembered"))
    }

    /// Ask `addr` to run job `id`.
    async fn ask(&self, addr: SocketAddr, id: &str, images: &[String], platform: &Platform) -> Result<(), String> {
        let client = self.p.client.as_ref().ok_or("p2p is off")?;
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for i in images {
            q.append_pair("image", i);
        }
        q.append_pair("platform", &platform.to_string());
        let target = format!("/preheat/{id}?{}", q.finish());
        match client.control(addr, reqwest::Method::POST, &target, CONTROL_TIMEOUT, CONTROL_LIMIT).await {
            Ok((202 | 200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("node answered {status}: {}", error_message(&body))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Progress of request `id` made here (None: unknown). The chosen nodes are asked at once.
    pub async fn progress(&self, id: &str) -> Option<RequestProgress> {
        let targets = {
            let r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            r.iter().find(|(i, _)| i == id)?.1.clone()
        };
        let nodes = futures_util::future::join_all(targets.iter().map(|t| self.node_progress(t, id))).await;
        // Remember who finished.
        {
            let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, stored)) = r.iter_mut().find(|(i, _)| i == id) {
                for (t, p) in stored.iter_mut().zip(&nodes) {
                    if p.state.finished() && t.finished.is_none() {
                        t.finished = Some(p.clone());
                    }
                }
            }
        }
        let failed = nodes.iter().filter(|n| n.state == JobState::Failed).count();
        let finished = nodes.iter().all(|n| n.state.finished());
        Some(RequestProgress { id: id.into(), nodes, finished, failed })
    }

    /// One chosen node's progress: its final answer, this node's own job, or the node asked
    /// (a node is reported failed only when it misses two questions in a row).
    async fn node_progress(&self, t: &Target, id: &str) -> NodeProgress {
        let addr = t.addr.to_string();
        let failed = |e: String| NodeProgress {
            node: t.node.clone(),
            addr: addr.clone(),
            state: JobState::Failed,
            images: t.images.clone(),
            bytes: 0,
            total: 0,
            error: Some(e),
            seconds: 0.0,
        };
        if let Some(p) = &t.finished {
            return p.clone();
        }
        if let Some(e) = &t.refused {
            return failed(e.clone());
        }
        if t.node == self.p.me {
            return match self.job(id) {
                Some(j) => j.progress(&t.node, &addr),
                None => failed("the job is no longer known".into()),
            };
        }
        let answer = match self.remote_progress(t, id).await {
            Ok(p) => Ok(p),
            Err(_) => {
                tokio::time::sleep(RETRY_AFTER).await;
                self.remote_progress(t, id).await
            }
        };
        answer.unwrap_or_else(|e| failed(format!("node unreachable: {e}")))
    }

    async fn remote_progress(&self, t: &Target, id: &str) -> Result<NodeProgress, String> {
        let client = self.p.client.as_ref().ok_or("p2p is off")?;
        let (status, body) = client
            .control(t.addr, reqwest::Method::GET, &format!("/preheat/{id}"), CONTROL_TIMEOUT, CONTROL_LIMIT)
            .await
            .map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("answered {status}"));
        }
        let mut p: NodeProgress = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        p.node = t.node.clone();
        p.addr = t.addr.to_string();
        Ok(p)
    }

    /// A job of this node.
    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|j| j.id == id).cloned()
    }

    /// Jobs of this node, newest first (the debug page).
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }

    pub fn me(&self) -> (&str, SocketAddr) {
        (&self.p.me, self.p.my_addr)
    }

    /// Parse a job request from the peer listener's query (`image=..&image=..&platform=..`).
    pub fn parse_job_query(&self, query: &str) -> Result<(Vec<String>, Platform), PreheatError> {
        let mut images = Vec::new();
        let mut platform = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "image" => images.push(v.into_owned()),
                "platform" => platform = Some(Platform::parse(&v)?),
                other => return Err(PreheatError::BadRequest(format!("unknown parameter {:?}", clip(other, 32)))),
            }
        }
        let req = PreheatRequest { images, platform: platform.as_ref().map(|p| p.to_string()), ..Default::default() };
        let (refs, platform) = self.check(&req)?;
        if let Some(r) = refs.iter().find(|r| r.reference.parse::<Digest>().is_err()) {
            return Err(PreheatError::BadImage { image: r.to_string(), reason: "a job names images by digest".into() });
        }
        Ok((refs.iter().map(|r| r.to_string()).collect(), platform))
    }

    /// Start job `id` here (idempotent for a known id).
    pub fn start_job(
        self: &Arc<Self>,
        id: &str,
        images: &[String],
        platform: &Platform,
    ) -> Result<Arc<Job>, PreheatError> {
        if !self.p.cfg.enabled || self.p.writer.is_none() {
            return Err(PreheatError::Disabled);
        }
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PreheatError::BadRequest("bad preheat id".into()));
        }
        let job = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(j) = jobs.iter().find(|j| j.id == id) {
                return Ok(j.clone());
            }
            let active = jobs.iter().filter(|j| !j.state().finished()).count();
            let cap = self.p.cfg.max_concurrent * 5;
            if active >= cap {
                return Err(PreheatError::Busy(cap));
            }
            let job = Arc::new(Job {
                id: id.into(),
                images: images.to_vec(),
                platform: platform.clone(),
                started: Instant::now(),
                bytes: AtomicU64::new(0),
                total: AtomicU64::new(0),
                state: Mutex::new((JobState::Queued, None, None)),
            });
            jobs.push_back(job.clone());
            // Forget the oldest finished jobs beyond the bound (running ones are bounded by cap).
            while jobs.len() > KEEP_FINISHED + cap {
                match jobs.iter().position(|j| j.state().finished()) {
                    Some(i) => drop(jobs.remove(i)),
                    None => break,
                }
            }
            job
        };
        let me = self.clone();
        let j = job.clone();
        tokio::spawn(async move { me.run(j).await });
        Ok(job)
    }

    async fn run(self: Arc<Self>, job: Arc<Job>) {
        let Ok(_slot) = self.slots.clone().acquire_owned().await else { return };
        job.set(JobState::Running, None);
        tracing::info!(id = job.id, images = ?job.images, "preheat started");
        let work = async {
            let lease = lease_id(&job.id);
            let writer = self.p.writer.as_ref().ok_or(PreheatError::Disabled)?;
            writer
                .lease(
                    &lease,
                    self.p.cfg.lease_ttl,
                    SystemTime::now(),
                    &[("peerd.io/preheat", &clip(&job.images.join(" "), MAX_LABEL))],
                )
                .await?;
            let mut keys = Vec::new();
            for image in &job.images {
                let r = ImageRef::parse(image, &self.p.default_ns)?;
                keys.extend(self.preheat_image(&job, &lease, &r).await?);
            }
            Ok::<_, PreheatError>(keys)
        };
        let outcome = match tokio::time::timeout(self.p.cfg.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(PreheatError::Timeout(self.p.cfg.timeout)),
        };
        let secs = job.started.elapsed().as_secs_f64();
        let (reason, label) = match outcome {
            Ok(keys) => {
                job.set(JobState::Done, None);
                if let Some(r) = &self.p.router {
                    if let Err(e) = r.provide(keys).await {
                        tracing::warn!(error = %e, "cannot advertise preheated content");
                    }
                }
                tracing::info!(id = job.id, seconds = secs, bytes = job.bytes.load(Ordering::Relaxed), "preheat done");
                (Reason::P2PPreheat, "done")
            }
            Err(e) => {
                tracing::warn!(id = job.id, error = %e, "preheat failed");
                job.set(JobState::Failed, Some(e.to_string()));
                (Reason::P2PPreheatFailed, "failed")
            }
        };
        metrics::counter!(PREHEATS, "outcome" => label).increment(1);
        metrics::histogram!(PREHEAT_SECONDS, "outcome" => label).record(secs);
        if let Some(ev) = &self.p.events {
            let message = match label {
                "done" => format!("preheated {} in {secs:.1}s", job.images.join(", ")),
                _ => format!(
                    "preheat of {} failed: {}",
                    job.images.join(", "),
                    job.progress("", "").error.unwrap_or_default()
                ),
            };
            crate::events::report(ev, Event { reason, message });
        }
    }

    /// GET a manifest (by digest) through the front end, checked against `digest`.
    async fn manifest(&self, image: &ImageRef, digest: &Digest) -> Result<bytes::Bytes, PreheatError> {
        let fail = |reason: String| PreheatError::Source { digest: digest.to_string(), reason };
        let url = format!("{}{}", self.p.front, image.manifest_path(&digest.to_string()));
        let resp = self
            .http
            .get(url)
            .header("accept", media::ACCEPT_MANIFESTS)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("the mirror answered {}", resp.status())));
        }
        let body = resp.bytes_stream().map(|r| r.map_err(std::io::Error::other));
        let body =
            crate::stream::collect(Box::pin(body), self.p.max_manifest).await.map_err(|e| fail(e.to_string()))?;
        if Digest::compute(digest.algorithm(), &body) != *digest {
            return Err(fail("manifest digest mismatch".into()));
        }
        Ok(body)
    }

    /// One image: manifests, config and layers into containerd. Returns the digests written.
    async fn preheat_image(&self, job: &Job, lease: &str, image: &ImageRef) -> Result<Vec<String>, PreheatError> {
        let top: Digest = image.reference.parse().map_err(|_| PreheatError::BadImage {
            image: image.to_string(),
            reason: "not pinned to a digest".into(),
        })?;
        let source = (format!("containerd.io/distribution.source.{}", image.registry), image.repo.clone());
        let mut keys = Vec::new();
        let body = self.manifest(image, &top).await?;
        let mut manifests = vec![(top.clone(), body)];
        let mut index_children = Vec::new();
        let doc: serde_json::Value = serde_json::from_slice(&manifests[0].1)
            .map_err(|e| PreheatError::Source { digest: top.to_string(), reason: e.to_string() })?;
        let is_index = matches!(
            media::sniff_manifest(&manifests[0].1).as_deref(),
            Some(media::OCI_INDEX | media::DOCKER_MANIFEST_LIST)
        );
        let manifest_doc = if is_index {
            let chosen = doc["manifests"]
                .as_array()
                .and_then(|m| m.iter().find(|m| job.platform.matches(&m["platform"])))
                .and_then(|m| m["digest"].as_str())
                .and_then(|d| d.parse::<Digest>().ok())
                .ok_or_else(|| PreheatError::NoPlatform {
                    image: image.to_string(),
                    platform: job.platform.to_string(),
                })?;
            let body = self.manifest(image, &chosen).await?;
            index_children.push(chosen.clone());
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| PreheatError::Source { digest: chosen.to_string(), reason: e.to_string() })?;
            manifests.insert(0, (chosen, body));
            doc
        } else {
            doc
        };
        // config, then layers.
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        for d in std::iter::once(&manifest_doc["config"]).chain(manifest_doc["layers"].as_array().into_iter().flatten())
        {
            let (Some(digest), Some(size)) = (d["digest"].as_str().and_then(|s| s.parse().ok()), d["size"].as_u64())
            else {
                return Err(PreheatError::Source {
                    digest: manifests[0].0.to_string(),
                    reason: "a descriptor without digest or size".into(),
                });
            };
            blobs.push((digest, size));
        }
        job.total.fetch_add(blobs.iter().map(|(_, s)| s).sum::<u64>(), Ordering::Relaxed);
        let writer = self.p.writer.as_ref().ok_or(PreheatError::Disabled)?;
        for (digest, size) in &blobs {
            if writer.size(digest).await? == Some(*size) {
                writer.keep(lease, digest).await?;
                job.bytes.fetch_add(*size, Ordering::Relaxed);
            } else {
                self.copy_blob(job, lease, image, digest, *size, &source).await?;
            }
            keys.push(digest.to_string());
        }
        // Manifests last (children before parents), with gc references to their children so an
        // image record made by a later pull keeps everything once the lease expires.
        for (i, (digest, body)) in manifests.iter().enumerate() {
            let mut labels = HashMap::from([source.clone()]);
            if i == 0 {
                labels.insert("containerd.io/gc.ref.content.config".into(), blobs[0].0.to_string());
                for (n, (d, _)) in blobs.iter().skip(1).enumerate() {
                    labels.insert(format!("containerd.io/gc.ref.content.l.{n}"), d.to_string());
                }
            } else {
                for (n, d) in index_children.iter().enumerate() {
                    labels.insert(format!("containerd.io/gc.ref.content.m.{n}"), d.to_string());
                }
            }
            if writer.size(digest).await? == Some(body.len() as u64) {
                writer.keep(lease, digest).await?;
            } else {
                let stream: crate::stream::ByteStream = Box::pin(futures_util::stream::once({
                    let b = body.clone();
                    async move { Ok(b) }
                }));
                writer.write(lease, digest, body.len() as u64, labels, stream, |_| {}).await?;
            }
            keys.push(digest.to_string());
        }
        Ok(keys)
    }

    /// Stream one blob from the front end into containerd, at the preheat rate.
    async fn copy_blob(
        &self,
        job: &Job,
        lease: &str,
        image: &ImageRef,
        digest: &Digest,
        size: u64,
        source: &(String, String),
    ) -> Result<(), PreheatError> {
        let fail = |reason: String| PreheatError::Source { digest: digest.to_string(), reason };
        let url = format!("{}{}", self.p.front, image.blob_path(digest));
        let resp = self.http.get(url).send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("the mirror answered {}", resp.status())));
        }
        let limiter = self.limiter.clone();
        let body = resp.bytes_stream().then(move |r| {
            let limiter = limiter.clone();
            async move {
                let b = r.map_err(std::io::Error::other)?;
                if let (Some(l), Some(n)) =
                    (limiter.as_deref(), NonZeroU32::new(u32::try_from(b.len().div_ceil(1024)).unwrap_or(u32::MAX)))
                {
                    let _ = l.until_n_ready(n).await;
                }
                Ok(b)
            }
        });
        let body: crate::stream::ByteStream = Box::pin(body);
        let counter = metrics::counter!(PREHEAT_BYTES);
        let labels = HashMap::from([source.clone()]);
        let writer = self.p.writer.as_ref().ok_or(PreheatError::Disabled)?;
        writer
            .write(lease, digest, size, labels, body, |n| {
                job.bytes.fetch_add(n, Ordering::Relaxed);
                counter.increment(n);
            })
            .await?;
        Ok(())
    }
}

/// The `n` of `candidates` with the highest rendezvous score for `key` (all when fewer), in
/// score order. Calls [`crate::swarm::owner`] once per pick, so the scoring is the swarm's.
pub fn choose<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>, n: usize) -> Vec<&'a str> {
    let mut left: Vec<&str> = candidates.into_iter().collect();
    let mut out = Vec::new();
    while out.len() < n {
        let Some(best) = crate::swarm::owner(key, 0, left.iter().copied()) else { break };
        left.retain(|c| *c != best);
        out.push(best);
    }
    out
}

/// `s` cut to at most `max` bytes on a character boundary (for messages and labels).
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The message of an OCI error body (or the body itself, clipped).
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| clip(String::from_utf8_lossy(body).trim(), 256))
}

fn remember<T>(q: &Mutex<VecDeque<T>>, item: T) {
    let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
    q.push_back(item);
    while q.len() > KEEP_FINISHED {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let p = |s: &str| ImageRef::parse(s, "docker.io");
        let r = p("127.0.0.1:5000/test/app:v1").unwrap();
        assert_eq!((r.registry.as_str(), r.repo.as_str(), r.reference.as_str()), ("127.0.0.1:5000", "test/app", "v1"));
        assert_eq!(r.manifest_path("v1"), "/v2/test/app/manifests/v1?ns=127.0.0.1%3A5000");
        assert_eq!(r.to_string(), "127.0.0.1:5000/test/app:v1");
        let r = p("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repo.as_str(), r.reference.as_str()),
            ("docker.io", "library/busybox", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("ghcr.io/o/app:v2@{d}")).unwrap();
        assert_eq!((r.registry.as_str(), r.repo.as_str(), r.reference.as_str()), ("ghcr.io", "o/app", d.as_str()));
        assert_eq!(r.to_string(), format!("ghcr.io/o/app@{d}"));
        for bad in ["", "a/B:v1", "x.io/app:-v", "x.io/app@sha256:12", "x.io/app:v1 ; rm"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.matches(&serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})));
        assert!(!p.matches(&serde_json::json!({"os": "linux", "architecture": "amd64"})));
    }

    #[test]
    fn choice_is_stable_spread_and_bounded() {
        let ids: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
        let c = |key: &str, n| choose(key, ids.iter().map(String::as_str), n);
        assert_eq!(c("sha256:a", 3), c("sha256:a", 3), "stable");
        assert_eq!(c("sha256:a", 2), c("sha256:a", 3)[..2], "a prefix: more copies only add nodes");
        assert_eq!(c("sha256:a", 3).len(), 3);
        assert_eq!(c("sha256:a", 30).len(), 10, "never more than the candidates");
        // The order of the candidates does not matter.
        let rev: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
        assert_eq!(choose("sha256:a", rev, 3), c("sha256:a", 3));
        // Different keys spread over different nodes.
        let firsts: std::collections::HashSet<&str> = (0..50).map(|k| c(&format!("sha256:{k}"), 1)[0]).collect();
        assert!(firsts.len() >= 5, "{firsts:?}");
    }

    fn preheater(mirrored: &[&str]) -> Arc<Preheater> {
        preheater_with(mirrored, None, 2)
    }

    fn preheater_with(mirrored: &[&str], writer: Option<ContainerdWriter>, max_concurrent: usize) -> Arc<Preheater> {
        let mut cfg = crate::config::Config::load(None, Vec::new(), vec![]).unwrap();
        cfg.preheat.max_concurrent = max_concurrent;
        Preheater::new(PreheatParts {
            cfg: cfg.preheat,
            mirrored: mirrored.iter().map(|s| s.to_string()).collect(),
            default_ns: "docker.io".into(),
            max_manifest: 4 << 20,
            front: "http://127.0.0.1:1".into(),
            writer,
            router: None,
            client: None,
            me: "me".into(),
            my_addr: "127.0.0.1:1".parse().unwrap(),
            events: None,
        })
        .unwrap()
    }

    #[test]
    fn requests_are_checked() {
        let p = preheater(&["127.0.0.1:5000"]);
        let req = |images: &[&str]| PreheatRequest {
            images: images.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(p.check(&req(&["127.0.0.1:5000/a:v1"])).is_ok());
        let e = p.check(&req(&["ghcr.io/a:v1"])).unwrap_err();
        assert!(matches!(e, PreheatError::NotMirrored { .. }), "{e}");
        assert!(matches!(p.check(&req(&[])).unwrap_err(), PreheatError::BadRequest(_)));
        let many: Vec<String> = (0..17).map(|i| format!("127.0.0.1:5000/a:v{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(p.check(&req(&many)).unwrap_err().to_string().contains("at most 16"));
        let both = PreheatRequest { copies: Some(2), all: true, ..req(&["127.0.0.1:5000/a:v1"]) };
        assert!(matches!(p.check(&both).unwrap_err(), PreheatError::BadRequest(_)));
        assert!(preheater(&[]).check(&req(&["ghcr.io/a:v1"])).is_ok(), "no hosts: every registry is mirrored");
        // A job names images by digest only, with known parameters.
        assert!(p.parse_job_query("image=127.0.0.1%3A5000%2Fa%3Av1").is_err());
        assert!(p.parse_job_query("evil=1").is_err());
        let d = format!("sha256:{}", "b".repeat(64));
        let q = format!("image=127.0.0.1%3A5000%2Fa%40{d}&platform=linux%2Farm64");
        let (images, platform) = p.parse_job_query(&q).unwrap();
        assert_eq!(images, vec![format!("127.0.0.1:5000/a@{d}")]);
        assert_eq!(platform.arch, "arm64");
    }

    /// Jobs beyond 5 × `max_concurrent` (running and queued) are refused; the same id twice is
    /// one job; without a writer (preheat off) nothing is accepted. On a current-thread runtime
    /// the spawned jobs do not run before the test yields, so the count is exact.
    #[tokio::test(flavor = "current_thread")]
    async fn jobs_are_bounded_and_idempotent() {
        let platform = Platform::host();
        let off = preheater(&[]);
        assert!(matches!(off.start_job("a", &[], &platform), Err(PreheatError::Disabled)));
        let writer =
            ContainerdWriter::new("/nonexistent/containerd.sock".into(), "k8s.io".into(), Duration::from_millis(100))
                .unwrap();
        let p = preheater_with(&[], Some(writer), 1);
        let images = vec![format!("127.0.0.1:5000/a@sha256:{}", "c".repeat(64))];
        for i in 0..5 {
            p.start_job(&format!("job{i}"), &images, &platform).unwrap();
        }
        let again = p.start_job("job0", &images, &platform).unwrap();
        assert!(Arc::ptr_eq(&again, &p.job("job0").unwrap()), "the same id is the same job");
        assert!(matches!(p.start_job("job5", &images, &platform), Err(PreheatError::Busy(5))));
        assert!(matches!(p.start_job("bad id/..", &images, &platform), Err(PreheatError::BadRequest(_))));
        // Once they ran (and failed: no containerd), there is room again, and each failure says why.
        for _ in 0..200 {
            if p.jobs().iter().all(|j| j.state().finished()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let j = p.job("job0").unwrap().progress("n", "a");
        assert_eq!(j.state, JobState::Failed);
        assert!(j.error.unwrap().contains("containerd"));
        assert!(p.start_job("job5", &images, &platform).is_ok());
    }
}
