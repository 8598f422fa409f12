//! Wiring: the only place where the parts meet. Builds the actors, the content store, the
//! upstream client and both listeners from a [`Config`], then serves until SIGINT/SIGTERM.

use crate::actors::advertise::Advertiser;
use crate::actors::events::EventsActor;
use crate::actors::peers::PeerSelector;
use crate::actors::upstream::{Breaker, Gate};
use crate::config::{Config, LogFormat};
use crate::events::{Event, LogSink, Reason};
use crate::http::peer::PeerGuard;
use crate::http::registry;
use crate::http::{self as front, MetricsSources, Readiness};
use crate::lifecycle::Lifecycle;
use crate::mirror::{PeerPath, RegistryState};
use crate::peer::auth::ClusterKey;
use crate::peer::client::PeerClient;
use crate::routing::p2p::{P2pRouter, RouterConfig};
use crate::routing::Router;
use crate::store::containerd::ContainerdStore;
use crate::store::ContentStore;
use crate::upstream::http::HttpUpstream;
use actix::prelude::*;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;

/// Every component's metric descriptions, passed to [`crate::metrics::install`].
pub const METRICS: &[fn()] = &[
    crate::http::describe,
    crate::mirror::describe,
    crate::store::describe,
    crate::sendfile::describe,
    crate::peer::describe,
    crate::routing::describe,
    crate::transfer::sources::describe,
    crate::actors::upstream::describe,
    crate::events::describe,
    crate::actors::advertise::describe,
    crate::actors::peers::describe,
    crate::blobs::describe,
    crate::swarm::describe,
    crate::preheat::describe,
    crate::kube::describe,
];

/// Histograms that count things rather than seconds.
pub const METRIC_BUCKETS: &[crate::metrics::Buckets] =
    &[(crate::routing::PEERS_FOUND, crate::routing::PEERS_FOUND_BUCKETS)];

