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

/// Finding 3: one flipped byte in node A's containerd copy of a layer. Other nodes' pulls
/// through peerd (real containerd) must still succeed: A checks a local blob once before it
/// first serves it to a peer and serves a damaged one to nobody. (A peer that lies on the wire
/// is rested by the receiver: unit tests in actors/fetch.rs and src/transfer/sources.rs.)
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

    // Flip a byte near the start of A's copy (containerd verified it at commit; this is bit
    // rot). Early is the hard case: bytes a receiver passes on before the digest can be
    // checked reach its containerd, which keeps the partial download and fails every retry.
    let path = content_file(&a.containerd, &layer);
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, size);
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    // C, with plain HTTP: A hashes its copy before it first serves it to a peer, finds it
    // damaged and does not serve it; C gets the whole layer, right, from the upstream. Ranges too.
    let url = c.peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={}", reg.addr.replace(':', "%3A")));
    let first = curl("GET", &url, &[]);
    assert!(first.curl_ok, "never a cut or wrong body");
    assert_eq!((first.status, format!("sha256:{}", sha256_hex(&first.body))), (200, layer.clone()));
    let tail = curl("GET", &url, &[("Range", &format!("bytes={}-", size - 1000))]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, first.body[first.body.len() - 1000..], "the range has the right bytes");
    let head = curl("GET", &url, &[("Range", "bytes=0-199")]);
    assert_eq!(head.body, first.body[..200], "the damaged region, right");
    let a_text = a.peerd.metrics_text();
    assert!(
        sum_metric(&a_text, "peerd_digest_mismatches_total", &["source=\"local\""]) >= 1.0,
        "A found its copy damaged"
    );
    assert!(a.peerd.log_text().contains("not served to peers"));
    assert_eq!(sum_metric(&a_text, "peerd_peer_served_bytes_total", &[]), 0.0, "A served none of it");

    // B: containerd's pull through its peerd succeeds and holds the right layer.
    b.containerd.pull(&b.hosts, &image);
    let pulled = std::fs::read(content_file(&b.containerd, &layer)).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&pulled)), layer, "B's containerd holds the right layer");
}

/// A small tmpfs mounted for one test, unmounted (lazily, so a still-open file cannot keep it)
/// when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir.to_owned())
    }

    /// Write a file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0x5a; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        let out = Command::new("df").arg("-B1").arg("--output=avail").arg(&self.0).output().unwrap();
        let avail: u64 = String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
        assert!(avail < 64 << 10, "the filesystem is full: {avail} bytes left");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Files under `dir` whose name contains `mark`.
fn files_named(dir: &std::path::Path, mark: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if e.file_name().to_string_lossy().contains(mark) {
                found.push(p);
            }
        }
    }
    found
}

