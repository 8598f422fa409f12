//! Integration-test harness: real docker-registry, containerd and peerd processes on loopback,
//! each owned by a guard that stops it by PID on drop.
//!
//! Tools missing on the machine make a test SKIP LOUDLY (a banner on stderr) unless
//! `PEERD_REQUIRE_INTEGRATION=1` is set — the README's test command sets it, so in CI a missing
//! tool is a failure, never a silent pass.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `true` if every tool is on PATH (and we are root when `root`); otherwise prints a loud skip
/// banner, or panics when integration tests are required.
pub fn require(test: &str, tools: &[&str], root: bool) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|t| t.to_string())
        .collect();
    if root && !is_root() {
        missing.push("root privileges".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("PEERD_REQUIRE_INTEGRATION").as_deref() == Ok("1") {
        panic!("{msg} (PEERD_REQUIRE_INTEGRATION=1)");
    }
    eprintln!("\n########## SKIPPED: {msg} ##########\n########## install them with: make test-deps ##########\n");
    false
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Build the test images once per target dir (the script is idempotent and race-safe).
pub fn images() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("images");
    run(Command::new(fixtures().join("build-images.sh")).arg(&dir));
    dir
}

/// The digests the image build recorded (`images.json`).
pub fn image_info(images: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(images.join("images.json")).unwrap()).unwrap()
}

/// The usual start of a registry test: a work dir, a registry holding the test images, and the
/// digests of those images. Keep the `TempDir` alive as long as the registry.
pub fn registry_with_images(prefix: &str) -> (tempfile::TempDir, Registry, serde_json::Value) {
    let images = images();
    let info = image_info(&images);
    let work = tempdir(prefix);
    let reg = Registry::start(&work.path().join("reg"));
    reg.push_images(&images);
    (work, reg, info)
}

/// `(digest, size)` of every layer of `image` in `images.json`.
pub fn image_layers(info: &serde_json::Value, image: &str) -> Vec<(String, u64)> {
    info[image]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap()))
        .collect()
}

pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    // Short paths: containerd's socket path must fit in sun_path.
    tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap()
}

/// A docker-registry on 127.0.0.1 with a kernel-chosen port.
pub struct Registry {
    pub dir: PathBuf,
    pub addr: String,
    running: bool,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let addr = run(Command::new(fixtures().join("registry.sh")).arg("start").arg(dir));
        Registry { dir: dir.to_owned(), addr, running: true }
    }
    pub fn push_images(&self, images: &Path) {
        run(Command::new(fixtures().join("push-images.sh")).arg(images).arg(&self.addr));
    }
    pub fn stop(&mut self) {
        if self.running {
            run(Command::new(fixtures().join("registry.sh")).arg("stop").arg(&self.dir));
            self.running = false;
        }
    }
    /// Push `data` as a blob of `repo` (monolithic upload); returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(data));
        let dir = tempdir("pd-blob");
        let file = dir.path().join("blob");
        std::fs::write(&file, data).unwrap();
        self.push_blob_file(repo, &file, &digest);
        digest
    }

    /// Push the file at `path`, whose digest is `digest`, as a blob of `repo`: POST for an
    /// upload location, then PUT the whole body with the digest.
    pub fn push_blob_file(&self, repo: &str, path: &Path, digest: &str) {
        let start = curl("POST", &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr), &[]);
        assert_eq!(start.status, 202, "upload start: {}", String::from_utf8_lossy(&start.body));
        let location = start.header("location").expect("upload location").to_owned();
        let location = if location.starts_with("http") { location } else { format!("http://{}{location}", self.addr) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let out = Command::new("curl")
            .args(["-sSf", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "-T"])
            .arg(path)
            .arg(format!("{location}{sep}digest={digest}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "blob upload failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Requests the registry has logged for `path_part` (its access log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new(fixtures().join("registry.sh")).arg("stop").arg(&self.dir).status();
        }
    }
}

/// A private containerd 1.6 instance.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        let socket = run(Command::new(fixtures().join("containerd.sh")).arg("start").arg(dir));
        Containerd { dir: dir.to_owned(), socket: socket.into() }
    }
    /// Stop and start again on the same state (a containerd restart).
    pub fn restart(&self) {
        run(Command::new(fixtures().join("containerd.sh")).arg("stop").arg(&self.dir));
        run(Command::new(fixtures().join("containerd.sh")).arg("start").arg(&self.dir));
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr").arg("-a").arg(&self.socket).args(["-n", "k8s.io"]).args(args).output().unwrap()
    }
    /// `ctr image pull --hosts-dir` — asserts success and returns stdout+stderr.
    pub fn pull(&self, hosts_dir: &Path, image: &str) -> String {
        let out = self.ctr(&["image", "pull", "--hosts-dir", hosts_dir.to_str().unwrap(), image]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "ctr pull {image} failed:\n{text}");
        text
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(fixtures().join("containerd.sh")).arg("stop").arg(&self.dir).status();
    }
}

