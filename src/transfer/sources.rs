//! Multi-source fetching of one blob: start from the first peer that answers (hedging to the
//! next after a delay), and when a source dies or stalls mid-body, resume at the next byte from
//! the next source (another peer, finally the upstream). The client sees one body; the caller
//! wraps it in [`crate::stream::Verify`] so the assembled bytes are checked against the digest.

use crate::actors::peers::Corrupt;
use crate::actors::upstream::Gate;
use crate::metrics::{Source, SERVED_BYTES};
use crate::oci::Digest;
use crate::peer::client::PeerClient;
use crate::peer::PEER_FETCH_FAILURES;
use crate::range::ByteRange;
use crate::routing::Peer;
use crate::stream::ByteStream;
use crate::stream::{Count, Pieces, Verify, MAX_PIECE};
use crate::upstream::{UpstreamError, UpstreamRequest};
use actix::Recipient;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Why a source could not serve.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Peer(#[from] crate::peer::client::PeerError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0} sent no size")]
    NoSize(String),
    /// Every source was tried; the last one's failure.
    #[error("no source could serve: {0}")]
    Exhausted(Box<SourceError>),
    #[error("no sources")]
    NoSources,
    /// A failing source in the tests.
    #[cfg(test)]
    #[error("{0}")]
    Test(String),
}

/// A body opened from one source, with the total size when the source said it.
pub struct Opened {
    pub body: ByteStream,
    pub size: Option<u64>,
}

/// One place a blob can be read from.
#[async_trait]
pub trait Opener: Send + Sync {
    fn source(&self) -> Source;
    fn label(&self) -> String;
    /// Open `range` (the whole blob when `None`).
    async fn open(&self, range: Option<ByteRange>) -> Result<Opened, SourceError>;
    /// The blob's size.
    async fn size(&self) -> Result<u64, SourceError>;
    /// The peer behind this source (`None` for the upstream): who is blamed when the assembled
    /// body does not match its digest.
    fn peer_id(&self) -> Option<String> {
        None
    }
}

pub struct PeerOpener {
    pub client: Arc<PeerClient>,
    pub peer: Peer,
    /// `/v2/<repo>/blobs/<digest>?ns=<registry>`
    pub target: String,
    /// Told whether the peer worked, so the fetch actor can rank peers.
    pub report: Option<Recipient<crate::actors::peers::Outcome>>,
}

impl PeerOpener {
    fn report(&self, ok: bool) {
        if let Some(r) = &self.report {
            let _ = r.try_send(crate::actors::peers::Outcome { peer: self.peer.id.clone(), ok });
        }
    }

    /// The peer could not start a body: counted, and reported so the peer ranks lower.
    fn failed(&self, e: &crate::peer::client::PeerError) {
        metrics::counter!(PEER_FETCH_FAILURES, "reason" => e.reason()).increment(1);
        self.report(false);
    }
}

#[async_trait]
impl Opener for PeerOpener {
    fn source(&self) -> Source {
        Source::Peer
    }
    fn label(&self) -> String {
        format!("peer {}", self.peer.id)
    }
    fn peer_id(&self) -> Option<String> {
        Some(self.peer.id.clone())
    }
    async fn open(&self, range: Option<ByteRange>) -> Result<Opened, SourceError> {
        match self.client.fetch(&self.peer, &self.target, false, range, None).await {
            Ok(r) => {
                self.report(true);
                Ok(Opened { body: r.body, size: r.total_size })
            }
            Err(e) => {
                self.failed(&e);
                Err(e.into())
            }
        }
    }
    async fn size(&self) -> Result<u64, SourceError> {
        let r = self.client.fetch(&self.peer, &self.target, true, None, None).await.inspect_err(|e| self.failed(e))?;
        r.content_length.ok_or_else(|| SourceError::NoSize(self.label()))
    }
}

pub struct UpstreamOpener {
    pub upstream: Gate,
    pub request: UpstreamRequest,
}

