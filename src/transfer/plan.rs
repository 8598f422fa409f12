//! The sans-IO planner of one chunked, multi-source download.
//!
//! It owns the state of one download as this node sees it: the peers known to download the same
//! blob (what each has, what each fetches from the upstream, whether it answers), the chunks in
//! flight, the peers left out per chunk, the waits on peers that should deliver a chunk, and the
//! upstream attempts. It performs no I/O and reads no clock: the driver passes `now` (time since
//! an epoch of its choice), feeds it what happened ([`Planner::on_chunk`],
//! [`Planner::on_refresh`]) and performs the [`Action`]s it returns ([`Planner::schedule`]).
//!
//! The decisions, for each chunk this node does not have and is not fetching (the first
//! [`ORDER_WINDOW`] missing ones in an order of its own, then lowest first):
//! 1. a peer that has it: the least loaded (ties in a stable pseudo-random order per chunk);
//! 2. else a peer receiving it now, from the upstream or from a peer that has it (asked with a
//!    long poll: the chunk moves on when it arrives, not one status refresh later);
//! 3. else its *owner* ([`owner`], rendezvous hashing over the nodes downloading it): this node
//!    reads it from the upstream when it is the owner, else asks the owner.
//!
//! **Owners among a set every node sees the same.** In a swarm of more than about 20 nodes a
//! lookup of the download's key returns only the providers the DHT kept (20 per key, first come),
//! so views differ: each node outside those would count itself as a candidate over "the 20 +
//! itself" and read ~1/21 of the chunks from the upstream (simulated: registry egress 6·F at 100
//! nodes). When a lookup comes back that full ([`CUT_AT`]), the owners are chosen among the nodes
//! it returned only (the *core*), which every node's lookup returns alike. A node learns that it
//! is one of them from their status pages: a core node of another level-1 group than this one
//! names it only when its own lookup returned it (in a cut swarm views are the core and the
//! node's groups, [`crate::routing::keys::SWARM_GROUP_LEVELS`]; nothing is learned from status
//! pages). The DHT never returns a node its own record, so this is the only way to know. A node
//! outside the core asks the owners and takes a chunk over only as below.
//!
//! A peer that said "not yet" keeps the chunk while its upstream progress grows; after
//! `takeover` without progress (or when it dies) it loses that chunk, and the owner is computed
//! again without it. A peer that sent bad bytes is never asked for that chunk again. An upstream
//! read that fails is retried with backoff, up to [`UPSTREAM_ATTEMPTS`]; a refusal (4xx) fails
//! the download at once.

use super::Bits;
use crate::routing::keys::tree_shard;
use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How long a peer that could not be reached is left out.
pub const DEAD_FOR: Duration = Duration::from_secs(30);
/// Most peers in one download's view.
pub const MAX_VIEW: usize = 64;
/// One refresh in this many looks the download up in the DHT.
pub const DHT_EVERY: u64 = 3;
/// Upstream attempts per chunk before the download fails.
pub const UPSTREAM_ATTEMPTS: u32 = 4;
/// How many of the first missing chunks are taken in a per-node order (see [`Planner::schedule`]).
pub const ORDER_WINDOW: u64 = 32;
/// A "not yet" answered faster than this was no long poll (the peer has nothing to wait on).
const PENDING_AT_ONCE: Duration = Duration::from_millis(100);
/// Then that peer is not asked again for this long (no tight loop).
const PENDING_BACKOFF: Duration = Duration::from_millis(200);
/// A peer that answered "too many uploads" is not asked for this long.
const BUSY_BACKOFF: Duration = Duration::from_millis(250);
/// Upstream retry n waits this times 2^n.
const UPSTREAM_BACKOFF: Duration = Duration::from_millis(250);
const NO_OWNER: u16 = u16::MAX;
/// A lookup returning this many other providers (the DHT keeps 20 per key, this node possibly
/// one of them) may have been cut: owners are then chosen among them only.
pub const CUT_AT: usize = crate::routing::members::CAP - 1;

/// Which of `candidates` fetches chunk `index` of `key` (a digest, a /blobs file id) from the
/// upstream: the highest rendezvous score. Every node computes the same answer from the same
/// candidates, and one with a partial view still never waits in a cycle (scores are one total
/// order per chunk, so each wait is on a node with a higher score).
pub fn owner<'a>(key: &str, index: u64, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().max_by_key(|id| (score(key, index, id), *id))
}

