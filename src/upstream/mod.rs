//! The upstream registry: where content comes from when no local store or peer has it.
//! [`Upstream`] is the boundary; [`http::HttpUpstream`] talks to real registries and
//! [`memory::MemoryUpstream`] backs unit tests. Policy (which hosts, back-off) lives in
//! [`crate::actors::upstream::UpstreamActor`], not here.

pub mod auth;
pub mod conformance;
pub mod http;
pub mod memory;
pub mod policy;

use crate::oci::Registry;
use crate::range::ByteRange;
use crate::stream::ByteStream;
use async_trait::async_trait;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Manifest,
    Blob,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Manifest => "manifests",
            Kind::Blob => "blobs",
        }
    }
}

/// One request to an upstream registry, built from a client's request.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub registry: Registry,
    pub repository: String,
    pub kind: Kind,
    /// A tag or a digest string.
    pub reference: String,
    pub head: bool,
    /// The client's `Accept` header (manifests).
    pub accept: Option<String>,
    /// The client's `Authorization` header, forwarded as is when present.
    pub authorization: Option<String>,
    /// An absolute byte range (suffix ranges are resolved before asking upstream).
    pub range: Option<ByteRange>,
}

/// A successful (2xx) upstream answer. The body streams straight to the client.
pub struct UpstreamResponse {
    /// 200, or 206 when the upstream honoured `range`.
    pub status: u16,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// `Docker-Content-Digest` as the upstream sent it.
    pub digest: Option<String>,
    pub body: ByteStream,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("content_length", &self.content_length)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("registry {0} is not mirrored by this node")]
    NotMirrored(String),
    #[error("upstream {host} unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("upstream {host} timed out")]
    Timeout { host: String },
    #[error("upstream {host} is failing; not retried for {retry_in_ms} ms")]
    CircuitOpen { host: String, retry_in_ms: u64 },
    /// The upstream answered with a non-success status (after the token flow).
    #[error("upstream answered {status}")]
    Status { status: u16, www_authenticate: Option<String> },
    #[error("upstream sent an invalid response: {0}")]
    Protocol(String),
    /// The address policy refused the connection (a redirect or token realm to a metadata,
    /// link-local or unconfigured loopback address). Says nothing about the upstream's health.
    #[error("upstream {host} refused by the address policy: {reason}")]
    Forbidden { host: String, reason: String },
}

impl UpstreamError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::NotMirrored(_) => "not_mirrored",
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::CircuitOpen { .. } => "circuit_open",
            UpstreamError::Status { status, .. } if *status == 404 => "not_found",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Forbidden { .. } => "forbidden",
        }
    }
    /// What this failure says about the host's health (what the circuit breaker counts).
    ///
    /// Only failures a client cannot choose say the host is unhealthy: it could not be reached,
    /// it timed out, or a gateway in front of it said the backend is down (502/503/504). A 4xx
    /// is a healthy host refusing one request; a 500 is what distribution answers for a
    /// reference it cannot parse as a manifest (e.g. a manifest GET by a layer's digest), so
    /// any client could send it at will: it says nothing either way.
    pub fn health(&self) -> Health {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => Health::Unhealthy,
            UpstreamError::Status { status: 502..=504, .. } => Health::Unhealthy,
            // 429: the host works but throttles; resting it would only add to the outage.
            UpstreamError::Status { status: 429, .. } => Health::Unknown,
            UpstreamError::Status { status: 400..=499, .. } => Health::Healthy,
            UpstreamError::Status { .. }
            | UpstreamError::Protocol(_)
            | UpstreamError::NotMirrored(_)
            // A refused redirect or realm is chosen by whoever answered, not a sign of health.
            | UpstreamError::Forbidden { .. }
            | UpstreamError::CircuitOpen { .. } => Health::Unknown,
        }
    }

    /// The upstream could not be asked or could not answer: the only case in which a node may
    /// fall back to what it saw before (a tag as the local image record has it).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, UpstreamError::CircuitOpen { .. }) || self.health() == Health::Unhealthy
    }
}

/// What one upstream answer says about the host (see [`UpstreamError::health`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The host answered as a working registry does (including a 4xx for a bad request).
    Healthy,
    /// The host is down or failing (connect error, timeout, 502/503/504).
    Unhealthy,
    /// Nothing to learn (a 500 or 429, a malformed answer, a request never sent).
    Unknown,
}

impl Health {
    /// What an HTTP answer with `status` says about its host (`None`: no answer at all — the
    /// connection failed or timed out). The same rules as [`UpstreamError::health`].
    pub fn of_status(status: Option<u16>) -> Health {
        match status {
            None | Some(502..=504) => Health::Unhealthy,
            Some(429) => Health::Unknown,
            Some(200..=499) => Health::Healthy,
            Some(_) => Health::Unknown,
        }
    }
}

#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    async fn fetch(&self, req: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError>;
}
