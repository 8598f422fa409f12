//! A model of peerd's Kademlia DHT (libp2p-kad 0.49, k = 20, α = 3) at 100–10,000 nodes.
//!
//! Real: the keys and the XOR metric (libp2p's [`KBucketKey`], SHA-256 of the id or record
//! key), the bucket structure (bucket i of a node holds up to k nodes at distance [2^i, 2^i+1)),
//! k closest nodes store a record, at most 20 providers kept per key, provider TTL and republish
//! from the config. Modelled: the iterative lookup (α queries in flight, each answered after
//! one RTT with the queried node's k closest; a dead node's query fails after libp2p's
//! `peer_timeout` of 10 s; the lookup ends when the k closest known nodes all answered), and
//! routing tables as they are after bootstrap (each bucket filled with up to k random nodes of
//! its range). libp2p's `KBucketsTable` is private in 0.49, so the table is rebuilt here.

use super::{percentile, Rng};
use libp2p::kad::{KBucketKey, U256};
use serde::Serialize;
use std::collections::BinaryHeap;
use std::time::Duration;

const K: usize = 20;
const ALPHA: usize = 3;
/// libp2p-kad's `ClosestPeersIterConfig::peer_timeout`.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct DhtParams {
    pub nodes: usize,
    pub rtt: Duration,
    /// Keys each node provides (an image's layers and manifests).
    pub keys_per_node: usize,
    pub lookups: usize,
    pub leave: f64,
    pub provider_ttl: Duration,
    pub provider_republish: Duration,
    /// A pull's locate: how long it collects providers, how many it takes, the hedge delay and
    /// the connect timeout to a peer (config `p2p.*`).
    pub resolve_timeout: Duration,
    pub max_peers: usize,
    pub hedge_delay: Duration,
    pub connect_timeout: Duration,
    /// How often each downloading node looks up the swarm key (every third refresh).
    pub swarm_lookup_every: Duration,
    pub seed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DhtReport {
    pub nodes: usize,
    pub provide_ms_p50: f64,
    pub resolvable_ms_p50: f64,
    pub resolvable_ms_p99: f64,
    pub hops_p50: f64,
    pub hops_p99: f64,
    pub lookup_ms_p50: f64,
    pub lookup_ms_p99: f64,
    pub messages_per_lookup: f64,
    pub records_per_node_median: f64,
    pub records_per_node_max: f64,
    pub table_entries_median: f64,
    pub table_entries_max: f64,
    pub inbound_entries_max: f64,
    /// GET_PROVIDERS per second at each of the k nodes storing a swarm key, when every node
    /// downloads the same blob (all lookups of that key end at the same k nodes).
    pub swarm_key_queries_per_s: f64,
    /// After `leave` of the nodes left at once:
    pub after_lookups_touching_dead: f64,
    pub after_first_provider_ms_p50: f64,
    pub after_first_provider_ms_p99: f64,
    pub after_lookup_ms_p50: f64,
    pub after_lookup_ms_p99: f64,
    pub after_located_in_resolve_timeout: f64,
    pub stale_provider_share: f64,
    pub stale_for_median_s: f64,
    pub stale_for_max_s: f64,
    pub pull_extra_ms_mean: f64,
    pub pull_to_upstream_share: f64,
    pub wall_s: f64,
}

struct Dht {
    /// Keys (XOR-translated by one reference key: distances are unchanged).
    keys: Vec<U256>,
    /// Node indices sorted by key.
    sorted: Vec<u32>,
    tables: Vec<Vec<u32>>,
    rtt: u64,
}

fn key_of(bytes: &[u8], reference: &KBucketKey<Vec<u8>>) -> U256 {
    KBucketKey::new(bytes.to_vec()).distance(reference).0
}

