//! Reliability on a bad day (issue 14): hostile clients, corrupt peers, full disks and upstream
//! outages, each against real components (docker-registry, containerd, peerd processes).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const CONTAINERD_TOOLS: &[&str] =
    &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

fn skopeo_copy(from: &str, to: &str) {
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", from, to])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Finding 1: any client could open the per-registry breaker with requests the registry answers
/// 500 (a manifest GET by a layer's digest), and while it was open tags resolved to the local
/// image record — an older image. Ten such requests must leave the breaker closed and the tag
/// must come from the registry; only a real outage serves the local record, marked stale.
#[test]
fn client_chosen_500s_do_not_open_the_breaker_or_roll_tags_back() {
    if !require("breaker_tag_rollback", CONTAINERD_TOOLS, true) {
        return;
    }
    let (work, mut reg, info) = registry_with_images("pd-rb");
    let ctr = Containerd::start(&work.path().join("c"));
    let peerd = Peerd::start(
        "127.0.0.1",
        &[
            "--mirror-host",
            &reg.addr,
            "--plain-http-host",
            &reg.addr,
            "--containerd-socket",
            ctr.socket.to_str().unwrap(),
        ],
        &[
            ("PEERD_UPSTREAM__FAILURE_THRESHOLD", "3"),
            ("PEERD_UPSTREAM__FAILURE_COOLDOWN", "30s"),
            ("PEERD_LOG__LEVEL", "info,peerd=debug"),
        ],
    );
    let hosts = work.path().join("hosts");
    hosts_toml(&hosts, &reg.addr, &peerd.http.to_string());
    // The node's image record: single:v1 as it was at pull time.
    ctr.pull(&hosts, &format!("{}/test/single:v1", reg.addr));
    let old = info["single"]["manifest"]["digest"].as_str().unwrap().to_owned();
    // The registry moves the tag to another image.
    skopeo_copy(&format!("docker://{}/test/multi:v1", reg.addr), &format!("docker://{}/test/single:v1", reg.addr));
    let new = info["multi"]["manifest"]["digest"].as_str().unwrap().to_owned();
    assert_ne!(old, new);

    let ns = reg.addr.replace(':', "%3A");
    let layer = info["single"]["layers"][0]["digest"].as_str().unwrap();
    for i in 0..10 {
        let r = curl("GET", &peerd.url(&format!("/v2/test/single/manifests/{layer}?ns={ns}")), &[]);
        assert!(
            r.status >= 500,
            "request {i}: the registry answers a layer asked as a manifest with 5xx: {}",
            r.status
        );
    }
    let text = peerd.metrics_text();
    assert_eq!(sum_metric(&text, "peerd_upstream_errors_total", &["kind=\"circuit_open\""]), 0.0, "breaker opened");
    let tag = curl("GET", &peerd.url(&format!("/v2/test/single/manifests/v1?ns={ns}")), &[]);
    assert_eq!(tag.status, 200);
    assert_eq!(tag.header("docker-content-digest"), Some(new.as_str()), "the tag must come from the registry");
    assert!(tag.header("warning").is_none());
    assert_eq!(peerd.metric("peerd_stale_tags_total", &[]), 0.0);
    // And blobs still flow from the upstream (no 503 from a resting host).
    let (big, _) = image_layers(&info, "multi").into_iter().max_by_key(|(_, s)| *s).unwrap();
    let blob = curl("GET", &peerd.url(&format!("/v2/test/multi/blobs/{big}?ns={ns}")), &[]);
    assert_eq!((blob.status, format!("sha256:{}", sha256_hex(&blob.body))), (200, big));

    // A real outage: the local record answers, marked stale, logged and counted.
    reg.stop();
    let tag = curl("GET", &peerd.url(&format!("/v2/test/single/manifests/v1?ns={ns}")), &[]);
    assert_eq!(tag.status, 200, "{}", String::from_utf8_lossy(&tag.body));
    assert_eq!(tag.header("docker-content-digest"), Some(old.as_str()));
    assert!(tag.header("warning").is_some_and(|w| w.contains("Stale")), "{:?}", tag.headers);
    assert_eq!(peerd.metric("peerd_stale_tags_total", &["source=\"local\""]), 1.0);
    assert!(peerd.log_text().contains("serving a possibly stale tag"));
}

const SECRET: &str = "reliability-test-cluster-secret";

/// The file containerd keeps a committed blob in (`<root>/io.containerd.content.v1.content`).
fn content_file(ctr: &Containerd, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    ctr.dir.join("root/io.containerd.content.v1.content/blobs/sha256").join(hex)
}

/// Finding 3: one flipped byte in node A's containerd copy of a layer. B's pull through peerd
/// (real containerd) must still succeed: the mismatch rests A at once (counted), containerd's
/// resumed Range request is not answered from A again, and the pulled layer is the right one.
#[test]
fn one_corrupt_peer_does_not_fail_other_nodes_pulls() {
    if !require("corrupt_peer", CONTAINERD_TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-cp");
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let ports = Ports::free(ips[0]);
    let env = cluster_env(SECRET);
    let nodes = start_nodes(work.path(), &reg.addr, &ips, &ips, ports, &env);
    all_ready(&nodes);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let image = format!("{}/test/multi:v1", reg.addr);
    let (layer, size) = image_layers(&info, "multi").into_iter().max_by_key(|(_, s)| *s).unwrap();
    a.containerd.pull(&a.hosts, &image);
    let a_id = peer_id(&a.peerd);
    for n in [b, c] {
        wait("the others resolve A for the layer", Duration::from_secs(30), || {
            resolves(&n.peerd, &layer).contains(&a_id)
        });
    }

    // Flip the last byte of A's copy (containerd verified it at commit; this is bit rot).
    let path = content_file(&a.containerd, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, size);
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    // B: containerd's pull (whole read from A fails verification, containerd resumes the rest
    // with a Range request) succeeds, and A is rested.
    b.containerd.pull(&b.hosts, &image);
    let text = b.peerd.metrics_text();
    assert!(sum_metric(&text, "peerd_peer_rests_total", &["reason=\"digest_mismatch\""]) >= 1.0, "A rested");
    assert!(sum_metric(&text, "peerd_digest_mismatches_total", &["source=\"peer\""]) >= 1.0);
    assert!(sum_metric(&text, "peerd_peer_fetch_failures_total", &["reason=\"digest_mismatch\""]) >= 1.0);
    assert!(b.peerd.log_text().contains("resting it"));
    let pulled = std::fs::read(content_file(&b.containerd, &layer)).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&pulled)), layer, "B's containerd holds the right layer");

    // C, with plain HTTP: the first whole read is cut (never a complete wrong body); the next
    // whole read avoids A and is complete; a resumed range comes from the upstream, right.
    let url = c.peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={}", reg.addr.replace(':', "%3A")));
    let first = curl("GET", &url, &[]);
    assert!(!first.curl_ok && (first.body.len() as u64) < size, "a corrupt whole body is cut short");
    let again = curl("GET", &url, &[]);
    assert_eq!((again.status, format!("sha256:{}", sha256_hex(&again.body))), (200, layer.clone()));
    let tail = curl("GET", &url, &[("Range", &format!("bytes={}-", size - 1000))]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, again.body[again.body.len() - 1000..], "the resumed range has the right bytes");
    let text = c.peerd.metrics_text();
    assert_eq!(sum_metric(&text, "peerd_digest_mismatches_total", &["source=\"peer\""]), 1.0, "A asked once");
    assert_eq!(sum_metric(&text, "peerd_peer_rests_total", &["reason=\"digest_mismatch\""]), 1.0);
}
