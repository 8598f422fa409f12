//! Many nodes downloading the same blobs at once through swarming, each node's decisions made
//! by its own [`Planner`] exactly as the swarm engine drives it: announce, wait `gather`, a first
//! refresh, refreshes every `refresh` (the DHT every third), then whatever the planner starts.
//! The peers answer as peerd's `/swarm` endpoints do: status pages (what a node has, what it
//! fetches, the peers it knows), chunks with a 2 s long poll and a 425 carrying the upstream
//! progress, 503 beyond `upload_slots`, 404 without the download (before it started, after its
//! `linger`). Dead nodes: new connections fail after `p2p.connect_timeout`, transfers in
//! progress after `p2p.idle_timeout`.
//!
//! Cut-through (`swarm.cut_through`): a request for a chunk that is arriving at the asked node
//! (from a peer or the registry) is served at once, as peerd passes the bytes on while they
//! arrive; so are the long polls waiting there when its transfer starts. In the fluid
//! model such a transfer gets its fair share like any other; it cannot end before the forwarding
//! node has the whole chunk (then its reply follows after one half RTT), and it is cut (503 to the
//! asker) when the forwarding node's own transfer fails.

use super::net::{Net, REGISTRY};
use super::{percentile, Rng};
use crate::config::SwarmConfig;
use crate::routing::keys;
use crate::transfer::plan::{
    ask_list, deepest_groups, Action, ChunkOutcome, Hashes, PlanConfig, Planner, Source, Status, CUT_AT, MAX_VIEW,
};
use crate::transfer::Bits;
use libp2p::kad::KBucketKey;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG_POLL: u64 = crate::swarm::engine::LONG_POLL.as_micros() as u64;
/// Providers a DHT node keeps per key (peerd sets libp2p's `max_providers_per_key` to K).
const MAX_PROVIDERS: usize = 20;
/// Nodes that store a key's provider records (Kademlia's k).
const K: usize = 20;

/// Which providers of the swarm key a DHT lookup returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Found {
    /// As libp2p-kad 0.49 does: each of the k nodes closest to the key keeps the first 20
    /// providers that reached it; a lookup returns the union (at most 64).
    FirstPerStore,
    /// What-if: a uniform random sample of 64 providers.
    Random,
}

#[derive(Clone, Debug)]
pub struct Params {
    pub nodes: usize,
    /// Sizes of the blobs every node pulls (one image's layers).
    pub blobs: Vec<u64>,
    /// Blobs a node downloads at once (containerd's concurrent layer downloads).
    pub blob_parallel: usize,
    /// Bytes per second.
    pub node_up: f64,
    pub node_down: f64,
    pub registry: f64,
    pub rtt: Duration,
    pub registry_rtt: Duration,
    pub swarm: SwarmConfig,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Nodes that hold the whole image from the start and serve it as swarm members.
    pub seeds: usize,
    /// A fraction of the downloading nodes dies at a time.
    pub kill: Option<(f64, Duration)>,
    /// Nodes start uniformly within this.
    pub start_spread: Duration,
    pub found: Found,
    /// The simulation stops here (nodes not done count as not completed).
    pub max_sim: Duration,
    pub max_wall: Duration,
    pub seed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub image_bytes: u64,
    pub bound_s: f64,
    pub downloading: usize,
    pub completed: usize,
    pub failed: usize,
    pub killed: usize,
    pub p50_s: f64,
    pub p99_s: f64,
    pub slowest_s: f64,
    pub slowest_over_bound: f64,
    pub registry_egress_over_f: f64,
    pub upload_max_over_f: f64,
    pub upload_median_over_f: f64,
    pub takeovers: u64,
    pub abandoned: u64,
    pub peers_lost: u64,
    pub busy: u64,
    pub pending: u64,
    /// Chunk transfers served by cut-through (the sender was still receiving the chunk).
    pub forwarded: u64,
    /// Requests to a peer given up because this node came to own the chunk (`AbortPeer`).
    pub peer_asks_given_up: u64,
    pub view_mean: f64,
    pub sim_s: f64,
    pub wall_s: f64,
    pub events: u64,
    /// Stopped at `max_sim` or `max_wall` before every live node completed.
    pub capped: bool,
    /// (seconds, fraction of downloading nodes completed)
    pub curve: Vec<(f64, f64)>,
    /// Where the time goes: when the last chunk read from the registry arrived, and when 10%,
    /// 50%, 90% and all of the chunk copies sent between nodes had arrived (seconds).
    pub registry_last_s: f64,
    pub peer_copies_s: [f64; 4],
    /// 503 answers a node got: the median node, and the mean of the slowest 1% to complete.
    pub busy_per_node: [f64; 2],
    /// The first blob's chunks, one line each: what kept the last ones late.
    pub chunks: Vec<ChunkLine>,
    pub invariant_errors: Vec<String>,
}

/// One chunk of the first blob: its registry read (when, by which node), the long polls for it
/// that ended "not yet" (the asked node neither had nor received it for the whole long poll),
/// and when its copies between nodes arrived.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChunkLine {
    pub index: u64,
    /// Registry reads of it that completed, and the node of the last one.
    pub reads: u32,
    pub reader: Option<u32>,
    /// The last registry read: request sent, last byte in (seconds).
    pub read_s: [f64; 2],
    pub polls_timed_out: u32,
    pub first_poll_timeout_s: Option<f64>,
    pub copies: usize,
    /// Arrival of its copies between nodes: 10%, 50%, 90%, all (seconds).
    pub copies_s: [f64; 4],
}

/// The rendezvous and tiebreak hashes of one blob, computed once per (node, chunk) with the
/// real functions ([`crate::transfer::score`], [`crate::transfer::plan::tiebreak`]).
struct Table {
    key: String,
    chunks: u64,
    score: Vec<AtomicU64>,
    tie: Vec<AtomicU64>,
}

fn node_of(id: &str) -> Option<usize> {
    id.strip_prefix('n')?.parse().ok()
}

pub fn node_id(n: usize) -> String {
    format!("n{n:06}")
}

