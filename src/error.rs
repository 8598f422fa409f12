//! The errors of the /v2 and /blobs services and of the peer protocol, with the OCI
//! distribution codes they carry. Rendering them as HTTP is the HTTP layer's job
//! ([`crate::http::error`]); here they are values the services return.

use crate::oci::{DigestError, NameError};
use crate::range::RangeError;
use crate::upstream::{Kind, UpstreamError};
use actix_web::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    #[error("{0}")]
    RangeInvalid(String),
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// A route or method peerd does not serve (it is a pull-only mirror).
    #[error("{message}")]
    Unsupported { status: StatusCode, message: String },
    #[error("authentication required")]
    Unauthorized { www_authenticate: Option<String> },
    #[error("access to the resource denied by the upstream registry")]
    Denied,
    /// peerd itself refuses (a /blobs upstream that is not allowed).
    #[error("{0}")]
    Forbidden(String),
    #[error("upstream registry rate limit reached")]
    TooManyRequests,
    /// Upstream down, timing out or resting: 503/504 so the client moves on quickly.
    #[error("{message}")]
    Unavailable { status: StatusCode, message: String },
    /// Upstream answered something peerd cannot stand behind.
    #[error("{message}")]
    BadGateway { code: &'static str, message: String },
    /// Peer protocol: the content is on its way here but not complete yet; ask again (425, with
    /// the bytes received from the upstream so far when known).
    #[error("not here yet")]
    Pending { progress: Option<u64> },
    /// Peer protocol: too many transfers at once here; ask another node or again later (503).
    #[error("too many transfers in progress")]
    Busy,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NameInvalid(_) => "NAME_INVALID",
            ApiError::NameUnknown(_) => "NAME_UNKNOWN",
            ApiError::DigestInvalid(_) => "DIGEST_INVALID",
            ApiError::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            ApiError::BlobUnknown(_) => "BLOB_UNKNOWN",
            ApiError::RangeInvalid(_) | ApiError::RangeNotSatisfiable { .. } => "RANGE_INVALID",
            ApiError::Unsupported { .. } => "UNSUPPORTED",
            ApiError::Unauthorized { .. } => "UNAUTHORIZED",
            ApiError::Denied | ApiError::Forbidden(_) => "DENIED",
            ApiError::TooManyRequests => "TOOMANYREQUESTS",
            ApiError::Unavailable { .. } => "UNAVAILABLE",
            ApiError::BadGateway { code, .. } => code,
            ApiError::Pending { .. } => "PENDING",
            ApiError::Busy => "UNAVAILABLE",
        }
    }

    /// Map an upstream failure for a manifest or blob request.
    pub fn from_upstream(e: UpstreamError, kind: Kind, what: &str) -> ApiError {
        match e {
            UpstreamError::NotMirrored(ref host) => {
                note_unmirrored(host);
                ApiError::NameUnknown(e.to_string())
            }
            UpstreamError::Status { status: 404, .. } => match kind {
                Kind::Manifest => ApiError::ManifestUnknown(what.into()),
                Kind::Blob => ApiError::BlobUnknown(what.into()),
            },
            UpstreamError::Status { status: 401, www_authenticate } => ApiError::Unauthorized { www_authenticate },
            UpstreamError::Status { status: 403, .. } => ApiError::Denied,
            UpstreamError::Status { status: 429, .. } => ApiError::TooManyRequests,
            // A gateway in front of the registry says it is down: unavailable, like a timeout.
            UpstreamError::Status { status: s @ 502..=504, .. } => ApiError::Unavailable {
                status: StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
                message: format!("upstream answered {s} for {what}"),
            },
            UpstreamError::Status { status, .. } => {
                ApiError::BadGateway { code: "UNKNOWN", message: format!("upstream answered {status} for {what}") }
            }
            UpstreamError::Timeout { .. } => {
                ApiError::Unavailable { status: StatusCode::GATEWAY_TIMEOUT, message: e.to_string() }
            }
            UpstreamError::Unreachable { .. } | UpstreamError::CircuitOpen { .. } => {
                ApiError::Unavailable { status: StatusCode::SERVICE_UNAVAILABLE, message: e.to_string() }
            }
            UpstreamError::Protocol(_) => ApiError::BadGateway { code: "UNKNOWN", message: e.to_string() },
            UpstreamError::Forbidden { .. } => ApiError::BadGateway { code: "DENIED", message: e.to_string() },
        }
    }
}

/// Registries already reported as not mirrored (bounded: a client choosing `ns` values cannot
/// grow it or flood the log).
static UNMIRRORED: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
const UNMIRRORED_REPORTED: usize = 64;

/// Say once, at info, that a registry is asked for but not mirrored (containerd then pulls it
/// itself; otherwise that traffic is invisible).
fn note_unmirrored(host: &str) {
    let mut seen = UNMIRRORED.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(Default::default);
    if seen.len() < UNMIRRORED_REPORTED && seen.insert(host.to_owned()) {
        let host: String = host.chars().take(253).collect();
        tracing::info!(registry = host, "a client asked for a registry this node does not mirror (not in registry.hosts): containerd pulls it directly; add it with --mirror-host to share it between nodes");
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        ApiError::NameInvalid(e.to_string())
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> Self {
        ApiError::DigestInvalid(e.to_string())
    }
}

impl From<RangeError> for ApiError {
    fn from(e: RangeError) -> Self {
        match e {
            RangeError::Malformed(_) => ApiError::RangeInvalid(e.to_string()),
            RangeError::Unsatisfiable { size } => ApiError::RangeNotSatisfiable { size },
        }
    }
}
