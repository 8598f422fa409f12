//! actix-web front ends: the mirror listener (`/v2`, health) and the metrics listener
//! (`/metrics/prometheus`, health). Cross-cutting concerns live in one middleware, [`observe`]:
//! a correlation id per request (`X-MS-Peerd-CorrelationId`, taken from the client or made up),
//! a tracing span carrying it, and the request metrics, timed until the last body byte.

pub mod blobs;
pub mod debug_web;
pub mod error;
pub mod peer;
pub mod preheat;
pub mod registry;
pub mod server;
pub mod swarm;

pub use registry::method_not_allowed;

use crate::metrics::{Source, REQUESTS, REQUEST_DURATION};
use crate::routing::Router;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use bytes::Bytes;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

/// Correlation id header, as Azure/peerd names it.
pub const CORRELATION_HEADER: &str = "x-ms-peerd-correlationid";
/// Longest client-supplied correlation id kept (longer ones are replaced).
const MAX_CORRELATION_LEN: usize = 64;

/// Readiness shared by both listeners: the node serves, and (with peers) the router is
/// connected to the DHT or knowingly alone.
#[derive(Clone, Default)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    router: Option<Arc<dyn Router>>,
}

impl Readiness {
    pub fn new(router: Option<Arc<dyn Router>>) -> Self {
        Self { serving: Arc::default(), router }
    }
    pub fn set(&self, ready: bool) {
        self.serving.store(ready, Ordering::SeqCst);
    }
    pub async fn get(&self) -> bool {
        if !self.serving.load(Ordering::SeqCst) {
            return false;
        }
        match &self.router {
            Some(r) => r.ready().await,
            None => true,
        }
    }
}

/// `/healthz` (the process answers) and `/readyz` (the node is serving).
pub fn health(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(|| async { HttpResponse::Ok().content_type("text/plain").body("ok\n") }))
        .route(
            "/readyz",
            web::get().to(|r: web::Data<Readiness>| async move {
                if r.get().await {
                    HttpResponse::Ok().content_type("text/plain").body("ready\n")
                } else {
                    HttpResponse::ServiceUnavailable().content_type("text/plain").body("not ready\n")
                }
            }),
        );
}

/// Anything that is not a route: an OCI-style 404.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&crate::error::ApiError::Unsupported {
        status: StatusCode::NOT_FOUND,
        message: format!("no route for {}", req.path()),
    })
}

fn handler_label(path: &str) -> &'static str {
    match path {
        "/v2" | "/v2/" => "v2",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics/prometheus" => "metrics",
        p if p.starts_with("/blobs/") => "blobs_file",
        p if p.starts_with("/blobs-chunk/") => "blobs_chunk",
        p if p.starts_with("/blobs-meta/") => "blobs_meta",
        p if p.starts_with("/blobs-status/") => "blobs_status",
        p if p.starts_with("/swarm/") => "swarm",
        p if p.starts_with("/preheat") => "preheat",
        p if p.starts_with("/v2/") => {
            let mut segs = p.rsplit('/');
            match (segs.next(), segs.next()) {
                (Some(_), Some("manifests")) => "manifests",
                (Some(_), Some("blobs")) => "blobs",
                _ => "v2_other",
            }
        }
        _ => "other",
    }
}

/// Longest request path written to a log line.
pub const MAX_LOGGED_PATH: usize = 256;

/// `s` cut to at most `max` bytes (on a character boundary) for a log line, marked when cut.
pub fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…(+{} bytes)", &s[..end], s.len() - end).into()
}

fn method_label(m: &actix_web::http::Method) -> &'static str {
    match *m {
        actix_web::http::Method::GET => "GET",
        actix_web::http::Method::HEAD => "HEAD",
        _ => "other",
    }
}

