//! What a new user tripped over in their first hour (issue "The first hour with peerd"): each
//! test reproduces one report and checks the fix.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "first-hour-test-secret-0001";

fn peerd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerd")).args(args).envs(env.iter().copied()).output().unwrap()
}

/// Two nodes started with the same `--p2p-addr`: libp2p's SO_REUSEPORT let both listen and the
/// kernel split peer connections between two identities. The second now fails like the others.
#[test]
fn a_p2p_port_in_use_is_refused() {
    let a = Peerd::start("127.0.0.1", &["--containerd-socket", "/nonexistent.sock"], &[("PEERD_P2P__SECRET", SECRET)]);
    let (http, peer, metrics) = (free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1"));
    let data = tempdir("pd-fh");
    let out = peerd(
        &[
            "run",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--peer-addr",
            &format!("127.0.0.1:{peer}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--p2p-addr",
            &a.p2p.to_string(),
            "--data-dir",
            data.path().to_str().unwrap(),
            "--containerd-socket",
            "/nonexistent.sock",
        ],
        &[("PEERD_P2P__SECRET", SECRET)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {}", a.p2p)), "{err}");
    assert_eq!(err.matches("cannot listen on").count(), 1, "the fatal error is printed once:\n{err}");
}

/// Malformed static bootstrap peers and short secret files are configuration errors (exit 2).
#[test]
fn config_rejects_mistyped_peers_and_short_secret_files() {
    for peer in ["127.0.0.1", "10.0.0.5:", "node-a:port"] {
        let out = peerd(&["config", "--bootstrap-peer", peer], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{peer}: {err}");
        assert!(err.starts_with("peerd: invalid configuration: p2p.bootstrap_peers:"), "{err}");
    }
    let dir = tempdir("pd-fh");
    let file = dir.path().join("secret");
    std::fs::write(&file, "short\n").unwrap();
    let out = peerd(&["config", "--secret-file", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
    let out = peerd(&["config"], &[("PEERD_HTTP__ADRESS", "x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("peerd: invalid configuration: http.adress: unknown key"), "{err}");
    assert!(!err.contains("figment") && !err.contains("default."), "{err}");
}

/// A static bootstrap peer whose name does not resolve leaves the node not ready (it used to
/// count as "alone" and report ready), and the log does not claim "peerd ready".
#[test]
fn an_unresolvable_bootstrap_peer_is_not_ready() {
    let p = Peerd::start_on(
        "127.0.0.1",
        Ports::free("127.0.0.1"),
        None,
        &["--containerd-socket", "/nonexistent.sock", "--bootstrap-peer", "no-such-node.invalid:5003"],
        &[("PEERD_P2P__SECRET", SECRET), ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s")],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http_get_status(&p.url("/readyz")), Some(503));
    assert_eq!(http_get_status(&p.url("/healthz")), Some(200));
    let log = p.log_text();
    assert!(log.contains("peerd serving") && !log.contains("peerd ready"), "{log}");
    // The debug page answers a missing key plainly.
    let r = curl("GET", &p.url("/debug/resolve"), &[]);
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("?key= is missing"));
    assert!(!log.contains("Failed to trigger bootstrap"), "{log}");
}

/// An existing cache directory peerd cannot write is refused at start, naming the path.
#[test]
fn an_unwritable_cache_dir_is_refused_at_start() {
    if !require("unwritable_cache", &["mount", "umount"], true) {
        return;
    }
    let dir = tempdir("pd-fh");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    // Root writes through permissions: a read-only mount is what stops it.
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", cache.to_str().unwrap()]).status();
    assert!(ok.is_ok_and(|s| s.success()), "mount a read-only tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(cache.clone());
    let (http, metrics) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let out = peerd(
        &[
            "run",
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--containerd-socket",
            "/nonexistent.sock",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[("PEERD_BLOBS__CACHE_DIR", cache.to_str().unwrap())],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("blobs.cache_dir {} is not writable", cache.display())), "{err}");
}

/// A lone node (p2p on, nobody to swarm with) streams a blob straight from the upstream: no
/// `swarm.gather` wait, and the bytes are labelled `source="upstream"` as the Quickstart says.
#[test]
fn a_lone_node_does_not_swarm() {
    if !require("lone_node", &["docker-registry", "curl"], false) {
        return;
    }
    let work = tempdir("pd-fh");
    let reg = Registry::start(work.path());
    let blob = pattern(4 << 20, 13);
    let digest = reg.push_blob("lone/app", &blob);

    let p = Peerd::start(
        "127.0.0.1",
        &mirror_args(&reg.addr),
        &[("PEERD_P2P__SECRET", SECRET), ("PEERD_SWARM__GATHER", "3s")],
    );
    let t = Instant::now();
    let r = curl("GET", &p.url(&format!("/v2/lone/app/blobs/{digest}?ns={}", reg.addr)), &[]);
    let took = t.elapsed();
    assert_eq!((r.status, r.body.len()), (200, blob.len()));
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), digest);
    assert_eq!(p.metric("peerd_served_bytes_total", &["source=\"upstream\""]), blob.len() as f64);
    assert_eq!(p.metric("peerd_served_bytes_total", &["source=\"swarm\""]), 0.0);
    // With a 3 s gather, a swarm download could not have finished sooner (not a speed assertion:
    // a structural one — the gather wait did not happen).
    assert!(took < Duration::from_secs(3), "no gather wait: {took:?}");
}
