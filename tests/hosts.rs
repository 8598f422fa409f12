//! `peerd hosts install|uninstall` against a real containerd 1.6: the files peerd writes are
//! what containerd reads; a pre-existing hosts.toml comes back byte for byte; with peerd down,
//! containerd still pulls from the registry (the dial timeout keeps it from blocking).

mod common;
use common::*;
use std::process::Command;
use std::time::Instant;

fn peerd_hosts(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerd")).arg("hosts").args(args).output().unwrap()
}

#[test]
fn containerd_uses_the_hosts_toml_peerd_writes() {
    if !require("hosts_toml", &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc"], true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-ht");
    let certs = work.path().join("certs.d");
    // An operator's own file for the registry, with bytes a rewrite would not reproduce.
    let original = format!("# operator config\r\nserver = \"http://{}\"\r\n\t\n", reg.addr).into_bytes();
    std::fs::create_dir_all(certs.join(&reg.addr)).unwrap();
    std::fs::write(certs.join(&reg.addr).join("hosts.toml"), &original).unwrap();

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
        &[],
    );
    let mirror = format!("http://{}", peerd.http);
    let certs_s = certs.to_str().unwrap();
    let out = peerd_hosts(&[
        "install",
        "--certs-dir",
        certs_s,
        "--mirror",
        &mirror,
        "--registry",
        &reg.addr,
        "--plain-http",
        &reg.addr,
        "--dial-timeout",
        "200ms",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(certs.join(&reg.addr).join("hosts.toml")).unwrap();
    assert!(
        written.contains(&format!("[host.\"{mirror}\"]")) && written.contains("dial_timeout = \"200ms\""),
        "{written}"
    );
    assert_eq!(std::fs::read(certs.join(&reg.addr).join("hosts.toml.peerd-backup")).unwrap(), original);

    let node = Containerd::start(&work.path().join("c"));
    node.pull(&certs, &format!("{}/test/multi:v1", reg.addr));
    let multi: u64 = info["multi"]["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert!(
        peerd.metric("peerd_served_bytes_total", &["source=\"upstream\""]) >= multi as f64,
        "containerd pulled through peerd"
    );

    // peerd down: containerd goes to the registry itself.
    let mut peerd = peerd;
    peerd.stop();
    let t = Instant::now();
    node.pull(&certs, &format!("{}/test/single:v1", reg.addr));
    eprintln!("pull with peerd down took {:?}", t.elapsed());

    let out = peerd_hosts(&["uninstall", "--certs-dir", certs_s, "--registry", &reg.addr]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(certs.join(&reg.addr).join("hosts.toml")).unwrap(), original, "restored byte for byte");
    assert!(!certs.join(&reg.addr).join("hosts.toml.peerd-backup").exists());

    // Bad input: a clear error, nothing written.
    let out = peerd_hosts(&["install", "--certs-dir", certs_s, "--registry", "http://bad", "--mirror", &mirror]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid registry"));
    let out = peerd_hosts(&["install", "--certs-dir", certs_s, "--registry", "docker.io", "--dial-timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!certs.join("docker.io").exists());
}
