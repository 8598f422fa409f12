//! Peer selection for fetches: resolves a key to peers within the resolve timeout and orders them
//! by how they behaved recently (a peer that failed repeatedly rests for a while), so a dead or
//! wrong-key peer is not asked again and again. A peer whose bytes did not match their digest
//! rests at once (one corrupt copy must not fail everyone's pulls), and the digest is remembered
//! as *suspect* for a while: a client resuming it with a Range request is not served unverified
//! peer bytes again. Emits `P2PActive` on the first content moved between peers. Decisions only:
//! the bytes flow in [`crate::transfer::sources`].

use crate::events::{Emit, Event, Reason};
use crate::routing::collect_peers;
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
/// How long a peer that sent content not matching its digest rests.
const CORRUPT_REST: Duration = Duration::from_secs(300);
/// How long a digest whose whole read from peers failed verification stays suspect.
const SUSPECT_FOR: Duration = Duration::from_secs(300);
/// Most suspect digests remembered.
const MAX_SUSPECT: usize = 1024;

/// Peers put to rest, by `reason` (`failures`, `digest_mismatch`).
pub const PEER_RESTS: &str = "peerd_peer_rests_total";

pub fn describe() {
    metrics::describe_counter!(
        PEER_RESTS,
        "Peers put to rest by reason (repeated failures, content not matching its digest)"
    );
}

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

/// Content from these peers did not match `key` (a digest): they rest at once, and `key` is
/// suspect for a while (see [`Suspect`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Corrupt {
    pub peers: Vec<String>,
    pub key: String,
}

/// Whether a whole read of `key` from peers failed verification recently: a client resuming it
/// holds bytes that may be wrong, so its ranges must come from a verified source or the upstream.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Suspect {
    pub key: String,
}

/// This node served content to a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServedPeer;

pub struct PeerSelector {
    router: Arc<dyn Router>,
    resolve_timeout: Duration,
    max_peers: usize,
    /// peer id → (consecutive failures, last failure)
    health: HashMap<String, (u32, Instant)>,
    /// peer id → resting until (content that did not match its digest); an answer that opens
    /// fine does not end this rest, only time does.
    corrupt: HashMap<String, Instant>,
    /// digest → suspect until.
    suspect: HashMap<String, Instant>,
    events: Option<Recipient<Emit>>,
    active: bool,
}

impl PeerSelector {
    pub fn new(
        router: Arc<dyn Router>,
        resolve_timeout: Duration,
        max_peers: usize,
        events: Option<Recipient<Emit>>,
    ) -> Self {
        Self {
            router,
            resolve_timeout,
            max_peers,
            health: HashMap::new(),
            corrupt: HashMap::new(),
            suspect: HashMap::new(),
            events,
            active: false,
        }
    }

    fn resting(&self, peer: &str, now: Instant) -> bool {
        self.health.get(peer).is_some_and(|(n, at)| *n >= FAILURES_TO_REST && now.duration_since(*at) < REST)
            || self.corrupt.get(peer).is_some_and(|until| *until > now)
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
                crate::events::report(e, Event { reason: Reason::P2PActive, message: message.into() });
            }
        }
    }
}

/// Messages the fetch actor holds; senders use `try_send`, so past this an outcome report is
/// dropped (advisory) rather than the mailbox growing without bound.
const MAILBOX: usize = 4096;

impl Actor for PeerSelector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Locate> for PeerSelector {
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

impl Handler<Outcome> for PeerSelector {
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
        if e.0 == FAILURES_TO_REST {
            metrics::counter!(PEER_RESTS, "reason" => "failures").increment(1);
        }
    }
}

impl Handler<Corrupt> for PeerSelector {
    type Result = ();
    fn handle(&mut self, c: Corrupt, _: &mut Context<Self>) {
        let now = Instant::now();
        self.corrupt.retain(|_, until| *until > now);
        self.suspect.retain(|_, until| *until > now);
        for peer in c.peers {
            if self.corrupt.len() >= MAX_TRACKED {
                break;
            }
            tracing::warn!(peer, digest = c.key, "peer sent content that does not match its digest; resting it");
            metrics::counter!(PEER_RESTS, "reason" => "digest_mismatch").increment(1);
            self.corrupt.insert(peer, now + CORRUPT_REST);
        }
        if self.suspect.len() < MAX_SUSPECT {
            self.suspect.insert(c.key, now + SUSPECT_FOR);
        }
    }
}

impl Handler<Suspect> for PeerSelector {
    type Result = bool;
    fn handle(&mut self, s: Suspect, _: &mut Context<Self>) -> bool {
        self.suspect.get(&s.key).is_some_and(|until| *until > Instant::now())
    }
}

impl Handler<ServedPeer> for PeerSelector {
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
        let addr = PeerSelector::new(me, Duration::from_millis(50), 3, None).start();
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

    #[actix::test]
    async fn a_corrupt_peer_rests_at_once_and_its_digest_is_suspect() {
        let net = Arc::new(MemoryNetwork::default());
        for id in ["a", "b"] {
            MemoryRouter::new(net.clone(), peer(id)).provide(vec!["k".into()]).await.unwrap();
        }
        let me: Arc<dyn Router> = Arc::new(MemoryRouter::new(net, peer("me")));
        let addr = PeerSelector::new(me, Duration::from_millis(50), 3, None).start();
        let ids = |v: Vec<Peer>| v.into_iter().map(|p| p.id).collect::<Vec<_>>();
        assert!(!addr.send(Suspect { key: "k".into() }).await.unwrap());
        addr.send(Corrupt { peers: vec!["a".into()], key: "k".into() }).await.unwrap();
        assert_eq!(ids(addr.send(Locate { key: "k".into() }).await.unwrap()), ["b"], "one mismatch: a rests");
        assert!(addr.send(Suspect { key: "k".into() }).await.unwrap());
        assert!(!addr.send(Suspect { key: "other".into() }).await.unwrap());
        // Opening fine again is no proof its bytes are right: it keeps resting.
        addr.send(Outcome { peer: "a".into(), ok: true }).await.unwrap();
        assert_eq!(ids(addr.send(Locate { key: "k".into() }).await.unwrap()), ["b"]);
    }
}
