//! Regression tests of the security findings (docs/security.md): content leaves a node only for
//! its own containerd (the loopback front end) or for peers that prove the cluster secret.
//! Each test reproduces an attack that worked before the listener split and the policy fixes.

mod common;
use common::*;
use peerd::peer::auth::{unix_now, ClusterKey};
use std::io::Write;
use std::time::Duration;

const SECRET: &str = "security-test-cluster-secret-01";
const IPS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];
const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

/// Headers of a peer request signed with `key` (or unsigned headers when `key` is `None`).
fn signed(key: Option<&ClusterKey>, target: &str, range: &str, nonce: &str) -> Vec<(String, String)> {
    let ts = unix_now();
    let mut h = vec![
        ("X-MS-Peerd-RequestFromPeer".to_owned(), "true".to_owned()),
        ("X-MS-Peerd-Node".to_owned(), "tester".to_owned()),
        ("X-Peerd-Timestamp".to_owned(), ts.to_string()),
        ("X-Peerd-Nonce".to_owned(), nonce.to_owned()),
    ];
    if let Some(k) = key {
        h.push(("X-Peerd-Signature".to_owned(), k.sign_request("GET", target, range, ts, nonce, "tester")));
    }
    if !range.is_empty() {
        h.push(("Range".to_owned(), range.to_owned()));
    }
    h
}

fn get(url: &str, headers: &[(String, String)]) -> Exchange {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    curl("GET", url, &h)
}

/// A holds an image. Nobody without the secret gets any of it from A's node-facing listeners
/// (peer listener: every route; metrics listener: no debug pages), A's peer endpoints are not
/// on its front end, and a signed request can neither be replayed nor have its Range changed.
#[test]
fn node_facing_listeners_give_nothing_without_the_secret() {
    if !require("security_listeners", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-sec");
    let ports = Ports::free(IPS[0]);
    let nodes = start_nodes(work.path(), &reg.addr, &IPS, &IPS, ports, &cluster_env(SECRET));
    all_ready(&nodes);
    let a = &nodes[0];
    a.containerd.pull(&a.hosts, &format!("{}/test/single:v1", reg.addr));
    let layer = info["single"]["layers"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = info["single"]["manifest"].as_str().map(str::to_owned);
    let blob = format!("/v2/test/single/blobs/{layer}?ns={}", reg.addr);

    // The peer listener: unsigned requests for every kind of content get 401 and no bytes.
    let mut targets = vec![
        blob.clone(),
        format!("/v2/test/single/manifests/v1?ns={}", reg.addr),
        "/blobs-chunk/0000/0".to_owned(),
        "/blobs-chunk/0000/0?fetch=1&wait=100".to_owned(),
        format!("/swarm/{layer}/2097152"),
        format!("/swarm/{layer}/2097152/0?wait=10"),
        "/debug/p2p".to_owned(),
        format!("/debug/resolve?key={layer}"),
        "/metrics/prometheus".to_owned(),
        "/no-such-route".to_owned(),
    ];
    if let Some(m) = manifest {
        targets.push(format!("/v2/test/single/manifests/{m}?ns={}", reg.addr));
    }
    for t in &targets {
        let r = get(&a.peerd.peer_url(t), &signed(None, t, "", "unsigned-1"));
        assert_eq!(r.status, 401, "{t}: unauthenticated request on the peer listener");
        assert!(!r.body.windows(4).any(|w| w == b"\"sch" || w == b"ustar"), "{t}: no content");
        let wrong = ClusterKey::derive(b"not-the-cluster-secret-000");
        let r = get(&a.peerd.peer_url(t), &signed(Some(&wrong), t, "", &format!("wrong-{}", t.len())));
        assert_eq!(r.status, 401, "{t}: wrong key on the peer listener");
    }
    // The metrics listener: metrics and health only; the debug pages (who holds what) are not there.
    for t in ["/debug/p2p", &format!("/debug/resolve?key={layer}")] {
        let r = curl("GET", &format!("http://{}{t}", a.peerd.metrics), &[]);
        assert_eq!(r.status, 404, "{t} on the metrics listener");
    }
    assert_eq!(curl("GET", &format!("http://{}/metrics/prometheus", a.peerd.metrics), &[]).status, 200);
    // The front end (loopback) has no peer endpoints: /blobs-chunk and /swarm are not routes there,
    // and the peer header does not turn a client request into a peer one.
    for t in ["/blobs-chunk/0000/0?fetch=1", &format!("/swarm/{layer}/2097152/0")] {
        assert_eq!(curl("GET", &a.peerd.url(t), &[]).status, 404, "{t} on the front end");
    }

    // The right key works, once: the same request again is a replay.
    let right = ClusterKey::derive(SECRET.as_bytes());
    let headers = signed(Some(&right), &blob, "", "replay-nonce-1");
    let r = get(&a.peerd.peer_url(&blob), &headers);
    assert_eq!(r.status, 200, "signed request");
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), layer);
    assert!(r.header("x-peerd-signature").is_some(), "A signs its answer");
    let r = get(&a.peerd.peer_url(&blob), &headers);
    assert_eq!((r.status, r.body.len() < 200), (401, true), "replayed request");
    assert!(a.peerd.metric("peerd_peer_auth_failures_total", &["kind=\"replay\""]) >= 1.0);
    // Range is signed: a request signed for 10 bytes cannot be stretched to more.
    let mut headers = signed(Some(&right), &blob, "bytes=0-9", "range-nonce-1");
    let r = get(&a.peerd.peer_url(&blob), &headers);
    assert_eq!((r.status, r.body.len()), (206, 10), "signed range");
    headers = signed(Some(&right), &blob, "bytes=0-9", "range-nonce-2");
    for h in headers.iter_mut().filter(|(k, _)| k == "Range") {
        h.1 = "bytes=0-99999".into();
    }
    assert_eq!(get(&a.peerd.peer_url(&blob), &headers).status, 401, "altered Range");
    // And B, a real peer with the secret, still fetches from A (through its own front end).
    let b = &nodes[1];
    wait("B resolves A", Duration::from_secs(30), || resolves(&b.peerd, &layer).contains(&peer_id(&a.peerd)));
    let r = curl("GET", &b.peerd.url(&blob), &[]);
    assert_eq!((r.status, format!("sha256:{}", sha256_hex(&r.body))), (200, layer.clone()));
    assert!(b.peerd.metric("peerd_served_bytes_total", &["source=\"peer\""]) > 0.0, "B's bytes came from A");
}