#[async_trait]
impl Opener for UpstreamOpener {
    fn source(&self) -> Source {
        Source::Upstream
    }
    fn label(&self) -> String {
        format!("upstream {}", self.request.registry)
    }
    async fn open(&self, range: Option<ByteRange>) -> Result<Opened, SourceError> {
        let mut req = self.request.clone();
        req.head = false;
        req.range = range;
        let resp = self.upstream.fetch(req).await?;
        let body = match range {
            Some(r) => crate::stream::ranged(resp.body, resp.status, r),
            None => resp.body,
        };
        Ok(Opened { body, size: if range.is_none() { resp.content_length } else { None } })
    }
    async fn size(&self) -> Result<u64, SourceError> {
        let mut req = self.request.clone();
        req.head = true;
        req.range = None;
        let resp = self.upstream.fetch(req).await?;
        resp.content_length.ok_or_else(|| SourceError::NoSize(self.label()))
    }
}

/// Count the bytes of `body` as served from `source`.
/// Served bodies go out in pieces of at most [`MAX_PIECE`], so a stalled client pins little.
pub fn counted(body: ByteStream, source: Source) -> ByteStream {
    let counter = metrics::counter!(SERVED_BYTES, "source" => source.as_str());
    Box::pin(Pieces::new(Box::pin(Count::new(body, move |n| counter.increment(n))), MAX_PIECE))
}

/// Open the whole blob from the first source that answers. Sources are tried in order; when the
/// current attempt has not answered after `hedge`, the next one is started too (peers only: the
/// upstream is asked only once every peer has failed). Returns the body, its size, the source it
/// came from and the sources left for resuming (unstarted, and started-but-slower ones first).
pub async fn open_first(
    sources: Vec<Arc<dyn Opener>>,
    hedge: Duration,
) -> Result<(Opened, Arc<dyn Opener>, VecDeque<Arc<dyn Opener>>), SourceError> {
    let mut queue: VecDeque<Arc<dyn Opener>> = sources.into();
    let mut racing = FuturesUnordered::new();
    let mut in_race: Vec<Arc<dyn Opener>> = Vec::new();
    let mut last_error = SourceError::NoSources;
    loop {
        if racing.is_empty() {
            let Some(next) = queue.pop_front() else {
                return Err(match last_error {
                    SourceError::NoSources => SourceError::NoSources,
                    e => SourceError::Exhausted(Box::new(e)),
                });
            };
            let idx = in_race.len();
            in_race.push(next.clone());
            racing.push(async move { (idx, next.open(None).await) }.boxed());
        }
        let can_hedge = queue.front().is_some_and(|o| o.source() == Source::Peer)
            && in_race.last().is_some_and(|o| o.source() == Source::Peer);
        let timer = tokio::time::sleep(if can_hedge { hedge } else { Duration::from_secs(86_400) });
        tokio::select! {
            Some((idx, res)) = racing.next() => match res {
                Ok(opened) if opened.size.is_some() => {
                    let winner = in_race[idx].clone();
                    tracing::debug!(source = %winner.label(), "fetching from");
                    // Attempts still running lost only on time: they go first among the fallbacks.
                    let mut rest: VecDeque<Arc<dyn Opener>> =
                        in_race.iter().enumerate().filter(|(i, _)| *i != idx).map(|(_, o)| o.clone()).collect();
                    rest.extend(queue);
                    return Ok((opened, winner, rest));
                }
                Ok(_) => last_error = SourceError::NoSize(in_race[idx].label()),
                Err(e) => {
                    tracing::debug!(source = %in_race[idx].label(), error = %e, "source failed");
                    last_error = e;
                }
            },
            _ = timer => {
                if let Some(next) = queue.pop_front() {
                    tracing::debug!(source = %next.label(), "hedging");
                    let idx = in_race.len();
                    in_race.push(next.clone());
                    racing.push(async move { (idx, next.open(None).await) }.boxed());
                }
            }
        }
    }
}

