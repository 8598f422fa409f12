//! The planner with explicit time: no clock, no network.

use super::*;

const KEY: &str = "sha256:0123";
const MS: Duration = Duration::from_millis(1);

/// The defaults, except chunks in index order: the tests below name the chunks they expect by
/// index (the per-node order has its own test).
fn cfg() -> PlanConfig {
    PlanConfig { order_window: 1, ..PlanConfig::new(8, 2, 4, Duration::from_secs(10)) }
}

fn active(n: u64, have: &[u64], fetching: &[u64]) -> Status<u32> {
    let mut h = Bits::new(n);
    have.iter().for_each(|i| h.set(*i, true));
    let mut f = Bits::new(n);
    fetching.iter().for_each(|i| f.set(*i, true));
    Status::Active { have: h, fetching: f, peers: Vec::new() }
}

/// `me` knows `peers` (all active, holding nothing) after one refresh at time 0.
fn planner(me: &str, peers: &[&str], chunks: u64) -> Planner<u32> {
    let mut p = Planner::new(KEY.into(), me.into(), chunks, cfg());
    let r = p.start_refresh(Duration::ZERO).unwrap();
    assert!(r.lookup, "the first refresh looks the download up");
    let statuses =
        peers.iter().enumerate().map(|(n, id)| (id.to_string(), n as u32, active(chunks, &[], &[]))).collect();
    let mut out = Vec::new();
    p.on_refresh(Duration::ZERO, &[], statuses, &mut out);
    assert!(out.is_empty(), "{out:?}");
    p
}

/// The first chunk whose owner among `ids` is `who`.
fn owned_by(who: &str, ids: &[&str], chunks: u64) -> u64 {
    (0..chunks).find(|i| owner(KEY, *i, ids.iter().copied()) == Some(who)).expect("some chunk")
}

fn starts(out: &[Action<u32>]) -> (Vec<(u64, String)>, Vec<u64>) {
    let mut peer = Vec::new();
    let mut up = Vec::new();
    for a in out {
        match a {
            Action::FetchPeer { index, peer: p, .. } => peer.push((*index, p.clone())),
            Action::FetchUpstream { index } => up.push(*index),
            _ => {}
        }
    }
    (peer, up)
}

#[test]
fn owners_are_spread_stable_and_move_only_from_a_removed_node() {
    let ids = ["a", "b", "c", "d"];
    let mut count = HashMap::new();
    for i in 0..400 {
        let o = owner(KEY, i, ids).unwrap();
        assert_eq!(owner(KEY, i, ids.iter().rev().copied()), Some(o), "order of the view does not matter");
        *count.entry(o).or_insert(0) += 1;
        let o2 = owner(KEY, i, ["a", "b", "c"]).unwrap();
        assert!(o == "d" || o == o2, "dropping d moved chunk {i} from {o} to {o2}");
    }
    for id in ids {
        assert!((60..140).contains(&count[id]), "{id} owns {} of 400", count[id]);
    }
    assert_eq!(owner(KEY, 0, []), None);
    assert_ne!(score(KEY, 0, "a"), score("other", 0, "a"), "the key matters");
}

#[test]
fn the_owner_reads_from_the_upstream_and_the_others_ask_it() {
    let chunks = 40;
    let mut a = planner("a", &["b"], chunks);
    let mut out = Vec::new();
    a.schedule(Duration::ZERO, &mut out);
    let (peer, up) = starts(&out);
    assert_eq!(up.len(), 2, "upstream_parallel reads at once: {out:?}");
    for i in &up {
        assert_eq!(owner(KEY, *i, ["a", "b"]), Some("a"), "a reads only chunks it owns");
    }
    assert!(!peer.is_empty());
    for (i, p) in &peer {
        assert_eq!((p.as_str(), owner(KEY, *i, ["a", "b"])), ("b", Some("b")), "asks the owner of chunk {i}");
    }
    assert!(peer.len() <= 4, "per_peer bounds the requests to one peer: {}", peer.len());
    assert!(a.fetching().get(up[0]));
}

#[test]
fn a_holder_is_asked_before_the_owner_and_the_least_loaded_first() {
    let chunks = 16;
    let mut a = planner("a", &["b", "c"], chunks);
    // c has everything: a takes from it, up to per_peer at once, even for chunks it owns.
    let mut out = Vec::new();
    a.start_refresh(MS).unwrap();
    a.on_refresh(MS, &[], vec![("c".into(), 1, active(chunks, &(0..chunks).collect::<Vec<_>>(), &[]))], &mut out);
    a.schedule(MS, &mut out);
    let (peer, up) = starts(&out);
    let from_c: Vec<u64> = peer.iter().filter(|(_, p)| p == "c").map(|(i, _)| *i).collect();
    assert_eq!(from_c.len(), 4, "per_peer from the holder: {peer:?}");
    assert_eq!(from_c, vec![0, 1, 2, 3], "the lowest chunks first");
    for i in &up {
        assert!(!from_c.contains(i));
        assert_eq!(owner(KEY, *i, ["a", "b", "c"]), Some("a"), "c is full: a reads its own chunk {i}");
    }
    // Once c answered, a asks it for the next chunks, the lowest first.
    out.clear();
    for i in &from_c {
        a.on_chunk(MS * 5, *i, Source::Peer("c".into()), ChunkOutcome::Got, &mut out);
    }
    a.schedule(MS * 5, &mut out);
    let again: Vec<u64> = starts(&out).0.iter().filter(|(_, p)| p == "c").map(|(i, _)| *i).collect();
    assert_eq!(again.len(), 4, "{out:?}");
    assert!(again.iter().all(|i| !from_c.contains(i) && !up.contains(i)));
}

