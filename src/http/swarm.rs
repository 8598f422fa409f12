//! The peer side of swarming, on the peer listener (authenticated and signed like every peer
//! request):
//! - `GET /swarm/<digest>/<chunk size>`: what this node has of a download, JSON [`StatusDoc`],
//!   its sha256 in `Docker-Content-Digest` (so the signature covers the body).
//! - `GET /swarm/<digest>/<chunk size>/<index>?wait=<ms>`: one chunk with its sha256 in
//!   `Docker-Content-Digest`; if the node is downloading it but does not have that chunk yet,
//!   the request waits up to `wait` ms, then answers 425 with the bytes this node has received
//!   from the upstream for the blob so far (the asker keeps waiting while that grows). A chunk
//!   arriving here from a peer is passed on while it arrives (`swarm.cut_through`), marked
//!   `x-peerd-forwarded: true`; its body ends with an error before the last byte if the chunk
//!   does not arrive whole and matching. 404: no such download here. 503: too many uploads.
//!
//! [`StatusDoc`]: crate::swarm::StatusDoc

use super::peer::{chunk_answer, forwarded_chunk_answer, json_answer, wait_param};
use crate::peer::LONG_POLL;
use crate::swarm::{ChunkBody, PeerChunk, Swarming};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use std::sync::Arc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/swarm/{digest}/{chunk_size}", web::get().to(status))
        .route("/swarm/{digest}/{chunk_size}/{index}", web::get().to(chunk));
}

async fn status(sw: web::Data<Arc<Swarming>>, path: web::Path<(String, u64)>) -> HttpResponse {
    let (digest, chunk_size) = path.into_inner();
    match sw.status_for_peer(&digest, chunk_size) {
        Ok(doc) => json_answer(serde_json::to_vec(&doc).unwrap_or_default()),
        Err(e) => e.error_response(),
    }
}

async fn chunk(req: HttpRequest, sw: web::Data<Arc<Swarming>>, path: web::Path<(String, u64, u64)>) -> HttpResponse {
    let (digest, chunk_size, index) = path.into_inner();
    match sw.chunk_for_peer(&digest, chunk_size, index, wait_param(&req, LONG_POLL)).await {
        Ok(PeerChunk { body: ChunkBody::Held(data), sha, .. }) => chunk_answer(data, &hex::encode(sha)),
        Ok(PeerChunk { body: ChunkBody::Arriving(body), sha, len }) => {
            forwarded_chunk_answer(body, len, &hex::encode(sha))
        }
        Err(e) => e.error_response(),
    }
}
