//! Bad input gets a clear status and an OCI error body, and the node keeps serving: malformed
//! names, digests and ranges, traversal attempts, unknown `ns`, push attempts, an upstream that
//! is down, hangs, answers garbage, sends oversized manifests or wrong bytes. Also the
//! anonymous Bearer-token flow and Authorization forwarding against a fake registry.

mod common;
use common::*;
use std::time::{Duration, Instant};

const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn still_serving(p: &Peerd) {
    let r = curl("GET", &p.url("/v2/"), &[]);
    assert_eq!(r.status, 200, "node must keep serving");
}

#[test]
fn malformed_requests_against_a_real_registry() {
    if !require("malformed_requests", &["docker-registry", "skopeo", "umoci", "busybox", "curl"], false) {
        return;
    }
    let (work, reg, info) = registry_with_images("pd-bad");
    let p = Peerd::start(
        "127.0.0.1",
        &["--mirror-host", &reg.addr, "--plain-http-host", &reg.addr, "--containerd-socket", "/nonexistent.sock"],
        &[],
    );
    let ns = format!("ns={}", reg.addr.replace(':', "%3A"));
    let layer = info["single"]["layers"][0]["digest"].as_str().unwrap();
    let size = info["single"]["layers"][0]["size"].as_u64().unwrap();

    // (method, path, headers, expected status, expected OCI code)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", format!("/v2/Test/single/manifests/v1?{ns}"), vec![], 400, "NAME_INVALID"),
        ("GET", format!("/v2/test//single/manifests/v1?{ns}"), vec![], 400, "NAME_INVALID"),
        ("GET", format!("/v2/test/../single/manifests/v1?{ns}"), vec![], 400, "NAME_INVALID"),
        ("GET", format!("/v2/test/%2e%2e/x/manifests/v1?{ns}"), vec![], 400, "NAME_INVALID"),
        ("GET", format!("/v2/../../etc/passwd?{ns}"), vec![], 404, "UNSUPPORTED"),
        ("GET", format!("/v2/test/single/manifests/..%2F..%2Fetc?{ns}"), vec![], 400, "NAME_INVALID"),
        ("GET", format!("/v2/test/single/blobs/sha256:abc?{ns}"), vec![], 400, "DIGEST_INVALID"),
        ("GET", format!("/v2/test/single/blobs/{}?{ns}", EMPTY.to_uppercase()), vec![], 400, "DIGEST_INVALID"),
        (
            "GET",
            format!("/v2/test/single/blobs/md5:d41d8cd98f00b204e9800998ecf8427e?{ns}"),
            vec![],
            400,
            "DIGEST_INVALID",
        ),
        ("GET", format!("/v2/test/single/blobs/{layer}?{ns}"), vec![("Range", "bytes=9-1")], 416, "RANGE_INVALID"),
        ("GET", format!("/v2/test/single/blobs/{layer}?{ns}"), vec![("Range", "bytes=abc")], 416, "RANGE_INVALID"),
        (
            "GET",
            format!("/v2/test/single/blobs/{layer}?{ns}"),
            vec![("Range", &*Box::leak(format!("bytes={size}-").into_boxed_str()))],
            416,
            "RANGE_INVALID",
        ),
        ("GET", "/v2/test/single/manifests/v1?ns=unknown.example".into(), vec![], 404, "NAME_UNKNOWN"),
        ("GET", "/v2/test/single/manifests/v1?ns=bad%20host".into(), vec![], 400, "NAME_INVALID"),
        ("GET", format!("/v2/test/single/manifests/nope?{ns}"), vec![], 404, "MANIFEST_UNKNOWN"),
        ("GET", format!("/v2/test/single/blobs/{EMPTY}?{ns}"), vec![], 404, "BLOB_UNKNOWN"),
        ("POST", format!("/v2/test/single/blobs/uploads/?{ns}"), vec![], 405, "UNSUPPORTED"),
        ("DELETE", format!("/v2/test/single/manifests/v1?{ns}"), vec![], 405, "UNSUPPORTED"),
        ("GET", "/v2/_catalog".into(), vec![], 404, "UNSUPPORTED"),
        ("GET", "/v2/test/single/tags/list".into(), vec![], 404, "UNSUPPORTED"),
    ];
    for (method, path, headers, status, code) in &cases {
        let r = curl(method, &p.url(path), headers);
        assert_eq!((r.status, r.error_code().as_str()), (*status, *code), "{method} {path} {headers:?}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    }
    let r =
        curl("GET", &p.url(&format!("/v2/test/single/blobs/{layer}?{ns}")), &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(r.header("content-range"), Some(format!("bytes */{size}").as_str()));

    // A push with an 8 MiB body is refused without reading it, and nothing was stored upstream.
    let body = work.path().join("big");
    std::fs::write(&body, vec![b'x'; 8 << 20]).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-T", body.to_str().unwrap()])
        .arg(p.url(&format!("/v2/test/single/manifests/v9?{ns}")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "405");
    assert_eq!(http_get_status(&format!("http://{}/v2/test/single/manifests/v9", reg.addr)), Some(404));

    // Ranges through to the upstream, including a suffix range (translated to absolute).
    let full = curl("GET", &p.url(&format!("/v2/test/single/blobs/{layer}?{ns}")), &[]);
    assert_eq!(full.status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&full.body)), layer);
    for (range, start, end) in [("bytes=-100", size - 100, size - 1), ("bytes=10-", 10, size - 1), ("bytes=5-9", 5, 9)]
    {
        let r = curl("GET", &p.url(&format!("/v2/test/single/blobs/{layer}?{ns}")), &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, full.body[start as usize..=end as usize], "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{end}/{size}").as_str()));
    }
    let head = curl("HEAD", &p.url(&format!("/v2/test/single/blobs/{layer}?{ns}")), &[]);
    assert_eq!((head.status, head.header("content-length")), (200, Some(size.to_string().as_str())));
    let head = curl("HEAD", &p.url(&format!("/v2/test/single/manifests/v1?{ns}")), &[]);
    assert_eq!(head.header("docker-content-digest"), info["single"]["manifest"]["digest"].as_str());
    still_serving(&p);
}