/// Complete every fetch in `inflight` with `Got`, then schedule at `now` and add what started.
fn deliver(p: &mut Planner<u32>, now: Duration, inflight: &mut Vec<(u64, Source)>, out: &mut Vec<Action<u32>>) {
    for (j, src) in std::mem::take(inflight) {
        p.on_chunk(now, j, src, ChunkOutcome::Got, out);
    }
    out.clear();
    p.schedule(now, out);
    let (peer, up) = starts(out);
    inflight.extend(peer.into_iter().map(|(j, id)| (j, Source::Peer(id))));
    inflight.extend(up.into_iter().map(|j| (j, Source::Upstream)));
}

#[test]
fn a_silent_owner_loses_the_chunk_after_takeover_not_before() {
    let chunks = 40;
    let mut a = planner("a", &["b"], chunks);
    let i = owned_by("b", &["a", "b"], chunks);
    let mut out = Vec::new();
    a.schedule(Duration::ZERO, &mut out);
    let (peer, up) = starts(&out);
    assert!(peer.contains(&(i, "b".into())));
    // Everything else a asked is in flight; chunk i stays with b.
    let mut inflight: Vec<(u64, Source)> =
        peer.into_iter().filter(|(j, _)| *j != i).map(|(j, id)| (j, Source::Peer(id))).collect();
    inflight.extend(up.into_iter().map(|j| (j, Source::Upstream)));
    let pending = |t: Duration| ChunkOutcome::Pending { progress: Some(0), took: t };
    // b answers "not yet" every 2 s (long polls) and never makes progress.
    let mut t = Duration::ZERO;
    for _ in 0..4 {
        t += Duration::from_secs(2);
        out.clear();
        a.on_chunk(t, i, Source::Peer("b".into()), pending(Duration::from_secs(2)), &mut out);
        assert!(out.iter().all(|x| !matches!(x, Action::TookOver { .. })), "at {t:?}: {out:?}");
        a.schedule(t, &mut out);
        assert!(starts(&out).0.contains(&(i, "b".into())), "still asks b at {t:?}");
    }
    // The first wait began at 2 s: at 11.9 s no takeover yet, at 12 s yes.
    out.clear();
    a.on_chunk(Duration::from_millis(11_900), i, Source::Peer("b".into()), pending(Duration::from_secs(2)), &mut out);
    assert!(out.iter().all(|x| !matches!(x, Action::TookOver { .. })));
    a.schedule(Duration::from_millis(11_900), &mut out);
    assert!(starts(&out).0.contains(&(i, "b".into())));
    out.clear();
    let t = Duration::from_secs(12);
    a.on_chunk(t, i, Source::Peer("b".into()), pending(Duration::from_millis(100)), &mut out);
    assert_eq!(out, vec![Action::TookOver { index: i, from: "b".into() }]);
    // b is excluded for that chunk only: a never asks b for it again, reads it itself, completes.
    let mut from_upstream = false;
    for n in 0..200u32 {
        deliver(&mut a, t + MS * (10 * n), &mut inflight, &mut out);
        assert!(!inflight.contains(&(i, Source::Peer("b".into()))), "b asked again for {i}");
        from_upstream |= inflight.contains(&(i, Source::Upstream));
    }
    assert!(from_upstream, "a read chunk {i} from the upstream");
    assert!(a.is_complete());
}

#[test]
fn a_slow_owner_that_makes_progress_keeps_its_chunk() {
    let chunks = 40;
    let mut a = planner("a", &["b"], chunks);
    let i = owned_by("b", &["a", "b"], chunks);
    let mut out = Vec::new();
    a.schedule(Duration::ZERO, &mut out);
    // b's upstream progress grows a little on every answer, for a minute.
    for s in 1..=30u64 {
        let t = Duration::from_secs(2 * s);
        out.clear();
        let p = ChunkOutcome::Pending { progress: Some(s * 1000), took: Duration::from_secs(2) };
        a.on_chunk(t, i, Source::Peer("b".into()), p, &mut out);
        assert!(out.iter().all(|x| !matches!(x, Action::TookOver { .. })), "took over at {t:?}");
        a.schedule(t, &mut out);
        assert!(starts(&out).0.contains(&(i, "b".into())), "asks b again at {t:?}");
        assert!(!starts(&out).1.contains(&i));
    }
    // It stops moving: taken over `takeover` after the last progress.
    let last = Duration::from_secs(60);
    let same = ChunkOutcome::Pending { progress: Some(30_000), took: Duration::from_secs(2) };
    out.clear();
    a.on_chunk(last + Duration::from_secs(8), i, Source::Peer("b".into()), same, &mut out);
    assert!(out.is_empty());
    a.schedule(last + Duration::from_secs(8), &mut out);
    out.clear();
    a.on_chunk(last + Duration::from_secs(10), i, Source::Peer("b".into()), same, &mut out);
    assert_eq!(out, vec![Action::TookOver { index: i, from: "b".into() }]);
}

