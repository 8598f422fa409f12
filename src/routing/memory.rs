//! In-process [`Router`]: nodes sharing one [`MemoryNetwork`] see each other's provider records.

#[cfg(test)]
use super::collect_peers;
use super::{Peer, Router, RoutingError, Status};
use async_trait::async_trait;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The shared "DHT": key → providers.
#[derive(Default)]
pub struct MemoryNetwork {
    providers: DashMap<String, HashSet<Peer>>,
    /// Providers kept per key (the first to arrive), as a DHT node keeps at most 20.
    providers_per_key: Option<usize>,
}

impl MemoryNetwork {
    /// A network whose keys hold at most `cap` providers each.
    pub fn with_providers_per_key(cap: usize) -> Self {
        Self { providers_per_key: Some(cap), ..Self::default() }
    }
}

pub struct MemoryRouter {
    net: Arc<MemoryNetwork>,
    me: Peer,
}

impl MemoryRouter {
    pub fn new(net: Arc<MemoryNetwork>, me: Peer) -> Self {
        Self { net, me }
    }
}

#[async_trait]
impl Router for MemoryRouter {
    async fn ready(&self) -> bool {
        true
    }
    async fn status(&self) -> Result<Status, RoutingError> {
        let provided = self.net.providers.iter().filter(|e| e.value().contains(&self.me)).count();
        Ok(Status { peer_id: self.me.id.clone(), provided_keys: provided, ready: true, ..Status::default() })
    }
    async fn provide(&self, keys: Vec<String>) -> Result<(), RoutingError> {
        for k in keys {
            let mut providers = self.net.providers.entry(k).or_default();
            if self.net.providers_per_key.is_none_or(|cap| providers.len() < cap) {
                providers.insert(self.me.clone());
            }
        }
        Ok(())
    }
    async fn withdraw(&self, keys: Vec<String>) -> Result<(), RoutingError> {
        for k in keys {
            if let Some(mut p) = self.net.providers.get_mut(&k) {
                p.remove(&self.me);
            }
        }
        Ok(())
    }
    async fn resolve(&self, key: String, max: usize) -> Result<mpsc::Receiver<Peer>, RoutingError> {
        let mut peers: Vec<Peer> = self
            .net
            .providers
            .get(&key)
            .map(|p| p.iter().filter(|p| **p != self.me).cloned().collect())
            .unwrap_or_default();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers.truncate(max);
        let (tx, rx) = mpsc::channel(max.max(1));
        for p in peers {
            let _ = tx.try_send(p);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn provide_resolve_withdraw() {
        let net = Arc::new(MemoryNetwork::default());
        let nodes: Vec<MemoryRouter> = (0..30)
            .map(|i| {
                MemoryRouter::new(net.clone(), Peer { id: format!("n{i:02}"), addr: ([127, 0, 0, 1], 5000 + i).into() })
            })
            .collect();
        nodes[0].provide(vec!["k".into()]).await.unwrap();
        let t = Duration::from_millis(20);
        for n in &nodes[1..] {
            assert_eq!(collect_peers(n.resolve("k".into(), 5).await.unwrap(), t).await, vec![nodes[0].me.clone()]);
        }
        assert!(collect_peers(nodes[0].resolve("k".into(), 5).await.unwrap(), t).await.is_empty(), "never itself");
        nodes[0].withdraw(vec!["k".into()]).await.unwrap();
        assert!(collect_peers(nodes[1].resolve("k".into(), 5).await.unwrap(), t).await.is_empty());
    }

    #[tokio::test]
    async fn memory_router_conforms() {
        let net = Arc::new(MemoryNetwork::default());
        let peer = |id: &str, port| Peer { id: id.into(), addr: ([127, 0, 0, 1], port).into() };
        let (a, b) = (MemoryRouter::new(net.clone(), peer("a", 5000)), MemoryRouter::new(net, peer("b", 5001)));
        crate::routing::conformance::check(&a, "a", &b, "b", Duration::from_secs(1), "memory").await;
    }
}