#[test]
fn unreachable_hanging_and_garbage_upstreams() {
    if !require("bad_upstreams", &["curl"], false) {
        return;
    }
    let closed = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let wrong_blob_digest = format!("sha256:{}", sha256_hex(b"the real thing"));
    let big = vec![b' '; 5 << 20];
    let fake = FakeUpstream::start(move |req| {
        let t = req.target.as_str();
        if t.contains("/manifests/hang") || t.contains("/blobs/sha256:1111") {
            Reply::Hang
        } else if t.contains("/manifests/garbage") {
            Reply::Garbage(b"SSH-2.0-OpenSSH\r\nnot http at all\r\n\r\n".to_vec())
        } else if t.contains("/manifests/big") {
            Reply::ok("application/vnd.oci.image.manifest.v1+json", big.clone())
        } else if t.contains("/manifests/e500") {
            Reply::status(500, &[])
        } else if t.contains("/blobs/") {
            Reply::ok("application/octet-stream", b"something else entirely".to_vec())
        } else {
            Reply::status(404, &[])
        }
    });
    let p = Peerd::start(
        "127.0.0.1",
        &[
            "--mirror-host",
            &fake.addr,
            "--mirror-host",
            &closed,
            "--plain-http-host",
            &fake.addr,
            "--plain-http-host",
            &closed,
            "--containerd-socket",
            "/nonexistent.sock",
        ],
        &[
            ("PEERD_UPSTREAM__REQUEST_TIMEOUT", "1s"),
            ("PEERD_UPSTREAM__IDLE_TIMEOUT", "1s"),
            ("PEERD_UPSTREAM__FAILURE_THRESHOLD", "1000"),
        ],
    );
    let ns = |h: &str| format!("ns={}", h.replace(':', "%3A"));

    let t = Instant::now();
    let r = curl("GET", &p.url(&format!("/v2/a/manifests/v1?{}", ns(&closed))), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (503, "UNAVAILABLE"));
    assert!(t.elapsed() < Duration::from_secs(5), "refused connection must fail fast");

    let r = curl("GET", &p.url(&format!("/v2/a/manifests/hang?{}", ns(&fake.addr))), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (504, "UNAVAILABLE"), "hanging upstream → timeout, never a hang");
    let r = curl("GET", &p.url(&format!("/v2/a/manifests/garbage?{}", ns(&fake.addr))), &[]);
    assert_eq!(r.status, 502, "garbage → 502");
    let r = curl("GET", &p.url(&format!("/v2/a/manifests/big?{}", ns(&fake.addr))), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (502, "MANIFEST_INVALID"));
    let r = curl("GET", &p.url(&format!("/v2/a/manifests/e500?{}", ns(&fake.addr))), &[]);
    assert_eq!(r.status, 502);

    // Wrong bytes for a digest: never a clean 200. A small blob (held whole in memory, shared by
    // concurrent requests) is checked before the answer: 502 DIGEST_INVALID; a larger one is cut.
    let r = curl("GET", &p.url(&format!("/v2/a/blobs/{wrong_blob_digest}?{}", ns(&fake.addr))), &[]);
    assert!(
        !r.curl_ok || (r.status == 502 && r.error_code() == "DIGEST_INVALID"),
        "client must see a broken transfer or a 502, got a clean {} with {} bytes",
        r.status,
        r.body.len()
    );
    assert!(p.metric("peerd_digest_mismatches_total", &["source=\"upstream\""]) >= 1.0);
    // A blob body that stalls: the idle timeout cuts it.
    let stalled = format!("sha256:{}", "1".repeat(64));
    let t = Instant::now();
    let r = curl("GET", &p.url(&format!("/v2/a/blobs/{stalled}?{}", ns(&fake.addr))), &[]);
    assert!(r.status >= 500 || !r.curl_ok, "stalled upstream must fail: {}", r.status);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(p.metric("peerd_upstream_errors_total", &["kind=\"timeout\""]) >= 1.0);
    still_serving(&p);
}

