//! HTTP client for fetching from peers: signs requests, verifies the peer's response signature
//! before the body is touched, and bounds connect and idle time so a dead or stalled peer costs
//! at most those timeouts.

use super::auth::{unix_now, ClusterKey};
use super::{NODE_HEADER, NONCE_HEADER, PROGRESS_HEADER, REQUEST_FROM_PEER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::{PEER_AUTH_FAILURES, PEER_FETCH_BYTES};
use crate::range::ByteRange;

use super::Peer;
use crate::stream::ByteStream;
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use std::sync::Arc;
use std::time::Duration;

pub struct PeerClient {
    http: reqwest::Client,
    key: Option<Arc<ClusterKey>>,
    node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer does not have it")]
    NotFound,
    #[error("peer failed: {0}")]
    Failed(String),
    #[error("peer response signature invalid: {0}")]
    Auth(String),
    /// The peer is downloading it but does not have it yet (swarm chunks); the bytes it has of
    /// that part so far, when it is fetching the part itself.
    #[error("peer does not have it yet")]
    Pending(Option<u64>),
    #[error("peer is busy")]
    Busy,
}

impl PeerError {
    pub fn reason(&self) -> &'static str {
        match self {
            PeerError::NotFound => "not_found",
            PeerError::Failed(_) => "failed",
            PeerError::Auth(_) => "auth",
            PeerError::Pending(_) => "pending",
            PeerError::Busy => "busy",
        }
    }
}

pub struct PeerResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// Total size from `Content-Range` (206) or `Content-Length` (200).
    pub total_size: Option<u64>,
    pub digest: Option<String>,
    /// A swarm chunk passed on while it arrives at the peer ([`super::FORWARDED_HEADER`]).
    pub forwarded: bool,
    pub body: ByteStream,
    /// The key and nonce of the request, to check a chunk trailer with.
    seal: Option<(Arc<ClusterKey>, String)>,
}

/// Why a peer's answer cannot be used as the content it claims to be.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("peer body failed: {0}")]
    Read(#[from] std::io::Error),
    #[error("peer sent {got} bytes, {want} expected")]
    Length { got: u64, want: u64 },
    #[error("peer body does not match its checksum")]
    Checksum,
}

impl PeerResponse {
    /// Whether a chunk trailer's `tag` seals `sha` for this request (always, without a cluster
    /// secret: nothing is authenticated then).
    pub fn seal_ok(&self, sha: &[u8; 32], tag: &[u8]) -> bool {
        self.seal.as_ref().is_none_or(|(k, nonce)| k.check_chunk_seal(nonce, sha, tag).is_ok())
    }

    /// The whole body (at most `limit` bytes; exactly `limit` with `exact`) and its sha256,
    /// checked against the sha256 the answer claims in `Docker-Content-Digest` — which the
    /// answer's signature covers, so a body that passes is what the signing peer meant to send.
    pub async fn checked_body(self, limit: u64, exact: bool) -> Result<(bytes::Bytes, [u8; 32]), BodyError> {
        let expected = if exact { limit as usize } else { 0 };
        let (body, sha) = crate::stream::collect_hashed(self.body, limit, expected).await?;
        if exact && body.len() as u64 != limit {
            return Err(BodyError::Length { got: body.len() as u64, want: limit });
        }
        let claimed = self.digest.as_deref().and_then(|d| d.strip_prefix("sha256:"));
        if claimed != Some(hex::encode(sha).as_str()) {
            return Err(BodyError::Checksum);
        }
        Ok((body, sha))
    }
}

