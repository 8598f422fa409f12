//! `peerd doctor` on a lab node: two peerd nodes with a cluster secret (the harness gives each its
//! own peer listener), each with its own real containerd 1.6 (whose config names the hosts
//! directory) and hosts.toml written by `peerd hosts install`, against a real registry. Healthy: every check ✓ and exit 0. Then
//! broken one way at a time — a registry without hosts.toml, a config without config_path, no
//! peers, peerd down — each ✗ with its fix and a non-zero exit.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "doctor-test-cluster-secret";
const IPS: [&str; 2] = ["127.0.0.5", "127.0.0.6"];
const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl"];

fn peerd_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerd")).args(args).output().unwrap()
}

/// A containerd 1.6 whose own config sets `config_path = hosts` (the CRI plugin is disabled in
/// the harness, so containerd itself never reads it; `ctr --hosts-dir` and the doctor do).
fn containerd_with_config_path(dir: &Path, hosts: &Path) -> Containerd {
    let extra =
        format!("[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = {:?}\n", hosts.to_str().unwrap());
    let out = Command::new(fixtures().join("containerd.sh"))
        .arg("start")
        .arg(dir)
        .env("CONFIG_EXTRA", extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "containerd.sh: {}", String::from_utf8_lossy(&out.stderr));
    Containerd { dir: dir.to_owned(), socket: String::from_utf8_lossy(&out.stdout).trim().into() }
}

struct LabNode {
    peerd: Peerd,
    containerd: Containerd,
    hosts: PathBuf,
}

impl LabNode {
    fn config(&self) -> PathBuf {
        self.containerd.dir.join("config.toml")
    }

    /// `peerd doctor --json` for this node, with `extra` flags: (exit code, report).
    fn doctor(&self, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        self.doctor_with(&self.config(), extra)
    }

    fn doctor_with(&self, config: &Path, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
        let mut args = self.doctor_args();
        let at = args.iter().position(|a| a == "--containerd-config").unwrap() + 1;
        args[at] = config.display().to_string();
        args.push("--json".into());
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = peerd_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", String::from_utf8_lossy(&out.stdout)));
        eprintln!("{report:#}");
        (out.status.code(), report)
    }

    fn doctor_args(&self) -> Vec<String> {
        vec![
            "doctor".into(),
            "--mirror".into(),
            format!("http://{}", self.peerd.http),
            "--metrics".into(),
            format!("http://{}", self.peerd.metrics),
            "--containerd-socket".into(),
            self.containerd.socket.display().to_string(),
            "--containerd-config".into(),
            self.config().display().to_string(),
            "--timeout".into(),
            "3s".into(),
        ]
    }
}

fn checks<'a>(r: &'a serde_json::Value, id: &str) -> Vec<&'a serde_json::Value> {
    r["checks"].as_array().unwrap().iter().filter(|c| c["id"] == id).collect()
}

/// The one check `id` (for `registry` when given); asserts it is there.
fn check<'a>(r: &'a serde_json::Value, id: &str, registry: Option<&str>) -> &'a serde_json::Value {
    checks(r, id)
        .into_iter()
        .find(|c| registry.is_none_or(|reg| c["registry"] == reg))
        .unwrap_or_else(|| panic!("no check {id} {registry:?} in {r:#}"))
}

/// A failed check whose fix mentions `fix`.
fn assert_failed(r: &serde_json::Value, id: &str, registry: Option<&str>, fix: &str) {
    let c = check(r, id, registry);
    assert_eq!(c["ok"], false, "{id} should fail: {c:#}");
    assert!(c["fix"].as_str().is_some_and(|f| f.contains(fix)), "{id}: fix should mention {fix:?}: {c:#}");
    assert_eq!(r["ok"], false);
}