/// A whole blob from `peers` (hedged start; resumed from the next peer, finally `upstream`, when
/// a source fails mid-body), verified against `digest` as it streams. When the assembled body
/// does not match, `on_mismatch` runs and every peer whose bytes went into it is reported to
/// `corrupt` (it rests, and the digest becomes suspect), so the next attempt avoids it.
pub async fn verified_whole(
    peers: Vec<Arc<dyn Opener>>,
    upstream: Arc<dyn Opener>,
    hedge: Duration,
    digest: &Digest,
    corrupt: Option<Recipient<Corrupt>>,
    on_mismatch: impl FnOnce(&Digest, &str) + Send + 'static,
) -> Result<(ByteStream, u64, Source), SourceError> {
    let (opened, winner, mut rest) = open_first(peers, hedge).await?;
    rest.push_back(upstream);
    let size = opened.size.unwrap_or(0);
    let source = winner.source();
    let whole = Resume::new(opened.body, source, rest, 0, size.saturating_sub(1)).first_peer(winner.peer_id());
    let contributors = whole.contributors();
    let body: ByteStream = if size == 0 { Box::pin(futures_util::stream::empty()) } else { Box::pin(whole) };
    let verified = Verify::new(body, digest.clone(), Some(size), move |d, why| {
        on_mismatch(d, why);
        let peers = contributors.take();
        metrics::counter!(PEER_FETCH_FAILURES, "reason" => "digest_mismatch").increment(peers.len() as u64);
        if let Some(c) = corrupt {
            let _ = c.try_send(Corrupt { peers, key: d.to_string() });
        }
    });
    Ok((Box::pin(verified), size, source))
}

/// A body assembled from several sources: it follows the current one and, when it fails or
/// ends short, continues from `offset` with the next source.
pub struct Resume {
    current: Option<ByteStream>,
    /// The peer `current` reads from (`None`: the upstream).
    current_peer: Option<String>,
    pending: Option<BoxFuture<'static, Result<Opened, SourceError>>>,
    pending_source: Source,
    pending_peer: Option<String>,
    /// Peers whose bytes went into the body so far.
    contributors: Contributors,
    sources: VecDeque<Arc<dyn Opener>>,
    offset: u64,
    end: u64,
    finished: bool,
}

impl Resume {
    /// Continue `first` (already positioned at `start`) up to `end` inclusive.
    pub fn new(
        first: ByteStream,
        first_source: Source,
        sources: VecDeque<Arc<dyn Opener>>,
        start: u64,
        end: u64,
    ) -> Self {
        Self {
            current: Some(counted(first, first_source)),
            current_peer: None,
            pending: None,
            pending_source: first_source,
            pending_peer: None,
            contributors: Contributors::default(),
            sources,
            offset: start,
            end,
            finished: false,
        }
    }

    /// Nothing opened yet: open `start..=end` from the sources in order.
    pub fn lazy(sources: VecDeque<Arc<dyn Opener>>, start: u64, end: u64) -> Self {
        Self {
            current: None,
            current_peer: None,
            pending: None,
            pending_source: Source::Upstream,
            pending_peer: None,
            contributors: Contributors::default(),
            sources,
            offset: start,
            end,
            finished: false,
        }
    }
}

impl Resume {
    /// The peer the first body comes from.
    pub fn first_peer(mut self, peer: Option<String>) -> Self {
        self.current_peer = peer;
        self
    }

    /// Who contributed bytes (shared: still readable once the stream is boxed).
    pub fn contributors(&self) -> Contributors {
        self.contributors.clone()
    }
}

/// The peers whose bytes went into one assembled body, in order.
#[derive(Clone, Default)]
pub struct Contributors(Arc<std::sync::Mutex<Vec<String>>>);

impl Contributors {
    fn add(&self, peer: &str) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !v.iter().any(|p| p == peer) {
            v.push(peer.to_owned());
        }
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Stream for Resume {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(fut) = this.pending.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(opened)) => {
                        this.current = Some(counted(opened.body, this.pending_source));
                        this.current_peer = this.pending_peer.take();
                        this.pending = None;
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, offset = this.offset, "resume source failed");
                        this.pending = None;
                    }
                }
            }
            if let Some(cur) = this.current.as_mut() {
                match cur.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(mut chunk))) => {
                        let room = this.end + 1 - this.offset;
                        if chunk.len() as u64 > room {
                            chunk.truncate(room as usize);
                        }
                        this.offset += chunk.len() as u64;
                        if this.offset > this.end {
                            this.finished = true;
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        if let Some(p) = &this.current_peer {
                            this.contributors.add(p);
                        }
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tracing::warn!(error = %e, offset = this.offset, "source failed mid-body; resuming from the next source");
                        metrics::counter!(PEER_FETCH_FAILURES, "reason" => "mid_body").increment(1);
                        this.current = None;
                    }
                    Poll::Ready(None) => {
                        if this.offset > this.end {
                            this.finished = true;
                            return Poll::Ready(None);
                        }
                        tracing::warn!(offset = this.offset, "source ended early; resuming from the next source");
                        this.current = None;
                    }
                }
            }
            // Open the rest from the next source.
            let Some(next) = this.sources.pop_front() else {
                this.finished = true;
                return Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "every source failed at byte {} of {}",
                    this.offset,
                    this.end + 1
                )))));
            };
            tracing::info!(source = %next.label(), offset = this.offset, "resuming");
            this.pending_source = next.source();
            this.pending_peer = next.peer_id();
            let range = ByteRange { start: this.offset, end: this.end };
            this.pending = Some(async move { next.open(Some(range)).await }.boxed());
        }
    }
}

