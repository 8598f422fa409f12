//! The libp2p router in one process: 30 nodes on loopback, provide on one, resolve from all;
//! withdrawal; 24 nodes list each other past the DHT's 20 providers per key; a node with
//! another cluster secret cannot join.

use peerd::routing::p2p::{P2pRouter, RouterConfig};
use peerd::routing::Router;
use peerd::routing::{collect_peers, members};
use std::time::{Duration, Instant};

fn config(bootstrap: Vec<String>, psk: Option<[u8; 32]>, ttl: Duration) -> RouterConfig {
    RouterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        keypair: libp2p::identity::Keypair::generate_ed25519(),
        psk,
        http_port: 5000,
        // The defaults of config/peerd.toml: 29 nodes bootstrapping from one seed at once fit.
        max_connections: 512,
        max_connections_per_peer: 8,
        max_pending_incoming: 128,
        bootstrap_peers: bootstrap,
        bootstrap_dns: None,
        bootstrap_interval: Duration::from_secs(1),
        provider_ttl: ttl,
        provider_republish: ttl / 2,
        max_provided_keys: 10_000,
        events: None,
    }
}

async fn listen_addr(r: &P2pRouter) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = r.status().await.unwrap();
        if let Some(a) = s.listen_addrs.first() {
            // /ip4/127.0.0.1/tcp/PORT → 127.0.0.1:PORT
            let parts: Vec<&str> = a.split('/').collect();
            return format!("{}:{}", parts[2], parts[4]);
        }
        assert!(Instant::now() < deadline, "no listen address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` routers bootstrapping from the first, once all are connected.
async fn cluster(n: usize, psk: Option<[u8; 32]>, ttl: Duration) -> Vec<P2pRouter> {
    let (first, _) = P2pRouter::start(config(vec![], psk, ttl)).unwrap();
    let seed = listen_addr(&first).await;
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(P2pRouter::start(config(vec![seed.clone()], psk, ttl)).unwrap().0);
    }
    for (i, n) in nodes.iter().enumerate().skip(1) {
        wait_until(&format!("node {i} connected"), Duration::from_secs(60), async || n.ready().await).await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_routers_provide_resolve_withdraw() {
    const N: usize = 30;
    let psk = Some([7u8; 32]);
    let ttl = Duration::from_secs(4);
    let nodes = cluster(N, psk, ttl).await;
    let provider = nodes[N / 2].clone();
    let provider_id = provider.status().await.unwrap().peer_id;
    provider.provide(vec!["sha256:aaaa".into()]).await.unwrap();

    let started = Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        if i == N / 2 {
            assert!(
                collect_peers(n.resolve("sha256:aaaa".into(), 3).await.unwrap(), Duration::from_millis(300))
                    .await
                    .is_empty(),
                "never resolves itself"
            );
            continue;
        }
        // A bound, not a target: 30 routers in one process on a shared 2-core machine resolve in
        // a few seconds when it is quiet and much later under load; the time is printed below.
        wait_until(&format!("node {i} resolves the provider"), Duration::from_secs(60), async || {
            let peers = collect_peers(n.resolve("sha256:aaaa".into(), 3).await.unwrap(), Duration::from_secs(2)).await;
            peers.iter().any(|p| p.id == provider_id)
        })
        .await;
    }
    eprintln!("all {} nodes resolved the key within {:?}", N - 1, started.elapsed());
    let unknown = collect_peers(nodes[1].resolve("sha256:none".into(), 3).await.unwrap(), Duration::from_secs(2)).await;
    assert!(unknown.is_empty());

    // Withdrawal: the record ages out of the others' stores within the TTL.
    provider.withdraw(vec!["sha256:aaaa".into()]).await.unwrap();
    assert_eq!(provider.status().await.unwrap().provided_keys, 0);
    wait_until("withdrawal to take effect", Duration::from_secs(20), async || {
        collect_peers(nodes[3].resolve("sha256:aaaa".into(), 3).await.unwrap(), Duration::from_millis(500))
            .await
            .is_empty()
    })
    .await;
}

/// Membership (preheat's node list) through the real DHT: every other node, once, though a DHT
/// node keeps at most 20 providers per key (`routing::members`; the shard descent itself is
/// tested against an emulated cap in the unit tests). A long TTL: 24 nodes republishing seven
/// keys every two seconds would be a load test, not this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_routers_list_each_other_past_the_provider_cap() {
    const N: usize = 24;
    let psk = Some([9u8; 32]);
    let ttl = Duration::from_secs(600);
    let nodes = cluster(N, psk, ttl).await;
    let mut ids = Vec::new();
    for n in &nodes {
        let id = n.status().await.unwrap().peer_id;
        members::announce(n, &id).await.unwrap();
        ids.push(id);
    }
    for i in [3, N - 1] {
        let others: Vec<&str> = ids.iter().filter(|id| **id != ids[i]).map(String::as_str).collect();
        // Every other node, once — or all but one: with 54 routers in one test process on two
        // cores a lookup has been seen to miss one provider it could not dial (a fresh clone's
        // `make test`; never on a quiet run). Listing more than the cap needs the descent.
        wait_until(&format!("node {i} lists the other nodes"), Duration::from_secs(60), async || {
            let l = members::list(&nodes[i], Duration::from_secs(5), 1000).await;
            eprintln!("node {i} lists {} of {} others with {} lookups", l.peers.len(), N - 1, l.lookups);
            let found: Vec<&str> = l.peers.iter().map(|p| p.id.as_str()).collect();
            assert!(found.iter().all(|f| others.contains(f)), "only other nodes, never itself: {found:?}");
            l.lookups > 1 && found.len() + 1 >= others.len()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_cannot_join() {
    let ttl = Duration::from_secs(60);
    let (a, _) = P2pRouter::start(config(vec![], Some([1u8; 32]), ttl)).unwrap();
    let seed = listen_addr(&a).await;
    let (b, _) = P2pRouter::start(config(vec![seed.clone()], Some([1u8; 32]), ttl)).unwrap();
    let (outsider, _) = P2pRouter::start(config(vec![seed.clone()], Some([2u8; 32]), ttl)).unwrap();
    let (no_secret, _) = P2pRouter::start(config(vec![seed], None, ttl)).unwrap();
    wait_until("b connected", Duration::from_secs(10), async || b.status().await.unwrap().connected_peers > 0).await;
    a.provide(vec!["k".into()]).await.unwrap();
    wait_until("b resolves a", Duration::from_secs(10), async || {
        !collect_peers(b.resolve("k".into(), 1).await.unwrap(), Duration::from_secs(1)).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, r) in [("wrong secret", &outsider), ("no secret", &no_secret)] {
        let s = r.status().await.unwrap();
        assert_eq!(s.connected_peers, 0, "{name} must not connect");
        assert!(!s.ready, "{name} is not ready: it has bootstrap peers but reaches none");
        assert!(
            collect_peers(r.resolve("k".into(), 1).await.unwrap(), Duration::from_secs(1)).await.is_empty(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_provided_while_alone_reach_peers_that_join_later() {
    // TTL 10 min, republication 5 min: only the "first peer" re-publication can make this pass.
    let ttl = Duration::from_secs(600);
    let (a, _) = P2pRouter::start(config(vec![], Some([3u8; 32]), ttl)).unwrap();
    a.provide(vec!["sha256:early".into()]).await.unwrap();
    let seed = listen_addr(&a).await;
    let (b, _) = P2pRouter::start(config(vec![seed.clone()], Some([3u8; 32]), ttl)).unwrap();
    let (c, _) = P2pRouter::start(config(vec![seed], Some([3u8; 32]), ttl)).unwrap();
    for n in [&b, &c] {
        wait_until("joiner resolves the early key", Duration::from_secs(15), async || {
            !collect_peers(n.resolve("sha256:early".into(), 1).await.unwrap(), Duration::from_secs(1)).await.is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_from_a_dns_name() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ttl = Duration::from_secs(600);
    let mut seed_cfg = config(vec![], Some([4u8; 32]), ttl);
    seed_cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let (seed, _) = P2pRouter::start(seed_cfg).unwrap();
    seed.provide(vec!["sha256:dns".into()]).await.unwrap();
    let mut joiners = Vec::new();
    for _ in 0..2 {
        let mut c = config(vec![], Some([4u8; 32]), ttl);
        c.bootstrap_dns = Some(format!("localhost:{port}"));
        joiners.push(P2pRouter::start(c).unwrap().0);
    }
    for j in &joiners {
        wait_until("joined through the DNS name", Duration::from_secs(15), async || j.ready().await).await;
        wait_until("resolves the seed's key", Duration::from_secs(15), async || {
            !collect_peers(j.resolve("sha256:dns".into(), 1).await.unwrap(), Duration::from_secs(1)).await.is_empty()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_before_any_bootstrap_peer_answers() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (r, _) = P2pRouter::start(config(vec![closed], Some([5u8; 32]), Duration::from_secs(600))).unwrap();
    for _ in 0..10 {
        assert!(!r.ready().await, "bootstrap peers configured but none reachable: not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (alone, _) = P2pRouter::start(config(vec![], Some([5u8; 32]), Duration::from_secs(600))).unwrap();
    assert!(alone.ready().await, "no bootstrap peers: knowingly alone");
}

/// The libp2p owner task ends when every handle to it is dropped, or at `shut_down`: its
/// bootstrap loop used to hold a sender, so the task (its connections, its port) lived on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_task_ends_with_its_handles_or_at_shutdown() {
    let port_free = |addr: &str| std::net::TcpListener::bind(addr).is_ok();
    for explicit in [false, true] {
        // A bootstrap peer that never answers keeps the bootstrap loop running.
        let (r, _) =
            P2pRouter::start(config(vec!["127.0.0.1:9".into()], Some([3u8; 32]), Duration::from_secs(60))).unwrap();
        let addr = listen_addr(&r).await;
        assert!(!port_free(&addr), "the router listens on {addr}");
        if explicit {
            let other = r.clone();
            r.shut_down().await;
            wait_until("the owner task to stop", Duration::from_secs(10), async || port_free(&addr)).await;
            assert!(other.status().await.is_err(), "a stopped router answers Stopped");
        } else {
            drop(r);
            wait_until("the owner task to end", Duration::from_secs(10), async || port_free(&addr)).await;
        }
    }
}

/// The router conformance checks (`peerd::routing::conformance`, which the in-memory router
/// passes in unit tests) against two libp2p nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_router_conforms() {
    let ttl = Duration::from_secs(3);
    let (a, _) = P2pRouter::start(config(vec![], Some([5u8; 32]), ttl)).unwrap();
    let seed = listen_addr(&a).await;
    let (b, _) = P2pRouter::start(config(vec![seed], Some([5u8; 32]), ttl)).unwrap();
    let (a_id, b_id) = (a.status().await.unwrap().peer_id, b.status().await.unwrap().peer_id);
    // Withdrawn records expire at the provider TTL on the nodes that store them.
    peerd::routing::conformance::check(&a, &a_id, &b, &b_id, Duration::from_secs(30), "libp2p").await;
}
