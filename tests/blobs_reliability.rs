//! `/blobs` on a bad day (issue 14, findings 4, 6 and 9): upstreams that claim absurd sizes,
//! upstreams that trickle, and upstream outages, against peerd processes and hand-rolled
//! upstreams (`FakeUpstream`) on loopback.

mod common;
use common::*;
use std::time::{Duration, Instant};

const CHUNK: u64 = 64 * 1024;

/// A blob store claiming `size_of(path)` bytes for every path: HEAD answers with that size
/// (written raw: the fake's own Content-Length would say 0), ranged GETs get zeros after `delay`.
fn zeros_upstream(size_of: impl Fn(&str) -> u64 + Send + Sync + 'static, delay: Duration) -> FakeUpstream {
    FakeUpstream::start(move |req| {
        let size = size_of(req.target.split('?').next().unwrap_or(""));
        if req.method == "HEAD" {
            return head_answer(size, "z");
        }
        let Some((a, b)) = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        else {
            return Reply::status(400, &[]);
        };
        std::thread::sleep(delay);
        let len = (b - a + 1).min(16 << 20) as usize;
        Reply::Http {
            status: 206,
            headers: vec![("Content-Range".into(), format!("bytes {a}-{b}/{size}"))],
            body: vec![0; len],
        }
    })
}

