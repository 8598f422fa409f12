//! Wiring: the only place where the parts meet. Builds the actors, the content store, the
//! upstream client and both listeners from a [`Config`], then serves until SIGINT/SIGTERM.

use crate::actors::events::{Emit, Event, EventsActor, LogSink, Reason};
use crate::actors::upstream::{Breaker, UpstreamActor};
use crate::config::{Config, LogFormat};
use crate::http::registry::{self, RegistryState};
use crate::http::{self as front, Readiness};
use crate::store::containerd::ContainerdStore;
use crate::store::ContentStore;
use crate::upstream::http::HttpUpstream;
use actix::prelude::*;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;

/// How often repeated warning events may be emitted.
const EVENT_INTERVAL: Duration = Duration::from_secs(60);
/// How often histogram buckets are compacted by the exporter.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Install the tracing subscriber (text or JSON).
pub fn init_tracing(cfg: &crate::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// Run a node until a shutdown signal. Call inside an actix `System`.
pub async fn run(cfg: Config, prometheus: PrometheusHandle) -> Result<(), NodeError> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), http = %cfg.http.addr, metrics = %cfg.metrics.addr, "peerd starting");

    let events = EventsActor::new(Box::new(LogSink), EVENT_INTERVAL).start();
    events.do_send(Emit(Event { reason: Reason::P2PInitializing, message: "peerd is starting".into() }));

    let store =
        ContainerdStore::new(cfg.containerd.socket.clone(), cfg.containerd.namespaces.clone(), cfg.containerd.timeout)
            .map_err(|e| NodeError::Setup(e.to_string()))?;
    match store.probe().await {
        Ok(v) => tracing::info!(namespaces = ?cfg.containerd.namespaces, "local content store: {v}"),
        Err(e) => tracing::warn!(
            "containerd is not reachable ({e}); serving from upstream only until it is (it is retried on every request)"
        ),
    }
    let store: Arc<dyn ContentStore> = Arc::new(store);

    let upstream = Arc::new(HttpUpstream::new(&cfg.upstream).map_err(NodeError::Setup)?);
    let hosts = cfg.registry.hosts.clone();
    let breaker = Breaker::new(cfg.upstream.failure_threshold, cfg.upstream.failure_cooldown);
    // Upstream requests run on their own arbiter, off the system arbiter that runs the others.
    let upstream_arbiter = Arbiter::new();
    let upstream_actor = UpstreamActor::start_in_arbiter(&upstream_arbiter.handle(), move |_| {
        UpstreamActor::new(upstream, &hosts, breaker)
    });
    if cfg.registry.hosts.is_empty() {
        tracing::warn!("registry.hosts is empty: this node mirrors ANY registry named in `ns`");
    }

    let state =
        web::Data::new(RegistryState { store, upstream: upstream_actor.recipient(), cfg: cfg.registry.clone() });
    let ready = web::Data::new(Readiness::default());
    let prom = web::Data::new(prometheus.clone());

    let r1 = ready.clone();
    let mut main = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(r1.clone())
            .wrap(from_fn(front::observe))
            .configure(registry::configure)
            .configure(front::health)
            .default_service(web::to(front::not_found))
    })
    .shutdown_timeout(cfg.http.shutdown_timeout.as_secs())
    .max_connections(cfg.http.max_connections);
    if cfg.http.workers > 0 {
        main = main.workers(cfg.http.workers);
    }
    let main = main.bind(cfg.http.addr).map_err(|source| NodeError::Bind { addr: cfg.http.addr, source })?.run();

    let r2 = ready.clone();
    let metrics = HttpServer::new(move || {
        App::new()
            .app_data(prom.clone())
            .app_data(r2.clone())
            .configure(front::metrics_routes)
            .configure(front::health)
            .default_service(web::to(front::not_found))
    })
    .workers(1)
    .bind(cfg.metrics.addr)
    .map_err(|source| NodeError::Bind { addr: cfg.metrics.addr, source })?
    .run();

    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    });

    ready.set(true);
    tracing::info!("peerd ready");
    let (a, b) = futures_util::future::join(main, metrics).await;
    ready.set(false);
    upstream_arbiter.stop();
    tracing::info!("peerd stopped");
    a.and(b).map_err(NodeError::Serve)
}
