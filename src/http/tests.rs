//! Front-end behaviour with in-memory store and upstream behind the real actor and middleware.

use super::registry;
use crate::actors::upstream::{Breaker, Gate};
use crate::config::Config;
use crate::mirror::{parse_path, RegistryState, Route};
use crate::oci::{media, Algorithm, Digest};
use crate::store::memory::MemoryStore;
use crate::upstream::memory::MemoryUpstream;
use crate::upstream::{Kind, UpstreamError};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::from_fn;
use actix_web::{test, web, App};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

const REG: &str = "registry.example:5000";

struct Fixture {
    store: Arc<MemoryStore>,
    up: Arc<MemoryUpstream>,
    state: web::Data<RegistryState>,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::default());
    let up = Arc::new(MemoryUpstream::default());
    let mut cfg = Config::load(None, Vec::new(), vec![]).unwrap().registry;
    cfg.hosts = vec![REG.into(), "docker.io".into()];
    cfg.max_manifest_bytes = 1024;
    let gate = Gate::start(up.clone(), &cfg.hosts, Breaker::new(100, Duration::from_secs(1)));
    let state = web::Data::new(RegistryState {
        store: store.clone(),
        upstream: gate,
        cfg,
        peers: None,
        swarm: None,
        flights: Default::default(),
        peer_checked: Default::default(),
    });
    Fixture { store, up, state }
}

macro_rules! app {
    ($f:expr) => {
        test::init_service(
            App::new()
                .app_data($f.state.clone())
                .wrap(from_fn(super::observe))
                .configure(registry::configure)
                .default_service(web::to(super::not_found)),
        )
        .await
    };
}

async fn call(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, actix_web::http::header::HeaderMap, Result<Bytes, String>) {
    let mut req = test::TestRequest::default().method(method).uri(uri);
    for (k, v) in headers {
        req = req.append_header((*k, *v));
    }
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = actix_web::body::to_bytes(resp.into_body()).await.map_err(|e| e.to_string());
    (status, headers, body)
}