impl Table {
    fn new(key: String, chunks: u64, nodes: usize) -> Table {
        let len = chunks as usize * nodes;
        Table {
            key,
            chunks,
            score: (0..len).map(|_| AtomicU64::new(0)).collect(),
            tie: (0..len).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn memo(&self, slot: Option<&AtomicU64>, f: impl FnOnce() -> u64) -> u64 {
        let Some(slot) = slot else { return f() };
        let v = slot.load(Ordering::Relaxed);
        if v != 0 {
            return v;
        }
        // 0 marks "not computed": a real 0 is stored as 1 (one in 2^64, and only an order).
        let v = f().max(1);
        slot.store(v, Ordering::Relaxed);
        v
    }

    fn slot<'a>(&self, v: &'a [AtomicU64], id: &str, index: u64) -> Option<&'a AtomicU64> {
        let n = node_of(id)?;
        (index < self.chunks).then(|| v.get(n * self.chunks as usize + index as usize)).flatten()
    }
}

impl Hashes for Table {
    fn score(&self, key: &str, index: u64, id: &str) -> u64 {
        let slot = if key == self.key { self.slot(&self.score, id, index) } else { None };
        self.memo(slot, || crate::transfer::score(key, index, id))
    }
    fn tiebreak(&self, id: &str, index: u64) -> u64 {
        self.memo(self.slot(&self.tie, id, index), || crate::transfer::plan::tiebreak(id, index))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reply {
    Got,
    Pending(u64),
    NotThere,
    Busy,
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Start { n: u32, b: u16 },
    Gathered { n: u32, b: u16 },
    Tick { n: u32, b: u16 },
    RefreshDone { n: u32, b: u16 },
    Arrive { r: u32 },
    PollTimeout { r: u32 },
    Reply { r: u32, reply: Reply },
    Flow { id: u32, version: u32 },
    Kill,
    Linger { n: u32, b: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DlState {
    Idle,
    Running,
    Done,
    Removed,
    Failed,
}

/// (id, node) of peers.
type Peers = Vec<(String, u32)>;
/// A DHT node storing a swarm key, and the providers that reached it: (time µs, node).
type Store = (u32, Vec<(u64, u32)>);

struct Dl {
    plan: Planner<u32>,
    state: DlState,
    /// The refresh in progress: peers found, peers to ask.
    /// A refresh under way: the swarm key's providers, the peers asked.
    refresh: Option<(Peers, Peers)>,
    /// Bytes of chunks received (each chunk once).
    got: u64,
    /// The first refresh ended: the refresh interval is running.
    ticking: bool,
    /// Announced in its groups (after a lookup came back full).
    grouped: bool,
    upstream_done: f64,
    /// chunk → the request reading it from the registry
    upstream: BTreeMap<u64, u32>,
    /// chunk → requests waiting for it here (long polls)
    waiters: BTreeMap<u64, Vec<u32>>,
    /// Chunks arriving from a peer now (their bytes flow): announced like upstream reads.
    receiving: Bits,
    /// chunk → requests served here by cut-through while it arrives.
    forwards: BTreeMap<u64, Vec<u32>>,
    /// chunk → the request asking a peer for it.
    asked: BTreeMap<u64, u32>,
    done_at: Option<u64>,
}

struct Node {
    alive: bool,
    failed: bool,
    seed: bool,
    uploads: usize,
    started: u64,
    next_blob: usize,
    dls: Vec<Dl>,
    peer_bytes: u64,
    upstream_bytes: u64,
    /// 503 answers it got.
    busy: u32,
}

struct Req {
    from: u32,
    to: u32,
    b: u16,
    index: u64,
    sent: u64,
    live: bool,
    waiting: bool,
    flow: Option<u32>,
    /// Served by cut-through: done only once the sender has the whole chunk.
    fwd: bool,
    /// Its bytes were sent; the reply waits for the sender's own copy to complete.
    tail: bool,
}

struct Sim {
    p: Params,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    net: Net,
    nodes: Vec<Node>,
    ids: Vec<String>,
    reqs: Vec<Req>,
    free_reqs: Vec<u32>,
    rng: Rng,
    /// Per blob, as peerd chooses it ([`SwarmConfig::chunk_size_for`]).
    chunk_sizes: Vec<u64>,
    /// Per blob: the DHT nodes storing its swarm key's providers, each with its providers in
    /// arrival order (time µs, node).
    stores: Vec<Vec<Store>>,
    /// The same for the group keys ([`keys::swarm_group_key`]), by (blob, level, group), made
    /// when first announced. Their k storing nodes are drawn at random (seeded by the key), not
    /// by XOR distance: which nodes store a key matters here only for which of them die, and
    /// sorting 10,000 nodes for each of ~5,000 keys per blob would dominate the run.
    group_stores: HashMap<(u16, u32, u64), Vec<Store>>,
    /// Each node's group at each level (index 0 unused).
    groups: Vec<Vec<u64>>,
    /// The key strings per blob (for seeding the group keys' stores).
    keys: Vec<String>,
    /// Per blob: providers in announce order (for `Found::Random`).
    providers: Vec<Vec<u32>>,
    dht_rounds: u64,
    /// Downloading nodes still alive and not done.
    open: usize,
    rep: Report,
    completion_times: Vec<f64>,
    /// When each chunk copy sent between nodes arrived (seconds).
    peer_copy_times: Vec<f64>,
    /// The first blob's chunks (the report's `chunks`), with their copies' arrival times.
    chunk_lines: Vec<(ChunkLine, Vec<f64>)>,
}

/// Node `n`'s provider record reaches each of `stores` at `base` plus up to `rtt` (from
/// [`Sim::arrival`]); each store keeps its records in arrival order.
fn store_record(rng: &mut Rng, stores: &mut [Store], (base, rtt): (u64, u64), n: u32) {
    for (_, list) in stores.iter_mut() {
        let at = base + rng.below(rtt);
        let pos = list.partition_point(|(t, _)| *t <= at);
        // libp2p-kad ignores a provider once a key has its 20 and nothing here removes one, so
        // the records past the first 20 by arrival are never returned: not kept (at 10,000
        // nodes, inserting into lists of 10,000 was most of the run time).
        if pos < MAX_PROVIDERS {
            list.insert(pos, (at, n));
            list.truncate(MAX_PROVIDERS);
        }
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Kademlia lookup rounds in a network of `n` nodes (α = 3, k = 20): about log2(n)/3, at least 1.
pub fn lookup_rounds(n: usize) -> u64 {
    ((n.max(2) as f64).log2() / 3.0).ceil().max(1.0) as u64
}

impl Sim {
    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    fn drain_net(&mut self) {
        for (t, id, version) in std::mem::take(&mut self.net.due) {
            self.push(t, Ev::Flow { id, version });
        }
    }

    fn half_rtt(&self, to: u32) -> u64 {
        if to == REGISTRY {
            us(self.p.registry_rtt) / 2
        } else {
            us(self.p.rtt) / 2
        }
    }

    /// The timeline of chunk `index` when blob `b` is the first (the one the report follows).
    fn chunk_line(&mut self, b: u16, index: u64) -> Option<&mut (ChunkLine, Vec<f64>)> {
        self.chunk_lines.get_mut(index as usize).filter(|_| b == 0)
    }

    fn chunk_len(&self, b: u16, i: u64) -> u64 {
        let size = self.p.blobs[b as usize];
        let c = self.chunk_sizes[b as usize];
        (size - i * c).min(c)
    }

    fn new_req(&mut self, from: u32, to: u32, b: u16, index: u64) -> u32 {
        let r =
            Req { from, to, b, index, sent: self.now, live: true, waiting: false, flow: None, fwd: false, tail: false };
        match self.free_reqs.pop() {
            Some(i) => {
                self.reqs[i as usize] = r;
                i
            }
            None => {
                self.reqs.push(r);
                (self.reqs.len() - 1) as u32
            }
        }
    }

    fn free_req(&mut self, r: u32) {
        if self.reqs[r as usize].live {
            self.reqs[r as usize].live = false;
            self.free_reqs.push(r);
        }
    }

    /// Which providers of blob `b`'s swarm key a lookup at `now` returns.
    fn found(&mut self, b: u16, me: u32) -> Vec<(String, u32)> {
        let mut out: Vec<u32> = match self.p.found {
            Found::FirstPerStore => self.first_per_store(&self.stores[b as usize]),
            Found::Random => {
                let all = &self.providers[b as usize];
                self.rng.sample(all.len(), MAX_VIEW + 1).into_iter().map(|i| all[i]).collect()
            }
        };
        out.retain(|p| *p != me);
        out.truncate(MAX_VIEW);
        out.into_iter().map(|p| (self.ids[p as usize].clone(), p)).collect()
    }

    /// As the engine: while a lookup comes back full, node `n`'s group of blob `b` one level
    /// deeper (never `n`); the deepest levels kept (`deepest_groups`), deepest first. Also how many group lookups that took.
    fn group_found(&self, b: u16, n: u32, core: usize) -> (Vec<(String, u32)>, u64) {
        let mut levels: Vec<Vec<(String, u32)>> = Vec::new();
        let mut full = core >= CUT_AT;
        let mut lookups = 0;
        for level in 1..=keys::SWARM_GROUP_LEVELS {
            if !full {
                break;
            }
            lookups += 1;
            let g = self.groups[n as usize][level as usize];
            let mut found = self.group_stores.get(&(b, level, g)).map(|s| self.first_per_store(s)).unwrap_or_default();
            found.retain(|p| *p != n);
            full = found.len() >= CUT_AT;
            levels.push(found.into_iter().map(|p| (self.ids[p as usize].clone(), p)).collect());
        }
        (deepest_groups(levels), lookups)
    }

    /// As libp2p-kad 0.49 answers: each live storing node returns the first 20 providers that
    /// reached it (by now); the union, at most [`MAX_VIEW`].
    fn first_per_store(&self, stores: &[Store]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for (s, list) in stores {
            if !self.nodes[*s as usize].alive {
                continue;
            }
            for (_, p) in list.iter().take_while(|(t, _)| *t <= self.now).take(MAX_PROVIDERS) {
                if !out.contains(p) {
                    out.push(*p);
                }
            }
            if out.len() >= MAX_VIEW {
                break;
            }
        }
        out.truncate(MAX_VIEW);
        out
    }

    /// Node `n` announces blob `b` (its records reach the storing nodes after one lookup).
    fn announce(&mut self, n: u32, b: u16) {
        let at = self.arrival();
        store_record(&mut self.rng, &mut self.stores[b as usize], at, n);
        self.providers[b as usize].push(n);
    }

    /// When a record published now reaches its storing nodes (each adds up to one RTT).
    fn arrival(&self) -> (u64, u64) {
        (self.now + self.dht_rounds * us(self.p.rtt) + us(self.p.rtt), us(self.p.rtt).max(1))
    }

    /// Node `n` announces itself in its groups of blob `b` (as the engine does after its first
    /// lookup that came back full).
    fn announce_groups(&mut self, n: u32, b: u16) {
        let at = self.arrival();
        let nodes = self.nodes.len();
        let mut group_keys = Vec::new();
        for level in 1..=keys::SWARM_GROUP_LEVELS {
            let g = self.groups[n as usize][level as usize];
            let key = &self.keys[b as usize];
            self.group_stores.entry((b, level, g)).or_insert_with(|| {
                let seed =
                    crate::transfer::plan::tiebreak(&keys::swarm_group_key(key, level, &self.ids[n as usize]), 0);
                Rng::new(seed).sample(nodes, K).into_iter().map(|s| (s as u32, Vec::new())).collect()
            });
            group_keys.push((b, level, g));
        }
        for k in group_keys {
            store_record(&mut self.rng, self.group_stores.get_mut(&k).expect("made above"), at, n);
        }
    }

    fn start(&mut self, n: u32, b: u16) {
        let node = &mut self.nodes[n as usize];
        if !node.alive {
            return;
        }
        node.dls[b as usize].state = DlState::Running;
        self.announce(n, b);
        let provide = self.dht_rounds * us(self.p.rtt) + us(self.p.rtt);
        self.push(self.now + provide + us(self.p.swarm.gather), Ev::Gathered { n, b });
    }

    fn begin_refresh(&mut self, n: u32, b: u16) {
        let now = self.now;
        let Some(r) = self.nodes[n as usize].dls[b as usize].plan.start_refresh(Duration::from_micros(now)) else {
            return;
        };
        // The swarm's key, then the node's groups while lookups come back full (as the engine).
        let (found, group, lookup_us) = if r.lookup {
            let t = (self.dht_rounds * us(self.p.rtt)).min(500_000);
            let found = self.found(b, n);
            if found.len() >= CUT_AT && !self.nodes[n as usize].dls[b as usize].grouped {
                self.nodes[n as usize].dls[b as usize].grouped = true;
                self.announce_groups(n, b);
            }
            let (group, deeper) = self.group_found(b, n, found.len());
            (found, group, t * (1 + deeper))
        } else {
            (Vec::new(), Vec::new(), 0)
        };
        let both: Vec<(String, u32)> = group.iter().chain(&found).cloned().collect();
        let ask = ask_list(r.known, &both, &self.ids[n as usize], MAX_VIEW);
        let any_dead = ask.iter().any(|(_, p)| !self.nodes[*p as usize].alive);
        let wait = if any_dead { us(self.p.connect_timeout) } else { us(self.p.rtt) };
        self.nodes[n as usize].dls[b as usize].refresh = Some((found, ask));
        self.push(now + lookup_us + wait, Ev::RefreshDone { n, b });
    }

    fn status_of(&self, p: u32, b: u16, full: bool) -> Status<u32> {
        let node = &self.nodes[p as usize];
        if !node.alive {
            return Status::Unreachable;
        }
        let dl = &node.dls[b as usize];
        match dl.state {
            DlState::Running | DlState::Done => {
                let peers = if full { Vec::new() } else { dl.plan.view() };
                if node.seed {
                    let n = dl.plan.chunks();
                    Status::Active { have: Bits::from_bools(n, (0..n).map(|_| true)), fetching: Bits::new(n), peers }
                } else {
                    let mut fetching = dl.plan.fetching().clone();
                    fetching.or_assign(&dl.receiving);
                    Status::Active { have: dl.plan.have().clone(), fetching, peers }
                }
            }
            DlState::Idle | DlState::Removed | DlState::Failed => Status::NotFound,
        }
    }

    fn refresh_done(&mut self, n: u32, b: u16) {
        let Some((found, ask)) = self.nodes[n as usize].dls[b as usize].refresh.take() else { return };
        let now = Duration::from_micros(self.now);
        let plan = &self.nodes[n as usize].dls[b as usize].plan;
        let statuses: Vec<(String, u32, Status<u32>)> = ask
            .into_iter()
            .map(|(id, p)| {
                let skip_names = !plan.reads_names_from(&id);
                (id, p, self.status_of(p, b, skip_names))
            })
            .collect();
        let mut out = Vec::new();
        self.nodes[n as usize].dls[b as usize].plan.on_refresh(now, &found, statuses, &mut out);
        self.perform(n, b, out);
    }

    fn has(&self, p: u32, b: u16, i: u64) -> bool {
        let node = &self.nodes[p as usize];
        let dl = &node.dls[b as usize];
        matches!(dl.state, DlState::Running | DlState::Done) && (node.seed || dl.plan.have().get(i))
    }

    /// Serve request `r` at its target, which has the chunk (or, `fwd`, is receiving it from a
    /// peer): a flow, or 503.
    fn serve(&mut self, r: u32, fwd: bool) {
        let (from, to, b, index) = {
            let q = &self.reqs[r as usize];
            (q.from, q.to, q.b, q.index)
        };
        if !self.nodes[from as usize].alive {
            self.free_req(r);
            return;
        }
        let h = self.half_rtt(to);
        if self.nodes[to as usize].uploads >= self.p.swarm.upload_slots {
            self.push(self.now + h, Ev::Reply { r, reply: Reply::Busy });
            return;
        }
        self.nodes[to as usize].uploads += 1;
        if fwd {
            self.rep.forwarded += 1;
            self.reqs[r as usize].fwd = true;
            self.nodes[to as usize].dls[b as usize].forwards.entry(index).or_default().push(r);
        }
        self.nodes[from as usize].dls[b as usize].receiving.set(index, true);
        let len = self.chunk_len(b, index) as f64;
        let id = self.net.start(self.now, to, from, len, u64::from(r));
        self.reqs[r as usize].flow = Some(id);
        self.drain_net();
        // Long polls waiting at the receiver for this chunk: passed on while it arrives.
        if self.p.swarm.cut_through {
            self.serve_waiters(from, b, index, true);
        }
    }

    /// Answer the long polls waiting at node `n` for chunk `index` of blob `b`: it has the chunk,
    /// or (`fwd`) it started receiving it and passes it on.
    fn serve_waiters(&mut self, n: u32, b: u16, index: u64, fwd: bool) {
        if let Some(w) = self.nodes[n as usize].dls[b as usize].waiters.remove(&index) {
            for x in w {
                if self.reqs[x as usize].live && self.reqs[x as usize].waiting {
                    self.reqs[x as usize].waiting = false;
                    self.serve(x, fwd);
                }
            }
        }
    }

    fn arrive(&mut self, r: u32) {
        let (to, b, index) = {
            let q = &self.reqs[r as usize];
            (q.to, q.b, q.index)
        };
        if !self.nodes[to as usize].alive {
            let t = self.reqs[r as usize].sent + us(self.p.connect_timeout);
            self.push(t.max(self.now), Ev::Reply { r, reply: Reply::Dead });
            return;
        }
        let h = self.half_rtt(to);
        let dl = &self.nodes[to as usize].dls[b as usize];
        if !matches!(dl.state, DlState::Running | DlState::Done) {
            self.push(self.now + h, Ev::Reply { r, reply: Reply::NotThere });
            return;
        }
        if self.has(to, b, index) {
            self.serve(r, false);
        } else if self.p.swarm.cut_through && (dl.receiving.get(index) || dl.upstream.contains_key(&index)) {
            self.serve(r, true);
        } else {
            self.reqs[r as usize].waiting = true;
            self.nodes[to as usize].dls[b as usize].waiters.entry(index).or_default().push(r);
            self.push(self.now + LONG_POLL, Ev::PollTimeout { r });
        }
    }

    fn progress(&self, n: u32, b: u16) -> u64 {
        let dl = &self.nodes[n as usize].dls[b as usize];
        let mut p = dl.upstream_done;
        for r in dl.upstream.values() {
            if let Some(f) = self.reqs[*r as usize].flow {
                p += self.net.moved(f, self.now);
            }
        }
        p as u64
    }

    fn poll_timeout(&mut self, r: u32) {
        let q = &self.reqs[r as usize];
        if !q.live || !q.waiting {
            return;
        }
        let (to, b, index) = (q.to, q.b, q.index);
        self.reqs[r as usize].waiting = false;
        let t = self.now as f64 / 1e6;
        if let Some((line, _)) = self.chunk_line(b, index) {
            line.polls_timed_out += 1;
            line.first_poll_timeout_s.get_or_insert(t);
        }
        if let Some(w) = self.nodes[to as usize].dls[b as usize].waiters.get_mut(&index) {
            w.retain(|x| *x != r);
        }
        let progress = self.progress(to, b);
        let h = self.half_rtt(to);
        self.push(self.now + h, Ev::Reply { r, reply: Reply::Pending(progress) });
    }

    fn flow_done(&mut self, id: u32, version: u32) {
        let ended = self.net.fire(id, version, self.now);
        self.drain_net();
        for f in ended {
            let r = f.tag as u32;
            let q = &self.reqs[r as usize];
            if !q.live {
                continue;
            }
            let (from, to, b, index, fwd) = (q.from, q.to, q.b, q.index, q.fwd);
            self.reqs[r as usize].flow = None;
            if to == REGISTRY {
                self.nodes[from as usize].dls[b as usize].upstream_done += f.len;
            } else {
                self.nodes[to as usize].uploads -= 1;
            }
            if fwd && !self.has(to, b, index) {
                // Sent as fast as it arrived: the last bytes follow the sender's own copy.
                self.reqs[r as usize].tail = true;
                continue;
            }
            let h = self.half_rtt(to);
            self.push(self.now + h, Ev::Reply { r, reply: Reply::Got });
        }
    }

    fn reply(&mut self, r: u32, reply: Reply) {
        let q = &self.reqs[r as usize];
        if !q.live {
            return;
        }
        let (from, to, b, index, sent) = (q.from, q.to, q.b, q.index, q.sent);
        self.free_req(r);
        let asked = &mut self.nodes[from as usize].dls[b as usize].asked;
        if asked.get(&index) == Some(&r) {
            asked.remove(&index);
        }
        if !self.nodes[from as usize].alive {
            return;
        }
        let forwards = self.nodes[from as usize].dls[b as usize].forwards.remove(&index);
        if self.nodes[from as usize].dls[b as usize].state != DlState::Running {
            if let Some(fw) = forwards {
                self.forwarded_end(from, fw, false);
            }
            return;
        }
        let source = if to == REGISTRY { Source::Upstream } else { Source::Peer(self.ids[to as usize].clone()) };
        if to == REGISTRY {
            self.nodes[from as usize].dls[b as usize].upstream.remove(&index);
        } else {
            self.nodes[from as usize].dls[b as usize].receiving.set(index, false);
        }
        let outcome = match reply {
            Reply::Got => ChunkOutcome::Got,
            Reply::Pending(p) => {
                self.rep.pending += 1;
                ChunkOutcome::Pending { progress: Some(p), took: Duration::from_micros(self.now - sent) }
            }
            Reply::NotThere => ChunkOutcome::NotThere,
            Reply::Busy => {
                self.rep.busy += 1;
                self.nodes[from as usize].busy += 1;
                ChunkOutcome::Busy
            }
            Reply::Dead => ChunkOutcome::Dead,
        };
        if outcome == ChunkOutcome::Got {
            let len = self.chunk_len(b, index);
            let dl = &mut self.nodes[from as usize].dls[b as usize];
            if dl.plan.have().get(index) {
                self.rep.invariant_errors.push(format!("node {from} blob {b}: chunk {index} delivered twice"));
            }
            dl.got += len;
            let t = self.now as f64 / 1e6;
            if to == REGISTRY {
                self.nodes[from as usize].upstream_bytes += len;
                self.rep.registry_last_s = t;
                if let Some((line, _)) = self.chunk_line(b, index) {
                    line.reads += 1;
                    line.reader = Some(from);
                    line.read_s = [sent as f64 / 1e6, t];
                }
            } else {
                self.nodes[from as usize].peer_bytes += len;
                self.peer_copy_times.push(t);
                if let Some((_, copies)) = self.chunk_line(b, index) {
                    copies.push(t);
                }
            }
        }
        let mut out = Vec::new();
        let now = Duration::from_micros(self.now);
        self.nodes[from as usize].dls[b as usize].plan.on_chunk(now, index, source, outcome, &mut out);
        if let Some(fw) = forwards {
            self.forwarded_end(from, fw, outcome == ChunkOutcome::Got);
        }
        if outcome == ChunkOutcome::Got {
            // Long polls waiting here for this chunk are answered.
            self.serve_waiters(from, b, index, false);
        }
        self.perform(from, b, out);
    }

    /// Node `n`'s own transfer of a chunk it passed on while it arrived (requests `fw`) ended:
    /// complete, the transfers whose bytes were all sent are answered; failed, every one of
    /// them is cut (the asker sees a 503-like failure and asks elsewhere).
    fn forwarded_end(&mut self, n: u32, fw: Vec<u32>, got: bool) {
        let h = self.half_rtt(n);
        for x in fw {
            let q = &self.reqs[x as usize];
            if !q.live || !q.fwd || q.to != n {
                continue;
            }
            if got {
                self.reqs[x as usize].fwd = false;
                if self.reqs[x as usize].tail {
                    self.reqs[x as usize].tail = false;
                    self.push(self.now + h, Ev::Reply { r: x, reply: Reply::Got });
                }
                continue;
            }
            if let Some(f) = self.reqs[x as usize].flow.take() {
                if self.net.end(f, self.now).is_some() {
                    self.nodes[n as usize].uploads -= 1;
                }
            }
            self.reqs[x as usize].tail = false;
            self.push(self.now + h, Ev::Reply { r: x, reply: Reply::Busy });
        }
        self.drain_net();
    }

    /// Do what node `n`'s planner decided for blob `b`, then let it schedule.
    fn perform(&mut self, n: u32, b: u16, mut out: Vec<Action<u32>>) {
        for _ in 0..8 {
            let mut again = false;
            for a in std::mem::take(&mut out) {
                match a {
                    Action::FetchPeer { index, addr, .. } => {
                        let r = self.new_req(n, addr, b, index);
                        self.nodes[n as usize].dls[b as usize].asked.insert(index, r);
                        let h = self.half_rtt(addr);
                        self.push(self.now + h, Ev::Arrive { r });
                    }
                    Action::FetchUpstream { index } => {
                        let r = self.new_req(n, REGISTRY, b, index);
                        let len = self.chunk_len(b, index) as f64;
                        let id = self.net.start(self.now, REGISTRY, n, len, u64::from(r));
                        self.drain_net();
                        self.reqs[r as usize].flow = Some(id);
                        self.nodes[n as usize].dls[b as usize].upstream.insert(index, r);
                        if self.p.swarm.cut_through {
                            self.serve_waiters(n, b, index, true);
                        }
                    }
                    Action::AbortUpstream { index } => {
                        let Some(r) = self.nodes[n as usize].dls[b as usize].upstream.remove(&index) else {
                            continue;
                        };
                        self.rep.abandoned += 1;
                        if let Some(fw) = self.nodes[n as usize].dls[b as usize].forwards.remove(&index) {
                            self.forwarded_end(n, fw, false);
                        }
                        if let Some(f) = self.reqs[r as usize].flow.take() {
                            let moved = self.net.moved(f, self.now);
                            self.net.end(f, self.now);
                            self.drain_net();
                            self.nodes[n as usize].dls[b as usize].upstream_done += moved;
                        }
                        self.free_req(r);
                        let now = Duration::from_micros(self.now);
                        let plan = &mut self.nodes[n as usize].dls[b as usize].plan;
                        plan.on_chunk(now, index, Source::Upstream, ChunkOutcome::Abandoned, &mut out);
                        again = true;
                    }
                    Action::AbortPeer { index, peer } => {
                        // Modelled while the request waits at the peer (a long poll); once its
                        // bytes flow (or before it got there) it ends as it would have.
                        let Some(r) = self.nodes[n as usize].dls[b as usize].asked.get(&index).copied() else {
                            continue;
                        };
                        let q = &self.reqs[r as usize];
                        if !q.live || !q.waiting {
                            continue;
                        }
                        let to = q.to;
                        self.nodes[n as usize].dls[b as usize].asked.remove(&index);
                        if let Some(w) = self.nodes[to as usize].dls[b as usize].waiters.get_mut(&index) {
                            w.retain(|x| *x != r);
                        }
                        // Not reused: its long poll's timeout is still queued.
                        self.reqs[r as usize].waiting = false;
                        self.reqs[r as usize].live = false;
                        self.rep.peer_asks_given_up += 1;
                        let now = Duration::from_micros(self.now);
                        let plan = &mut self.nodes[n as usize].dls[b as usize].plan;
                        plan.on_chunk(now, index, Source::Peer(peer), ChunkOutcome::Abandoned, &mut out);
                        again = true;
                    }
                    Action::TookOver { .. } => self.rep.takeovers += 1,
                    Action::PeerLost { .. } => self.rep.peers_lost += 1,
                    Action::Complete => self.complete(n, b),
                    // Only on-demand transfers (/blobs) fail a chunk alone.
                    Action::ChunkFailed { .. } => {}
                    Action::Failed(_) => {
                        self.nodes[n as usize].dls[b as usize].state = DlState::Failed;
                        if !self.nodes[n as usize].failed {
                            self.nodes[n as usize].failed = true;
                            self.rep.failed += 1;
                            self.open -= 1;
                        }
                    }
                }
            }
            let dl = &mut self.nodes[n as usize].dls[b as usize];
            if dl.state != DlState::Running {
                return;
            }
            dl.plan.schedule(Duration::from_micros(self.now), &mut out);
            if out.is_empty() && !again {
                return;
            }
        }
    }

    fn complete(&mut self, n: u32, b: u16) {
        let size = self.p.blobs[b as usize];
        let node = &mut self.nodes[n as usize];
        let dl = &mut node.dls[b as usize];
        dl.state = DlState::Done;
        dl.done_at = Some(self.now);
        if dl.got != size || !dl.plan.have().all() {
            let e = format!("node {n} blob {b}: completed with {} of {size} bytes", dl.got);
            self.rep.invariant_errors.push(e);
        }
        let linger = self.now + us(self.p.swarm.linger);
        // The next layer, or the image is pulled.
        if node.next_blob < self.p.blobs.len() {
            let nb = node.next_blob as u16;
            node.next_blob += 1;
            self.push(self.now, Ev::Start { n, b: nb });
        } else if node.dls.iter().all(|d| d.done_at.is_some()) {
            self.completion_times.push((self.now - node.started) as f64 / 1e6);
            self.rep.completed += 1;
            if !node.failed {
                self.open -= 1;
            }
        }
        self.push(linger, Ev::Linger { n, b });
    }

    fn kill(&mut self) {
        let Some((frac, _)) = self.p.kill else { return };
        let candidates: Vec<usize> =
            (0..self.nodes.len()).filter(|n| !self.nodes[*n].seed && self.nodes[*n].alive).collect();
        let k = (candidates.len() as f64 * frac).round() as usize;
        let picks = self.rng.sample(candidates.len(), k);
        let idle = us(self.p.idle_timeout);
        for pi in picks {
            let n = candidates[pi] as u32;
            self.nodes[n as usize].alive = false;
            self.rep.killed += 1;
            let node = &self.nodes[n as usize];
            if !node.failed && node.dls.iter().any(|d| d.done_at.is_none()) {
                self.open -= 1;
            }
            // Transfers to it stop; transfers from it stall until the receiver's idle timeout.
            for f in self.net.flows_of(n) {
                let Some(flow) = self.net.end(f, self.now) else { continue };
                let r = flow.tag as u32;
                if flow.src == n {
                    self.reqs[r as usize].flow = None;
                    self.push(self.now + idle, Ev::Reply { r, reply: Reply::Dead });
                } else {
                    if flow.src != REGISTRY {
                        self.nodes[flow.src as usize].uploads -= 1;
                    }
                    self.free_req(r);
                }
            }
            self.drain_net();
            // Its registry reads end with it.
            let ups: Vec<u32> = self.nodes[n as usize]
                .dls
                .iter_mut()
                .flat_map(|d| std::mem::take(&mut d.upstream).into_values())
                .collect();
            {
                for r in ups {
                    if let Some(f) = self.reqs[r as usize].flow.take() {
                        self.net.end(f, self.now);
                    }
                    self.free_req(r);
                }
            }
            self.drain_net();
            // Long polls held by it, and transfers it passed on and sent all of, stall too (it
            // never answers them).
            let held: Vec<u32> = self.nodes[n as usize]
                .dls
                .iter_mut()
                .flat_map(|d| {
                    let (w, f) = (std::mem::take(&mut d.waiters), std::mem::take(&mut d.forwards));
                    w.into_values().chain(f.into_values()).flatten()
                })
                .collect();
            for r in held {
                let q = &mut self.reqs[r as usize];
                if q.live && (q.waiting || q.tail) {
                    (q.waiting, q.tail) = (false, false);
                    self.push(self.now + idle, Ev::Reply { r, reply: Reply::Dead });
                }
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start { n, b } => self.start(n, b),
            Ev::Gathered { n, b } => {
                if self.nodes[n as usize].alive {
                    self.begin_refresh(n, b);
                }
            }
            Ev::Tick { n, b } => {
                let node = &self.nodes[n as usize];
                if node.alive && node.dls[b as usize].state == DlState::Running {
                    self.begin_refresh(n, b);
                    self.push(self.now + us(self.p.swarm.refresh), Ev::Tick { n, b });
                    self.perform(n, b, Vec::new());
                }
            }
            Ev::RefreshDone { n, b } => {
                let node = &self.nodes[n as usize];
                if node.alive && node.dls[b as usize].state == DlState::Running {
                    self.refresh_done(n, b);
                    // After the first refresh the engine's interval ticks at once, then every `refresh`.
                    let dl = &mut self.nodes[n as usize].dls[b as usize];
                    if !dl.ticking {
                        dl.ticking = true;
                        self.push(self.now, Ev::Tick { n, b });
                    }
                }
            }
            Ev::Arrive { r } => {
                if self.reqs[r as usize].live {
                    self.arrive(r);
                }
            }
            Ev::PollTimeout { r } => self.poll_timeout(r),
            Ev::Reply { r, reply } => self.reply(r, reply),
            Ev::Flow { id, version } => self.flow_done(id, version),
            Ev::Kill => self.kill(),
            Ev::Linger { n, b } => {
                let seed = self.nodes[n as usize].seed;
                let dl = &mut self.nodes[n as usize].dls[b as usize];
                if dl.state == DlState::Done && !seed {
                    dl.state = DlState::Removed;
                }
            }
        }
    }
}

/// Run one rollout.
pub fn run(p: Params) -> Report {
    let wall = Instant::now();
    let chunk_sizes: Vec<u64> = p.blobs.iter().map(|s| p.swarm.chunk_size_for(*s)).collect();
    let chunks: Vec<u64> = p.blobs.iter().zip(&chunk_sizes).map(|(s, c)| s.div_ceil(*c)).collect();
    let ids: Vec<String> = (0..p.nodes).map(node_id).collect();
    let keys: Vec<String> = (0..p.blobs.len()).map(|b| format!("sha256:{:064x}", p.seed * 1000 + b as u64)).collect();
    let tables: Vec<Arc<Table>> =
        keys.iter().zip(&chunks).map(|(k, c)| Arc::new(Table::new(k.clone(), *c, p.nodes))).collect();
    let cfg = PlanConfig::from(&p.swarm);
    let mut rng = Rng::new(p.seed);
    let nodes: Vec<Node> = (0..p.nodes)
        .map(|n| Node {
            alive: true,
            failed: false,
            seed: n < p.seeds,
            uploads: 0,
            started: 0,
            next_blob: 0,
            peer_bytes: 0,
            upstream_bytes: 0,
            busy: 0,
            dls: (0..p.blobs.len())
                .map(|b| Dl {
                    plan: Planner::with_hashes(
                        keys[b].clone(),
                        ids[n].clone(),
                        chunks[b],
                        cfg.clone(),
                        tables[b].clone() as Arc<dyn Hashes>,
                    ),
                    state: DlState::Idle,
                    refresh: None,
                    got: 0,
                    ticking: false,
                    grouped: false,
                    upstream_done: 0.0,
                    upstream: BTreeMap::new(),
                    waiters: BTreeMap::new(),
                    receiving: Bits::new(chunks[b]),
                    forwards: BTreeMap::new(),
                    asked: BTreeMap::new(),
                    done_at: None,
                })
                .collect(),
        })
        .collect();
    // The k nodes closest to each swarm key store its provider records (libp2p's XOR metric).
    let node_keys: Vec<KBucketKey<Vec<u8>>> = ids.iter().map(|id| KBucketKey::new(id.as_bytes().to_vec())).collect();
    let stores_of = |key: String| -> Vec<Store> {
        let key = KBucketKey::new(key.into_bytes());
        let mut order: Vec<u32> = (0..p.nodes as u32).collect();
        order.sort_by_key(|n| key.distance(&node_keys[*n as usize]));
        order.truncate(K);
        order.into_iter().map(|s| (s, Vec::new())).collect()
    };
    let stores = keys.iter().map(|k| stores_of(keys::swarm_key(k))).collect();
    let groups =
        ids.iter().map(|id| (0..=keys::SWARM_GROUP_LEVELS).map(|l| keys::tree_shard(id, l)).collect()).collect();
    let dht_rounds = lookup_rounds(p.nodes);
    let net = Net::new(vec![p.node_up; p.nodes], vec![p.node_down; p.nodes], p.registry);
    let size: u64 = p.blobs.iter().sum();
    let u = p.node_up;
    // Kumar & Ross: the sources (the registry and any seeds) must send F once, every node must
    // receive F, and all receivers together need (N - seeds)·F through the total upload.
    let sources = p.registry + p.seeds as f64 * u;
    let receivers = (p.nodes - p.seeds.min(p.nodes)) as f64;
    let bound = (size as f64 / sources)
        .max(size as f64 / p.node_down)
        .max(receivers * size as f64 / (sources + (p.nodes - p.seeds.min(p.nodes)) as f64 * u));
    let mut sim = Sim {
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        net,
        nodes,
        ids,
        reqs: Vec::new(),
        free_reqs: Vec::new(),
        rng: Rng::new(rng.next_u64()),
        chunk_sizes,
        stores,
        group_stores: HashMap::new(),
        groups,
        keys: keys.clone(),
        providers: vec![Vec::new(); p.blobs.len()],
        dht_rounds,
        open: 0,
        rep: Report { nodes: p.nodes, image_bytes: size, bound_s: bound, ..Report::default() },
        completion_times: Vec::new(),
        peer_copy_times: Vec::new(),
        chunk_lines: (0..chunks.first().copied().unwrap_or(0))
            .map(|index| (ChunkLine { index, ..ChunkLine::default() }, Vec::new()))
            .collect(),
        p,
    };
    // Seeds hold everything and serve it as swarm members from the start.
    for n in 0..sim.p.seeds.min(sim.p.nodes) {
        for b in 0..sim.p.blobs.len() {
            sim.nodes[n].dls[b].state = DlState::Done;
            sim.nodes[n].dls[b].done_at = Some(0);
            sim.announce(n as u32, b as u16);
        }
    }
    let spread = us(sim.p.start_spread).max(1);
    for n in sim.p.seeds..sim.p.nodes {
        let t = rng.below(spread);
        sim.nodes[n].started = t;
        let first = sim.p.blob_parallel.min(sim.p.blobs.len());
        sim.nodes[n].next_blob = first;
        for b in 0..first {
            sim.push(t, Ev::Start { n: n as u32, b: b as u16 });
        }
    }
    sim.rep.downloading = sim.p.nodes - sim.p.seeds.min(sim.p.nodes);
    sim.open = sim.rep.downloading;
    if let Some((_, at)) = sim.p.kill {
        sim.push(us(at), Ev::Kill);
    }
    let max_sim = us(sim.p.max_sim);
    let max_wall = sim.p.max_wall;
    let mut next_sample = 0u64;
    while let Some(Reverse((t, _, ev))) = sim.queue.pop() {
        if t > max_sim {
            sim.rep.capped = true;
            break;
        }
        sim.now = t;
        sim.rep.events += 1;
        if sim.rep.events.is_multiple_of(65_536) && wall.elapsed() > max_wall {
            sim.rep.capped = true;
            break;
        }
        while t >= next_sample {
            let frac = sim.rep.completed as f64 / sim.rep.downloading.max(1) as f64;
            sim.rep.curve.push((next_sample as f64 / 1e6, frac));
            next_sample += 500_000;
        }
        sim.handle(ev);
        if sim.open == 0 {
            break;
        }
    }
    finish(sim, wall)
}

fn finish(mut sim: Sim, wall: Instant) -> Report {
    let f = sim.rep.image_bytes as f64;
    let mut r = std::mem::take(&mut sim.rep);
    r.sim_s = sim.now as f64 / 1e6;
    r.wall_s = wall.elapsed().as_secs_f64();
    let live_left =
        sim.nodes.iter().filter(|n| n.alive && !n.seed && n.dls.iter().any(|d| d.done_at.is_none())).count();
    if live_left > 0 {
        r.capped = true;
    }
    r.curve.push((r.sim_s, r.completed as f64 / r.downloading.max(1) as f64));
    let mut t = sim.completion_times.clone();
    r.p50_s = percentile(&mut t, 50.0);
    r.p99_s = percentile(&mut t, 99.0);
    r.slowest_s = t.iter().copied().fold(0.0, f64::max);
    if r.capped {
        r.slowest_s = r.sim_s;
    }
    r.slowest_over_bound = r.slowest_s / r.bound_s;
    let mut copies = std::mem::take(&mut sim.peer_copy_times);
    r.peer_copies_s = [10.0, 50.0, 90.0, 100.0].map(|q| percentile(&mut copies, q));
    r.registry_egress_over_f = sim.net.registry_bytes / f;
    let mut up: Vec<f64> = sim.net.sent.iter().map(|s| s / f).collect();
    r.upload_max_over_f = up.iter().copied().fold(0.0, f64::max);
    r.upload_median_over_f = percentile(&mut up, 50.0);
    // Who the slowest nodes are: 503s per node, the median node against the slowest 1%.
    let mut by_time: Vec<(u64, u32)> = sim
        .nodes
        .iter()
        .filter(|n| !n.seed && n.dls.iter().all(|d| d.done_at.is_some()))
        .map(|n| (n.dls.iter().filter_map(|d| d.done_at).max().unwrap_or(0), n.busy))
        .collect();
    by_time.sort_unstable();
    let mut busy: Vec<f64> = by_time.iter().map(|(_, b)| f64::from(*b)).collect();
    let tail = &busy[busy.len() - (busy.len() / 100).max(1).min(busy.len())..];
    let tail_mean = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    r.busy_per_node = [percentile(&mut busy, 50.0), tail_mean];
    let views: Vec<usize> = sim.nodes.iter().filter(|n| !n.seed).map(|n| n.dls[0].plan.view().len()).collect();
    r.view_mean = views.iter().sum::<usize>() as f64 / views.len().max(1) as f64;
    r.chunks = std::mem::take(&mut sim.chunk_lines)
        .into_iter()
        .map(|(mut line, mut copies)| {
            line.copies = copies.len();
            line.copies_s = [10.0, 50.0, 90.0, 100.0].map(|q| percentile(&mut copies, q));
            line
        })
        .collect();
    // Every node that completed has every byte once; the registry sent at least the image.
    if r.completed > 0 && sim.net.registry_bytes < f * 0.999 && sim.p.seeds == 0 {
        r.invariant_errors.push(format!("registry sent {} bytes, less than the image ({f})", sim.net.registry_bytes));
    }
    for (n, node) in sim.nodes.iter().enumerate() {
        if node.seed {
            continue;
        }
        let done = node.dls.iter().all(|d| d.done_at.is_some());
        let got: u64 = node.dls.iter().map(|d| d.got).sum();
        if done && got != sim.rep.image_bytes.max(r.image_bytes) {
            r.invariant_errors.push(format!("node {n} completed with {got} bytes"));
        }
        if done && node.peer_bytes + node.upstream_bytes != got {
            r.invariant_errors
                .push(format!("node {n}: {} + {} bytes received, {got} kept", node.peer_bytes, node.upstream_bytes));
        }
    }
    // Every node that has the first blob got each of its chunks once: from the registry or a peer.
    let holders = sim.nodes.iter().filter(|n| !n.seed && n.dls[0].done_at.is_some()).count();
    if r.killed == 0 {
        for c in r.chunks.iter().filter(|c| c.copies + c.reads as usize != holders) {
            r.invariant_errors.push(format!(
                "chunk {}: {} copies + {} registry reads, {holders} nodes have it",
                c.index, c.copies, c.reads
            ));
        }
    }
    r.invariant_errors.truncate(20);
    r
}
