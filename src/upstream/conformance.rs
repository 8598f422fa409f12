//! What every [`Upstream`] must do, checked the same way for each implementation: the
//! in-memory upstream (unit tests) and the HTTP client against a real registry
//! (`tests/mirror.rs`). Public so that integration tests can run it against real components.

use super::{Kind, Upstream, UpstreamError, UpstreamRequest};
use crate::oci::{media, Algorithm, Digest, Registry};
use crate::range::ByteRange;
use crate::stream::{collect, ranged};

/// What the upstream under test holds: in `repo` of `registry`, the tag `tag` naming the
/// manifest `manifest`, and the blob `blob` of `blob_len` bytes (at least 10).
pub struct Fixture<'a> {
    pub registry: &'a Registry,
    pub repo: &'a str,
    pub tag: &'a str,
    pub manifest: &'a Digest,
    pub blob: &'a Digest,
    pub blob_len: u64,
}

fn request(f: &Fixture<'_>, kind: Kind, reference: &str, head: bool, range: Option<ByteRange>) -> UpstreamRequest {
    UpstreamRequest {
        registry: f.registry.clone(),
        repository: f.repo.to_owned(),
        kind,
        reference: reference.to_owned(),
        head,
        accept: Some(
            [media::OCI_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST, media::DOCKER_MANIFEST_LIST].join(", "),
        ),
        authorization: None,
        range,
    }
}

/// Panics (with what failed) unless `up` behaves as an upstream must.
pub async fn check(up: &dyn Upstream, f: &Fixture<'_>) {
    assert!(f.blob_len >= 10, "the fixture blob needs at least 10 bytes");
    // A manifest by tag: its bytes hash to the digest the tag names; HEAD gives the size only.
    let m = up.fetch(request(f, Kind::Manifest, f.tag, false, None)).await.expect("manifest by tag");
    assert_eq!(m.status, 200, "manifest by tag");
    let body = collect(m.body, 4 << 20).await.unwrap();
    assert_eq!(&Digest::compute(Algorithm::Sha256, &body), f.manifest, "the tag's manifest");
    let head = up.fetch(request(f, Kind::Manifest, f.tag, true, None)).await.expect("manifest HEAD");
    assert_eq!(head.content_length, Some(body.len() as u64), "HEAD says the manifest's size");
    assert!(collect(head.body, 1).await.unwrap().is_empty(), "HEAD has no body");
    let by_digest = up.fetch(request(f, Kind::Manifest, &f.manifest.to_string(), false, None)).await;
    let by_digest = collect(by_digest.expect("manifest by digest").body, 4 << 20).await.unwrap();
    assert_eq!(by_digest, body, "the manifest by digest is the same");

    // A blob: whole, and one range (a source that ignores Range is cut by `ranged`).
    let whole = up.fetch(request(f, Kind::Blob, &f.blob.to_string(), false, None)).await.expect("blob");
    assert_eq!(whole.status, 200);
    let data = collect(whole.body, f.blob_len).await.unwrap();
    assert_eq!(data.len() as u64, f.blob_len, "the whole blob");
    assert_eq!(&Digest::compute(Algorithm::Sha256, &data), f.blob, "the blob's bytes");
    let r = ByteRange { start: 2, end: 9 };
    let part = up.fetch(request(f, Kind::Blob, &f.blob.to_string(), false, Some(r))).await.expect("blob range");
    assert!(matches!(part.status, 200 | 206), "a range: {}", part.status);
    let got = collect(ranged(part.body, part.status, r), f.blob_len).await.unwrap();
    assert_eq!(&got[..], &data[2..=9], "the range's bytes");

    // What is not there is a 404, not a failure of the host.
    let missing = Digest::compute(Algorithm::Sha256, b"no registry holds this");
    match up.fetch(request(f, Kind::Blob, &missing.to_string(), false, None)).await {
        Err(e @ UpstreamError::Status { status: 404, .. }) => {
            assert_eq!(e.health(), super::Health::Healthy, "a 404 says the host works")
        }
        other => panic!("a missing blob: {other:?}"),
    }
}
