//! The peer side of swarming, on the peer listener (authenticated and signed like every peer
//! request):
//! - `GET /swarm/<digest>/<chunk size>`: what this node has of a download, JSON [`StatusDoc`],
//!   its sha256 in `Docker-Content-Digest` (so the signature covers the body).
//! - `GET /swarm/<digest>/<chunk size>/<index>?wait=<ms>`: one chunk with its sha256 in
//!   `Docker-Content-Digest`; if the node is downloading it but does not have that chunk yet,
//!   the request waits up to `wait` ms, then answers 425 with the bytes this node has received
//!   from the upstream for the blob so far (the asker keeps waiting while that grows). A chunk
//!   arriving here (from a peer or the upstream) is passed on while it arrives
//!   (`swarm.cut_through`), marked `x-peerd-forwarded: true`, without `Docker-Content-Digest`:
//!   the body is the chunk then a trailer (its sha256 and a tag sealing it to the request), sent
//!   once the chunk was verified here; a chunk that does not arrive whole and matching cuts the
//!   body before the trailer. 404: no such download here. 503: too many uploads.
//!
//! [`StatusDoc`]: crate::swarm::StatusDoc

use super::peer::{chunk_headers, chunk_trailer, json_answer, wait_param};
use crate::peer::{CHUNK_TRAILER_LEN, FORWARDED_HEADER, LONG_POLL};
use crate::swarm::{PeerChunk, Swarming};
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
        Ok(PeerChunk::Held { body, sha, len }) => chunk_headers(&hex::encode(sha)).no_chunking(len).streaming(body),
        Ok(PeerChunk::Arriving { body, arrival }) => {
            // The trailer goes out once the chunk was verified here (the bytes end only then).
            let len = arrival.len + CHUNK_TRAILER_LEN;
            let trailer = futures_util::stream::once(async move {
                let sha = arrival.sha().ok_or_else(|| std::io::Error::other("the chunk was not verified"))?;
                Ok(chunk_trailer(&req, &sha))
            });
            HttpResponse::Ok()
                .insert_header((FORWARDED_HEADER, "true"))
                .content_type("application/octet-stream")
                .no_chunking(len)
                .streaming(futures_util::StreamExt::chain(body, trailer))
        }
        Err(e) => e.error_response(),
    }
}
