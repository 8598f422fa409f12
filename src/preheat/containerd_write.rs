//! Writing content INTO containerd (the read side is [`crate::store::containerd`]): a lease per
//! preheat, and each blob through the content service's `Write` stream (ref, expected digest
//! and size), so containerd verifies every byte and a later `ctr`/kubelet pull finds the blob
//! locally and only unpacks.
//!
//! Content written without a lease or a gc root label is garbage-collected silently, so every
//! blob is written under the preheat's lease (the `containerd-lease` request header), and a blob
//! that was already there is added to the lease (`AddResource`). The lease carries
//! `containerd.io/gc.expire`: after `preheat.lease_ttl` containerd drops the lease, and the
//! content lives on only if an image (a pull) references it.
//!
//! The channel has no per-call deadline (a blob write lasts as long as the blob takes to
//! arrive); each step of the stream is bounded by [`STEP_TIMEOUT`] instead.

use crate::oci::Digest;
use crate::stream::ByteStream;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    content_client::ContentClient, AddResourceRequest, CreateRequest, InfoRequest, Resource, WriteAction,
    WriteContentRequest,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

/// Largest piece sent in one `WriteContentRequest` (containerd's default message limit is 4 MiB).
const WRITE_PIECE: usize = 1 << 20;
/// Longest wait for containerd to take one piece, or for the next piece of the source.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The lease label containerd's garbage collector reads.
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("containerd: {code:?}: {message}")]
    Containerd { code: Code, message: String },
    #[error("containerd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("source: {0}")]
    Source(String),
    #[error("{digest}: {got} bytes, expected {want}")]
    Size { digest: Digest, got: u64, want: u64 },
}

fn grpc(e: tonic::Status) -> WriteError {
    WriteError::Containerd { code: e.code(), message: e.message().to_owned() }
}

/// A content writer for one containerd namespace.
#[derive(Clone)]
pub struct ContainerdWriter {
    channel: Channel,
    namespace: String,
}

impl ContainerdWriter {
    /// Connects lazily (containerd may start after peerd).
    pub fn new(socket: PathBuf, namespace: String, connect_timeout: Duration) -> Result<Self, WriteError> {
        let endpoint = Endpoint::try_from("http://[::]")
            .map_err(|e| WriteError::Containerd { code: Code::Internal, message: e.to_string() })?;
        let channel =
            endpoint.connect_timeout(connect_timeout).connect_with_connector_lazy(tower::service_fn(move |_| {
                let path = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }));
        Ok(Self { channel, namespace })
    }

    /// A request in this namespace; unary calls get a deadline of [`STEP_TIMEOUT`] (the write
    /// stream does not: each of its steps is bounded instead).
    fn req<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if lease.is_none() {
            r.set_timeout(STEP_TIMEOUT);
        }
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(v) = lease.and_then(|l| l.parse().ok()) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// Create lease `id` expiring `ttl` after `now` (an existing lease of that id is kept).
    pub async fn lease(
        &self,
        id: &str,
        ttl: Duration,
        now: SystemTime,
        labels: &[(&str, &str)],
    ) -> Result<(), WriteError> {
        let mut all: HashMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        all.insert(GC_EXPIRE.into(), humantime::format_rfc3339_seconds(now + ttl).to_string());
        let req = self.req(CreateRequest { id: id.to_owned(), labels: all }, None);
        match LeasesClient::new(self.channel.clone()).create(req).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(grpc(e)),
        }
    }

    /// The size of `digest` if containerd holds it in this namespace.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, WriteError> {
        let req = self.req(InfoRequest { digest: digest.to_string() }, None);
        match ContentClient::new(self.channel.clone()).info(req).await {
            Ok(r) => Ok(r.into_inner().info.map(|i| i.size.max(0) as u64)),
            Err(e) if e.code() == Code::NotFound => Ok(None),
            Err(e) => Err(grpc(e)),
        }
    }

    /// Put `digest` (already held) under `lease`.
    pub async fn keep(&self, lease: &str, digest: &Digest) -> Result<(), WriteError> {
        let req = self.req(
            AddResourceRequest {
                id: lease.to_owned(),
                resource: Some(Resource { id: digest.to_string(), r#type: "content".into() }),
            },
            None,
        );
        LeasesClient::new(self.channel.clone()).add_resource(req).await.map(|_| ()).map_err(grpc)
    }

    /// Write `body` as blob `digest` of `size` bytes under `lease`, with `labels`; containerd
    /// checks the digest on commit. `progress` is called with each piece's length. A blob that
    /// appears meanwhile (another writer) counts as written.
    pub async fn write(
        &self,
        lease: &str,
        digest: &Digest,
        size: u64,
        labels: HashMap<String, String>,
        mut body: ByteStream,
        mut progress: impl FnMut(u64),
    ) -> Result<(), WriteError> {
        let reference = format!("peerd-preheat-{lease}-{}", digest.hex());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(1);
        let piece = |action: WriteAction, offset: u64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: reference.clone(),
            total: size as i64,
            expected: digest.to_string(),
            offset: offset as i64,
            data,
            labels: if action == WriteAction::Commit { labels.clone() } else { HashMap::new() },
        };
        // The first message opens the writer (a stale ingest of this ref is truncated: offset 0).
        tx.send(piece(WriteAction::Stat, 0, Vec::new())).await.map_err(|_| closed())?;
        let mut client = ContentClient::new(self.channel.clone());
        let call = client.write(self.req(tokio_stream::wrappers::ReceiverStream::new(rx), Some(lease)));
        let mut answers = match tokio::time::timeout(STEP_TIMEOUT, call).await {
            Err(_) => return Err(WriteError::Timeout(STEP_TIMEOUT)),
            Ok(Err(e)) if e.code() == Code::AlreadyExists => return self.keep(lease, digest).await,
            Ok(Err(e)) => return Err(grpc(e)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let mut next_answer = async || match tokio::time::timeout(STEP_TIMEOUT, answers.next()).await {
            Err(_) => Err(WriteError::Timeout(STEP_TIMEOUT)),
            Ok(None) => Err(closed()),
            Ok(Some(Err(e))) => Err(grpc(e)),
            Ok(Some(Ok(a))) => Ok(a),
        };
        next_answer().await?;
        let mut offset = 0u64;
        loop {
            let chunk = match tokio::time::timeout(STEP_TIMEOUT, body.next()).await {
                Err(_) => return Err(WriteError::Source(format!("no data for {STEP_TIMEOUT:?}"))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(WriteError::Source(e.to_string())),
                Ok(Some(Ok(c))) => c,
            };
            for part in chunk.chunks(WRITE_PIECE) {
                if offset + part.len() as u64 > size {
                    return Err(WriteError::Size {
                        digest: digest.clone(),
                        got: offset + part.len() as u64,
                        want: size,
                    });
                }
                tx.send(piece(WriteAction::Write, offset, part.to_vec())).await.map_err(|_| closed())?;
                next_answer().await?;
                offset += part.len() as u64;
                progress(part.len() as u64);
            }
        }
        if offset != size {
            return Err(WriteError::Size { digest: digest.clone(), got: offset, want: size });
        }
        tx.send(piece(WriteAction::Commit, offset, Vec::new())).await.map_err(|_| closed())?;
        match next_answer().await {
            Ok(_) => Ok(()),
            Err(WriteError::Containerd { code: Code::AlreadyExists, .. }) => self.keep(lease, digest).await,
            Err(e) => Err(e),
        }
    }
}

fn closed() -> WriteError {
    WriteError::Containerd { code: Code::Aborted, message: "the write stream closed".into() }
}