#[test]
fn doctor_on_a_healthy_lab_node_then_broken_ones() {
    if !require("doctor", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-dr");
    let ports = Ports::free(IPS[0]);
    let env = cluster_env(SECRET);
    let mut nodes: Vec<LabNode> = IPS
        .iter()
        .map(|ip| {
            let hosts = work.path().join(format!("hosts-{ip}"));
            let containerd = containerd_with_config_path(&work.path().join(format!("c-{ip}")), &hosts);
            let socket = containerd.socket.display().to_string();
            let boot: Vec<String> = IPS.iter().filter(|o| *o != ip).map(|o| format!("{o}:{}", ports.p2p)).collect();
            let mut args =
                vec!["--mirror-host", &reg.addr, "--plain-http-host", &reg.addr, "--containerd-socket", &socket];
            for b in &boot {
                args.extend(["--bootstrap-peer", b.as_str()]);
            }
            let peerd = Peerd::start_on(ip, ports, None, &args, &env);
            // Where to write comes from containerd's config: no --certs-dir.
            let config = containerd.dir.join("config.toml");
            let mirror = format!("http://{}", peerd.http);
            let out = peerd_cli(&[
                "hosts",
                "install",
                "--containerd-config",
                config.to_str().unwrap(),
                "--mirror",
                &mirror,
                "--registry",
                &reg.addr,
                "--plain-http",
                &reg.addr,
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert!(hosts.join(&reg.addr).join("hosts.toml").exists());
            LabNode { peerd, containerd, hosts }
        })
        .collect();
    for n in &nodes {
        n.peerd.wait_ready();
    }

    // A pulls from the registry; B pulls the same image from A.
    let image = format!("{}/test/single:v1", reg.addr);
    let manifest = info["single"]["manifest"]["digest"].as_str().unwrap().to_owned();
    nodes[0].containerd.pull(&nodes[0].hosts, &image);
    let a_id = peer_id(&nodes[0].peerd);
    wait("B resolves A for the manifest", Duration::from_secs(30), || {
        resolves(&nodes[1].peerd, &manifest).contains(&a_id)
    });
    nodes[1].containerd.pull(&nodes[1].hosts, &image);

    // Healthy: every check passes, registries found through peerd's marker.
    let b = &nodes[1];
    let (code, r) = b.doctor(&[]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["ok"], true);
    for id in ["containerd", "config_path", "mirror", "content", "p2p_peers", "dht_lookup", "peer_transfer"] {
        assert_eq!(check(&r, id, None)["ok"], true, "{id}");
    }
    for id in ["hosts_toml", "upstream"] {
        assert_eq!(check(&r, id, Some(&reg.addr))["ok"], true, "{id}");
    }
    assert!(check(&r, "containerd", None)["detail"].as_str().unwrap().contains("containerd 1.6"));
    assert!(check(&r, "content", None)["detail"].as_str().unwrap().contains("fast path"));
    assert!(check(&r, "hosts_toml", Some(&reg.addr))["detail"].as_str().unwrap().ends_with("(first)"));
    assert!(check(&r, "upstream", Some(&reg.addr))["detail"].as_str().unwrap().contains("HTTP 200"));
    assert!(check(&r, "p2p_peers", None)["detail"].as_str().unwrap().starts_with("1 peers connected"));
    // The text form: a ✓ per check and no fix lines.
    let text = peerd_cli(&b.doctor_args().iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("✓ mirror") && !text.contains('✗') && text.contains("all checks passed"), "{text}");

    // A registry that must be mirrored but has no hosts.toml.
    let (code, r) = b.doctor(&["--mirror-host", &reg.addr, "--mirror-host", "127.0.0.1:1"]);
    assert_eq!(code, Some(1));
    assert_failed(&r, "hosts_toml", Some("127.0.0.1:1"), "peerd hosts install --mirror");
    assert_eq!(check(&r, "hosts_toml", Some(&reg.addr))["ok"], true);
    assert_failed(&r, "upstream", Some("127.0.0.1:1"), "cannot reach the registry");

    // containerd's config without config_path.
    let bare = work.path().join("no-config-path.toml");
    std::fs::write(&bare, format!("version = 2\nroot = {:?}\n", b.containerd.dir.join("root").to_str().unwrap()))
        .unwrap();
    let (code, r) = b.doctor_with(&bare, &[]);
    assert_eq!(code, Some(1));
    assert_failed(&r, "config_path", None, "config_path = \"/etc/containerd/certs.d\"");
    assert_failed(&r, "hosts_toml", None, "peerd hosts install");

    // No peers: A goes away.
    nodes[0].peerd.stop_hard();
    let b = &nodes[1];
    wait("B sees no peer", Duration::from_secs(30), || {
        get_json(&format!("http://{}/debug/p2p", b.peerd.http))["connected_peers"] == 0
    });
    let (code, r) = b.doctor(&[]);
    assert_eq!(code, Some(1));
    assert_failed(&r, "p2p_peers", None, "same cluster secret");
    assert_eq!(check(&r, "peer_transfer", None)["ok"], true, "the counter keeps what was received");

    // peerd down.
    nodes[1].peerd.stop();
    let b = &nodes[1];
    let (code, r) = b.doctor(&[]);
    assert_eq!(code, Some(1));
    assert_failed(&r, "mirror", None, "start peerd");
    assert_failed(&r, "p2p_peers", None, "start peerd");
    assert_eq!(check(&r, "containerd", None)["ok"], true);
    let text = peerd_cli(&b.doctor_args().iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("✗ mirror") && text.contains("    fix: start peerd"), "{text}");
    nodes.clear();
}

/// A node with p2p off: the doctor says so (✗ with the fix), the rest still checked.
#[test]
fn doctor_says_when_p2p_is_off() {
    if !require("doctor_single", &["curl"], false) {
        return;
    }
    let work = tempdir("pd-ds");
    let hosts = work.path().join("certs.d");
    let config = work.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 3\nroot = {:?}\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = {:?}\n",
            work.path().join("root").to_str().unwrap(),
            hosts.to_str().unwrap()
        ),
    )
    .unwrap();
    let p = Peerd::start(
        "127.0.0.1",
        &["--no-p2p", "--mirror-host", "127.0.0.1:1", "--containerd-socket", "/nonexistent.sock"],
        &[],
    );
    let mirror = format!("http://{}", p.http);
    let out = peerd_cli(&[
        "hosts",
        "install",
        "--containerd-config",
        config.to_str().unwrap(),
        "--mirror",
        &mirror,
        "--default-host",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = format!("http://{}", p.metrics);
    let doctor = || {
        let out = peerd_cli(&[
            "doctor",
            "--json",
            "--mirror",
            &mirror,
            "--metrics",
            &metrics,
            "--containerd-socket",
            "/nonexistent.sock",
            "--containerd-config",
            config.to_str().unwrap(),
            "--timeout",
            "2s",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("{r:#}");
        r
    };
    let r = doctor();
    assert_failed(&r, "p2p_peers", None, "cluster secret");
    assert_failed(&r, "containerd", None, "--containerd-socket");
    assert_failed(&r, "content", None, "--containerd-content-dir");
    // _default alone carries the marker: it is the one hosts check, and it passes.
    assert_eq!(checks(&r, "hosts_toml").len(), 1);
    assert_eq!(check(&r, "hosts_toml", Some("_default"))["ok"], true);
    assert_eq!(check(&r, "mirror", None)["ok"], true);
    assert!(check(&r, "config_path", None)["detail"].as_str().unwrap().contains("config version 3"));
    // EKS's discard_unpacked_layers = true leaves nothing to serve.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[plugins.'io.containerd.cri.v1.images']\ndiscard_unpacked_layers = true\n"))
        .unwrap();
    assert_failed(&doctor(), "content", None, "discard_unpacked_layers = false");
}