#[test]
fn breaker_fails_fast_after_repeated_upstream_failures() {
    if !require("breaker", &["curl"], false) {
        return;
    }
    let closed = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let p = Peerd::start(
        "127.0.0.1",
        &["--mirror-host", &closed, "--plain-http-host", &closed, "--containerd-socket", "/nonexistent.sock"],
        &[("PEERD_UPSTREAM__FAILURE_THRESHOLD", "2"), ("PEERD_UPSTREAM__FAILURE_COOLDOWN", "60s")],
    );
    for _ in 0..4 {
        let r = curl("GET", &p.url(&format!("/v2/a/manifests/v1?ns={closed}")), &[]);
        assert_eq!(r.status, 503);
    }
    assert_eq!(p.metric("peerd_upstream_errors_total", &["kind=\"unreachable\""]), 2.0);
    assert_eq!(p.metric("peerd_upstream_errors_total", &["kind=\"circuit_open\""]), 2.0);
}

#[test]
fn bearer_token_flow_and_authorization_forwarding() {
    if !require("token_flow", &["curl"], false) {
        return;
    }
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#
            .to_vec();
    let addr_cell: std::sync::Arc<std::sync::OnceLock<String>> = Default::default();
    let cell = addr_cell.clone();
    let m = manifest.clone();
    let fake = FakeUpstream::start(move |req| {
        let me = cell.get().cloned().unwrap_or_default();
        if req.target.starts_with("/token") {
            return Reply::ok("application/json", br#"{"token":"t0k","expires_in":300}"#.to_vec());
        }
        let auth = req.header("authorization").unwrap_or("");
        let basic_only = req.target.contains("/private/");
        if basic_only {
            return if auth == "Basic dTpw" {
                Reply::ok("application/vnd.oci.image.manifest.v1+json", m.clone())
            } else {
                Reply::status(401, &[("WWW-Authenticate", "Basic realm=\"private\"")])
            };
        }
        if auth == "Bearer t0k" {
            Reply::ok("application/vnd.oci.image.manifest.v1+json", m.clone())
        } else {
            let challenge =
                format!("Bearer realm=\"http://{me}/token\",service=\"fake\",scope=\"repository:test/app:pull\"");
            Reply::Http { status: 401, headers: vec![("WWW-Authenticate".into(), challenge)], body: Vec::new() }
        }
    });
    addr_cell.set(fake.addr.clone()).unwrap();
    let p = Peerd::start(
        "127.0.0.1",
        &["--mirror-host", &fake.addr, "--plain-http-host", &fake.addr, "--containerd-socket", "/nonexistent.sock"],
        &[],
    );
    let ns = format!("ns={}", fake.addr);

    let r = curl("GET", &p.url(&format!("/v2/test/app/manifests/v1?{ns}")), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, manifest);
    assert_eq!(r.header("docker-content-digest"), Some(format!("sha256:{}", sha256_hex(&manifest)).as_str()));
    let seen = fake.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(seen[0].header("authorization"), None);
    assert!(
        seen[1].target.starts_with("/token?")
            && seen[1].target.contains("service=fake")
            && seen[1].target.contains("scope=repository%3Atest%2Fapp%3Apull"),
        "{:?}",
        seen[1]
    );
    assert_eq!(seen[2].header("authorization"), Some("Bearer t0k"));

    // The token is cached: one request upstream, already authorised.
    assert_eq!(curl("GET", &p.url(&format!("/v2/test/app/manifests/v1?{ns}")), &[]).status, 200);
    let seen = fake.requests();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[3].header("authorization"), Some("Bearer t0k"));

    // A client's own credentials are forwarded untouched, and no token is fetched for it.
    let r = curl("GET", &p.url(&format!("/v2/test/private/manifests/v1?{ns}")), &[("Authorization", "Basic dTpw")]);
    assert_eq!(r.status, 200);
    assert_eq!(fake.requests().last().unwrap().header("authorization"), Some("Basic dTpw"));
    // Without credentials a Basic challenge is passed back so the client can authenticate.
    let r = curl("GET", &p.url(&format!("/v2/test/private/manifests/v1?{ns}")), &[]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"private\""));
    assert!(!fake.requests().iter().any(|s| s.target.starts_with("/token") && s.target.contains("private")));
}