/// The answer to a HEAD of a file of `size` bytes with ETag `etag`.
fn head_answer(size: u64, etag: &str) -> Reply {
    Reply::Garbage(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: \"{etag}\"\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    )
}

fn gets(up: &FakeUpstream) -> usize {
    up.requests().iter().filter(|r| r.method == "GET").count()
}

/// A single node (no p2p) allowed to fetch from `hosts`, with 64 KiB chunks and `env` on top.
fn node(hosts: &[&str], env: &[(&str, &str)]) -> Peerd {
    let allowed = format!("[{}]", hosts.iter().map(|h| format!("\"http://{h}\"")).collect::<Vec<_>>().join(","));
    let chunk = CHUNK.to_string();
    let mut all = vec![("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str()), ("PEERD_BLOBS__CHUNK_SIZE", chunk.as_str())];
    all.extend_from_slice(env);
    Peerd::start("127.0.0.1", &["--no-p2p", "--containerd-socket", "/nonexistent.sock"], &all)
}

/// One byte of `path` on `up` through `n`.
fn read_one_byte(n: &Peerd, up: &str, path: &str) {
    let ex = curl("GET", &n.url(&format!("/blobs/http://{up}{path}")), &[("Range", "bytes=0-0")]);
    assert_eq!(ex.status, 206, "1-byte read of {path}");
}

/// The upstream GET count once it has not changed for `quiet`, waiting at most `within`.
fn settled_gets(up: &FakeUpstream, quiet: Duration, within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    let (mut last, mut since) = (gets(up), Instant::now());
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = gets(up);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return Some(now);
        }
    }
    None
}

/// Finding 4: a 1-byte read of a file claiming 2^64−1 bytes (or 1 PB) made the node prefetch
/// "the rest" for ever. Prefetch is capped by half the cache (here 64 chunks → 32).
#[test]
fn prefetch_of_a_huge_claimed_file_is_bounded_and_stops() {
    for size in [u64::MAX, 1 << 50] {
        let up = zeros_upstream(move |_| size, Duration::ZERO);
        let cache = (64 * CHUNK).to_string();
        let n = node(&[&up.addr], &[("PEERD_BLOBS__MAX_CACHE_BYTES", &cache)]);
        read_one_byte(&n, &up.addr, "/huge.img");
        let settled = settled_gets(&up, Duration::from_secs(2), Duration::from_secs(20));
        let count = settled.unwrap_or_else(|| panic!("size {size}: upstream GETs never stopped ({})", gets(&up)));
        // The read's chunk, then at most 32 prefetched.
        assert!(count <= 33, "size {size}: {count} upstream GETs for a 1-byte read");
        assert!(count >= 8, "size {size}: prefetch still runs within its bound ({count} GETs)");
        assert_eq!(n.metric("peerd_blobs_cache_evictions_total", &[]), 0.0, "size {size}: prefetch evicted");
        assert!(n.metric("peerd_blobs_prefetch_stopped_total", &["reason=\"size\""]) >= 1.0);
    }
}

/// Finding 4: a file nobody reads any more is not prefetched on (`blobs.prefetch_idle`), even
/// when its cap (1 GiB) is far away.
#[test]
fn prefetch_stops_when_the_file_is_no_longer_read() {
    let up = zeros_upstream(|_| 1 << 40, Duration::from_millis(50));
    let n = node(&[&up.addr], &[("PEERD_BLOBS__PREFETCH_IDLE", "1s")]);
    read_one_byte(&n, &up.addr, "/big.img");
    let count = settled_gets(&up, Duration::from_secs(2), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("prefetch of an unread file never stopped ({} GETs)", gets(&up)));
    assert!(count < 1000, "{count} GETs");
    assert!(count >= 4, "prefetch ran while the file was read ({count} GETs)");
    assert!(n.metric("peerd_blobs_prefetch_stopped_total", &["reason=\"idle\""]) >= 1.0);
    // A new read resumes it (and it stops again).
    read_one_byte(&n, &up.addr, "/big.img");
    let again = settled_gets(&up, Duration::from_secs(2), Duration::from_secs(20)).expect("stops again");
    assert!(again > count, "a new read resumes the prefetch ({count} → {again})");
}

/// Finding 4: prefetch of a huge file must not push out chunks clients read a moment ago.
#[test]
fn prefetch_does_not_evict_chunks_clients_read() {
    let up = zeros_upstream(|p| if p == "/x.img" { 40 * CHUNK } else { 1 << 50 }, Duration::ZERO);
    let cache = (64 * CHUNK).to_string();
    let n = node(&[&up.addr], &[("PEERD_BLOBS__MAX_CACHE_BYTES", &cache)]);
    let x = curl("GET", &n.url(&format!("/blobs/http://{}/x.img", up.addr)), &[]);
    assert_eq!((x.status, x.body.len() as u64), (200, 40 * CHUNK));
    settled_gets(&up, Duration::from_secs(1), Duration::from_secs(20)).expect("x settles");
    let before = gets(&up);
    read_one_byte(&n, &up.addr, "/y.img");
    settled_gets(&up, Duration::from_secs(2), Duration::from_secs(20)).expect("y's prefetch stops");
    assert_eq!(n.metric("peerd_blobs_cache_evictions_total", &[]), 0.0, "prefetch evicted x's chunks");
    assert!(n.metric("peerd_blobs_prefetch_stopped_total", &["reason=\"cache\""]) >= 1.0);
    let after_y = gets(&up);
    assert!(after_y > before + 4, "y was prefetched into the free room ({before} → {after_y})");
    // x is still whole in the cache: reading it again fetches nothing.
    let x = curl("GET", &n.url(&format!("/blobs/http://{}/x.img", up.addr)), &[]);
    assert_eq!(x.status, 200);
    assert_eq!(gets(&up), after_y, "x's chunks were evicted");
}

/// Finding 6: a trickling host (a byte every 200 ms) held all 64 chunk-fetch slots of the node,
/// so reads of a healthy host hung. Now it holds at most `blobs.per_host_fetches`, its fetches
/// fail after `blobs.chunk_timeout`, and the healthy host is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_host_does_not_block_other_hosts() {
    const SLOW_CHUNKS: u64 = 100;
    let slow = FakeUpstream::start(|req| {
        if req.method == "HEAD" {
            return head_answer(SLOW_CHUNKS * CHUNK, "s");
        }
        let range = req.header("range").unwrap_or("").to_owned();
        Reply::Trickle {
            status: 206,
            headers: vec![("Content-Range".into(), format!("{}/{}", range.replace("=", " "), SLOW_CHUNKS * CHUNK))],
            body: vec![0; CHUNK as usize],
            every: Duration::from_millis(200),
        }
    });
    let healthy = zeros_upstream(|_| 4 * CHUNK, Duration::ZERO);
    let n = node(
        &[&slow.addr, &healthy.addr],
        &[
            ("PEERD_BLOBS__PREFETCH", "false"),
            ("PEERD_BLOBS__PER_HOST_FETCHES", "8"),
            ("PEERD_BLOBS__CHUNK_TIMEOUT", "4s"),
        ],
    );
    let client = reqwest::Client::new();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..SLOW_CHUNKS {
        let (c, url) = (client.clone(), n.url(&format!("/blobs/http://{}/slow.img", slow.addr)));
        let range = format!("bytes={}-{}", i * CHUNK, i * CHUNK);
        pending.spawn(async move { c.get(url).header("Range", range).send().await.map(|r| r.status().as_u16()) });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = gets(&slow);
    assert!((1..=8).contains(&started), "{started} fetches of the slow host at once (per_host_fetches = 8)");

    let t0 = Instant::now();
    let fast = client
        .get(n.url(&format!("/blobs/http://{}/fast.img", healthy.addr)))
        .header("Range", format!("bytes=0-{}", 2 * CHUNK))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the healthy host's read hung behind the slow host");
    assert_eq!(fast.status().as_u16(), 206);
    assert_eq!(fast.bytes().await.unwrap().len() as u64, 2 * CHUNK + 1);
    assert!(t0.elapsed() < Duration::from_secs(3), "healthy read took {:?}", t0.elapsed());

    // Past chunk_timeout the trickled fetches fail (the slow reads end, none of them with data).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(n.metric("peerd_blobs_upstream_timeouts_total", &["reason=\"slow\""]) >= 1.0);
    assert!(gets(&slow) > started, "the next queued fetches started once the slow ones timed out");

    // Reads queued behind the slow host give up after chunk_timeout instead of fetching long
    // after their clients left (actix keeps a pending body alive when the client goes): once the
    // clients leave, the slow host soon sees no new fetches.
    pending.abort_all();
    while pending.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = gets(&slow);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(gets(&slow), after, "fetches of the slow host went on after its clients left");
    assert!(after < 40, "{after} fetches of the slow host for 100 abandoned reads");
    assert!(n.metric("peerd_blobs_upstream_timeouts_total", &["reason=\"queued\""]) >= 1.0);
}

const SECRET: &str = "blobs-reliability-secret-0009";

/// What the fake blob store of the outage test answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Up,
    Error503,
    NotHttp,
    Forbidden,
}

