//! Preheat endpoints (the logic is in [`crate::preheat`]).
//!
//! - Node-local front end: `POST /preheat` (JSON [`PreheatRequest`], at most
//!   [`MAX_BODY`] bytes) → 202 and the request's progress; `GET /preheat/<id>` → the progress of
//!   every chosen node ([`RequestProgress`]).
//! - Peer listener (signed, see [`super::peer`]): `POST /preheat/<id>?image=<ref@digest>&...
//!   &platform=os/arch` starts a job here → 202; `GET /preheat/<id>` → this node's
//!   [`NodeProgress`].
//!
//! Errors are OCI error bodies like every other answer ([`ApiError`]): 400 `NAME_INVALID` for a
//! bad image reference, 400 `UNSUPPORTED` for another bad request, 403 `DENIED` for a registry
//! that is not mirrored, 404 `UNSUPPORTED` for an unknown id, 503 `UNAVAILABLE` when preheat is
//! off or the node is full, 502 otherwise (a tag that cannot be resolved, containerd failing).
//!
//! [`PreheatRequest`]: crate::preheat::PreheatRequest
//! [`RequestProgress`]: crate::preheat::RequestProgress
//! [`NodeProgress`]: crate::preheat::NodeProgress

use crate::error::ApiError;
use crate::preheat::{PreheatError, PreheatRequest, Preheater, MAX_BODY};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use std::sync::Arc;

type Data = web::Data<Arc<Preheater>>;

/// The one mapping of preheat failures to HTTP.
pub fn api_error(e: &PreheatError) -> ApiError {
    let message = e.to_string();
    match e {
        PreheatError::BadImage { .. } => ApiError::NameInvalid(message),
        PreheatError::BadPlatform(_) | PreheatError::BadRequest(_) => {
            ApiError::Unsupported { status: StatusCode::BAD_REQUEST, message }
        }
        PreheatError::NotMirrored { .. } => ApiError::Forbidden(message),
        PreheatError::Unknown(_) => ApiError::Unsupported { status: StatusCode::NOT_FOUND, message },
        PreheatError::Disabled | PreheatError::Busy(_) => {
            ApiError::Unavailable { status: StatusCode::SERVICE_UNAVAILABLE, message }
        }
        PreheatError::Resolve { .. }
        | PreheatError::NoPlatform { .. }
        | PreheatError::Source { .. }
        | PreheatError::Containerd(_)
        | PreheatError::Timeout(_) => ApiError::BadGateway { code: "UNAVAILABLE", message },
    }
}

fn error(e: &PreheatError) -> HttpResponse {
    api_error(e).error_response()
}

/// Routes of the node-local front end.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(MAX_BODY).error_handler(|e, _| {
        let message = format!("bad preheat request: {e}");
        let resp = ApiError::Unsupported { status: StatusCode::BAD_REQUEST, message }.error_response();
        actix_web::error::InternalError::from_response(e, resp).into()
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