/// Finding 5: with `data_dir` full, /v2 blobs of 1 MiB and more (the swarm path, which spools
/// to disk) came back 200 with 0 bytes. They must stream straight through, complete and
/// verified; so must /blobs reads whose chunks cannot be cached; and leftovers of an earlier
/// run (spools, temporary files) are removed at start — only those.
#[test]
fn a_full_disk_streams_blobs_straight_through() {
    if !require("full_disk", &["docker-registry", "skopeo", "umoci", "busybox", "curl", "mount", "df"], true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-fd");
    let (layer, size) = image_layers(&info, "multi").into_iter().max_by_key(|(_, s)| *s).unwrap();
    assert!(size > 3 << 20, "the test needs a layer larger than the disk: {size}");
    let disk = Tmpfs::mount(&work.path().join("data"), "2m");
    // Leftovers of an earlier run, and a file that is not peerd's.
    let swarm_dir = disk.0.join("swarm");
    std::fs::create_dir_all(&swarm_dir).unwrap();
    let leftover = swarm_dir.join(format!("{}.peerd-spool", "ab".repeat(32)));
    std::fs::write(&leftover, b"partial").unwrap();
    std::fs::write(swarm_dir.join("keep.me"), b"not peerd's").unwrap();
    let meta = disk.0.join("blobs/meta");
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::write(meta.join(format!("{}.peerd-tmp", "cd".repeat(32))), b"partial").unwrap();

    let allowed = format!("[\"http://{}\"]", reg.addr);
    let peerd = Peerd::start_on(
        "127.0.0.1",
        Ports::free("127.0.0.1"),
        Some(&disk.0),
        // p2p on (a node alone): swarming, and its spool, is between nodes.
        &["--mirror-host", &reg.addr, "--plain-http-host", &reg.addr, "--containerd-socket", "/nonexistent.sock"],
        &[
            ("PEERD_P2P__SECRET", SECRET),
            ("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str()),
            ("PEERD_LOG__LEVEL", "info,peerd=debug"),
        ],
    );
    peerd.wait_ready();
    // A lone node streams directly (nobody to swarm with): a second node makes it swarm.
    let boot = peerd.p2p.to_string();
    let other = Peerd::start(
        "127.0.0.1",
        &[
            "--mirror-host",
            &reg.addr,
            "--plain-http-host",
            &reg.addr,
            "--containerd-socket",
            "/nonexistent.sock",
            "--bootstrap-peer",
            &boot,
        ],
        &[("PEERD_P2P__SECRET", SECRET), ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s")],
    );
    wait("the nodes are connected", Duration::from_secs(30), || {
        get_json(&format!("http://{}/debug/p2p", peerd.http))["connected_peers"].as_u64() >= Some(1)
    });
    assert!(!leftover.exists(), "a spool of an earlier run is removed");
    assert!(swarm_dir.join("keep.me").exists(), "a file that is not peerd's stays");
    assert!(files_named(&meta, ".peerd-tmp").is_empty(), "temporary metadata of an earlier run is removed");
    disk.fill();

    let ns = reg.addr.replace(':', "%3A");
    let v2 = curl("GET", &peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={ns}")), &[]);
    assert_eq!(v2.status, 200);
    assert!(v2.curl_ok, "the body was cut");
    assert_eq!(v2.body.len() as u64, size, "complete body");
    assert_eq!(format!("sha256:{}", sha256_hex(&v2.body)), layer, "verified body");
    let tail = curl("GET", &peerd.url(&format!("/v2/test/multi/blobs/{layer}?ns={ns}")), &[("Range", "bytes=1000-")]);
    assert_eq!((tail.status, tail.body.as_slice()), (206, &v2.body[1000..]));
    assert!(peerd.log_text().contains("no disk room for a swarm spool"), "said why it did not spool");

    let url = format!("/blobs/http://{}/v2/test/multi/blobs/{layer}", reg.addr);
    let blobs = curl("GET", &peerd.url(&url), &[]);
    assert_eq!((blobs.status, blobs.body.len() as u64), (200, size));
    assert_eq!(format!("sha256:{}", sha256_hex(&blobs.body)), layer);
    assert!(files_named(&disk.0, ".peerd-spool").is_empty() && files_named(&disk.0, "tmp").is_empty());
    drop(other);
    drop(peerd);
}

/// Finding 8: client-controlled sizes must not make log lines big. A 16 KiB path and an 8 KiB
/// peer node header (on a request the node rejects and logs) stay under 1 KiB per line.
#[test]
fn log_lines_stay_small_whatever_the_client_sends() {
    if !require("log_amplification", &["curl"], false) {
        return;
    }
    let peerd = Peerd::start(
        "127.0.0.1",
        &["--containerd-socket", "/nonexistent.sock"],
        &[("PEERD_P2P__SECRET", SECRET), ("PEERD_LOG__LEVEL", "debug")],
    );
    let long_path = format!("/v2/{}/blobs/sha256:{}", "a/".repeat(8 << 10), "0".repeat(64));
    let r = curl("GET", &peerd.url(&long_path), &[]);
    assert!(r.status >= 400, "{}", r.status);
    let node = "n".repeat(8 << 10);
    let target = format!("/v2/test/app/blobs/sha256:{}?ns=127.0.0.1", "0".repeat(64));
    // Peer requests go to the peer listener, where an unsigned one is rejected and logged.
    let r =
        curl("GET", &peerd.peer_url(&target), &[("X-MS-Peerd-RequestFromPeer", "true"), ("X-MS-Peerd-Node", &node)]);
    assert_eq!(r.status, 401);
    wait("the rejection is logged", Duration::from_secs(5), || peerd.log_text().contains("rejected a peer request"));
    let log = peerd.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1024, "a log line of {longest} bytes: {}", log.lines().max_by_key(|l| l.len()).unwrap());
}

/// Finding 8: an empty `identity.key` (a crash or a full disk mid-write) made peerd exit with a
/// misleading "rsa feature" error, over and over. It must name the file, say what is wrong and
/// how to fix it, and leave the file alone (a new key is a new peer id: the operator decides).
#[test]
fn an_empty_identity_key_is_explained_not_replaced() {
    let data = tempdir("pd-id");
    let key = data.path().join("identity.key");
    std::fs::write(&key, b"").unwrap();
    let port = || format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let out = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(["run", "--data-dir", data.path().to_str().unwrap(), "--containerd-socket", "/nonexistent.sock"])
        .args(["--http-addr", &port(), "--metrics-addr", &port(), "--p2p-addr", &port()])
        .env("PEERD_P2P__SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success(), "peerd must not start without its identity");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(key.to_str().unwrap()) && stderr.contains("is empty"), "{stderr}");
    assert!(stderr.contains("Delete the file"), "{stderr}");
    assert!(!stderr.contains("rsa"), "{stderr}");
    assert_eq!(std::fs::read(&key).unwrap().len(), 0, "not replaced unasked");
}

/// `n` clients that send a GET for `target` and never read the answer.
fn stalled_clients(addr: std::net::SocketAddr, target: &str, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            // A small receive buffer, as a slow client's would fill.
            write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            s
        })
        .collect()
}

/// Established connections whose local port is `port`.
fn established(port: u16) -> usize {
    let out = Command::new("ss").args(["-Htn", "state", "established"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(2).is_some_and(|local| local.ends_with(&format!(":{port}"))))
        .count()
}

/// Finding 2: 150 clients asking for a 40 MB blob and never reading grew peerd's memory by
/// ~1.2 MiB each (measured here before the fix: +181 MiB for 150 on the upstream path; the issue
/// saw +530 MB with other sources) and their connections stayed open forever. Now a stalled
/// response pins at most one source chunk (the digest check holds back one byte, not a chunk;
/// actix gets pieces of at most 256 KiB), measured +138 MiB — bounded here at 1 MiB per client — and the
/// connections are closed after `http.write_timeout`.
#[test]
fn stalled_readers_hold_bounded_memory_and_are_cut_off() {
    if !require("stalled_readers", &["docker-registry", "curl", "ss"], false) {
        return;
    }
    const CLIENTS: usize = 150;
    let work = tempdir("pd-sr");
    let reg = Registry::start(&work.path().join("reg"));
    let data = pattern(40 << 20, 13);
    let digest = reg.push_blob("test/big", &data);
    let args = [&mirror_args(&reg.addr)[..], &["--no-p2p"]].concat();
    let peerd = Peerd::start("127.0.0.1", &args, &[("PEERD_HTTP__WRITE_TIMEOUT", "3s")]);
    let target = format!("/v2/test/big/blobs/{digest}?ns={}", reg.addr.replace(':', "%3A"));
    let whole = curl("GET", &peerd.url(&target), &[]);
    assert_eq!(whole.body.len(), data.len(), "warm-up read");
    std::thread::sleep(Duration::from_millis(500));
    let before = peerd.peak_rss_kib();
    let clients = stalled_clients(peerd.http, &target, CLIENTS);
    wait("every stalled request reached peerd", Duration::from_secs(10), || established(peerd.http.port()) >= CLIENTS);
    // The kernel gives up on them after the write timeout (3 s here).
    let stalled = std::time::Instant::now();
    wait("stalled connections closed", Duration::from_secs(30), || established(peerd.http.port()) == 0);
    eprintln!("stalled connections closed after {:?}", stalled.elapsed());
    // The high-water mark covers the whole stall.
    let growth_kib = peerd.peak_rss_kib().saturating_sub(before);
    eprintln!("{CLIENTS} stalled clients: peak RSS +{} MiB", growth_kib / 1024);
    assert!(growth_kib < (CLIENTS as u64) * 1024, "+{growth_kib} KiB for {CLIENTS} stalled clients");
    drop(clients);
    let again = curl("GET", &peerd.url(&target), &[]);
    assert_eq!(format!("sha256:{}", sha256_hex(&again.body)), digest, "still serving");
}

/// The measurement behind the bound above, runnable against any build (no new config keys):
/// `cargo test --test reliability -- --ignored measure_stalled --nocapture` (`BLOB_BYTES=N` for
/// another blob size). Measured here, 150 clients, 40 MB: +196 MiB peak before the fix, +137-147
/// MiB after (connections still open at 10 s: the default write timeout is 60 s). With a 2 MB
/// blob, which every client's socket buffers absorb whole, the peak is still +87 MiB: most of
/// the peak is 150 transfers in flight at once, not what a stalled one keeps.
#[test]
#[ignore]
fn measure_stalled_readers() {
    const CLIENTS: usize = 150;
    let work = tempdir("pd-sm");
    let reg = Registry::start(&work.path().join("reg"));
    let size: u32 = std::env::var("BLOB_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(40 << 20);
    let data = pattern(size, 13);
    let digest = reg.push_blob("test/big", &data);
    let args = [&mirror_args(&reg.addr)[..], &["--no-p2p"]].concat();
    let peerd = Peerd::start("127.0.0.1", &args, &[]);
    let target = format!("/v2/test/big/blobs/{digest}?ns={}", reg.addr.replace(':', "%3A"));
    assert_eq!(curl("GET", &peerd.url(&target), &[]).body.len(), data.len());
    std::thread::sleep(Duration::from_millis(500));
    let before = peerd.peak_rss_kib();
    let clients = stalled_clients(peerd.http, &target, CLIENTS);
    std::thread::sleep(Duration::from_secs(10));
    eprintln!(
        "{CLIENTS} stalled clients: peak RSS +{} MiB, {} connections still open after 10 s",
        peerd.peak_rss_kib().saturating_sub(before) / 1024,
        established(peerd.http.port())
    );
    drop(clients);
}

/// Finding 2, the global budget: at most `http.max_transfers` content bodies stream at once.
/// With 20 slots held by stalled readers, the next request gets 503 at once (containerd then
/// asks the registry) instead of more memory; once the stalled connections are cut, the slots
/// come back and the blob is served again.
#[test]
fn the_transfer_budget_bounds_bodies_in_flight() {
    if !require("transfer_budget", &["docker-registry", "curl", "ss"], false) {
        return;
    }
    const SLOTS: usize = 20;
    let work = tempdir("pd-tb");
    let reg = Registry::start(&work.path().join("reg"));
    let data = pattern(40 << 20, 11);
    let digest = reg.push_blob("test/big", &data);
    let slots = SLOTS.to_string();
    let peerd = Peerd::start(
        "127.0.0.1",
        &[
            "--no-p2p",
            "--mirror-host",
            &reg.addr,
            "--plain-http-host",
            &reg.addr,
            "--containerd-socket",
            "/nonexistent.sock",
        ],
        &[("PEERD_HTTP__WRITE_TIMEOUT", "3s"), ("PEERD_HTTP__MAX_TRANSFERS", slots.as_str())],
    );
    let target = format!("/v2/test/big/blobs/{digest}?ns={}", reg.addr.replace(':', "%3A"));
    let clients = stalled_clients(peerd.http, &target, SLOTS);
    wait("the stalled requests hold every slot", Duration::from_secs(10), || established(peerd.http.port()) >= SLOTS);
    std::thread::sleep(Duration::from_millis(500));
    let refused = curl("GET", &peerd.url(&target), &[]);
    assert_eq!((refused.status, refused.error_code().as_str()), (503, "UNAVAILABLE"), "no slot left");
    assert!(peerd.metric("peerd_transfers_refused_total", &[]) >= 1.0);
    // Non-content requests are not budgeted.
    assert_eq!(curl("GET", &peerd.url("/v2/"), &[]).status, 200);
    wait("stalled connections closed", Duration::from_secs(30), || established(peerd.http.port()) == 0);
    drop(clients);
    let again = curl("GET", &peerd.url(&target), &[]);
    assert_eq!((again.status, format!("sha256:{}", sha256_hex(&again.body))), (200, digest), "slots released");
}
