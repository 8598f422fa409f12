//! [`ContentStore`] over containerd's gRPC API (content and images services), so peerd serves
//! what the node already has without a second copy.
//!
//! The channel connects lazily: peerd starts when containerd is absent and begins serving local
//! content as soon as containerd's socket answers. Calls are bounded by a timeout, and a store
//! that cannot be reached is reported as [`StoreError::Unavailable`], which callers treat as a miss.
//!
//! Blob bodies are read from containerd's content files when peerd can read them (see
//! [`super::file`]): the content root is `containerd.content_dir`, or containerd's own answer to
//! the introspection API (the content plugin's `root` export). Whether a blob is served at all is
//! still containerd's metadata's call: it must be visible (gRPC `Info`) in a served namespace,
//! since every namespace shares the same files. A blob without a readable file, or a content root
//! that cannot be read, is read through gRPC `ReadContent` instead. Which path is in use is logged
//! once, exported as the `peerd_store_fast_path` gauge and given by [`ContentStore::describe`].

use super::file::{self, FileError};
use super::{
    ByteStream, ContentStore, Descriptor, ImageEvent, ImageEventStream, StoreError, STORE_FAST_PATH, STORE_READS,
};
use crate::oci::Digest;
use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::services::v1::{
    content_client::ContentClient, events_client::EventsClient, images_client::ImagesClient,
    introspection_client::IntrospectionClient, GetImageRequest, ImageCreate, ImageDelete, ImageUpdate, InfoRequest,
    ListImagesRequest, PluginsRequest, ReadContentRequest, SubscribeRequest,
};
use containerd_client::with_namespace;
use futures_util::StreamExt;
use prost::Message;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// `containerd.content_dir`; `None`: ask containerd (introspection).
    content_dir: Option<PathBuf>,
    /// How blob bodies are read, decided once containerd (or the configured directory) answers.
    read_path: tokio::sync::OnceCell<ReadPath>,
    /// A blob containerd has but whose file we could not open has been reported (once: a wrong
    /// `content_dir` would otherwise log on every read).
    warned_unreadable: AtomicBool,
}

/// The plugin type of containerd's content store (its `root` export is the content root).
const CONTENT_PLUGIN_TYPE: &str = "io.containerd.content.v1";

