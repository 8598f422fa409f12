//! Mutual authentication of peer HTTP exchanges with the cluster secret.
//!
//! Two independent keys are derived from the secret: one keys libp2p's pnet (so outsiders cannot
//! even connect to the DHT), one keys HMAC-SHA256 over peer requests and responses:
//! - the client signs `method, path?query, Range, timestamp, nonce, node`; the server refuses
//!   unsigned, stale (±2 min), wrongly signed or replayed requests (a nonce seen within the
//!   window, [`ReplayGuard`]) with 401;
//! - the server signs `nonce, status, Docker-Content-Digest, Content-Range`;
//!   the client drops a response it cannot verify before reading the body.
//!
//! Content itself is verified against its digest end to end, so a signature only has to prove
//! membership, not integrity of every byte.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Largest clock difference accepted between peers.
pub const MAX_SKEW_SECS: u64 = 120;

pub struct ClusterKey {
    hmac: [u8; 32],
    psk: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("peer request is not signed")]
    Missing,
    #[error("peer request timestamp is outside the allowed clock skew")]
    Stale,
    #[error("peer signature does not verify (wrong cluster secret?)")]
    BadSignature,
    #[error("peer request replayed (nonce already used)")]
    Replayed,
    #[error("too many peer requests in the replay window")]
    Overloaded,
}

fn derive(label: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update([0]);
    h.update(secret);
    h.finalize().into()
}

impl ClusterKey {
    pub fn derive(secret: &[u8]) -> Self {
        Self { hmac: derive(b"peerd-http-v1", secret), psk: derive(b"peerd-pnet-v1", secret) }
    }

