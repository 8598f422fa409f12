//! Stream adapters on the data path: digest verification, length checks, byte accounting and
//! range slicing.
//! They hold at most one chunk, so memory stays bounded whatever the body size.

use crate::oci::{Digest, Hasher};
use crate::range::ByteRange;
use bytes::Bytes;
use futures_util::Stream;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A body travelling from a source to an HTTP response. Never buffered whole, never sent
/// through an actor mailbox.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Collect a stream into one buffer, failing past `limit` bytes.
pub async fn collect(stream: ByteStream, limit: u64) -> Result<Bytes, std::io::Error> {
    collect_with(stream, limit, 0, |_| {}).await
}

/// [`collect`] of a body of `expected` bytes (room for them taken at once: no regrowth
/// copies), hashed with sha256 as its pieces arrive: the hash of a chunk from a peer or an
/// upstream overlaps its transfer instead of following it.
pub async fn collect_hashed(
    stream: ByteStream,
    limit: u64,
    expected: usize,
) -> Result<(Bytes, [u8; 32]), std::io::Error> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let body = collect_with(stream, limit, expected.min(limit as usize), |piece| hasher.update(piece)).await?;
    Ok((body, hasher.finalize().into()))
}

async fn collect_with(
    mut stream: ByteStream,
    limit: u64,
    capacity: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<Bytes, std::io::Error> {
    use futures_util::StreamExt;
    let mut buf = bytes::BytesMut::with_capacity(capacity);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(std::io::Error::other(format!("body exceeds the {limit} byte limit")));
        }
        each(&chunk);
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Hashes a body while it streams and releases its last byte only once the digest (and the
/// expected length, when known) check out. On a mismatch the stream ends with an error instead
/// of that byte, so the HTTP layer cuts the connection and the client never sees a complete,
/// clean body with the wrong bytes. `on_mismatch` runs once when that happens.
///
/// Only one byte is held back (a copy): a client that stops reading pins no more of the body
/// here than that, whatever the chunk sizes of the source. With the length known, that is the
/// body's last byte and every other chunk passes unchanged; without, the last byte of each chunk
/// waits for the next chunk.
/// Called once with the expected digest and what went wrong.
type OnMismatch = Box<dyn FnOnce(&Digest, &str) + Send>;

pub struct Verify {
    inner: ByteStream,
    hasher: Option<Hasher>,
    expected: Digest,
    expected_len: Option<u64>,
    seen: u64,
    /// The last byte seen, released at the end when everything checked out.
    held: Option<Bytes>,
    /// The part of the last chunk to hand on after the byte held before it.
    pending: Option<Bytes>,
    on_mismatch: Option<OnMismatch>,
}

impl Verify {
    pub fn new(
        inner: ByteStream,
        expected: Digest,
        expected_len: Option<u64>,
        on_mismatch: impl FnOnce(&Digest, &str) + Send + 'static,
    ) -> Self {
        Self {
            inner,
            hasher: Some(Hasher::new(expected.algorithm())),
            expected,
            expected_len,
            seen: 0,
            held: None,
            pending: None,
            on_mismatch: Some(Box::new(on_mismatch)),
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<io::Result<Bytes>>> {
        self.hasher = None;
        self.held = None;
        self.pending = None;
        if let Some(f) = self.on_mismatch.take() {
            f(&self.expected, &why);
        }
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, why))))
    }
}