fn error_code(body: &Result<Bytes, String>) -> String {
    let v: serde_json::Value = serde_json::from_slice(body.as_ref().unwrap()).expect("OCI error JSON");
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

fn h<'a>(headers: &'a header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[::core::prelude::v1::test]
fn route_parsing() {
    let d = Digest::compute(Algorithm::Sha256, b"x");
    assert_eq!(
        parse_path(&format!("/v2/a/blobs/blobs/{d}")).unwrap(),
        Route::Blob { repo: "a/blobs".into(), digest: d.clone() }
    );
    for (path, code) in [
        ("/v2/_catalog", "UNSUPPORTED"),
        ("/v2/a/tags/list", "UNSUPPORTED"),
        ("/v2/a/blobs/uploads/", "UNSUPPORTED"),
        ("/v2/../etc/manifests/v1", "NAME_INVALID"),
        ("/v2/a/%2e%2e/manifests/v1", "NAME_INVALID"),
        ("/v2/A/manifests/v1", "NAME_INVALID"),
        ("/v2/a/manifests/..", "NAME_INVALID"),
        ("/v2/a/blobs/sha256:zz", "DIGEST_INVALID"),
        ("/v2/a/blobs/v1", "DIGEST_INVALID"),
        ("/v2/a/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", "DIGEST_INVALID"),
    ] {
        assert_eq!(parse_path(path).unwrap_err().code(), code, "{path}");
    }
}

#[actix_web::test]
async fn base_endpoint_and_methods() {
    let f = fixture();
    let app = app!(f);
    let (s, hd, _) = call(&app, Method::GET, "/v2/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h(&hd, "docker-distribution-api-version"), "registry/2.0");
    assert!(!h(&hd, super::CORRELATION_HEADER).is_empty(), "correlation id is set");
    let (_, hd, _) = call(&app, Method::GET, "/v2/", &[(super::CORRELATION_HEADER, "abc-123")]).await;
    assert_eq!(h(&hd, super::CORRELATION_HEADER), "abc-123", "client correlation id is kept");
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let (s, hd, body) = call(&app, m.clone(), "/v2/a/blobs/uploads/", &[]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(h(&hd, "allow"), "GET, HEAD");
        assert_eq!(error_code(&body), "UNSUPPORTED");
    }
    let (s, _, body) = call(&app, Method::GET, "/v2/_catalog", &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::NOT_FOUND, "UNSUPPORTED"));
    let (s, _, _) = call(&app, Method::GET, "/nope", &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn local_blob_full_range_and_head() {
    let f = fixture();
    let d = f.store.put("0123456789");
    let app = app!(f);
    let uri = format!("/v2/a/blobs/{d}?ns={REG}");
    let (s, hd, body) = call(&app, Method::GET, &uri, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.unwrap(), "0123456789");
    assert_eq!(h(&hd, "docker-content-digest"), d.to_string());
    assert_eq!(h(&hd, "content-length"), "10");
    assert_eq!(h(&hd, "accept-ranges"), "bytes");

    for (range, want, cr) in [
        ("bytes=2-4", "234", "bytes 2-4/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-2", "89", "bytes 8-9/10"),
        ("bytes=8-100", "89", "bytes 8-9/10"),
    ] {
        let (s, hd, body) = call(&app, Method::GET, &uri, &[("range", range)]).await;
        assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(body.unwrap(), want, "{range}");
        assert_eq!(h(&hd, "content-range"), cr);
        assert_eq!(h(&hd, "content-length"), want.len().to_string());
    }
    let (s, hd, body) = call(&app, Method::GET, &uri, &[("range", "bytes=10-")]).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h(&hd, "content-range"), "bytes */10");
    assert_eq!(error_code(&body), "RANGE_INVALID");
    let (s, _, body) = call(&app, Method::GET, &uri, &[("range", "bytes=5-2")]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"));

    let (s, hd, body) = call(&app, Method::HEAD, &uri, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h(&hd, "content-length"), "10");
    assert!(body.unwrap().is_empty());
    assert_eq!(f.up.calls.load(std::sync::atomic::Ordering::SeqCst), 0, "local content never goes upstream");
}

#[actix_web::test]
async fn corrupt_local_blob_is_never_served_whole() {
    let f = fixture();
    let d = Digest::compute(Algorithm::Sha256, b"the real content");
    f.store.put_corrupt(d.clone(), "the fake content");
    let app = app!(f);
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/blobs/{d}?ns={REG}"), &[]).await;
    assert_eq!(s, StatusCode::OK, "headers are sent before the end is known");
    assert!(body.is_err(), "the body must fail, never complete: {body:?}");
}

#[actix_web::test]
async fn upstream_blob_full_and_ranges() {
    let f = fixture();
    let data = Bytes::from_static(b"abcdefghij");
    let d = Digest::compute(Algorithm::Sha256, &data);
    f.up.put(REG, "a", Kind::Blob, &d.to_string(), media::OCTET_STREAM, data.clone());
    let app = app!(f);
    let uri = format!("/v2/a/blobs/{d}?ns={}", REG.replace(':', "%3A"));
    let (s, hd, body) = call(&app, Method::GET, &uri, &[]).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, data.clone()));
    assert_eq!(h(&hd, "content-length"), "10");
    let (s, hd, body) = call(&app, Method::GET, &uri, &[("range", "bytes=-3")]).await;
    assert_eq!((s, body.unwrap()), (StatusCode::PARTIAL_CONTENT, Bytes::from_static(b"hij")));
    assert_eq!(h(&hd, "content-range"), "bytes 7-9/10");
    let (s, _, _) = call(&app, Method::GET, &uri, &[("range", "bytes=20-")]).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    let (s, hd, _) = call(&app, Method::HEAD, &uri, &[]).await;
    assert_eq!((s, h(&hd, "content-length")), (StatusCode::OK, "10"));

    // Upstream sends bytes that are not the blob: a small blob is checked before the answer
    // (502), so none of its bytes reach the client.
    let other = Digest::compute(Algorithm::Sha256, b"other");
    f.up.put(REG, "a", Kind::Blob, &other.to_string(), media::OCTET_STREAM, "not other");
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/blobs/{other}?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::BAD_GATEWAY, "DIGEST_INVALID"));
    // Unknown blob: 404 so containerd tries its next host.
    let missing = Digest::compute(Algorithm::Sha256, b"missing");
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/blobs/{missing}?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
}

