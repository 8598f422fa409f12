//! Mutual authentication of peer HTTP exchanges with the cluster secret.
//!
//! Two independent keys are derived from the secret: one keys libp2p's pnet (so outsiders cannot
//! even connect to the DHT), one keys HMAC-SHA256 over peer requests and responses:
//! - the client signs `method, path?query, timestamp, nonce, node`; the server refuses unsigned,
//!   stale (±2 min) or wrongly signed requests with 401;
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

    pub fn sign_request(&self, method: &str, target: &str, ts: u64, nonce: &str, node: &str) -> String {
        hex::encode(self.mac(&["req", method, target, &ts.to_string(), nonce, node]).finalize().into_bytes())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn verify_request(
        &self,
        method: &str,
        target: &str,
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
        self.mac(&["req", method, target, ts, nonce, node]).verify_slice(&sig).map_err(|_| AuthError::BadSignature)
    }

    pub fn sign_response(&self, nonce: &str, status: u16, digest: &str, range: &str) -> String {
        hex::encode(self.mac(&["resp", nonce, &status.to_string(), digest, range]).finalize().into_bytes())
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

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_verify_only_with_the_same_secret() {
        let k = ClusterKey::derive(b"cluster secret one");
        let other = ClusterKey::derive(b"cluster secret two");
        let sig = k.sign_request("GET", "/v2/a/blobs/x?ns=h", 1000, "n1", "peerA");
        let ok = |key: &ClusterKey, m: &str, t: &str, ts: &str, sig: &str| {
            key.verify_request(m, t, Some(ts), Some("n1"), Some("peerA"), Some(sig), 1000)
        };
        assert_eq!(ok(&k, "GET", "/v2/a/blobs/x?ns=h", "1000", &sig), Ok(()));
        assert_eq!(ok(&other, "GET", "/v2/a/blobs/x?ns=h", "1000", &sig), Err(AuthError::BadSignature));
        assert_eq!(ok(&k, "HEAD", "/v2/a/blobs/x?ns=h", "1000", &sig), Err(AuthError::BadSignature));
        assert_eq!(ok(&k, "GET", "/v2/a/blobs/y?ns=h", "1000", &sig), Err(AuthError::BadSignature));
        assert_eq!(ok(&k, "GET", "/v2/a/blobs/x?ns=h", "1001", &sig), Err(AuthError::BadSignature));
        assert_eq!(
            k.verify_request("GET", "/", Some("1"), Some("n"), Some("p"), Some("00"), 1000),
            Err(AuthError::Stale)
        );
        assert_eq!(k.verify_request("GET", "/", None, Some("n"), Some("p"), Some("00"), 1000), Err(AuthError::Missing));
        assert_ne!(k.psk(), other.psk());
        assert_ne!(k.psk(), k.hmac, "pnet and HMAC keys are independent");
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
