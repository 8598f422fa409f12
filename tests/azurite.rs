//! `/blobs` against Azurite, a real Azure Blob endpoint, with real (HMAC-signed) SAS URLs.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn azurite_bin() -> PathBuf {
    let tools = std::env::var("PEERD_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/peerd-tools"));
    tools.join("azurite/node_modules/.bin/azurite-blob")
}

struct Azurite {
    child: Child,
    base: String,
}

impl Azurite {
    fn start(dir: &Path) -> Azurite {
        let port = free_port("127.0.0.1");
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("azurite.log");
        let mut child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location", dir.to_str().unwrap()])
            .args(["--skipApiVersionCheck", "--disableTelemetry"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .unwrap();
        // Node.js starts slowly on a cold machine (a fresh clone's first run once took more than
        // the 10 s this waited before): up to 60 s, and a clear failure with Azurite's own words.
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Azurite { child, base: format!("http://127.0.0.1:{port}/devstoreaccount1") };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Azurite exited ({status}) before listening on port {port}:\n{}", said());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("Azurite did not listen on port {port} within 60 s:\n{}", said())
    }
    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new(fixtures().join("azurite.py")).args(args).output().unwrap();
        assert!(out.status.success(), "azurite.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
    fn sas(&self, blob: &str, perms: &str) -> String {
        self.tool(&["sas", &self.base, "test", blob, perms])
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

#[test]
fn blobs_with_azurite_sas_urls() {
    if !require("azurite", &["node", "python3", azurite_bin().to_str().unwrap()], false) {
        return;
    }
    let work = tempdir("pd-az");
    let az = Azurite::start(&work.path().join("az"));
    az.tool(&["container", &az.base, "test"]);
    const CHUNK: usize = 256 * 1024;
    let files =
        [("empty", data(1, 0)), ("one", data(2, 1)), ("odd", data(3, 3 * CHUNK + 3)), ("big", data(4, 9 * CHUNK - 1))];
    for (name, bytes) in &files {
        let f = work.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        az.tool(&["put", &az.sas(name, "rcw"), f.to_str().unwrap()]);
    }
    let host = az.base.trim_end_matches("/devstoreaccount1").trim_start_matches("http://").to_owned();
    let allowed = format!("[\"http://{host}\"]");
    let ports = Ports::free("127.0.0.2");
    let boot = format!("127.0.0.2:{}", ports.p2p);
    let env = [
        ("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str()),
        ("PEERD_BLOBS__CHUNK_SIZE", "262144"),
        ("PEERD_BLOBS__PREFETCH", "false"),
        ("PEERD_P2P__SECRET", "azurite-test-cluster-secret"),
        ("PEERD_P2P__RESOLVE_TIMEOUT", "300ms"),
        ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s"),
        ("PEERD_LOG__LEVEL", "info,peerd=debug"),
    ];
    let args = ["--containerd-socket", "/nonexistent.sock", "--bootstrap-peer", boot.as_str()];
    let a = Peerd::start_on("127.0.0.2", ports, None, &args, &env);
    let b = Peerd::start_on("127.0.0.3", ports, None, &args, &env);
    a.wait_ready();
    b.wait_ready();

    for (name, bytes) in &files {
        let url = a.url(&format!("/blobs/{}", az.sas(name, "r")));
        let r = curl("GET", &url, &[]);
        assert_eq!((r.status, r.body.len()), (200, bytes.len()), "{name}");
        assert!(r.body == *bytes, "{name}: bytes differ");
        if bytes.is_empty() {
            continue;
        }
        let len = bytes.len();
        // Suffix ranges work although Azurite itself answers them with 500: peerd asks absolute ranges.
        for (range, want) in [
            (format!("bytes=-{}", len.min(1000)), len - len.min(1000)..len),
            (format!("bytes={}-", len / 2), len / 2..len),
            ("bytes=0-0".to_string(), 0..1),
            (
                format!("bytes={}-{}", len / 3, (len / 3 + CHUNK + 10).min(len - 1)),
                len / 3..(len / 3 + CHUNK + 11).min(len),
            ),
        ] {
            let r = curl("GET", &url, &[("Range", &range)]);
            assert_eq!(r.status, 206, "{name} {range}");
            assert!(r.body == bytes[want.clone()], "{name} {range}");
        }
    }
    // A forged signature is refused even though the bytes are in A's cache.
    let forged = az.sas("big", "r").replace("sig=", "sig=AAAA");
    let r = curl("GET", &a.url(&format!("/blobs/{forged}")), &[("Range", "bytes=0-9")]);
    assert_eq!((r.status, r.error_code().as_str()), (403, "DENIED"), "cached bytes only for URLs the upstream accepts");

    // B reads with its own, different SAS: the chunks come from A, which never sees B's URL.
    std::thread::sleep(Duration::from_secs(2));
    let b_url = b.url(&format!("/blobs/{}", az.sas("big", "r")));
    let r = curl("GET", &b_url, &[]);
    assert!(r.status == 200 && r.body == files[3].1, "B reads the file");
    assert!(b.metric("peerd_blobs_bytes_total", &["source=\"peer\""]) > 0.0, "B's chunks came from A");
    assert!(a.log_text().contains("/blobs-chunk/"), "A served chunks by id");
    for (who, p) in [("A", &a), ("B", &b)] {
        assert!(!p.log_text().contains("sig="), "{who} never logs or forwards a signature");
    }
}
