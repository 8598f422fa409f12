//! [`ContentStore`] over containerd's gRPC API (content and images services), so peerd serves
//! what the node already has without a second copy.
//!
//! The channel connects lazily: peerd starts when containerd is absent and begins serving local
//! content as soon as containerd's socket answers. Calls are bounded by a timeout, and a store
//! that cannot be reached is reported as [`StoreError::Unavailable`], which callers treat as a miss.

use super::{ByteStream, ContentStore, Descriptor, ImageEvent, ImageEventStream, StoreError};
use crate::oci::Digest;
use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::services::v1::{
    content_client::ContentClient, events_client::EventsClient, images_client::ImagesClient, GetImageRequest,
    ImageCreate, ImageDelete, ImageUpdate, InfoRequest, ListImagesRequest, ReadContentRequest, SubscribeRequest,
};
use containerd_client::with_namespace;
use futures_util::StreamExt;
use prost::Message;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub struct ContainerdStore {
    channel: Channel,
    /// For the event subscription: no per-call timeout (containerd sends the response headers of
    /// `Subscribe` only with the first event, so a deadline would cut every quiet subscription).
    events_channel: Channel,
    namespaces: Vec<String>,
    socket: PathBuf,
}

impl ContainerdStore {
    /// A store over the socket at `socket`, looking in `namespaces` in order. Never fails for a
    /// missing socket: the connection is made on first use and re-made after containerd restarts.
    pub fn new(socket: PathBuf, namespaces: Vec<String>, timeout: Duration) -> Result<Self, StoreError> {
        let endpoint = Endpoint::try_from("http://[::]").map_err(|e| StoreError::Other(e.to_string()))?;
        let connector = |path: PathBuf| {
            tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            })
        };
        let channel = endpoint
            .clone()
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_with_connector_lazy(connector(socket.clone()));
        let events_channel = endpoint.connect_timeout(timeout).connect_with_connector_lazy(connector(socket.clone()));
        Ok(Self { channel, events_channel, namespaces, socket })
    }

    /// containerd's version, or why it cannot be reached (logged at start-up).
    pub async fn probe(&self) -> Result<String, StoreError> {
        let mut client = containerd_client::services::v1::version_client::VersionClient::new(self.channel.clone());
        let v = client.version(()).await.map_err(|s| self.map_status(s))?.into_inner();
        Ok(format!("containerd {} at {}", v.version, self.socket.display()))
    }

    fn map_status(&self, s: Status) -> StoreError {
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                StoreError::Unavailable(format!("{}: {}", self.socket.display(), s.message()))
            }
            _ => StoreError::Other(format!("{}: {}", s.code(), s.message())),
        }
    }

    /// The first configured namespace holding `digest`, with its size.
    async fn locate(&self, digest: &Digest) -> Result<Option<(&str, u64)>, StoreError> {
        let mut client = ContentClient::new(self.channel.clone());
        for ns in &self.namespaces {
            let req = with_namespace!(InfoRequest { digest: digest.to_string() }, ns.as_str());
            match client.info(req).await {
                Ok(resp) => {
                    let size = resp.into_inner().info.map_or(0, |i| i.size.max(0) as u64);
                    return Ok(Some((ns.as_str(), size)));
                }
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => return Err(self.map_status(s)),
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl ContentStore for ContainerdStore {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.locate(digest).await?.map(|(_, size)| size))
    }

    async fn read(&self, digest: &Digest, offset: u64, len: Option<u64>) -> Result<ByteStream, StoreError> {
        let (ns, _) =
            self.locate(digest).await?.ok_or_else(|| StoreError::Other(format!("{digest} not found in containerd")))?;
        let mut client = ContentClient::new(self.channel.clone());
        let req =
            ReadContentRequest { digest: digest.to_string(), offset: offset as i64, size: len.unwrap_or(0) as i64 };
        let stream = client.read(with_namespace!(req, ns)).await.map_err(|s| self.map_status(s))?.into_inner();
        Ok(Box::pin(stream.map(|item| {
            item.map(|m| Bytes::from(m.data)).map_err(|s| std::io::Error::other(format!("containerd read: {s}")))
        })))
    }

    async fn list_images(&self) -> Result<Vec<(String, Descriptor)>, StoreError> {
        let mut client = ImagesClient::new(self.channel.clone());
        let mut out = Vec::new();
        for ns in &self.namespaces {
            let req = with_namespace!(ListImagesRequest { filters: vec![] }, ns.as_str());
            let images = client.list(req).await.map_err(|s| self.map_status(s))?.into_inner().images;
            for image in images {
                let Some(t) = image.target else { continue };
                let Ok(digest) = t.digest.parse() else { continue };
                out.push((image.name, Descriptor { media_type: t.media_type, digest, size: t.size.max(0) as u64 }));
            }
        }
        Ok(out)
    }

    async fn image_events(&self) -> Result<ImageEventStream, StoreError> {
        let mut client = EventsClient::new(self.events_channel.clone());
        let req = Request::new(SubscribeRequest { filters: vec![r#"topic~="/images/""#.to_owned()] });
        let stream = client.subscribe(req).await.map_err(|s| self.map_status(s))?.into_inner();
        let namespaces = self.namespaces.clone();
        Ok(Box::pin(stream.filter_map(move |item| {
            let namespaces = namespaces.clone();
            async move {
                let env = match item {
                    Ok(env) => env,
                    Err(s) => return Some(Err(StoreError::Unavailable(format!("event stream: {}", s.message())))),
                };
                if !namespaces.contains(&env.namespace) {
                    return None;
                }
                let value = env.event.map(|a| a.value).unwrap_or_default();
                let event = match env.topic.as_str() {
                    "/images/create" => ImageCreate::decode(value.as_slice()).ok().map(|e| ImageEvent::Changed(e.name)),
                    "/images/update" => ImageUpdate::decode(value.as_slice()).ok().map(|e| ImageEvent::Changed(e.name)),
                    "/images/delete" => ImageDelete::decode(value.as_slice()).ok().map(|e| ImageEvent::Deleted(e.name)),
                    _ => None,
                };
                event.map(Ok)
            }
        })))
    }

    async fn resolve(&self, image: &str) -> Result<Option<Descriptor>, StoreError> {
        let mut client = ImagesClient::new(self.channel.clone());
        for ns in &self.namespaces {
            let req = with_namespace!(GetImageRequest { name: image.to_owned() }, ns.as_str());
            match client.get(req).await {
                Ok(resp) => {
                    let Some(target) = resp.into_inner().image.and_then(|i| i.target) else {
                        continue;
                    };
                    let digest = target.digest.parse().map_err(|e| StoreError::Other(format!("image {image}: {e}")))?;
                    return Ok(Some(Descriptor {
                        media_type: target.media_type,
                        digest,
                        size: target.size.max(0) as u64,
                    }));
                }
                Err(s) if s.code() == Code::NotFound => continue,
                Err(s) => return Err(self.map_status(s)),
            }
        }
        Ok(None)
    }
}