/// Without a cluster secret, p2p stays off (a working single-node mirror that says so); with
/// `--insecure-no-secret` it runs, loudly. A secret-less node never opens a peer listener, so
/// `/blobs-chunk?fetch=1` (the SAS bypass) cannot be reached at all.
#[test]
fn no_secret_means_no_p2p_unless_asked() {
    if !require("security_no_secret", &["curl"], false) {
        return;
    }
    let ip = "127.0.0.1";
    let p = Peerd::start(ip, &["--containerd-socket", "/nonexistent.sock"], &[]);
    assert!(p.log_text().contains("p2p is OFF: no cluster secret"), "{}", p.log_text());
    assert!(std::net::TcpStream::connect(p.peer).is_err(), "no peer listener without p2p");
    assert!(std::net::TcpStream::connect(p.p2p).is_err(), "no libp2p listener without p2p");
    assert_eq!(curl("GET", &p.url("/v2/"), &[]).status, 200, "the mirror works");
    assert_eq!(curl("GET", &p.url("/blobs-chunk/00/0?fetch=1"), &[]).status, 404);
    assert_eq!(curl("GET", &p.url("/debug/p2p"), &[]).status, 404, "p2p is disabled");

    let q = Peerd::start(ip, &["--containerd-socket", "/nonexistent.sock", "--insecure-no-secret"], &[]);
    assert!(q.log_text().contains("WITHOUT A CLUSTER SECRET"), "{}", q.log_text());
    assert!(std::net::TcpStream::connect(q.peer).is_ok(), "peer listener with --insecure-no-secret");
    assert_eq!(
        get_json(&format!("http://{}/debug/p2p", q.http))["peer_id"].as_str().map(|s| !s.is_empty()),
        Some(true)
    );
}