/// The rendezvous score of node `id` for chunk `index` of `key`.
pub fn score(key: &str, index: u64, id: &str) -> u64 {
    let h = sha2::Sha256::new()
        .chain_update(id)
        .chain_update(b"\n")
        .chain_update(key)
        .chain_update(index.to_be_bytes())
        .finalize();
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// A stable pseudo-random order among equally loaded peers for chunk `index`. Each node mixes
/// in its own [`salt`], so that different nodes prefer different holders of the same chunk.
pub fn tiebreak(id: &str, index: u64) -> u64 {
    let h = sha2::Sha256::new().chain_update(id).chain_update(index.to_le_bytes()).finalize();
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// This node's salt of [`tiebreak`]: XOR with it reverses the order of a pair of holders for
/// about half of the nodes (the order is decided by the highest bit in which the two differ).
/// Without it every node that needs chunk i picks the same holder of it (simulated: at 1,000
/// nodes the first holders served up to 16·F while the median node uploaded nothing).
pub fn salt(me: &str) -> u64 {
    tiebreak(me, u64::MAX)
}

/// Where the planner's hashes come from: [`score`] and [`tiebreak`] by default. A simulator of
/// thousands of nodes may answer from a table of the same values computed once.
pub trait Hashes: Send + Sync {
    fn score(&self, key: &str, index: u64, id: &str) -> u64 {
        score(key, index, id)
    }
    fn tiebreak(&self, id: &str, index: u64) -> u64 {
        tiebreak(id, index)
    }
}

/// [`score`] and [`tiebreak`], computed each time.
pub struct Sha256Hashes;

impl Hashes for Sha256Hashes {}

/// The limits of one download.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// Chunks in flight from peers.
    pub parallel: usize,
    /// Chunks in flight from the upstream.
    pub upstream_parallel: usize,
    /// Chunks in flight to any one peer.
    pub per_peer: usize,
    /// A peer that should deliver a chunk and made no progress for this long loses it.
    pub takeover: Duration,
    pub max_view: usize,
    pub dht_every: u64,
    pub upstream_attempts: u32,
    pub dead_for: Duration,
    /// How many of the first missing chunks are taken in this node's own order (1: index order).
    pub order_window: u64,
    /// Split the chunks nobody has among the nodes in the transfer (rendezvous owners). Off:
    /// this node reads from the upstream every chunk no peer has or receives.
    pub split_owners: bool,
}

impl PlanConfig {
    pub fn new(parallel: usize, upstream_parallel: usize, per_peer: usize, takeover: Duration) -> PlanConfig {
        PlanConfig {
            parallel,
            upstream_parallel,
            per_peer,
            takeover,
            max_view: MAX_VIEW,
            dht_every: DHT_EVERY,
            upstream_attempts: UPSTREAM_ATTEMPTS,
            split_owners: true,
            dead_for: DEAD_FOR,
            order_window: ORDER_WINDOW,
        }
    }
}

impl From<&crate::config::SwarmConfig> for PlanConfig {
    fn from(c: &crate::config::SwarmConfig) -> Self {
        PlanConfig::new(c.parallel, c.upstream_parallel, c.per_peer, c.takeover)
    }
}

/// Where a chunk was being fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Upstream,
    Peer(String),
}

/// How a chunk fetch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The chunk arrived, checked and stored.
    Got,
    /// The peer does not have it yet ("425"), with its upstream progress for the blob; `took`
    /// is how long the answer took (a long poll, or at once).
    Pending { progress: Option<u64>, took: Duration },
    /// The peer has no such download (finished and gone, or another blob).
    NotThere,
    /// The peer has too many uploads.
    Busy,
    /// The peer could not be reached, or the transfer broke.
    Dead,
    /// The peer sent bytes that do not match their hash (or failed authentication).
    Bad,
    /// The upstream read failed; `fatal` when retrying cannot help (a 4xx, not mirrored).
    UpstreamFailed { fatal: bool },
    /// The upstream read was given up because a peer has the chunk.
    Abandoned,
}

/// A peer's answer to a status request for this download.
#[derive(Clone, Debug)]
pub enum Status<A> {
    /// Downloading the same blob in the same chunks: what it has, what it is receiving now
    /// (from the upstream, or from a peer that has the chunk), the other nodes it knows
    /// download it.
    Active { have: Bits, fetching: Bits, peers: Vec<(String, A)> },
    /// Downloading it in another size or chunk size.
    Other,
    /// No such download there.
    NotFound,
    /// It did not answer.
    Unreachable,
}

/// A refresh to perform: look the download up in the DHT (when `lookup`), then ask
/// [`ask_list`]`(known, found)` for their status.
#[derive(Clone, Debug)]
pub struct Refresh<A> {
    pub lookup: bool,
    pub known: Vec<(String, A)>,
}

/// What the driver does (starts) and what it may count (notes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<A> {
    /// Ask `peer` for chunk `index` (a long poll when it does not have it yet).
    FetchPeer { index: u64, peer: String, addr: A },
    /// Read chunk `index` from the upstream.
    FetchUpstream { index: u64 },
    /// Give up the upstream read of chunk `index` (a peer has it); report it `Abandoned`.
    AbortUpstream { index: u64 },
    /// Give up the request to `peer` for chunk `index`: this node owns the chunk now and
    /// nobody it knows has or fetches it, so that long poll would only hold the chunk back.
    /// Report it `Abandoned` (or as it ended, if it ended first).
    AbortPeer { index: u64, peer: String },
    /// Note: `from` lost chunk `index` (no progress for `takeover`, or dead).
    TookOver { index: u64, from: String },
    /// Note: a peer downloading with this node stopped answering.
    PeerLost { peer: String },
    /// Every chunk is here.
    Complete,
    /// An on-demand transfer ([`Planner::on_demand`]) could not get chunk `index`: it is no
    /// longer wanted, and whoever waits for it gets the error (the transfer goes on).
    ChunkFailed { index: u64, error: PlanError },
    /// The download cannot complete.
    Failed(PlanError),
}

