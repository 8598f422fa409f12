//! Peer selection for fetches: resolves a key to peers within the resolve timeout and orders them
//! by how they behaved recently (a peer that failed repeatedly rests for a while), so a dead or
//! wrong-key peer is not asked again and again. Emits `P2PActive` on the first content moved
//! between peers. Decisions only: the bytes flow in [`crate::fetch`].

use super::events::{Emit, Event, Reason};
use crate::routing::memory::collect_peers;
use crate::routing::{Peer, Router};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Consecutive failures after which a peer rests.
const FAILURES_TO_REST: u32 = 3;
/// How long a failing peer rests.
const REST: Duration = Duration::from_secs(30);
/// Most peers remembered.
const MAX_TRACKED: usize = 4096;

/// Peers holding `key`, best first (may be empty).
#[derive(Message)]
#[rtype(result = "Vec<Peer>")]
pub struct Locate {
    pub key: String,
}

/// How a peer did.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outcome {
    pub peer: String,
    pub ok: bool,
}

/// This node served content to a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServedPeer;

pub struct FetchActor {
    router: Arc<dyn Router>,
    resolve_timeout: Duration,
    max_peers: usize,
    /// peer id → (consecutive failures, last failure)
    health: HashMap<String, (u32, Instant)>,
    events: Option<Recipient<Emit>>,
    active: bool,
}

impl FetchActor {
    pub fn new(
        router: Arc<dyn Router>,
        resolve_timeout: Duration,
        max_peers: usize,
        events: Option<Recipient<Emit>>,
    ) -> Self {
        Self { router, resolve_timeout, max_peers, health: HashMap::new(), events, active: false }
    }

    fn resting(&self, peer: &str, now: Instant) -> bool {
        self.health.get(peer).is_some_and(|(n, at)| *n >= FAILURES_TO_REST && now.duration_since(*at) < REST)
    }

    /// Resting peers are dropped; peers with recent failures go last.
    pub fn rank(&self, mut peers: Vec<Peer>, now: Instant) -> Vec<Peer> {
        peers.retain(|p| !self.resting(&p.id, now));
        peers.sort_by_key(|p| self.health.get(&p.id).map_or(0, |(n, _)| *n));
        peers
    }

    fn active(&mut self, message: &str) {
        if !self.active {
            self.active = true;
            if let Some(e) = &self.events {
                e.do_send(Emit(Event { reason: Reason::P2PActive, message: message.into() }));
            }
        }
    }
}

impl Actor for FetchActor {
    type Context = Context<Self>;
}

impl Handler<Locate> for FetchActor {
    type Result = ResponseActFuture<Self, Vec<Peer>>;
    fn handle(&mut self, msg: Locate, _: &mut Context<Self>) -> Self::Result {
        let router = self.router.clone();
        let (timeout, max) = (self.resolve_timeout, self.max_peers);
        // Ask for a few more than needed: resting peers are dropped afterwards.
        Box::pin(
            async move {
                match router.resolve(msg.key, max + 2).await {
                    Ok(rx) => collect_peers(rx, timeout).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "resolve failed");
                        Vec::new()
                    }
                }
            }
            .into_actor(self)
            .map(move |peers, act, _| {
                let mut ranked = act.rank(peers, Instant::now());
                ranked.truncate(max);
                ranked
            }),
        )
    }
}

impl Handler<Outcome> for FetchActor {
    type Result = ();
    fn handle(&mut self, o: Outcome, _: &mut Context<Self>) {
        if o.ok {
            self.health.remove(&o.peer);
            self.active("content fetched from a peer");
            return;
        }
        if self.health.len() >= MAX_TRACKED && !self.health.contains_key(&o.peer) {
            let now = Instant::now();
            self.health.retain(|_, (_, at)| now.duration_since(*at) < REST);
        }
        let e = self.health.entry(o.peer).or_insert((0, Instant::now()));
        e.0 += 1;
        e.1 = Instant::now();
    }
}

impl Handler<ServedPeer> for FetchActor {
    type Result = ();
    fn handle(&mut self, _: ServedPeer, _: &mut Context<Self>) {
        self.active("content served to a peer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::memory::{MemoryNetwork, MemoryRouter};

    fn peer(id: &str) -> Peer {
        Peer { id: id.into(), addr: "127.0.0.1:1".parse().unwrap() }
    }

    #[actix::test]
    async fn failing_peers_rest_and_go_last() {
        let net = Arc::new(MemoryNetwork::default());
        for id in ["a", "b", "c"] {
            MemoryRouter::new(net.clone(), peer(id)).provide(vec!["k".into()]).await.unwrap();
        }
        let me: Arc<dyn Router> = Arc::new(MemoryRouter::new(net, peer("me")));
        let addr = FetchActor::new(me, Duration::from_millis(50), 3, None).start();
        let ids = |v: Vec<Peer>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(addr.send(Locate { key: "k".into() }).await.unwrap()), ["a", "b", "c"]);
        addr.send(Outcome { peer: "a".into(), ok: false }).await.unwrap();
        assert_eq!(ids(addr.send(Locate { key: "k".into() }).await.unwrap()), ["b", "c", "a"]);
        for _ in 0..2 {
            addr.send(Outcome { peer: "a".into(), ok: false }).await.unwrap();
        }
        assert_eq!(ids(addr.send(Locate { key: "k".into() }).await.unwrap()), ["b", "c"], "a rests");
        addr.send(Outcome { peer: "a".into(), ok: true }).await.unwrap();
        assert_eq!(ids(addr.send(Locate { key: "k".into() }).await.unwrap()), ["a", "b", "c"]);
        assert!(addr.send(Locate { key: "none".into() }).await.unwrap().is_empty());
    }
}