fn correlation_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_CORRELATION_LEN && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The observability middleware (see the module docs).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let cid = correlation_id(&req);
    let handler = handler_label(req.path());
    let method = method_label(req.method());
    // The path and method are the client's: clipped, so no request makes a log line bigger than
    // a few hundred bytes (every line of the request's span carries them).
    let span = tracing::info_span!("request", correlation_id = %cid, method = %clip(req.method().as_str(), 16), path = %clip(req.path(), MAX_LOGGED_PATH));
    // Bodies that stream content hold a slot of the node's transfer budget until they end: no
    // slot, a 503 at once (containerd then asks the registry itself) rather than more memory.
    let slot = match req.app_data::<web::Data<TransferBudget>>() {
        Some(budget) if req.method() == actix_web::http::Method::GET && is_transfer(handler) => {
            match budget.slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    metrics::counter!(TRANSFERS_REFUSED).increment(1);
                    let resp = actix_web::ResponseError::error_response(&crate::error::ApiError::Unavailable {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        message: format!("{} transfers in flight on this node (http.max_transfers)", budget.max),
                    });
                    return Ok(req.into_response(resp));
                }
            }
        }
        _ => None,
    };
    // Content answers are remembered for the debug page (`/debug/web`), when it is on.
    let record = match req.app_data::<web::Data<Arc<debug_web::Recorder>>>() {
        Some(r) if req.method() == actix_web::http::Method::GET && matches!(handler, "blobs" | "blobs_file") => {
            let to = if req.headers().contains_key(crate::peer::REQUEST_FROM_PEER) { "peer" } else { "client" };
            Some((r.get_ref().clone(), clip(req.path(), 160).into_owned(), to))
        }
        _ => None,
    };
    let sink = req.conn_data::<Arc<crate::sendfile::Sink>>().cloned();
    let mut res = next.call(req).instrument(span.clone()).await?;
    // Content bodies are written to the socket directly (not copied into actix's buffer), and
    // those that pass a file's bytes on unchanged may be sent from the page cache.
    let direct = sink
        .and_then(|sink| {
            let r = res.response();
            let files = r.extensions().get::<crate::sendfile::Direct>().is_some();
            match r.body().size() {
                BodySize::Sized(n)
                    if n >= crate::sendfile::MIN_DIRECT && method == "GET" && (files || is_transfer(handler)) =>
                {
                    Some((sink, files, n))
                }
                _ => None,
            }
        })
        .map(|(sink, files, n)| {
            // Framed by its Content-Length, however the handler built it: actix passes the body
            // through uncounted only then (a sized body without the header would go chunked).
            res.response_mut().head_mut().no_chunking(true);
            res.headers_mut().insert(actix_web::http::header::CONTENT_LENGTH, HeaderValue::from(n));
            crate::sendfile::Outgoing::new(sink, files, n)
        });
    let status = res.status().as_u16();
    let source = res.response().extensions().get::<Source>().map_or("none", |s| s.as_str());
    let record = record.map(|(r, what, to)| Record { recorder: r, what, to, source, status });
    metrics::counter!(REQUESTS, "handler" => handler, "method" => method, "status" => status.to_string(), "source" => source)
        .increment(1);
    span.in_scope(|| tracing::debug!(status, source, "response started"));
    if let Ok(v) = HeaderValue::from_str(&cid) {
        res.headers_mut().insert(HeaderName::from_static(CORRELATION_HEADER), v);
    }
    Ok(res.map_body(|_, body| {
        BoxBody::new(Timed {
            body: body.boxed(),
            started,
            handler,
            method,
            span,
            failed: false,
            _slot: slot,
            bytes: 0,
            record,
            direct,
        })
    }))
}

/// The node's budget of content bodies in flight (`http.max_transfers`), shared by the front
/// end and the peer listener. Each streaming body holds a bounded amount of memory (one source
/// read ahead, the piece being sent and actix's write buffer: ~1.5 MiB measured), so this
/// bounds the memory of all of them.
pub struct TransferBudget {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl TransferBudget {
    pub fn new(max: usize) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(max)), max }
    }
}

/// Handlers whose GET answers stream content (blobs, /blobs files and chunks, swarm chunks).
fn is_transfer(handler: &str) -> bool {
    matches!(handler, "blobs" | "blobs_file" | "blobs_chunk" | "swarm")
}

/// Requests refused because the transfer budget was used up.
pub const TRANSFERS_REFUSED: &str = "peerd_transfers_refused_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        TRANSFERS_REFUSED,
        "Content requests answered 503 because http.max_transfers bodies were already streaming"
    );
}

/// Records the request duration when the body is done (or dropped: client gone, aborted).
struct Timed {
    body: BoxBody,
    started: Instant,
    handler: &'static str,
    method: &'static str,
    span: tracing::Span,
    failed: bool,
    /// The transfer budget slot, released when the body ends or is dropped.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Body bytes sent.
    bytes: u64,
    /// Where to remember this transfer (the debug page), if anywhere.
    record: Option<Record>,
    /// The body is written to the socket directly ([`crate::sendfile`]).
    direct: Option<crate::sendfile::Outgoing>,
}

