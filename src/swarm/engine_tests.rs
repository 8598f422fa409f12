//! Three in-process nodes (real `/swarm` HTTP endpoints on loopback, in-memory DHT, one
//! in-memory upstream each so every node's upstream reads are counted apart): coalescing,
//! sharing, takeover from a stalled owner, and a dead peer.

use super::*;
use crate::actors::peers::PeerSelector;
use crate::actors::upstream::{Breaker, Gate};
use crate::config::{Config, SwarmConfig};
use crate::oci::{parse_ns, Algorithm};
use crate::routing::memory::{MemoryNetwork, MemoryRouter};
use crate::routing::Peer;
use crate::upstream::memory::MemoryUpstream;
use crate::upstream::{Kind, Upstream, UpstreamError, UpstreamResponse};
use actix::Actor;
use actix_web::{web, App, HttpServer};
use std::time::Duration;

const CHUNK: u64 = 64 << 10;

fn cfg() -> SwarmConfig {
    let mut c = Config::load(None, Vec::<(String, String)>::new(), Vec::new()).unwrap().swarm;
    c.chunk_size = CHUNK;
    c.max_chunk_size = CHUNK;
    c.gather = Duration::from_millis(100);
    c.refresh = Duration::from_millis(100);
    c.takeover = Duration::from_millis(800);
    c.linger = Duration::from_secs(2);
    c
}

/// An upstream whose ranged reads never answer (an owner stuck on its upstream).
struct Stalled(MemoryUpstream);

#[async_trait::async_trait]
impl Upstream for Stalled {
    async fn fetch(&self, req: crate::upstream::UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        if req.range.is_some() {
            std::future::pending::<()>().await;
        }
        self.0.fetch(req).await
    }
}

/// An upstream whose ranged reads send the first half of the range at once and the rest after
/// a pause (an upstream still sending a chunk).
struct Trickle(Arc<MemoryUpstream>, Duration);

#[async_trait::async_trait]
impl Upstream for Trickle {
    async fn fetch(&self, req: crate::upstream::UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let ranged = req.range.is_some();
        let mut resp = self.0.fetch(req).await?;
        if ranged {
            let all = crate::stream::collect(resp.body, u64::MAX)
                .await
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            let (first, rest) = (all.slice(..all.len() / 2), all.slice(all.len() / 2..));
            let pause = self.1;
            resp.body = Box::pin(futures_util::StreamExt::chain(
                futures_util::stream::once(async move { Ok(first) }),
                futures_util::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Ok(rest)
                }),
            ));
        }
        Ok(resp)
    }
}

/// How a test node's upstream behaves.
enum Up {
    Normal,
    /// Ranged reads never answer.
    Stalled,
    /// Ranged reads send half, then the rest after this long.
    Trickle(Duration),
}

struct Node {
    sw: Arc<Swarming>,
    up: Arc<MemoryUpstream>,
    addr: std::net::SocketAddr,
    server: actix_web::dev::ServerHandle,
    _dir: tempfile::TempDir,
}