#[test]
fn a_peer_that_sent_bad_bytes_is_not_asked_for_that_chunk_again() {
    let chunks = 4;
    let mut a = planner("a", &["liar"], chunks);
    let mut out = Vec::new();
    a.start_refresh(MS).unwrap();
    a.on_refresh(MS, &[], vec![("liar".into(), 0, active(chunks, &[0, 1, 2, 3], &[]))], &mut out);
    a.schedule(MS, &mut out);
    let (peer, _) = starts(&out);
    assert_eq!(peer.len(), 4, "{out:?}");
    out.clear();
    a.on_chunk(MS * 2, 0, Source::Peer("liar".into()), ChunkOutcome::Bad, &mut out);
    a.schedule(MS * 2, &mut out);
    let (peer, up) = starts(&out);
    assert!(peer.is_empty(), "not the liar again for chunk 0: {peer:?}");
    assert_eq!(up, vec![0], "a reads chunk 0 itself (the liar is left out of its owners)");
    // The liar is still asked for the other chunks.
    out.clear();
    a.on_chunk(MS * 3, 1, Source::Peer("liar".into()), ChunkOutcome::Busy, &mut out);
    a.schedule(MS * 3, &mut out);
    assert!(starts(&out).0.is_empty(), "busy: left alone for a moment");
    a.schedule(MS * 300, &mut out);
    assert_eq!(starts(&out).0, vec![(1, "liar".to_string())], "asked again after the busy backoff");
}

#[test]
fn upstream_refusal_fails_and_transient_errors_retry_with_backoff() {
    let mut a = planner("a", &[], 3);
    let mut out = Vec::new();
    a.schedule(Duration::ZERO, &mut out);
    assert_eq!(starts(&out).1, vec![0, 1]);
    out.clear();
    a.on_chunk(MS, 0, Source::Upstream, ChunkOutcome::UpstreamFailed { fatal: false }, &mut out);
    assert!(out.is_empty() && a.failure().is_none());
    a.schedule(MS, &mut out);
    assert_eq!(starts(&out).1, vec![2], "chunk 0 waits for its backoff (500 ms)");
    out.clear();
    a.schedule(MS * 502, &mut out);
    assert_eq!(starts(&out).1, Vec::<u64>::new(), "upstream_parallel is full");
    a.on_chunk(MS * 502, 2, Source::Upstream, ChunkOutcome::Got, &mut out);
    a.schedule(MS * 502, &mut out);
    assert_eq!(starts(&out).1, vec![0], "retried after the backoff");
    out.clear();
    a.on_chunk(MS * 600, 1, Source::Upstream, ChunkOutcome::UpstreamFailed { fatal: true }, &mut out);
    assert_eq!(out, vec![Action::Failed(PlanError::UpstreamRefused { index: 1 })]);
    assert!(a.failure().is_some());
    out.clear();
    a.schedule(MS * 700, &mut out);
    assert!(out.is_empty(), "a failed download starts nothing");

    // Transient errors: the download fails on the fourth.
    let mut b = planner("b", &[], 1);
    let mut t = Duration::ZERO;
    for n in 1..=UPSTREAM_ATTEMPTS {
        out.clear();
        b.schedule(t, &mut out);
        assert_eq!(starts(&out).1, vec![0], "attempt {n}");
        out.clear();
        b.on_chunk(t, 0, Source::Upstream, ChunkOutcome::UpstreamFailed { fatal: false }, &mut out);
        t += Duration::from_secs(10);
    }
    assert_eq!(out, vec![Action::Failed(PlanError::UpstreamAttempts { index: 0, attempts: UPSTREAM_ATTEMPTS })]);
}

