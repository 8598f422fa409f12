//! The serving side of swarming, as values: what this node tells a peer about one of its
//! downloads and the chunks it hands out (bounded uploads, rate-limited). The peer endpoints in
//! [`crate::http::swarm`] turn these into answers.

use super::arrival::Arrival;
use super::{throttle, Download, End, StatusDoc, Swarming, SWARM_UPLOAD_BYTES};
use crate::error::ApiError;
use crate::oci::Digest;
use crate::peer::LONG_POLL;
use crate::stream::ByteStream;
use std::sync::Arc;
use std::time::Duration;

/// A chunk for a peer. Either way its body holds one of the node's `swarm.upload_slots` until
/// it is dropped (sent, or the asker left), so the slots bound the chunks being sent, not only
/// the ones being read.
pub enum PeerChunk {
    /// Held here: its bytes and sha256.
    Held { body: ByteStream, sha: [u8; 32], len: u64 },
    /// Arriving here (from a peer or the upstream), passed on as it arrives (cut-through): the
    /// bytes end once the chunk was verified, then [`Arrival::sha`] is known (for the trailer);
    /// with an error when it does not arrive whole and matching. The upload slot is held until
    /// the stream is dropped.
    Arriving { body: ByteStream, arrival: Arc<Arrival> },
}

impl Swarming {
    /// The download of `digest` in `chunk_size`-byte chunks on this node.
    fn download_of(&self, digest: &str, chunk_size: u64) -> Result<Arc<Download>, ApiError> {
        let digest: Digest = digest.parse()?;
        match self.get(&digest) {
            Some(d) if d.chunk_size == chunk_size || chunk_size == super::ANY_CHUNK_SIZE => Ok(d),
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
    /// after that), and [`ApiError::Busy`] when too many chunks are being sent at once. A chunk
    /// arriving here (from a peer or the upstream) is passed on while it arrives
    /// (`swarm.cut_through`).
    pub async fn chunk_for_peer(
        &self,
        digest: &str,
        chunk_size: u64,
        index: u64,
        wait: Duration,
    ) -> Result<PeerChunk, ApiError> {
        if chunk_size == super::ANY_CHUNK_SIZE {
            return Err(ApiError::BlobUnknown("a chunk is asked for in its download's chunk size".into()));
        }
        let dl = self.download_of(digest, chunk_size)?;
        if index >= dl.chunks {
            return Err(ApiError::RangeNotSatisfiable { size: dl.chunks });
        }
        match dl.wait_chunk_for(index, wait.min(LONG_POLL)).await {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::Pending { progress: Some(dl.progress()) }),
            Err(e) => return Err(ApiError::BlobUnknown(format!("download failed: {e}"))),
        }
        let Ok(slot) = self.upload_slots.clone().try_acquire_owned() else { return Err(ApiError::Busy) };
        let len = dl.chunk_len(index);
        throttle(self.upload_limit.as_ref(), len as usize).await;
        let chunk = match (dl.has(index), dl.arrival(index)) {
            (None, Some(arrival)) => {
                metrics::counter!(super::SWARM_PASSED_ON, "from" => arrival.from).increment(1);
                PeerChunk::Arriving { body: crate::stream::holding(arrival.clone().stream(), slot), arrival }
            }
            // It was arriving when this request woke, and its transfer failed since (while this
            // request waited for the upload rate, say): not "no such chunk here", which the
            // asker would count against this node's status; ask elsewhere for now.
            (None, None) => return Err(ApiError::Busy),
            (Some(sha), _) => {
                // Read from the spool a piece at a time as the peer takes it (a chunk may be
                // `max_chunk_size`: an upload holds a piece, not the chunk); the slot goes with
                // the last piece.
                let start = index * dl.chunk_size;
                let body = dl.clone().body(start, start + len - 1, false);
                PeerChunk::Held { body: crate::stream::holding(body, slot), sha, len }
            }
        };
        metrics::counter!(SWARM_UPLOAD_BYTES).increment(len);
        metrics::counter!(crate::peer::PEER_SERVED_BYTES).increment(len);
        if let Some(a) = &self.active {
            let _ = a.try_send(crate::actors::peers::ServedPeer);
        }
        Ok(chunk)
    }
}