    /// The libp2p pnet pre-shared key.
    pub fn psk(&self) -> [u8; 32] {
        self.psk
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.hmac).expect("any key length");
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\n");
        }
        m
    }

    /// `range`: the request's `Range` header value, "" without one.
    pub fn sign_request(&self, method: &str, target: &str, range: &str, ts: u64, nonce: &str, node: &str) -> String {
        hex::encode(self.mac(&["req", method, target, range, &ts.to_string(), nonce, node]).finalize().into_bytes())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn verify_request(
        &self,
        method: &str,
        target: &str,
        range: &str,
        ts: Option<&str>,
        nonce: Option<&str>,
        node: Option<&str>,
        signature: Option<&str>,
        now: u64,
    ) -> Result<(), AuthError> {
        let (Some(ts), Some(nonce), Some(node), Some(sig)) = (ts, nonce, node, signature) else {
            return Err(AuthError::Missing);
        };
        let t: u64 = ts.parse().map_err(|_| AuthError::Stale)?;
        if t.abs_diff(now) > MAX_SKEW_SECS {
            return Err(AuthError::Stale);
        }
        let sig = hex::decode(sig).map_err(|_| AuthError::BadSignature)?;
        self.mac(&["req", method, target, range, ts, nonce, node])
            .verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)
    }

    pub fn sign_response(&self, nonce: &str, status: u16, digest: &str, range: &str) -> String {
        hex::encode(self.mac(&["resp", nonce, &status.to_string(), digest, range]).finalize().into_bytes())
    }

    /// The tag of a chunk's trailer ([`super::CHUNK_TRAILER_LEN`]): its sha256, bound to the
    /// request's nonce, for an answer whose digest could not be in its signed headers.
    pub fn seal_chunk(&self, nonce: &str, sha: &[u8; 32]) -> [u8; 32] {
        self.mac(&["trailer", nonce, &hex::encode(sha)]).finalize().into_bytes().into()
    }

    pub fn check_chunk_seal(&self, nonce: &str, sha: &[u8; 32], tag: &[u8]) -> Result<(), AuthError> {
        self.mac(&["trailer", nonce, &hex::encode(sha)]).verify_slice(tag).map_err(|_| AuthError::BadSignature)
    }

    pub fn verify_response(
        &self,
        nonce: &str,
        status: u16,
        digest: &str,
        range: &str,
        signature: Option<&str>,
    ) -> Result<(), AuthError> {
        let sig = hex::decode(signature.ok_or(AuthError::Missing)?).map_err(|_| AuthError::BadSignature)?;
        self.mac(&["resp", nonce, &status.to_string(), digest, range])
            .verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// Nonces of verified requests, kept for the whole window in which their timestamp is accepted,
/// so that a captured request cannot be sent again. Bounded: when full of live nonces, new
/// requests are refused (503 to the peer) rather than forgetting a nonce early.
pub struct ReplayGuard {
    inner: std::sync::Mutex<Seen>,
    capacity: usize,
}

#[derive(Default)]
struct Seen {
    set: std::collections::HashSet<String>,
    order: std::collections::VecDeque<(u64, String)>,
}

/// Longest nonce accepted (the client sends 32 hex digits).
pub const MAX_NONCE_LEN: usize = 64;

impl ReplayGuard {
    pub fn new(capacity: usize) -> Self {
        Self { inner: std::sync::Mutex::default(), capacity }
    }

    /// Record `nonce` (of a verified request made at `ts`); fails if it was seen in the window.
    pub fn check(&self, nonce: &str, ts: u64, now: u64) -> Result<(), AuthError> {
        if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
            return Err(AuthError::Missing);
        }
        let mut seen = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A nonce can be replayed while its timestamp is within the skew: forget it after that.
        while let Some((t, _)) = seen.order.front() {
            if t.saturating_add(MAX_SKEW_SECS) >= now {
                break;
            }
            let (_, n) = seen.order.pop_front().expect("front exists");
            seen.set.remove(&n);
        }
        if seen.set.contains(nonce) {
            return Err(AuthError::Replayed);
        }
        if seen.set.len() >= self.capacity {
            return Err(AuthError::Overloaded);
        }
        seen.set.insert(nonce.to_owned());
        // Kept in arrival order; expiry uses the later of the two times, so a request dated in
        // the future is remembered until its timestamp leaves the window.
        seen.order.push_back((ts.max(now), nonce.to_owned()));
        Ok(())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chunk_seal_is_bound_to_the_key_the_request_and_the_sha256() {
        let k = ClusterKey::derive(b"cluster secret");
        let other = ClusterKey::derive(b"another secret");
        let (sha, tag) = ([7u8; 32], k.seal_chunk("nonce-1", &[7u8; 32]));
        assert!(k.check_chunk_seal("nonce-1", &sha, &tag).is_ok());
        assert!(k.check_chunk_seal("nonce-2", &sha, &tag).is_err(), "another request's trailer");
        assert!(k.check_chunk_seal("nonce-1", &[8u8; 32], &tag).is_err(), "another sha256");
        assert!(other.check_chunk_seal("nonce-1", &sha, &tag).is_err(), "another cluster");
        assert!(k.check_chunk_seal("nonce-1", &sha, &[0u8; 32]).is_err(), "a zero tag");
    }

    use super::*;

    #[test]
    fn requests_verify_only_with_the_same_secret() {
        let k = ClusterKey::derive(b"cluster secret one");
        let other = ClusterKey::derive(b"cluster secret two");
        let sig = k.sign_request("GET", "/v2/a/blobs/x?ns=h", "", 1000, "n1", "peerA");
        let ok = |key: &ClusterKey, m: &str, t: &str, ts: &str, sig: &str| {
            key.verify_request(m, t, "", Some(ts), Some("n1"), Some("peerA"), Some(sig), 1000)
        };
        assert_eq!(ok(&k, "GET", "/v2/a/blobs/x?ns=h", "1000", &sig), Ok(()));
        assert_eq!(ok(&other, "GET", "/v2/a/blobs/x?ns=h", "1000", &sig), Err(AuthError::BadSignature));
        assert_eq!(ok(&k, "HEAD", "/v2/a/blobs/x?ns=h", "1000", &sig), Err(AuthError::BadSignature));
        assert_eq!(ok(&k, "GET", "/v2/a/blobs/y?ns=h", "1000", &sig), Err(AuthError::BadSignature));
        assert_eq!(ok(&k, "GET", "/v2/a/blobs/x?ns=h", "1001", &sig), Err(AuthError::BadSignature));
        assert_eq!(
            k.verify_request("GET", "/", "", Some("1"), Some("n"), Some("p"), Some("00"), 1000),
            Err(AuthError::Stale)
        );
        assert_eq!(
            k.verify_request("GET", "/", "", None, Some("n"), Some("p"), Some("00"), 1000),
            Err(AuthError::Missing)
        );
        assert_ne!(k.psk(), other.psk());
        assert_ne!(k.psk(), k.hmac, "pnet and HMAC keys are independent");
    }

    #[test]
    fn range_is_covered_by_the_signature() {
        let k = ClusterKey::derive(b"cluster secret one");
        let sig = k.sign_request("GET", "/v2/a/blobs/x", "bytes=0-9", 1000, "n1", "p");
        let verify = |range: &str| {
            k.verify_request("GET", "/v2/a/blobs/x", range, Some("1000"), Some("n1"), Some("p"), Some(&sig), 1000)
        };
        assert_eq!(verify("bytes=0-9"), Ok(()));
        assert_eq!(verify("bytes=0-99999"), Err(AuthError::BadSignature));
        assert_eq!(verify(""), Err(AuthError::BadSignature));
    }

    #[test]
    fn replayed_nonces_are_refused_within_the_window() {
        let g = ReplayGuard::new(3);
        assert_eq!(g.check("a", 1000, 1000), Ok(()));
        assert_eq!(g.check("a", 1000, 1001), Err(AuthError::Replayed));
        assert_eq!(g.check("a", 1000, 1000 + MAX_SKEW_SECS), Err(AuthError::Replayed), "still inside the window");
        assert_eq!(g.check("b", 1000, 1000), Ok(()));
        assert_eq!(g.check("c", 1000, 1000), Ok(()));
        assert_eq!(g.check("d", 1000, 1000), Err(AuthError::Overloaded), "full of live nonces");
        // Once the timestamps left the window, the nonces are forgotten (their requests would be
        // refused as stale anyway) and there is room again.
        assert_eq!(g.check("d", 1200, 1000 + MAX_SKEW_SECS + 1), Ok(()));
        assert_eq!(g.check("", 1000, 1000), Err(AuthError::Missing));
        assert_eq!(g.check(&"x".repeat(MAX_NONCE_LEN + 1), 1000, 1000), Err(AuthError::Missing));
    }

    #[test]
    fn responses_bind_nonce_and_headers() {
        let k = ClusterKey::derive(b"cluster secret one");
        let sig = k.sign_response("n1", 206, "sha256:ab", "bytes 0-9/20");
        assert_eq!(k.verify_response("n1", 206, "sha256:ab", "bytes 0-9/20", Some(&sig)), Ok(()));
        assert!(
            k.verify_response("n2", 206, "sha256:ab", "bytes 0-9/20", Some(&sig)).is_err(),
            "replayed to another request"
        );
        assert!(k.verify_response("n1", 206, "sha256:ab", "bytes 0-8/20", Some(&sig)).is_err());
        assert!(k.verify_response("n1", 200, "sha256:ab", "bytes 0-9/20", Some(&sig)).is_err());
        assert!(ClusterKey::derive(b"x").verify_response("n1", 206, "sha256:ab", "bytes 0-9/20", Some(&sig)).is_err());
        assert_eq!(k.verify_response("n1", 200, "", "", None), Err(AuthError::Missing));
    }
}
