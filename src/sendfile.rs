//! Zero-copy sends: a blob body read from a file on this node (containerd's content files) goes
//! from the page cache to the client's socket with `sendfile(2)` instead of through userspace
//! (read into a buffer, copied into actix's write buffer, copied into the socket).
//!
//! actix-web owns the socket and frames the body, so this works beside it, in three parts:
//! - [`Conn`], the I/O object actix's HTTP/1 dispatcher reads and writes (instead of the bare
//!   `TcpStream`). It shares the socket with the connection's [`Sink`] and records whether the
//!   last write actix asked for took all it was given — i.e. whether actix's write buffer is
//!   empty.
//! - [`Outgoing`], owned by the response's outermost body (`http::Timed`), writes the body's
//!   chunks to the socket itself while that buffer is empty, and for answers marked [`Direct`]
//!   polls the body chain inside [`scope`] then, never otherwise: the head actix wrote first, or
//!   a piece of body passed on through actix, must reach the socket before any direct send.
//! - A [`crate::store::file`] stream polled inside [`scope`], holding the next bytes in the page
//!   cache, sends them itself ([`send`]) and yields a *stand-in* of that many bytes instead (a view
//!   of a static zero buffer, so the byte counters on the way count them). The outermost body
//!   checks that every stand-in matches what was sent ([`Sink::take_sent`]) and hands actix an
//!   empty chunk. A layer between them that read, kept or copied a stand-in would break that
//!   match: the response then ends with an error (the connection is cut) — never with zeros. Only
//!   answers whose chain passes bytes through unchanged are marked [`Direct`].
//!
//! The body is framed by its `Content-Length` (actix's "no chunking" mode), which passes body
//! bytes through uncounted, so an empty chunk in place of the bytes sent is correct framing.
//! What is not in the page cache is not sent this way (`sendfile` would block this thread on the
//! disk): the stream reads it as before, off this thread, and sends it through actix.
//!
//! No `unsafe`: `rustix::fs::sendfile` and tokio's readiness API are safe.

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes one `sendfile` call is asked for (and the largest stand-in): one piece, the most
/// the layers on the way pass on unchanged (larger chunks are cut into pieces of their own).
pub const WINDOW: usize = crate::stream::MAX_PIECE;
static STAND_IN: [u8; WINDOW] = [0; WINDOW];

/// Body bytes sent on this node's connections without actix's write buffer, by `how`:
/// `sendfile` (from the page cache) or `write` (from memory).
pub const DIRECT_BYTES: &str = "peerd_direct_sent_bytes_total";

/// Describe this module's metrics (called once when the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        DIRECT_BYTES,
        "Body bytes sent to the socket directly, by how: sendfile (from the page cache, no userspace copy) or write (no copy into actix's buffer)"
    );
}

/// Marks a response whose body chain passes bytes through unchanged from a file stream to the
/// outermost body (a response extension): only those are polled inside [`scope`].
#[derive(Clone, Copy, Debug)]
pub struct Direct;

/// A connection's side of direct sends, shared by its [`Conn`] and the bodies answering on it
/// (actix connection data).
#[derive(Debug)]
pub struct Sink {
    tcp: Weak<TcpStream>,
    /// actix's write buffer is empty: the last write it asked for took everything it was given
    /// and nothing was queued since ([`Sink::queued`]).
    flushed: AtomicBool,
    /// Bytes sent directly and not yet matched by their stand-in at the outermost body.
    unreported: AtomicU64,
}

impl Sink {
    /// Nothing may be sent directly until actix has written what it just queued (a response's
    /// head, a piece of body passed on through it).
    pub fn queued(&self) {
        self.flushed.store(false, Ordering::Relaxed);
    }

    /// actix has no bytes of its own waiting for this socket.
    pub fn flushed(&self) -> bool {
        self.flushed.load(Ordering::Relaxed)
    }

