//! Local blobs read straight from containerd's content files (the fast path), against a real
//! containerd 1.6: only committed blobs of served namespaces, exact bytes or an error when the
//! file changes under a read, and the gRPC path when the files cannot be read.

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

fn ctr(c: &Containerd, ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ctr").arg("-a").arg(&c.socket).args(["-n", ns]).args(args).output().unwrap()
}

/// Pull `image` from the registry straight into namespace `ns` (not through peerd).
fn pull(c: &Containerd, ns: &str, image: &str) {
    let out = ctr(c, ns, &["image", "pull", "--plain-http", image]);
    assert!(out.status.success(), "pull {image} into {ns}: {}", String::from_utf8_lossy(&out.stderr));
}

fn content_root(c: &Containerd) -> PathBuf {
    c.dir.join("root/io.containerd.content.v1.content")
}

fn blob_file(c: &Containerd, digest: &str) -> PathBuf {
    content_root(c).join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn start_peerd(reg: &Registry, c: &Containerd, extra: &[&str]) -> Peerd {
    let mut args = vec!["--no-p2p", "--mirror-host", &reg.addr, "--plain-http-host", &reg.addr];
    args.extend(["--containerd-socket", c.socket.to_str().unwrap()]);
    args.extend(extra);
    Peerd::start("127.0.0.1", &args, &[("PEERD_LOG__LEVEL", "info,peerd=debug")])
}

fn reads(p: &Peerd, path: &str) -> f64 {
    p.metric("peerd_store_reads_total", &[&format!("path=\"{path}\"")])
}

fn blob_url(p: &Peerd, reg: &Registry, repo: &str, digest: &str) -> String {
    p.url(&format!("/v2/{repo}/blobs/{digest}?ns={}", reg.addr.replace(':', "%3A")))
}

/// The multi image's layers, largest first.
fn layers_by_size(info: &serde_json::Value) -> Vec<(String, u64)> {
    let mut l = image_layers(info, "multi");
    l.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
    l
}

/// A full GET and three ranges of `digest` are served with the right bytes; `from_file`: from
/// containerd's file, sent from the page cache to the socket (sendfile), else through gRPC.
fn assert_serves(p: &Peerd, reg: &Registry, digest: &str, size: u64, from_file: bool) {
    let url = blob_url(p, reg, "test/multi", digest);
    let sent = |how: &str| p.metric("peerd_direct_sent_bytes_total", &[&format!("how=\"{how}\"")]);
    let direct = || (sent("sendfile"), sent("write"));
    let before = direct();
    let r = curl("GET", &url, &[]);
    assert_eq!(r.status, 200, "{digest}");
    assert!(r.curl_ok);
    assert_eq!(r.body.len() as u64, size);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), digest);
    // Just pulled, so in the page cache: sent from it to the socket without a copy (sendfile).
    // A window whose pages the cache does not hold right then (evicted, or marked for readahead,
    // which an `RWF_NOWAIT` probe refuses) is read and written to the socket instead: the whole
    // body goes directly one way or the other, most of it by sendfile. (CI saw 97% by sendfile
    // on a busy machine; asserting 100% failed there.)
    let large = size >= peerd::sendfile::MIN_DIRECT;
    let delta = |(f0, w0): (f64, f64)| {
        let (f, w) = direct();
        (f - f0, w - w0)
    };
    let (by_sendfile, by_write) = delta(before);
    if from_file && large {
        assert_eq!(by_sendfile + by_write, size as f64, "{digest}: the whole body sent directly");
        assert!(by_sendfile >= size as f64 / 2.0, "{digest}: most of it by sendfile: {by_sendfile} of {size}");
    } else {
        assert_eq!(by_sendfile, 0.0, "{digest}: nothing by sendfile (through gRPC, or small)");
    }
    let after_get = direct();
    for (range, want) in [
        ("bytes=100-199".to_owned(), &r.body[100..200]),
        (format!("bytes={}-", size - 10), &r.body[size as usize - 10..]),
        ("bytes=-5".to_owned(), &r.body[size as usize - 5..]),
    ] {
        let part = curl("GET", &url, &[("Range", range.as_str())]);
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(part.body, want, "{range}");
        assert!(part.header("content-range").is_some_and(|v| v.ends_with(&format!("/{size}"))), "{range}");
    }
    // Ranges this small are left to actix (head and body in one write).
    assert_eq!(delta(after_get), (0.0, 0.0), "{digest}: small ranges are not sent directly");
}

