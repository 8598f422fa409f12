//! A chunk arriving at this node — from a peer or from the upstream — passed on to peers that
//! ask for it while its bytes arrive (cut-through, `swarm.cut_through`).
//!
//! The receiving node keeps the pieces as they come (it needs them all to store the chunk
//! anyway) and readers get each piece as it arrives. The chunk's sha256 is known only at the
//! end (from the upstream nobody knows it before; from a peer that passes it on, it comes last
//! too), so an answer passed on ends with a sealed trailer ([`crate::peer::CHUNK_TRAILER_LEN`]
//! bytes: the sha256 and a tag over it bound to the request) that is sent only once this node
//! checked the whole chunk. A transfer that fails, or bytes that do not match, end every
//! reader's stream with an error instead of the trailer: the asker keeps nothing and asks
//! elsewhere. Each hop of a chunk through the cluster then costs the start of a transfer, not a
//! whole chunk's time, and the upstream's chunks spread while the upstream still sends them.

use crate::stream::ByteStream;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A reader waits for at least this many new bytes (a quarter of a smaller chunk), or the end,
/// before it takes them: a chunk arriving slowly comes in small pieces, and passing each on as
/// one write would cost a system call and a wake-up per few KiB (measured: a quarter more CPU in
/// the rates-÷4 cluster benchmark).
const BATCH: usize = 64 << 10;

pub struct Arrival {
    pub len: u64,
    /// Where it comes from (`peer`, `upstream`), for the metrics.
    pub from: &'static str,
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

#[derive(Default)]
struct State {
    pieces: Vec<Bytes>,
    /// `Some(Ok(sha))`: every byte arrived and hashes to `sha`; `Some(Err(()))`: it failed.
    end: Option<Result<[u8; 32], ()>>,
}

impl Arrival {
    pub fn new(len: u64, from: &'static str) -> Arc<Arrival> {
        Arc::new(Arrival { len, from, state: Mutex::new(State::default()), changed: watch::channel(()).0 })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Another piece arrived.
    pub fn push(&self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        self.lock().pieces.push(piece);
        self.changed.send_replace(());
    }

    fn end(&self, end: Result<[u8; 32], ()>) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(end);
            drop(s);
            self.changed.send_replace(());
        }
    }

    /// Every byte arrived and was checked: it hashes to `sha`. The first end counts.
    pub fn verified(&self, sha: [u8; 32]) {
        self.end(Ok(sha));
    }

    /// The sha256 of the chunk, once it arrived whole and checked.
    pub fn sha(&self) -> Option<[u8; 32]> {
        self.lock().end.and_then(Result::ok)
    }

    /// Ends the transfer as failed when dropped before it was verified (a fetch that failed,
    /// was cancelled or got wrong bytes leaves no reader waiting).
    pub fn guard(self: &Arc<Self>) -> Guard {
        Guard(self.clone())
    }

    /// Every piece, as one buffer (one copy; none for a single piece).
    pub fn joined(&self) -> Bytes {
        join(&self.lock().pieces)
    }

    /// The chunk's bytes as they arrive: a reader wakes when [`BATCH`] bytes or more are new
    /// (or at the end) and then takes the new pieces one after another as they came, without
    /// joining them (a join would copy every byte passed on once more); the stream ends once
    /// the chunk was verified (then [`Self::sha`] is known), or with an error when its transfer
    /// failed.
    pub fn stream(self: Arc<Self>) -> ByteStream {
        let rx = self.changed.subscribe();
        let ready: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
        Box::pin(futures_util::stream::unfold(Some((self, rx, 0usize, ready)), |state| async move {
            let (a, mut rx, mut k, mut ready) = state?;
            loop {
                if let Some(p) = ready.pop_front() {
                    return Some((Ok(p), Some((a, rx, k, ready))));
                }
                let next = {
                    let s = a.lock();
                    let new = s.pieces.get(k..).unwrap_or_default();
                    let bytes = new.iter().map(Bytes::len).sum::<usize>();
                    match s.end {
                        Some(Err(())) => Some(Err(std::io::Error::other("the chunk's transfer here failed"))),
                        Some(Ok(_)) if new.is_empty() => return None,
                        None if bytes < BATCH.min(a.len as usize / 4) => None,
                        _ => Some(Ok(new.to_vec())),
                    }
                };
                match next {
                    Some(Ok(pieces)) => {
                        k += pieces.len();
                        ready.extend(pieces);
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    // The sender lives in `a`, which this stream holds: never closed here.
                    None => {
                        let _ = rx.changed().await;
                    }
                }
            }
        }))
    }
}

/// `pieces` as one buffer (one copy; none for a single piece).
fn join(pieces: &[Bytes]) -> Bytes {
    if let [one] = pieces {
        return one.clone();
    }
    let mut buf = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for p in pieces {
        buf.extend_from_slice(p);
    }
    buf.freeze()
}

pub struct Guard(Arc<Arrival>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.end(Err(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn piece(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    #[tokio::test]
    async fn readers_get_the_bytes_as_they_arrive_in_batches_and_end_once_the_chunk_was_verified() {
        let (big, small) = (BATCH, BATCH / 4);
        let a = Arrival::new(4 * BATCH as u64, "peer");
        a.push(piece(1, big));
        let mut r = a.clone().stream();
        assert_eq!(r.next().await.unwrap().unwrap(), piece(1, big), "a batch's worth at once");
        a.push(piece(2, small));
        a.push(piece(3, small));
        let wait = std::time::Duration::from_millis(50);
        assert!(tokio::time::timeout(wait, r.next()).await.is_err(), "less than a batch waits for more");
        a.push(piece(4, small));
        a.push(piece(5, small));
        // A batch is there: its pieces come one after another, as they arrived (not joined).
        for n in 2..=5 {
            let got = futures_util::FutureExt::now_or_never(r.next()).expect("ready at once").unwrap().unwrap();
            assert_eq!(got, piece(n, small));
        }
        assert!(tokio::time::timeout(wait, r.next()).await.is_err(), "the stream waits for the check");
        assert_eq!(a.sha(), None);
        a.verified([7; 32]);
        assert!(r.next().await.is_none());
        assert_eq!(a.sha(), Some([7; 32]));
        // A reader that comes after the end gets everything, the rest below a batch included.
        let all = crate::stream::collect(a.clone().stream(), u64::MAX).await.unwrap();
        assert_eq!(all, a.joined());
        assert_eq!(all.len(), big + 4 * small);
    }

    #[tokio::test]
    async fn a_failed_transfer_ends_its_readers_with_an_error() {
        let a = Arrival::new(20 + BATCH as u64, "peer");
        let mut r = a.clone().stream();
        a.push(piece(1, BATCH));
        a.push(piece(2, 10));
        assert_eq!(r.next().await.unwrap().unwrap(), piece(1, BATCH));
        assert_eq!(r.next().await.unwrap().unwrap(), piece(2, 10));
        // Dropping the receiver's guard is a failure (a cancelled fetch, bytes that did not match).
        drop(a.guard());
        assert!(r.next().await.unwrap().is_err());
        assert!(r.next().await.is_none(), "nothing after the error");
        // The first end counts.
        a.verified([7; 32]);
        assert_eq!(a.sha(), None);
        assert!(crate::stream::collect(a.clone().stream(), 20).await.is_err());
    }
}
