//! Shutdown in order (SIGTERM): not ready first, then no new connections, then the transfers in
//! flight finish within `http.shutdown_timeout` (or are cut at its end), then the process exits.
//! Before: each listener handled the signal on its own and readiness turned false only after
//! every server had stopped.

mod common;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A 3 MiB blob behind a registry link of 1 MiB/s, so a download takes ~3 s, and a node
/// mirroring it with `grace` to shut down.
fn slow_mirror(grace: &str) -> (tempfile::TempDir, Registry, CountingProxy, Peerd, String, Vec<u8>) {
    let work = tempdir("pd-life");
    let reg = Registry::start(&work.path().join("reg"));
    let data = pattern(3 << 20, 7);
    let digest = reg.push_blob("test/big", &data);
    let proxy = CountingProxy::start(&reg.addr, 1 << 20);
    let mut args = mirror_args(&proxy.addr).to_vec();
    args.push("--no-p2p");
    let peerd = Peerd::start("127.0.0.1", &args, &[("PEERD_HTTP__SHUTDOWN_TIMEOUT", grace)]);
    (work, reg, proxy, peerd, digest, data)
}

/// Start a download of the blob through `peerd` (curl); returns the child writing to stdout.
fn start_download(peerd: &Peerd, proxy: &CountingProxy, digest: &str) -> std::process::Child {
    let url = peerd.url(&format!("/v2/test/big/blobs/{digest}?ns={}", proxy.addr.replace(':', "%3A")));
    Command::new("curl").args(["-s", "--max-time", "60", &url]).stdout(Stdio::piped()).spawn().unwrap()
}

fn sigterm(pid: u32) {
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
}

/// `/readyz` on the metrics listener.
fn readyz(peerd: &Peerd) -> Option<u16> {
    http_get_status(&format!("http://{}/readyz", peerd.metrics))
}

#[test]
fn sigterm_turns_not_ready_refuses_new_work_and_lets_transfers_finish() {
    let (_work, _reg, proxy, mut peerd, digest, data) = slow_mirror("30s");
    let mut dl = start_download(&peerd, &proxy, &digest);
    wait("the download to be under way", Duration::from_secs(10), || proxy.sent() > 256 << 10);
    let pid = peerd.pid();
    sigterm(pid);
    // Not ready at once, while the transfer is still running.
    wait("/readyz to answer 503", Duration::from_secs(2), || readyz(&peerd) == Some(503));
    // New requests are not served any more (refused, or left unanswered until the end).
    let late = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", &peerd.url("/v2/")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&late.stdout), "000", "a request after SIGTERM got no answer");
    // The transfer in flight completes, whole and correct.
    let mut got = Vec::new();
    dl.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    assert!(dl.wait().unwrap().success());
    assert_eq!(got.len(), data.len(), "the in-flight download finished");
    assert!(got == data, "with the right bytes");
    // Then the process exits, cleanly.
    wait("peerd to exit", Duration::from_secs(15), || peerd.exit_status().is_some());
    assert!(peerd.exit_status().unwrap().success(), "a clean exit: {}", peerd.log_text());
    assert!(peerd.log_text().contains("shutting down: not ready"), "{}", peerd.log_text());
    assert!(peerd.log_text().contains("peerd stopped"), "{}", peerd.log_text());
}

#[test]
fn a_transfer_longer_than_the_grace_is_cut_and_the_node_still_exits() {
    let (_work, _reg, proxy, mut peerd, digest, data) = slow_mirror("1s");
    let mut dl = start_download(&peerd, &proxy, &digest);
    wait("the download to be under way", Duration::from_secs(10), || proxy.sent() > 128 << 10);
    let pid = peerd.pid();
    let t = Instant::now();
    sigterm(pid);
    let mut got = Vec::new();
    dl.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    let _ = dl.wait();
    assert!(got.len() < data.len(), "cut at the end of the grace ({} of {} bytes)", got.len(), data.len());
    wait("peerd to exit", Duration::from_secs(15), || peerd.exit_status().is_some());
    assert!(t.elapsed() < Duration::from_secs(10), "exited {:?} after SIGTERM with a 1 s grace", t.elapsed());
}
