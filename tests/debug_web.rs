//! The `/debug/web` page in a real headless browser (Debian's chromium) against a 3-node lab
//! cluster with live data: a pull, a preheat, the measure form. Saves a screenshot; with
//! `PEERD_UPDATE_SCREENSHOT=1` it also replaces docs/debug-web.png.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "integration-test-debugweb-secret";
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const TOOLS: &[&str] =
    &["docker-registry", "skopeo", "umoci", "busybox", "containerd", "ctr", "runc", "curl", "chromium"];

/// `chromium --headless` with its own profile dir (parallel runs do not share a lock).
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debug_page_renders_live_cluster_data_in_headless_chromium() {
    if !require("debug_web", TOOLS, true) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-dw");
    let ports = Ports::free(IPS[0]);
    let mut env = cluster_env(SECRET);
    env.push(("PEERD_METRICS__DEBUG_WEB", "true"));
    let nodes = start_nodes(work.path(), &reg.addr, &IPS, &IPS, ports, &env);
    all_ready(&nodes);
    let (a, c) = (&nodes[0], &nodes[2]);
    let image = format!("{}/test/multi:v1", reg.addr);
    let layers = image_layers(&info, "multi");
    a.containerd.pull(&a.hosts, &image);
    let a_id = peer_id(&a.peerd);
    let c_id = peer_id(&c.peerd);
    wait("A's layers resolvable from C", Duration::from_secs(30), || {
        layers.iter().all(|(d, _)| resolves(&c.peerd, d).contains(&a_id))
    });
    // Live data on C: a pull of the single-layer image (transfers), and a preheat of it.
    c.containerd.pull(&c.hosts, &format!("{}/test/single:v1", reg.addr));
    for n in &nodes {
        wait("the nodes announced as preheat targets", Duration::from_secs(30), || {
            resolves(&n.peerd, "peerd/nodes/0/0").len() == 2
        });
    }
    let out = Command::new(env!("CARGO_BIN_EXE_peerd"))
        .args(["preheat", "--all", "--wait", "--addr", &c.peerd.url(""), &format!("{}/test/index:v1", reg.addr)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let profile = work.path().join("chromium");
    let page = format!("http://{}/debug/web", c.peerd.metrics);
    let dom = chromium(&profile, &["--dump-dom"], &page);
    assert!(dom.contains(&format!("<code id=\"peer-id\">{c_id}</code>")), "C's peer id:\n{dom}");
    assert!(dom.contains("<td id=\"connected\">2</td>"), "two connected peers:\n{dom}");
    let keys: u64 = dom.split("<td id=\"keys\">").nth(1).and_then(|s| s.split('<').next()).unwrap().parse().unwrap();
    assert!(keys >= 3, "C advertises its images' keys: {keys}");
    assert!(dom.contains("containerd"), "how local blobs are read");
    assert!(dom.contains("<svg") && dom.contains("<circle"), "the traffic chart with live points");
    let transfers = dom.split("id=\"transfers\"").nth(1).expect("a transfers table");
    assert!(transfers.contains("/v2/test/single/blobs/sha256:"), "C's pull is a recent transfer:\n{transfers}");
    let preheats = dom.split("id=\"preheats\"").nth(1).expect("a preheats table");
    assert!(preheats.contains("test/index@sha256:") && preheats.contains("done"), "{preheats}");
    assert!(dom.contains("id=\"auto\""), "the auto-refresh switch (the page's only script)");

    // The measure form: C resolves multi (which only A holds) and reads each layer from A.
    let ns = reg.addr.replace(':', "%3A");
    let measured = chromium(&profile, &["--dump-dom"], &format!("{page}/measure?image={ns}%2Ftest%2Fmulti%3Av1"));
    let table = measured.split("id=\"layers\"").nth(1).unwrap_or_else(|| panic!("no layer table:\n{measured}"));
    for (d, _) in &layers {
        let row = table.split(d.as_str()).nth(1).unwrap_or_else(|| panic!("{d} missing:\n{table}"));
        let row = row.split("</tr>").next().unwrap();
        assert!(row.contains(&a_id), "A holds {d}: {row}");
        assert!(row.contains("class=\"ok\"") && row.contains(&a.peerd.peer.to_string()), "read from A: {row}");
    }
    // A registry that is not mirrored is a clear error on the page.
    let refused = chromium(&profile, &["--dump-dom"], &format!("{page}/measure?image=ghcr.io%2Fx%3Av1"));
    assert!(refused.contains("not mirrored"), "{refused}");

    // A screenshot, as the README shows it: the page with a measurement.
    let shot = work.path().join("debug-web.png");
    let measure_url = format!("{page}/measure?image={ns}%2Ftest%2Fmulti%3Av1");
    chromium(&profile, &[&format!("--screenshot={}", shot.display()), "--window-size=1280,1700"], &measure_url);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot ({} bytes)", png.len());
    if std::env::var("PEERD_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/debug-web.png"), &png).unwrap();
    }
}

#[test]
fn debug_page_is_off_unless_enabled() {
    if !require("debug_web_off", &["curl"], false) {
        return;
    }
    let node = Peerd::start("127.0.0.2", &[], &[]);
    let status = http_get_status(&format!("http://{}/debug/web", node.metrics));
    assert_eq!(status, Some(404));
    let on = Peerd::start("127.0.0.3", &[], &[("PEERD_METRICS__DEBUG_WEB", "true")]);
    assert_eq!(http_get_status(&format!("http://{}/debug/web", on.metrics)), Some(200));
    // Never on the front end or anywhere else by default.
    assert_eq!(http_get_status(&on.url("/debug/web")), Some(404));
}