/// Nodes on 127.0.0.8/9/10 that bootstrap each other, with the cluster secret; the third one
/// with `blobs.stale_if_error = "0s"`.
fn cluster(up: &str) -> (Vec<Peerd>, tempfile::TempDir) {
    let work = tempdir("pd-stale");
    let ports = Ports::free("127.0.0.8");
    let ips = ["127.0.0.8", "127.0.0.9", "127.0.0.10"];
    let boot: Vec<String> = ips.iter().map(|i| format!("{i}:{}", ports.p2p)).collect();
    let allowed = format!("[\"http://{up}\"]");
    let chunk = CHUNK.to_string();
    let env = [
        ("PEERD_P2P__SECRET", SECRET),
        ("PEERD_P2P__RESOLVE_TIMEOUT", "300ms"),
        ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s"),
        ("PEERD_BLOBS__ALLOWED_HOSTS", allowed.as_str()),
        ("PEERD_BLOBS__CHUNK_SIZE", chunk.as_str()),
        ("PEERD_BLOBS__PREFETCH", "false"),
        ("PEERD_UPSTREAM__CONNECT_TIMEOUT", "1s"),
        ("PEERD_UPSTREAM__FAILURE_COOLDOWN", "1s"),
    ];
    let nodes: Vec<Peerd> = ips
        .iter()
        .map(|ip| {
            let args = [
                "--containerd-socket",
                "/nonexistent.sock",
                "--bootstrap-peer",
                &boot[0],
                "--bootstrap-peer",
                &boot[1],
            ];
            let mut env = env.to_vec();
            if *ip == "127.0.0.10" {
                env.push(("PEERD_BLOBS__STALE_IF_ERROR", "0s"));
            }
            Peerd::start_on(ip, ports, Some(&work.path().join(ip)), &args, &env)
        })
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    (nodes, work)
}