/// Write `<dir>/<registry>/hosts.toml` pointing containerd at a mirror, as peerd's chart does.
pub fn hosts_toml(dir: &Path, registry: &str, mirror: &str) {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"200ms\"\n"
        ),
    )
    .unwrap();
}

pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A running `peerd run` process.
pub struct Peerd {
    child: Child,
    pub http: SocketAddr,
    /// The peer listener (other nodes fetch here; every request authenticated).
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
    pub p2p: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _data: Option<tempfile::TempDir>,
}

/// Ports for a node: front end, peer listener, metrics, p2p. Clusters use the same ports on
/// every address.
#[derive(Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub peer: u16,
    pub metrics: u16,
    pub p2p: u16,
}

impl Ports {
    /// Four distinct free ports: the listeners are held until all four are chosen (taken one by
    /// one and dropped at once, the kernel handed the same port out twice: a fresh-clone run
    /// once started peerd with its HTTP and peer listeners on one port).
    pub fn free(ip: &str) -> Ports {
        let held: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind((ip, 0)).unwrap()).collect();
        let port = |i: usize| held[i].local_addr().unwrap().port();
        Ports { http: port(0), peer: port(1), metrics: port(2), p2p: port(3) }
    }
}

impl Peerd {
    /// Start peerd on `ip` with free ports and extra `args`; waits for `/readyz`.
    pub fn start(ip: &str, args: &[&str], env: &[(&str, &str)]) -> Peerd {
        let p = Self::start_on(ip, Ports::free(ip), None, args, env);
        p.wait_ready();
        p
    }