#[actix_web::test]
async fn manifests_by_tag_and_digest() {
    let f = fixture();
    let m = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    );
    let d = Digest::compute(Algorithm::Sha256, &m);
    f.up.put(REG, "a", Kind::Manifest, "v1", media::OCI_MANIFEST, m.clone());
    f.up.put(REG, "a", Kind::Manifest, &d.to_string(), media::OCI_MANIFEST, m.clone());
    let app = app!(f);
    let (s, hd, body) = call(&app, Method::GET, &format!("/v2/a/manifests/v1?ns={REG}"), &[]).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, m.clone()));
    assert_eq!(h(&hd, "docker-content-digest"), d.to_string());
    assert_eq!(h(&hd, "content-type"), media::OCI_MANIFEST);

    // By digest from the local store, honouring Accept.
    f.store.put(m.clone());
    let calls = f.up.calls.load(std::sync::atomic::Ordering::SeqCst);
    let uri = format!("/v2/a/manifests/{d}?ns={REG}");
    let (s, hd, body) = call(&app, Method::GET, &uri, &[("accept", media::OCI_MANIFEST)]).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, m.clone()));
    assert_eq!(h(&hd, "content-type"), media::OCI_MANIFEST);
    assert_eq!(f.up.calls.load(std::sync::atomic::Ordering::SeqCst), calls, "served locally");
    let (s, hd, body) = call(&app, Method::HEAD, &uri, &[]).await;
    assert_eq!((s, h(&hd, "content-length")), (StatusCode::OK, m.len().to_string().as_str()));
    assert!(body.unwrap().is_empty());
    let (s, _, _) =
        call(&app, Method::GET, &uri, &[("accept", media::DOCKER_MANIFEST), ("accept", media::OCI_MANIFEST)]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f.up.calls.load(std::sync::atomic::Ordering::SeqCst), calls, "every Accept header counts");
    let _ = call(&app, Method::GET, &uri, &[("accept", media::DOCKER_MANIFEST)]).await;
    assert!(f.up.calls.load(std::sync::atomic::Ordering::SeqCst) > calls, "unacceptable local type goes upstream");

    // Upstream answering a different body for a digest is refused.
    let bogus = Digest::compute(Algorithm::Sha256, b"bogus");
    f.up.put(REG, "a", Kind::Manifest, &bogus.to_string(), media::OCI_MANIFEST, m.clone());
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/manifests/{bogus}?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::BAD_GATEWAY, "DIGEST_INVALID"));

    // Oversized manifests are refused (limit is 1024 here).
    f.up.put(REG, "a", Kind::Manifest, "big", media::OCI_MANIFEST, vec![b' '; 2048]);
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/manifests/big?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::BAD_GATEWAY, "MANIFEST_INVALID"));
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/manifests/nope?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
}

#[actix_web::test]
async fn ns_handling_and_upstream_failures() {
    let f = fixture();
    let app = app!(f);
    let (s, _, body) = call(&app, Method::GET, "/v2/a/manifests/v1?ns=evil.example", &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
    let (s, _, body) = call(&app, Method::GET, "/v2/a/manifests/v1?ns=http%3A%2F%2Fx", &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::BAD_REQUEST, "NAME_INVALID"));
    // No ns: docker.io (mirrored here), which the memory upstream does not have.
    let (s, _, _) = call(&app, Method::GET, "/v2/library/alpine/manifests/3", &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    f.up.fail(Some(UpstreamError::Unreachable { host: REG.into(), reason: "refused".into() }));
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/manifests/v1?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"));
    // …unless the local store has that tag (stale-if-error).
    let m = Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#);
    let d = f.store.put(m.clone());
    f.store.tag(&format!("{REG}/a:v1"), media::OCI_INDEX, &d);
    let (s, hd, body) = call(&app, Method::GET, &format!("/v2/a/manifests/v1?ns={REG}"), &[]).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, m));
    assert_eq!(h(&hd, "content-type"), media::OCI_INDEX);
    assert!(h(&hd, "warning").contains("Stale"), "marked stale");
    // An answer a client can provoke (a 500) is no outage: no stale tag, the error goes through.
    f.up.fail(Some(UpstreamError::Status { status: 500, www_authenticate: None }));
    let (s, _, _) = call(&app, Method::GET, &format!("/v2/a/manifests/v1?ns={REG}"), &[]).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "a 500 upstream never rolls a tag back");
    f.up.fail(Some(UpstreamError::Status { status: 503, www_authenticate: None }));
    let (s, _, _) = call(&app, Method::GET, &format!("/v2/a/manifests/v1?ns={REG}"), &[]).await;
    assert_eq!(s, StatusCode::OK, "a 503 upstream is down: the local tag");

    f.up.fail(Some(UpstreamError::Timeout { host: REG.into() }));
    let (s, _, _) =
        call(&app, Method::GET, &format!("/v2/a/blobs/{}?ns={REG}", Digest::compute(Algorithm::Sha256, b"q")), &[])
            .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    f.up.fail(Some(UpstreamError::Status { status: 401, www_authenticate: Some("Bearer realm=\"x\"".into()) }));
    let (s, hd, body) = call(&app, Method::GET, &format!("/v2/a/manifests/v2?ns={REG}"), &[]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
    assert_eq!(h(&hd, "www-authenticate"), "Bearer realm=\"x\"", "challenge passed to the client");
}

