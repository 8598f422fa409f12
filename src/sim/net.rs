//! A flow-level network: every node has an uplink and a downlink, the registry one egress link;
//! a flow's rate is its fair share at both ends, `min(up(src) / flows out of src, down(dst) /
//! flows into dst)`. When a flow starts or ends, only the flows sharing one of its two ends
//! change rate, so an event costs the flows at two nodes, not the whole network.
//!
//! This is a one-pass approximation of max-min fairness: capacity a flow leaves unused at one
//! end (because it is held back at its other end) is not handed to the other flows there, so
//! the model is slightly pessimistic where bottlenecks mix.
//!
//! The registry is a processor-sharing server: its n flows each get min(B/n, d) (d: a node's
//! downlink), tracked in virtual time so that thousands of concurrent registry reads cost
//! O(log n) per event. Registry flows do not count against the receivers' downlinks.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The registry's end of a flow.
pub const REGISTRY: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub struct Flow {
    pub src: u32,
    pub dst: u32,
    pub len: f64,
    pub remaining: f64,
    rate: f64,
    last: u64,
    pub version: u32,
    /// When its scheduled completion fires.
    due: u64,
    /// What the flow carries (the caller's id).
    pub tag: u64,
}

pub struct Net {
    up: Vec<f64>,
    down: Vec<f64>,
    registry: f64,
    flows: Vec<Option<Flow>>,
    free: Vec<u32>,
    out: Vec<Vec<u32>>,
    inn: Vec<Vec<u32>>,
    /// Registry flows in progress, and the virtual bytes each has been served since the start.
    reg_n: usize,
    reg_v: f64,
    reg_last: u64,
    /// (virtual bytes at which it ends, flow)
    reg_heap: BinaryHeap<Reverse<(u64, u32)>>,
    reg_version: u32,
    /// Bytes the registry sent (settled so far).
    pub registry_bytes: f64,
    /// Bytes each node sent.
    pub sent: Vec<f64>,
    /// (time µs, flow, version) completions to schedule; the caller drains this.
    pub due: Vec<(u64, u32, u32)>,
}

/// The id under which the registry's next completion is scheduled.
pub const REGISTRY_EVENT: u32 = u32::MAX;

impl Net {
    /// Rates in bytes per second.
    pub fn new(up: Vec<f64>, down: Vec<f64>, registry: f64) -> Net {
        let n = up.len();
        Net {
            up,
            down,
            registry,
            flows: Vec::new(),
            free: Vec::new(),
            out: vec![Vec::new(); n],
            inn: vec![Vec::new(); n],
            reg_n: 0,
            reg_v: 0.0,
            reg_last: 0,
            reg_heap: BinaryHeap::new(),
            reg_version: 0,
            registry_bytes: 0.0,
            sent: vec![0.0; n],
            due: Vec::new(),
        }
    }

    fn share(&self, f: &Flow) -> f64 {
        let up = self.up[f.src as usize] / self.out[f.src as usize].len().max(1) as f64;
        let down = self.down[f.dst as usize] / self.inn[f.dst as usize].len().max(1) as f64;
        up.min(down)
    }

    /// Each registry flow's rate now.
    fn reg_rate(&self) -> f64 {
        let d = self.down.first().copied().unwrap_or(f64::MAX);
        (self.registry / self.reg_n.max(1) as f64).min(d)
    }

    fn reg_advance(&mut self, now: u64) {
        if self.reg_n > 0 {
            let dv = self.reg_rate() * now.saturating_sub(self.reg_last) as f64 / 1e6;
            self.reg_v += dv;
            self.registry_bytes += dv * self.reg_n as f64;
        }
        self.reg_last = now;
    }

    /// Whether heap entry (`v`, `id`) is a registry flow in progress (ids are reused: the entry
    /// must also end where that flow ends).
    fn reg_live(&self, id: u32, v: u64) -> bool {
        self.flows.get(id as usize).and_then(Option::as_ref).is_some_and(|f| f.src == REGISTRY && f.due == v)
    }

    /// Schedule the registry's next completion.
    fn reg_schedule(&mut self, now: u64) {
        while let Some(Reverse((_, id))) = self.reg_heap.peek() {
            let v = self.reg_heap.peek().map(|Reverse((v, _))| *v);
            if self.reg_live(*id, v.unwrap_or(u64::MAX)) {
                break;
            }
            self.reg_heap.pop();
        }
        self.reg_version += 1;
        if let Some(Reverse((v, _))) = self.reg_heap.peek() {
            let left = (*v as f64 - self.reg_v).max(0.0);
            let at = now + ((left / self.reg_rate() * 1e6).ceil() as u64).max(1);
            self.due.push((at, REGISTRY_EVENT, self.reg_version));
        }
    }

