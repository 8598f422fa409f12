//! In-process [`Router`]: nodes sharing one [`MemoryNetwork`] see each other's provider records.

use super::{Peer, Router, RoutingError};
use async_trait::async_trait;
use dashmap::DashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The shared "DHT": key → providers.
#[derive(Default)]
pub struct MemoryNetwork {
    providers: DashMap<String, HashSet<Peer>>,
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
    async fn provide(&self, keys: &[String]) -> Result<(), RoutingError> {
        for k in keys {
            self.net.providers.entry(k.clone()).or_default().insert(self.me.clone());
        }
        Ok(())
    }
    async fn withdraw(&self, keys: &[String]) -> Result<(), RoutingError> {
        for k in keys {
            if let Some(mut p) = self.net.providers.get_mut(k) {
                p.remove(&self.me);
            }
        }
        Ok(())
    }
    async fn resolve(&self, key: &str, max: usize, _timeout: Duration) -> Result<Vec<Peer>, RoutingError> {
        let mut peers: Vec<Peer> = self
            .net
            .providers
            .get(key)
            .map(|p| p.iter().filter(|p| **p != self.me).cloned().collect())
            .unwrap_or_default();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers.truncate(max);
        Ok(peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn provide_resolve_withdraw() {
        let net = Arc::new(MemoryNetwork::default());
        let nodes: Vec<MemoryRouter> = (0..30)
            .map(|i| {
                MemoryRouter::new(net.clone(), Peer { id: format!("n{i:02}"), addr: ([127, 0, 0, 1], 5000 + i).into() })
            })
            .collect();
        nodes[0].provide(&["k".into()]).await.unwrap();
        for n in &nodes[1..] {
            assert_eq!(n.resolve("k", 5, Duration::from_millis(20)).await.unwrap(), vec![nodes[0].me.clone()]);
        }
        assert!(nodes[0].resolve("k", 5, Duration::ZERO).await.unwrap().is_empty(), "never resolves itself");
        nodes[0].withdraw(&["k".into()]).await.unwrap();
        assert!(nodes[1].resolve("k", 5, Duration::ZERO).await.unwrap().is_empty());
    }
}