/// Requests that joined another request's upstream fetch of a small blob, by outcome
/// (`shared`: served the leader's verified bytes; `solo`: the flight could not be shared and the
/// request fetched on its own; `failed`: the leader's unreachable upstream was reported).
pub const COALESCED: &str = "peerd_coalesced_requests_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        COALESCED,
        "Requests that joined another request's upstream fetch of a small blob, by outcome"
    );
}

/// Blobs up to this size are fetched once per node for all concurrent whole-blob GETs.
pub const FLIGHT_MAX_BLOB: u64 = 1 << 20;
/// Bytes all flights together may hold in memory; past it, requests fetch on their own.
pub const FLIGHT_BUDGET: u64 = 64 << 20;

/// Why a flight has no bytes for its followers.
#[derive(Debug, Clone)]
pub enum FlightError {
    /// The upstream failed before sending a body.
    Upstream(UpstreamError),
    /// The flight was not shared: the blob is too large, has no declared size, the memory budget
    /// is spent, the body failed or did not match, or the leader's client left.
    NotShared,
}

/// How a flight ended, as its followers see it.
#[derive(Debug, Clone)]
pub enum Landed {
    InFlight,
    /// The whole blob, already verified against its digest.
    Done(Bytes),
    Failed(FlightError),
}

/// Single flight of whole-blob upstream GETs per node: the first request for a key leads (it
/// fetches), concurrent ones follow and get the leader's verified bytes. Only blobs of at most
/// `max_blob` bytes are shared, held in memory while in flight (all flights together within
/// `budget`); larger ones are left to the swarm (or fetched per request).
pub struct Flights {
    max_blob: u64,
    budget: u64,
    inner: std::sync::Mutex<FlightsInner>,
}

#[derive(Default)]
struct FlightsInner {
    by_key: std::collections::HashMap<String, tokio::sync::watch::Receiver<Landed>>,
    reserved: u64,
}

impl Default for Flights {
    fn default() -> Self {
        Self::new(FLIGHT_MAX_BLOB, FLIGHT_BUDGET)
    }
}

/// A request's place in a flight.
pub enum Seat {
    /// Fetch, then [`Lead::land`] (dropping the lead sends the followers off on their own).
    Leader(Lead),
    Follower(tokio::sync::watch::Receiver<Landed>),
}

