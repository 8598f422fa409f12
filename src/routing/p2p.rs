//! [`Router`] over libp2p: Kademlia provider records (server mode), identify, TCP + pnet +
//! noise + yamux. One task owns the `Swarm`; [`P2pRouter`] handles send it [`Command`]s over a
//! bounded channel with oneshot replies (pending lookups kept by `QueryId`).
//!
//! Membership: with a cluster secret every connection starts with a pnet handshake keyed by it,
//! so a node without the secret cannot open a connection, let alone join the DHT.

use super::keys::dht_key;
use super::{Peer, Router, RoutingError, Status};
use crate::events::{Emit, Event, Reason};
use actix::Recipient;
use async_trait::async_trait;
use futures_util::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig, GetProvidersOk, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, Transport};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The DHT protocol: peerd's own, so a peerd never joins a public IPFS DHT by accident.
pub const KAD_PROTOCOL: &str = "/peerd/kad/1.0.0";
/// Identify protocol version; peers with another value are not added to the DHT.
pub const IDENTIFY_PROTOCOL: &str = "/peerd/id/1.0.0";
/// Bound of the command channel (callers wait when it is full).
const COMMAND_QUEUE: usize = 256;
/// Most lookups in flight; more are refused rather than queued without bound.
const MAX_PENDING_LOOKUPS: usize = 1024;
/// Provider publications started per sweep tick (250 ms): a node advertising thousands of keys
/// at start-up does not start thousands of DHT queries at once.
const PUBLISH_PER_TICK: usize = 64;
/// How long a lookup may run inside Kademlia before it is abandoned.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the swarm task needs, resolved from config by the caller.
pub struct RouterConfig {
    pub listen: SocketAddr,
    pub keypair: Keypair,
    pub psk: Option<[u8; 32]>,
    /// This node's peer listener port, told to peers through identify.
    pub http_port: u16,
    /// Inbound connection bounds (see `p2p.max_connections` in the config).
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    /// `host:port` (or multiaddr) of peers to dial.
    pub bootstrap_peers: Vec<String>,
    /// `name:port` resolving to peers (a headless Service).
    pub bootstrap_dns: Option<String>,
    pub bootstrap_interval: Duration,
    pub provider_ttl: Duration,
    pub provider_republish: Duration,
    pub max_provided_keys: usize,
    pub events: Option<Recipient<Emit>>,
}

/// Rejected inbound connections are logged at most this often.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    /// Bounds inbound connections (established, per peer, in handshake): a host that opens
    /// thousands of connections cannot exhaust the node's file descriptors.
    limits: libp2p::connection_limits::Behaviour,
}

enum Command {
    /// Keys, whether they go ahead of the queue, reply.
    Provide(Vec<String>, bool, oneshot::Sender<Result<(), RoutingError>>),
    Withdraw(Vec<String>, oneshot::Sender<()>),
    Resolve(String, usize, mpsc::Sender<Peer>),
    Status(oneshot::Sender<Status>),
    /// Bootstrap addresses resolved now, and how many static peers did not resolve.
    Dial(Vec<SocketAddr>, usize),
    /// End the owner task (the node is shutting down): its connections close, its port frees.
    Stop,
}

/// Handle to the swarm task. Cheap to clone.
#[derive(Clone)]
pub struct P2pRouter {
    tx: mpsc::Sender<Command>,
}

