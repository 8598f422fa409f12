//! `[::]` listeners serve both stacks (issue "The chart on real clusters": binds were hard-coded
//! to 0.0.0.0, so IPv6-only clusters could not peer). The chart's `bindAddress: "::"` relies on
//! this: peer, metrics and libp2p listeners answer on IPv4 and IPv6.

mod common;
use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "dual-stack-test-secret-0001";

fn free_v6_port() -> Option<u16> {
    TcpListener::bind("[::1]:0").ok().map(|l| l.local_addr().unwrap().port())
}

#[test]
fn unspecified_ipv6_listeners_answer_on_both_stacks() {
    let Some(_) = free_v6_port() else {
        // Not a package the suite can install: a kernel or container without IPv6. Loud skip.
        eprintln!("\n########## SKIPPED: dual_stack: this machine has no IPv6 loopback (::1) ##########\n");
        return;
    };
    // Ports free on both stacks.
    let port = || loop {
        let p = free_port("127.0.0.1");
        if TcpListener::bind(("::1", p)).is_ok() {
            return p;
        }
    };
    let (http, peer, metrics, p2p) = (port(), port(), port(), port());
    let data = tempdir("pd-ds");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .arg("run")
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--peer-addr", &format!("[::]:{peer}"), "--metrics-addr", &format!("[::]:{metrics}")])
        .args(["--p2p-addr", &format!("[::]:{p2p}"), "--data-dir", data.path().to_str().unwrap()])
        .args(["--containerd-socket", "/nonexistent.sock"])
        .env("PEERD_P2P__SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            terminate(self.0, Duration::from_secs(5));
        }
    }
    let _stop = Stop(&mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get_status(&format!("http://127.0.0.1:{http}/readyz")) != Some(200) {
        assert!(Instant::now() < deadline, "peerd did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    for host in ["127.0.0.1", "[::1]"] {
        assert_eq!(http_get_status(&format!("http://{host}:{metrics}/healthz")), Some(200), "metrics on {host}");
        // The peer listener answers (401: unsigned) on both stacks.
        assert_eq!(http_get_status(&format!("http://{host}:{peer}/v2/")), Some(401), "peer listener on {host}");
        let p2p_addr: SocketAddr = format!("{host}:{p2p}").parse().unwrap();
        assert!(TcpStream::connect_timeout(&p2p_addr, Duration::from_secs(2)).is_ok(), "libp2p on {host}");
    }
}
