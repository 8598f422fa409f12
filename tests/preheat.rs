//! Preheat against real components: three lab nodes (loopback addresses), each with its own
//! containerd, a real registry behind a byte-counting proxy, and the `peerd preheat` CLI.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "integration-test-preheat-secret";
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

fn preheat_cli(node: &Peerd, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerd"))
        .arg("preheat")
        .args(["--addr", &node.url("")])
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Bytes of the image: manifest, config and layers.
fn image_bytes(info: &serde_json::Value, image: &str) -> u64 {
    let layers: u64 = image_layers(info, image).iter().map(|(_, s)| s).sum();
    layers + info[image]["manifest"]["size"].as_u64().unwrap() + info[image]["config"]["size"].as_u64().unwrap()
}

/// Digests in the node's containerd content store (`ctr content ls`).
fn content(n: &Node) -> String {
    String::from_utf8_lossy(&n.containerd.ctr(&["content", "ls"]).stdout).into_owned()
}

/// Every node sees the other two as preheat targets.
fn wait_targets(nodes: &[Node]) {
    for n in nodes {
        wait("the other nodes announced as preheat targets", Duration::from_secs(30), || {
            resolves(&n.peerd, "peerd/nodes/0/0").len() == nodes.len() - 1
        });
    }
}

fn blob_requests(n: &Node) -> f64 {
    n.peerd.metric("peerd_requests_total", &["handler=\"blobs\""])
}

#[test]
fn preheat_two_copies_into_containerd_with_the_registry_sending_the_image_once() {
    if !require("preheat_copies", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-ph");
    let proxy = CountingProxy::start(&reg.addr, 50_000_000);
    let size = image_bytes(&info, "multi");
    let image = format!("{}/test/multi:v1", proxy.addr);
    let layers = image_layers(&info, "multi");
    let manifest = info["multi"]["manifest"]["digest"].as_str().unwrap().to_owned();
    let config = info["multi"]["config"]["digest"].as_str().unwrap().to_owned();

    let ports = Ports::free(IPS[0]);
    let nodes = start_nodes(work.path(), &proxy.addr, &IPS, &IPS, ports, &cluster_env(SECRET));
    all_ready(&nodes);
    wait_targets(&nodes);

    let before = proxy.sent();
    let out = preheat_cli(&nodes[0].peerd, &["--copies", "2", "--wait", &image]);
    let out_text = text(&out);
    eprintln!("{out_text}");
    assert!(out.status.success(), "preheat failed:\n{out_text}\n{}", nodes[0].peerd.log_text());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last: Vec<&str> = stdout.lines().rev().take(2).collect();
    assert_eq!(last.iter().filter(|l| l.contains("done in")).count(), 2, "two nodes report done:\n{out_text}");
    let egress = proxy.sent() - before;

    // Exactly two nodes hold every blob of the image in containerd; the third holds none.
    let holders: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            let c = content(n);
            let all =
                layers.iter().all(|(d, _)| c.contains(d.as_str())) && c.contains(&config) && c.contains(&manifest);
            let none = layers.iter().all(|(d, _)| !c.contains(d.as_str()));
            assert!(all || none, "a node holds part of the image:\n{c}");
            all
        })
        .collect();
    assert_eq!(holders.len(), 2, "two copies");
    // The preheated content is advertised like any other: the third node finds both holders.
    let other = nodes.iter().find(|n| !holders.iter().any(|h| std::ptr::eq(*h, *n))).unwrap();
    let holder_ids: Vec<String> = holders.iter().map(|h| peer_id(&h.peerd)).collect();
    wait("the third node resolves the preheated layer to both holders", Duration::from_secs(30), || {
        let found = resolves(&other.peerd, &manifest);
        let layer = resolves(&other.peerd, &layers[0].0);
        holder_ids.iter().all(|id| found.contains(id) && layer.contains(id))
    });
    // Each byte really is the layer (containerd verified the digest on commit; check one again).
    let (big, big_size) = layers.iter().max_by_key(|(_, s)| *s).unwrap();
    for n in &holders {
        let got = n.containerd.ctr(&["content", "get", big]).stdout;
        assert_eq!((got.len() as u64, format!("sha256:{}", sha256_hex(&got))), (*big_size, big.clone()));
    }
    eprintln!("registry sent {egress} bytes for two copies of a {size}-byte image");
    assert!(egress as f64 <= 1.15 * size as f64, "registry egress {egress} > 1.15 x {size}");

    // The content is held by a lease that expires (containerd.io/gc.expire), one per node.
    for n in &holders {
        let leases = String::from_utf8_lossy(&n.containerd.ctr(&["leases", "ls"]).stdout).into_owned();
        assert!(
            leases.contains("peerd-preheat-") && leases.contains("containerd.io/gc.expire="),
            "no preheat lease:\n{leases}"
        );
    }
    // A synchronous garbage collection (deleting a throw-away lease with --sync runs one) keeps
    // the content: the preheat lease holds it.
    for n in &holders {
        let id = "pd-test-gc";
        assert!(n.containerd.ctr(&["leases", "create", "--id", id]).status.success());
        assert!(n.containerd.ctr(&["leases", "delete", "--sync", id]).status.success());
        assert!(content(n).contains(big.as_str()), "the lease kept the layer through a collection");
    }

    // A later pull on a holder fetches no layer: containerd finds every blob locally.
    for n in &holders {
        let (blobs_before, sent_before) = (blob_requests(n), proxy.sent());
        n.containerd.pull(&n.hosts, &image);
        assert_eq!(blob_requests(n), blobs_before, "the pull asked the mirror for blobs");
        let sent = proxy.sent() - sent_before;
        assert!(sent < 64 << 10, "the registry sent {sent} bytes for a preheated pull");
    }
    // Once the lease is gone, the image the pull recorded keeps its content (the manifests'
    // gc references): delete the preheat lease with a synchronous collection.
    let n = holders[0];
    let leases = String::from_utf8_lossy(&n.containerd.ctr(&["leases", "ls", "-q"]).stdout).into_owned();
    let lease = leases.lines().find(|l| l.starts_with("peerd-preheat-")).unwrap().to_owned();
    assert!(n.containerd.ctr(&["leases", "delete", "--sync", &lease]).status.success());
    let c = content(n);
    assert!(layers.iter().all(|(d, _)| c.contains(d.as_str())), "the pulled image keeps its layers:\n{c}");
    // Metrics: done twice (on the holders), requested once (on the requester).
    let done: f64 = nodes.iter().map(|n| n.peerd.metric("peerd_preheats_total", &["outcome=\"done\""])).sum();
    assert_eq!(done, 2.0);
    assert_eq!(nodes[0].peerd.metric("peerd_preheats_total", &["outcome=\"requested\""]), 1.0);
    let written: f64 = nodes.iter().map(|n| n.peerd.metric("peerd_preheat_bytes_total", &[])).sum();
    assert!(written >= 2.0 * (size - info["multi"]["manifest"]["size"].as_u64().unwrap()) as f64, "{written}");
    // The events (P2PPreheat) are in the holders' logs (no Kubernetes here: the log sink).
    for n in &holders {
        assert!(n.peerd.log_text().contains("P2PPreheat"), "no P2PPreheat event");
    }
}