impl Dht {
    fn build(n: usize, rng: &mut Rng, rtt: Duration) -> Dht {
        let reference = KBucketKey::new(b"reference".to_vec());
        let keys: Vec<U256> = (0..n).map(|i| key_of(super::rollout::node_id(i).as_bytes(), &reference)).collect();
        let mut sorted: Vec<u32> = (0..n as u32).collect();
        sorted.sort_by_key(|i| keys[*i as usize]);
        let mut d = Dht { keys, sorted, tables: Vec::new(), rtt: rtt.as_micros() as u64 };
        // Bucket i of node a: the nodes whose key agrees with a's above bit i and differs at
        // bit i — one contiguous range of the sorted keys. Up to k random ones each.
        let mut tables = Vec::with_capacity(n);
        for a in 0..n {
            let mut t = Vec::new();
            let ka = d.keys[a];
            for i in (0..256u32).rev() {
                let flipped = ka ^ (U256::one() << i);
                let low_mask = if i == 0 { U256::zero() } else { (U256::one() << i) - U256::one() };
                let lo = flipped & !low_mask;
                let hi = flipped | low_mask;
                let (s, e) = d.range(lo, hi);
                if e > s {
                    for j in rng.sample(e - s, K) {
                        t.push(d.sorted[s + j]);
                    }
                }
                // Buckets far below log2(n) are empty: stop once the rest would be.
                if e - s == 0 && i + 8 < 256 - (n as f64).log2() as u32 {
                    break;
                }
            }
            tables.push(t);
        }
        d.tables = tables;
        d
    }

    /// Indices into `sorted` of the keys in [lo, hi].
    fn range(&self, lo: U256, hi: U256) -> (usize, usize) {
        let s = self.sorted.partition_point(|x| self.keys[*x as usize] < lo);
        let e = self.sorted.partition_point(|x| self.keys[*x as usize] <= hi);
        (s, e)
    }

    /// The k nodes closest to `target` (alive or not), by scanning around its place in key order.
    fn closest(&self, target: U256, k: usize) -> Vec<u32> {
        let pos = self.sorted.partition_point(|x| self.keys[*x as usize] < target);
        let lo = pos.saturating_sub(4 * k);
        let hi = (pos + 4 * k).min(self.sorted.len());
        let mut c: Vec<u32> = self.sorted[lo..hi].to_vec();
        c.sort_by_key(|x| self.keys[*x as usize] ^ target);
        c.truncate(k);
        c
    }

    fn table_closest(&self, node: u32, target: U256, k: usize) -> Vec<u32> {
        let mut c = self.tables[node as usize].clone();
        c.sort_by_key(|x| self.keys[*x as usize] ^ target);
        c.truncate(k);
        c
    }

    /// An iterative lookup of `target` from `from`: (end time µs, rounds to the first node
    /// in `stores` that answered and its time, messages).
    fn lookup(&self, from: u32, target: U256, dead: &[bool], stores: &[u32]) -> Lookup {
        #[derive(Clone, Copy, PartialEq)]
        enum St {
            New,
            Waiting,
            Done,
            Failed,
        }
        let mut cands: Vec<(U256, u32, St, u32)> = self
            .table_closest(from, target, K)
            .into_iter()
            .map(|n| (self.keys[n as usize] ^ target, n, St::New, 1))
            .collect();
        let mut inflight: BinaryHeap<std::cmp::Reverse<(u64, u32)>> = BinaryHeap::new();
        let mut now = 0u64;
        let mut msgs = 0;
        let mut first: Option<(u64, u32)> = None;
        let mut dead_touched = false;
        loop {
            cands.sort_by_key(|c| c.0);
            // Start queries to the closest new candidates among the k best live ones.
            let mut live_seen = 0;
            let waiting = cands.iter().filter(|c| c.2 == St::Waiting).count();
            let mut slots = ALPHA.saturating_sub(waiting);
            for c in cands.iter_mut() {
                if c.2 == St::Failed {
                    continue;
                }
                live_seen += 1;
                if live_seen > K {
                    break;
                }
                if c.2 == St::New && slots > 0 {
                    c.2 = St::Waiting;
                    slots -= 1;
                    msgs += 1;
                    let dead_node = dead[c.1 as usize];
                    dead_touched |= dead_node;
                    let t = now + if dead_node { PEER_TIMEOUT.as_micros() as u64 } else { self.rtt };
                    inflight.push(std::cmp::Reverse((t, c.1)));
                }
            }
            let Some(std::cmp::Reverse((t, n))) = inflight.pop() else { break };
            now = t;
            let Some(i) = cands.iter().position(|c| c.1 == n) else { continue };
            if dead[n as usize] {
                cands[i].2 = St::Failed;
                continue;
            }
            cands[i].2 = St::Done;
            let hop = cands[i].3;
            if first.is_none() && stores.contains(&n) {
                first = Some((now, hop));
            }
            for m in self.table_closest(n, target, K) {
                if m != from && !cands.iter().any(|c| c.1 == m) {
                    cands.push((self.keys[m as usize] ^ target, m, St::New, hop + 1));
                }
            }
            // Done when the k closest live candidates all answered.
            let mut seen = 0;
            let mut finished = true;
            cands.sort_by_key(|c| c.0);
            for c in &cands {
                if c.2 == St::Failed {
                    continue;
                }
                seen += 1;
                if seen > K {
                    break;
                }
                if c.2 != St::Done {
                    finished = false;
                    break;
                }
            }
            if finished {
                break;
            }
        }
        Lookup { end: now, first, msgs, dead_touched }
    }
}

