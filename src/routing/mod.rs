//! Content routing between nodes: who holds which key. [`Router`] is the boundary the fetch and
//! advertisement logic are written against; [`memory::MemoryRouter`] is the in-process
//! implementation for unit tests. The libp2p Kademlia implementation arrives with peer support.

pub mod memory;

use async_trait::async_trait;
use std::net::SocketAddr;
use std::time::Duration;

/// A node that can serve content, as a router reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub id: String,
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("router not ready")]
    NotReady,
    #[error("routing failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Whether the node can route (connected, or knowingly alone).
    async fn ready(&self) -> bool;
    /// Announce that this node holds `keys`.
    async fn provide(&self, keys: &[String]) -> Result<(), RoutingError>;
    /// Stop announcing `keys`.
    async fn withdraw(&self, keys: &[String]) -> Result<(), RoutingError>;
    /// Up to `max` peers holding `key`, found within `timeout` (other than this node).
    async fn resolve(&self, key: &str, max: usize, timeout: Duration) -> Result<Vec<Peer>, RoutingError>;
}