/// The fast path is what serves local blobs (counted by path), with Range; a blob only in a
/// namespace peerd does not serve is not served although its file is right there; a blob still
/// being ingested is not served until containerd commits it.
#[test]
fn local_blobs_come_from_containerd_files_only_when_committed_in_a_served_namespace() {
    if !require("store_fast_path", TOOLS, true) {
        return;
    }
    let (work, mut reg, info) = registry_with_images("pd-sf");
    let c = Containerd::start(&work.path().join("c"));
    pull(&c, "k8s.io", &format!("{}/test/multi:v1", reg.addr));
    pull(&c, "other", &format!("{}/test/single:v1", reg.addr));
    let p = start_peerd(&reg, &c, &[]);
    let log = p.log_text();
    assert!(log.contains("read from containerd's content files"), "start-up must name the read path:\n{log}");
    assert!(log.contains(content_root(&c).to_str().unwrap()), "the discovered root is logged:\n{log}");
    assert_eq!(p.metric("peerd_store_fast_path", &[]), 1.0);

    reg.stop();
    let layers = layers_by_size(&info);
    for (digest, size) in &layers {
        assert_serves(&p, &reg, digest, *size, true);
    }
    // One full GET and three ranges per layer, every one read from the files.
    assert_eq!(reads(&p, "file"), 4.0 * layers.len() as f64);

    // The largest layer's pages dropped from the page cache: what the cache lacks is read and
    // written, the rest goes by sendfile once read ahead; the bytes are right either way.
    let (big, big_size) = &layers[0];
    let file = std::fs::File::open(blob_file(&c, big)).unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let sent = |how: &str| p.metric("peerd_direct_sent_bytes_total", &[&format!("how=\"{how}\"")]);
    let (f0, w0) = (sent("sendfile"), sent("write"));
    let r = curl("GET", &blob_url(&p, &reg, "test/multi", big), &[]);
    assert_eq!((r.status, r.body.len() as u64), (200, *big_size));
    assert_eq!(&format!("sha256:{}", sha256_hex(&r.body)), big);
    let (f, w) = (sent("sendfile") - f0, sent("write") - w0);
    eprintln!("evicted layer of {big_size} bytes: {f} by sendfile, {w} read and written");
    assert_eq!(f + w, *big_size as f64, "the whole body sent directly");
    assert!(w > 0.0, "what the page cache did not hold was read, not sent by sendfile");
    assert_eq!(reads(&p, "file"), 4.0 * layers.len() as f64 + 1.0);
    assert_eq!(reads(&p, "grpc"), 0.0);
    let local: f64 = p.metric("peerd_served_bytes_total", &["source=\"local\""]);
    assert!(local >= layers.iter().map(|(_, s)| *s as f64).sum::<f64>(), "{local}");
    assert_eq!(p.metric("peerd_digest_mismatches_total", &[]), 0.0);

    // single's config is only in namespace "other": its file exists, but it is not served.
    let config = info["single"]["config"]["digest"].as_str().unwrap();
    assert!(blob_file(&c, config).is_file(), "the blob file is there");
    let out = ctr(&c, "k8s.io", &["content", "get", config]);
    assert!(!out.status.success(), "not visible in k8s.io");
    let before = reads(&p, "file") + reads(&p, "grpc");
    let r = curl("GET", &blob_url(&p, &reg, "test/single", config), &[]);
    assert_ne!(r.status, 200, "a blob of another namespace must not be served");
    assert_ne!(r.status, 206);
    assert_eq!(reads(&p, "file") + reads(&p, "grpc"), before);

    // A blob being ingested: half written under ingest/, not served; served once committed.
    let data: Vec<u8> = (0..(3 << 20) + 17).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let digest = format!("sha256:{}", sha256_hex(&data));
    let mut ingest = Command::new("ctr")
        .arg("-a")
        .arg(&c.socket)
        .args(["-n", "k8s.io", "content", "ingest", "--expected-size", &data.len().to_string()])
        .args(["--expected-digest", &digest, "pd-test-ingest"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = ingest.stdin.take().unwrap();
    stdin.write_all(&data[..data.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let ingest_dir = content_root(&c).join("ingest");
    let partial = || {
        std::fs::read_dir(&ingest_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
            .any(|m| m.len() >= 1 << 20) // ctr sends 1 MiB pieces
    };
    wait("the partial blob under ingest/", Duration::from_secs(20), partial);
    assert!(!blob_file(&c, &digest).exists());
    let url = blob_url(&p, &reg, "test/multi", &digest);
    let before = reads(&p, "file") + reads(&p, "grpc");
    for range in [None, Some("bytes=0-9")] {
        let r = curl("GET", &url, range.map(|r| ("Range", r)).as_slice());
        assert!(r.status != 200 && r.status != 206, "an ingest in progress is not served: {}", r.status);
        assert_ne!(curl("HEAD", &url, &[]).status, 200, "nor is its size");
    }
    assert_eq!(reads(&p, "file") + reads(&p, "grpc"), before, "no read was even tried");
    stdin.write_all(&data[data.len() / 2..]).unwrap();
    drop(stdin);
    let out = ingest.wait_with_output().unwrap();
    assert!(out.status.success(), "ingest: {}", String::from_utf8_lossy(&out.stderr));
    // Keep it from containerd's garbage collector for the rest of the test.
    let _ = ctr(&c, "k8s.io", &["content", "label", &digest, "containerd.io/gc.root=test"]);
    assert!(blob_file(&c, &digest).is_file(), "committed into blobs/");
    let r = curl("GET", &url, &[]);
    assert_eq!((r.status, r.body == data), (200, true), "served once committed");
    assert_eq!(reads(&p, "file"), before + 1.0);
}

/// The file changing under a read never yields wrong bytes: containerd deleting the blob leaves
/// the open file whole (the right bytes); a file truncated in place while it is read ends the
/// response with an error; a file whose size no longer matches is not served from at all
/// (the upstream serves the blob instead).
#[test]
fn a_blob_file_changed_under_a_read_gives_the_right_bytes_or_an_error() {
    if !require("store_changed_file", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-sc");
    let c = Containerd::start(&work.path().join("c"));
    pull(&c, "k8s.io", &format!("{}/test/multi:v1", reg.addr));
    let p = start_peerd(&reg, &c, &[]);
    let layers = layers_by_size(&info);
    let (deleted, truncated, short) = (&layers[0], &layers[1], &layers[2]);

    // A slow client, so the change happens mid-read.
    let slow_get = |digest: &str, out: &Path| {
        Command::new("curl")
            .args(["-s", "--fail", "--limit-rate", "8M", "--max-time", "60", "-o", out.to_str().unwrap()])
            .arg(blob_url(&p, &reg, "test/multi", digest))
            .spawn()
            .unwrap()
    };
    let started = |out: &Path| std::fs::metadata(out).map(|m| m.len()).unwrap_or(0) >= 2 << 20;

    // Deleted mid-read: containerd's own delete, then the file is gone from blobs/.
    let direct_before = p.metric("peerd_direct_sent_bytes_total", &["how=\"sendfile\""]);
    let written_before = p.metric("peerd_direct_sent_bytes_total", &["how=\"write\""]);
    let out = work.path().join("deleted.out");
    let mut child = slow_get(&deleted.0, &out);
    wait("the slow read to start", Duration::from_secs(20), || started(&out));
    let file_reads = reads(&p, "file");
    assert_eq!(file_reads, 1.0, "served from the file");
    let rm = ctr(&c, "k8s.io", &["content", "rm", &deleted.0]);
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    let _ = std::fs::remove_file(blob_file(&c, &deleted.0)); // as containerd's GC would
    let status = child.wait().unwrap();
    let body = std::fs::read(&out).unwrap();
    let right = body.len() as u64 == deleted.1 && format!("sha256:{}", sha256_hex(&body)) == deleted.0;
    eprintln!("deleted mid-read: curl {status}, {} of {} bytes, right bytes: {right}", body.len(), deleted.1);
    assert!(!status.success() || right, "a completed response must be the blob");
    // On Linux the open descriptor keeps the whole inode readable: the read completes, rightly.
    assert!(status.success() && right, "expected the whole, right blob from the unlinked file");
    // Sent from the page cache to a client slower than the socket (sendfile waits for room);
    // a window the cache does not hold right then is read and written instead.
    let direct = p.metric("peerd_direct_sent_bytes_total", &["how=\"sendfile\""]) - direct_before;
    let written = p.metric("peerd_direct_sent_bytes_total", &["how=\"write\""]) - written_before;
    assert_eq!(direct + written, deleted.1 as f64, "the slow read went directly");
    assert!(direct >= deleted.1 as f64 / 2.0, "most of it by sendfile: {direct} of {}", deleted.1);
    // The next request does not find it locally (the registry still has it: served from there).
    let upstream_before = p.metric("peerd_served_bytes_total", &["source=\"upstream\""]);
    let r = curl("GET", &blob_url(&p, &reg, "test/multi", &deleted.0), &[]);
    assert_eq!((r.status, r.body.len() as u64), (200, deleted.1));
    assert!(p.metric("peerd_served_bytes_total", &["source=\"upstream\""]) >= upstream_before + deleted.1 as f64);
    assert_eq!(reads(&p, "file"), file_reads);

    // Truncated in place mid-read: the response fails, never ends short as if whole.
    let out = work.path().join("truncated.out");
    let mut child = slow_get(&truncated.0, &out);
    wait("the slow read to start", Duration::from_secs(20), || started(&out));
    let f = std::fs::OpenOptions::new().write(true).open(blob_file(&c, &truncated.0)).unwrap();
    f.set_len(truncated.1 / 2).unwrap();
    drop(f);
    let status = child.wait().unwrap();
    let body = std::fs::read(&out).unwrap();
    eprintln!("truncated mid-read: curl {status}, {} of {} bytes", body.len(), truncated.1);
    assert!(!status.success(), "a truncated read must fail");
    assert!((body.len() as u64) < truncated.1);
    assert!(p.log_text().contains("ended early"), "{}", p.log_text());

    // Truncated before the read: the size does not match containerd's record, so the file is
    // not served from; the upstream serves the blob.
    let f = std::fs::OpenOptions::new().write(true).open(blob_file(&c, &short.0)).unwrap();
    f.set_len(short.1 - 1).unwrap();
    drop(f);
    let errors = p.metric("peerd_local_store_errors_total", &["kind=\"other\""]);
    let r = curl("GET", &blob_url(&p, &reg, "test/multi", &short.0), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), short.0);
    assert_eq!(p.metric("peerd_local_store_errors_total", &["kind=\"other\""]), errors + 1.0);
    assert!(p.log_text().contains("containerd records"), "{}", p.log_text());
}

/// Files that cannot be read: the gRPC path serves the same bytes. A configured directory that
/// does not exist makes gRPC the read path at start-up (gauge 0); a readable directory without
/// the blob's file falls back per read.
#[test]
fn unreadable_content_files_fall_back_to_grpc() {
    if !require("store_grpc_fallback", TOOLS, true) {
        return;
    }
    let (work, mut reg, info) = registry_with_images("pd-sg");
    let c = Containerd::start(&work.path().join("c"));
    pull(&c, "k8s.io", &format!("{}/test/multi:v1", reg.addr));
    reg.stop();
    let layers = layers_by_size(&info);
    let missing = work.path().join("no-such-dir");
    let empty = work.path().join("empty-content-root");
    std::fs::create_dir_all(empty.join("blobs/sha256")).unwrap();

    for (dir, fast) in [(&missing, false), (&empty, true)] {
        let p = start_peerd(&reg, &c, &["--containerd-content-dir", dir.to_str().unwrap()]);
        let log = p.log_text();
        if fast {
            assert!(log.contains("read from containerd's content files"), "{log}");
        } else {
            assert!(log.contains("read through containerd's gRPC API"), "{log}");
            assert!(log.contains("no-such-dir"), "says why: {log}");
        }
        assert_eq!(p.metric("peerd_store_fast_path", &[]), if fast { 1.0 } else { 0.0 });
        for (digest, size) in &layers {
            assert_serves(&p, &reg, digest, *size, false);
        }
        assert_eq!(reads(&p, "grpc"), 4.0 * layers.len() as f64, "{}", dir.display());
        assert_eq!(reads(&p, "file"), 0.0);
        assert_eq!(p.metric("peerd_digest_mismatches_total", &[]), 0.0);
        // A directory without the blobs' files is reported, once.
        let warned = p.log_text().matches("whose file cannot be read here").count();
        assert_eq!(warned, usize::from(fast), "{}", p.log_text());
    }
}

/// A peerd process run as root without capabilities (as the chart runs it), so file
/// permissions apply to it. Killed on drop.
struct NoCapsPeerd {
    child: std::process::Child,
    http: String,
    metrics: String,
    log: PathBuf,
}

impl NoCapsPeerd {
    fn start(work: &Path, reg: &Registry, c: &Containerd, content_dir: &Path) -> NoCapsPeerd {
        let (http, metrics) =
            (format!("127.0.0.1:{}", free_port("127.0.0.1")), format!("127.0.0.1:{}", free_port("127.0.0.1")));
        let data = work.join("nocaps-data");
        std::fs::create_dir_all(&data).unwrap();
        let log = work.join("nocaps.log");
        let child = Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(env!("CARGO_BIN_EXE_peerd"))
            .args(["run", "--no-p2p", "--http-addr", &http, "--metrics-addr", &metrics])
            .args(["--mirror-host", &reg.addr, "--plain-http-host", &reg.addr])
            .arg("--data-dir")
            .arg(&data)
            .arg("--containerd-socket")
            .arg(&c.socket)
            .arg("--containerd-content-dir")
            .arg(content_dir)
            .env("PEERD_HTTP__WORKERS", "2")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let p = NoCapsPeerd { child, http, metrics, log };
        let url = format!("http://{}/readyz", p.http);
        wait("peerd without capabilities to be ready", Duration::from_secs(30), || http_get_status(&url) == Some(200));
        p
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let out = Command::new("curl").args(["-sf", &format!("http://{}/metrics/prometheus", self.metrics)]).output();
        sum_metric(&String::from_utf8_lossy(&out.unwrap().stdout), name, labels)
    }
}

impl Drop for NoCapsPeerd {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// A content directory peerd may not read (a copy of containerd's, its `blobs/sha256` made
/// mode 000, peerd running as root without capabilities as the chart runs it): every file open
/// is refused, and the gRPC path serves the same bytes.
#[test]
fn a_content_dir_without_read_permission_falls_back_to_grpc() {
    if !require("store_permission_fallback", &[TOOLS, &["setpriv", "cp"]].concat(), true) {
        return;
    }
    let (work, mut reg, info) = registry_with_images("pd-sp");
    let c = Containerd::start(&work.path().join("c"));
    pull(&c, "k8s.io", &format!("{}/test/multi:v1", reg.addr));
    reg.stop();
    let copy = work.path().join("content-copy");
    let cp = Command::new("cp").arg("-a").arg(content_root(&c)).arg(&copy).status().unwrap();
    assert!(cp.success());
    let locked = copy.join("blobs/sha256");
    let layers = layers_by_size(&info);
    assert!(locked.join(layers[0].0.trim_start_matches("sha256:")).is_file(), "the files are in the copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();

    let p = NoCapsPeerd::start(work.path(), &reg, &c, &copy);
    let base = format!("http://{}", p.http);
    for (digest, size) in &layers {
        let url = format!("{base}/v2/test/multi/blobs/{digest}?ns={}", reg.addr.replace(':', "%3A"));
        let r = curl("GET", &url, &[]);
        assert_eq!((r.status, r.body.len() as u64), (200, *size), "{digest}");
        assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), *digest);
        let part = curl("GET", &url, &[("Range", "bytes=10-19")]);
        assert_eq!((part.status, &part.body[..]), (206, &r.body[10..20]));
    }
    let log = p.log_text();
    assert!(log.contains("Permission denied"), "the refusal is reported:\n{log}");
    assert_eq!(log.matches("whose file cannot be read here").count(), 1, "once:\n{log}");
    assert_eq!(p.metric("peerd_store_reads_total", &["path=\"grpc\""]), 2.0 * layers.len() as f64);
    assert_eq!(p.metric("peerd_store_reads_total", &["path=\"file\""]), 0.0);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The content-store conformance checks (`peerd::store::conformance`, which the in-memory store
/// passes in unit tests) against a real containerd: once through its content files, once
/// through gRPC only.
#[test]
fn containerd_store_conforms_through_files_and_through_grpc() {
    use peerd::oci::Digest;
    use peerd::store::conformance::{check, Fixture};
    use peerd::store::containerd::{ContainerdStore, ReadPath};
    if !require("store_conformance", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-conf");
    let c = Containerd::start(&work.path().join("ctrd"));
    let image = format!("{}/test/single:v1", reg.addr);
    pull(&c, "k8s.io", &image);
    let config = info["single"]["config"]["digest"].as_str().unwrap();
    let blob = std::fs::read(blob_file(&c, config)).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&blob)), config, "the fixture blob is the image config");
    let target: Digest = info["single"]["manifest"]["digest"].as_str().unwrap().parse().unwrap();
    let fixture = Fixture { blob: &blob, image: &image, image_target: &target };
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (dir, want_files) in [(None, true), (Some(work.path().join("no-such-dir")), false)] {
        rt.block_on(async {
            let store = ContainerdStore::new(c.socket.clone(), vec!["k8s.io".into()], Duration::from_secs(5))
                .unwrap()
                .with_content_dir(dir);
            let path = store.read_path().await.unwrap();
            assert_eq!(matches!(path, ReadPath::File(_)), want_files, "read path {path:?}");
            check(&store, &fixture).await;
        });
    }
}
