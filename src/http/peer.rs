//! The peer listener's gate: every request on it must prove the cluster secret, and every answer
//! is signed. One middleware ([`authenticate`]) does both, so no route on that listener can be
//! reached without it and no handler has to remember it.
//!
//! A request is accepted when its HMAC covers method, path and query, `Range`, timestamp, nonce
//! and node id, its timestamp is within [`MAX_SKEW_SECS`] and its nonce was not used within the
//! window ([`ReplayGuard`]). The answer's status, digest and `Content-Range` are signed with the
//! request's nonce, so a client cannot be fed an answer meant for another request.
//! Without a key (`p2p.insecure_no_secret`), requests pass unauthenticated and answers are unsigned.
//!
//! [`MAX_SKEW_SECS`]: crate::peer::auth::MAX_SKEW_SECS

use crate::error::ApiError;
use crate::peer::auth::{unix_now, AuthError, ClusterKey, ReplayGuard};
use crate::peer::PEER_AUTH_FAILURES;
use crate::peer::{NODE_HEADER, NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::Digest as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nonces remembered at once: 2 × 120 s of peer requests at ~400/s (a busy swarm is ~100/s).
const REPLAY_CAPACITY: usize = 100_000;
/// Rejections are logged at most this often (a scan of the port must not flood the log).
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The key and the nonces seen: `web::Data<PeerGuard>` on the peer listener.
pub struct PeerGuard {
    key: Option<Arc<ClusterKey>>,
    replay: ReplayGuard,
    last_log: std::sync::Mutex<Option<Instant>>,
}

impl PeerGuard {
    pub fn new(key: Option<Arc<ClusterKey>>) -> Self {
        Self { key, replay: ReplayGuard::new(REPLAY_CAPACITY), last_log: std::sync::Mutex::new(None) }
    }

    /// Verify a request; returns its nonce (for signing the answer).
    fn verify(&self, req: &HttpRequest) -> Result<String, AuthError> {
        let h = |n: &'static str| req.headers().get(n).and_then(|v| v.to_str().ok());
        let nonce = h(NONCE_HEADER).unwrap_or_default().to_owned();
        let Some(k) = &self.key else { return Ok(nonce) };
        let target = req.uri().path_and_query().map_or(req.path(), |pq| pq.as_str());
        let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let now = unix_now();
        k.verify_request(
            req.method().as_str(),
            target,
            range,
            h(TIMESTAMP_HEADER),
            Some(nonce.as_str()),
            h(NODE_HEADER),
            h(SIGNATURE_HEADER),
            now,
        )?;
        let ts = h(TIMESTAMP_HEADER).and_then(|t| t.parse().ok()).unwrap_or(now);
        self.replay.check(&nonce, ts, now)?;
        Ok(nonce)
    }

    /// Sign an answer (status, digest and range bound to the request's nonce).
    fn sign(&self, resp: &mut HttpResponse<BoxBody>, nonce: &str) {
        let Some(k) = &self.key else { return };
        let h = |n: header::HeaderName| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let sig = k.sign_response(
            nonce,
            resp.status().as_u16(),
            &h(header::HeaderName::from_static("docker-content-digest")),
            &h(header::CONTENT_RANGE),
        );
        if let Ok(v) = header::HeaderValue::from_str(&sig) {
            resp.headers_mut().insert(header::HeaderName::from_static(SIGNATURE_HEADER), v);
        }
    }

    fn log_rejection(&self, req: &HttpRequest, e: &AuthError) {
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < REJECT_LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let node: String =
            req.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").chars().take(64).collect();
        tracing::warn!(from = ?req.peer_addr(), node, error = %e, "rejected a peer request (further rejections for 10 s are counted in peerd_peer_auth_failures_total only)");
    }
}

/// The middleware of the peer listener (see the module docs).
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let guard = req.app_data::<web::Data<PeerGuard>>().cloned().expect("the peer listener has a PeerGuard");
    let nonce = match guard.verify(req.request()) {
        Ok(n) => n,
        Err(e) => {
            let kind = if matches!(e, AuthError::Replayed) { "replay" } else { "http" };
            metrics::counter!(PEER_AUTH_FAILURES, "kind" => kind).increment(1);
            guard.log_rejection(req.request(), &e);
            let resp = match e {
                AuthError::Overloaded => actix_web::ResponseError::error_response(&ApiError::Unavailable {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: e.to_string(),
                }),
                _ => actix_web::ResponseError::error_response(&ApiError::Unauthorized { www_authenticate: None }),
            };
            return Ok(req.into_response(resp));
        }
    };
    let mut res = next.call(req).await?.map_into_boxed_body();
    guard.sign(res.response_mut(), &nonce);
    Ok(res)
}

/// The `wait=<ms>` query parameter of a long-polling peer request, at most `cap` (0 if absent).
pub fn wait_param(req: &HttpRequest, cap: Duration) -> Duration {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "wait")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_millis(ms).min(cap))
}

/// A signed JSON document for a peer: its sha256 in `Docker-Content-Digest`, so the answer's
/// signature covers the body.
pub fn json_answer(body: Vec<u8>) -> HttpResponse {
    let sum = hex::encode(sha2::Sha256::digest(&body));
    HttpResponse::Ok()
        .insert_header(("Docker-Content-Digest", format!("sha256:{sum}")))
        .content_type("application/json")
        .body(body)
}

/// The answer of a chunk for a peer, up to its body: 200, its sha256 (hex), the content type.
pub fn chunk_headers(sha256_hex: &str) -> actix_web::HttpResponseBuilder {
    let mut b = HttpResponse::Ok();
    b.insert_header(("Docker-Content-Digest", format!("sha256:{sha256_hex}"))).content_type("application/octet-stream");
    b
}

/// The trailer of a chunk passed on while it arrives ([`crate::peer::CHUNK_TRAILER_LEN`]): its
/// sha256 and the tag over it bound to `req`'s nonce (zeros without a cluster secret).
pub fn chunk_trailer(req: &HttpRequest, sha: &[u8; 32]) -> bytes::Bytes {
    let nonce = req.headers().get(NONCE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = req.app_data::<web::Data<PeerGuard>>().and_then(|g| g.key.clone());
    let tag = key.map_or([0; 32], |k| k.seal_chunk(nonce, sha));
    bytes::Bytes::from([sha.as_slice(), tag.as_slice()].concat())
}