    /// Wait until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        self.wait_for("/readyz");
    }

    fn wait_for(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child_status() {
                panic!("peerd exited early with {status}:\n{}", self.log_text());
            }
            if http_get_status(&format!("http://{}{path}", self.http)) == Some(200) {
                return;
            }
            assert!(Instant::now() < deadline, "peerd: {path} not 200 in time:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start with given ports and data dir (a fresh temp dir when `None`); waits for `/healthz`
    /// only (a node whose bootstrap peers are not up yet is rightly not ready).
    pub fn start_on(ip: &str, ports: Ports, data_dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Peerd {
        let http: SocketAddr = format!("{ip}:{}", ports.http).parse().unwrap();
        let metrics: SocketAddr = format!("{ip}:{}", ports.metrics).parse().unwrap();
        let peer: SocketAddr = format!("{ip}:{}", ports.peer).parse().unwrap();
        let p2p: SocketAddr = format!("{ip}:{}", ports.p2p).parse().unwrap();
        let tmp = data_dir.is_none().then(|| tempdir("pd-data"));
        let data = data_dir.map(Path::to_path_buf).unwrap_or_else(|| tmp.as_ref().unwrap().path().to_owned());
        let mut child = Command::new(env!("CARGO_BIN_EXE_peerd"))
            .arg("run")
            .args(["--http-addr", &http.to_string(), "--metrics-addr", &metrics.to_string()])
            .args(["--peer-addr", &peer.to_string()])
            .args(["--p2p-addr", &p2p.to_string(), "--data-dir", data.to_str().unwrap()])
            .args(args)
            .envs(env.iter().copied())
            .env("PEERD_HTTP__WORKERS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peerd");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("PEERD_TEST_LOG").is_some() {
                    eprintln!("[peerd] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let p = Peerd { child, http, peer, metrics, p2p, log, _data: tmp };
        p.wait_for("/healthz");
        p
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // try_wait needs &mut; use /proc instead to keep &self.
        let state = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        Ok(if state.contains("State:\tZ") || state.is_empty() {
            Some(std::process::ExitStatus::default())
        } else {
            None
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// A URL on the peer listener.
    pub fn peer_url(&self, path: &str) -> String {
        format!("http://{}{}", self.peer, path)
    }

    /// The Prometheus exposition text.
    pub fn metrics_text(&self) -> String {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics/prometheus", self.metrics)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sum of a metric's samples whose labels contain every `label="value"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics_text(), name, labels)
    }

    /// Resident set high-water mark (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: a node dying, not shutting down.
    pub fn stop_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

/// Stop a child by PID: SIGTERM (a graceful stop, which lets e.g. nginx's master stop its
/// workers), then SIGKILL after `grace`. Returns at once if it already exited.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Peerd {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Status of a GET with curl (None when the connection fails).
pub fn http_get_status(url: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).parse().ok().filter(|c| *c != 0)
}

/// A curl exchange: status, response headers (lowercased names) and body.
pub struct Exchange {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub curl_ok: bool,
}

impl Exchange {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// `curl` with a method and headers. Uses curl (not reqwest) so the raw HTTP is what a
/// third-party client sees, including aborted bodies (`curl_ok == false`).
pub fn curl(method: &str, url: &str, headers: &[(&str, &str)]) -> Exchange {
    let hdr_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--path-as-is", "--max-time", "60", "-D", hdr_file.path().to_str().unwrap()]);
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    let raw = std::fs::read_to_string(hdr_file.path()).unwrap_or_default();
    let mut lines = raw.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Exchange {
        status,
        headers,
        body: if method == "HEAD" { Vec::new() } else { out.stdout },
        curl_ok: out.status.success(),
    }
}

/// `len` bytes of a fixed, non-repeating-looking pattern (distinct per `shift`), for blobs.
pub fn pattern(len: u32, shift: u32) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> shift) as u8).collect()
}

/// Flags of a single-registry mirror of `registry` (plain HTTP) without containerd.
pub fn mirror_args(registry: &str) -> [&str; 6] {
    ["--mirror-host", registry, "--plain-http-host", registry, "--containerd-socket", "/nonexistent.sock"]
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// What a [`FakeUpstream`] answers.
pub enum Reply {
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Raw bytes, then close: not HTTP at all.
    Garbage(Vec<u8>),
    /// Accept and never answer.
    Hang,
    /// An HTTP answer whose body comes one byte every `every` (a trickling upstream).
    Trickle {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        every: Duration,
    },
}

impl Reply {
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Http { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }
    pub fn status(status: u16, headers: &[(&str, &str)]) -> Reply {
        Reply::Http {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
        }
    }
}

/// A request as the fake upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A hand-rolled HTTP/1.1 upstream on 127.0.0.1 (one request per connection), for behaviour a
/// real registry will not produce: garbage, hangs, oversized manifests, token challenges.
pub struct FakeUpstream {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeUpstream {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(10_000) {
                let Ok(mut stream) = stream else { continue };
                let handler = handler.clone();
                let log = log.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_owned();
                    let target = parts.next().unwrap_or("").to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_owned(), v.trim().to_owned()));
                        }
                    }
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len.min(1 << 20)];
                    let _ = reader.read_exact(&mut body);
                    let req = Seen { method: method.clone(), target, headers, body };
                    log.lock().unwrap().push(req.clone());
                    match handler(&req) {
                        Reply::Hang => {
                            let mut buf = [0u8; 1];
                            let _ = stream.read(&mut buf);
                            std::thread::sleep(Duration::from_secs(30));
                        }
                        Reply::Garbage(bytes) => {
                            let _ = stream.write_all(&bytes);
                        }
                        Reply::Trickle { status, headers, body, every } => {
                            let mut head = format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                                body.len()
                            );
                            for (k, v) in headers {
                                head.push_str(&format!("{k}: {v}\r\n"));
                            }
                            head.push_str("\r\n");
                            if stream.write_all(head.as_bytes()).is_err() {
                                return;
                            }
                            for b in body {
                                std::thread::sleep(every);
                                // The client hung up: stop.
                                if stream.write_all(&[b]).is_err() {
                                    return;
                                }
                            }
                        }
                        Reply::Http { status, headers, body } => {
                            let mut head = format!(
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                                body.len()
                            );
                            for (k, v) in headers {
                                head.push_str(&format!("{k}: {v}\r\n"));
                            }
                            head.push_str("\r\n");
                            let _ = stream.write_all(head.as_bytes());
                            if method != "HEAD" {
                                let _ = stream.write_all(&body);
                            }
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A TCP proxy in front of a server that counts the bytes the server sends (what a registry's
/// egress meter would say) and can cap their rate, all connections together.
pub struct CountingProxy {
    pub addr: String,
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes per second (0: unlimited).
    rate: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl CountingProxy {
    pub fn start(target: &str, rate: u64) -> CountingProxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sent = Arc::new(AtomicU64::new(0));
        let rate = Arc::new(AtomicU64::new(rate));
        let stop = Arc::new(AtomicBool::new(false));
        // The pacing clock: (start, bytes allowed since start at the current rate).
        let pace = Arc::new(Mutex::new((Instant::now(), 0u64)));
        let (target, s, r, st) = (target.to_owned(), sent.clone(), rate.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                client.set_nonblocking(false).unwrap();
                let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_r, &mut s_w);
                    let _ = s_w.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_r, mut c_w) = (server, client);
                let (s, r, pace) = (s.clone(), r.clone(), pace.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match s_r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        s.fetch_add(n as u64, Ordering::Relaxed);
                        let rate = r.load(Ordering::Relaxed);
                        if rate > 0 {
                            let due = {
                                let mut p = pace.lock().unwrap();
                                if p.0.elapsed()
                                    > Duration::from_millis(500) + Duration::from_secs_f64(p.1 as f64 / rate as f64)
                                {
                                    *p = (Instant::now(), 0); // idle for a while: no burst credit
                                }
                                p.1 += n as u64;
                                p.0 + Duration::from_secs_f64(p.1 as f64 / rate as f64)
                            };
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        if c_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CountingProxy { addr, sent, rate, stop }
    }

    /// Bytes the server has sent through the proxy.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_rate(&self, bytes_per_s: u64) {
        self.rate.store(bytes_per_s, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One node of a test cluster: peerd, its containerd, and a hosts dir pointing at the peerd.
pub struct Node {
    pub peerd: Peerd,
    pub containerd: Containerd,
    pub hosts: PathBuf,
}

/// Environment for cluster nodes: short timers so tests see DHT changes quickly.
pub fn cluster_env(secret: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("PEERD_P2P__SECRET", secret),
        ("PEERD_P2P__RESOLVE_TIMEOUT", "500ms"),
        ("PEERD_P2P__BOOTSTRAP_INTERVAL", "1s"),
        ("PEERD_P2P__PROVIDER_TTL", "10s"),
        ("PEERD_P2P__PROVIDER_REPUBLISH", "4s"),
        ("PEERD_LOG__LEVEL", "info,peerd=debug"),
    ]
}

/// Start nodes on `ips` (same ports everywhere, as in a DaemonSet), each with its own
/// containerd, mirroring `registry` and bootstrapping from the nodes on `boot_ips`.
pub fn start_nodes(
    work: &Path,
    registry: &str,
    ips: &[&str],
    boot_ips: &[&str],
    ports: Ports,
    env: &[(&str, &str)],
) -> Vec<Node> {
    let boot: Vec<String> = boot_ips.iter().map(|ip| format!("{ip}:{}", ports.p2p)).collect();
    ips.iter()
        .map(|ip| {
            let containerd = Containerd::start(&work.join(format!("ctr-{ip}")));
            let mut args = vec!["--mirror-host", registry, "--plain-http-host", registry];
            args.extend(["--containerd-socket", containerd.socket.to_str().unwrap()]);
            for b in &boot {
                args.extend(["--bootstrap-peer", b.as_str()]);
            }
            let peerd = Peerd::start_on(ip, ports, None, &args, env);
            let hosts = work.join(format!("hosts-{ip}"));
            hosts_toml(&hosts, registry, &peerd.http.to_string());
            Node { peerd, containerd, hosts }
        })
        .collect::<Vec<_>>()
}

pub fn all_ready(nodes: &[Node]) {
    for n in nodes {
        n.peerd.wait_ready();
    }
}

pub fn get_json(url: &str) -> serde_json::Value {
    let out = Command::new("curl").args(["-sf", "--max-time", "10", url]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

pub fn peer_id(p: &Peerd) -> String {
    get_json(&format!("http://{}/debug/p2p", p.http))["peer_id"].as_str().unwrap_or("").to_owned()
}

/// Peer ids a node resolves `key` to.
pub fn resolves(p: &Peerd, key: &str) -> Vec<String> {
    let v = get_json(&format!("http://{}/debug/resolve?key={key}", p.http));
    v["peers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Poll `f` every 200 ms until it holds; panics after `timeout`.
pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Bytes a node served that it fetched for the request: straight from the upstream, or through
/// a swarm download (chunks from the upstream and peers).
pub fn fetched_bytes(p: &Peerd) -> f64 {
    p.metric("peerd_served_bytes_total", &["source=\"upstream\""])
        + p.metric("peerd_served_bytes_total", &["source=\"swarm\""])
}
