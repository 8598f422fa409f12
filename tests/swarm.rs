//! Swarming: five nodes pull the same new image at the same moment, with the registry behind
//! a proxy that counts (and paces) what the registry sends. Every pull completes and verifies,
//! and the registry sends the image about once. Then, on fresh nodes, the node fetching the most
//! from the registry is killed mid-way: the others still complete.

mod common;
use common::*;
use std::time::{Duration, Instant};

const SECRET: &str = "integration-test-swarm-secret";
const IPS: [&str; 5] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"];
const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

fn swarm_env() -> Vec<(&'static str, &'static str)> {
    let mut env = cluster_env(SECRET);
    env.retain(|(k, _)| *k != "PEERD_LOG__LEVEL");
    env.push(("PEERD_LOG__LEVEL", "info"));
    env
}

/// Bytes of the image: manifest, config and layers.
fn image_bytes(info: &serde_json::Value, image: &str) -> u64 {
    let layers: u64 = image_layers(info, image).iter().map(|(_, s)| s).sum();
    layers + info[image]["manifest"]["size"].as_u64().unwrap() + info[image]["config"]["size"].as_u64().unwrap()
}

/// Pull `image` on `nodes` all at once; the result of each pull, in order.
fn pull_all(nodes: &[&Node], image: &str) -> Vec<Result<Duration, String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let t = Instant::now();
                    let out = n.containerd.ctr(&["image", "pull", "--hosts-dir", n.hosts.to_str().unwrap(), image]);
                    if out.status.success() {
                        Ok(t.elapsed())
                    } else {
                        Err(String::from_utf8_lossy(&out.stderr).into_owned())
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn swarm_metric(n: &Node, name: &str, labels: &[&str]) -> f64 {
    n.peerd.metric(name, labels)
}

#[test]
fn many_nodes_pulling_at_once_fetch_the_image_from_the_registry_once() {
    if !require("swarm_pull", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-sw");
    // About 50 MB/s from the registry: a pull takes a few seconds, so the nodes overlap.
    let proxy = CountingProxy::start(&reg.addr, 50_000_000);
    let size = image_bytes(&info, "multi");
    let image = format!("{}/test/multi:v1", proxy.addr);

    // Phase 1: five nodes, one image, all at once.
    let ports = Ports::free(IPS[0]);
    let env = swarm_env();
    let nodes = start_nodes(&work.path().join("p1"), &proxy.addr, &IPS, &IPS[..3], ports, &env);
    all_ready(&nodes);
    let before = proxy.sent();
    let refs: Vec<&Node> = nodes.iter().collect();
    let results = pull_all(&refs, &image);
    let egress = proxy.sent() - before;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(t) => eprintln!("node {i} pulled in {t:?}"),
            Err(e) => panic!("node {i} failed to pull:\n{e}\n{}", nodes[i].peerd.log_text()),
        }
    }
    eprintln!("registry sent {egress} bytes for 5 pulls of a {size}-byte image ({:.2}x)", egress as f64 / size as f64);
    let verified: f64 =
        nodes.iter().map(|n| swarm_metric(n, "peerd_swarm_downloads_total", &["outcome=\"verified\""])).sum();
    let from_peers: f64 =
        nodes.iter().map(|n| swarm_metric(n, "peerd_swarm_chunk_bytes_total", &["source=\"peer\""])).sum();
    let mismatches: f64 = nodes.iter().map(|n| n.peerd.metric("peerd_digest_mismatches_total", &[])).sum();
    let passed_on: f64 = nodes.iter().map(|n| swarm_metric(n, "peerd_swarm_chunks_passed_on_total", &[])).sum();
    eprintln!(
        "swarm downloads verified: {verified}; chunk bytes between peers: {from_peers}; chunks passed on while arriving: {passed_on}"
    );
    for (i, n) in nodes.iter().enumerate() {
        let v = swarm_metric(n, "peerd_swarm_downloads_total", &["outcome=\"verified\""]);
        assert!(v >= 1.0, "node {i} assembled layers in the swarm: {v}");
    }
    assert!(from_peers >= 2.0 * size as f64, "most bytes moved between peers: {from_peers}");
    // Owners read their chunks from a registry at 50 MB/s while four nodes wait on them: chunks
    // are passed on while they arrive (a real run passes on most of them).
    assert!(passed_on >= 1.0, "no chunk was passed on while it arrived (cut-through)");
    assert_eq!(mismatches, 0.0);
    // The chunks stay in memory (`swarm.memory_spool_bytes`, on by default) while the finished
    // downloads linger for peers: none went to a spool file. Phase 2 runs with it off.
    for (i, n) in nodes.iter().enumerate() {
        let held = n.peerd.metric("peerd_swarm_spool_memory_bytes", &[]);
        assert!(held > 0.0, "node {i} held its downloads' chunks in memory: {held}");
    }
    // Each node really holds the image: containerd checked every digest; check one layer too.
    let (layer, layer_size) = image_layers(&info, "multi").into_iter().max_by_key(|(_, s)| *s).unwrap();
    for n in &nodes {
        let out = n.containerd.ctr(&["content", "get", &layer]);
        assert_eq!(out.stdout.len() as u64, layer_size);
        assert_eq!(format!("sha256:{}", sha256_hex(&out.stdout)), layer);
    }
    assert!(
        egress as f64 <= 1.1 * size as f64,
        "registry egress {egress} bytes is more than 1.1 x the image ({size} bytes)"
    );
    drop(nodes);

    // Phase 2: fresh nodes, a slower registry (about 12 MB/s, ~10 s per image); the node that
    // fetches the most from the registry is killed once a third of the image has gone out.
    proxy.set_rate(12_000_000);
    let ports = Ports::free(IPS[0]);
    // Every chunk through the spool files this time.
    let env: Vec<_> = env.into_iter().chain([("PEERD_SWARM__MEMORY_SPOOL_BYTES", "0")]).collect();
    let mut nodes = start_nodes(&work.path().join("p2"), &proxy.addr, &IPS, &IPS[..3], ports, &env);
    all_ready(&nodes);
    let before = proxy.sent();
    let (victim, results) = std::thread::scope(|s| {
        let pulls = s.spawn(|| {
            let refs: Vec<&Node> = nodes.iter().collect();
            pull_all(&refs, &image)
        });
        let up = |n: &Node| swarm_metric(n, "peerd_swarm_chunk_bytes_total", &["source=\"upstream\""]);
        wait("a third of the image sent", Duration::from_secs(60), || proxy.sent() - before >= size / 3);
        let victim = (0..nodes.len()).max_by(|a, b| up(&nodes[*a]).total_cmp(&up(&nodes[*b]))).unwrap();
        eprintln!("killing node {victim}, which fetched {} bytes from the registry", up(&nodes[victim]));
        assert!(up(&nodes[victim]) > 0.0, "some node was fetching from the registry");
        let pid = nodes[victim].peerd.pid();
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        (victim, pulls.join().unwrap())
    });
    nodes[victim].peerd.stop_hard();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(t) => eprintln!("node {i} pulled in {t:?}"),
            // The killed node's containerd may fail or fall back to the registry: either is fine.
            Err(e) if i == victim => eprintln!("node {i} (killed) failed: {e}"),
            Err(e) => panic!("node {i} failed to pull after node {victim} died:\n{e}\n{}", nodes[i].peerd.log_text()),
        }
    }
    let survivors: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n).collect();
    let lost: f64 = survivors.iter().map(|n| swarm_metric(n, "peerd_swarm_peers_lost_total", &[])).sum();
    let verified: f64 =
        survivors.iter().map(|n| swarm_metric(n, "peerd_swarm_downloads_total", &["outcome=\"verified\""])).sum();
    eprintln!(
        "survivors noticed the loss {lost} times; {verified} downloads verified; registry sent {}",
        proxy.sent() - before
    );
    assert!(lost >= 1.0, "the survivors noticed the dead node");
    assert!(verified >= 4.0, "the survivors assembled layers in the swarm: {verified}");
    for n in &survivors {
        assert_eq!(n.peerd.metric("peerd_digest_mismatches_total", &[]), 0.0);
        assert_eq!(n.peerd.metric("peerd_swarm_spool_memory_bytes", &[]), 0.0, "memory_spool_bytes = 0");
    }
}
