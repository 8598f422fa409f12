//! Kubernetes events: the exact requests peerd sends to the Events API, checked against a local
//! HTTP server standing in for the API server (no API server runs here).

mod common;
use common::*;
use std::time::{Duration, Instant};

fn json(s: &Seen) -> serde_json::Value {
    serde_json::from_slice(&s.body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&s.body)))
}

fn wait_for(api: &FakeUpstream, what: &str, f: impl Fn(&[Seen]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if f(&api.requests()) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:#?}", api.requests());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn posted<'a>(reqs: &'a [Seen], reason: &str) -> Option<&'a Seen> {
    reqs.iter().find(|r| r.method == "POST" && json(r)["reason"] == reason)
}

#[test]
fn events_are_posted_on_the_pod_deduplicated_and_counted() {
    let api = FakeUpstream::start(|req| {
        if req.method == "POST" {
            Reply::Http {
                status: 201,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: b"{}".to_vec(),
            }
        } else {
            Reply::Http {
                status: 200,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: b"{}".to_vec(),
            }
        }
    });
    let dir = tempdir("pd-ev");
    let token = dir.path().join("token");
    std::fs::write(&token, "test-token\n").unwrap();
    let api_url = format!("http://{}", api.addr);
    let k8s_env = [
        ("PEERD_KUBERNETES__EVENTS", "on"),
        ("PEERD_KUBERNETES__API_URL", api_url.as_str()),
        ("PEERD_KUBERNETES__TOKEN_FILE", token.to_str().unwrap()),
        ("PEERD_KUBERNETES__MIN_EVENT_INTERVAL", "1s"),
        ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s"),
        ("PEERD_P2P__SECRET", "events-test-secret-123456"),
        ("POD_NAME", "peerd-abcde"),
        ("POD_NAMESPACE", "peerd-ns"),
        ("POD_UID", "0b5c7c9e-uid"),
        ("NODE_NAME", "node-1"),
    ];
    // A: bootstraps from a closed port (fails) and from B's address (not started yet).
    let ports_b = Ports::free("127.0.0.1");
    let closed = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let b_p2p = format!("127.0.0.1:{}", ports_b.p2p);
    let a = Peerd::start_on(
        "127.0.0.1",
        Ports::free("127.0.0.1"),
        None,
        &["--bootstrap-peer", &closed, "--bootstrap-peer", &b_p2p],
        &k8s_env,
    );
    wait_for(&api, "P2PInitializing", |r| posted(r, "P2PInitializing").is_some());
    wait_for(&api, "P2PFailed and a PATCH of its count", |r| {
        posted(r, "P2PFailed").is_some() && r.iter().any(|x| x.method == "PATCH")
    });
    // B joins: A is connected.
    let a_p2p = a.p2p.to_string();
    let mut b = Peerd::start_on(
        "127.0.0.1",
        ports_b,
        None,
        &["--bootstrap-peer", &a_p2p],
        &[("PEERD_P2P__SECRET", "events-test-secret-123456"), ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s")],
    );
    wait_for(&api, "P2PConnected", |r| posted(r, "P2PConnected").is_some());
    b.stop_hard();
    wait_for(&api, "P2PDisconnected", |r| posted(r, "P2PDisconnected").is_some());

    let reqs = api.requests();
    for r in reqs.iter() {
        assert_eq!(r.header("authorization"), Some("Bearer test-token"), "{} {}", r.method, r.target);
        assert!(r.target.starts_with("/api/v1/namespaces/peerd-ns/events"), "{}", r.target);
    }
    for (reason, kind) in [
        ("P2PInitializing", "Normal"),
        ("P2PFailed", "Warning"),
        ("P2PConnected", "Normal"),
        ("P2PDisconnected", "Warning"),
    ] {
        let ev = json(posted(&reqs, reason).unwrap());
        assert_eq!(ev["kind"], "Event");
        assert_eq!(ev["type"], kind, "{reason}");
        assert_eq!(ev["count"], 1, "{reason}");
        assert_eq!(ev["involvedObject"]["kind"], "Pod");
        assert_eq!(ev["involvedObject"]["name"], "peerd-abcde");
        assert_eq!(ev["involvedObject"]["namespace"], "peerd-ns");
        assert_eq!(ev["involvedObject"]["uid"], "0b5c7c9e-uid");
        assert_eq!(ev["metadata"]["namespace"], "peerd-ns");
        assert!(ev["metadata"]["name"].as_str().unwrap().starts_with("peerd-abcde."));
        assert_eq!(ev["source"]["component"], "peerd");
        assert_eq!(ev["source"]["host"], "node-1");
        assert!(ev["firstTimestamp"].as_str().unwrap().ends_with('Z'));
    }
    // Each reason is created once; repeats are PATCHes of the same event with a growing count.
    for reason in ["P2PInitializing", "P2PFailed", "P2PConnected", "P2PDisconnected"] {
        assert_eq!(
            reqs.iter().filter(|r| r.method == "POST" && json(r)["reason"] == reason).count(),
            1,
            "{reason} posted once"
        );
    }
    let failed_name = json(posted(&reqs, "P2PFailed").unwrap())["metadata"]["name"].as_str().unwrap().to_owned();
    let patches: Vec<&Seen> = reqs.iter().filter(|r| r.method == "PATCH").collect();
    assert!(
        patches.iter().all(|p| p.target.ends_with(&format!("/events/{failed_name}"))),
        "only P2PFailed repeats here"
    );
    assert_eq!(patches[0].header("content-type"), Some("application/merge-patch+json"));
    let counts: Vec<u64> = patches.iter().map(|p| json(p)["count"].as_u64().unwrap()).collect();
    assert!(counts[0] >= 2 && counts.windows(2).all(|w| w[0] < w[1]), "counts grow: {counts:?}");
    drop(a);
}
