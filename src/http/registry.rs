//! `/v2` over HTTP: the routes on the node-local front end and on the peer listener, the
//! extraction of a request into a [`Route`] and an [`Ask`], and the rendering of the
//! [`Answer`] the mirror service ([`crate::mirror`]) gives. No source decisions here.

use crate::error::ApiError;
use crate::metrics::Source;
use crate::mirror::{self, parse_path, Answer, Ask, BlobAnswer, ManifestAnswer, RegistryState, Route};
use crate::oci::{media, parse_ns};
use crate::range;
use crate::stream::ByteStream;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

/// Header carrying a blob or manifest digest (distribution API).
pub const DIGEST_HEADER: &str = "Docker-Content-Digest";

/// `/v2` on the peer listener: what this node holds, for other nodes (behind
/// [`super::peer::authenticate`]). Never asks peers or the upstream (no loops).
pub fn configure_peer(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v2/{tail:.*}")
            .route(web::get().to(peer_dispatch))
            .route(web::head().to(peer_dispatch))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Register `/v2` routes of the node-local front end. The caller provides `web::Data<RegistryState>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(["/v2", "/v2/"])
            .route(web::get().to(base))
            .route(web::head().to(base))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v2/{tail:.*}")
            .route(web::get().to(dispatch))
            .route(web::head().to(dispatch))
            .default_service(web::to(method_not_allowed)),
    );
}

async fn base() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Docker-Distribution-API-Version", "registry/2.0"))
        .content_type("application/json")
        .body("{}")
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::Unsupported {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{} is not supported: peerd is a pull-only mirror", req.method()),
    }
    .error_response()
}

/// A header's value; repeated headers (clients send one `Accept` per media type) are joined
/// with ", " as RFC 9110 §5.3 allows.
fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<String> {
    let values: Vec<&str> = req.headers().get_all(name).filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// The route and what the client asked for beyond the path.
fn parse_request(req: &HttpRequest, st: &RegistryState) -> Result<(Route, Ask), ApiError> {
    let route = parse_path(req.uri().path())?;
    let ns = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "ns")
        .map(|(_, v)| v.into_owned());
    let registry = parse_ns(ns.as_deref(), &st.cfg.default_ns)?;
    // Range applies to blob GETs only; elsewhere it is ignored (RFC 9110 §14.2).
    let range = match (&route, header_str(req, header::RANGE)) {
        (Route::Blob { .. }, Some(v)) if req.method() == actix_web::http::Method::GET => range::parse(&v)?,
        _ => None,
    };
    let ask = Ask {
        registry,
        head: req.method() == actix_web::http::Method::HEAD,
        accept: header_str(req, header::ACCEPT),
        authorization: header_str(req, header::AUTHORIZATION),
        range,
    };
    Ok((route, ask))
}

async fn dispatch(req: HttpRequest, st: web::Data<RegistryState>) -> Result<HttpResponse, ApiError> {
    let (route, ask) = parse_request(&req, &st)?;
    mirror::get(&st, &ask, route).await.map(render)
}

/// A request from another peerd (already authenticated): serve only what this node holds.
async fn peer_dispatch(req: HttpRequest, st: web::Data<RegistryState>) -> HttpResponse {
    let answer = match parse_request(&req, &st) {
        Ok((route, ask)) => mirror::get_for_peer(&st, &ask, route).await,
        Err(e) => Err(e),
    };
    answer.map(render).unwrap_or_else(|e| e.error_response())
}

/// The response for an answer; its source rides along for the request metrics.
fn render(answer: Answer) -> HttpResponse {
    let (mut resp, source) = match answer {
        Answer::Manifest(m) => {
            let source = m.source;
            (manifest(m), source)
        }
        Answer::Blob(b) => {
            let source = b.source;
            (blob(b), source)
        }
    };
    resp.extensions_mut().insert::<Source>(source);
    resp
}

fn empty() -> ByteStream {
    Box::pin(futures_util::stream::empty())
}

fn manifest(m: ManifestAnswer) -> HttpResponse {
    let mut b = HttpResponse::Ok();
    b.insert_header((header::CONTENT_TYPE, m.media_type)).insert_header((DIGEST_HEADER, m.digest.to_string()));
    if m.stale {
        b.insert_header((header::WARNING, "110 peerd \"Response is Stale\""));
    }
    match m.body {
        Some(body) => b.body(body),
        None => b.no_chunking(m.len).streaming(empty()),
    }
}

fn blob(a: BlobAnswer) -> HttpResponse {
    let mut b = match a.range {
        Some(r) => {
            let mut b = HttpResponse::PartialContent();
            b.insert_header((header::CONTENT_RANGE, r.content_range(a.size)));
            b
        }
        None => HttpResponse::Ok(),
    };
    b.insert_header((header::CONTENT_TYPE, media::OCTET_STREAM))
        .insert_header((DIGEST_HEADER, a.digest.to_string()))
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    // Direct sends need the body framed by its length (actix then passes body bytes through).
    if a.direct && a.len.is_some() {
        b.extensions_mut().insert(crate::sendfile::Direct);
    }
    match a.len {
        Some(len) => b.no_chunking(len).streaming(a.body),
        None => b.streaming(a.body),
    }
}
