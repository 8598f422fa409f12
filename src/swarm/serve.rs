//! The serving side of swarming, as values: what this node tells a peer about one of its
//! downloads and the chunks it hands out (bounded uploads, rate-limited). The peer endpoints in
//! [`crate::http::swarm`] turn these into answers.

use super::{throttle, Download, End, StatusDoc, Swarming, SWARM_UPLOAD_BYTES};
use crate::error::ApiError;
use crate::oci::Digest;
use crate::peer::LONG_POLL;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

impl Swarming {
    /// The download of `digest` in `chunk_size`-byte chunks on this node.
    fn download_of(&self, digest: &str, chunk_size: u64) -> Result<Arc<Download>, ApiError> {
        let digest: Digest = digest.parse()?;
        match self.get(&digest) {
            Some(d) if d.chunk_size == chunk_size => Ok(d),
            _ => Err(ApiError::BlobUnknown(format!("no download of {digest} in {chunk_size}-byte chunks here"))),
        }
    }

    /// What this node has of its download of `digest` (not found when it failed).
    pub fn status_for_peer(&self, digest: &str, chunk_size: u64) -> Result<StatusDoc, ApiError> {
        let dl = self.download_of(digest, chunk_size)?;
        if matches!(dl.end(), End::Failed(_)) {
            return Err(ApiError::BlobUnknown("download failed".into()));
        }
        Ok(dl.status())
    }

    /// Chunk `index` for a peer, with its sha256: waits up to `wait` (at most the long poll)
    /// for a chunk still on its way ([`ApiError::Pending`] with this node's upstream progress
    /// after that), and [`ApiError::Busy`] when too many chunks are being sent at once.
    pub async fn chunk_for_peer(
        &self,
        digest: &str,
        chunk_size: u64,
        index: u64,
        wait: Duration,
    ) -> Result<(Bytes, [u8; 32]), ApiError> {
        let dl = self.download_of(digest, chunk_size)?;
        if index >= dl.chunks {
            return Err(ApiError::RangeNotSatisfiable { size: dl.chunks });
        }
        match dl.wait_chunk_for(index, wait.min(LONG_POLL)).await {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::Pending { progress: Some(dl.progress()) }),
            Err(e) => return Err(ApiError::BlobUnknown(format!("download failed: {e}"))),
        }
        let Ok(_slot) = self.upload_slots.try_acquire() else { return Err(ApiError::Busy) };
        throttle(self.upload_limit.as_ref(), dl.chunk_len(index) as usize).await;
        let (data, sha) = dl.read_chunk(index).await.ok_or_else(|| ApiError::BlobUnknown(format!("chunk {index}")))?;
        metrics::counter!(SWARM_UPLOAD_BYTES).increment(data.len() as u64);
        metrics::counter!(crate::peer::PEER_SERVED_BYTES).increment(data.len() as u64);
        if let Some(a) = &self.active {
            let _ = a.try_send(crate::actors::peers::ServedPeer);
        }
        Ok((data, sha))
    }
}