#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    #[error("chunk {index}: the upstream refused it")]
    UpstreamRefused { index: u64 },
    #[error("chunk {index}: the upstream failed {attempts} times")]
    UpstreamAttempts { index: u64, attempts: u32 },
}

struct Known<A> {
    addr: A,
    /// Answered a status request for this download (so it is downloading it too).
    active: bool,
    have: Bits,
    fetching: Bits,
    dead_until: Option<Duration>,
    busy_until: Option<Duration>,
    inflight: usize,
    /// In the core (see [`Planner::core`]): asked for a chunk only when no other holder can be.
    core: bool,
}

impl<A> Known<A> {
    fn usable(&self, now: Duration) -> bool {
        self.dead_until.is_none_or(|t| now >= t) && self.busy_until.is_none_or(|t| now >= t)
    }

    fn alive(&self, now: Duration) -> bool {
        self.dead_until.is_none_or(|t| now >= t)
    }
}

/// Waiting for a chunk from a peer.
struct Wait {
    peer: String,
    /// Since when without progress.
    since: Duration,
    /// The peer's last reported progress (bytes it received from the upstream for this blob).
    progress: Option<u64>,
}

/// How many group levels (the deepest looked up) a node asks for their status in a cut swarm:
/// a shallow level's key lists the same first 20 of thousands of nodes to all of them.
pub const GROUP_LEVELS_IN_VIEW: usize = 2;

/// The peers of the group lookups (shallowest level first) to ask: the
/// [`GROUP_LEVELS_IN_VIEW`] deepest levels, deepest first.
pub fn deepest_groups<T>(levels: Vec<Vec<T>>) -> Vec<T> {
    levels.into_iter().rev().take(GROUP_LEVELS_IN_VIEW).flatten().collect()
}

/// The peers to ask for their status: the known ones, then the ones found other than `me`, at
/// most `max`.
pub fn ask_list<A: Clone>(known: Vec<(String, A)>, found: &[(String, A)], me: &str, max: usize) -> Vec<(String, A)> {
    let mut ask = known;
    for p in found {
        if p.0 != me && !ask.iter().any(|k| k.0 == p.0) {
            ask.push(p.clone());
        }
    }
    ask.truncate(max);
    ask
}

/// The decisions of one download. `A` is how the driver reaches a peer (an address).
pub struct Planner<A> {
    /// The rendezvous key (a digest, a file id).
    key: String,
    me: String,
    /// [`salt`] of `me`.
    salt: u64,
    chunks: u64,
    cfg: PlanConfig,
    hashes: Arc<dyn Hashes>,
    peers: BTreeMap<String, Known<A>>,
    have: Bits,
    inflight: Bits,
    /// Chunks being read from the upstream.
    fetching: Bits,
    peer_inflight: usize,
    upstream_inflight: usize,
    /// Per chunk, how many known peers have it / fetch it (a chunk nobody has is skipped fast).
    holders: Vec<u16>,
    fetchers: Vec<u16>,
    /// Peers no longer asked for a chunk (took over from them, or they sent bad bytes).
    excluded: HashMap<u64, HashSet<String>>,
    /// chunk → the wait on the peer that should deliver it
    waiting: HashMap<u64, Wait>,
    /// chunk → the peer asked for it (a request in flight, not given up).
    asked: HashMap<u64, String>,
    upstream_attempts: HashMap<u64, (u32, Duration)>,
    refreshing: bool,
    refreshes: u64,
    /// The refresh running looks the download up in the DHT.
    looking_up: bool,
    /// The nodes owners are chosen among when the last lookup may have been cut at the DHT's
    /// cap; `None`: every node downloading.
    core: Option<HashSet<String>>,
    /// A core node of another level-1 group named this one: it is in the core.
    in_core: bool,
    /// Candidates of the cached owners (sorted), and the owner of each chunk (index into them).
    cands: Vec<String>,
    /// Where this node is among them.
    me_at: Option<usize>,
    owners: Vec<u16>,
    /// Something the candidates depend on changed (a peer's answer, a loss, the core), or
    /// `cands_until` passed (a peer left out as dead may be back): recompute them.
    cands_stale: bool,
    cands_until: Option<Duration>,
    /// No chunk below this index is missing.
    first_missing: u64,
    failed: Option<PlanError>,
    /// On demand: only these chunks are fetched (a /blobs file: the chunks its readers and its
    /// prefetch ask for, and those peers ask this node to fetch). `None`: every chunk.
    wanted: Option<Bits>,
}

impl<A: Clone> Planner<A> {
    pub fn new(key: String, me: String, chunks: u64, cfg: PlanConfig) -> Planner<A> {
        Self::with_hashes(key, me, chunks, cfg, Arc::new(Sha256Hashes))
    }