/// A registry (here a fake one, as an attacker on the network would run) that redirects blobs
/// and points its token realm at the cloud metadata address, in IPv4 and IPv6 disguises, and
/// serves a text/plain body as a tag's manifest. peerd refuses all of it before connecting.
#[test]
fn upstream_redirects_and_realms_obey_the_address_policy() {
    if !require("security_policy", &["curl"], false) {
        return;
    }
    let targets = [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::169.254.169.254]/x",
        "http://[64:ff9b::a9fe:a9fe]/x",
        "http://[2002:a9fe:a9fe::1]/x",
        "http://[::ffff:169.254.169.254]/x",
    ];
    let fake = FakeUpstream::start(move |seen| {
        let t = &seen.target;
        if let Some(i) = t.strip_prefix("/v2/redirect/blobs/sha256:") {
            let n: usize = i[..1].parse().unwrap_or(0);
            return Reply::status(307, &[("Location", targets[n % targets.len()])]);
        }
        if let Some(i) = t.strip_prefix("/v2/realm") {
            let n: usize = i[..1].parse().unwrap_or(0);
            let realm = format!("Bearer realm=\"{}\",service=\"x\"", targets[n % targets.len()]);
            return Reply::status(401, &[("WWW-Authenticate", realm.as_str())]);
        }
        if t.starts_with("/v2/plain/manifests/") {
            return Reply::ok("text/plain", "ami-id: not a manifest\n");
        }
        Reply::status(404, &[])
    });
    let p = Peerd::start(
        "127.0.0.1",
        &[
            "--mirror-host",
            &fake.addr,
            "--plain-http-host",
            &fake.addr,
            "--containerd-socket",
            "/nonexistent.sock",
            "--no-p2p",
        ],
        &[("PEERD_UPSTREAM__CONNECT_TIMEOUT", "10s"), ("PEERD_UPSTREAM__FAILURE_THRESHOLD", "100")],
    );
    for (i, target) in targets.iter().enumerate() {
        let digest = format!("sha256:{i}{}", "0".repeat(63));
        let r = curl("GET", &p.url(&format!("/v2/redirect/blobs/{digest}?ns={}", fake.addr)), &[]);
        assert_eq!((r.status, r.error_code().as_str()), (502, "DENIED"), "redirect to {target}");
        assert!(String::from_utf8_lossy(&r.body).contains("address policy"), "{}", String::from_utf8_lossy(&r.body));
        let r = curl("GET", &p.url(&format!("/v2/realm{i}/manifests/v1?ns={}", fake.addr)), &[]);
        assert_eq!((r.status, r.error_code().as_str()), (502, "DENIED"), "token realm {target}");
    }
    let r = curl("GET", &p.url(&format!("/v2/plain/manifests/v1?ns={}", fake.addr)), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (502, "MANIFEST_INVALID"), "text/plain is not a manifest");
    // An `ns` naming a metadata address directly (a node that mirrors any registry).
    let any = Peerd::start(
        "127.0.0.1",
        &["--mirror-any-host", "--containerd-socket", "/nonexistent.sock", "--no-p2p"],
        &[("PEERD_UPSTREAM__CONNECT_TIMEOUT", "10s")],
    );
    for ns in ["169.254.169.254", "%5B64:ff9b::a9fe:a9fe%5D", "%5B::169.254.169.254%5D", "127.0.0.1:1"] {
        let r = curl("GET", &any.url(&format!("/v2/x/manifests/v1?ns={ns}")), &[]);
        assert_eq!((r.status, r.error_code().as_str()), (502, "DENIED"), "ns={ns}");
    }
}

/// /blobs refuses metadata addresses in every IPv6 disguise, even when listed.
#[test]
fn blobs_refuses_disguised_metadata_addresses() {
    if !require("security_blobs_v6", &["curl"], false) {
        return;
    }
    let forms = ["[::169.254.169.254]", "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::1]", "[::ffff:a9fe:a9fe]"];
    let allowed: Vec<String> = forms.iter().map(|f| format!("\"http://{f}\"")).collect();
    let allowed = format!("[{}]", allowed.join(","));
    let p = Peerd::start(
        "127.0.0.1",
        &["--containerd-socket", "/nonexistent.sock", "--no-p2p"],
        &[("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str())],
    );
    for f in forms {
        let r = curl("GET", &p.url(&format!("/blobs/http://{f}/latest/meta-data")), &[]);
        assert_eq!((r.status, r.error_code().as_str()), (403, "DENIED"), "{f}");
    }
}

/// The libp2p port holds at most its configured connections: 300 raw TCP connections that never
/// finish a handshake do not become 300 file descriptors in peerd.
#[test]
fn p2p_port_bounds_inbound_connections() {
    if !require("security_p2p_limits", &["curl"], false) {
        return;
    }
    let p = Peerd::start(
        "127.0.0.1",
        &["--containerd-socket", "/nonexistent.sock"],
        &[("PEERD_P2P__SECRET", SECRET), ("PEERD_P2P__MAX_PENDING_INCOMING", "8"), ("PEERD_P2P__MAX_CONNECTIONS", "8")],
    );
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", p.pid())).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = std::net::TcpStream::connect(p.p2p) {
            let _ = s.write_all(b"/multistream/1.0.0\n");
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = fds();
    assert!(held.len() >= 250, "the test opened its connections ({})", held.len());
    assert!(during < before + 60, "peerd holds {during} fds (before: {before}) for {} held connections", held.len());
    drop(held);
    assert_eq!(curl("GET", &p.url("/healthz"), &[]).status, 200);
}
