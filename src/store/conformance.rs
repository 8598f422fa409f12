//! What every [`ContentStore`] must do, checked the same way for each implementation: the
//! in-memory store (unit tests) and containerd (through its content files and through gRPC,
//! `tests/store.rs`). Public so that integration tests can run it against real components.

use super::{read_bounded, ContentStore};
use crate::oci::{Algorithm, Digest};
use crate::stream::collect;

/// What the store under test holds: `blob` (at least 10 bytes), and the image `image` whose
/// record points at `image_target`.
pub struct Fixture<'a> {
    pub blob: &'a [u8],
    pub image: &'a str,
    pub image_target: &'a Digest,
}

/// Panics (with what failed) unless `store` behaves as a content store must.
pub async fn check(store: &dyn ContentStore, f: &Fixture<'_>) {
    let blob = f.blob;
    assert!(blob.len() >= 10, "the fixture blob needs at least 10 bytes");
    let len = blob.len() as u64;
    let digest = Digest::compute(Algorithm::Sha256, blob);
    let missing = Digest::compute(Algorithm::Sha256, b"no store holds this");
    assert_eq!(store.size(&digest).await.unwrap(), Some(len), "size of a held blob");
    assert_eq!(store.size(&missing).await.unwrap(), None, "size of a missing blob");
    let all = collect(store.read(&digest, 0, None).await.unwrap(), len).await.unwrap();
    assert!(all[..] == *blob, "whole read");
    let part = collect(store.read(&digest, 6, Some(3)).await.unwrap(), len).await.unwrap();
    assert_eq!(&part[..], &blob[6..9], "read of a range");
    let tail = collect(store.read(&digest, 6, None).await.unwrap(), len).await.unwrap();
    assert_eq!(&tail[..], &blob[6..], "read from an offset to the end");
    let sized = collect(store.read_sized(&digest, len, 4, Some(5)).await.unwrap(), len).await.unwrap();
    assert_eq!(&sized[..], &blob[4..9], "read with the size known");
    let last = collect(store.read(&digest, len - 1, Some(1)).await.unwrap(), len).await.unwrap();
    assert_eq!(&last[..], &blob[blob.len() - 1..], "the last byte");
    assert!(store.read(&missing, 0, None).await.is_err(), "reading a missing blob fails");
    let d = store.resolve(f.image).await.unwrap().expect("the image record resolves");
    assert_eq!(&d.digest, f.image_target, "the image record's target");
    let unknown = format!("{}-not-there", f.image);
    assert_eq!(store.resolve(&unknown).await.unwrap(), None, "an unknown image");
    assert!(read_bounded(store, &digest, len).await.unwrap().unwrap()[..] == *blob, "bounded read within the limit");
    assert!(read_bounded(store, &digest, len - 1).await.is_err(), "bounded read over the limit fails");
    assert_eq!(read_bounded(store, &missing, len).await.unwrap(), None, "bounded read of a missing blob");
}