impl P2pRouter {
    /// Build the swarm and spawn its task on the current tokio runtime. Returns the handle and
    /// the libp2p metrics registry (rendered with prefix `libp2p_`).
    pub fn start(cfg: RouterConfig) -> Result<(P2pRouter, prometheus_client::registry::Registry), RoutingError> {
        // libp2p-metrics names its metrics `libp2p_*` itself.
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = libp2p::metrics::Metrics::new(&mut registry);
        let swarm = build_swarm(&cfg)?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let router = P2pRouter { tx: tx.clone() };
        // The bootstrap loop must not keep the owner task alive: it holds a weak sender, so the
        // task ends once every handle is dropped (or on `shut_down`), and the loop with it.
        let tx = tx.downgrade();
        let dns = cfg.bootstrap_dns.clone();
        let statics = cfg.bootstrap_peers.clone();
        let interval = cfg.bootstrap_interval;
        let listen = cfg.listen;
        let task = SwarmTask::new(swarm, cfg, metrics, !statics.is_empty() || dns.is_some())?;
        tokio::spawn(task.run(rx));
        // Bootstrap: resolve static names and the DNS name now and periodically, and ask the
        // swarm to dial what it is not connected to.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let (mut addrs, mut unresolved) = (Vec::new(), 0);
                for (i, target) in statics.iter().chain(dns.iter()).enumerate() {
                    match tokio::net::lookup_host(target.as_str()).await {
                        Ok(found) => addrs.extend(found.filter(|a| *a != listen)),
                        Err(e) => {
                            // A static peer that does not resolve is a mistake (a typo), not
                            // "alone": the node stays not ready until it connects somewhere.
                            unresolved += usize::from(i < statics.len());
                            tracing::warn!(target, error = %e, "bootstrap lookup failed")
                        }
                    }
                }
                let Some(tx) = tx.upgrade() else { return };
                if tx.send(Command::Dial(addrs, unresolved)).await.is_err() {
                    return;
                }
            }
        });
        Ok((router, registry))
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, RoutingError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| RoutingError::Stopped)?;
        rx.await.map_err(|_| RoutingError::Stopped)
    }
}

#[async_trait]
impl Router for P2pRouter {
    /// Ends the owner task now; later calls answer [`RoutingError::Stopped`].
    async fn shut_down(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }

    async fn ready(&self) -> bool {
        self.status().await.map(|s| s.ready).unwrap_or(false)
    }
    async fn status(&self) -> Result<Status, RoutingError> {
        self.call(Command::Status).await
    }
    async fn provide(&self, keys: Vec<String>) -> Result<(), RoutingError> {
        self.call(|r| Command::Provide(keys, false, r)).await?
    }
    async fn provide_now(&self, keys: Vec<String>) -> Result<(), RoutingError> {
        self.call(|r| Command::Provide(keys, true, r)).await?
    }
    async fn withdraw(&self, keys: Vec<String>) -> Result<(), RoutingError> {
        self.call(|r| Command::Withdraw(keys, r)).await
    }
    async fn resolve(&self, key: String, max: usize) -> Result<mpsc::Receiver<Peer>, RoutingError> {
        let (tx, rx) = mpsc::channel(max.max(1));
        self.tx.send(Command::Resolve(key, max, tx)).await.map_err(|_| RoutingError::Stopped)?;
        Ok(rx)
    }
}