impl Flights {
    pub fn new(max_blob: u64, budget: u64) -> Self {
        Self { max_blob, budget, inner: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlightsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lead the flight for `key`, or follow the one in progress.
    pub fn board(self: &Arc<Self>, key: String) -> Seat {
        let mut inner = self.lock();
        if let Some(rx) = inner.by_key.get(&key) {
            return Seat::Follower(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(Landed::InFlight);
        inner.by_key.insert(key.clone(), rx);
        Seat::Leader(Lead { flights: self.clone(), key, tx, reserved: 0, landed: false })
    }

    /// Flights in progress.
    pub fn in_flight(&self) -> usize {
        self.lock().by_key.len()
    }
}

/// Wait for a flight to land. A leader that vanished counts as not shared.
pub async fn follow(mut rx: tokio::sync::watch::Receiver<Landed>) -> Landed {
    match rx.wait_for(|l| !matches!(l, Landed::InFlight)).await {
        Ok(l) => l.clone(),
        Err(_) => Landed::Failed(FlightError::NotShared),
    }
}

pub struct Lead {
    flights: Arc<Flights>,
    key: String,
    tx: tokio::sync::watch::Sender<Landed>,
    reserved: u64,
    landed: bool,
}

impl Lead {
    /// Room for a body of `len` bytes: within the per-blob limit and the shared budget.
    pub fn reserve(&mut self, len: u64) -> bool {
        if len > self.flights.max_blob {
            return false;
        }
        let mut inner = self.flights.lock();
        if inner.reserved + len > self.flights.budget {
            return false;
        }
        inner.reserved += len;
        self.reserved += len;
        true
    }

    /// Tell the followers how the fetch ended (and close the flight: later requests start anew).
    pub fn land(mut self, landed: Landed) {
        self.close();
        self.landed = true;
        self.tx.send_replace(landed);
    }

    fn close(&mut self) {
        let mut inner = self.flights.lock();
        inner.by_key.remove(&self.key);
        inner.reserved -= self.reserved;
        self.reserved = 0;
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if !self.landed {
            self.close();
            self.tx.send_replace(Landed::Failed(FlightError::NotShared));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source over `data` that fails after `fail_after` bytes (per open) and may be slow.
    struct Fake {
        data: Bytes,
        fail_after: Option<usize>,
        delay: Duration,
        source: Source,
        opens: AtomicUsize,
        broken: bool,
        id: Option<&'static str>,
    }

    fn fake(data: &'static [u8], fail_after: Option<usize>, delay_ms: u64, source: Source) -> Arc<Fake> {
        Arc::new(Fake {
            data: Bytes::from_static(data),
            fail_after,
            delay: Duration::from_millis(delay_ms),
            source,
            opens: AtomicUsize::new(0),
            broken: false,
            id: None,
        })
    }

    #[async_trait]
    impl Opener for Fake {
        fn source(&self) -> Source {
            self.source
        }
        fn label(&self) -> String {
            "fake".into()
        }
        fn peer_id(&self) -> Option<String> {
            self.id.map(str::to_owned)
        }
        async fn open(&self, range: Option<ByteRange>) -> Result<Opened, SourceError> {
            self.opens.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.broken {
                return Err(SourceError::Test("broken".into()));
            }
            let (s, e) = range.map_or((0, self.data.len()), |r| (r.start as usize, r.end as usize + 1));
            let part = self.data.slice(s..e);
            let mut items: Vec<std::io::Result<Bytes>> =
                part.chunks(2).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            if let Some(n) = self.fail_after {
                items.truncate(n / 2);
                items.push(Err(std::io::Error::other("died")));
            }
            Ok(Opened { body: Box::pin(futures_util::stream::iter(items)), size: Some(self.data.len() as u64) })
        }
        async fn size(&self) -> Result<u64, SourceError> {
            Ok(self.data.len() as u64)
        }
    }

    async fn run(sources: Vec<Arc<dyn Opener>>) -> Result<Vec<u8>, String> {
        let (opened, src, rest) = open_first(sources, Duration::from_millis(20)).await.map_err(|e| e.to_string())?;
        let size = opened.size.unwrap();
        let mut s = Resume::new(opened.body, src.source(), rest, 0, size - 1);
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    const DATA: &[u8] = b"0123456789abcdefghij";

    #[tokio::test]
    async fn resumes_from_next_source_at_the_next_byte() {
        let a = fake(DATA, Some(6), 0, Source::Peer);
        let b = fake(DATA, Some(10), 0, Source::Peer);
        let up = fake(DATA, None, 0, Source::Upstream);
        assert_eq!(run(vec![a.clone(), b.clone(), up.clone()]).await.unwrap(), DATA);
        assert_eq!(
            (a.opens.load(Ordering::SeqCst), b.opens.load(Ordering::SeqCst), up.opens.load(Ordering::SeqCst)),
            (1, 1, 1)
        );
    }

    /// In paused (virtual) time: the hedge starts exactly after its delay, whatever the load.
    #[tokio::test(start_paused = true)]
    async fn hedges_to_a_faster_peer_but_not_to_upstream() {
        let slow = fake(DATA, None, 500, Source::Peer);
        let fast = fake(DATA, None, 0, Source::Peer);
        let up = fake(DATA, None, 0, Source::Upstream);
        let t = tokio::time::Instant::now();
        assert_eq!(run(vec![slow.clone(), fast.clone(), up.clone()]).await.unwrap(), DATA);
        assert_eq!(t.elapsed(), Duration::from_millis(20), "served by the hedge, started after 20 ms");
        assert_eq!(up.opens.load(Ordering::SeqCst), 0, "upstream not asked while a peer works");
        let lone = fake(DATA, None, 100, Source::Peer);
        let up2 = fake(DATA, None, 0, Source::Upstream);
        assert_eq!(run(vec![lone, up2.clone()]).await.unwrap(), DATA);
        assert_eq!(up2.opens.load(Ordering::SeqCst), 0, "a slow peer is not hedged with the upstream");
    }

    #[tokio::test]
    async fn fails_when_every_source_fails() {
        let a = fake(DATA, Some(4), 0, Source::Peer);
        let mut broken = Fake {
            data: Bytes::from_static(DATA),
            fail_after: None,
            delay: Duration::ZERO,
            source: Source::Upstream,
            opens: AtomicUsize::new(0),
            broken: true,
            id: None,
        };
        broken.broken = true;
        let broken = Arc::new(broken);
        let err = run(vec![a, broken.clone()]).await.unwrap_err();
        assert!(err.contains("every source failed at byte 4"), "{err}");
        // Nothing opens: the error says so, typed, with the last source's failure inside.
        let none = open_first(vec![broken.clone(), broken], Duration::from_millis(20)).await;
        assert!(matches!(none, Err(SourceError::Exhausted(e)) if matches!(*e, SourceError::Test(_))));
        assert!(matches!(open_first(vec![], Duration::ZERO).await, Err(SourceError::NoSources)));
    }

    /// Records what a fetch reports as corrupt.
    struct Sink(Arc<std::sync::Mutex<Vec<Corrupt>>>);
    impl actix::Actor for Sink {
        type Context = actix::Context<Self>;
    }
    impl actix::Handler<Corrupt> for Sink {
        type Result = ();
        fn handle(&mut self, c: Corrupt, _: &mut actix::Context<Self>) {
            self.0.lock().unwrap().push(c);
        }
    }

    fn peer_fake(data: Vec<u8>, fail_after: Option<usize>, id: &'static str) -> Arc<Fake> {
        Arc::new(Fake {
            data: Bytes::from(data),
            fail_after,
            delay: Duration::ZERO,
            source: Source::Peer,
            opens: AtomicUsize::new(0),
            broken: false,
            id: Some(id),
        })
    }

    #[actix::test]
    async fn a_mismatch_reports_every_peer_whose_bytes_went_in() {
        use actix::Actor;
        let digest = Digest::compute(crate::oci::Algorithm::Sha256, DATA);
        let mut flipped = DATA.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Sink(seen.clone()).start();
        // a dies after 6 bytes, b (with a flipped last byte) sends the rest; c is never used.
        let a = peer_fake(DATA.to_vec(), Some(6), "a");
        let b = peer_fake(flipped, None, "b");
        let c = peer_fake(DATA.to_vec(), None, "c");
        let up = fake(DATA, None, 0, Source::Upstream);
        let mismatches = Arc::new(AtomicUsize::new(0));
        let m = mismatches.clone();
        let (body, size, source) = verified_whole(
            vec![a, b, c],
            up,
            Duration::from_secs(5),
            &digest,
            Some(sink.clone().recipient()),
            move |_, _| {
                m.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await
        .unwrap();
        assert_eq!((size, source), (DATA.len() as u64, Source::Peer));
        let err = crate::stream::collect(body, 100).await.unwrap_err();
        assert!(err.to_string().contains("mismatch"), "{err}");
        assert_eq!(mismatches.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        {
            let reports = seen.lock().unwrap();
            assert_eq!(reports.len(), 1);
            assert_eq!(reports[0].peers, ["a", "b"], "both peers' bytes went in; c sent none");
            assert_eq!(reports[0].key, digest.to_string());
        }

        // Good bytes: nothing reported.
        let good = peer_fake(DATA.to_vec(), None, "good");
        let up = fake(DATA, None, 0, Source::Upstream);
        let (body, _, _) =
            verified_whole(vec![good], up, Duration::from_secs(5), &digest, Some(sink.recipient()), |_, _| panic!())
                .await
                .unwrap();
        assert_eq!(&crate::stream::collect(body, 100).await.unwrap()[..], DATA);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
