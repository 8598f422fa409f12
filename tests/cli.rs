//! The command line: help, config layering as a user sees it, clear errors before anything
//! starts, JSON logs with correlation ids.

mod common;
use common::*;
use std::process::Command;

fn peerd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerd")).args(args).envs(env.iter().copied()).output().unwrap()
}

#[test]
fn help_documents_every_option() {
    let out = peerd(&["run", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--http-addr",
        "--metrics-addr",
        "--containerd-socket",
        "--containerd-namespace",
        "--default-ns",
        "--mirror-host",
        "--mirror-any-host",
        "--plain-http-host",
        "--log-level",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let top = String::from_utf8_lossy(&peerd(&["--help"], &[]).stdout).into_owned();
    assert!(top.contains("run") && top.contains("config") && top.contains("PEERD_"), "{top}");
}

#[test]
fn config_layers_and_prints() {
    let dir = tempdir("pd-cli");
    let file = dir.path().join("peerd.toml");
    std::fs::write(&file, "[http]\naddr = \"127.0.0.5:5000\"\n[log]\nlevel = \"debug\"\n").unwrap();
    let out = peerd(
        &["config", "--config", file.to_str().unwrap(), "--log-level", "warn"],
        &[("PEERD_METRICS__ADDR", "127.0.0.5:9")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(cfg["http"]["addr"].as_str(), Some("127.0.0.5:5000"));
    assert_eq!(cfg["metrics"]["addr"].as_str(), Some("127.0.0.5:9"));
    assert_eq!(cfg["log"]["level"].as_str(), Some("warn"));
    assert_eq!(cfg["containerd"]["namespaces"][0].as_str(), Some("k8s.io"));
}

#[test]
fn invalid_config_is_one_line_and_nothing_starts() {
    let port = free_port("127.0.0.1");
    let addr = format!("127.0.0.1:{port}");
    for (args, env) in [
        (vec!["run", "--http-addr", &addr], vec![("PEERD_UPSTREAM__IDLE_TIMEOUT", "soon")]),
        (vec!["run", "--http-addr", &addr, "--log-format", "xml"], vec![]),
        (vec!["run", "--http-addr", &addr, "--config", "/nonexistent/peerd.toml"], vec![]),
        (vec!["run", "--http-addr", &addr, "--mirror-host", "http://bad"], vec![]),
    ] {
        let out = peerd(&args, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("peerd: invalid configuration:"), "{err}");
        assert_eq!(http_get_status(&format!("http://{addr}/healthz")), None, "nothing may be listening");
    }
    let out = peerd(&["run", "--http-addr", "not-an-addr"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap rejects malformed flags");
}

#[test]
fn port_in_use_is_a_clear_failure() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let out = peerd(
        &["run", "--http-addr", &addr, "--metrics-addr", &metrics, "--containerd-socket", "/nonexistent.sock"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn json_logs_carry_correlation_ids() {
    let p = Peerd::start(
        "127.0.0.1",
        &["--log-format", "json", "--log-level", "info,peerd=debug", "--containerd-socket", "/nonexistent.sock"],
        &[],
    );
    let r = curl("GET", &p.url("/v2/"), &[("X-MS-Peerd-CorrelationId", "test-cid-42")]);
    assert_eq!(r.header("x-ms-peerd-correlationid"), Some("test-cid-42"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lines = p.log.lock().unwrap().clone();
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v["level"].is_string(), "{l}");
        }
        if lines.iter().any(|l| l.contains("test-cid-42")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no log line with the correlation id:\n{}", lines.join("\n"));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(http_get_status(&format!("http://{}/healthz", p.metrics)), Some(200));
    assert_eq!(http_get_status(&format!("http://{}/readyz", p.http)), Some(200));
}