struct Record {
    recorder: Arc<debug_web::Recorder>,
    what: String,
    to: &'static str,
    source: &'static str,
    status: u16,
}

impl MessageBody for Timed {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        match self.body.size() {
            // Framed by its Content-Length header, not counted by actix: the bytes written
            // directly reach actix as empty chunks (`Outgoing` checks the length itself).
            BodySize::Sized(_) if self.direct.is_some() => BodySize::Stream,
            size => size,
        }
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        let polled = match this.direct.as_mut() {
            Some(out) => {
                let polled = out.poll(Pin::new(&mut this.body), cx);
                this.bytes = out.done();
                polled
            }
            None => {
                let polled = Pin::new(&mut this.body).poll_next(cx);
                if let Poll::Ready(Some(Ok(b))) = &polled {
                    this.bytes += b.len() as u64;
                }
                polled
            }
        };
        if let Poll::Ready(Some(Err(e))) = &polled {
            this.failed = true;
            this.span.in_scope(|| tracing::warn!(error = %e, "response body aborted"));
        }
        polled
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        metrics::histogram!(REQUEST_DURATION, "handler" => self.handler, "method" => self.method).record(secs);
        let failed = self.failed;
        self.span.in_scope(|| tracing::debug!(seconds = secs, failed, "request finished"));
        if let Some(r) = self.record.take() {
            r.recorder.record(debug_web::Transfer {
                at: std::time::SystemTime::now(),
                what: r.what,
                to: r.to,
                source: r.source,
                status: if failed { 0 } else { r.status },
                bytes: self.bytes,
                seconds: secs,
            });
        }
    }
}

/// What the metrics listener renders: peerd's metrics, then libp2p's (prefix `libp2p_`).
pub struct MetricsSources {
    pub peerd: metrics_exporter_prometheus::PrometheusHandle,
    pub libp2p: Option<prometheus_client::registry::Registry>,
    pub router: Option<Arc<dyn Router>>,
}

/// `/metrics/prometheus`: peerd's metrics, then libp2p's.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/metrics/prometheus",
        web::get().to(|m: web::Data<MetricsSources>| async move {
            let mut text = m.peerd.render();
            if let Some(reg) = &m.libp2p {
                let mut lib = String::new();
                if prometheus_client::encoding::text::encode(&mut lib, reg).is_ok() {
                    // Both are complete expositions; drop libp2p's EOF marker in the middle.
                    text.push_str(lib.trim_end().trim_end_matches("# EOF"));
                }
            }
            HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
        }),
    );
}

/// The debug pages `/debug/p2p` (routing status) and `/debug/resolve?key=<digest or
/// host/repo:tag>` (who holds a key) — "how do I know it works". On the node-local front end,
/// and on the metrics listener with `metrics.debug` (they tell who holds which digest).
pub fn debug_routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/debug/p2p",
        web::get().to(|m: web::Data<MetricsSources>| async move {
            match &m.router {
                Some(r) => match r.status().await {
                    Ok(s) => HttpResponse::Ok().json(s),
                    Err(e) => HttpResponse::ServiceUnavailable().body(e.to_string()),
                },
                None => HttpResponse::NotFound().body("p2p is disabled\n"),
            }
        }),
    )
    .route(
        "/debug/resolve",
        web::get().to(
            |m: web::Data<MetricsSources>, q: web::Query<std::collections::HashMap<String, String>>| async move {
                let Some(r) = &m.router else {
                    return HttpResponse::NotFound().body("p2p is disabled\n");
                };
                let Some(key) = q.get("key").filter(|k| !k.is_empty()) else {
                    return HttpResponse::BadRequest()
                        .body("?key= is missing: a digest (sha256:...) or host/repo:tag\n");
                };
                let started = Instant::now();
                match r.resolve(key.clone(), DEBUG_RESOLVE_MAX).await {
                    Ok(rx) => {
                        let peers = crate::routing::collect_peers(rx, DEBUG_RESOLVE_TIMEOUT).await;
                        let peers: Vec<_> =
                            peers.iter().map(|p| serde_json::json!({"id": p.id, "addr": p.addr.to_string()})).collect();
                        HttpResponse::Ok().json(
                            serde_json::json!({"key": key, "peers": peers, "seconds": started.elapsed().as_secs_f64()}),
                        )
                    }
                    Err(e) => HttpResponse::ServiceUnavailable().body(e.to_string()),
                }
            },
        ),
    );
}

const DEBUG_RESOLVE_MAX: usize = 20;
const DEBUG_RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests;