impl Stream for Verify {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(p) = this.pending.take() {
                return Poll::Ready(Some(Ok(p)));
            }
            if this.hasher.is_none() {
                // Verified and drained, or already failed.
                return Poll::Ready(this.held.take().map(Ok));
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(mut chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    this.seen += chunk.len() as u64;
                    if matches!(this.expected_len, Some(n) if this.seen > n) {
                        let why =
                            format!("{} is longer than its {} bytes", this.expected, this.expected_len.unwrap_or(0));
                        return this.fail(why);
                    }
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    // With the length known, only the body's last byte is held back: every chunk
                    // before the last goes on whole (one write each, not a chunk and a byte).
                    if matches!(this.expected_len, Some(n) if this.seen < n) {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    // Hold back a copy of the last byte (not a view that would pin the chunk).
                    let last = Bytes::copy_from_slice(&chunk[chunk.len() - 1..]);
                    chunk.truncate(chunk.len() - 1);
                    let prev = this.held.replace(last);
                    this.pending = (!chunk.is_empty()).then_some(chunk);
                    if let Some(prev) = prev {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Some(Err(e)) => {
                    this.held = None;
                    this.hasher = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    let actual = this.hasher.take().map(Hasher::finish);
                    if let Some(n) = this.expected_len.filter(|&n| n != this.seen) {
                        let why = format!("{} ended after {} of {n} bytes", this.expected, this.seen);
                        return this.fail(why);
                    }
                    if actual.as_ref() != Some(&this.expected) {
                        let why = format!(
                            "digest mismatch: expected {}, content hashes to {}",
                            this.expected,
                            actual.map(|d| d.to_string()).unwrap_or_default()
                        );
                        return this.fail(why);
                    }
                    return Poll::Ready(this.held.take().map(Ok));
                }
            }
        }
    }
}

/// Passes a body through unchanged but ends it with an error if it is longer or shorter than
/// `expected` bytes: for content that is not hashed on its way out, a body cut short or overlong
/// is never delivered as if it were whole.
pub struct Exact {
    inner: ByteStream,
    left: u64,
    expected: u64,
    done: bool,
}

impl Exact {
    pub fn new(inner: ByteStream, expected: u64) -> Self {
        Self { inner, left: expected, expected, done: false }
    }
}

impl Stream for Exact {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = ready!(self.inner.as_mut().poll_next(cx));
        let why = match item {
            Some(Ok(chunk)) if chunk.len() as u64 <= self.left => {
                self.left -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            Some(Ok(_)) => format!("body is longer than its {} bytes", self.expected),
            None if self.left == 0 => {
                self.done = true;
                return Poll::Ready(None);
            }
            None => format!("body ended after {} of {} bytes", self.expected - self.left, self.expected),
            Some(Err(e)) => {
                self.done = true;
                return Poll::Ready(Some(Err(e)));
            }
        };
        self.done = true;
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why))))
    }
}

/// Largest piece handed to the HTTP layer at once. actix-web copies each piece into its
/// connection's write buffer and stops asking for more once that buffer holds 32 KiB, so a
/// client that stops reading pins at most about this much there, not a whole source chunk
/// (up to 1 MiB from a store, ~400 KiB from an HTTP source). One local file read
/// ([`crate::store::file::READ_SIZE`]): each piece costs a write and a round of actix's
/// dispatcher, and side by side 64 KiB pieces cost the local path 0.49-0.67 CPU-s/GiB against
/// 0.44-0.51 (1 stream 1.6-2.0 vs 2.0-2.4 GB/s), while 150 stalled readers peaked at +128 vs
/// +130 MiB (`measure_stalled_readers`): what a stalled reader pins is mostly the source's read.
pub const MAX_PIECE: usize = 256 << 10;

/// Splits chunks larger than `max` into pieces of at most `max` bytes.
pub struct Pieces {
    inner: ByteStream,
    /// Pieces still to hand on: copies, each its own allocation of at most `max` bytes (or
    /// views, see [`Pieces::views`]).
    rest: std::collections::VecDeque<Bytes>,
    max: usize,
    views: bool,
}

impl Pieces {
    pub fn new(inner: ByteStream, max: usize) -> Self {
        Self { inner, rest: std::collections::VecDeque::new(), max: max.max(1), views: false }
    }

    /// Pieces that are views of the chunks, not copies: for chunks that are buffers of their
    /// own, sized to what the client asked (a file read), which nothing else pins.
    pub fn views(inner: ByteStream, max: usize) -> Self {
        Self { views: true, ..Self::new(inner, max) }
    }
}

/// `data` as views of at most [`MAX_PIECE`] bytes (no copy).
pub fn views(data: Bytes) -> impl Iterator<Item = Bytes> {
    views_of(data, MAX_PIECE)
}

/// `data` as a body of [`views`] (no copy).
pub fn of_memory(data: Bytes) -> ByteStream {
    Box::pin(futures_util::stream::iter(views(data).map(Ok)))
}

