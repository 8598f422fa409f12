//! Content routing between nodes: who holds which key. [`Router`] is the boundary the fetch and
//! advertisement logic are written against; [`memory::MemoryRouter`] is the in-process
//! implementation for unit tests and [`p2p::P2pRouter`] the libp2p Kademlia one.
//!
//! Keys are strings — a digest (`sha256:<hex>`) or a tag (`host/repo:tag`) — turned into DHT
//! keys by [`keys::dht_key`] exactly as Azure/peerd does (CIDv1, raw codec, sha2-256 of the
//! string), so the two key spaces mean the same thing.

pub mod conformance;
pub mod keys;
pub mod members;
pub mod memory;
pub mod p2p;
pub mod tcp;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Time from starting a provider lookup to its end (enough peers, exhausted, or abandoned).
pub const PEER_DISCOVERY_DURATION: &str = "peerd_peer_discovery_duration_seconds";
/// Peers a lookup returned.
pub const PEERS_FOUND: &str = "peerd_peers_found";
/// Buckets of [`PEERS_FOUND`] (a count, not seconds).
pub const PEERS_FOUND_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0];

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_histogram!(PEER_DISCOVERY_DURATION, metrics::Unit::Seconds, "Provider lookup duration");
    metrics::describe_histogram!(PEERS_FOUND, "Peers returned by a provider lookup");
}

/// The peers a router reports (defined with the peer protocol).
pub use crate::peer::Peer;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("router is not running")]
    Stopped,
    #[error("routing failed: {0}")]
    Failed(String),
}

/// Routing status for the debug page and readiness.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    pub peer_id: String,
    pub connected_peers: usize,
    pub routing_table_peers: usize,
    pub provided_keys: usize,
    pub ready: bool,
    pub listen_addrs: Vec<String>,
}

#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Whether the node can route (connected to the DHT, or knowingly alone).
    async fn ready(&self) -> bool;
    /// Stop routing (node shutdown): connections close, later calls fail with `Stopped`.
    async fn shut_down(&self) {}
    async fn status(&self) -> Result<Status, RoutingError>;
    /// Announce that this node holds `keys`.
    async fn provide(&self, keys: Vec<String>) -> Result<(), RoutingError>;
    /// Announce `keys` ahead of any queued announcements (a download others should find now).
    async fn provide_now(&self, keys: Vec<String>) -> Result<(), RoutingError> {
        self.provide(keys).await
    }
    /// Stop announcing `keys`.
    async fn withdraw(&self, keys: Vec<String>) -> Result<(), RoutingError>;
    /// Peers holding `key` (never this node), sent as they are found; at most `max`. The channel
    /// closes when the lookup ends; the caller bounds how long it waits.
    async fn resolve(&self, key: String, max: usize) -> Result<mpsc::Receiver<Peer>, RoutingError>;
}

/// Collect what a resolve channel yields within `timeout`.
pub async fn collect_peers(mut rx: tokio::sync::mpsc::Receiver<Peer>, timeout: std::time::Duration) -> Vec<Peer> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        while let Some(p) = rx.recv().await {
            out.push(p);
        }
    })
    .await;
    out
}
