//! `peerd kube sleep` and `peerd kube wait-daemonset`: what the chart's uninstall hook runs in
//! peerd's own image instead of the pause and kubectl images. The API server is a fake one on
//! loopback answering the DaemonSet GET the way the real one does.

mod common;
use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn daemonset(ready: i64) -> String {
    serde_json::json!({
        "kind": "DaemonSet", "apiVersion": "apps/v1",
        "metadata": {"name": "peerd-cleanup", "namespace": "peerd-ns", "generation": 1},
        "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                   "currentNumberScheduled": 3, "numberReady": ready}
    })
    .to_string()
}

fn wait(api: &str, timeout: &str, token: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(["kube", "wait-daemonset", "peerd-cleanup", "--namespace", "peerd-ns", "--timeout", timeout])
        .args(["--api-url", api, "--token-file", token.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn wait_daemonset_returns_when_every_pod_is_ready_and_fails_after_the_timeout() {
    let dir = tempdir("pd-kube");
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let api = FakeUpstream::start(move |seen| {
        if seen.target != "/apis/apps/v1/namespaces/peerd-ns/daemonsets/peerd-cleanup"
            || seen.header("authorization") != Some("Bearer test-token")
        {
            return Reply::status(403, &[]);
        }
        // Ready on the third look.
        let n = c.fetch_add(1, Ordering::SeqCst);
        Reply::ok("application/json", daemonset(if n >= 2 { 3 } else { 1 }))
    });
    let url = format!("http://{}", api.addr);
    let out = wait(&url, "60s", &token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 of 3 pods ready") && stdout.contains("rolled out"), "{stdout}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Never ready: exit 1 after the timeout, saying what it waited for.
    let stuck = FakeUpstream::start(|_| Reply::ok("application/json", daemonset(2)));
    let t = Instant::now();
    let out = wait(&format!("http://{}", stuck.addr), "3s", &token);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 of 3 pods ready"));
    assert!(t.elapsed() < Duration::from_secs(30), "bounded by the timeout");
    // A wrong token is reported, not taken for "ready".
    let out = wait(&url, "3s", &dir.path().join("missing-token"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn sleep_ends_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerd")).args(["kube", "sleep"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still sleeping");
    let t = Instant::now();
    terminate(&mut child, Duration::from_secs(10));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM, not the SIGKILL after the grace");
}