/// The peer listener's app: `/v2` for peers behind the authentication middleware.
macro_rules! peer_app {
    ($f:expr, $key:expr) => {
        test::init_service(
            App::new()
                .app_data($f.state.clone())
                .app_data(web::Data::new(super::peer::PeerGuard::new($key)))
                .wrap(from_fn(super::peer::authenticate))
                .configure(registry::configure_peer)
                .default_service(web::to(super::not_found)),
        )
        .await
    };
}

#[actix_web::test]
async fn peer_listener_refuses_unsigned_requests_and_signs_answers() {
    let f = fixture();
    let local = f.store.put("held here");
    let key = Arc::new(crate::peer::auth::ClusterKey::derive(b"unit-test-cluster-secret"));
    let app = peer_app!(f, Some(key.clone()));
    let target = format!("/v2/a/blobs/{local}?ns={REG}");
    let (s, _, body) = call(&app, Method::GET, &target, &[(crate::peer::REQUEST_FROM_PEER, "true")]).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
    let (s, _, _) = call(&app, Method::GET, "/anything/else", &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "every route, known or not");
    let ts = crate::peer::auth::unix_now();
    let sig = key.sign_request("GET", &target, "", ts, "nonce-1", "peer-b");
    let ts = ts.to_string();
    let headers = [
        (crate::peer::NODE_HEADER, "peer-b"),
        (crate::peer::TIMESTAMP_HEADER, ts.as_str()),
        (crate::peer::NONCE_HEADER, "nonce-1"),
        (crate::peer::SIGNATURE_HEADER, sig.as_str()),
    ];
    let (s, hd, body) = call(&app, Method::GET, &target, &headers).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, Bytes::from_static(b"held here")));
    let answer_sig = h(&hd, crate::peer::SIGNATURE_HEADER);
    assert_eq!(key.verify_response("nonce-1", 200, &local.to_string(), "", Some(answer_sig)), Ok(()));
    let (s, _, _) = call(&app, Method::GET, &target, &headers).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "replay");
}

#[actix_web::test]
async fn peer_requests_are_served_locally_only() {
    let f = fixture();
    let local = f.store.put("held here");
    let remote = Digest::compute(Algorithm::Sha256, b"only upstream");
    f.up.put(REG, "a", Kind::Blob, &remote.to_string(), media::OCTET_STREAM, "only upstream");
    let app = peer_app!(f, None);
    let peer = [(crate::peer::REQUEST_FROM_PEER, "true")];
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/blobs/{local}?ns={REG}"), &peer).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, Bytes::from_static(b"held here")));
    let (s, _, body) = call(&app, Method::GET, &format!("/v2/a/blobs/{remote}?ns={REG}"), &peer).await;
    assert_eq!((s, error_code(&body).as_str()), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
    let (s, _, _) = call(&app, Method::GET, &format!("/v2/a/manifests/v1?ns={REG}"), &peer).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        f.up.calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a peer request never goes upstream (loop guard)"
    );
}