fn views_of(data: Bytes, max: usize) -> impl Iterator<Item = Bytes> {
    (0..data.len()).step_by(max).map(move |at| data.slice(at..(at + max).min(data.len())))
}

impl Stream for Pieces {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(piece) = self.rest.pop_front() {
            return Poll::Ready(Some(Ok(piece)));
        }
        let mut chunk = match ready!(self.inner.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => chunk,
            other => return Poll::Ready(other),
        };
        if chunk.len() <= self.max {
            return Poll::Ready(Some(Ok(chunk)));
        }
        let first = chunk.split_to(self.max);
        if self.views {
            let max = self.max;
            self.rest.extend(views_of(chunk, max));
            return Poll::Ready(Some(Ok(first)));
        }
        // What waits for the client is copied out of the source's buffer: an HTTP client
        // reads into buffers of ~400 KiB that grow by doubling, and a view of one pins all of
        // it for as long as the client does not read. One copy per piece: small allocations
        // come from the heap, where one copy of the whole rest (often past malloc's mmap
        // threshold of 128 KiB) cost a fresh mapping, its page faults and zeroing every time.
        let max = self.max;
        self.rest.extend(chunk.chunks(max).map(Bytes::copy_from_slice));
        Poll::Ready(Some(Ok(first)))
    }
}

/// The body of a request for `range`: exactly `range.len()` bytes. A 206 answer is the range
/// already; any other success means the source ignored `Range` and sent the whole file, so the
/// range is cut out of it here (one place for every source that may do that).
pub fn ranged(body: ByteStream, status: u16, range: ByteRange) -> ByteStream {
    let skip = if status == 206 { 0 } else { range.start };
    Box::pin(Slice::new(body, skip, range.len()))
}

/// Calls `count(n)` for every chunk of n bytes that passes through.
pub struct Count<F> {
    inner: ByteStream,
    count: F,
}

impl<F: FnMut(u64) + Unpin> Count<F> {
    pub fn new(inner: ByteStream, count: F) -> Self {
        Self { inner, count }
    }
}

impl<F: FnMut(u64) + Unpin> Stream for Count<F> {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.inner.as_mut().poll_next(cx));
        if let Some(Ok(chunk)) = &item {
            (self.count)(chunk.len() as u64);
        }
        Poll::Ready(item)
    }
}

/// Skips `skip` bytes, then yields at most `take` bytes: a range cut from a full body, for an
/// upstream that ignored our `Range` header.
pub struct Slice {
    inner: ByteStream,
    skip: u64,
    take: u64,
}

impl Slice {
    pub fn new(inner: ByteStream, skip: u64, take: u64) -> Self {
        Self { inner, skip, take }
    }
}

impl Stream for Slice {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.take == 0 {
                return Poll::Ready(None);
            }
            let mut chunk = match ready!(self.inner.as_mut().poll_next(cx)) {
                Some(Ok(c)) => c,
                other => return Poll::Ready(other),
            };
            let skip = self.skip.min(chunk.len() as u64);
            self.skip -= skip;
            let _ = chunk.split_to(skip as usize);
            if chunk.is_empty() {
                continue;
            }
            let n = self.take.min(chunk.len() as u64);
            self.take -= n;
            chunk.truncate(n as usize);
            return Poll::Ready(Some(Ok(chunk)));
        }
    }
}