    /// A stand-in of `n` bytes reached the outermost body: `true` if at least `n` bytes sent are
    /// not accounted for yet (they are now).
    pub fn take_sent(&self, n: u64) -> bool {
        self.unreported.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(n)).is_ok()
    }

    /// Bytes sent that no stand-in has accounted for yet.
    pub fn unreported(&self) -> u64 {
        self.unreported.load(Ordering::Relaxed)
    }
}

/// The socket actix's dispatcher reads and writes (see the module docs).
pub struct Conn {
    tcp: Arc<TcpStream>,
    sink: Arc<Sink>,
}

impl Conn {
    pub fn new(tcp: TcpStream) -> Self {
        let tcp = Arc::new(tcp);
        let sink =
            Arc::new(Sink { tcp: Arc::downgrade(&tcp), flushed: AtomicBool::new(true), unreported: AtomicU64::new(0) });
        Self { tcp, sink }
    }

    pub fn sink(&self) -> Arc<Sink> {
        self.sink.clone()
    }
}

/// One write of `buf` to `tcp` once it has room: the bytes it took.
fn poll_write_some(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Not flushed until a write takes all it is given: actix then has nothing left over.
        self.sink.queued();
        let n = ready!(poll_write_some(&self.tcp, cx, buf))?;
        if n == buf.len() {
            self.sink.flushed.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// Bodies shorter than this are left to actix: it writes the head and a small body in one
/// `write`, where a direct send would take two.
pub const MIN_DIRECT: u64 = 16 << 10;
/// Bytes one body writes directly before it lets the connection's task yield (the dispatcher
/// keeps polling a body that keeps yielding chunks).
const YIELD_AFTER: u64 = 4 << 20;

type Item = Option<Result<Bytes, Box<dyn std::error::Error>>>;

/// The sending side of one response body that is written to the socket directly, owned by the
/// outermost body (see the module docs). Its chunks are written to the socket as they come,
/// while actix has nothing of its own waiting (actix gets an empty chunk for each), saving the
/// copy into actix's write buffer; with `files` (the answer is marked [`Direct`]), file streams
/// in the chain may `sendfile` too.
pub struct Outgoing {
    sink: Arc<Sink>,
    files: bool,
    /// The first poll went by (actix writes the head then).
    head_out: bool,
    /// What is left of the last chunk, being written.
    tail: Bytes,
    /// The body's length (its Content-Length).
    len: u64,
    /// Body bytes gone so far (written here, sent by a file stream or handed to actix).
    done: u64,
    /// Bytes written since the task last yielded.
    run: u64,
}

impl Outgoing {
    /// For a body of `len` bytes framed by its Content-Length, on the connection of `sink`.
    pub fn new(sink: Arc<Sink>, files: bool, len: u64) -> Self {
        Self { sink, files, head_out: false, tail: Bytes::new(), len, done: 0, run: 0 }
    }

    /// Body bytes gone so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The next chunk for actix (empty when this wrote it, or a file stream sent it): `body`
    /// polled, its chunks written while actix's buffer is empty, every stand-in matched against
    /// the bytes sent and the length checked against the Content-Length (actix does not count a
    /// body framed that way: bytes past it would be read as the next response).
    pub fn poll(&mut self, body: Pin<&mut actix_web::body::BoxBody>, cx: &mut Context<'_>) -> Poll<Item> {
        use actix_web::body::MessageBody;
        if !self.head_out {
            // actix has just queued the head: let it write it before anything goes beside it.
            self.head_out = true;
            self.sink.queued();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.run >= YIELD_AFTER {
            self.run = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !self.tail.is_empty() {
            return self.write_tail(cx);
        }
        let polled = if self.files && self.sink.flushed() {
            scope(self.sink.clone(), || body.poll_next(cx))
        } else {
            body.poll_next(cx)
        };
        let fail = |why: String| Poll::Ready(Some(Err(why.into())));
        match polled {
            Poll::Pending => {
                self.run = 0;
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(b))) if is_stand_in(&b) => {
                let n = b.len() as u64;
                if !self.sink.take_sent(n) {
                    return fail(format!("a stand-in of {n} bytes came, {} sent", self.sink.unreported()));
                }
                if let Err(why) = self.count(n) {
                    return fail(why);
                }
                Poll::Ready(Some(Ok(Bytes::new())))
            }
            _ if self.sink.unreported() > 0 => {
                fail(format!("{} bytes sent directly came with no stand-in", self.sink.unreported()))
            }
            Poll::Ready(None) if self.done != self.len => {
                fail(format!("the body ended after {} of its {} bytes", self.done, self.len))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(b))) => {
                if let Err(why) = self.count(b.len() as u64) {
                    return fail(why);
                }
                if b.is_empty() {
                    Poll::Ready(Some(Ok(b)))
                } else if self.sink.flushed() {
                    self.tail = b;
                    self.write_tail(cx)
                } else {
                    // actix has bytes of its own waiting (a head it could not write at once):
                    // this chunk goes after them, through actix.
                    self.sink.queued();
                    Poll::Ready(Some(Ok(b)))
                }
            }
        }
    }

    /// `n` more body bytes, within the length.
    fn count(&mut self, n: u64) -> Result<(), String> {
        self.done += n;
        self.run += n;
        if self.done > self.len {
            return Err(format!("the body runs past its {} byte length", self.len));
        }
        Ok(())
    }

    /// Write the tail; an empty chunk for actix once it is all written.
    fn write_tail(&mut self, cx: &mut Context<'_>) -> Poll<Item> {
        let Some(tcp) = self.sink.tcp.upgrade() else {
            return Poll::Ready(Some(Err("the connection is gone".into())));
        };
        while !self.tail.is_empty() {
            match ready!(poll_write_some(&tcp, cx, &self.tail)) {
                Ok(n) => {
                    metrics::counter!(DIRECT_BYTES, "how" => "write").increment(n as u64);
                    bytes::Buf::advance(&mut self.tail, n);
                }
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
        Poll::Ready(Some(Ok(Bytes::new())))
    }
}

tokio::task_local! {
    static CURRENT: Arc<Sink>;
}

/// Poll a body chain (`f`) with `sink` taking direct sends (see the module docs).
fn scope<R>(sink: Arc<Sink>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(sink, f)
}

/// `true` for a stand-in (or a piece of one): a chunk that stands for bytes already sent.
fn is_stand_in(b: &Bytes) -> bool {
    !b.is_empty() && STAND_IN.as_ptr_range().contains(&b.as_ptr())
}

/// Send up to `len` (> 0) bytes of `file` from `pos` on the connection being answered. `None`
/// when there is no such connection (not inside [`scope`], the connection gone) or the page
/// cache does not hold those bytes: read them instead. `Some(Ready(Ok(stand-in)))` when some
/// were sent, `Some(Ready(Ok(empty)))` when the file ended first, `Some(Pending)` when the socket
/// is full (the task is woken when it takes more).
pub fn send(file: &File, pos: u64, len: u64, cx: &mut Context<'_>) -> Option<Poll<io::Result<Bytes>>> {
    let sink = CURRENT.try_with(Arc::clone).ok()?;
    let tcp = sink.tcp.upgrade()?;
    let n = len.min(WINDOW as u64) as usize;
    if n == 0 || !cached(file, pos, n) {
        return None;
    }
    loop {
        let mut at = pos;
        let sent = tcp.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(&*tcp, file, Some(&mut at), n).map_err(io::Error::from)
        });
        match sent {
            Ok(k) => {
                sink.unreported.fetch_add(k as u64, Ordering::Relaxed);
                metrics::counter!(DIRECT_BYTES, "how" => "sendfile").increment(k as u64);
                return Some(Poll::Ready(Ok(Bytes::from_static(&STAND_IN[..k]))));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match tcp.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Poll::Ready(Err(e))),
        }
    }
}

/// Whether the page cache holds the first and the last byte of `file[pos..pos + n]` (a read
/// that would wait for the disk fails at once with `RWF_NOWAIT`). The pages between are almost
/// always there too (the kernel reads ahead); one that is not costs this thread one disk read.
fn cached(file: &File, pos: u64, n: usize) -> bool {
    let probe = |at: u64| {
        let mut b = [0u8; 1];
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        matches!(rustix::io::preadv2(file, &mut [io::IoSliceMut::new(&mut b)], at, flags), Ok(1))
    };
    probe(pos) && (n == 1 || probe(pos + n as u64 - 1))
}

#[cfg(test)]
mod tests {
    //! The real server ([`crate::http::server::serve`]) with the observe middleware, a real file
    //! and a raw socket client: what goes on the wire.
    use super::*;
    use crate::http::server::{serve, Settings};
    use actix_web::middleware::from_fn;
    use actix_web::{web, App, HttpResponse};
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    const SIZE: usize = 3 << 20;

    /// What the test's routes serve and saw.
    struct Served {
        file: std::path::PathBuf,
        /// Stand-in bytes that passed the counting layer (sent directly).
        stand_ins: AtomicU64,
    }

    /// `/file`: the file as the mirror sends a local blob (marked `Direct`, counted on the way);
    /// `?copy`: with a layer that copies what it passes on (the stand-ins must not reach the
    /// client as zeros); `/small`: a body actix writes itself.
    async fn file(req: actix_web::HttpRequest, served: web::Data<Served>) -> HttpResponse {
        let f = File::open(&served.file).unwrap();
        let stream = crate::store::file::stream(f, served.file.clone(), 0, SIZE as u64);
        let s = served.clone();
        let mut body: crate::stream::ByteStream = Box::pin(crate::stream::Count::new(stream, |_| {}));
        body = Box::pin(futures_util::StreamExt::inspect(body, move |c| {
            if let Ok(b) = c {
                if is_stand_in(b) {
                    s.stand_ins.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }
        }));
        if req.query_string() == "copy" {
            body = Box::pin(futures_util::StreamExt::map(body, |c| c.map(|b| Bytes::copy_from_slice(&b))));
        }
        let mut res = HttpResponse::Ok();
        res.extensions_mut().insert(Direct);
        res.no_chunking(SIZE as u64).streaming(body)
    }

    /// A content body from memory (`/v2/<name>/blobs/...` is a transfer): `mem` is the file's
    /// bytes in 100 KiB chunks; `plain` is them in one sized body without a Content-Length
    /// header (actix would frame it itself); `long` claims a Content-Length of `SIZE / 2` and
    /// runs past it.
    async fn memory(req: actix_web::HttpRequest, served: web::Data<Served>) -> HttpResponse {
        let data = Bytes::from(std::fs::read(&served.file).unwrap());
        if req.path().ends_with("/plain") {
            return HttpResponse::Ok().body(data);
        }
        let chunks: Vec<io::Result<Bytes>> = (0..data.len())
            .step_by(100 << 10)
            .map(|at| Ok(data.slice(at..(at + (100 << 10)).min(data.len()))))
            .collect();
        let len = if req.path().ends_with("/long") { SIZE as u64 / 2 } else { SIZE as u64 };
        HttpResponse::Ok().no_chunking(len).streaming(futures_util::stream::iter(chunks))
    }

    fn start(dir: &std::path::Path) -> (std::net::SocketAddr, web::Data<Served>, actix_server::ServerHandle) {
        let path = dir.join("blob");
        // No zero bytes: a stand-in sent as itself would show.
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &data).unwrap();
        let served = web::Data::new(Served { file: path, stand_ins: AtomicU64::new(0) });
        let lst = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = lst.local_addr().unwrap();
        let settings = Settings {
            workers: 1,
            max_connections: 16,
            shutdown_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(10),
        };
        let s = served.clone();
        let server = serve("test", vec![lst], settings, move || {
            App::new()
                .app_data(s.clone())
                .wrap(from_fn(crate::http::observe))
                .route("/file", web::get().to(file))
                .route("/v2/t/blobs/{what}", web::get().to(memory))
                .route("/small", web::get().to(|| async { HttpResponse::Ok().body("small") }))
        })
        .unwrap();
        let handle = server.handle();
        actix_rt::spawn(server);
        (addr, served, handle)
    }

    /// One HTTP/1.1 response from `r`: status and body (framed by Content-Length); `None` when
    /// the connection ends before the whole body.
    fn response(r: &mut impl Read) -> Option<(u16, Vec<u8>)> {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if r.read(&mut b).ok()? == 0 {
                return None;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .unwrap();
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            // Small, slow reads for large bodies: the server's socket fills and waits.
            let n = r.read(&mut body[got..(got + 64 * 1024).min(len)]).ok()?;
            if n == 0 {
                return None;
            }
            got += n;
            if len > 1 << 20 && got % (512 << 10) < 64 << 10 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Some((status, body))
    }

    /// Send `request` on a new connection and read until the server closes it (blocking).
    async fn exchange(addr: std::net::SocketAddr, request: &'static [u8]) -> Vec<u8> {
        tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.write_all(request).unwrap();
            let mut all = Vec::new();
            let _ = c.read_to_end(&mut all);
            all
        })
        .await
        .unwrap()
    }

    /// The bytes after the first response's head.
    fn first_body(raw: &[u8]) -> &[u8] {
        &raw[raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4..]
    }

    /// Pipelined requests on one connection, direct and not: every response whole and in order
    /// (a direct send overtaking a head actix had not written yet would garble them), and the
    /// file's bytes were sent directly.
    #[actix_rt::test]
    async fn direct_sends_keep_responses_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, served, handle) = start(dir.path());
        let want = std::fs::read(dir.path().join("blob")).unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let req = |p: &str| format!("GET {p} HTTP/1.1\r\nhost: x\r\n\r\n");
            let all = [
                req("/file"),
                req("/small"),
                req("/file"),
                req("/nothing"),
                req("/v2/t/blobs/mem"),
                req("/small"),
                req("/file"),
                req("/v2/t/blobs/mem"),
                req("/v2/t/blobs/plain"),
                req("/small"),
            ]
            .concat();
            c.write_all(all.as_bytes()).unwrap();
            (0..10).map(|i| response(&mut c).unwrap_or_else(|| panic!("response {i} cut short"))).collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses, [200, 200, 200, 404, 200, 200, 200, 200, 200, 200]);
        assert_eq!(got[9].1, b"small");
        for i in [0, 2, 4, 6, 7, 8] {
            assert!(got[i].1 == want, "response {i}: the file's bytes");
        }
        assert_eq!(got[1].1, b"small");
        assert_eq!(got[5].1, b"small");
        let direct = served.stand_ins.load(Ordering::Relaxed);
        assert!(direct > 2 * SIZE as u64, "most of the three bodies went directly: {direct} bytes");
        handle.stop(false).await;
    }

    /// A body that runs past its Content-Length (actix does not count a body written directly):
    /// cut at the length, and the connection closed, so no byte of it is read as the next
    /// response.
    #[actix_rt::test]
    async fn a_body_past_its_length_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _, handle) = start(dir.path());
        let got =
            exchange(addr, b"GET /v2/t/blobs/long HTTP/1.1\r\nhost: x\r\n\r\nGET /small HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
        let body = first_body(&got);
        assert!(body.len() <= SIZE / 2, "no more than the length: {} bytes", body.len());
        assert!(!body.windows(8).any(|w| w == b"HTTP/1.1"), "no second response after it");
        handle.stop(false).await;
    }

    /// A layer that copies what it passes on (so a stand-in would reach the client as zeros):
    /// the response is cut short, never completed with wrong bytes.
    #[actix_rt::test]
    async fn a_stand_in_that_was_copied_cuts_the_response() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, served, handle) = start(dir.path());
        let want = std::fs::read(dir.path().join("blob")).unwrap();
        let got = exchange(addr, b"GET /file?copy HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let body = first_body(&got);
        assert!(body.len() < SIZE, "cut short: {} of {SIZE} bytes", body.len());
        assert!(want.starts_with(body), "what was sent is the file's bytes");
        assert!(served.stand_ins.load(Ordering::Relaxed) > 0, "a direct send happened");
        handle.stop(false).await;
    }
}