/// Finding 9 (RFC 5861 stale-if-error): during an upstream outage, node B serves a file it never
/// saw, with a SAS it never saw, because A validated the same URL-without-query and holds the
/// bytes; not when the upstream answers 403 (a refusal is an answer), and not for a file no node
/// validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_serves_files_a_peer_validated_but_never_refused_ones() {
    let size = 3 * CHUNK + 1234;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let mode = std::sync::Arc::new(std::sync::Mutex::new(Mode::Up));
    let (m, d) = (mode.clone(), data.clone());
    let up = FakeUpstream::start(move |req| match *m.lock().unwrap() {
        Mode::Error503 => Reply::status(503, &[]),
        Mode::Forbidden => Reply::status(403, &[]),
        Mode::NotHttp => Reply::Garbage(b"\x00\x01 not http".to_vec()),
        Mode::Up if req.method == "HEAD" => head_answer(size, "v1"),
        Mode::Up => {
            let (a, b) = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()))
                .unwrap();
            Reply::Http {
                status: 206,
                headers: vec![
                    ("Content-Range".into(), format!("bytes {a}-{b}/{size}")),
                    ("ETag".into(), "\"v1\"".into()),
                ],
                body: d[a..=b].to_vec(),
            }
        }
    });
    let (nodes, _work) = cluster(&up.addr);
    let (a, b, off) = (&nodes[0], &nodes[1], &nodes[2]);
    let client = reqwest::Client::new();
    let url = |n: &Peerd, path: &str, sig: &str| format!("{}/blobs/http://{}{path}?sv=1&sig={sig}", n.url(""), up.addr);
    let whole = client.get(url(a, "/f.img", "for-a")).send().await.unwrap();
    assert_eq!(whole.status().as_u16(), 200);
    assert!(whole.bytes().await.unwrap() == data, "A reads the file");
    tokio::time::sleep(Duration::from_secs(2)).await; // A's chunks and its validation advertised
    let upstream_gets = gets(&up);

    for outage in [Mode::Error503, Mode::NotHttp] {
        *mode.lock().unwrap() = outage;
        let r = client.get(url(b, "/f.img", "b-never-seen")).header("Range", "bytes=100-70000").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 206, "B serves the file A validated during the outage");
        assert!(r.bytes().await.unwrap() == data[100..=70000], "B's bytes are A's file");
    }
    assert_eq!(gets(&up), upstream_gets, "no byte came from the failing upstream");
    assert_eq!(b.metric("peerd_blobs_stale_if_error_total", &["by=\"peer\""]), 1.0, "asked the peers once");
    assert!(b.metric("peerd_blobs_stale_if_error_total", &["by=\"cluster\""]) >= 1.0, "then remembered");
    assert!(b.metric("peerd_blobs_bytes_total", &["source=\"peer\""]) > 0.0);

    // The off switch: a node with stale_if_error = 0s serves only URLs it confirmed itself.
    *mode.lock().unwrap() = Mode::Error503;
    let r = client.get(url(off, "/f.img", "c-never-seen")).header("Range", "bytes=0-9").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 502, "stale_if_error = 0s: the upstream's 503 is passed on");

    // A file no node validated: still an error.
    *mode.lock().unwrap() = Mode::Error503;
    let r = client.get(url(b, "/other.img", "x")).header("Range", "bytes=0-9").send().await.unwrap();
    assert!(r.status().as_u16() >= 500, "a file nobody validated: {}", r.status());

    // The upstream refuses (an expired or revoked SAS): never served, on B or on A. The outage
    // rested the host behind the upstream breaker (/blobs shares /v2's): a resting host is not
    // asked, so its refusal is heard at the first request after the rest (`failure_cooldown`).
    *mode.lock().unwrap() = Mode::Forbidden;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (n, sig) in [(b, "b-revoked"), (a, "for-a")] {
        let r = client.get(url(n, "/f.img", sig)).header("Range", "bytes=0-9").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "a refused URL is not served stale");
    }
}