/// `n` concurrent GETs of `uri`, all started before any of them is answered.
async fn concurrent_gets(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
    uri: &str,
    n: usize,
) -> Vec<(StatusCode, Result<Bytes, String>)> {
    let calls = (0..n).map(|_| async move {
        let (s, _, body) = call(app, Method::GET, uri, &[]).await;
        (s, body)
    });
    futures_util::future::join_all(calls).await
}

#[actix_web::test]
async fn concurrent_gets_of_a_small_blob_share_one_upstream_fetch() {
    use std::sync::atomic::Ordering;
    let f = fixture();
    let data = Bytes::from((0..300 * 1024).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    let d = Digest::compute(Algorithm::Sha256, &data);
    f.up.put(REG, "a", Kind::Blob, &d.to_string(), media::OCTET_STREAM, data.clone());
    let app = app!(f);
    let uri = format!("/v2/a/blobs/{d}?ns={REG}");
    for (s, body) in concurrent_gets(&app, &uri, 50).await {
        assert_eq!(s, StatusCode::OK);
        assert!(body.unwrap() == data, "every client gets the blob's bytes");
    }
    assert_eq!(f.up.calls.load(Ordering::SeqCst), 1, "50 concurrent GETs, one upstream fetch");
    assert_eq!(f.state.flights.in_flight(), 0, "the flight is closed once it landed");
    // Later requests start a new flight (nothing is cached in memory).
    let (s, _, body) = call(&app, Method::GET, &uri, &[]).await;
    assert_eq!((s, body.unwrap()), (StatusCode::OK, data));
    assert_eq!(f.up.calls.load(Ordering::SeqCst), 2);
}

#[actix_web::test]
async fn blobs_over_the_flight_limit_are_fetched_per_request() {
    use std::sync::atomic::Ordering;
    let f = fixture();
    let data = Bytes::from(vec![7u8; crate::transfer::sources::FLIGHT_MAX_BLOB as usize + 1]);
    let d = Digest::compute(Algorithm::Sha256, &data);
    f.up.put(REG, "a", Kind::Blob, &d.to_string(), media::OCTET_STREAM, data.clone());
    let app = app!(f);
    for (s, body) in concurrent_gets(&app, &format!("/v2/a/blobs/{d}?ns={REG}"), 5).await {
        assert_eq!(s, StatusCode::OK);
        assert!(body.unwrap() == data);
    }
    assert_eq!(f.up.calls.load(Ordering::SeqCst), 5, "a large blob is not held in memory to share");
}

#[actix_web::test]
async fn a_failed_flight_never_hands_out_wrong_bytes() {
    use std::sync::atomic::Ordering;
    let f = fixture();
    // The upstream's bytes do not match the digest: the leader answers 502, every follower
    // fetches on its own (verified) and gets an error too, never the bytes.
    let d = Digest::compute(Algorithm::Sha256, b"the real blob");
    f.up.put(REG, "a", Kind::Blob, &d.to_string(), media::OCTET_STREAM, "a corrupt blob");
    let app = app!(f);
    let uri = format!("/v2/a/blobs/{d}?ns={REG}");
    for (s, body) in concurrent_gets(&app, &uri, 10).await {
        assert!(s == StatusCode::BAD_GATEWAY || body.is_err(), "a wrong blob is refused (502) or cut: {s} {body:?}");
        if let Ok(b) = body {
            assert_ne!(&b[..], b"a corrupt blob");
        }
    }
    // An unreachable upstream: one attempt, every client told it is unavailable.
    let calls = f.up.calls.load(Ordering::SeqCst);
    f.up.fail(Some(UpstreamError::Unreachable { host: REG.into(), reason: "refused".into() }));
    for (s, _) in concurrent_gets(&app, &uri, 10).await {
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(f.up.calls.load(Ordering::SeqCst), calls + 1, "followers do not pile onto a dead upstream");
    // A 404 for the leader is not taken for the followers' answer: each asks for itself.
    f.up.fail(Some(UpstreamError::Status { status: 404, www_authenticate: None }));
    let calls = f.up.calls.load(Ordering::SeqCst);
    for (s, _) in concurrent_gets(&app, &uri, 4).await {
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    assert_eq!(f.up.calls.load(Ordering::SeqCst), calls + 4);
    assert_eq!(f.state.flights.in_flight(), 0);
}