/// Serve `routes` on `listener` (one worker) until the returned handle stops it.
fn serve(
    listener: std::net::TcpListener,
    routes: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> actix_web::dev::ServerHandle {
    let server = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    handle
}

fn request(digest: &Digest) -> UpstreamRequest {
    UpstreamRequest {
        registry: parse_ns(Some("example.com"), "").unwrap(),
        repository: "app".into(),
        kind: Kind::Blob,
        reference: digest.to_string(),
        head: false,
        accept: None,
        authorization: None,
        range: None,
    }
}

fn bytes_of(up: &MemoryUpstream) -> u64 {
    up.body_bytes.load(Ordering::SeqCst)
}

async fn node(net: &Arc<MemoryNetwork>, name: &str, blob: &Bytes, digest: &Digest, kind: Up) -> Node {
    node_cfg(net, name, blob, digest, kind, cfg()).await
}

async fn node_cfg(
    net: &Arc<MemoryNetwork>,
    name: &str,
    blob: &Bytes,
    digest: &Digest,
    kind: Up,
    swarm: SwarmConfig,
) -> Node {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let me = Peer { id: name.into(), addr: listener.local_addr().unwrap() };
    let router: Arc<dyn Router> = Arc::new(MemoryRouter::new(net.clone(), me.clone()));
    let up = Arc::new(MemoryUpstream::default());
    up.put("example.com", "app", Kind::Blob, &digest.to_string(), "application/octet-stream", blob.clone());
    let stalled = matches!(kind, Up::Stalled);
    let upstream: Arc<dyn Upstream> = match kind {
        Up::Normal => up.clone(),
        Up::Stalled => Arc::new(Stalled(MemoryUpstream::default())),
        Up::Trickle(pause) => Arc::new(Trickle(up.clone(), pause)),
    };
    if stalled {
        // The stalled node's own reads are not counted: it never gets any bytes.
        up.body_bytes.store(0, Ordering::SeqCst);
    }
    let gate = Gate::start(upstream, &[], Breaker::new(100, Duration::from_secs(1)));
    let fetch = PeerSelector::new(router.clone(), Duration::from_millis(50), 3, None).start();
    let client =
        Arc::new(PeerClient::new(Duration::from_millis(500), Duration::from_secs(5), None, name.into()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let uploads = Arc::new(tokio::sync::Semaphore::new(swarm.upload_slots));
    let peers = SwarmPeers { router, client, me: name.into(), active: fetch.recipient(), uploads };
    let sw = Swarming::new(swarm, dir.path().join("spool"), gate, Some(peers)).unwrap();
    let data = web::Data::new(sw.clone());
    let server = serve(listener, move |c| {
        c.app_data(data.clone());
        crate::http::swarm::configure(c);
    });
    Node { sw, up, addr: me.addr, server, _dir: dir }
}

fn blob(len: usize) -> (Bytes, Digest) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let d = Digest::compute(Algorithm::Sha256, &data);
    (Bytes::from(data), d)
}

async fn read_all(dl: Arc<Download>) -> Result<Bytes, std::io::Error> {
    let size = dl.size;
    tokio::time::timeout(Duration::from_secs(30), crate::stream::collect(dl.body(0, size - 1, true), size + 1))
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

#[actix_rt::test]
async fn three_nodes_fetch_each_chunk_once_and_share() {
    let net = Arc::new(MemoryNetwork::default());
    let (data, digest) = blob((40 * CHUNK + 123) as usize);
    let nodes = [
        node(&net, "a", &data, &digest, Up::Normal).await,
        node(&net, "b", &data, &digest, Up::Normal).await,
        node(&net, "c", &data, &digest, Up::Normal).await,
    ];
    let dls: Vec<Arc<Download>> =
        nodes.iter().map(|n| n.sw.join(&digest, data.len() as u64, request(&digest)).unwrap()).collect();
    // Single flight within a node: joining again gives the same download.
    let again = nodes[0].sw.join(&digest, data.len() as u64, request(&digest)).unwrap();
    assert!(Arc::ptr_eq(&again, &dls[0]));
    // A node that cannot ask the upstream learns the size from the others' status pages (once
    // their announcements are out).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(nodes[1].sw.size_from_peers(&digest).await, Some(data.len() as u64));
    let unknown = Digest::compute(Algorithm::Sha256, b"nobody downloads this");
    assert_eq!(nodes[1].sw.size_from_peers(&unknown).await, None);
    for dl in dls {
        assert_eq!(read_all(dl).await.unwrap(), data);
    }
    let per_node: Vec<u64> = nodes.iter().map(|n| bytes_of(&n.up)).collect();
    let total: u64 = per_node.iter().sum();
    assert!(total as f64 <= 1.1 * data.len() as f64, "upstream sent {total} for {} ({per_node:?})", data.len());
    assert!(per_node.iter().all(|b| *b > 0), "every node fetched its share: {per_node:?}");
    for n in &nodes {
        n.server.stop(false).await;
    }
}

#[actix_rt::test]
async fn a_stalled_owner_and_a_dead_peer_lose_their_chunks() {
    let net = Arc::new(MemoryNetwork::default());
    let (data, digest) = blob((24 * CHUNK + 5) as usize);
    let size = data.len() as u64;
    // c answers its peers but never gets a byte from its upstream.
    let nodes = [
        node(&net, "a", &data, &digest, Up::Normal).await,
        node(&net, "b", &data, &digest, Up::Normal).await,
        node(&net, "c", &data, &digest, Up::Stalled).await,
    ];
    let dls: Vec<Arc<Download>> = nodes.iter().map(|n| n.sw.join(&digest, size, request(&digest)).unwrap()).collect();
    for dl in &dls[..2] {
        assert_eq!(read_all(dl.clone()).await.unwrap(), data, "a and b took over c's chunks");
    }
    let total = bytes_of(&nodes[0].up) + bytes_of(&nodes[1].up);
    assert!(total >= size, "a and b fetched everything between them: {total}");
    // c can now complete from them.
    assert_eq!(read_all(dls[2].clone()).await.unwrap(), data);

    // A dead peer: b's server goes away in the middle of a second blob.
    let (data2, digest2) = blob((24 * CHUNK + 77) as usize);
    for n in &nodes {
        n.up.put("example.com", "app", Kind::Blob, &digest2.to_string(), "application/octet-stream", data2.clone());
    }
    let a2 = nodes[0].sw.join(&digest2, data2.len() as u64, request(&digest2)).unwrap();
    let _b2 = nodes[1].sw.join(&digest2, data2.len() as u64, request(&digest2)).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    nodes[1].server.stop(false).await;
    assert_eq!(read_all(a2).await.unwrap(), data2, "a completed without b");
    nodes[0].server.stop(false).await;
    nodes[2].server.stop(false).await;
}

#[actix_rt::test]
async fn a_wrong_blob_fails_the_download_and_its_readers() {
    let net = Arc::new(MemoryNetwork::default());
    let (data, _) = blob((3 * CHUNK) as usize);
    let claimed = Digest::compute(Algorithm::Sha256, b"something else");
    let n = node(&net, "a", &data, &claimed, Up::Normal).await;
    let dl = n.sw.join(&claimed, data.len() as u64, request(&claimed)).unwrap();
    let err = read_all(dl.clone()).await.unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");
    assert!(matches!(dl.end(), End::Failed(_)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(n.sw.get(&claimed).is_none(), "a failed download is dropped at once");
    n.server.stop(false).await;
}

/// A peer that provides `digest`'s swarm key, claims every chunk in its status page, and answers
/// a request for chunk i with `chunk(i)`.
async fn fake_seed(
    net: &Arc<MemoryNetwork>,
    digest: &Digest,
    size: u64,
    chunk: impl Fn(u64) -> actix_web::HttpResponse + Clone + Send + 'static,
) -> actix_web::dev::ServerHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let me = Peer { id: "seed".into(), addr: listener.local_addr().unwrap() };
    MemoryRouter::new(net.clone(), me).provide(vec![swarm_key(digest)]).await.unwrap();
    let chunks = size.div_ceil(CHUNK);
    let status = serde_json::to_vec(&StatusDoc {
        size,
        chunk_size: CHUNK,
        have: bitmap((0..chunks).map(|_| true)),
        fetching: bitmap((0..chunks).map(|_| false)),
        peers: Vec::new(),
    })
    .unwrap();
    serve(listener, move |c| {
        let (status, chunk) = (status.clone(), chunk.clone());
        c.route(
            "/swarm/{d}/{cs}",
            web::get().to(move || {
                let body = status.clone();
                let sha = hex::encode(sha2::Sha256::digest(&body));
                async move {
                    actix_web::HttpResponse::Ok()
                        .insert_header(("Docker-Content-Digest", format!("sha256:{sha}")))
                        .body(body)
                }
            }),
        )
        .route(
            "/swarm/{d}/{cs}/{i}",
            web::get().to(move |path: web::Path<(String, u64, u64)>| {
                let resp = chunk(path.2);
                async move { resp }
            }),
        );
    })
}

/// A peer that claims every chunk and sends bytes that do not match the hash it sends.
async fn liar(
    net: &Arc<MemoryNetwork>,
    digest: &Digest,
    size: u64,
    asked: Arc<std::sync::atomic::AtomicUsize>,
) -> actix_web::dev::ServerHandle {
    fake_seed(net, digest, size, move |_| {
        asked.fetch_add(1, Ordering::SeqCst);
        actix_web::HttpResponse::Ok()
            .insert_header(("Docker-Content-Digest", format!("sha256:{}", "0".repeat(64))))
            .body(vec![0u8; CHUNK as usize])
    })
    .await
}

#[actix_rt::test]
async fn chunks_that_do_not_match_their_hash_are_refused() {
    let net = Arc::new(MemoryNetwork::default());
    let (data, digest) = blob((10 * CHUNK) as usize);
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let liar = liar(&net, &digest, data.len() as u64, asked.clone()).await;
    let a = node(&net, "a", &data, &digest, Up::Normal).await;
    let dl = a.sw.join(&digest, data.len() as u64, request(&digest)).unwrap();
    assert_eq!(read_all(dl).await.unwrap(), data, "the liar's chunks were refused and fetched elsewhere");
    assert_eq!(bytes_of(&a.up), data.len() as u64, "from the upstream instead");
    assert!(asked.load(Ordering::SeqCst) >= 1, "the liar was asked (it claimed every chunk)");
    liar.stop(false).await;
    a.server.stop(false).await;
}

/// A peer that has every chunk of `data` and sends each one in two halves `pause` apart (with
/// `corrupt`, the second half is zeros while the hash it claims is the right one).
async fn slow_seed(
    net: &Arc<MemoryNetwork>,
    digest: &Digest,
    data: Bytes,
    pause: Duration,
    corrupt: bool,
) -> actix_web::dev::ServerHandle {
    let size = data.len() as u64;
    fake_seed(net, digest, size, move |i| {
        let start = (i * CHUNK) as usize;
        let chunk = data.slice(start..(start + CHUNK as usize).min(data.len()));
        let sha = hex::encode(sha2::Sha256::digest(&chunk));
        let (first, mut rest) = (chunk.slice(..chunk.len() / 2), chunk.slice(chunk.len() / 2..));
        if corrupt {
            rest = Bytes::from(vec![0u8; rest.len()]);
        }
        let body = futures_util::StreamExt::chain(
            futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }),
            futures_util::stream::once(async move {
                tokio::time::sleep(pause).await;
                Ok(rest)
            }),
        );
        actix_web::HttpResponse::Ok()
            .insert_header(("Docker-Content-Digest", format!("sha256:{sha}")))
            .insert_header((actix_web::http::header::CONTENT_LENGTH, chunk.len().to_string()))
            .streaming(body)
    })
    .await
}

/// A chunk arriving from a peer is announced on the status page like an upstream read (peers
/// wait here for it instead of learning at their next refresh that this node has it), and only
/// while its bytes flow.
#[actix_rt::test]
async fn a_chunk_arriving_from_a_peer_is_announced_while_it_arrives() {
    let net = Arc::new(MemoryNetwork::default());
    let (data, digest) = blob((6 * CHUNK) as usize);
    let seed = slow_seed(&net, &digest, data.clone(), Duration::from_millis(300), false).await;
    let a = node(&net, "a", &data, &digest, Up::Normal).await;
    let dl = a.sw.join(&digest, data.len() as u64, request(&digest)).unwrap();
    let reader = actix_rt::spawn(read_all(dl.clone()));
    let n = dl.chunks;
    let mut seen = false;
    for _ in 0..400 {
        let s = dl.status();
        let (have, fetching) = (unbitmap(&s.have, n), unbitmap(&s.fetching, n));
        if (0..n as usize).any(|i| fetching[i] && !have[i]) {
            seen = true;
            break;
        }
        if have.iter().all(|h| *h) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "a chunk on its way from the seed was never announced as arriving");
    assert_eq!(reader.await.unwrap().unwrap(), data);
    assert_eq!(bytes_of(&a.up), 0, "every chunk came from the seed");
    let s = dl.status();
    assert!(unbitmap(&s.fetching, n).iter().all(|f| !f), "nothing is announced as arriving once held");
    seed.stop(false).await;
    a.server.stop(false).await;
}

/// The first chunk of `dl` found arriving from a peer (not held yet), within 10 s.
async fn an_arriving_chunk(dl: &Download) -> u64 {
    for _ in 0..2000 {
        if let Some(i) = (0..dl.chunks).find(|i| dl.arrival(*i).is_some() && dl.has(*i).is_none()) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no chunk was ever seen arriving");
}

/// Ask node `addr` for chunk `index` of `digest` as a peer would.
async fn ask_chunk(addr: std::net::SocketAddr, digest: &Digest, index: u64) -> crate::peer::client::PeerResponse {
    let client = PeerClient::new(Duration::from_millis(500), Duration::from_secs(5), None, "c".into()).unwrap();
    let target = format!("/swarm/{digest}/{CHUNK}/{index}?wait=2000");
    client.fetch(&Peer { id: "a".into(), addr }, &target, false, None, None).await.unwrap()
}

/// A node downloading a 4-chunk blob from a seed that sends each chunk in two halves 1.5 s
/// apart (`corrupt`: a wrong second half), or alone from an upstream that does (`seed` false),
/// and a peer's answer for a chunk while it arrives there.
struct Passing {
    seed: Option<actix_web::dev::ServerHandle>,
    a: Node,
    dl: Arc<Download>,
    data: Bytes,
    index: u64,
    resp: crate::peer::client::PeerResponse,
}

async fn passing(seed: bool, corrupt: bool) -> Passing {
    let net = Arc::new(MemoryNetwork::default());
    let (data, digest) = blob((4 * CHUNK) as usize);
    let pause = Duration::from_millis(1500);
    let (seed, up) = match seed {
        true => (Some(slow_seed(&net, &digest, data.clone(), pause, corrupt).await), Up::Normal),
        false => (None, Up::Trickle(pause)),
    };
    let a = node(&net, "a", &data, &digest, up).await;
    let dl = a.sw.join(&digest, data.len() as u64, request(&digest)).unwrap();
    let index = an_arriving_chunk(&dl).await;
    let resp = ask_chunk(a.addr, &digest, index).await;
    assert!(resp.forwarded, "answered as a chunk passed on");
    assert_eq!(resp.digest, None, "the sha256 comes in the trailer");
    Passing { seed, a, dl, data, index, resp }
}

/// A chunk passed on while it arrives: its first bytes come before the node holds the chunk,
/// then the whole chunk and a trailer with its sha256 (no cluster secret here: a zero tag).
async fn passed_on_whole(p: Passing) {
    let Passing { seed, a, dl, data, index, resp } = p;
    let want = data.slice((index * CHUNK) as usize..((index + 1) * CHUNK) as usize);
    let mut body = resp.body;
    let first = futures_util::StreamExt::next(&mut body).await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert!(dl.has(index).is_none(), "the first bytes were passed on before this node held the chunk");
    let rest = crate::stream::collect(body, 2 * CHUNK).await.unwrap();
    let all = [first, rest].concat();
    assert_eq!(all.len() as u64, CHUNK + crate::peer::CHUNK_TRAILER_LEN);
    assert_eq!(&all[..CHUNK as usize], &want[..]);
    assert_eq!(&all[CHUNK as usize..][..32], &sha2::Sha256::digest(&want)[..], "the trailer's sha256");
    assert_eq!(read_all(dl).await.unwrap(), data);
    if let Some(s) = seed {
        s.stop(false).await;
    }
    a.server.stop(false).await;
}

/// Cut-through: a peer asking for a chunk that is arriving here from a peer gets its bytes
/// while they arrive.
#[actix_rt::test]
async fn a_chunk_arriving_from_a_peer_is_passed_on_while_it_arrives() {
    passed_on_whole(passing(true, false).await).await;
}

/// Cut-through of the upstream's chunks: a chunk this node is still reading from the upstream
/// is passed on while the upstream sends it.
#[actix_rt::test]
async fn a_chunk_arriving_from_the_upstream_is_passed_on_while_it_arrives() {
    passed_on_whole(passing(false, false).await).await;
}

/// Cut-through from a lying source: the chunk passed on ends with an error instead of its
/// trailer (the asker keeps nothing); the node itself refuses the chunk and completes the blob
/// from the upstream.
#[actix_rt::test]
async fn a_chunk_passed_on_from_a_lying_peer_is_cut_before_its_trailer() {
    let Passing { seed, a, dl, data, resp, .. } = passing(true, true).await;
    let got = crate::stream::collect(resp.body, 2 * CHUNK).await;
    assert!(got.is_err(), "the body was cut, not completed");
    assert_eq!(read_all(dl).await.unwrap(), data, "completed without the liar's chunks");
    assert!(bytes_of(&a.up) > 0, "the refused chunks came from the upstream");
    seed.unwrap().stop(false).await;
    a.server.stop(false).await;
}

/// The upload slots bound the chunks being sent, not only the ones being read: a chunk's body
/// holds its slot until it is sent or dropped. With one slot, a second asker gets 503 while the
/// first chunk's body is unsent (before the fix, the slot was free again once the chunk had been
/// read from the spool, so any number of chunks were sent at once).
#[actix_rt::test]
async fn a_chunk_being_sent_holds_its_upload_slot() {
    let net = Arc::new(MemoryNetwork::default());
    let (data, digest) = blob((2 * CHUNK) as usize);
    let mut one_slot = cfg();
    one_slot.upload_slots = 1;
    let a = node_cfg(&net, "a", &data, &digest, Up::Normal, one_slot).await;
    let dl = a.sw.join(&digest, data.len() as u64, request(&digest)).unwrap();
    assert_eq!(read_all(dl).await.unwrap(), data);
    let d = digest.to_string();
    let first = a.sw.chunk_for_peer(&d, CHUNK, 0, Duration::ZERO).await.unwrap();
    let second = a.sw.chunk_for_peer(&d, CHUNK, 1, Duration::ZERO).await;
    assert!(
        matches!(second, Err(crate::error::ApiError::Busy)),
        "the one slot is taken while the first chunk is unsent"
    );
    let PeerChunk::Held { body, .. } = first else { panic!("chunk 0 is held here") };
    assert_eq!(crate::stream::collect(body, CHUNK).await.unwrap(), data.slice(..CHUNK as usize));
    assert!(a.sw.chunk_for_peer(&d, CHUNK, 1, Duration::ZERO).await.is_ok(), "sent: the slot is free again");
    a.server.stop(false).await;
}