/// /blobs used to skip the upstream circuit breaker /v2 has: a store answering 503 was asked
/// again on every request. Now its host rests after `upstream.failure_threshold` failures (the
/// requests are answered 503 at once, without reaching it), and another host is unaffected.
/// (Before: 10 requests reached the store, each answered 502.)
#[test]
fn a_failing_store_rests_behind_the_same_breaker_as_v2() {
    let down = FakeUpstream::start(|_| Reply::status(503, &[]));
    let healthy = zeros_upstream(|_| 4 * CHUNK, Duration::ZERO);
    let n = node(
        &[&down.addr, &healthy.addr],
        &[
            ("PEERD_BLOBS__PREFETCH", "false"),
            ("PEERD_UPSTREAM__FAILURE_THRESHOLD", "3"),
            ("PEERD_UPSTREAM__FAILURE_COOLDOWN", "10m"),
        ],
    );
    for i in 0..10 {
        let ex = curl("GET", &n.url(&format!("/blobs/http://{}/f{i}", down.addr)), &[("Range", "bytes=0-0")]);
        // The store's own 503 is passed on as 502 until the host rests; then 503 from here.
        let want = if i < 3 { 502 } else { 503 };
        assert_eq!(ex.status, want, "request {i} to a failing store");
    }
    assert_eq!(down.requests().len(), 3, "the store was asked until its host rested, then not again");
    read_one_byte(&n, &healthy.addr, "/ok");
}

/// An upstream that answers and then sends no byte for `blobs.progress_timeout`: the chunk
/// fetch fails as stalled (counted so), the read gets an error rather than a short body, and
/// the fetch does not wait out `chunk_timeout`.
#[test]
fn a_stalled_upstream_body_fails_the_chunk_as_stalled() {
    let size = 4 * CHUNK;
    let up = FakeUpstream::start(move |req| {
        if req.method == "HEAD" {
            return head_answer(size, "st");
        }
        let range = req.header("range").unwrap_or("").to_owned();
        Reply::Trickle {
            status: 206,
            headers: vec![("Content-Range".into(), format!("{}/{size}", range.replace("=", " ")))],
            body: vec![0; CHUNK as usize],
            every: Duration::from_secs(30),
        }
    });
    let n = node(
        &[&up.addr],
        &[
            ("PEERD_BLOBS__PREFETCH", "false"),
            ("PEERD_BLOBS__PROGRESS_TIMEOUT", "1s"),
            ("PEERD_BLOBS__CHUNK_TIMEOUT", "20s"),
        ],
    );
    let t0 = Instant::now();
    let r = curl("GET", &n.url(&format!("/blobs/http://{}/stall.img", up.addr)), &[("Range", "bytes=0-9")]);
    let took = t0.elapsed();
    assert!(!(r.status == 206 && r.curl_ok && r.body.len() == 10), "no complete answer from a stalled body");
    assert!(n.metric("peerd_blobs_upstream_timeouts_total", &["reason=\"stalled\""]) >= 1.0, "counted as stalled");
    assert_eq!(n.metric("peerd_blobs_upstream_timeouts_total", &["reason=\"slow\""]), 0.0, "not as slow");
    assert!(took < Duration::from_secs(15), "failed at the progress timeout, not the chunk timeout: {took:?}");
}