#[test]
fn an_upstream_read_a_peer_already_has_is_abandoned() {
    let chunks = 8;
    let mut a = planner("a", &["b"], chunks);
    let mut out = Vec::new();
    a.schedule(Duration::ZERO, &mut out);
    let (peer, up) = starts(&out);
    assert!(!up.is_empty());
    out.clear();
    // b answers its long polls "not yet" (so it has room for a request again).
    for (i, p) in peer {
        let pending = ChunkOutcome::Pending { progress: Some(1), took: Duration::from_secs(2) };
        a.on_chunk(MS * 900, i, Source::Peer(p), pending, &mut out);
    }
    a.start_refresh(Duration::from_secs(1)).unwrap();
    a.on_refresh(Duration::from_secs(1), &[], vec![("b".into(), 0, active(chunks, &[up[0]], &[]))], &mut out);
    assert_eq!(out, vec![Action::AbortUpstream { index: up[0] }]);
    out.clear();
    a.on_chunk(Duration::from_secs(1), up[0], Source::Upstream, ChunkOutcome::Abandoned, &mut out);
    assert!(!a.fetching().get(up[0]));
    // Once a has the lower chunks (b, their owner, is asked for those first), b is asked for it.
    for j in 0..4 {
        a.on_chunk(Duration::from_secs(1), j, Source::Peer("b".into()), ChunkOutcome::Got, &mut out);
    }
    out.clear();
    a.schedule(Duration::from_secs(1), &mut out);
    assert!(starts(&out).0.contains(&(up[0], "b".into())), "taken from b: {out:?}");
}

#[test]
fn a_dead_peer_is_left_out_and_its_chunks_go_to_others() {
    let chunks = 40;
    let mut a = planner("a", &["b"], chunks);
    let i = owned_by("b", &["a", "b"], chunks);
    let mut out = Vec::new();
    a.schedule(Duration::ZERO, &mut out);
    let (peer, up) = starts(&out);
    out.clear();
    for j in up {
        a.on_chunk(MS, j, Source::Upstream, ChunkOutcome::Got, &mut out);
    }
    let p = ChunkOutcome::Pending { progress: Some(1), took: Duration::from_secs(2) };
    for (j, _) in peer.iter().filter(|(j, _)| *j != i) {
        a.on_chunk(MS, *j, Source::Peer("b".into()), p, &mut out);
    }
    a.on_chunk(Duration::from_secs(2), i, Source::Peer("b".into()), p, &mut out);
    a.on_chunk(Duration::from_secs(3), i, Source::Peer("b".into()), ChunkOutcome::Dead, &mut out);
    assert!(out.contains(&Action::PeerLost { peer: "b".into() }), "{out:?}");
    assert!(out.contains(&Action::TookOver { index: i, from: "b".into() }), "{out:?}");
    // Other requests to b end too; then everything is a's to read.
    let (peer, _) = starts(&out);
    assert!(peer.is_empty());
    out.clear();
    let mut t = Duration::from_secs(3);
    let mut got = 0;
    while !a.is_complete() && t < Duration::from_secs(600) {
        a.schedule(t, &mut out);
        for a_ in std::mem::take(&mut out) {
            match a_ {
                Action::FetchUpstream { index } => {
                    a.on_chunk(t, index, Source::Upstream, ChunkOutcome::Got, &mut out);
                    got += 1;
                }
                Action::FetchPeer { index, peer, .. } => {
                    assert!(t >= Duration::from_secs(33), "dead b asked at {t:?}");
                    a.on_chunk(t, index, Source::Peer(peer), ChunkOutcome::Dead, &mut out);
                }
                _ => {}
            }
        }
        t += Duration::from_millis(10);
    }
    assert!(a.is_complete(), "a completed alone");
    assert!(got >= chunks - 8, "from the upstream: {got}");
    // The refresh does not ask a dead peer while it is left out.
    let r = a.start_refresh(Duration::from_secs(4)).unwrap();
    assert!(r.known.is_empty() || t >= Duration::from_secs(33), "{:?}", r.known);
}

#[test]
fn learning_is_bounded_and_gossip_spreads_the_view() {
    let mut p: Planner<u32> = Planner::new(KEY.into(), "me".into(), 4, cfg());
    let r = p.start_refresh(Duration::ZERO).unwrap();
    assert!(p.start_refresh(Duration::ZERO).is_none(), "one refresh at a time");
    let found: Vec<(String, u32)> = (0..3).map(|i| (format!("p{i}"), i)).collect();
    let ask = ask_list(r.known, &found, "me", MAX_VIEW);
    assert_eq!(ask.len(), 3);
    assert!(ask_list(Vec::new(), &[("me".to_string(), 1)], "me", MAX_VIEW).is_empty(), "never asks itself");
    let gossip: Vec<(String, u32)> = (0..200).map(|i| (format!("g{i:03}"), i)).chain([("me".into(), 9)]).collect();
    let statuses = ask
        .into_iter()
        .map(|(id, a)| {
            let st = Status::Active { have: Bits::new(4), fetching: Bits::new(4), peers: gossip.clone() };
            (id, a, st)
        })
        .collect();
    let mut out = Vec::new();
    p.on_refresh(Duration::ZERO, &found, statuses, &mut out);
    assert!(p.view_full());
    assert_eq!(p.view().len(), 3, "only peers that answered are in the view");
    let r = p.start_refresh(Duration::from_secs(1)).unwrap();
    assert_eq!(r.known.len(), MAX_VIEW, "bounded, never this node itself");
    assert!(r.known.iter().all(|(id, _)| id != "me"));
    assert!(!r.lookup, "the second refresh asks the peers, not the DHT");
}

