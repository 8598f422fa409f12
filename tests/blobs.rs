//! `/blobs` against real upstreams: nginx (plain HTTP, ETag/Last-Modified, Range) and a 3-node
//! cluster on 127.0.0.2-4. Files of awkward sizes, thousands of random ranges compared byte for
//! byte, upstream stopped after warm-up (chunks from peers), a restart that keeps the cache,
//! a file replaced upstream, a corrupted chunk on disk, and refused requests.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const SECRET: &str = "blobs-test-cluster-secret-0001";
const CHUNK: u64 = 256 * 1024;

struct Nginx {
    child: Child,
    pub addr: String,
    pub root: PathBuf,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let root = dir.join("www");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port("127.0.0.1");
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{ listen 127.0.0.1:{port}; root {r}; }}\n}}\n",
                d = dir.display(),
                r = root.display()
            ),
        )
        .unwrap();
        let child =
            Command::new("nginx").args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()]).spawn().unwrap();
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, addr, root }
    }
    /// SIGTERM (nginx's fast shutdown): the master stops its workers too; SIGKILL would orphan them.
    fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deterministic bytes (xorshift), so failures reproduce.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn node_env(nginx: &str, prefetch: bool) -> Vec<(&'static str, String)> {
    vec![
        ("PEERD_P2P__SECRET", SECRET.into()),
        ("PEERD_P2P__RESOLVE_TIMEOUT", "300ms".into()),
        ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s".into()),
        ("PEERD_BLOBS__ALLOWED_HOSTS", format!("[\"http://{nginx}\"]")),
        ("PEERD_BLOBS__CHUNK_SIZE", CHUNK.to_string()),
        ("PEERD_BLOBS__PREFETCH", prefetch.to_string()),
        ("PEERD_UPSTREAM__CONNECT_TIMEOUT", "1s".into()),
    ]
}

fn start_node(ip: &str, ports: Ports, data: &Path, nginx: &str, prefetch: bool) -> Peerd {
    let boot: Vec<String> =
        ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().map(|i| format!("{i}:{}", ports.p2p)).collect();
    let mut args = vec!["--no-p2p"];
    args.clear();
    args.extend(["--containerd-socket", "/nonexistent.sock"]);
    for b in &boot {
        args.extend(["--bootstrap-peer", b.as_str()]);
    }
    let env = node_env(nginx, prefetch);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Peerd::start_on(ip, ports, Some(data), &args, &env)
}

async fn get(client: &reqwest::Client, url: &str, range: Option<String>) -> (u16, Vec<u8>, Option<String>) {
    let mut req = client.get(url);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let cr = resp.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned());
    (status, resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(), cr)
}

