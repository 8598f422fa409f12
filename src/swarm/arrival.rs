//! A chunk arriving from a peer, passed on to peers that ask for it while its bytes arrive
//! (cut-through, `swarm.cut_through`).
//!
//! The receiving node keeps the pieces as they come (it needs them all to store the chunk
//! anyway); readers get every byte as it arrives but the chunk's last one, which only follows
//! once the whole chunk matched the sha256 its sender claimed (as [`crate::stream::Verify`] does
//! for a blob). So a reader never gets a complete chunk that does not match: when the transfer
//! fails or the bytes do not match, every reader's stream ends with an error before its last
//! byte, and the asker goes elsewhere. Each hop of a chunk through the cluster then costs the
//! start of a transfer, not a whole chunk's time.

use crate::stream::ByteStream;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub struct Arrival {
    /// The sha256 the sending peer claimed for the chunk (its answer is signed); what this node
    /// checks the bytes against, and what a forwarded answer claims in turn.
    pub sha: [u8; 32],
    pub len: u64,
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

#[derive(Default)]
struct State {
    pieces: Vec<Bytes>,
    /// `Some(true)`: every byte arrived and matched; `Some(false)`: the transfer failed.
    end: Option<bool>,
}

impl Arrival {
    pub fn new(sha: [u8; 32], len: u64) -> Arc<Arrival> {
        Arc::new(Arrival { sha, len, state: Mutex::new(State::default()), changed: watch::channel(()).0 })
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

    /// The transfer ended: `ok` when every byte arrived and matched [`Self::sha`]. The first
    /// end counts.
    pub fn end(&self, ok: bool) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(ok);
            drop(s);
            self.changed.send_replace(());
        }
    }

    /// Ends the transfer as failed when dropped before it ended (a fetch that was cancelled or
    /// returned early leaves no reader waiting).
    pub fn guard(self: &Arc<Self>) -> Guard {
        Guard(self.clone())
    }

    /// Every piece, as one buffer (one copy; none for a single piece).
    pub fn joined(&self) -> Bytes {
        let s = self.lock();
        if let [one] = s.pieces.as_slice() {
            return one.clone();
        }
        let mut buf = BytesMut::with_capacity(s.pieces.iter().map(Bytes::len).sum());
        for p in &s.pieces {
            buf.extend_from_slice(p);
        }
        buf.freeze()
    }

    /// The chunk as it arrives (see the module's note on the last byte).
    pub fn stream(self: Arc<Self>) -> ByteStream {
        let rx = self.changed.subscribe();
        // Where the reader is: piece `k`, `skip` bytes of it sent, `start` its offset in the chunk.
        let at = Reader { k: 0, skip: 0, start: 0 };
        Box::pin(futures_util::stream::unfold(Some((self, rx, at)), |state| async move {
            let (a, mut rx, mut at) = state?;
            loop {
                let next = {
                    let s = a.lock();
                    match (s.pieces.get(at.k), s.end) {
                        (_, Some(false)) => {
                            Some(Err(std::io::Error::other("the chunk's transfer from its peer failed")))
                        }
                        (None, Some(true)) => return None,
                        (None, None) => None,
                        (Some(p), end) => {
                            // The chunk's last byte waits for the check.
                            let last = at.start + p.len() as u64 == a.len;
                            let upto = if last && end.is_none() { p.len() - 1 } else { p.len() };
                            (at.skip < upto).then(|| Ok(p.slice(at.skip..upto)))
                        }
                    }
                };
                match next {
                    Some(Ok(piece)) => {
                        at.skip += piece.len();
                        let len = a.lock().pieces[at.k].len();
                        if at.skip == len {
                            at = Reader { k: at.k + 1, skip: 0, start: at.start + len as u64 };
                        }
                        return Some((Ok(piece), Some((a, rx, at))));
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

struct Reader {
    k: usize,
    skip: usize,
    start: u64,
}

pub struct Guard(Arc<Arrival>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.end(false);
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
    async fn readers_get_every_byte_as_it_arrives_but_the_last_until_the_chunk_checked_out() {
        let a = Arrival::new([0; 32], 30);
        a.push(piece(1, 10));
        let mut r = a.clone().stream();
        assert_eq!(r.next().await.unwrap().unwrap(), piece(1, 10));
        a.push(piece(2, 10));
        assert_eq!(r.next().await.unwrap().unwrap(), piece(2, 10));
        a.push(piece(3, 10));
        assert_eq!(r.next().await.unwrap().unwrap(), piece(3, 9), "all of the last piece but its last byte");
        let last = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(last.is_err(), "the chunk's last byte waits for the check");
        a.end(true);
        assert_eq!(r.next().await.unwrap().unwrap(), piece(3, 1));
        assert!(r.next().await.is_none());
        assert_eq!(a.joined().len(), 30);
        // A reader that comes after the end gets everything at once.
        let all = crate::stream::collect(a.clone().stream(), 30).await.unwrap();
        assert_eq!(all, a.joined());
    }

    #[tokio::test]
    async fn a_failed_transfer_ends_its_readers_with_an_error_before_the_last_byte() {
        let a = Arrival::new([0; 32], 20);
        let mut r = a.clone().stream();
        a.push(piece(1, 10));
        a.push(piece(2, 10));
        assert_eq!(r.next().await.unwrap().unwrap(), piece(1, 10));
        assert_eq!(r.next().await.unwrap().unwrap(), piece(2, 9));
        // Dropping the receiver's guard is a failure (a cancelled fetch, bytes that did not match).
        drop(a.guard());
        assert!(r.next().await.unwrap().is_err());
        assert!(r.next().await.is_none(), "nothing after the error");
        // The first end counts.
        a.end(true);
        assert!(crate::stream::collect(a.clone().stream(), 20).await.is_err());
    }
}