/// A full lookup's answer: 20 core nodes.
fn core_ids() -> Vec<String> {
    (0..20).map(|i| format!("c{i:02}")).collect()
}

/// `me` after one refresh whose lookup returned `found`, every found peer active and holding
/// nothing; their status pages name `me` when `named` (as a core node's page names the core).
fn after_lookup(me: &str, found: &[String], named: bool, chunks: u64) -> Planner<u32> {
    let mut p = Planner::new(KEY.into(), me.into(), chunks, cfg());
    let r = p.start_refresh(Duration::ZERO).unwrap();
    assert!(r.lookup);
    let f: Vec<(String, u32)> = found.iter().enumerate().map(|(n, id)| (id.clone(), n as u32)).collect();
    let ask = ask_list(r.known, &f, me, MAX_VIEW);
    let names: Vec<(String, u32)> = if named { vec![(me.to_string(), 99)] } else { Vec::new() };
    let statuses = ask
        .into_iter()
        .map(|(id, n)| {
            (id, n, Status::Active { have: Bits::new(chunks), fetching: Bits::new(chunks), peers: names.clone() })
        })
        .collect();
    let mut out = Vec::new();
    p.on_refresh(Duration::ZERO, &f, statuses, &mut out);
    p
}

/// The simulation's finding (registry egress 6·F at 100 nodes): with a lookup cut at the DHT's
/// 20 providers, a node outside them counted itself over "the 20 + itself" and read ~1/21 of the
/// chunks from the upstream. Now it reads none while the 20 answer (their pages do not name it):
/// it asks each chunk's owner among them — the owner every one of them computes too.
#[test]
fn a_node_outside_a_cut_lookup_reads_nothing_from_the_upstream_and_asks_the_owners() {
    let chunks = 400;
    let core = core_ids();
    let ids: Vec<&str> = core.iter().map(String::as_str).collect();
    let mut outsider = after_lookup("zz-outsider", &core, false, chunks);
    let mut upstream = 0;
    let mut t = Duration::ZERO;
    for _ in 0..50 {
        let mut out = Vec::new();
        outsider.schedule(t, &mut out);
        let (peer, up) = starts(&out);
        upstream += up.len();
        for (i, p) in peer {
            assert_eq!(Some(p.as_str()), owner(KEY, i, ids.iter().copied()), "asks chunk {i}'s owner among the 20");
            let mut o = Vec::new();
            outsider.on_chunk(t, i, Source::Peer(p), ChunkOutcome::Got, &mut o);
        }
        t += MS;
    }
    assert_eq!(upstream, 0, "an outsider reads nothing from the upstream");
    assert!(outsider.is_complete());

    // A node of the 20 (the others' lookups return it, so their status pages name it) owns its
    // share and reads it.
    let others: Vec<String> = core[1..].to_vec();
    let mut inside = after_lookup("c00", &others, true, chunks);
    let mut out = Vec::new();
    inside.schedule(Duration::ZERO, &mut out);
    let (_, up) = starts(&out);
    assert_eq!(up.len(), 2, "upstream_parallel reads: {out:?}");
    for i in up {
        assert_eq!(owner(KEY, i, ids.iter().copied()), Some("c00"), "only chunks it owns among the 20");
    }

    // A lookup below the cut: everyone downloading is a candidate, as before.
    let few: Vec<String> = core[..5].to_vec();
    let mut small = after_lookup("zz-outsider", &few, false, chunks);
    let mut out = Vec::new();
    small.schedule(Duration::ZERO, &mut out);
    assert_eq!(starts(&out).1.len(), 2, "a node of a small swarm owns chunks: {out:?}");
}

/// The core gone (unreachable): the outsider owns the chunks itself rather than wait forever.
#[test]
fn an_outsider_reads_the_chunks_itself_when_the_core_stops_answering() {
    let chunks = 40;
    let core = core_ids();
    let mut p = after_lookup("zz", &core, false, chunks);
    let r = p.start_refresh(Duration::from_secs(1)).unwrap();
    assert!(!r.lookup);
    let statuses = r.known.into_iter().map(|(id, n)| (id, n, Status::Unreachable)).collect();
    let mut out = Vec::new();
    p.on_refresh(Duration::from_secs(1), &[], statuses, &mut out);
    let mut out = Vec::new();
    p.schedule(Duration::from_secs(1), &mut out);
    assert_eq!(starts(&out).1.len(), 2, "reads from the upstream: {out:?}");
}