/// `body`, holding `slot` (e.g. an upload slot) until the stream is dropped: sent, or the
/// asker left.
pub fn holding(
    body: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> ByteStream {
    Box::pin(futures_util::StreamExt::map(body, move |piece| {
        let _held = &slot;
        piece
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn chunks(data: &'static [u8], size: usize) -> ByteStream {
        Box::pin(futures_util::stream::iter(data.chunks(size).map(|c| Ok(Bytes::from_static(c))).collect::<Vec<_>>()))
    }

    async fn drain(mut s: impl Stream<Item = io::Result<Bytes>> + Unpin) -> (Vec<u8>, Option<io::Error>) {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn verify_passes_good_content() {
        let d = Digest::compute(Algorithm::Sha256, b"hello world");
        let (out, err) = drain(Verify::new(chunks(b"hello world", 3), d, Some(11), |_, _| panic!())).await;
        assert_eq!(out, b"hello world");
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn verify_withholds_last_chunk_on_mismatch() {
        let d = Digest::compute(Algorithm::Sha256, b"hello world");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let (out, err) = drain(Verify::new(chunks(b"hello WORLD", 3), d, None, move |_, _| {
            h.fetch_add(1, Ordering::SeqCst);
        }))
        .await;
        assert!(out.len() < 11, "the whole body must never be delivered: got {}", out.len());
        assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidData);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // The same with the length known (chunks pass whole, the last byte waits).
        let d = Digest::compute(Algorithm::Sha256, b"hello world");
        let (out, err) = drain(Verify::new(chunks(b"hello WORLD", 3), d, Some(11), |_, _| {})).await;
        assert_eq!(out, b"hello WORL", "all but the last byte");
        assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn verify_checks_length() {
        let d = Digest::compute(Algorithm::Sha256, b"hello world");
        let (_, err) = drain(Verify::new(chunks(b"hello world", 3), d.clone(), Some(12), |_, _| {})).await;
        assert!(err.is_some(), "short body must fail");
        let (out, err) = drain(Verify::new(chunks(b"hello world", 3), d, Some(5), |_, _| {})).await;
        assert!(err.is_some() && out.len() <= 5, "long body must fail before overrun");
    }

    #[tokio::test]
    async fn verify_empty_blob() {
        let d = Digest::compute(Algorithm::Sha256, b"");
        let (out, err) = drain(Verify::new(chunks(b"", 1), d, Some(0), |_, _| panic!())).await;
        assert!(out.is_empty() && err.is_none());
    }

    /// Large bodies in chunks of many sizes: the same verdicts.
    #[tokio::test]
    async fn verify_large_bodies() {
        const HASH_BATCH: usize = 256 << 10;
        let big: Vec<u8> = (0..5 * HASH_BATCH + 1234).map(|i| (i * 31 + i / 997) as u8).collect();
        let big: &'static [u8] = Box::leak(big.into_boxed_slice());
        let d = Digest::compute(Algorithm::Sha256, big);
        for chunk in [1000, 64 << 10, HASH_BATCH, 3 * HASH_BATCH] {
            let (out, err) =
                drain(Verify::new(chunks(big, chunk), d.clone(), Some(big.len() as u64), |_, _| panic!())).await;
            assert!(err.is_none(), "{chunk}: {err:?}");
            assert_eq!(out, big, "{chunk}");
        }
        // One byte changed in the middle: never delivered whole, the callback runs once.
        let mut bad = big.to_vec();
        bad[2 * HASH_BATCH + 7] ^= 1;
        let bad: &'static [u8] = Box::leak(bad.into_boxed_slice());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let (out, err) = drain(Verify::new(chunks(bad, 64 << 10), d.clone(), None, move |_, _| {
            h.fetch_add(1, Ordering::SeqCst);
        }))
        .await;
        assert!(out.len() < bad.len(), "the whole body must never be delivered");
        assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidData);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Short by one byte, with the length known: fails.
        let (_, err) =
            drain(Verify::new(chunks(&big[1..], 64 << 10), d.clone(), Some(big.len() as u64), |_, _| {})).await;
        assert!(err.is_some());
        // Dropped mid-body: no hang, no panic.
        let mut s = Verify::new(chunks(big, 64 << 10), d, None, |_, _| panic!());
        for _ in 0..20 {
            s.next().await.unwrap().unwrap();
        }
        drop(s);
    }

    #[tokio::test]
    async fn exact_length() {
        let (out, err) = drain(Exact::new(chunks(b"hello world", 3), 11)).await;
        assert_eq!((out.as_slice(), err.is_none()), (&b"hello world"[..], true));
        let (out, err) = drain(Exact::new(chunks(b"hello world", 3), 12)).await;
        assert_eq!(out, b"hello world");
        assert_eq!(err.expect("short body must fail").kind(), io::ErrorKind::UnexpectedEof);
        let (out, err) = drain(Exact::new(chunks(b"hello world", 3), 5)).await;
        assert!(err.is_some() && out.len() <= 5, "long body must fail before overrun: {out:?}");
        let (out, err) = drain(Exact::new(chunks(b"", 1), 0)).await;
        assert!(out.is_empty() && err.is_none());
    }

    #[tokio::test]
    async fn slice_and_count() {
        let mut total = 0;
        let (out, _) = drain(Count::new(Box::pin(Slice::new(chunks(b"0123456789", 3), 4, 4)), |n| total += n)).await;
        assert_eq!(out, b"4567");
        assert_eq!(total, 4);
        let (out, _) = drain(Slice::new(chunks(b"0123456789", 4), 0, 100)).await;
        assert_eq!(out, b"0123456789");
    }

    #[tokio::test]
    async fn verify_holds_back_one_copied_byte_and_pieces_split() {
        let data: &'static [u8] = b"0123456789abcdefghij";
        let d = Digest::compute(Algorithm::Sha256, data);
        let mut v = Verify::new(chunks(data, 7), d, Some(20), |_, _| panic!());
        let mut got = Vec::new();
        while let Some(c) = v.next().await {
            got.push(c.unwrap());
        }
        assert_eq!(got.concat(), data);
        let last = got.last().unwrap();
        assert_eq!(&last[..], b"j", "only the last byte waits for the digest");
        // The length known, the chunks before the last pass whole (one write each downstream).
        let sizes: Vec<usize> = got.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [7, 7, 5, 1]);
        // Pieces: at most 3 bytes each, nothing lost, empty chunks skipped.
        let (out, err) = drain(Pieces::new(chunks(data, 7), 3)).await;
        assert_eq!((out.as_slice(), err.is_none()), (data, true));
        let mut p = Pieces::new(chunks(data, 7), 3);
        while let Some(c) = p.next().await {
            assert!((1..=3).contains(&c.unwrap().len()));
        }
    }

    /// The pieces of one 100-byte chunk split 32 at a time: all of them, in order, and whether
    /// each one points into the source's buffer.
    async fn split_100(views: bool) -> Vec<(Bytes, bool)> {
        let source = Bytes::from((0..100u8).collect::<Vec<u8>>());
        let range = source.as_ptr() as usize..source.as_ptr() as usize + source.len();
        let one: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(source.clone())]));
        let mut p = if views { Pieces::views(one, 32) } else { Pieces::new(one, 32) };
        let mut pieces = Vec::new();
        while let Some(c) = p.next().await {
            let c = c.unwrap();
            let inside = range.contains(&(c.as_ptr() as usize));
            pieces.push((c, inside));
        }
        assert_eq!(pieces.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>().concat(), source);
        assert_eq!(pieces.iter().map(|(c, _)| c.len()).collect::<Vec<_>>(), vec![32, 32, 32, 4]);
        pieces
    }

    /// A piece that waits for the client does not pin the source's buffer: after the first,
    /// each piece of a larger chunk is its own copy.
    #[tokio::test]
    async fn pieces_after_the_first_do_not_pin_the_source_buffer() {
        let pieces = split_100(false).await;
        assert!(pieces[0].1, "the first piece is a view");
        assert!(pieces[1..].iter().all(|(_, inside)| !inside), "a later piece is a view of the source");
    }

    /// A chunk collected whole is hashed as its pieces arrive, within its limit.
    #[tokio::test]
    async fn collect_hashed_hashes_the_pieces_and_keeps_the_limit() {
        use sha2::Digest as _;
        let data: &'static [u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let (body, sha) = collect_hashed(chunks(data, 7), 36, 36).await.unwrap();
        assert_eq!(body, data);
        assert_eq!(sha, <[u8; 32]>::from(sha2::Sha256::digest(data)));
        assert!(collect_hashed(chunks(data, 7), 35, 35).await.is_err(), "past the limit");
        // A body shorter than expected is the caller's to reject: its hash is its own.
        let (short, sha) = collect_hashed(chunks(&data[..10], 3), 36, 36).await.unwrap();
        assert_eq!((short.len(), sha), (10, <[u8; 32]>::from(sha2::Sha256::digest(&data[..10]))));
    }

    /// `Pieces::views` (a buffer of the response's own, e.g. a file read): no piece is copied.
    #[tokio::test]
    async fn views_are_not_copies() {
        assert!(split_100(true).await.iter().all(|(_, inside)| *inside), "a piece was copied");
    }
}