#[test]
fn preheat_is_refused_for_registries_that_are_not_mirrored_and_bad_requests() {
    if !require("preheat_refused", TOOLS, true) {
        return;
    }
    let (work, reg, _info) = registry_with_images("pd-phr");
    let ctr = Containerd::start(&work.path().join("ctr"));
    let args = [
        "--mirror-host",
        &reg.addr,
        "--plain-http-host",
        &reg.addr,
        "--containerd-socket",
        ctr.socket.to_str().unwrap(),
    ];
    let node = Peerd::start("127.0.0.2", &args, &cluster_env(SECRET));

    let out = preheat_cli(&node, &["ghcr.io/some/app:v1", "--wait"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not mirrored"), "{}", text(&out));
    let out = preheat_cli(&node, &[&format!("{}/test/nothing-here:v1", reg.addr)]);
    assert!(!out.status.success() && text(&out).contains("404"), "{}", text(&out));
    for (body, want) in [
        ("{\"images\": []}", "no image"),
        ("{\"images\": [\"x\"], \"evil\": 1}", "unknown field"),
        ("{\"images\": [\"127.0.0.1:1/a:v1\"], \"platform\": \"linux\"}", "os/arch"),
    ] {
        let o = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "-H", "content-type: application/json", "-d", body])
            .arg(node.url("/preheat"))
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(t.ends_with("400") && t.contains(want), "{body}: {t}");
    }
    // A body past the bound is refused before it is parsed.
    let big = format!("{{\"images\": [\"{}\"]}}", "a".repeat(64 << 10));
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "content-type: application/json"])
        .args(["--data-binary", &big])
        .arg(node.url("/preheat"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).starts_with('4'), "{}", String::from_utf8_lossy(&o.stdout));
    // An index without the asked platform: the job fails and says why; exit status 1.
    let out = preheat_cli(&node, &["--platform", "linux/s390x", "--wait", &format!("{}/test/index:v1", reg.addr)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no manifest for platform linux/s390x"), "{}", text(&out));
    // The peer listener does not take an unsigned job.
    let o = curl(
        "POST",
        &node.peer_url(&format!("/preheat/x?image={}%2Ftest%2Fsingle%40sha256%3A{}", reg.addr, "a".repeat(64))),
        &[],
    );
    assert_eq!(o.status, 401);
    assert_eq!(ctr_content_count(&ctr), 0, "nothing was written");
}

fn ctr_content_count(c: &Containerd) -> usize {
    String::from_utf8_lossy(&c.ctr(&["content", "ls", "-q"]).stdout).lines().count()
}

#[test]
fn a_node_killed_during_preheat_is_reported_failed_and_the_others_finish() {
    if !require("preheat_kill", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-phk");
    // About 8 MB/s: the image takes ~15 s, so a node can be killed in the middle.
    let proxy = CountingProxy::start(&reg.addr, 8_000_000);
    let image = format!("{}/test/multi:v1", proxy.addr);
    let layers = image_layers(&info, "multi");
    let ports = Ports::free(IPS[0]);
    let mut env = cluster_env(SECRET);
    env.push(("PEERD_SWARM__TAKEOVER", "2s"));
    let mut nodes = start_nodes(work.path(), &proxy.addr, &IPS, &IPS, ports, &env);
    all_ready(&nodes);
    wait_targets(&nodes);

    let mut child = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(["preheat", "--all", "--wait", "--addr", &nodes[0].peerd.url(""), &image])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let id = first.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned();
    assert!(first.contains("3 node(s)"), "{first}");
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    // Once the victim has written some bytes, kill it.
    let victim = nodes[2].peerd.peer.to_string();
    wait("the victim is preheating", Duration::from_secs(60), || {
        let p = get_json(&nodes[0].peerd.url(&format!("/preheat/{id}")));
        p["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["addr"] == victim.as_str() && n["bytes"].as_u64() > Some(0))
    });
    nodes[2].peerd.stop_hard();
    let status = child.wait().unwrap();
    let out = rest.join().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    eprintln!("{out}\n{err}");
    assert!(!status.success(), "a failed node makes the command fail");
    assert!(err.contains("1 of the chosen nodes failed"), "{err}");
    let last: Vec<&str> = out.lines().rev().take(3).collect();
    assert!(last.iter().any(|l| l.contains(&victim) && l.contains("FAILED")), "{out}");
    assert_eq!(last.iter().filter(|l| l.contains("done in")).count(), 2, "{out}");
    for n in &nodes[..2] {
        let c = content(n);
        assert!(layers.iter().all(|(d, _)| c.contains(d.as_str())), "a survivor lacks a layer:\n{c}");
    }
}

/// `preheat.rate` bounds what preheats read, while a live pull on the same node is not slowed.
#[test]
fn preheat_reads_at_its_rate_and_live_pulls_do_not_wait() {
    if !require("preheat_rate", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-phrt");
    let ctr = Containerd::start(&work.path().join("ctr"));
    let args = [
        "--mirror-host",
        &reg.addr,
        "--plain-http-host",
        &reg.addr,
        "--containerd-socket",
        ctr.socket.to_str().unwrap(),
    ];
    let rate = 16u64 << 20;
    let mut env = cluster_env(SECRET);
    env.push(("PEERD_PREHEAT__RATE", "16777216"));
    let node = Peerd::start("127.0.0.2", &args, &env);
    let hosts = work.path().join("hosts");
    hosts_toml(&hosts, &reg.addr, &node.http.to_string());

    let size = image_bytes(&info, "multi");
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(["preheat", "--wait", "--addr", &node.url(""), &format!("{}/test/multi:v1", reg.addr)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A live pull meanwhile: not queued behind the preheat, not limited by its rate.
    std::thread::sleep(Duration::from_secs(2));
    let t = std::time::Instant::now();
    let pulled =
        ctr.ctr(&["image", "pull", "--hosts-dir", hosts.to_str().unwrap(), &format!("{}/test/single:v1", reg.addr)]);
    let pull_time = t.elapsed();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    let status = child.wait().unwrap();
    let took = started.elapsed();
    assert!(status.success());
    eprintln!("preheat of {size} bytes at {rate} B/s took {took:?}; a live pull meanwhile {pull_time:?}");
    // One burst of 16 MiB, then the rate (a little slack for rounding).
    let floor = Duration::from_secs_f64((size - rate) as f64 / rate as f64 * 0.9);
    assert!(took >= floor, "preheat took {took:?}, faster than its rate allows ({floor:?})");
    assert!(pull_time < Duration::from_secs(5), "the live pull waited: {pull_time:?}");
}

#[test]
fn preheat_help_documents_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_peerd")).args(["preheat", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["IMAGE", "--platform", "--copies", "--all", "--wait", "--addr", "--timeout", "http://127.0.0.1:5000"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // --copies and --all exclude each other; an image is required.
    let both =
        Command::new(env!("CARGO_BIN_EXE_peerd")).args(["preheat", "--copies", "2", "--all", "x"]).output().unwrap();
    assert_eq!(both.status.code(), Some(2));
    let none = Command::new(env!("CARGO_BIN_EXE_peerd")).args(["preheat"]).output().unwrap();
    assert_eq!(none.status.code(), Some(2));
    // Nothing listening: a clear message, exit 1.
    let port = free_port("127.0.0.1");
    let out = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(["preheat", "--addr", &format!("http://127.0.0.1:{port}"), "registry.example.com/app:v1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach peerd at"), "{}", text(&out));
}