/// Beyond the cut the view is the core and this node's group: the peers a status page names
/// are not learned (first come, they were the same few nodes in every view); below it they are.
#[test]
fn in_a_cut_swarm_status_pages_do_not_fill_the_view() {
    let chunks = 8;
    let gossip: Vec<(String, u32)> = (0..30).map(|i| (format!("g{i:02}"), 100 + i)).collect();
    let status = |p: &mut Planner<u32>, asked: &str| {
        let r = p.start_refresh(Duration::from_secs(1)).unwrap();
        assert!(!r.lookup);
        let st = Status::Active { have: Bits::new(chunks), fetching: Bits::new(chunks), peers: gossip.clone() };
        let mut out = Vec::new();
        p.on_refresh(Duration::from_secs(1), &[], vec![(asked.to_string(), 0, st)], &mut out);
        let r = p.start_refresh(Duration::from_secs(2)).unwrap();
        r.known.iter().filter(|(id, _)| id.starts_with('g')).count()
    };
    let core = core_ids();
    let mut big = after_lookup("me", &core, false, chunks);
    assert_eq!(status(&mut big, "c00"), 0, "a cut swarm learns no gossip");
    let mut small = after_lookup("me", &core[..4], false, chunks);
    assert_eq!(status(&mut small, "c00"), 30, "a small swarm learns every peer named");
}

/// Nodes needing the same chunk from equally loaded holders do not all pick the same one.
/// How many of 10 peers, each answering `status` (of 4 chunks), 50 nodes pick first for chunk 0.
fn first_picks_of_chunk_0(status: Status<u32>) -> usize {
    let peers: Vec<(String, u32)> = (0..10).map(|i| (format!("p{i}"), i)).collect();
    let mut picked = HashSet::new();
    for n in 0..50 {
        let mut p = Planner::new(KEY.into(), format!("node{n}"), 4, cfg());
        let r = p.start_refresh(Duration::ZERO).unwrap();
        let ask = ask_list(r.known, &peers, p.me(), MAX_VIEW);
        let statuses = ask.into_iter().map(|(id, a)| (id, a, status.clone())).collect();
        let mut out = Vec::new();
        p.on_refresh(Duration::ZERO, &peers, statuses, &mut out);
        p.schedule(Duration::ZERO, &mut out);
        let first = starts(&out).0.into_iter().find(|(i, _)| *i == 0).expect("chunk 0 asked");
        picked.insert(first.1);
    }
    picked.len()
}

#[test]
fn nodes_prefer_different_holders_of_the_same_chunk() {
    let n = first_picks_of_chunk_0(active(4, &[0, 1, 2, 3], &[]));
    assert!(n >= 6, "50 nodes spread chunk 0 over {n} of 10 holders");
}

/// In a cut swarm the core holds every chunk first and everyone has it in view: a chunk that a
/// group peer also has is asked from the group peer (up to `per_peer` at once), so the core's
/// uplinks serve what nobody else has yet.
#[test]
fn a_holder_outside_the_core_is_asked_before_the_core() {
    let chunks = 10;
    let core = core_ids();
    let mut p = after_lookup("me", &core, false, chunks);
    // g1 (a group peer) answers a status request with the others.
    let r = p.start_refresh(Duration::from_secs(1)).unwrap();
    let mut known = r.known;
    known.push(("g1".to_string(), 50));
    let all: Vec<u64> = (0..chunks).collect();
    let statuses = (known.into_iter())
        .map(|(id, a)| {
            let st = if id == "g1" { active(chunks, &all[..8], &[]) } else { active(chunks, &all, &[]) };
            (id, a, st)
        })
        .collect();
    let mut out = Vec::new();
    p.on_refresh(Duration::from_secs(1), &[], statuses, &mut out);
    let mut out = Vec::new();
    p.schedule(Duration::from_secs(1), &mut out);
    let (peer, up) = starts(&out);
    assert!(up.is_empty(), "{out:?}");
    let from_g1: Vec<u64> = peer.iter().filter(|(_, id)| id == "g1").map(|(i, _)| *i).collect();
    assert_eq!(from_g1, vec![0, 1, 2, 3], "the group peer first, up to per_peer: {out:?}");
    assert_eq!(peer.len(), 8, "then the core (parallel 8): {out:?}");
}

/// The simulated scale-out (one seed, the others new): a node read the chunks it owned from the
/// registry whenever the seed had no room left for it (per_peer), and the next refresh stopped
/// those reads because the seed had them (registry egress 1.96·F at 100 nodes, 4.10·F at
/// 1,000). A chunk a peer that may be asked holds is waited for; a peer that answered 503 is
/// not waited for.
#[test]
fn a_chunk_a_peer_holds_is_not_read_from_the_upstream_while_that_peer_may_be_asked() {
    let chunks = 16;
    let all: Vec<u64> = (0..chunks).collect();
    let mut a = planner("a", &["seed"], chunks);
    let mut out = Vec::new();
    a.start_refresh(MS).unwrap();
    a.on_refresh(MS, &[], vec![("seed".into(), 0, active(chunks, &all, &[]))], &mut out);
    out.clear();
    a.schedule(MS, &mut out);
    let (peer, up) = starts(&out);
    assert_eq!(peer.len(), 4, "per_peer chunks from the seed: {out:?}");
    assert!(up.is_empty(), "nothing the seed has is read from the upstream: {out:?}");

    // The seed answers 503 (out of upload slots): now a reads what it owns.
    out.clear();
    a.on_chunk(MS * 2, peer[0].0, Source::Peer("seed".into()), ChunkOutcome::Busy, &mut out);
    a.schedule(MS * 2, &mut out);
    let (_, up) = starts(&out);
    assert_eq!(up.len(), 2, "upstream_parallel reads while the seed is busy: {out:?}");
}

