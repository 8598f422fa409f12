//! The upstream registry: where content comes from when no local store or peer has it.
//! [`Upstream`] is the boundary; [`http::HttpUpstream`] talks to real registries and
//! [`memory::MemoryUpstream`] backs unit tests. Policy (which hosts, back-off) lives in
//! [`crate::actors::upstream::UpstreamActor`], not here.

pub mod auth;
pub mod http;
pub mod memory;
pub mod policy;

use crate::http::range::ByteRange;
use crate::oci::Registry;
use crate::store::ByteStream;
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
    /// Errors that say the host itself is failing (they feed the circuit breaker).
    pub fn is_host_failure(&self) -> bool {
        matches!(self, UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. })
            || matches!(self, UpstreamError::Status { status, .. } if *status >= 500)
    }
}

#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    async fn fetch(&self, req: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError>;
}
