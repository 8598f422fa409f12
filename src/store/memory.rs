//! In-memory [`ContentStore`] for unit tests.

use super::{ByteStream, ContentStore, Descriptor, ImageEvent, ImageEventStream, StoreError};
use crate::oci::{Algorithm, Digest};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;

#[derive(Default)]
pub struct MemoryStore {
    blobs: DashMap<Digest, Bytes>,
    images: DashMap<String, Descriptor>,
    /// The one event subscriber, if any.
    events: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Result<ImageEvent, StoreError>>>>,
}

impl MemoryStore {
    /// Store a blob and return its sha256 digest.
    pub fn put(&self, data: impl Into<Bytes>) -> Digest {
        let data = data.into();
        let d = Digest::compute(Algorithm::Sha256, &data);
        self.blobs.insert(d.clone(), data);
        d
    }
    /// Store `data` under a digest that does NOT match it (to test corruption handling).
    pub fn put_corrupt(&self, digest: Digest, data: impl Into<Bytes>) {
        self.blobs.insert(digest, data.into());
    }
    pub fn tag(&self, image: &str, media_type: &str, digest: &Digest) {
        let size = self.blobs.get(digest).map_or(0, |b| b.len() as u64);
        self.images.insert(image.into(), Descriptor { media_type: media_type.into(), digest: digest.clone(), size });
        self.notify(ImageEvent::Changed(image.into()));
    }
    pub fn remove_image(&self, image: &str) {
        self.images.remove(image);
        self.notify(ImageEvent::Deleted(image.into()));
    }
    pub fn remove_blob(&self, digest: &Digest) {
        self.blobs.remove(digest);
    }
    /// End the event stream, as a containerd restart does.
    pub fn drop_subscriber(&self) {
        self.events.lock().unwrap().take();
    }
    fn notify(&self, e: ImageEvent) {
        if let Some(tx) = self.events.lock().unwrap().as_ref() {
            let _ = tx.try_send(Ok(e));
        }
    }
}

#[async_trait]
impl ContentStore for MemoryStore {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.blobs.get(digest).map(|b| b.len() as u64))
    }

    async fn read(&self, digest: &Digest, offset: u64, len: Option<u64>) -> Result<ByteStream, StoreError> {
        let blob = self.blobs.get(digest).ok_or_else(|| StoreError::Other(format!("{digest} not found")))?;
        let start = (offset as usize).min(blob.len());
        let end = len.map_or(blob.len(), |l| (start + l as usize).min(blob.len()));
        let data = blob.slice(start..end);
        // Deliver in small chunks so stream consumers see more than one item.
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..data.len()).step_by(4).map(|i| Ok(data.slice(i..(i + 4).min(data.len())))).collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }

    async fn resolve(&self, image: &str) -> Result<Option<Descriptor>, StoreError> {
        Ok(self.images.get(image).map(|d| d.clone()))
    }

    async fn list_images(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        Ok(self.images.iter().map(|e| (e.key().clone(), e.value().clone())).collect())
    }

    async fn image_events(&self) -> Result<ImageEventStream, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        *self.events.lock().unwrap() = Some(tx);
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        let s = MemoryStore::default();
        let d = s.put("hello world");
        s.tag("example.com/app:v1", "application/octet-stream", &d);
        let f =
            crate::store::conformance::Fixture { blob: b"hello world", image: "example.com/app:v1", image_target: &d };
        crate::store::conformance::check(&s, &f).await;
    }
}