/// Peers receiving a chunk now (from the upstream or from a peer) are asked for it with a long
/// poll: the ones with room (before: always the first receiver by id, so a chunk waited while
/// that one was at its per-peer limit and another receiver had room), and different nodes
/// prefer different receivers.
#[test]
fn a_chunk_on_its_way_is_asked_from_a_receiver_with_room_and_nodes_spread_over_receivers() {
    let chunks = 8;
    let all: Vec<u64> = (0..chunks).collect();
    let mut p = Planner::new(KEY.into(), "me".into(), chunks, cfg());
    p.start_refresh(Duration::ZERO).unwrap();
    let statuses =
        ["a", "b"].iter().enumerate().map(|(n, id)| (id.to_string(), n as u32, active(chunks, &[], &all))).collect();
    let mut out = Vec::new();
    p.on_refresh(Duration::ZERO, &[], statuses, &mut out);
    p.schedule(Duration::ZERO, &mut out);
    let (peer, up) = starts(&out);
    assert!(up.is_empty(), "nothing from the upstream while peers receive every chunk: {out:?}");
    let to = |who: &str| peer.iter().filter(|(_, id)| id == who).count();
    assert_eq!((to("a"), to("b")), (4, 4), "per_peer 4 at each receiver, 8 in all: {out:?}");

    let n = first_picks_of_chunk_0(active(4, &[], &[0]));
    assert!(n >= 6, "50 nodes spread chunk 0 over {n} of 10 receivers");
}

/// Nodes that start together ask for different chunks first (all asking for chunk 0 first had
/// every node wait on chunk 0's owner while the other owners' uplinks idled), within the first
/// `ORDER_WINDOW` missing chunks only: a reader streaming the blob in order gets bytes early.
#[test]
fn nodes_start_at_different_chunks_within_the_order_window() {
    let chunks = 3 * ORDER_WINDOW;
    let mut firsts = HashSet::new();
    for n in 0..20 {
        let mut p: Planner<u32> =
            Planner::new(KEY.into(), format!("node{n}"), chunks, PlanConfig::new(8, 2, 4, Duration::from_secs(10)));
        let mut out = Vec::new();
        p.schedule(Duration::ZERO, &mut out);
        let (_, up) = starts(&out);
        assert_eq!(up.len(), 2, "{out:?}");
        assert!(up.iter().all(|i| *i < ORDER_WINDOW), "{up:?}");
        firsts.insert(up[0]);
    }
    assert!(firsts.len() >= 10, "20 nodes start at {} different chunks", firsts.len());
}

/// On demand (a /blobs file): only the chunks asked for are fetched, a chunk the upstream
/// cannot give fails alone (its readers get the error, the transfer goes on), and asking for
/// it again tries afresh; a chunk nobody waits for any more is not started.
#[test]
fn on_demand_fetches_only_wanted_chunks_and_fails_a_chunk_alone() {
    let cfg = PlanConfig { upstream_attempts: 1, ..cfg() };
    let mut p: Planner<u32> = Planner::new(KEY.into(), "me".into(), 10, cfg).on_demand();
    let mut out = Vec::new();
    p.schedule(Duration::ZERO, &mut out);
    assert!(out.is_empty(), "nothing wanted, nothing fetched: {out:?}");
    assert!(!p.busy());
    p.want(7, true);
    p.want(3, true);
    p.want(5, true);
    p.want(5, false);
    assert!(p.busy());
    p.schedule(Duration::ZERO, &mut out);
    assert_eq!(starts(&out).1, vec![3, 7], "the wanted chunks, lowest first; not the one dropped");
    out.clear();
    p.on_chunk(MS, 3, Source::Upstream, ChunkOutcome::Got, &mut out);
    p.on_chunk(MS, 7, Source::Upstream, ChunkOutcome::UpstreamFailed { fatal: false }, &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::ChunkFailed { index: 7, .. })), "the chunk fails alone: {out:?}");
    assert!(!out.iter().any(|a| matches!(a, Action::Failed(_))), "the transfer goes on: {out:?}");
    assert!(p.failure().is_none());
    out.clear();
    p.schedule(2 * MS, &mut out);
    assert!(out.is_empty(), "a failed chunk is not retried unasked: {out:?}");
    assert!(!p.busy());
    p.want(7, true);
    p.schedule(3 * MS, &mut out);
    assert_eq!(starts(&out).1, vec![7], "asked again: tried afresh, at once");
    // A chunk that left the store (evicted) is fetched again when asked for.
    out.clear();
    p.forget(3);
    p.want(3, true);
    p.schedule(4 * MS, &mut out);
    assert_eq!(starts(&out).1, vec![3]);
}

