//! The node's local content: what containerd already holds. [`ContentStore`] is the boundary;
//! [`memory::MemoryStore`] backs unit tests and [`containerd::ContainerdStore`] is the real one.
//! Every implementation passes the same checks ([`conformance`]).

pub mod conformance;
pub mod containerd;
pub mod file;
pub mod memory;

use crate::oci::Digest;
use crate::stream::{collect, ByteStream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;

/// Local content store failures (other than "not found"), by `kind`.
pub const LOCAL_STORE_ERRORS: &str = "peerd_local_store_errors_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(STORE_READS, "Local blob reads by path (file: containerd's files, grpc)");
    metrics::describe_gauge!(STORE_FAST_PATH, "1 if local blobs are read from containerd's files");
    metrics::describe_counter!(LOCAL_STORE_ERRORS, "Local content store failures by kind");
}

/// Blob reads by `path`: `file` (containerd's content files) or `grpc` (containerd's API).
pub const STORE_READS: &str = "peerd_store_reads_total";
/// 1 when local blobs are read from containerd's content files, 0 when through gRPC only.
pub const STORE_FAST_PATH: &str = "peerd_store_fast_path";

/// What an image name points at (`containerd.types.Descriptor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A change to the store's image records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageEvent {
    /// Created or updated.
    Changed(String),
    Deleted(String),
}

pub type ImageEventStream = Pin<Box<dyn Stream<Item = Result<ImageEvent, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (containerd down, socket missing): treat as a miss.
    #[error("content store unavailable: {0}")]
    Unavailable(String),
    #[error("content store error: {0}")]
    Other(String),
}

#[async_trait]
pub trait ContentStore: Send + Sync + 'static {
    /// Size of the blob if the store holds it.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;
    /// Stream `len` bytes (all when `None`) from `offset`. Fails with `Other` if absent.
    async fn read(&self, digest: &Digest, offset: u64, len: Option<u64>) -> Result<ByteStream, StoreError>;
    /// [`read`](Self::read) for a caller that just got `size` from [`size`](Self::size): a store
    /// may skip looking the blob up again. The stream delivers exactly the bytes asked for, or
    /// ends with an error.
    async fn read_sized(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StoreError> {
        let _ = size;
        self.read(digest, offset, len).await
    }
    /// `true` when every blob this store holds was checked against its digest when it was
    /// written (containerd names a committed blob by the digest of its bytes), so serving it
    /// need not hash it again: whoever receives it verifies it once.
    fn content_is_verified(&self) -> bool {
        false
    }
    /// How this store reads content, for logs and the debug page.
    fn describe(&self) -> String {
        "in-memory".into()
    }
    /// The target of an image name (`host/repo:tag`), if the store has that image.
    async fn resolve(&self, image: &str) -> Result<Option<Descriptor>, StoreError>;
    /// Every image record (name, target).
    async fn list_images(&self) -> Result<Vec<(String, Descriptor)>, StoreError>;
    /// Image record changes from now on. Ends (or fails) when the store goes away.
    async fn image_events(&self) -> Result<ImageEventStream, StoreError>;
}

/// Read a whole blob into memory, refusing more than `limit` bytes (manifests only).
pub async fn read_bounded(store: &dyn ContentStore, digest: &Digest, limit: u64) -> Result<Option<Bytes>, StoreError> {
    let Some(size) = store.size(digest).await? else {
        return Ok(None);
    };
    if size > limit {
        return Err(StoreError::Other(format!("{digest} is {size} bytes, over the {limit} byte limit")));
    }
    let stream = store.read(digest, 0, None).await?;
    collect(stream, limit).await.map(Some).map_err(|e| StoreError::Other(e.to_string()))
}
