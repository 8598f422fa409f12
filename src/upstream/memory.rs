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