/// With `split_owners` off, nodes do not split the chunks nobody has: each reads them itself
/// (a holder is still asked first).
#[test]
fn without_split_owners_a_node_reads_itself_what_no_peer_has() {
    let ids = ["a", "b"];
    let theirs = owned_by("b", &ids, 64);
    let mut split = planner("a", &["b"], 64);
    let mut out = Vec::new();
    split.schedule(Duration::ZERO, &mut out);
    assert!(starts(&out).0.contains(&(theirs, "b".into())), "split: b's chunk is asked of b");

    let mut p = Planner::new(KEY.into(), "a".into(), 64, PlanConfig { split_owners: false, ..cfg() });
    p.start_refresh(Duration::ZERO).unwrap();
    let statuses = vec![("b".to_string(), 1u32, active(64, &[theirs], &[]))];
    p.on_refresh(Duration::ZERO, &[], statuses, &mut out);
    out.clear();
    p.schedule(Duration::ZERO, &mut out);
    let (peer, up) = starts(&out);
    assert_eq!(peer, vec![(theirs, "b".to_string())], "the holder is asked for what it has");
    assert!(!up.is_empty() && !peer.iter().any(|(i, _)| up.contains(i)), "the rest comes from the upstream: {up:?}");
}

/// The simulation's finding at 10,000 nodes: a node that learned only at its second refresh that
/// it is in the core (a core node's page named it) owned chunks it had asked their previous
/// owner for; that node was not reading them, and each request, a 2 s long poll, held its chunk
/// back until it ended (the chunk every node then got last). Now that refresh gives up those
/// requests, and the chunks are read here at once — unless a peer has or fetches the chunk.
#[test]
fn a_node_that_comes_to_own_a_chunk_it_asked_for_gives_the_request_up() {
    let chunks = 400;
    let core = core_ids();
    let ids: Vec<&str> = core.iter().map(String::as_str).collect();
    let others: Vec<String> = core[1..].to_vec();
    // c00's first lookup lists the 19 others; their pages do not name it yet: not in the core.
    let mut c = after_lookup("c00", &others, false, chunks);
    let mut t = Duration::ZERO;
    // Keep two requests for chunks c00 owns among all 20 in flight; everything else arrives.
    let mut mine: Vec<(u64, String)> = Vec::new();
    while mine.len() < 2 {
        let mut out = Vec::new();
        c.schedule(t, &mut out);
        let (asked, up) = starts(&out);
        assert!(up.is_empty(), "outside the core c00 reads nothing: {out:?}");
        assert!(!asked.is_empty() || !mine.is_empty(), "c00 asks for chunks");
        for (i, p) in asked {
            if owner(KEY, i, ids.iter().copied()) == Some("c00") && mine.len() < 2 {
                mine.push((i, p));
            } else {
                c.on_chunk(t, i, Source::Peer(p), ChunkOutcome::Got, &mut Vec::new());
            }
        }
        t += MS;
    }
    let (x, y) = (mine[0].clone(), mine[1].clone());
    // The next refresh: the pages name c00 (it is in the core), and the node asked for y now
    // fetches it; nobody has or fetches x.
    let r = c.start_refresh(t).unwrap();
    let statuses = r
        .known
        .iter()
        .map(|(id, n)| {
            let fetching: &[u64] = if *id == y.1 { &[y.0] } else { &[] };
            let Status::Active { have, fetching, .. } = active(chunks, &[], fetching) else { unreachable!() };
            (id.clone(), *n, Status::Active { have, fetching, peers: vec![("c00".to_string(), 99)] })
        })
        .collect();
    let mut out = Vec::new();
    c.on_refresh(t, &[], statuses, &mut out);
    assert_eq!(
        out,
        vec![Action::AbortPeer { index: x.0, peer: x.1.clone() }],
        "only the request nobody is going to answer is given up"
    );
    // Given up: the chunk is read here, not asked for again.
    let mut out = Vec::new();
    c.on_chunk(t, x.0, Source::Peer(x.1.clone()), ChunkOutcome::Abandoned, &mut out);
    c.schedule(t, &mut out);
    let (asked, up) = starts(&out);
    assert!(up.contains(&x.0), "c00 reads chunk {} itself: {out:?}", x.0);
    assert!(asked.iter().all(|(i, _)| *i != x.0));
    // A later refresh does not give it up twice, nor the request waiting on a fetching node.
    let r = c.start_refresh(t + MS).unwrap();
    let statuses = r.known.iter().map(|(id, n)| (id.clone(), *n, active(chunks, &[], &[y.0]))).collect();
    let mut out = Vec::new();
    c.on_refresh(t + MS, &[], statuses, &mut out);
    assert!(!out.iter().any(|a| matches!(a, Action::AbortPeer { .. })), "{out:?}");
}