    pub fn with_hashes(key: String, me: String, chunks: u64, cfg: PlanConfig, hashes: Arc<dyn Hashes>) -> Planner<A> {
        let n = chunks as usize;
        Planner {
            key,
            salt: salt(&me),
            me,
            chunks,
            cfg,
            hashes,
            peers: BTreeMap::new(),
            have: Bits::new(chunks),
            inflight: Bits::new(chunks),
            asked: HashMap::new(),
            fetching: Bits::new(chunks),
            peer_inflight: 0,
            upstream_inflight: 0,
            holders: vec![0; n],
            fetchers: vec![0; n],
            excluded: HashMap::new(),
            waiting: HashMap::new(),
            upstream_attempts: HashMap::new(),
            refreshing: false,
            refreshes: 0,
            looking_up: false,
            core: None,
            in_core: false,
            cands: Vec::new(),
            me_at: None,
            owners: vec![NO_OWNER; n],
            cands_stale: true,
            cands_until: None,
            first_missing: 0,
            failed: None,
            wanted: None,
        }
    }

    /// Fetch only the chunks asked for with [`Planner::want`] (a file read in parts), and fail
    /// a chunk rather than the transfer when the upstream cannot give it.
    pub fn on_demand(mut self) -> Self {
        self.wanted = Some(Bits::new(self.chunks));
        self
    }

    /// (On demand) fetch chunk `index` (`on`), or no longer (a chunk already in flight ends
    /// as it ends). A chunk failed before is tried afresh.
    pub fn want(&mut self, index: u64, on: bool) {
        if index >= self.chunks {
            return;
        }
        if let Some(w) = self.wanted.as_mut() {
            w.set(index, on);
            if on {
                self.upstream_attempts.remove(&index);
            }
        }
    }

    /// Whether a wanted chunk is neither here nor in flight, or one is in flight (there is
    /// work, so the view of the others is worth refreshing).
    pub fn busy(&self) -> bool {
        self.peer_inflight + self.upstream_inflight > 0
            || match &self.wanted {
                Some(w) => w.ones().any(|i| !self.have.get(i)),
                None => !self.have.all(),
            }
    }