struct Lookup {
    end: u64,
    first: Option<(u64, u32)>,
    msgs: u32,
    dead_touched: bool,
}

pub fn run(p: &DhtParams) -> DhtReport {
    let wall = std::time::Instant::now();
    let mut rng = Rng::new(p.seed);
    let n = p.nodes;
    let d = Dht::build(n, &mut rng, p.rtt);
    let reference = KBucketKey::new(b"reference".to_vec());
    let mut r = DhtReport { nodes: n, ..DhtReport::default() };
    let none = vec![false; n];
    // Provide → resolvable: a node provides a new key; others look it up.
    let (mut provide, mut resolvable, mut hops, mut lookup_ms, mut msgs) = (vec![], vec![], vec![], vec![], 0u64);
    for l in 0..p.lookups {
        let key = key_of(format!("sha256:{l:064x}").as_bytes(), &reference);
        let stores = d.closest(key, K);
        let owner = rng.below(n as u64) as u32;
        let pl = d.lookup(owner, key, &none, &[]);
        let stored = pl.end + d.rtt;
        provide.push(stored as f64 / 1e3);
        let from = rng.below(n as u64) as u32;
        let gl = d.lookup(from, key, &none, &stores);
        msgs += u64::from(gl.msgs);
        lookup_ms.push(gl.end as f64 / 1e3);
        let (t, h) = gl.first.unwrap_or((gl.end, 0));
        resolvable.push((stored + t) as f64 / 1e3);
        hops.push(f64::from(h));
    }
    r.provide_ms_p50 = percentile(&mut provide, 50.0);
    r.resolvable_ms_p50 = percentile(&mut resolvable, 50.0);
    r.resolvable_ms_p99 = percentile(&mut resolvable, 99.0);
    r.hops_p50 = percentile(&mut hops, 50.0);
    r.hops_p99 = percentile(&mut hops, 99.0);
    r.lookup_ms_p50 = percentile(&mut lookup_ms, 50.0);
    r.lookup_ms_p99 = percentile(&mut lookup_ms, 99.0);
    r.messages_per_lookup = msgs as f64 / p.lookups.max(1) as f64;
    // Load: every node provides `keys_per_node` keys; each is stored at its k closest nodes.
    let mut records = vec![0f64; n];
    for a in 0..n {
        for j in 0..p.keys_per_node {
            let key = key_of(format!("{a}/{j}").as_bytes(), &reference);
            for s in d.closest(key, K) {
                records[s as usize] += 1.0;
            }
        }
    }
    r.records_per_node_median = percentile(&mut records, 50.0);
    r.records_per_node_max = records.iter().copied().fold(0.0, f64::max);
    let mut entries: Vec<f64> = d.tables.iter().map(|t| t.len() as f64).collect();
    let mut inbound = vec![0f64; n];
    for t in &d.tables {
        for x in t {
            inbound[*x as usize] += 1.0;
        }
    }
    r.table_entries_median = percentile(&mut entries, 50.0);
    r.table_entries_max = entries.iter().copied().fold(0.0, f64::max);
    r.inbound_entries_max = inbound.iter().copied().fold(0.0, f64::max);
    r.swarm_key_queries_per_s = n as f64 / p.swarm_lookup_every.as_secs_f64();
    // A share of the nodes leaves at once: their routing entries and provider records stay.
    let mut dead = vec![false; n];
    for i in rng.sample(n, (n as f64 * p.leave).round() as usize) {
        dead[i] = true;
    }
    let (mut first, mut total, mut touched, mut located) = (vec![], vec![], 0, 0);
    let resolve_us = p.resolve_timeout.as_micros() as u64;
    for l in 0..p.lookups {
        let key = key_of(format!("sha256:{l:064x}").as_bytes(), &reference);
        let stores: Vec<u32> = d.closest(key, K).into_iter().filter(|s| !dead[*s as usize]).collect();
        let mut from = rng.below(n as u64) as u32;
        while dead[from as usize] {
            from = rng.below(n as u64) as u32;
        }
        let gl = d.lookup(from, key, &dead, &stores);
        touched += usize::from(gl.dead_touched);
        let t = gl.first.map_or(gl.end, |f| f.0);
        located += usize::from(gl.first.is_some_and(|f| f.0 <= resolve_us));
        first.push(t as f64 / 1e3);
        total.push(gl.end as f64 / 1e3);
    }
    r.after_lookups_touching_dead = touched as f64 / p.lookups.max(1) as f64;
    r.after_first_provider_ms_p50 = percentile(&mut first, 50.0);
    r.after_first_provider_ms_p99 = percentile(&mut first, 99.0);
    r.after_lookup_ms_p50 = percentile(&mut total, 50.0);
    r.after_lookup_ms_p99 = percentile(&mut total, 99.0);
    r.after_located_in_resolve_timeout = located as f64 / p.lookups.max(1) as f64;
    // Provider records of the nodes that left: nothing removes them, they expire `ttl` after
    // their last publication (uniform over the republish interval).
    r.stale_provider_share = p.leave;
    let (ttl, every) = (p.provider_ttl.as_secs_f64(), p.provider_republish.as_secs_f64());
    r.stale_for_max_s = ttl;
    r.stale_for_median_s = ttl - every / 2.0;
    // A pull meanwhile: `max_peers` providers located, each stale with probability `leave`;
    // the first live one is reached after a hedge delay per dead one before it; all dead:
    // the connect timeout, then the upstream.
    let q = p.leave;
    let mut extra = 0.0;
    for dead_before in 1..p.max_peers {
        extra += q.powi(dead_before as i32) * (1.0 - q) * dead_before as f64 * p.hedge_delay.as_secs_f64();
    }
    let all_dead = q.powi(p.max_peers as i32);
    extra += all_dead * p.connect_timeout.as_secs_f64();
    r.pull_extra_ms_mean = extra * 1e3;
    r.pull_to_upstream_share = all_dead;
    r.wall_s = wall.elapsed().as_secs_f64();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_the_closest_nodes_in_few_hops_and_dead_nodes_cost_time() {
        let p = DhtParams {
            nodes: 500,
            rtt: Duration::from_millis(1),
            keys_per_node: 4,
            lookups: 50,
            leave: 0.1,
            provider_ttl: Duration::from_secs(1800),
            provider_republish: Duration::from_secs(1740),
            resolve_timeout: Duration::from_millis(50),
            max_peers: 3,
            hedge_delay: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            swarm_lookup_every: Duration::from_secs(3),
            seed: 3,
        };
        let mut rng = Rng::new(1);
        let d = Dht::build(p.nodes, &mut rng, p.rtt);
        // The lookup converges on the true k closest.
        let reference = KBucketKey::new(b"reference".to_vec());
        let key = key_of(b"k", &reference);
        let truth = d.closest(key, K);
        let brute = {
            let mut all: Vec<u32> = (0..p.nodes as u32).collect();
            all.sort_by_key(|x| d.keys[*x as usize] ^ key);
            all.truncate(K);
            all
        };
        assert_eq!(truth, brute, "closest() agrees with a full sort");
        let l = d.lookup(7, key, &vec![false; p.nodes], &truth);
        let (t, hops) = l.first.expect("a storing node answered");
        assert!((1..=6).contains(&hops), "{hops} hops");
        assert!(t >= 1000 && l.end >= t);
        let r = run(&p);
        assert!(r.hops_p50 >= 1.0 && r.hops_p50 <= 5.0, "{r:?}");
        assert!((r.records_per_node_median - 4.0 * K as f64).abs() < 4.0 * K as f64, "{r:?}");
        assert!(r.after_lookups_touching_dead > 0.0 && r.after_lookup_ms_p99 >= 10_000.0, "{r:?}");
        assert!(r.after_first_provider_ms_p50 < 100.0, "a live storing node answers early: {r:?}");
    }
}
