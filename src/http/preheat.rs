//! Preheat endpoints (the logic is in [`crate::preheat`]).
//!
//! - Node-local front end: `POST /preheat` (JSON [`PreheatRequest`], at most
//!   [`MAX_BODY`] bytes) → 202 and the request's progress; `GET /preheat/<id>` → the progress of
//!   every chosen node ([`RequestProgress`]).
//! - Peer listener (signed, see [`super::peer`]): `POST /preheat/<id>?image=<ref@digest>&...
//!   &platform=os/arch` starts a job here → 202; `GET /preheat/<id>` → this node's
//!   [`NodeProgress`].
//!
//! Errors are `{"error": "..."}` with a 4xx for a bad or refused request (400 malformed, 403 a
//! registry that is not mirrored, 404 unknown id), 503 when disabled or full, 502 otherwise.
//!
//! [`PreheatRequest`]: crate::preheat::PreheatRequest
//! [`RequestProgress`]: crate::preheat::RequestProgress
//! [`NodeProgress`]: crate::preheat::NodeProgress

use crate::preheat::{PreheatError, PreheatRequest, Preheater, MAX_BODY};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

type Data = web::Data<Arc<Preheater>>;

fn error(e: &PreheatError) -> HttpResponse {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    HttpResponse::build(status).json(serde_json::json!({ "error": e.to_string() }))
}

/// Routes of the node-local front end.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(MAX_BODY).error_handler(|e, _| {
        let msg = format!("bad preheat request: {e}");
        actix_web::error::InternalError::from_response(
            e,
            HttpResponse::BadRequest().json(serde_json::json!({ "error": msg })),
        )
        .into()
    }))
    .route(
        "/preheat",
        web::post().to(|p: Data, req: web::Json<PreheatRequest>| async move {
            match p.request(req.into_inner()).await {
                Ok(progress) => HttpResponse::Accepted().json(progress),
                Err(e) => error(&e),
            }
        }),
    )
    .route(
        "/preheat/{id}",
        web::get().to(|p: Data, id: web::Path<String>| async move {
            match p.progress(&id).await {
                Some(progress) => HttpResponse::Ok().json(progress),
                None => error(&PreheatError::Unknown(crate::http::clip(&id, 64).into())),
            }
        }),
    );
}

/// Routes of the peer listener.
pub fn configure_peer(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/preheat/{id}",
        web::post().to(|p: Data, id: web::Path<String>, req: HttpRequest| async move {
            let started = p
                .parse_job_query(req.query_string())
                .and_then(|(images, platform)| p.start_job(&id, &images, &platform));
            match started {
                Ok(job) => {
                    let (me, addr) = p.me();
                    HttpResponse::Accepted().json(job.progress(me, &addr.to_string()))
                }
                Err(e) => error(&e),
            }
        }),
    )
    .route(
        "/preheat/{id}",
        web::get().to(|p: Data, id: web::Path<String>| async move {
            match p.job(&id) {
                Some(job) => {
                    let (me, addr) = p.me();
                    HttpResponse::Ok().json(job.progress(me, &addr.to_string()))
                }
                None => error(&PreheatError::Unknown(crate::http::clip(&id, 64).into())),
            }
        }),
    );
}
