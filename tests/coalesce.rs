//! Issue 14, finding 7: concurrent GETs of a small blob (under `swarm.min_size`) through one
//! node share one upstream fetch, against a real docker-registry.

mod common;
use common::*;
use std::process::Command;

const TOOLS: &[&str] = &["docker-registry", "curl"];

/// Blob GETs the registry logged for `digest` (its access log has one line per request).
fn registry_blob_gets(reg: &Registry, digest: &str) -> usize {
    reg.log().lines().filter(|l| l.contains(&format!("\"GET /v2/test/small/blobs/{digest} "))).count()
}

#[test]
fn fifty_concurrent_gets_of_a_small_blob_fetch_it_upstream_once() {
    if !require("coalesce_small_blobs", TOOLS, false) {
        return;
    }
    let work = tempdir("pd-co");
    let reg = Registry::start(&work.path().join("reg"));
    let data = pattern(300 * 1024, 13);
    let digest = reg.push_blob("test/small", &data);
    // About 500 kB/s from the registry: one fetch takes ~600 ms, so the 50 clients (curl
    // processes, which take a while to start on a loaded machine) overlap it.
    let proxy = CountingProxy::start(&reg.addr, 500_000);
    let peerd = Peerd::start(
        "127.0.0.1",
        &[
            "--mirror-host",
            &proxy.addr,
            "--plain-http-host",
            &proxy.addr,
            "--containerd-socket",
            "/nonexistent.sock",
            "--no-p2p",
        ],
        &[],
    );
    let url = peerd.url(&format!("/v2/test/small/blobs/{digest}?ns={}", proxy.addr.replace(':', "%3A")));
    let before = registry_blob_gets(&reg, &digest);
    let out = tempdir("pd-co-out");
    let results: Vec<(String, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (url, path) = (url.clone(), out.path().join(format!("c{i}")));
                s.spawn(move || {
                    let o = Command::new("curl")
                        .args(["-sS", "--max-time", "60", "-o"])
                        .arg(&path)
                        .args(["-w", "%{http_code}", &url])
                        .output()
                        .unwrap();
                    (String::from_utf8_lossy(&o.stdout).into_owned(), std::fs::read(&path).unwrap_or_default())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, body)) in results.iter().enumerate() {
        assert_eq!(status, "200", "client {i}:\n{}", peerd.log_text());
        assert_eq!(body.len(), data.len(), "client {i} got the whole blob");
        assert!(*body == data, "client {i} got the blob's bytes");
    }
    let gets = registry_blob_gets(&reg, &digest) - before;
    let shared = peerd.metric("peerd_coalesced_requests_total", &["outcome=\"shared\""]);
    eprintln!(
        "50 clients: {gets} blob GETs at the registry, {} bytes sent, {shared} requests served shared bytes",
        proxy.sent()
    );
    assert!(gets >= 1, "the registry's access log names the blob GETs");
    assert!(gets <= 3, "50 concurrent GETs of a 300 KiB blob cost {gets} upstream GETs");
    assert!(proxy.sent() < 4 * data.len() as u64, "registry sent {} bytes", proxy.sent());
    assert!(shared >= 40.0, "most clients joined a flight: {shared}");
}
