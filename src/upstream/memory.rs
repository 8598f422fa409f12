//! In-memory [`Upstream`] for unit tests: a map of content plus a switchable failure.

use super::{Kind, Upstream, UpstreamError, UpstreamRequest, UpstreamResponse};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryUpstream {
    /// (registry, repository, kind, reference) → (content type, body)
    content: DashMap<(String, String, Kind, String), (String, Bytes)>,
    /// When set, every fetch fails with this error.
    pub fail_with: Mutex<Option<UpstreamError>>,
    pub calls: AtomicUsize,
    /// Body bytes sent (not counting HEAD).
    pub body_bytes: AtomicU64,
}

impl MemoryUpstream {
    pub fn put(
        &self,
        registry: &str,
        repo: &str,
        kind: Kind,
        reference: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) {
        self.content.insert((registry.into(), repo.into(), kind, reference.into()), (content_type.into(), body.into()));
    }
    pub fn fail(&self, e: Option<UpstreamError>) {
        *self.fail_with.lock().unwrap() = e;
    }
}

#[async_trait]
impl Upstream for MemoryUpstream {
    async fn fetch(&self, req: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.fail_with.lock().unwrap().clone() {
            return Err(e);
        }
        let key = (req.registry.name().to_owned(), req.repository.clone(), req.kind, req.reference.clone());
        let (ct, body) = self
            .content
            .get(&key)
            .map(|e| e.clone())
            .ok_or(UpstreamError::Status { status: 404, www_authenticate: None })?;
        let (status, body) = match req.range {
            Some(r) if (r.start as usize) < body.len() => {
                (206, body.slice(r.start as usize..(r.end as usize + 1).min(body.len())))
            }
            _ => (200, body),
        };
        let len = body.len() as u64;
        if !req.head {
            self.body_bytes.fetch_add(len, Ordering::SeqCst);
        }
        let stream: crate::stream::ByteStream = if req.head {
            Box::pin(futures_util::stream::empty())
        } else {
            Box::pin(futures_util::stream::iter([Ok(body)]))
        };
        Ok(UpstreamResponse { status, content_type: Some(ct), content_length: Some(len), digest: None, body: stream })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{media, Algorithm, Digest};

    #[tokio::test]
    async fn memory_upstream_conforms() {
        let up = MemoryUpstream::default();
        let blob = bytes::Bytes::from_static(b"some layer bytes");
        let blob_digest = Digest::compute(Algorithm::Sha256, &blob);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"{blob_digest}","size":16}},"layers":[]}}"#,
            media::OCI_MANIFEST
        );
        let manifest_digest = Digest::compute(Algorithm::Sha256, manifest.as_bytes());
        let reg = crate::oci::parse_ns(Some("example.com"), "docker.io").unwrap();
        for reference in ["v1".to_owned(), manifest_digest.to_string()] {
            up.put("example.com", "app", Kind::Manifest, &reference, media::OCI_MANIFEST, manifest.clone());
        }
        up.put("example.com", "app", Kind::Blob, &blob_digest.to_string(), media::OCTET_STREAM, blob);
        let f = crate::upstream::conformance::Fixture {
            registry: &reg,
            repo: "app",
            tag: "v1",
            manifest: &manifest_digest,
            blob: &blob_digest,
            blob_len: 16,
        };
        crate::upstream::conformance::check(&up, &f).await;
    }
}
