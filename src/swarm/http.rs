//! The peer side of swarming, on the mirror port next to `/v2` (authenticated and signed like
//! every peer request):
//! - `GET /swarm/<digest>/<chunk size>`: what this node has of a download, JSON [`StatusDoc`],
//!   its sha256 in `Docker-Content-Digest` (so the signature covers the body).
//! - `GET /swarm/<digest>/<chunk size>/<index>?wait=<ms>`: one chunk with its sha256 in
//!   `Docker-Content-Digest`; if the node is downloading it but does not have that chunk yet,
//!   the request waits up to `wait` ms, then answers 425 with the bytes this node has received
//!   from the upstream for the blob so far (the asker keeps waiting while that grows). 404: no such download here. 503: too many uploads.
//!
//! [`StatusDoc`]: super::StatusDoc

use super::engine::LONG_POLL;
use super::{throttle, Swarm, SWARM_UPLOAD_BYTES};
use crate::http::error::ApiError;
use crate::http::peer::wait_param;
use crate::oci::Digest;
use crate::peer::PROGRESS_HEADER;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::Digest as _;
use std::sync::Arc;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/swarm/{digest}/{chunk_size}", web::get().to(status))
        .route("/swarm/{digest}/{chunk_size}/{index}", web::get().to(chunk));
}

fn error(e: ApiError) -> HttpResponse {
    actix_web::ResponseError::error_response(&e)
}

fn download(sw: &Swarm, digest: &str, chunk_size: u64) -> Result<Arc<super::Download>, ApiError> {
    let digest: Digest = digest.parse()?;
    match sw.get(&digest) {
        Some(d) if d.chunk_size == chunk_size => Ok(d),
        _ => Err(ApiError::BlobUnknown(format!("no download of {digest} in {chunk_size}-byte chunks here"))),
    }
}

async fn status(sw: web::Data<Arc<Swarm>>, path: web::Path<(String, u64)>) -> HttpResponse {
    let (digest, chunk_size) = path.into_inner();
    async {
        match download(&sw, &digest, chunk_size) {
            Ok(dl) if !matches!(dl.end(), super::End::Failed(_)) => {
                let body = serde_json::to_vec(&dl.status()).unwrap_or_default();
                HttpResponse::Ok()
                    .insert_header((
                        "Docker-Content-Digest",
                        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))),
                    ))
                    .content_type("application/json")
                    .body(body)
            }
            Ok(_) => error(ApiError::BlobUnknown("download failed".into())),
            Err(e) => error(e),
        }
    }
    .await
}

async fn chunk(req: HttpRequest, sw: web::Data<Arc<Swarm>>, path: web::Path<(String, u64, u64)>) -> HttpResponse {
    let (digest, chunk_size, index) = path.into_inner();
    let wait = wait_param(&req, LONG_POLL);
    async {
        let dl = match download(&sw, &digest, chunk_size) {
            Ok(d) => d,
            Err(e) => return error(e),
        };
        if index >= dl.chunks {
            return error(ApiError::RangeNotSatisfiable { size: dl.chunks });
        }
        match dl.wait_chunk_for(index, wait).await {
            Ok(true) => {}
            Ok(false) => {
                return HttpResponse::build(StatusCode::from_u16(425).expect("valid status"))
                    .insert_header((PROGRESS_HEADER, dl.progress().to_string()))
                    .finish();
            }
            Err(e) => return error(ApiError::BlobUnknown(format!("download failed: {e}"))),
        }
        let Ok(_slot) = sw.upload_slots.try_acquire() else {
            return HttpResponse::ServiceUnavailable().insert_header(("Retry-After", "1")).finish();
        };
        throttle(sw.upload_limit.as_ref(), dl.chunk_len(index) as usize).await;
        match dl.read_chunk(index).await {
            Some((data, sha)) => {
                metrics::counter!(SWARM_UPLOAD_BYTES).increment(data.len() as u64);
                metrics::counter!(crate::peer::PEER_SERVED_BYTES).increment(data.len() as u64);
                if let Some(a) = &sw.active {
                    a.do_send(crate::actors::fetch::ServedPeer);
                }
                HttpResponse::Ok()
                    .insert_header(("Docker-Content-Digest", format!("sha256:{}", hex::encode(sha))))
                    .content_type("application/octet-stream")
                    .body(data)
            }
            None => error(ApiError::BlobUnknown(format!("chunk {index}"))),
        }
    }
    .await
}