/// A node still not ready after this long says why it may be.
const NOT_READY_WARNING: Duration = Duration::from_secs(30);
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
    let mut filter = tracing_subscriber::EnvFilter::new(&cfg.level);
    // kad warns "Failed to trigger bootstrap: No known peers" on every lone node, where it is
    // normal; peerd reports its own bootstrap state (P2P* events, /debug/p2p, readiness).
    if !cfg.level.contains("libp2p_kad") {
        if let Ok(d) = "libp2p_kad::behaviour=error".parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colours only on a terminal: `kubectl logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cfg.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// Run a node until a shutdown signal. Call inside an actix `System`.
pub async fn run(cfg: Config, prometheus: PrometheusHandle) -> Result<(), NodeError> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"), http = %cfg.http.addr, compat = cfg.http.compat_addr, peer = %cfg.peer.addr,
        metrics = %cfg.metrics.addr, mirrored = ?cfg.registry.hosts, "peerd starting"
    );

    let sink: Box<dyn crate::events::EventSink> = if cfg.kubernetes.events_enabled() {
        match crate::kube::KubeSink::start(&cfg.kubernetes) {
            Ok(s) => {
                tracing::info!(
                    api = cfg.kubernetes.api_url,
                    pod = cfg.kubernetes.pod_name,
                    "posting events to Kubernetes"
                );
                Box::new(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot post Kubernetes events; logging them only");
                Box::new(LogSink)
            }
        }
    } else {
        Box::new(LogSink)
    };
    let events = EventsActor::new(sink, cfg.kubernetes.min_event_interval).start();
    crate::events::report(
        &events.clone().recipient(),
        Event { reason: Reason::P2PInitializing, message: "peerd is starting".into() },
    );

    let store =
        ContainerdStore::new(cfg.containerd.socket.clone(), cfg.containerd.namespaces.clone(), cfg.containerd.timeout)
            .map_err(|e| NodeError::Setup(e.to_string()))?
            .with_content_dir(Some(cfg.containerd.content_dir.clone().into()));
    match store.probe().await {
        Ok(v) => tracing::info!(namespaces = ?cfg.containerd.namespaces, "local content store: {v}"),
        Err(e) => tracing::warn!(
            "containerd is not reachable ({e}); serving from upstream only until it is (it is retried on every request)"
        ),
    }
    let store: Arc<dyn ContentStore> = Arc::new(store);

    let upstream = Arc::new(HttpUpstream::new(&cfg.upstream, &cfg.registry.hosts).map_err(NodeError::Setup)?);
    let hosts = cfg.registry.hosts.clone();
    let breaker = Breaker::new(cfg.upstream.failure_threshold, cfg.upstream.failure_cooldown);
    // Admission decisions only; the requests run on their own arbiter, off the HTTP workers.
    let upstream_arbiter = Arbiter::new();
    let upstream_gate = Gate::start(upstream, &hosts, breaker).with_io(upstream_arbiter.handle());
    if cfg.registry.hosts.is_empty() {
        tracing::warn!("registry.hosts is empty: this node mirrors ANY registry named in `ns`");
    }

    let p2p = match p2p_key(&cfg)? {
        Some(key) => Some(start_p2p(&cfg, key, store.clone(), &events).await?),
        None => None,
    };
    // Chunks sent to peers at once, swarm downloads' and /blobs' together.
    let uploads = Arc::new(tokio::sync::Semaphore::new(cfg.swarm.upload_slots));
    let blob_peers = p2p.as_ref().map(|p| crate::blobs::BlobPeers {
        uploads: uploads.clone(),
        report: p.path.report.clone(),
        served: p.path.served.clone(),
        client: p.path.client.clone(),
        router: p.router.clone(),
        me: p.peer_id.clone(),
    });
    let blobs = if cfg.blobs.enabled {
        let dir = if cfg.blobs.cache_dir.is_empty() {
            cfg.p2p.data_dir.join("blobs")
        } else {
            cfg.blobs.cache_dir.clone().into()
        };
        writable(&dir, "blobs.cache_dir")?;
        let state = crate::blobs::BlobsState::new(
            cfg.blobs.clone(),
            &dir,
            cfg.upstream.connect_timeout,
            cfg.upstream.idle_timeout,
            blob_peers,
            upstream_gate.clone(),
        )
        .map_err(NodeError::Setup)?;
        tracing::info!(cache = %dir.display(), cached_bytes = state.cache().total_bytes(), allowed = ?cfg.blobs.allowed_hosts, "/blobs enabled");
        Some(web::Data::new(Arc::new(state)))
    } else {
        None
    };
    // Swarming is between nodes: a single-node mirror streams directly.
    let swarm = if cfg.swarm.enabled && p2p.is_some() {
        let dir = if cfg.swarm.spool_dir.is_empty() {
            cfg.p2p.data_dir.join("swarm")
        } else {
            cfg.swarm.spool_dir.clone().into()
        };
        let peers = p2p.as_ref().map(|p| crate::swarm::SwarmPeers {
            router: p.router.clone(),
            client: p.path.client.clone(),
            me: p.peer_id.clone(),
            active: p.path.served.clone(),
            uploads: uploads.clone(),
        });
        writable(&dir, "swarm.spool_dir")?;
        let sw = crate::swarm::Swarming::new(cfg.swarm.clone(), dir.clone(), upstream_gate.clone(), peers)
            .map_err(NodeError::Setup)?;
        tracing::info!(spool = %dir.display(), chunk_size = cfg.swarm.chunk_size, "swarming enabled");
        Some(sw)
    } else {
        None
    };
    let swarm_data = swarm.clone().map(web::Data::new);
    let preheat = web::Data::new(preheater(&cfg, p2p.as_ref(), &events)?);
    let debug_web = match cfg.metrics.debug_web {
        true => Some(web::Data::new(crate::http::debug_web::DebugWeb {
            started: std::time::Instant::now(),
            peer_id: p2p.as_ref().map_or_else(|| "(p2p off)".to_owned(), |p| p.peer_id.clone()),
            addrs: vec![
                ("front end (node-local)", cfg.http.addr.to_string()),
                ("peer listener", cfg.peer.addr.to_string()),
                ("p2p", cfg.p2p.addr.to_string()),
                ("metrics", cfg.metrics.addr.to_string()),
            ],
            store: store.clone(),
            router: p2p.as_ref().map(|p| p.router.clone()),
            preheat: preheat.get_ref().clone(),
            recorder: Default::default(),
            prometheus: prometheus.clone(),
            front: front_url(cfg.http.addr),
            client: p2p.as_ref().map(|p| p.path.client.clone()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| NodeError::Setup(format!("debug page HTTP client: {e}")))?,
        })),
        false => None,
    };
    let recorder = debug_web.as_ref().map(|d| web::Data::new(d.recorder.clone()));
    let (peers, router, libp2p_registry, _p2p_arbiter) = match p2p {
        Some(p) => (Some(p.path), Some(p.router), Some(p.registry), Some(p.arbiter)),
        None => (None, None, None, None),
    };

    let guard = peers.as_ref().map(|p| web::Data::new(PeerGuard::new(p.key.clone())));
    let state = web::Data::new(RegistryState {
        store,
        upstream: upstream_gate.clone(),
        cfg: cfg.registry.clone(),
        peers,
        swarm: swarm.clone(),
        flights: Default::default(),
        peer_checked: Default::default(),
    });
    let ready = web::Data::new(Readiness::new(router.clone()));
    let sources =
        web::Data::new(MetricsSources { peerd: prometheus.clone(), libp2p: libp2p_registry, router: router.clone() });
    // Background work of this node, ended together at shutdown.
    let life = Lifecycle::new();

    // The node-local front end (containerd, overlaybd): /v2, /blobs, /debug/*, health.
    let budget = web::Data::new(front::TransferBudget::new(cfg.http.max_transfers));
    let (s0, r1, s1, b1, t1) = (state.clone(), ready.clone(), sources.clone(), blobs.clone(), budget.clone());
    let (h1, rec1) = (preheat.clone(), recorder.clone());
    let settings = front::server::Settings {
        workers: cfg.http.workers,
        max_connections: cfg.http.max_connections,
        shutdown_timeout: cfg.http.shutdown_timeout,
        write_timeout: cfg.http.write_timeout,
    };
    let mut front_addrs = vec![cfg.http.addr];
    front_addrs.extend(cfg.http.compat().map_err(|e| NodeError::Setup(e.to_string()))?);
    let mut front_listeners = Vec::new();
    for addr in &front_addrs {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "the front end (/v2, /blobs) listens on a non-loopback address: anyone who reaches it can read every layer this node and its peers hold");
        }
        front_listeners.push(listener(*addr)?);
    }
    let front_end = front::server::serve("front-end", front_listeners, settings, move || {
        App::new()
            .app_data(s0.clone())
            .app_data(r1.clone())
            .app_data(s1.clone())
            .app_data(t1.clone())
            .app_data(h1.clone())
            .configure(|c| {
                optional_data(c, &rec1);
                optional_data(c, &b1);
            })
            .wrap(from_fn(front::observe))
            .configure(registry::configure)
            .configure(|c| {
                if b1.is_some() {
                    crate::http::blobs::configure(c)
                }
            })
            .configure(front::debug_routes)
            .configure(crate::http::preheat::configure)
            .configure(front::health)
            .default_service(web::to(front::not_found))
    })
    .map_err(|source| NodeError::Bind { addr: cfg.http.addr, source })?;

    // The peer listener: other nodes, every request authenticated (with p2p only).
    let peer_server = match guard {
        Some(guard) => {
            let (state, blobs, swarm, budget) = (state.clone(), blobs.clone(), swarm_data.clone(), budget.clone());
            let (h2, rec2) = (preheat.clone(), recorder.clone());
            let server = front::server::serve("peer-listener", vec![listener(cfg.peer.addr)?], settings, move || {
                App::new()
                    .app_data(state.clone())
                    .app_data(guard.clone())
                    .app_data(budget.clone())
                    .app_data(h2.clone())
                    .configure(|c| {
                        optional_data(c, &rec2);
                        optional_data(c, &blobs);
                        optional_data(c, &swarm);
                    })
                    .wrap(from_fn(crate::http::peer::authenticate))
                    .wrap(from_fn(front::observe))
                    .configure(registry::configure_peer)
                    .configure(crate::http::preheat::configure_peer)
                    .configure(|c| {
                        if blobs.is_some() {
                            crate::http::blobs::configure_peer(c)
                        }
                        if swarm.is_some() {
                            crate::http::swarm::configure(c)
                        }
                    })
                    .default_service(web::to(front::not_found))
            })
            .map_err(|source| NodeError::Bind { addr: cfg.peer.addr, source })?;
            tracing::info!(addr = %cfg.peer.addr, "peer listener");
            Some(server)
        }
        None => None,
    };

    let (r2, debug) = (ready.clone(), cfg.metrics.debug);
    if let Some(d) = &debug_web {
        crate::http::debug_web::spawn_sampler(d.recorder.clone(), prometheus.clone());
        tracing::info!(addr = %cfg.metrics.addr, "debug page at /debug/web (metrics.debug_web)");
    }
    let metrics = HttpServer::new(move || {
        let mut app = App::new().app_data(sources.clone()).app_data(r2.clone());
        if let Some(d) = &debug_web {
            app = app.app_data(d.clone());
        }
        app.configure(front::metrics_routes)
            .configure(|c| {
                if debug {
                    front::debug_routes(c)
                }
                if debug_web.is_some() {
                    crate::http::debug_web::routes(c)
                }
            })
            .configure(front::health)
            .default_service(web::to(front::not_found))
    })
    .workers(1)
    .disable_signals()
    .listen(listener(cfg.metrics.addr)?)
    .map_err(|source| NodeError::Bind { addr: cfg.metrics.addr, source })?
    .run();

    life.spawn(async move {
        let mut tick = actix_rt::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    });

    // Announced as a preheat target once the router is up.
    let (announce, announce_ready) = (preheat.clone(), ready.clone());
    actix_rt::spawn(async move {
        while !announce_ready.get().await {
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
        announce.announce().await;
    });
    ready.set(true);
    // "ready" only when /readyz says so: with peers configured that needs a connection.
    let watch = ready.clone();
    life.spawn(async move {
        let started = std::time::Instant::now();
        let mut warned = false;
        loop {
            if watch.get().await {
                tracing::info!(seconds = started.elapsed().as_secs_f64(), "peerd ready");
                return;
            }
            if !warned && started.elapsed() >= NOT_READY_WARNING {
                warned = true;
                tracing::warn!("serving, but not ready: no bootstrap peer reachable yet (a wrong cluster secret, a mistyped or unresolvable --bootstrap-peer, or the other nodes are not up); /debug/p2p shows the routing state");
            }
            actix_rt::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    tracing::info!("peerd serving");
    let (front_handle, metrics_handle) = (front_end.handle(), metrics.handle());
    let peer_handle = peer_server.as_ref().map(|s| s.handle());
    let peer_server = async move {
        match peer_server {
            Some(s) => s.await,
            None => Ok(()),
        }
    };
    let servers = futures_util::future::join3(front_end, metrics, peer_server);
    // The shutdown runs beside the servers (they must keep being polled to carry out a stop).
    let (grace, ready_now, swarm_now, blobs_now, router_now) =
        (cfg.http.shutdown_timeout, ready.clone(), swarm.clone(), blobs.clone(), router.clone());
    let drain = actix_rt::spawn(async move {
        let signal = crate::lifecycle::termination().await;
        // 1. Not ready: /readyz answers 503 from now on.
        ready_now.set(false);
        tracing::info!(
            signal = signal.unwrap_or("signal handler failed"),
            ?grace,
            "shutting down: not ready, no new connections; transfers in flight get the grace period"
        );
        // 2 and 3. Stop accepting; in-flight requests finish within the grace, then are cut.
        let peer_stop = async {
            if let Some(h) = &peer_handle {
                h.stop(true).await;
            }
        };
        futures_util::future::join(front_handle.stop(true), peer_stop).await;
        // 4. Background work: downloads, prefetch, the libp2p owner task, upkeep loops.
        if let Some(sw) = &swarm_now {
            sw.shut_down();
        }
        if let Some(b) = &blobs_now {
            b.shut_down();
        }
        if let Some(r) = &router_now {
            r.shut_down().await;
        }
        if !life.shut_down(BACKGROUND_GRACE).await {
            tracing::warn!("background work did not end within {BACKGROUND_GRACE:?}; leaving it");
        }
        // 5. The metrics listener last, so the shutdown stays observable.
        metrics_handle.stop(true).await;
    });
    let (a, b, c) = servers.await;
    // Servers that ended on their own (an error) end the node too.
    drain.abort();
    upstream_arbiter.stop();
    ready.set(false);
    tracing::info!("peerd stopped");
    a.and(b).and(c).map_err(NodeError::Serve)
}

/// How long background work gets to end after the servers stopped.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The node's own front end, as a client on this node reaches it.
fn front_url(addr: std::net::SocketAddr) -> String {
    match addr {
        a if a.ip().is_unspecified() && a.is_ipv4() => format!("http://127.0.0.1:{}", a.port()),
        a if a.ip().is_unspecified() => format!("http://[::1]:{}", a.port()),
        a => format!("http://{a}"),
    }
}

/// The preheat service: requester always, target when `preheat.enabled` (with a containerd
/// writer in the first served namespace, or `preheat.namespace`).
fn preheater(
    cfg: &Config,
    p2p: Option<&P2p>,
    events: &Addr<EventsActor>,
) -> Result<Arc<crate::preheat::Preheater>, NodeError> {
    use crate::preheat::{containerd_write::ContainerdWriter, PreheatParts, Preheater};
    let namespace = if cfg.preheat.namespace.is_empty() {
        cfg.containerd.namespaces.first().cloned().unwrap_or_default()
    } else {
        cfg.preheat.namespace.clone()
    };
    let writer = cfg
        .preheat
        .enabled
        .then(|| ContainerdWriter::new(cfg.containerd.socket.clone(), namespace, cfg.containerd.timeout))
        .transpose()
        .map_err(|e| NodeError::Setup(e.to_string()))?;
    let front = front_url(cfg.http.addr);
    Preheater::new(PreheatParts {
        cfg: cfg.preheat.clone(),
        mirrored: cfg.registry.hosts.clone(),
        default_ns: cfg.registry.default_ns.clone(),
        max_manifest: cfg.registry.max_manifest_bytes,
        front,
        writer,
        router: p2p.map(|p| p.router.clone()),
        client: p2p.map(|p| p.path.client.clone()),
        me: p2p.map_or_else(|| "this-node".to_owned(), |p| p.peer_id.clone()),
        my_addr: cfg.peer.addr,
        events: Some(events.clone().recipient()),
    })
    .map_err(NodeError::Setup)
}

struct P2p {
    path: PeerPath,
    peer_id: String,
    router: Arc<dyn Router>,
    registry: prometheus_client::registry::Registry,
    arbiter: Arbiter,
}

/// A listening socket for `addr`. `[::]` listens on both stacks (IPv6, and IPv4 as mapped
/// addresses, whatever `net.ipv6.bindv6only` says); on a node without IPv6 it falls back to
/// `0.0.0.0` with a warning, so one setting (the chart's `bindAddress: "::"`) fits IPv4-only,
/// IPv6-only and dual-stack nodes.
pub fn listener(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, NodeError> {
    use socket2::{Domain, Socket, Type};
    let open = |addr: std::net::SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    match open(addr) {
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
            let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(%addr, error = %e, fallback = %v4, "no IPv6 on this node: listening on IPv4 only");
            open(v4).map_err(|source| NodeError::Bind { addr: v4, source })
        }
        other => other.map_err(|source| NodeError::Bind { addr, source }),
    }
}

/// Fail at start, naming the directory and the key, when `dir` cannot be written (rather than
/// failing every chunk later). Creates it when missing.
fn writable(dir: &std::path::Path, key: &str) -> Result<(), NodeError> {
    let hint = |e: std::io::Error| {
        NodeError::Setup(format!(
            "{key} {} is not writable: {e} (set {key}, or --data-dir DIR, to a directory peerd can write)",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(hint)?;
    let probe = dir.join(format!(".peerd-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(hint)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Whether p2p runs, and with which key: `Some(Some(key))` with a secret, `Some(None)` only when
/// insecure operation was asked for explicitly, `None` (a single-node mirror) otherwise.
#[allow(clippy::option_option)]
fn p2p_key(cfg: &Config) -> Result<Option<Option<Arc<ClusterKey>>>, NodeError> {
    let p = &cfg.p2p;
    if !p.enabled {
        tracing::info!("p2p disabled: single-node mirror");
        return Ok(None);
    }
    match p.secret_bytes().map_err(|e| NodeError::Setup(e.to_string()))? {
        Some(s) => Ok(Some(Some(Arc::new(ClusterKey::derive(&s))))),
        None if p.insecure_no_secret => {
            tracing::warn!(
                p2p = %p.addr, peer = %cfg.peer.addr,
                "p2p WITHOUT A CLUSTER SECRET (p2p.insecure_no_secret): any host that reaches these ports can join the DHT and read every layer this node holds"
            );
            Ok(Some(None))
        }
        None => {
            tracing::warn!(
                "p2p is OFF: no cluster secret (set p2p.secret_file / --secret-file or PEERD_P2P__SECRET, at least 16 characters). Running as a single-node mirror."
            );
            Ok(None)
        }
    }
}

/// Identity, the Swarming (on its own arbiter), and the fetch and advertisement actors.
async fn start_p2p(
    cfg: &Config,
    key: Option<Arc<ClusterKey>>,
    store: Arc<dyn ContentStore>,
    events: &Addr<EventsActor>,
) -> Result<P2p, NodeError> {
    let p = &cfg.p2p;
    let keypair = crate::peer::identity::load_or_create(&p.data_dir).map_err(|e| {
        NodeError::Setup(format!(
            "node identity: {e} (p2p.data_dir must be writable: use --data-dir DIR, or run as root for the default {})",
            p.data_dir.display()
        ))
    })?;
    // libp2p listens with SO_REUSEPORT, so a second node on the same address would share the
    // port (the kernel splitting connections between two identities). A plain bind finds it.
    std::net::TcpListener::bind(p.addr).map_err(|source| NodeError::Bind { addr: p.addr, source })?;
    let peer_id = keypair.public().to_peer_id().to_base58();
    let rcfg = RouterConfig {
        listen: p.addr,
        keypair,
        psk: key.as_ref().map(|k| k.psk()),
        http_port: cfg.peer.addr.port(),
        max_connections: p.max_connections,
        max_connections_per_peer: p.max_connections_per_peer,
        max_pending_incoming: p.max_pending_incoming,
        bootstrap_peers: p.bootstrap_peers.clone(),
        bootstrap_dns: (!p.bootstrap_dns.is_empty()).then(|| p.bootstrap_dns.clone()),
        bootstrap_interval: p.bootstrap_interval,
        provider_ttl: p.provider_ttl,
        provider_republish: p.provider_republish,
        max_provided_keys: p.max_provided_keys,
        events: Some(events.clone().recipient()),
    };
    // The Swarming is built inside the arbiter that polls it.
    let arbiter = Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let _ = tx.send(P2pRouter::start(rcfg));
    });
    let (router, registry) = rx
        .await
        .map_err(|_| NodeError::Setup("p2p arbiter stopped".into()))?
        .map_err(|e| NodeError::Setup(e.to_string()))?;
    let router: Arc<dyn Router> = Arc::new(router);
    tracing::info!(peer_id, secret = key.is_some(), "p2p started");

    let fetch =
        PeerSelector::new(router.clone(), p.resolve_timeout, p.max_peers, Some(events.clone().recipient())).start();
    let client =
        PeerClient::new(p.connect_timeout, p.idle_timeout, key.clone(), peer_id.clone()).map_err(NodeError::Setup)?;
    Advertiser::new(store, router.clone()).start();
    let path = PeerPath {
        locate: fetch.clone().recipient(),
        report: fetch.clone().recipient(),
        corrupt: fetch.clone().recipient(),
        suspect: fetch.clone().recipient(),
        served: fetch.recipient(),
        client: Arc::new(client),
        key,
        hedge: p.hedge_delay,
        resolve_tags: p.resolve_tags,
        tags_on_upstream_error: p.tags_on_upstream_error,
    };
    Ok(P2p { path, peer_id, router, registry, arbiter })
}

/// Register `data` with a listener's app when this node has it (the /blobs state without
/// `blobs.enabled`, the swarm without p2p, ...).
fn optional_data<T: Clone + 'static>(c: &mut web::ServiceConfig, data: &Option<T>) {
    if let Some(d) = data {
        c.app_data(d.clone());
    }
}
