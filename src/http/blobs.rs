//! `/blobs/<URL>` on the node-local front end, and the peer endpoints of /blobs on the peer
//! listener (authenticated and signed there): `/blobs-chunk/<file id>/<index>`,
//! `/blobs-status/<file id>/<segment>` (what this node has of a file it reads, JSON
//! [`crate::transfer::engine::StatusDoc`]) and `/blobs-meta/<key>`. Extraction and answers only; [`crate::blobs`] decides.

use super::peer::{chunk_headers, json_answer, wait_param};
use crate::blobs::BlobsState;
use crate::error::ApiError;
use crate::peer::LONG_POLL;
use crate::range;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use std::sync::Arc;

/// `GET|HEAD /blobs/<URL>` on the node-local front end.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/blobs/{tail:.*}")
            .route(web::get().to(blob))
            .route(web::head().to(blob))
            .default_service(web::to(super::method_not_allowed)),
    );
}

/// The peer endpoints, on the peer listener.
pub fn configure_peer(cfg: &mut web::ServiceConfig) {
    cfg.route("/blobs-chunk/{id}/{index}", web::get().to(peer_chunk));
    cfg.route("/blobs-status/{id}/{segment}", web::get().to(peer_status));
    cfg.route("/blobs-meta/{key}", web::get().to(peer_meta));
}

async fn blob(req: HttpRequest, st: web::Data<Arc<BlobsState>>) -> Result<HttpResponse, ApiError> {
    let spec = match req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => range::parse(v)?,
        None => None,
    };
    let head = req.method() == actix_web::http::Method::HEAD;
    let read = st.read(req.uri().path(), req.uri().query(), spec, head).await?;
    let mut b = match read.range {
        Some(r) => {
            let mut b = HttpResponse::PartialContent();
            b.insert_header((header::CONTENT_RANGE, r.content_range(read.size)));
            b
        }
        None => HttpResponse::Ok(),
    };
    b.insert_header((header::ACCEPT_RANGES, "bytes")).insert_header((header::CONTENT_TYPE, "application/octet-stream"));
    if let Some(e) = &read.etag {
        b.insert_header((header::ETAG, e.as_str()));
    }
    let len = read.range.map_or(read.size, |r| r.len());
    // The body passes its parts on unchanged (cached parts are file streams of chunks this node
    // checked, fetched ones verified chunks in memory; flattened and cut into views): what the
    // page cache holds of the cached parts may go by sendfile.
    if !head {
        b.extensions_mut().insert(crate::sendfile::Direct);
    }
    let body = read.body.unwrap_or_else(|| Box::pin(futures_util::stream::empty()));
    Ok(b.no_chunking(len).streaming(body))
}

async fn peer_meta(st: web::Data<Arc<BlobsState>>, key: web::Path<String>) -> HttpResponse {
    match st.validation_for_peer(&key) {
        Ok(body) => json_answer(body),
        Err(e) => e.error_response(),
    }
}

async fn peer_status(st: web::Data<Arc<BlobsState>>, path: web::Path<(String, u64)>) -> HttpResponse {
    let (id, seg) = path.into_inner();
    match st.status_for_peer(&id, seg) {
        Ok(doc) => json_answer(serde_json::to_vec(&doc).unwrap_or_default()),
        Err(e) => e.error_response(),
    }
}

async fn peer_chunk(req: HttpRequest, st: web::Data<Arc<BlobsState>>, path: web::Path<(String, u64)>) -> HttpResponse {
    let (id, index) = path.into_inner();
    let fetch = url::form_urlencoded::parse(req.query_string().as_bytes()).any(|(k, v)| k == "fetch" && v == "1");
    match st.chunk_for_peer(&id, index, fetch, wait_param(&req, LONG_POLL)).await {
        Ok((body, len, sha)) => {
            // Passed on unchanged (a checked chunk's file, or the chunk in memory): what the page
            // cache holds of a file goes by sendfile.
            let mut b = chunk_headers(&sha);
            b.extensions_mut().insert(crate::sendfile::Direct);
            b.no_chunking(len).streaming(body)
        }
        Err(e) => e.error_response(),
    }
}