impl PeerClient {
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        key: Option<Arc<ClusterKey>>,
        node: String,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(idle_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("peerd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("peer HTTP client: {e}"))?;
        Ok(Self { http, key, node })
    }

    /// A request to `target` on the peer listener at `addr`, signed (method, path and query,
    /// `range`, timestamp, nonce, node id); returns it with its nonce.
    fn signed(
        &self,
        method: reqwest::Method,
        addr: std::net::SocketAddr,
        target: &str,
        range: Option<&str>,
    ) -> (reqwest::RequestBuilder, String) {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let ts = unix_now();
        let mut req = self
            .http
            .request(method.clone(), format!("http://{addr}{target}"))
            .header(REQUEST_FROM_PEER, "true")
            .header(NODE_HEADER, &self.node)
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(NONCE_HEADER, &nonce);
        if let Some(k) = &self.key {
            let sig = k.sign_request(method.as_str(), target, range.unwrap_or(""), ts, &nonce, &self.node);
            req = req.header(SIGNATURE_HEADER, sig);
        }
        (req, nonce)
    }

    /// A small signed control request (no body; everything in the signed query) to the peer
    /// listener at `addr`: the status and at most `limit` bytes of the answer, whose signature
    /// is checked. Used by preheat (`POST /preheat/<id>?...`, `GET /preheat/<id>`).
    pub async fn control(
        &self,
        addr: std::net::SocketAddr,
        method: reqwest::Method,
        target: &str,
        timeout: Duration,
        limit: u64,
    ) -> Result<(u16, bytes::Bytes), PeerError> {
        let (req, nonce) = self.signed(method, addr, target, None);
        let resp = req.timeout(timeout).send().await.map_err(|e| PeerError::Failed(e.to_string()))?;
        let status = resp.status().as_u16();
        if let Some(k) = &self.key {
            let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            if let Err(e) = k.verify_response(
                &nonce,
                status,
                &h("docker-content-digest"),
                &h(CONTENT_RANGE.as_str()),
                resp.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()),
            ) {
                metrics::counter!(PEER_AUTH_FAILURES, "kind" => "http").increment(1);
                return Err(PeerError::Auth(e.to_string()));
            }
        }
        let body = resp.bytes_stream().map(|r| r.map_err(|e| std::io::Error::other(format!("peer body: {e}"))));
        let body = crate::stream::collect(Box::pin(body), limit).await.map_err(|e| PeerError::Failed(e.to_string()))?;
        Ok((status, body))
    }

    /// GET or HEAD `target` (`/v2/...?ns=...`) from `peer`.
    pub async fn fetch(
        &self,
        peer: &Peer,
        target: &str,
        head: bool,
        range: Option<ByteRange>,
        accept: Option<&str>,
    ) -> Result<PeerResponse, PeerError> {
        let method = if head { reqwest::Method::HEAD } else { reqwest::Method::GET };
        let range = range.map(|r| r.header());
        let (mut req, nonce) = self.signed(method, peer.addr, target, range.as_deref());
        if let Some(r) = range {
            req = req.header(RANGE, r);
        }
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        let resp = req.send().await.map_err(|e| PeerError::Failed(e.to_string()))?;
        let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let status = resp.status().as_u16();
        let (digest, length, content_range) =
            (h("docker-content-digest"), h(CONTENT_LENGTH.as_str()), h(CONTENT_RANGE.as_str()));
        let forwarded = h(super::FORWARDED_HEADER) == "true";
        if let Some(k) = &self.key {
            if let Err(e) = k.verify_response(
                &nonce,
                status,
                &digest,
                &content_range,
                resp.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()),
            ) {
                metrics::counter!(PEER_AUTH_FAILURES, "kind" => "http").increment(1);
                tracing::warn!(peer = %peer.id, addr = %peer.addr, error = %e, "peer response rejected");
                return Err(PeerError::Auth(e.to_string()));
            }
        }
        match status {
            200 | 206 => {}
            404 => return Err(PeerError::NotFound),
            425 => return Err(PeerError::Pending(h(PROGRESS_HEADER).parse().ok())),
            503 => return Err(PeerError::Busy),
            s => return Err(PeerError::Failed(format!("status {s}"))),
        }
        let content_length: Option<u64> = length.parse().ok();
        let total_size =
            if status == 206 { content_range.rsplit('/').next().and_then(|s| s.parse().ok()) } else { content_length };
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let counter = metrics::counter!(PEER_FETCH_BYTES);
        let body: ByteStream = if head {
            Box::pin(futures_util::stream::empty())
        } else {
            Box::pin(resp.bytes_stream().map(move |r| {
                r.inspect(|b| counter.increment(b.len() as u64))
                    .map_err(|e| std::io::Error::other(format!("peer body: {e}")))
            }))
        };
        Ok(PeerResponse {
            status,
            content_type,
            content_length,
            total_size,
            digest: (!digest.is_empty()).then_some(digest),
            forwarded,
            body,
            seal: self.key.clone().map(|k| (k, nonce)),
        })
    }
}
