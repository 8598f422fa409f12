//! A cluster of peerd processes on distinct loopback addresses (same ports on each, as in a
//! DaemonSet), each with its own containerd, against a real registry.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "integration-test-cluster-secret";
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

/// A pulls through its peerd from the registry; the registry stops; B and C pull the same image
/// through their own peerd, from A (tag and content), and their metrics say the bytes came from
/// a peer. Then A deletes the image and the others stop resolving A for it.
#[test]
fn nodes_pull_from_each_other_when_the_registry_is_gone() {
    if !require("cluster_pull", TOOLS, true) {
        return;
    }
    let (work, mut reg, info) = registry_with_images("pd-cl");
    let ports = Ports::free(IPS[0]);
    let env = cluster_env(SECRET);
    let nodes = start_nodes(work.path(), &reg.addr, &IPS, &IPS, ports, &env);
    all_ready(&nodes);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let image = format!("{}/test/multi:v1", reg.addr);
    let multi = image_layers(&info, "multi");
    let multi_bytes: u64 = multi.iter().map(|(_, s)| s).sum();
    let manifest = info["multi"]["manifest"]["digest"].as_str().unwrap().to_owned();

    a.containerd.pull(&a.hosts, &image);
    // Alone, A fetched the layers itself (directly, or as a swarm of one for the large ones).
    let a_bytes = fetched_bytes(&a.peerd);
    assert!(a_bytes >= multi_bytes as f64, "{a_bytes} < {multi_bytes}");
    let a_id = peer_id(&a.peerd);
    assert!(!a_id.is_empty());
    for n in [b, c] {
        for key in [manifest.as_str(), multi[3].0.as_str(), image.as_str()] {
            wait(&format!("{key} resolvable to A"), Duration::from_secs(30), || {
                resolves(&n.peerd, key).contains(&a_id)
            });
        }
    }

    reg.stop();
    // Ranges and HEAD through peers (B holds nothing yet).
    let (layer, size) = &multi[1];
    let ns = reg.addr.replace(':', "%3A");
    let whole = curl("GET", &a.peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={ns}")), &[]);
    let part = curl("GET", &b.peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={ns}")), &[("Range", "bytes=-1000")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[whole.body.len() - 1000..]);
    assert_eq!(part.header("content-range"), Some(format!("bytes {}-{}/{size}", size - 1000, size - 1).as_str()));
    let head = curl("HEAD", &b.peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={ns}")), &[]);
    assert_eq!((head.status, head.header("content-length")), (200, Some(size.to_string().as_str())));
    b.containerd.pull(&b.hosts, &image);
    let from_peer = b.peerd.metric("peerd_served_bytes_total", &["source=\"peer\""]);
    assert!(from_peer >= multi_bytes as f64, "B's bytes came from a peer: {from_peer} < {multi_bytes}");
    assert_eq!(b.peerd.metric("peerd_served_bytes_total", &["source=\"upstream\""]), 0.0);
    assert!(a.peerd.metric("peerd_peer_served_bytes_total", &[]) >= multi_bytes as f64);
    // A sent its layers from the page cache to the socket (sendfile); B wrote what it received on
    // to containerd without copying it into actix's buffer.
    let large: u64 = multi.iter().map(|(_, s)| *s).filter(|s| *s >= peerd::sendfile::MIN_DIRECT).sum();
    assert!(large > 0);
    // (A window the page cache does not hold right then is read and written instead: most, not
    // all, goes by sendfile on a busy machine.)
    let a_sent = |how: &str| a.peerd.metric("peerd_direct_sent_bytes_total", &[&format!("how=\"{how}\"")]);
    let (sent, a_written) = (a_sent("sendfile"), a_sent("write"));
    assert!(sent + a_written >= large as f64, "A sent its layers directly: {sent} + {a_written} < {large}");
    assert!(sent >= large as f64 / 2.0, "A sendfile'd most of its layers: {sent} of {large}");
    let written = b.peerd.metric("peerd_direct_sent_bytes_total", &["how=\"write\""]);
    assert!(written >= large as f64, "B wrote them directly: {written} < {large}");
    c.containerd.pull(&c.hosts, &image);
    assert!(c.peerd.metric("peerd_served_bytes_total", &["source=\"peer\""]) >= multi_bytes as f64);
    assert_eq!(c.peerd.metric("peerd_digest_mismatches_total", &[]), 0.0);
    for n in [b, c] {
        let listed = n.containerd.ctr(&["images", "ls", "-q"]);
        assert!(String::from_utf8_lossy(&listed.stdout).contains("test/multi:v1"));
        assert!(n.peerd.metric("peerd_events_total", &["reason=\"P2PActive\""]) >= 1.0);
        assert!(n.peerd.metric("peerd_events_total", &["reason=\"P2PConnected\""]) >= 1.0);
    }
    let text = b.peerd.metrics_text();
    assert!(text.contains("libp2p_kad_") && text.contains("libp2p_swarm_"), "libp2p metrics are exposed");
    assert!(!text.contains("libp2p_libp2p_"), "prefix only once");
    assert!(text.contains("peerd_peers_found_bucket"), "peers found is a histogram");

    // Withdrawal: only A has this one; after A deletes it, nobody resolves A for it.
    let single = info["single"]["manifest"]["digest"].as_str().unwrap().to_owned();
    let (_w2, reg2, _) = registry_with_images("pd-cl2");
    let a2_hosts = work.path().join("hosts-a2");
    hosts_toml(&a2_hosts, &reg2.addr, &a.peerd.http.to_string());
    // A mirrors only the first registry; pull the second image straight from its registry.
    let img2 = format!("{}/test/single:v1", reg2.addr);
    let out = a.containerd.ctr(&["image", "pull", "--plain-http", &img2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait("single resolvable to A", Duration::from_secs(30), || resolves(&b.peerd, &single).contains(&a_id));
    let out = a.containerd.ctr(&["images", "rm", &img2]);
    assert!(out.status.success());
    let t = Instant::now();
    wait("A withdrawn", Duration::from_secs(40), || !resolves(&b.peerd, &single).contains(&a_id));
    eprintln!("withdrawal visible after {:?} (provider TTL 10 s)", t.elapsed());
    assert!(a.peerd.log_text().contains("image deleted; withdrawing its keys"));

    // containerd restarts under a running peerd: it re-subscribes and advertises new content.
    a.containerd.restart();
    let out = a.containerd.ctr(&["image", "pull", "--plain-http", &img2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait("advertised after a containerd restart", Duration::from_secs(60), || {
        resolves(&b.peerd, &single).contains(&a_id)
    });
    assert!(a.peerd.log_text().contains("re-subscribing"), "the event stream loss was noticed");
}

/// While B streams a large layer from a peer, that peer is killed: B's client still gets the
/// whole layer, verified, from the other peer or the upstream.
#[test]
fn a_peer_dying_mid_stream_does_not_break_the_download() {
    if !require("cluster_failover", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-fo");
    let ports = Ports::free(IPS[0]);
    let env = cluster_env(SECRET);
    let mut nodes = start_nodes(work.path(), &reg.addr, &IPS, &IPS, ports, &env);
    all_ready(&nodes);
    let image = format!("{}/test/multi:v1", reg.addr);
    let (big, big_size) = image_layers(&info, "multi").into_iter().max_by_key(|(_, s)| *s).unwrap();
    nodes[0].containerd.pull(&nodes[0].hosts, &image);
    nodes[2].containerd.pull(&nodes[2].hosts, &image);
    let ids = [peer_id(&nodes[0].peerd), peer_id(&nodes[2].peerd)];
    wait("both holders resolvable", Duration::from_secs(30), || {
        let found = resolves(&nodes[1].peerd, &big);
        ids.iter().all(|id| found.contains(id))
    });

    let url = nodes[1].peerd.url(&format!("/v2/test/multi/blobs/{big}?ns={}", reg.addr.replace(':', "%3A")));
    let out_file = work.path().join("big.out");
    let client = Command::new("curl")
        .args(["-s", "--limit-rate", "8M", "-o", out_file.to_str().unwrap(), "-w", "%{http_code}", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Find who is serving and kill it.
    let served = |n: &Node| n.peerd.metric("peerd_peer_served_bytes_total", &[]);
    let before = [served(&nodes[0]), served(&nodes[2])];
    wait("a peer starts serving", Duration::from_secs(20), || {
        served(&nodes[0]) > before[0] || served(&nodes[2]) > before[1]
    });
    std::thread::sleep(Duration::from_millis(500));
    let victim = if served(&nodes[0]) - before[0] >= served(&nodes[2]) - before[1] { 0 } else { 2 };
    nodes[victim].peerd.stop_hard();
    eprintln!("killed node {victim} mid-stream");

    let out = client.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let body = std::fs::read(&out_file).unwrap();
    assert_eq!(body.len() as u64, big_size, "complete body");
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), big, "verified body");
    assert!(nodes[1].peerd.log_text().contains("resuming"), "B resumed from another source");
    assert!(nodes[1].peerd.metric("peerd_peer_fetch_failures_total", &["reason=\"mid_body\""]) >= 1.0);
}

/// A node with another cluster secret can neither join nor fetch, and the others log it.
#[test]
fn a_node_with_the_wrong_secret_gets_nothing() {
    if !require("cluster_wrong_secret", TOOLS, true) {
        return;
    }
    let (work, mut reg, info) = registry_with_images("pd-ws");
    let ports = Ports::free(IPS[0]);
    let env = cluster_env(SECRET);
    let nodes = start_nodes(work.path(), &reg.addr, &IPS[..2], &IPS, ports, &env);
    all_ready(&nodes);
    let image = format!("{}/test/single:v1", reg.addr);
    nodes[0].containerd.pull(&nodes[0].hosts, &image);
    let layer = info["single"]["layers"][0]["digest"].as_str().unwrap().to_owned();
    let a_id = peer_id(&nodes[0].peerd);
    wait("B resolves A", Duration::from_secs(30), || resolves(&nodes[1].peerd, &layer).contains(&a_id));

    let mut bad_env = env.clone();
    bad_env[0] = ("PEERD_P2P__SECRET", "another-secret-entirely-0000");
    let outsider = start_nodes(work.path(), &reg.addr, &IPS[2..], &IPS, ports, &bad_env).pop().unwrap();
    reg.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(resolves(&outsider.peerd, &layer).is_empty(), "the outsider cannot resolve");
    let log = outsider.peerd.log_text();
    assert!(
        log.contains("peerd serving") && !log.contains("peerd ready"),
        "a wrong-secret node never says ready:\n{log}"
    );
    assert_eq!(get_json(&format!("http://{}/debug/p2p", outsider.peerd.http))["connected_peers"], 0);
    let r = curl("GET", &outsider.peerd.url(&format!("/v2/test/single/blobs/{layer}?ns={}", reg.addr)), &[]);
    assert_ne!(r.status, 200, "the outsider cannot fetch");
    wait("the others log the outsider", Duration::from_secs(30), || {
        nodes.iter().any(|n| n.peerd.log_text().contains("rejected an incoming p2p connection"))
    });

    // Straight at A's peer listener: unsigned, and signed with the wrong key → 401, logged.
    let target = format!("/v2/test/single/blobs/{layer}?ns={}", reg.addr);
    let r = curl("GET", &nodes[0].peerd.peer_url(&target), &[("X-MS-Peerd-RequestFromPeer", "true")]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHORIZED"));
    let wrong = peerd::peer::auth::ClusterKey::derive(b"another-secret-entirely-0000");
    let ts = peerd::peer::auth::unix_now();
    let sig = wrong.sign_request("GET", &target, "", ts, "n1", "intruder");
    let ts = ts.to_string();
    let headers = [
        ("X-MS-Peerd-RequestFromPeer", "true"),
        ("X-MS-Peerd-Node", "intruder"),
        ("X-Peerd-Timestamp", ts.as_str()),
        ("X-Peerd-Nonce", "n1"),
        ("X-Peerd-Signature", sig.as_str()),
    ];
    assert_eq!(curl("GET", &nodes[0].peerd.peer_url(&target), &headers).status, 401);
    assert!(nodes[0].peerd.log_text().contains("rejected a peer request"));
    assert!(nodes[0].peerd.metric("peerd_peer_auth_failures_total", &["kind=\"http\""]) >= 2.0);
    // The right key works (and is served from A's local store).
    let right = peerd::peer::auth::ClusterKey::derive(SECRET.as_bytes());
    let sig = right.sign_request("GET", &target, "", ts.parse().unwrap(), "n1", "friend");
    let headers = [
        ("X-MS-Peerd-RequestFromPeer", "true"),
        ("X-MS-Peerd-Node", "friend"),
        ("X-Peerd-Timestamp", ts.as_str()),
        ("X-Peerd-Nonce", "n1"),
        ("X-Peerd-Signature", sig.as_str()),
    ];
    let r = curl("GET", &nodes[0].peerd.peer_url(&target), &headers);
    assert_eq!(r.status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), layer);
    assert!(r.header("x-peerd-signature").is_some(), "A signs its answer");
}