/// `count` random reads (absolute, open-ended and suffix ranges) over `files` through `node`,
/// compared with the originals.
async fn random_reads(node: &Peerd, nginx: &str, files: &[(String, Vec<u8>)], count: usize, seed: u64) {
    let client = reqwest::Client::new();
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut jobs = Vec::new();
    for _ in 0..count {
        let (name, data) = &files[(next() % files.len() as u64) as usize];
        if data.is_empty() {
            continue;
        }
        let len = data.len() as u64;
        let start = next() % len;
        let (range, want) = match next() % 10 {
            0 => (format!("bytes={start}-"), start..len),
            1 => {
                let n = 1 + next() % len;
                (format!("bytes=-{n}"), len - n..len)
            }
            _ => {
                let size = 1 + next() % (CHUNK * 2 + 17);
                let end = (start + size - 1).min(len - 1);
                (format!("bytes={start}-{end}"), start..end + 1)
            }
        };
        jobs.push((
            // The URL each node warmed up with: during an outage peerd serves only URLs the
            // upstream confirmed (a new signature is refused, rightly; checked below).
            format!("{}/blobs/http://{nginx}/{name}?sv=2021&sig=c2VjcmV0", node.url("")),
            range,
            name.clone(),
            want,
        ));
    }
    let results = futures_util::stream::iter(jobs.into_iter().map(|(url, range, name, want)| {
        let client = client.clone();
        async move {
            let (status, body, cr) = get(&client, &url, Some(range.clone())).await;
            (status, body, cr, range, name, want)
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (status, body, cr, range, name, want) in results {
        let data = &files.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(status, 206, "{name} {range}");
        assert_eq!(cr, Some(format!("bytes {}-{}/{}", want.start, want.end - 1, data.len())), "{name} {range}");
        assert!(body == data[want.start as usize..want.end as usize], "{name} {range}: bytes differ");
    }
}

use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_through_a_cluster_with_nginx() {
    if !require("blobs_nginx", &["nginx", "curl"], false) {
        return;
    }
    let work = tempdir("pd-bl");
    let mut nginx = Nginx::start(work.path());
    let sizes: [u64; 7] = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 4 * CHUNK + 7, 20 * CHUNK + 12345];
    let files: Vec<(String, Vec<u8>)> =
        sizes.iter().enumerate().map(|(i, s)| (format!("f{i}.bin"), content(i as u64 + 1, *s as usize))).collect();
    for (name, data) in &files {
        std::fs::write(nginx.root.join(name), data).unwrap();
    }
    let ports = Ports::free("127.0.0.2");
    let datas: Vec<PathBuf> = (0..3).map(|i| work.path().join(format!("data{i}"))).collect();
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    // A prefetches; B and C do not, so after the upstream stops they must use peers.
    let mut nodes: Vec<Peerd> = (0..3).map(|i| start_node(ips[i], ports, &datas[i], &nginx.addr, i == 0)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    let client = reqwest::Client::new();
    let up = nginx.addr.clone();
    let url = |n: &Peerd, name: &str| format!("{}/blobs/http://{up}/{name}?sv=2021&sig=c2VjcmV0", n.url(""));

    // Whole files, HEAD, and the edge sizes.
    for (name, data) in &files {
        let (status, body, _) = get(&client, &url(&nodes[0], name), None).await;
        assert_eq!((status, body.len()), (200, data.len()), "{name}");
        assert!(body == *data, "{name}: bytes differ");
        let head = client.head(url(&nodes[1], name)).send().await.unwrap();
        assert_eq!(head.headers()["content-length"].to_str().unwrap(), data.len().to_string());
    }
    let (status, _, _) = get(&client, &url(&nodes[0], "f0.bin"), Some("bytes=0-".into())).await;
    assert_eq!(status, 416, "nothing to range over in an empty file");

    // Warm-up: A reads everything (and prefetches); B and C only learn the files (1 byte each).
    for n in &nodes[1..] {
        for (name, data) in &files[1..] {
            let (status, body, _) = get(&client, &url(n, name), Some("bytes=0-0".into())).await;
            assert_eq!((status, body[0]), (206, data[0]));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // advertisement of A's chunks
                                                      // The files' metadata is on A's disk once: reads that the upstream confirms unchanged do
                                                      // not write it again (a rename per request would give the file a new inode each time).
    let meta_files = || {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(datas[0].join("blobs").join("meta"))
            .expect("A's metadata directory")
            .flatten()
            .map(|e| (e.path(), e.metadata().unwrap().ino()))
            .collect();
        v.sort();
        v
    };
    let before_reads = meta_files();
    assert!(before_reads.len() >= files.len() - 1, "metadata of every file read: {before_reads:?}");
    random_reads(&nodes[0], &nginx.addr, &files, 1000, 7).await;
    let sendfile = |n: &Peerd| n.metric("peerd_direct_sent_bytes_total", &["how=\"sendfile\""]);
    let a_to_peers = || nodes[0].metric("peerd_peer_served_bytes_total", &[]);
    let (a_sent, a_served) = (sendfile(&nodes[0]), a_to_peers());
    for (i, n) in nodes.iter().enumerate().skip(1) {
        random_reads(n, &nginx.addr, &files, 1000, 7 + i as u64).await;
    }
    // B and C took chunks from A (it holds them all): A sent them from its files by sendfile,
    // not read and hashed again (it wrote and hashed them itself; the peers check every chunk
    // against its sha256).
    let (a_sent, a_served) = (sendfile(&nodes[0]) - a_sent, a_to_peers() - a_served);
    assert!(a_served > 0.0, "A served chunks to B and C");
    assert!(a_sent >= a_served / 2.0, "A's chunks for peers went mostly by sendfile: {a_sent} of {a_served}");
    assert_eq!(meta_files(), before_reads, "A rewrote metadata the upstream confirmed unchanged");
    let upstream_before = nodes[1].metric("peerd_blobs_bytes_total", &["source=\"upstream\""]);

    // The upstream goes away: ranges still come, from the local cache and from peers.
    nginx.stop();
    let a_sent = sendfile(&nodes[0]);
    for (i, n) in nodes.iter().enumerate() {
        random_reads(n, &nginx.addr, &files, 500, 100 + i as u64).await;
    }
    // A holds every chunk: its cached parts went from the page cache to the socket (checked
    // byte for byte by the reads above).
    assert!(sendfile(&nodes[0]) > a_sent, "A's cache hits were sent by sendfile");
    for n in &nodes[1..] {
        assert!(n.metric("peerd_blobs_bytes_total", &["source=\"peer\""]) > 0.0, "B/C fetched chunks from peers");
    }
    assert!(std::net::TcpStream::connect(&up).is_err(), "the upstream is really gone");
    // A file no node ever validated (under any query) is not served during an outage; another
    // SAS of a validated file is (stale-if-error: tests/blobs_reliability.rs).
    let unconfirmed = format!("{}/blobs/http://{up}/never-seen.bin?sig=never-seen", nodes[1].url(""));
    let (status, _, _) = get(&client, &unconfirmed, Some("bytes=0-9".into())).await;
    assert_eq!(status, 503, "a file the upstream never confirmed is not served during an outage");
    assert_eq!(nodes[1].metric("peerd_blobs_bytes_total", &["source=\"upstream\""]), upstream_before);
    assert!(nodes[0].metric("peerd_peer_served_bytes_total", &[]) > 0.0);
    assert!(nodes[0].metric("peerd_blobs_prefetch_chunks_total", &[]) > 0.0);

    // Restart B: its cache (and the metadata the upstream confirmed) survives.
    let cached = nodes[1].metric("peerd_blobs_cache_bytes", &[]);
    assert!(cached > 0.0);
    nodes[1].stop();
    nodes[1] = start_node(ips[1], ports, &datas[1], &nginx.addr, false);
    nodes[1].wait_ready();
    assert_eq!(nodes[1].metric("peerd_blobs_cache_bytes", &[]), cached, "cache survived the restart");
    random_reads(&nodes[1], &nginx.addr, &files, 300, 999).await;
    assert!(nodes[1].metric("peerd_blobs_cache_hits_total", &[]) > 0.0);

    // Corrupt a chunk on A's disk: detected, dropped, fetched again, never served.
    let big = &files[6];
    let shard_dir = datas[0].join("blobs");
    let chunk_file = find_chunk(&shard_dir, 3).expect("chunk 3 of a file cached on A");
    let len = std::fs::metadata(&chunk_file).unwrap().len() as usize;
    std::fs::write(&chunk_file, vec![0x42u8; len]).unwrap();
    let before = nodes[0].metric("peerd_blobs_cache_corrupt_total", &[]);
    for (name, data) in &files[4..] {
        let (status, body, _) = get(&client, &url(&nodes[0], name), None).await;
        assert_eq!(status, 200);
        let tail = |n: &Peerd| n.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n");
        assert!(
            body == *data,
            "{name}: corrupt chunk must never be served; A's log (last first):\n{}",
            tail(&nodes[0])
        );
    }
    assert!(nodes[0].metric("peerd_blobs_cache_corrupt_total", &[]) > before, "corruption detected");
    let _ = big;

    // A file replaced upstream (new ETag) is never served from old chunks.
    let mut nginx = Nginx::start(work.path());
    let port_changed = nginx.addr.clone();
    // nginx came back on a new port: allow-lists name the old one, so serve the same root from
    // a node configured for it.
    let fresh = content(4242, (3 * CHUNK + 5) as usize);
    std::fs::write(nginx.root.join("f5.bin"), &fresh).unwrap();
    drop(nodes);
    let n = start_node("127.0.0.5", Ports::free("127.0.0.5"), &work.path().join("data5"), &port_changed, false);
    let u = format!("{}/blobs/http://{port_changed}/f5.bin?sig=x", n.url(""));
    let (_, first, _) = get(&client, &u, None).await;
    assert!(first == fresh);
    let replaced = content(777, (3 * CHUNK + 5) as usize); // same size, new content and mtime
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(nginx.root.join("f5.bin"), &replaced).unwrap();
    let (_, second, _) = get(&client, &u, None).await;
    assert!(second == replaced, "a replaced file is never served stale");
    nginx.stop();
}

/// Body bytes nginx sent, from its access log (combined format: `"request" status bytes`).
fn nginx_body_bytes(dir: &Path) -> u64 {
    let log = std::fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| l.split('"').nth(2))
        .filter_map(|after| after.split_whitespace().nth(1))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// Three nodes read the same new file at the same moment (and prefetch it): its chunks are split
/// among them, so nginx sends the file about once, and every node gets every byte right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_read_at_once_by_three_nodes_come_from_the_upstream_once() {
    if !require("blobs_coalesce", &["nginx", "curl"], false) {
        return;
    }
    let work = tempdir("pd-bc");
    let nginx = Nginx::start(work.path());
    let data = content(99, (48 * CHUNK + 4321) as usize);
    std::fs::write(nginx.root.join("shared.bin"), &data).unwrap();
    let ports = Ports::free("127.0.0.2");
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let nodes: Vec<Peerd> =
        (0..3).map(|i| start_node(ips[i], ports, &work.path().join(format!("d{i}")), &nginx.addr, true)).collect();
    for n in &nodes {
        n.wait_ready();
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the DHT connects
    let before = nginx_body_bytes(work.path());
    let client = reqwest::Client::new();
    let up = nginx.addr.clone();
    let reads = nodes.iter().map(|n| {
        let (client, u) = (client.clone(), format!("{}/blobs/http://{up}/shared.bin?sig=s", n.url("")));
        async move { get(&client, &u, None).await }
    });
    for (i, (status, body, _)) in futures_util::future::join_all(reads).await.into_iter().enumerate() {
        assert_eq!(status, 200, "node {i}");
        assert!(body == data, "node {i}: bytes differ");
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the access log is written after each request
    let sent = nginx_body_bytes(work.path()) - before;
    let size = data.len() as u64;
    eprintln!(
        "nginx sent {sent} body bytes for a {size}-byte file read by 3 nodes ({:.2}x)",
        sent as f64 / size as f64
    );
    let from_peers: f64 = nodes.iter().map(|n| n.metric("peerd_blobs_bytes_total", &["source=\"peer\""])).sum();
    assert!(from_peers >= size as f64, "chunks moved between the nodes: {from_peers}");
    assert!(sent as f64 <= 1.1 * size as f64, "nginx sent {sent} bytes: more than 1.1 x the file ({size})");
}

fn find_chunk(dir: &Path, index: u64) -> Option<PathBuf> {
    for shard in std::fs::read_dir(dir).ok()?.flatten() {
        if shard.file_name().len() != 2 {
            continue;
        }
        for file in std::fs::read_dir(shard.path()).ok()?.flatten() {
            // The biggest file has the most chunks; take the first file holding `index`.
            for c in std::fs::read_dir(file.path()).ok()?.flatten() {
                if c.file_name().to_string_lossy().starts_with(&format!("{index}.")) {
                    return Some(c.path());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_refuses_what_it_must_not_fetch() {
    if !require("blobs_refusals", &["nginx"], false) {
        return;
    }
    let work = tempdir("pd-br");
    let nginx = Nginx::start(work.path());
    std::fs::write(nginx.root.join("ok.bin"), b"0123456789").unwrap();
    let allowed = format!("[\"http://{}\"]", nginx.addr);
    let p = Peerd::start(
        "127.0.0.1",
        &["--no-p2p", "--containerd-socket", "/nonexistent.sock"],
        &[("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str())],
    );
    let base = p.url("/blobs/");
    for (path, status, code) in [
        (format!("http://{}/ok.bin", nginx.addr), 200, ""),
        ("http://127.0.0.1:1/other".to_string(), 403, "DENIED"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), 403, "DENIED"),
        ("http://[fe80::1]/x".to_string(), 403, "DENIED"),
        (format!("https://{}/ok.bin", nginx.addr), 403, "DENIED"),
        ("not-a-url".to_string(), 400, "NAME_INVALID"),
        ("ftp://example.com/x".to_string(), 400, "NAME_INVALID"),
        (format!("http://user:pw@{}/ok.bin", nginx.addr), 400, "NAME_INVALID"),
        (format!("http://{}/missing.bin", nginx.addr), 404, "BLOB_UNKNOWN"),
    ] {
        let r = curl("GET", &format!("{base}{path}"), &[]);
        assert_eq!(r.status, status, "{path}");
        if !code.is_empty() {
            assert_eq!(r.error_code(), code, "{path}");
        }
    }
    let ok = format!("{base}http://{}/ok.bin", nginx.addr);
    assert_eq!(curl("GET", &ok, &[("Range", "bytes=5-2")]).status, 416);
    assert_eq!(curl("GET", &ok, &[("Range", "bytes=10-")]).status, 416);
    let r = curl("GET", &ok, &[("Range", "bytes=-3")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));
    assert_eq!(curl("POST", &ok, &[]).status, 405);
    // The chunk endpoint is for peers only.
    assert_eq!(curl("GET", &p.url("/blobs-chunk/00/0"), &[]).status, 404);
}

/// A restart with another `blobs.chunk_size` while the upstream is down: the metadata kept from
/// the old run names chunks of the old size; using it would serve old-size chunks at new-size
/// offsets (wrong bytes, nothing to catch it). It is ignored: an error, never wrong bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_chunk_size_never_serves_old_chunks() {
    if !require("blobs_chunk_size_change", &["nginx", "curl"], false) {
        return;
    }
    let work = tempdir("pd-bl");
    let mut nginx = Nginx::start(work.path());
    let data = content(77, (6 * CHUNK + 999) as usize);
    std::fs::write(nginx.root.join("f.bin"), &data).unwrap();
    let dir = work.path().join("data");
    let allowed = format!("[\"http://{}\"]", nginx.addr);
    let start = |chunk: u64| {
        let chunk = chunk.to_string();
        let env = [
            ("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str()),
            ("PEERD_BLOBS__CHUNK_SIZE", chunk.as_str()),
            ("PEERD_BLOBS__PREFETCH", "false"),
        ];
        let p = Peerd::start_on(
            "127.0.0.1",
            Ports::free("127.0.0.1"),
            Some(&dir),
            &["--no-p2p", "--containerd-socket", "/nonexistent.sock"],
            &env,
        );
        p.wait_ready();
        p
    };
    let client = reqwest::Client::new();
    let mut a = start(CHUNK);
    let up = nginx.addr.clone();
    let url = |p: &Peerd| format!("{}/blobs/http://{up}/f.bin", p.url(""));
    let (status, body, _) = get(&client, &url(&a), None).await;
    assert_eq!((status, body == data), (200, true), "warm-up read");
    a.stop();
    nginx.stop();
    let b = start(CHUNK / 2);
    let range = format!("bytes={}-{}", CHUNK + 10, 3 * CHUNK);
    let (status, body, _) = get(&client, &url(&b), Some(range)).await;
    if status == 206 {
        let (s, e) = ((CHUNK + 10) as usize, (3 * CHUNK) as usize);
        assert!(body == data[s..=e], "206 with wrong bytes after a chunk size change");
    } else {
        assert!(status >= 500, "an error while the upstream is down: {status}");
    }
}