    /// Account what flow `id` moved since it was last touched.
    fn settle(&mut self, id: u32, now: u64) {
        let Some(f) = self.flows[id as usize].as_mut() else { return };
        if f.src == REGISTRY {
            return;
        }
        let moved = (f.rate * (now.saturating_sub(f.last)) as f64 / 1e6).min(f.remaining);
        f.remaining -= moved;
        f.last = now;
        self.sent[f.src as usize] += moved;
    }

    /// New rates for the flows at `src`'s uplink and `dst`'s downlink. A completion is
    /// scheduled only when it moves earlier; one that fires early finds bytes left and is
    /// scheduled again ([`Net::fire`]), which keeps stale events few.
    fn rerate(&mut self, src: u32, dst: u32, now: u64) {
        let mut ids: Vec<u32> = self.out[src as usize].clone();
        ids.extend(self.inn[dst as usize].iter().copied());
        for id in ids {
            self.settle(id, now);
            let Some(f) = self.flows[id as usize].as_ref() else { continue };
            let rate = self.share(f);
            let f = self.flows[id as usize].as_mut().expect("present");
            f.rate = rate;
            let at = now + ((f.remaining / rate * 1e6).ceil() as u64).max(1);
            if f.version == 0 || at < f.due {
                f.version += 1;
                f.due = at;
                self.due.push((at, id, f.version));
            }
        }
    }

    /// A scheduled completion fired: the flows that ended (none when it was stale or early; an
    /// early one is scheduled again).
    pub fn fire(&mut self, id: u32, version: u32, now: u64) -> Vec<Flow> {
        if id == REGISTRY_EVENT {
            if version != self.reg_version {
                return Vec::new();
            }
            self.reg_advance(now);
            let mut done = Vec::new();
            while let Some(Reverse((v, fid))) = self.reg_heap.peek().copied() {
                let live = self.reg_live(fid, v);
                if live && v as f64 > self.reg_v + 1.0 {
                    break;
                }
                self.reg_heap.pop();
                if live {
                    let f = self.flows[fid as usize].take().expect("live");
                    self.free.push(fid);
                    self.reg_n -= 1;
                    done.push(f);
                }
            }
            self.reg_schedule(now);
            return done;
        }
        if !self.current(id, version) {
            return Vec::new();
        }
        self.settle(id, now);
        let f = self.flows[id as usize].as_mut().expect("current");
        if f.remaining <= 1e-3 * f.len.max(1.0) || f.remaining < 1.0 {
            return self.end(id, now).into_iter().collect();
        }
        let at = now + ((f.remaining / f.rate * 1e6).ceil() as u64).max(1);
        f.version += 1;
        f.due = at;
        self.due.push((at, id, f.version));
        Vec::new()
    }