fn build_swarm(cfg: &RouterConfig) -> Result<Swarm<Behaviour>, RoutingError> {
    let psk = cfg.psk.map(PreSharedKey::new);
    let http_port = cfg.http_port;
    let (max_connections, max_per_peer, max_pending) =
        (cfg.max_connections, cfg.max_connections_per_peer, cfg.max_pending_incoming);
    let store_cfg = MemoryStoreConfig {
        max_records: 16,
        max_value_bytes: 1024,
        max_providers_per_key: kad::K_VALUE.get(),
        max_provided_keys: cfg.max_provided_keys,
    };
    let (ttl, republish) = (cfg.provider_ttl, cfg.provider_republish);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            let base = super::tcp::FreshPortPerDial(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)));
            let secured = match psk {
                Some(psk) => {
                    either::Either::Left(base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)))
                }
                None => either::Either::Right(base),
            };
            Ok(secured
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(10))
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        })
        .map_err(|e| RoutingError::Failed(format!("transport: {e}")))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kcfg.set_query_timeout(QUERY_TIMEOUT)
                .set_provider_record_ttl(Some(ttl))
                .set_provider_publication_interval(Some(republish));
            let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::with_config(peer_id, store_cfg), kcfg);
            // Server mode always: on private and loopback addresses automatic mode never serves.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("peerd/{}; http-port={http_port}", env!("CARGO_PKG_VERSION"))),
            );
            let limits = libp2p::connection_limits::Behaviour::new(
                libp2p::connection_limits::ConnectionLimits::default()
                    .with_max_established_incoming(Some(max_connections))
                    .with_max_established_per_peer(Some(max_per_peer))
                    .with_max_pending_incoming(Some(max_pending)),
            );
            Behaviour { kad, identify, limits }
        })
        .map_err(|e| RoutingError::Failed(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

fn to_multiaddr(a: SocketAddr) -> Multiaddr {
    let mut m = Multiaddr::empty();
    m.push(match a.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    m.push(Protocol::Tcp(a.port()));
    m
}

fn ip_of(m: &Multiaddr) -> Option<IpAddr> {
    m.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn tcp_addr(m: &Multiaddr) -> Option<SocketAddr> {
    let ip = ip_of(m)?;
    let port = m.iter().find_map(|p| if let Protocol::Tcp(port) = p { Some(port) } else { None })?;
    Some(SocketAddr::new(ip, port))
}

struct Lookup {
    tx: mpsc::Sender<Peer>,
    max: usize,
    sent: HashSet<PeerId>,
    started: std::time::Instant,
    /// Kademlia finished; the lookup stays only for providers still being dialed.
    done: bool,
    dialing: usize,
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    metrics: libp2p::metrics::Metrics,
    events: Option<Recipient<Emit>>,
    own_http_port: u16,
    last_reject_log: Option<std::time::Instant>,
    /// Peer → (IP it connects from, its mirror port).
    peers: HashMap<PeerId, (IpAddr, u16)>,
    connected: HashSet<PeerId>,
    /// Peer → its TCP listen addresses (from identify), to avoid re-dialing connected peers.
    listen_of: HashMap<PeerId, Vec<SocketAddr>>,
    lookups: HashMap<QueryId, Lookup>,
    provided: HashSet<String>,
    /// Keys to publish to the DHT, paced by the sweep; held while the routing table is empty
    /// (a record published to nobody would only reach peers at the next republication).
    to_publish: std::collections::VecDeque<String>,
    /// Providers found without a known address, being dialed by peer id (Kademlia supplies the
    /// addresses it learned in the lookup); the lookups waiting for them.
    dialing: HashMap<PeerId, Vec<QueryId>>,
    listen_addrs: Vec<Multiaddr>,
    listen_ip: IpAddr,
    has_bootstrap: bool,
    /// Static bootstrap peers whose names did not resolve at the last attempt.
    unresolved_statics: usize,
    /// Bootstrap targets other than this node, from the last lookup; `None` before the first.
    dial_targets_other_than_self: Option<usize>,
}

impl SwarmTask {
    fn new(
        mut swarm: Swarm<Behaviour>,
        cfg: RouterConfig,
        metrics: libp2p::metrics::Metrics,
        has_bootstrap: bool,
    ) -> Result<Self, RoutingError> {
        // libp2p's IPv6 sockets are IPv6-only: `[::]` listens on `0.0.0.0` too (same port), so
        // one address serves IPv4-only, IPv6-only and dual-stack clusters. Either may fail on a
        // node without that family; one listener is enough.
        let mut targets = vec![cfg.listen];
        if cfg.listen.is_ipv6() && cfg.listen.ip().is_unspecified() {
            targets.push(SocketAddr::from(([0, 0, 0, 0], cfg.listen.port())));
        }
        let mut listening = 0;
        let mut last_error = None;
        for t in &targets {
            match swarm.listen_on(to_multiaddr(*t)) {
                Ok(_) => listening += 1,
                Err(e) => {
                    tracing::warn!(addr = %t, error = %e, "cannot listen for p2p on this address");
                    last_error = Some(e.to_string());
                }
            }
        }
        if listening == 0 {
            let e = last_error.unwrap_or_default();
            return Err(RoutingError::Failed(format!("cannot listen on {}: {e}", cfg.listen)));
        }
        Ok(Self {
            swarm,
            metrics,
            events: cfg.events,
            own_http_port: cfg.http_port,
            last_reject_log: None,
            peers: HashMap::new(),
            connected: HashSet::new(),
            listen_of: HashMap::new(),
            lookups: HashMap::new(),
            provided: HashSet::new(),
            to_publish: std::collections::VecDeque::new(),
            dialing: HashMap::new(),
            listen_addrs: Vec::new(),
            listen_ip: cfg.listen.ip(),
            has_bootstrap,
            unresolved_statics: 0,
            dial_targets_other_than_self: None,
        })
    }

    fn emit(&self, reason: Reason, message: String) {
        if let Some(e) = &self.events {
            crate::events::report(e, Event { reason, message });
        }
    }

    fn ready(&self) -> bool {
        // Connected to the DHT, or knowingly alone (nothing to bootstrap from but ourselves).
        !self.connected.is_empty()
            || !self.has_bootstrap
            || (self.dial_targets_other_than_self == Some(0) && self.unresolved_statics == 0)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop) | None => {
                        tracing::info!("p2p stopped");
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Provide(keys, urgent, reply) => {
                for k in keys {
                    if self.provided.insert(k.clone()) {
                        if urgent {
                            self.to_publish.push_front(k);
                        } else {
                            self.to_publish.push_back(k);
                        }
                    }
                }
                let _ = reply.send(Ok(()));
                self.publish();
            }
            Command::Withdraw(keys, reply) => {
                for k in keys {
                    if self.provided.remove(&k) {
                        self.to_publish.retain(|q| q != &k);
                        self.swarm.behaviour_mut().kad.stop_providing(&dht_key(&k).into());
                    }
                }
                let _ = reply.send(());
            }
            Command::Resolve(key, max, tx) => {
                if self.lookups.len() >= MAX_PENDING_LOOKUPS {
                    tracing::warn!("too many lookups in flight; resolve refused");
                    return; // dropping tx closes the caller's channel: no peers
                }
                let id = self.swarm.behaviour_mut().kad.get_providers(dht_key(&key).into());
                self.lookups.insert(
                    id,
                    Lookup {
                        tx,
                        max,
                        sent: HashSet::new(),
                        started: std::time::Instant::now(),
                        done: false,
                        dialing: 0,
                    },
                );
            }
            Command::Status(reply) => {
                let routing_table_peers = self.routing_table_size();
                let _ = reply.send(Status {
                    peer_id: self.swarm.local_peer_id().to_base58(),
                    connected_peers: self.connected.len(),
                    routing_table_peers,
                    provided_keys: self.provided.len(),
                    ready: self.ready(),
                    listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
                });
            }
            // Handled by the loop in `run` (it ends the task).
            Command::Stop => {}
            Command::Dial(targets, unresolved) => {
                self.unresolved_statics = unresolved;
                let own: HashSet<SocketAddr> = self.listen_addrs.iter().filter_map(tcp_addr).collect();
                let connected: HashSet<SocketAddr> =
                    self.connected.iter().filter_map(|p| self.listen_of.get(p)).flatten().copied().collect();
                let others: Vec<SocketAddr> = targets.into_iter().filter(|a| !own.contains(a)).collect();
                self.dial_targets_other_than_self = Some(others.len());
                for a in others {
                    if connected.contains(&a) {
                        continue;
                    }
                    if let Err(e) = self.swarm.dial(to_multiaddr(a)) {
                        tracing::debug!(addr = %a, error = %e, "dial failed");
                    }
                }
            }
        }
    }

    fn routing_table_size(&mut self) -> usize {
        self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum()
    }

    /// Start publications from the queue, a bounded number at a time, once there are peers.
    fn publish(&mut self) {
        let peers: usize = self.routing_table_size();
        if peers == 0 {
            return;
        }
        for _ in 0..PUBLISH_PER_TICK {
            let Some(k) = self.to_publish.pop_front() else { break };
            if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(dht_key(&k).into()) {
                tracing::warn!(key = k, error = ?e, "cannot provide (p2p.max_provided_keys reached?)");
                self.provided.remove(&k);
            }
        }
    }

    fn sweep(&mut self) {
        self.publish();
        // Abandon lookups whose caller stopped listening.
        let closed: Vec<QueryId> = self.lookups.iter().filter(|(_, l)| l.tx.is_closed()).map(|(id, _)| *id).collect();
        for id in closed {
            self.finish_lookup(id);
        }
        let live: HashSet<QueryId> = self.lookups.keys().copied().collect();
        self.dialing.retain(|_, ids| {
            ids.retain(|id| live.contains(id));
            !ids.is_empty()
        });
    }

    /// Kademlia's part is over; the lookup ends once no provider is still being dialed.
    fn query_done(&mut self, id: QueryId) {
        match self.lookups.get_mut(&id) {
            Some(l) if l.dialing > 0 && !l.tx.is_closed() && l.sent.len() < l.max => l.done = true,
            _ => self.finish_lookup(id),
        }
    }

    fn finish_lookup(&mut self, id: QueryId) {
        if let Some(l) = self.lookups.remove(&id) {
            metrics::histogram!(crate::routing::PEER_DISCOVERY_DURATION).record(l.started.elapsed().as_secs_f64());
            metrics::histogram!(crate::routing::PEERS_FOUND).record(l.sent.len() as f64);
        }
        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            q.finish();
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics_record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.swarm.local_peer_id(), "p2p listening");
                // Inside a cluster the listen addresses are the addresses peers use: declare them
                // external, so provider records carry them (Kademlia drops address-less providers
                // the answering node does not know). Loopback only when bound to loopback.
                let loopback = ip_of(&address).is_some_and(|ip| ip.is_loopback());
                if !loopback || self.listen_ip.is_loopback() {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let was_empty = self.connected.is_empty();
                self.connected.insert(peer_id);
                // The connection's address is a first guess only until identify tells the peer's
                // own listen addresses (a source address may not be one it listens on).
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    if !self.listen_of.contains_key(&peer_id) {
                        let port = self.peers.get(&peer_id).map_or(self.own_http_port, |(_, p)| *p);
                        self.peers.insert(peer_id, (ip, port));
                    }
                }
                if was_empty {
                    self.emit(Reason::P2PConnected, format!("connected to peer {peer_id}"));
                }
                self.deliver_dialed(peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.connected.remove(&peer_id);
                self.listen_of.remove(&peer_id);
                if self.connected.is_empty() {
                    self.emit(Reason::P2PDisconnected, "no peers connected".into());
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                // At most one line per REJECT_LOG_EVERY: a scan or flood must not flood the log.
                if self.last_reject_log.is_none_or(|t| t.elapsed() >= REJECT_LOG_EVERY) {
                    self.last_reject_log = Some(std::time::Instant::now());
                    tracing::warn!(from = %send_back_addr, error = %error, "rejected an incoming p2p connection (wrong cluster secret, not a peerd, or over the connection limits); further rejections for 10 s are only counted in peerd_peer_auth_failures_total{{kind=\"p2p\"}}");
                }
                metrics::counter!(crate::peer::PEER_AUTH_FAILURES, "kind" => "p2p").increment(1);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some(p) = peer_id {
                    self.give_up_dialed(p);
                }
                if self.connected.is_empty() {
                    self.emit(Reason::P2PFailed, format!("cannot reach any peer: {error}"));
                }
                tracing::warn!(peer = ?peer_id, error = %error, "p2p dial failed (wrong cluster secret or peer down?)");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                tracing::debug!(%peer_id, addrs = ?info.listen_addrs, "identify received");
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    tracing::debug!(%peer_id, version = info.protocol_version, "not a peerd; ignored");
                    return;
                }
                if let Some(port) = info.agent_version.split("http-port=").nth(1).and_then(|p| p.trim().parse().ok()) {
                    if let Some(entry) = self.peers.get_mut(&peer_id) {
                        entry.1 = port;
                    }
                }
                let listens: Vec<SocketAddr> =
                    info.listen_addrs.iter().filter_map(tcp_addr).filter(|a| !a.ip().is_unspecified()).collect();
                if let Some(entry) = self.peers.get_mut(&peer_id) {
                    // Reach the peer where it listens: keep the connection's IP if it is one of
                    // them, else prefer a non-loopback listen address.
                    if !listens.iter().any(|a| a.ip() == entry.0) {
                        let best = listens.iter().find(|a| !a.ip().is_loopback()).or(listens.first());
                        if let Some(a) = best {
                            entry.0 = a.ip();
                        }
                    }
                }
                self.listen_of.insert(peer_id, listens);
                for addr in info.listen_addrs {
                    if ip_of(&addr).is_some_and(|ip| !ip.is_unspecified()) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                // No manual bootstrap here: Kademlia bootstraps by itself (throttled) when its
                // routing table changes; one query per identify exhausted its job budget.
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(res),
                step,
                ..
            })) => {
                tracing::debug!(?id, ?res, last = step.last, "get_providers progressed");
                if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = res {
                    self.found(id, providers);
                }
                if step.last {
                    self.query_done(id);
                }
            }
            _ => {}
        }
    }

    fn found(&mut self, id: QueryId, providers: HashSet<PeerId>) {
        let me = *self.swarm.local_peer_id();
        let Some(lookup) = self.lookups.get_mut(&id) else { return };
        for p in providers {
            if p == me || lookup.sent.contains(&p) {
                continue;
            }
            let Some((ip, port)) = self.peers.get(&p).copied().filter(|_| self.connected.contains(&p)) else {
                tracing::debug!(?id, provider = %p, "provider not connected; dialing it");
                let waiting = self.dialing.entry(p).or_default();
                if !waiting.contains(&id) {
                    waiting.push(id);
                    lookup.dialing += 1;
                }
                if waiting.len() == 1 {
                    let _ = self.swarm.dial(libp2p::swarm::dial_opts::DialOpts::peer_id(p).build());
                }
                continue;
            };
            lookup.sent.insert(p);
            tracing::debug!(?id, provider = %p, %ip, "provider delivered");
            if lookup.tx.try_send(Peer { id: p.to_base58(), addr: SocketAddr::new(ip, port) }).is_err() {
                break;
            }
        }
        if lookup.sent.len() >= lookup.max || lookup.tx.is_closed() {
            self.finish_lookup(id);
        }
    }

    /// A provider we dialed is connected: hand it to the lookups waiting for it.
    fn deliver_dialed(&mut self, peer: PeerId) {
        let Some(ids) = self.dialing.remove(&peer) else { return };
        let Some((ip, port)) = self.peers.get(&peer).copied() else { return };
        for id in ids {
            let Some(l) = self.lookups.get_mut(&id) else { continue };
            l.dialing -= 1;
            if l.sent.len() < l.max && l.sent.insert(peer) {
                let _ = l.tx.try_send(Peer { id: peer.to_base58(), addr: SocketAddr::new(ip, port) });
            }
            if l.done && (l.dialing == 0 || l.sent.len() >= l.max) {
                self.finish_lookup(id);
            }
        }
    }

    fn give_up_dialed(&mut self, peer: PeerId) {
        for id in self.dialing.remove(&peer).unwrap_or_default() {
            let Some(l) = self.lookups.get_mut(&id) else { continue };
            l.dialing -= 1;
            if l.done && l.dialing == 0 {
                self.finish_lookup(id);
            }
        }
    }

    fn metrics_record(&mut self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.metrics.record(e),
            other => self.metrics.record(other),
        }
    }
}
