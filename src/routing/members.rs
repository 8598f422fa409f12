//! Cluster membership over the DHT, past its providers-per-key cap.
//!
//! A DHT node stores at most [`CAP`] providers per key (libp2p-kad's `K_VALUE`), so one key that
//! every node provides lists about 20 nodes however many there are. Instead each node provides
//! one key per *level* of a 4-ary tree over the hash of its id: level 0 has one shard, level 1
//! four, level `l` 4^l, down to [`LEVELS`]` - 1` (4,096 shards). A listing starts at the root and
//! descends only into shards whose lookup came back full (it may have been cut at the cap), so a
//! 3-node cluster costs one lookup and a 10,000-node cluster about N/10 — each shard it stops at
//! holds fewer providers than the cap, i.e. all of them. Complete up to roughly 4,096 × 15 ≈
//! 60,000 nodes; a node costs [`LEVELS`] provider records.

use super::keys::tree_shard as shard;
use super::{collect_peers, Peer, Router, RoutingError};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// Providers a DHT node keeps per key (libp2p-kad's `K_VALUE`).
pub const CAP: usize = 20;
/// Levels of the shard tree (level `l` has 4^l shards).
pub const LEVELS: u32 = 7;
/// Lookups a listing runs at once.
const CONCURRENT_LOOKUPS: usize = 16;
/// Providers asked of one shard's lookup (more than the cap: several DHT nodes answer).
const PER_SHARD: usize = 4 * CAP;

fn key(level: u32, shard: u64) -> String {
    format!("peerd/nodes/{level}/{shard}")
}

/// The keys a node with id `id` provides to be listed.
pub fn keys_of(id: &str) -> Vec<String> {
    (0..LEVELS).map(|l| key(l, shard(id, l))).collect()
}

/// Announce this node (`my_id`) as a member.
pub async fn announce(router: &dyn Router, my_id: &str) -> Result<(), RoutingError> {
    router.provide(keys_of(my_id)).await
}

/// What a listing found, and what it cost.
#[derive(Debug, Default)]
pub struct Listing {
    /// The other members (never this node), at most `max`.
    pub peers: Vec<Peer>,
    /// Provider lookups run.
    pub lookups: usize,
    /// Shards still full at the last level (members may be missing there).
    pub truncated: usize,
}

/// List the members other than this node: each shard lookup waits at most `wait`.
pub async fn list(router: &dyn Router, wait: Duration, max: usize) -> Listing {
    let mut found: HashMap<String, Peer> = HashMap::new();
    let mut out = Listing::default();
    let mut frontier = vec![(0u32, 0u64)];
    while !frontier.is_empty() && found.len() < max {
        out.lookups += frontier.len();
        let answers: Vec<((u32, u64), Vec<Peer>)> = futures_util::stream::iter(frontier)
            .map(|(level, shard)| async move {
                let peers = match router.resolve(key(level, shard), PER_SHARD).await {
                    Ok(rx) => collect_peers(rx, wait).await,
                    Err(_) => Vec::new(),
                };
                ((level, shard), peers)
            })
            .buffer_unordered(CONCURRENT_LOOKUPS)
            .collect()
            .await;
        frontier = Vec::new();
        for ((level, shard), peers) in answers {
            // This node is never returned but may take a place under the cap: one short of it
            // counts as full.
            if peers.len() + 1 >= CAP {
                if level + 1 < LEVELS {
                    frontier.extend((0..4).map(|c| (level + 1, shard * 4 + c)));
                } else {
                    out.truncated += 1;
                }
            }
            for p in peers {
                found.entry(p.id.clone()).or_insert(p);
            }
        }
    }
    let mut peers: Vec<Peer> = found.into_values().collect();
    peers.sort_by(|a, b| a.id.cmp(&b.id));
    peers.truncate(max);
    out.peers = peers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::memory::{MemoryNetwork, MemoryRouter};
    use std::sync::Arc;

    fn peer(i: usize) -> Peer {
        Peer { id: format!("node-{i}"), addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap() }
    }

    #[test]
    fn shards_nest() {
        for i in 0..200 {
            let id = format!("node-{i}");
            assert_eq!(shard(&id, 0), 0);
            for l in 1..LEVELS {
                assert!(shard(&id, l) < 4u64.pow(l));
                assert_eq!(shard(&id, l) / 4, shard(&id, l - 1), "a level-{l} shard lies in its parent");
            }
            assert_eq!(keys_of(&id).len(), LEVELS as usize);
        }
    }

    /// A DHT that keeps 20 providers per key: one shared key lists 20 of 300 nodes; the shard
    /// tree lists all of them, with far fewer lookups than shards in the tree.
    #[tokio::test]
    async fn lists_every_member_past_the_cap() {
        let net = Arc::new(MemoryNetwork::with_providers_per_key(CAP));
        let routers: Vec<MemoryRouter> = (0..300).map(|i| MemoryRouter::new(net.clone(), peer(i))).collect();
        for (i, r) in routers.iter().enumerate() {
            announce(r, &peer(i).id).await.unwrap();
            r.provide(vec!["one-shared-key".into()]).await.unwrap();
        }
        let wait = Duration::from_millis(100);
        let one_key = collect_peers(routers[7].resolve("one-shared-key".into(), 1000).await.unwrap(), wait).await;
        assert_eq!(one_key.len(), CAP - 1, "the emulated cap holds (this node is one of the 20)");

        let l = list(&routers[7], wait, 10_000).await;
        assert_eq!(l.peers.len(), 299, "every other node, once");
        assert!(l.peers.iter().all(|p| p.id != "node-7"), "never this node");
        assert_eq!(l.truncated, 0);
        assert!(l.lookups < 300, "descends only into full shards: {} lookups", l.lookups);

        // A small cluster costs one lookup; `max` bounds the answer.
        let small = Arc::new(MemoryNetwork::with_providers_per_key(CAP));
        let few: Vec<MemoryRouter> = (0..3).map(|i| MemoryRouter::new(small.clone(), peer(i))).collect();
        for (i, r) in few.iter().enumerate() {
            announce(r, &peer(i).id).await.unwrap();
        }
        let l = list(&few[0], wait, 10).await;
        assert_eq!((l.peers.len(), l.lookups), (2, 1));
        assert_eq!(list(&routers[0], wait, 50).await.peers.len(), 50);
    }
}