    /// Chunk `index` is no longer here (evicted from a cache): fetched again when wanted.
    pub fn forget(&mut self, index: u64) {
        if index < self.chunks {
            self.have.set(index, false);
            self.first_missing = self.first_missing.min(index);
        }
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Chunks held.
    pub fn have(&self) -> &Bits {
        &self.have
    }

    /// Chunks being read from the upstream.
    pub fn fetching(&self) -> &Bits {
        &self.fetching
    }

    pub fn is_complete(&self) -> bool {
        self.have.all()
    }

    pub fn failure(&self) -> Option<&PlanError> {
        self.failed.as_ref()
    }

    /// Chunk fetches in flight (from peers, from the upstream).
    pub fn in_flight(&self) -> (usize, usize) {
        (self.peer_inflight, self.upstream_inflight)
    }

    /// Whether the view is full (learning more peers changes nothing).
    pub fn view_full(&self) -> bool {
        self.peers.len() >= self.cfg.max_view
    }

    /// Whether the peers named in `id`'s status page can change anything here (a simulator of
    /// thousands of nodes skips building the pages that cannot): while the view has room, and
    /// from a core node while this one does not know yet that it is in the core.
    pub fn reads_names_from(&self, id: &str) -> bool {
        (!self.view_full() && self.core.is_none())
            || (!self.in_core && self.core.as_ref().is_some_and(|c| c.contains(id)))
    }

    /// Peers this node tells others about: the ones downloading the blob with it.
    pub fn view(&self) -> Vec<(String, A)> {
        self.peers.iter().filter(|(_, k)| k.active).map(|(id, k)| (id.clone(), k.addr.clone())).collect()
    }

    /// Begin a refresh (none while one is running): whether to look the download up in the
    /// DHT this time (every few refreshes, and while no peer answers), and the peers to ask
    /// (known and not left out as dead).
    pub fn start_refresh(&mut self, now: Duration) -> Option<Refresh<A>> {
        if self.refreshing {
            return None;
        }
        self.refreshing = true;
        self.refreshes += 1;
        let lookup = self.refreshes % self.cfg.dht_every == 1 || self.peers.values().all(|k| !k.active);
        self.looking_up = lookup;
        let known =
            self.peers.iter().filter(|(_, k)| k.alive(now)).map(|(id, k)| (id.clone(), k.addr.clone())).collect();
        Some(Refresh { lookup, known })
    }

    fn learn(&mut self, id: &str, addr: &A) {
        if self.peers.len() < self.cfg.max_view || self.peers.contains_key(id) {
            self.admit(id, addr);
        }
    }

    /// Know peer `id` even when the view is full (the owners must be known: at most
    /// [`MAX_VIEW`] more).
    fn admit(&mut self, id: &str, addr: &A) {
        if id == self.me {
            return;
        }
        if !self.peers.contains_key(id) {
            let n = self.chunks;
            self.peers.insert(
                id.to_owned(),
                Known {
                    addr: addr.clone(),
                    active: false,
                    have: Bits::new(n),
                    fetching: Bits::new(n),
                    dead_until: None,
                    busy_until: None,
                    inflight: 0,
                    core: self.core.as_ref().is_some_and(|c| c.contains(id)),
                },
            );
        }
    }

    /// Replace what peer `id` has and fetches, keeping the per-chunk counts.
    fn set_bits(&mut self, id: &str, have: Bits, fetching: Bits) {
        let Some(k) = self.peers.get_mut(id) else { return };
        for i in k.have.diff(&have) {
            let c = &mut self.holders[i as usize];
            *c = if have.get(i) { c.saturating_add(1) } else { c.saturating_sub(1) };
        }
        for i in k.fetching.diff(&fetching) {
            let c = &mut self.fetchers[i as usize];
            *c = if fetching.get(i) { c.saturating_add(1) } else { c.saturating_sub(1) };
        }
        k.have = have;
        k.fetching = fetching;
    }

    /// It stopped answering: left out for a while.
    fn lost(&mut self, id: &str, now: Duration, out: &mut Vec<Action<A>>) {
        let Some(k) = self.peers.get_mut(id) else { return };
        self.cands_stale = true;
        if k.active {
            out.push(Action::PeerLost { peer: id.to_owned() });
        }
        k.active = false;
        k.dead_until = Some(now + self.cfg.dead_for);
    }

    /// A refresh ended: the peers the DHT returned, and each asked peer's status.
    pub fn on_refresh(
        &mut self,
        now: Duration,
        found: &[(String, A)],
        statuses: Vec<(String, A, Status<A>)>,
        out: &mut Vec<Action<A>>,
    ) {
        self.refreshing = false;
        self.cands_stale = true;
        if std::mem::take(&mut self.looking_up) && !found.is_empty() {
            let others: HashSet<String> =
                found.iter().filter(|(id, _)| *id != self.me).map(|(id, _)| id.clone()).collect();
            self.core = (others.len() >= CUT_AT).then_some(others);
            let core = self.core.as_ref();
            for (id, k) in self.peers.iter_mut() {
                k.core = core.is_some_and(|c| c.contains(id));
            }
        }
        for (id, addr) in found {
            if self.core.is_some() {
                self.admit(id, addr);
            } else {
                self.learn(id, addr);
            }
        }
        for (id, addr, status) in statuses {
            self.learn(&id, &addr);
            if !self.peers.contains_key(&id) {
                continue;
            }
            match status {
                Status::Active { have, fetching, peers }
                    if have.len() == self.chunks && fetching.len() == self.chunks =>
                {
                    if let Some(k) = self.peers.get_mut(&id) {
                        k.active = true;
                    }
                    self.set_bits(&id, have, fetching);
                    if !self.in_core
                        && self.core.as_ref().is_some_and(|c| c.contains(&id))
                        && tree_shard(&id, 1) != tree_shard(&self.me, 1)
                        && peers.iter().any(|(g, _)| *g == self.me)
                    {
                        self.in_core = true;
                    }
                    // In a swarm cut at the DHT's cap the view is the core and this node's
                    // group: learning from status pages, first come, would fill every view with
                    // the same few nodes everyone then downloads from (simulated at 1,000
                    // nodes: ~70 nodes uploaded everything, the median node nothing).
                    if self.core.is_none() {
                        for (g, a) in &peers {
                            self.learn(g, a);
                        }
                    }
                }
                Status::Active { .. } | Status::Other => {
                    if let Some(k) = self.peers.get_mut(&id) {
                        k.active = false;
                    }
                }
                Status::NotFound | Status::Unreachable => {
                    if matches!(status, Status::Unreachable) {
                        self.lost(&id, now, out);
                    }
                    if let Some(k) = self.peers.get_mut(&id) {
                        k.active = false;
                    }
                    let n = self.chunks;
                    self.set_bits(&id, Bits::new(n), Bits::new(n));
                }
            }
        }
        self.abandon_fetched_elsewhere(now, out);
        self.give_up_asks_for_own_chunks(now, out);
    }

    /// A chunk this node owns now (its view changed: it learned it is in the core, an owner
    /// left) that it still waits for from another node, when no node it knows has or fetches
    /// it: nobody is going to bring it, and the request, a long poll, would hold the chunk back
    /// for up to its 2 s. It is given up, and the chunk read here at the next schedule.
    /// (Simulated at 10,000 nodes: such a chunk's registry read started 2 s after the others,
    /// and every node got it last.)
    fn give_up_asks_for_own_chunks(&mut self, now: Duration, out: &mut Vec<Action<A>>) {
        if self.asked.is_empty() || !self.cfg.split_owners {
            return;
        }
        self.update_candidates(now);
        if self.me_at.is_none() {
            return;
        }
        let mut asked: Vec<(u64, String)> = self.asked.iter().map(|(i, p)| (*i, p.clone())).collect();
        asked.sort_unstable();
        for (i, peer) in asked {
            let ui = i as usize;
            if self.holders[ui] > 0 || self.fetchers[ui] > 0 || self.owner_at(i).is_some() {
                continue;
            }
            self.asked.remove(&i);
            out.push(Action::AbortPeer { index: i, peer });
        }
    }

    /// Stop reading from the upstream what a peer already has (a slow or stuck upstream read,
    /// or two nodes that both thought they owned a chunk): the peer is asked instead.
    fn abandon_fetched_elsewhere(&self, now: Duration, out: &mut Vec<Action<A>>) {
        for i in self.fetching.ones() {
            if self.held_by_usable_peer(i, now) {
                out.push(Action::AbortUpstream { index: i });
            }
        }
    }

    /// Whether a peer that may be asked now for chunk `i` has it (not left out for it, e.g.
    /// after bad bytes): an upstream read of it is not started, and one running is stopped.
    fn held_by_usable_peer(&self, i: u64, now: Duration) -> bool {
        self.holders[i as usize] > 0 && self.peers.iter().any(|(id, k)| k.have.get(i) && self.ok(k, id, i, now))
    }

    /// The nodes chunks are shared among now: this one and the peers downloading the blob that
    /// answer (a peer that is only busy stays; one that stopped answering does not) — of the
    /// core only, when there is one; this node alone when none of them answers. Cached owners
    /// are dropped when they change.
    fn update_candidates(&mut self, now: Duration) {
        if !self.cands_stale && self.cands_until.is_none_or(|t| now < t) {
            return;
        }
        self.cands_stale = false;
        self.cands_until = self.peers.values().filter_map(|k| k.dead_until.filter(|t| *t > now)).min();
        let core = self.core.as_ref();
        let split = self.cfg.split_owners;
        let eligible = |id: &str| split && core.is_none_or(|set| set.contains(id));
        let peers = || self.peers.iter().filter(|(id, k)| k.active && k.alive(now) && eligible(id)).map(|(id, _)| id);
        let with_me = core.is_none() || self.in_core || peers().next().is_none();
        let me = with_me.then_some(&self.me);
        let mut n = 0;
        let mut same = true;
        let mut me_done = me.is_none();
        for id in peers() {
            if !me_done && self.me < *id {
                same &= self.cands.get(n) == Some(&self.me);
                n += 1;
                me_done = true;
            }
            same &= self.cands.get(n) == Some(id);
            n += 1;
        }
        if !me_done {
            same &= self.cands.get(n) == Some(&self.me);
            n += 1;
        }
        if same && n == self.cands.len() {
            return;
        }
        let mut c: Vec<String> = peers().cloned().chain(me.cloned()).collect();
        c.sort();
        self.me_at = c.iter().position(|id| *id == self.me);
        self.cands = c;
        self.owners.iter_mut().for_each(|o| *o = NO_OWNER);
    }

    /// The owner of chunk `i` (its place in `cands`), `None` for this node: cached while the
    /// candidates stay the same (hashing every chunk against every candidate on every event
    /// would cost more than the chunks). When every candidate lost the chunk (taken over), this
    /// node owns it.
    fn owner_at(&mut self, i: u64) -> Option<usize> {
        let best = |cands: &mut dyn Iterator<Item = (usize, &String)>| {
            cands.max_by_key(|(_, id)| (self.hashes.score(&self.key, i, id), id.as_str())).map(|(n, _)| n)
        };
        let excluded = if self.excluded.is_empty() { None } else { self.excluded.get(&i) };
        let o = if let Some(x) = excluded {
            best(&mut self.cands.iter().enumerate().filter(|(_, c)| !x.contains(*c)))
        } else if self.owners[i as usize] != NO_OWNER {
            Some(self.owners[i as usize] as usize)
        } else {
            let o = best(&mut self.cands.iter().enumerate());
            if let Some(o) = o {
                self.owners[i as usize] = o as u16;
            }
            o
        };
        o.filter(|o| Some(*o) != self.me_at)
    }

    fn ok(&self, k: &Known<A>, id: &str, i: u64, now: Duration) -> bool {
        k.usable(now) && self.excluded.get(&i).is_none_or(|x| !x.contains(id))
    }

    /// A peer that has chunk `i` and may be asked now: outside the core if one can be (the
    /// core's uplinks serve the chunks nobody else has yet), the least loaded, ties broken by
    /// a per-node order.
    fn holder(&self, i: u64, now: Duration) -> Option<&String> {
        let per_peer = self.cfg.per_peer;
        let excluded = self.excluded.get(&i);
        let mut best: Option<((bool, usize, u64), &String)> = None;
        for (id, k) in &self.peers {
            if !k.have.get(i) || k.inflight >= per_peer || !k.usable(now) || excluded.is_some_and(|x| x.contains(id)) {
                continue;
            }
            if best.is_some_and(|(b, _)| (b.0, b.1) < (k.core, k.inflight)) {
                continue;
            }
            let rank = (k.core, k.inflight, self.hashes.tiebreak(id, i) ^ self.salt);
            if best.is_none_or(|(b, _)| rank < b) {
                best = Some((rank, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// A peer receiving chunk `i` now (from the upstream, or from a peer that has it), ranked
    /// like [`Self::holder`] with the ones that have room first: asked with a long poll, so that
    /// the chunk moves on as soon as it is there rather than after the next refresh.
    fn fetcher(&self, i: u64, now: Duration) -> Option<&String> {
        if self.fetchers[i as usize] == 0 {
            return None;
        }
        let per_peer = self.cfg.per_peer;
        self.peers
            .iter()
            .filter(|(id, k)| k.fetching.get(i) && k.active && self.ok(k, id, i, now))
            .min_by_key(|(id, k)| (k.inflight >= per_peer, k.core, k.inflight, self.hashes.tiebreak(id, i) ^ self.salt))
            .map(|(id, _)| id)
    }

    /// Start what can start now.
    pub fn schedule(&mut self, now: Duration, out: &mut Vec<Action<A>>) {
        if self.failed.is_some() {
            return;
        }
        let (parallel, up_parallel, per_peer) = (self.cfg.parallel, self.cfg.upstream_parallel, self.cfg.per_peer);
        self.update_candidates(now);
        while self.first_missing < self.chunks && self.have.get(self.first_missing) {
            self.first_missing += 1;
        }
        // Which chunks a peer could serve now: what the peers with room have, and what the
        // usable peers fetch (supersets: `holder` and `fetcher` decide; room only shrinks
        // below). A chunk outside both is not looked at peer by peer.
        let mut served = Bits::new(self.chunks);
        let mut fetched = Bits::new(self.chunks);
        for k in self.peers.values().filter(|k| k.usable(now)) {
            if k.inflight < per_peer {
                served.or_assign(&k.have);
            }
            if k.active {
                fetched.or_assign(&k.fetching);
            }
        }
        // Which candidates (owners) may be asked now, looked up when first needed; a start
        // below can only take room away.
        let mut room: Vec<Option<bool>> = vec![None; self.cands.len()];
        // Whether this node owns no chunk (another candidate always wins): then, once the
        // peer slots are full, nothing more can start.
        let owns_none = self.me_at.is_none() && !self.cands.is_empty() && self.excluded.is_empty();
        // The first missing chunks in an order of this node's own (the rest in index order):
        // nodes that start together then ask for different chunks first, so each chunk's first
        // copies come from different sources (all asking for chunk 0 first had everyone wait
        // on its owner); a reader streaming the blob in order still gets its bytes early.
        let (first, span) = (self.first_missing, self.chunks - self.first_missing);
        let window = span.min(self.cfg.order_window.max(1));
        let off = if window == 0 { 0 } else { self.salt % window };
        // On demand: the chunks wanted and missing, lowest first (a reader's next bytes).
        let order: Box<dyn Iterator<Item = u64>> = match &self.wanted {
            Some(w) => Box::new(w.ones().filter(|i| !self.have.get(*i)).collect::<Vec<_>>().into_iter()),
            None => {
                Box::new((0..span).map(move |step| first + if step < window { (step + off) % window } else { step }))
            }
        };
        for i in order {
            if self.peer_inflight >= parallel && (self.upstream_inflight >= up_parallel || owns_none) {
                break;
            }
            if self.inflight.get(i) || self.have.get(i) {
                continue;
            }
            let retry_ok = |s: &Self| s.upstream_attempts.get(&i).is_none_or(|(_, at)| now >= *at);
            if self.peer_inflight >= parallel {
                // Only an upstream read can start: for a chunk this node owns that no peer fetches.
                if self.owner_at(i).is_none()
                    && !(fetched.get(i) && self.fetcher(i, now).is_some())
                    && retry_ok(self)
                    && !self.held_by_usable_peer(i, now)
                {
                    self.start_upstream(i, out);
                }
                continue;
            }
            // 1. A peer that has it: the least loaded.
            if self.holders[i as usize] > 0 && served.get(i) {
                if let Some(id) = self.holder(i, now).cloned() {
                    if let Ok(c) = self.cands.binary_search(&id) {
                        room[c] = None;
                    }
                    self.start_peer(i, id, out);
                    continue;
                }
            }
            // 2. A peer fetching it from the upstream now, else 3. its owner.
            let target = match fetched.get(i).then(|| self.fetcher(i, now)).flatten() {
                Some(id) => Some(id.clone()),
                None => match self.owner_at(i) {
                    Some(o)
                        if !*room[o].get_or_insert_with(|| {
                            self.peers.get(&self.cands[o]).is_some_and(|k| k.inflight < per_peer && k.usable(now))
                        }) =>
                    {
                        continue
                    }
                    o => o.map(|o| self.cands[o].clone()),
                },
            };
            match target {
                None => {
                    // Not for a chunk a peer has and is only at its per-peer limit with us: that
                    // read would be stopped at the next refresh (`abandon_fetched_elsewhere`).
                    if self.upstream_inflight < up_parallel && retry_ok(self) && !self.held_by_usable_peer(i, now) {
                        self.start_upstream(i, out);
                    }
                }
                Some(id) => {
                    if self.peers.get(&id).is_some_and(|k| k.inflight < per_peer && k.usable(now)) {
                        if let Ok(c) = self.cands.binary_search(&id) {
                            room[c] = None;
                        }
                        self.start_peer(i, id, out);
                    }
                }
            }
        }
    }

    fn start_peer(&mut self, index: u64, id: String, out: &mut Vec<Action<A>>) {
        let Some(k) = self.peers.get_mut(&id) else { return };
        k.inflight += 1;
        self.peer_inflight += 1;
        self.inflight.set(index, true);
        self.asked.insert(index, id.clone());
        out.push(Action::FetchPeer { index, peer: id, addr: k.addr.clone() });
    }

    fn start_upstream(&mut self, index: u64, out: &mut Vec<Action<A>>) {
        self.upstream_inflight += 1;
        self.inflight.set(index, true);
        self.fetching.set(index, true);
        out.push(Action::FetchUpstream { index });
    }

    /// A chunk fetch started by [`Action::FetchPeer`] or [`Action::FetchUpstream`] ended.
    pub fn on_chunk(
        &mut self,
        now: Duration,
        index: u64,
        source: Source,
        outcome: ChunkOutcome,
        out: &mut Vec<Action<A>>,
    ) {
        if index >= self.chunks {
            return;
        }
        self.inflight.set(index, false);
        match &source {
            Source::Upstream => {
                self.upstream_inflight = self.upstream_inflight.saturating_sub(1);
                self.fetching.set(index, false);
            }
            Source::Peer(id) => {
                if self.asked.get(&index) == Some(id) {
                    self.asked.remove(&index);
                }
                self.peer_inflight = self.peer_inflight.saturating_sub(1);
                if let Some(k) = self.peers.get_mut(id) {
                    k.inflight = k.inflight.saturating_sub(1);
                }
            }
        }
        let peer = match source {
            Source::Peer(id) => Some(id),
            Source::Upstream => None,
        };
        match outcome {
            ChunkOutcome::Got => {
                self.waiting.remove(&index);
                let first = !self.have.get(index);
                self.have.set(index, true);
                if first && self.have.all() {
                    out.push(Action::Complete);
                }
            }
            ChunkOutcome::Pending { progress, took } => {
                let Some(id) = peer else { return };
                if took < PENDING_AT_ONCE {
                    // Answered "not yet" at once: do not ask again in a tight loop.
                    if let Some(k) = self.peers.get_mut(&id) {
                        k.busy_until = Some(now + PENDING_BACKOFF);
                    }
                }
                self.note_wait(now, index, id, progress, out);
            }
            ChunkOutcome::NotThere => {
                if let Some(id) = peer {
                    if let Some(k) = self.peers.get_mut(&id) {
                        k.active = false;
                        self.cands_stale = true;
                        let (mut have, mut fetching) = (k.have.clone(), k.fetching.clone());
                        have.set(index, false);
                        fetching.set(index, false);
                        self.set_bits(&id, have, fetching);
                    }
                }
            }
            ChunkOutcome::Busy => {
                if let Some(k) = peer.and_then(|id| self.peers.get_mut(&id)) {
                    k.busy_until = Some(now + BUSY_BACKOFF);
                }
            }
            ChunkOutcome::Dead => {
                if let Some(id) = peer {
                    self.lost(&id, now, out);
                    if self.waiting.get(&index).is_some_and(|w| w.peer == id) {
                        self.waiting.remove(&index);
                        out.push(Action::TookOver { index, from: id });
                    }
                }
            }
            ChunkOutcome::Bad => {
                if let Some(id) = peer {
                    self.excluded.entry(index).or_default().insert(id);
                }
            }
            ChunkOutcome::Abandoned => {}
            ChunkOutcome::UpstreamFailed { fatal } => {
                let attempts = self.upstream_attempts.entry(index).or_insert((0, now));
                attempts.0 += 1;
                if fatal || attempts.0 >= self.cfg.upstream_attempts {
                    let e = if fatal {
                        PlanError::UpstreamRefused { index }
                    } else {
                        PlanError::UpstreamAttempts { index, attempts: attempts.0 }
                    };
                    if let Some(w) = self.wanted.as_mut() {
                        w.set(index, false);
                        self.upstream_attempts.remove(&index);
                        out.push(Action::ChunkFailed { index, error: e });
                        return;
                    }
                    self.failed = Some(e.clone());
                    out.push(Action::Failed(e));
                } else {
                    attempts.1 = now + UPSTREAM_BACKOFF * (1 << attempts.0);
                }
            }
        }
    }

    /// A peer said "not yet". Keep waiting while it makes progress on this blob's upstream reads
    /// (it is working through the chunks it owns); take the chunk over when it made none for
    /// `takeover` (stuck, or not fetching at all). A peer that is slow but moving keeps its
    /// chunks: taking them over would read them from the upstream twice.
    fn note_wait(&mut self, now: Duration, index: u64, id: String, progress: Option<u64>, out: &mut Vec<Action<A>>) {
        let entry = self.waiting.entry(index).or_insert(Wait { peer: id.clone(), since: now, progress });
        if entry.peer != id {
            *entry = Wait { peer: id.clone(), since: now, progress };
        } else if progress.is_some_and(|p| entry.progress.is_none_or(|q| p > q)) {
            entry.since = now;
            entry.progress = progress;
        }
        if now.saturating_sub(entry.since) >= self.cfg.takeover {
            self.excluded.entry(index).or_default().insert(id.clone());
            self.waiting.remove(&index);
            out.push(Action::TookOver { index, from: id });
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