    fn insert(&mut self, f: Flow) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = Some(f);
                i
            }
            None => {
                self.flows.push(Some(f));
                (self.flows.len() - 1) as u32
            }
        }
    }

    /// Start moving `len` bytes from `src` to `dst`.
    pub fn start(&mut self, now: u64, src: u32, dst: u32, len: f64, tag: u64) -> u32 {
        if src == REGISTRY {
            self.reg_advance(now);
            let f = Flow { src, dst, len, remaining: len, rate: 0.0, last: now, version: 0, due: 0, tag };
            let id = self.insert(f);
            self.reg_n += 1;
            self.reg_heap.push(Reverse(((self.reg_v + len).ceil() as u64, id)));
            // `due` of a registry flow: the virtual bytes at which it ends.
            if let Some(f) = self.flows[id as usize].as_mut() {
                f.due = (self.reg_v + len).ceil() as u64;
            }
            self.reg_schedule(now);
            return id;
        }
        // Settle the flows whose rate is about to change before the new one joins.
        let ids: Vec<u32> = self.out[src as usize].clone();
        for id in ids.into_iter().chain(self.inn[dst as usize].clone()) {
            self.settle(id, now);
        }
        let f = Flow { src, dst, len, remaining: len, rate: 0.0, last: now, version: 0, due: u64::MAX, tag };
        let id = self.insert(f);
        self.out[src as usize].push(id);
        self.inn[dst as usize].push(id);
        self.rerate(src, dst, now);
        id
    }

    /// Whether completion `(id, version)` is still the flow's current one.
    pub fn current(&self, id: u32, version: u32) -> bool {
        self.flows.get(id as usize).and_then(Option::as_ref).is_some_and(|f| f.version == version)
    }

    pub fn get(&self, id: u32) -> Option<&Flow> {
        self.flows.get(id as usize).and_then(Option::as_ref)
    }

    /// Bytes flow `id` moved so far.
    pub fn moved(&self, id: u32, now: u64) -> f64 {
        let Some(f) = self.get(id) else { return 0.0 };
        if f.src == REGISTRY {
            let v = self.reg_v + self.reg_rate() * now.saturating_sub(self.reg_last) as f64 / 1e6;
            return (v - (f.due as f64 - f.len)).clamp(0.0, f.len);
        }
        f.len - (f.remaining - f.rate * now.saturating_sub(f.last) as f64 / 1e6).max(0.0)
    }

    /// End flow `id` (done, or cut) and give its share to the others.
    pub fn end(&mut self, id: u32, now: u64) -> Option<Flow> {
        if self.get(id).is_some_and(|f| f.src == REGISTRY) {
            self.reg_advance(now);
            let f = self.flows[id as usize].take()?;
            self.free.push(id);
            self.reg_n -= 1;
            self.reg_schedule(now);
            return Some(f);
        }
        self.settle(id, now);
        let f = self.flows[id as usize].take()?;
        self.free.push(id);
        let list = &mut self.out[f.src as usize];
        if let Some(p) = list.iter().position(|x| *x == id) {
            list.swap_remove(p);
        }
        let list = &mut self.inn[f.dst as usize];
        if let Some(p) = list.iter().position(|x| *x == id) {
            list.swap_remove(p);
        }
        self.rerate(f.src, f.dst, now);
        Some(f)
    }

    /// Peer flows to or from node `n` (registry reads are the caller's to end).
    pub fn flows_of(&self, n: u32) -> Vec<u32> {
        let mut v = self.out[n as usize].clone();
        v.extend(self.inn[n as usize].iter().copied());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the network alone until every flow ended; the end time of each tag.
    fn drain(net: &mut Net, mut now: u64) -> Vec<(u64, u64)> {
        let mut ends = Vec::new();
        loop {
            let live = |id: u32, v: u32| if id == REGISTRY_EVENT { v == net.reg_version } else { net.current(id, v) };
            let Some(&(t, id, v)) = net.due.iter().filter(|(_, id, v)| live(*id, *v)).min_by_key(|d| d.0) else {
                return ends;
            };
            net.due.retain(|d| d.0 > t || !(d.1 == id && d.2 == v));
            now = now.max(t);
            for f in net.fire(id, v, now) {
                ends.push((f.tag, now));
            }
        }
    }

    #[test]
    fn flows_share_links_fairly_and_bytes_are_counted() {
        // Two 1 MB flows out of one 1 MB/s uplink: both end at 2 s.
        let mut net = Net::new(vec![1e6, 1e6, 1e6], vec![1e9, 1e9, 1e9], 5e5);
        net.start(0, 0, 1, 1e6, 1);
        net.start(0, 0, 2, 1e6, 2);
        let ends = drain(&mut net, 0);
        assert_eq!(ends.len(), 2);
        for (_, t) in &ends {
            assert!((1_999_000..=2_001_000).contains(t), "{ends:?}");
        }
        assert!((net.sent[0] - 2e6).abs() < 10.0);
        // The registry at 0.5 MB/s: 1 MB to one node takes 2 s; a second one joining at 1 s
        // halves the rate, so the first ends at 3 s and the second at 4 s.
        let first = net.start(0, REGISTRY, 1, 1e6, 3);
        let _ = net.due.drain(..).collect::<Vec<_>>();
        assert!((net.moved(first, 1_000_000) - 5e5).abs() < 10.0, "half of it after 1 s");
        net.start(1_000_000, REGISTRY, 2, 1e6, 4);
        let ends = drain(&mut net, 1_000_000);
        let t3 = ends.iter().find(|e| e.0 == 3).unwrap().1;
        let t4 = ends.iter().find(|e| e.0 == 4).unwrap().1;
        assert!((2_999_000..=3_001_000).contains(&t3), "{ends:?}");
        assert!((3_999_000..=4_001_000).contains(&t4), "{ends:?}");
        assert!((net.registry_bytes - 2e6).abs() < 10.0);
    }
}