/// How [`ContainerdStore`] reads blob bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// From the files under this content root (gRPC for a blob whose file cannot be opened).
    File(PathBuf),
    /// Through gRPC `ReadContent` only, and why the files are not used.
    Grpc(String),
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
        Ok(Self {
            channel,
            events_channel,
            namespaces,
            socket,
            content_dir: None,
            read_path: Default::default(),
            warned_unreadable: AtomicBool::new(false),
        })
    }

    /// Read blob files under `dir` (containerd's `<root>/io.containerd.content.v1.content`, as
    /// mounted where peerd runs) instead of asking containerd where they are.
    pub fn with_content_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.content_dir = dir.filter(|d| !d.as_os_str().is_empty());
        self
    }

    /// How blob bodies are read. Decided on first success and kept; while containerd cannot be
    /// reached (and no directory is configured) it is asked again on the next call.
    pub async fn read_path(&self) -> Result<&ReadPath, StoreError> {
        self.read_path
            .get_or_try_init(|| async {
                let path = self.decide_read_path().await?;
                match &path {
                    ReadPath::File(root) => {
                        tracing::info!(content_root = %root.display(), "local blobs are read from containerd's content files (fast path)");
                    }
                    ReadPath::Grpc(why) => {
                        tracing::warn!("local blobs are read through containerd's gRPC API (slower): {why}");
                    }
                }
                metrics::gauge!(STORE_FAST_PATH).set(if matches!(path, ReadPath::File(_)) { 1.0 } else { 0.0 });
                Ok(path)
            })
            .await
    }

    async fn decide_read_path(&self) -> Result<ReadPath, StoreError> {
        let (root, origin) = match &self.content_dir {
            Some(dir) => (dir.clone(), "containerd.content_dir"),
            None => match self.discover_content_root().await? {
                Some(root) => (root, "containerd's introspection API"),
                None => {
                    return Ok(ReadPath::Grpc(format!(
                        "containerd exports no root for its {CONTENT_PLUGIN_TYPE} plugin; set containerd.content_dir"
                    )))
                }
            },
        };
        // Readable means we can list it: a content root without `blobs/` yet (nothing committed)
        // is fine, `blobs/` appears with the first blob.
        match tokio::fs::read_dir(&root).await {
            Ok(_) => Ok(ReadPath::File(root)),
            Err(e) => Ok(ReadPath::Grpc(format!(
                "content root {} (from {origin}) is not readable here: {e}{}",
                root.display(),
                if self.content_dir.is_none() { "; mount it and set containerd.content_dir" } else { "" }
            ))),
        }
    }

    /// containerd's content root from its introspection API: the content plugin's `root` export.
    async fn discover_content_root(&self) -> Result<Option<PathBuf>, StoreError> {
        let mut client = IntrospectionClient::new(self.channel.clone());
        let req = PluginsRequest { filters: vec![format!("type=={CONTENT_PLUGIN_TYPE}")] };
        let plugins = client.plugins(req).await.map_err(|s| self.map_status(s))?.into_inner().plugins;
        Ok(plugins
            .into_iter()
            .filter(|p| p.r#type == CONTENT_PLUGIN_TYPE)
            .find_map(|mut p| p.exports.remove("root"))
            .filter(|r| !r.is_empty())
            .map(PathBuf::from))
    }

    /// Read a blob known to be visible in namespace `ns` (looked up again when `None`) and to
    /// hold `size` bytes: from its file when possible, else through gRPC.
    async fn read_located(
        &self,
        ns: Option<&str>,
        digest: &Digest,
        size: u64,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StoreError> {
        if let Ok(ReadPath::File(root)) = self.read_path().await {
            match file::open(file::blob_path(root, digest), size, offset, len).await {
                Ok(body) => {
                    metrics::counter!(STORE_READS, "path" => "file").increment(1);
                    return Ok(body);
                }
                // No file we can read: containerd can still read it for us.
                Err(e @ (FileError::Open { .. } | FileError::Io { .. })) => {
                    if self.warned_unreadable.swap(true, Ordering::Relaxed) {
                        tracing::debug!(%digest, error = %e, "blob file not readable; reading through gRPC");
                    } else {
                        tracing::warn!(%digest, error = %e, "containerd holds a blob whose file cannot be read here; reading it through gRPC (is containerd.content_dir right? reported once)");
                    }
                }
                // A file that is not the blob: do not serve it in any way.
                Err(e @ (FileError::SizeMismatch { .. } | FileError::Range { .. })) => {
                    return Err(StoreError::Other(e.to_string()));
                }
            }
        }
        let located;
        let ns = match ns {
            Some(ns) => ns,
            None => {
                located = self.locate(digest).await?;
                located
                    .map(|(ns, _)| ns)
                    .ok_or_else(|| StoreError::Other(format!("{digest} not found in containerd")))?
            }
        };
        let want = len.unwrap_or(size.saturating_sub(offset));
        let mut client = ContentClient::new(self.channel.clone());
        let req =
            ReadContentRequest { digest: digest.to_string(), offset: offset as i64, size: len.unwrap_or(0) as i64 };
        let stream = client.read(with_namespace!(req, ns)).await.map_err(|s| self.map_status(s))?.into_inner();
        metrics::counter!(STORE_READS, "path" => "grpc").increment(1);
        let body: ByteStream = Box::pin(stream.map(|item| {
            item.map(|m| Bytes::from(m.data)).map_err(|s| std::io::Error::other(format!("containerd read: {s}")))
        }));
        Ok(Box::pin(crate::stream::Exact::new(body, want)))
    }

    /// containerd's version, or why it cannot be reached (logged at start-up).
    pub async fn probe(&self) -> Result<String, StoreError> {
        let mut client = containerd_client::services::v1::version_client::VersionClient::new(self.channel.clone());
        let v = client.version(()).await.map_err(|s| self.map_status(s))?.into_inner();
        // Decide (and log) how blobs will be read, now rather than on the first request.
        let _ = self.read_path().await;
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
        let (ns, size) =
            self.locate(digest).await?.ok_or_else(|| StoreError::Other(format!("{digest} not found in containerd")))?;
        self.read_located(Some(ns), digest, size, offset, len).await
    }

    async fn read_sized(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, StoreError> {
        // `size` came from `size()`, which found the blob in a served namespace: no second Info.
        self.read_located(None, digest, size, offset, len).await
    }

    fn content_is_verified(&self) -> bool {
        // containerd names a committed blob by the digest it computed over the bytes written.
        true
    }

    fn describe(&self) -> String {
        match self.read_path.get() {
            Some(ReadPath::File(root)) => format!("containerd files at {} (gRPC fallback)", root.display()),
            Some(ReadPath::Grpc(why)) => format!("containerd gRPC ReadContent ({why})"),
            None => "containerd (not reached yet: read path undecided)".into(),
        }
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
