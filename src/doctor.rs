//! `peerd doctor`: "is it working?" on one node. Each check says ✓ or ✗, what it saw, and for a
//! ✗ the one thing to do about it; `--json` gives the same as data. The checks follow a pull's
//! path: containerd → its config_path → the hosts.toml per registry → peerd's mirror →
//! containerd's content (fast path or gRPC) → peers and the DHT → the upstream registries →
//! content actually received from a peer.
//!
//! Every probe is bounded by [`Options::timeout`]; nothing is written anywhere.

use crate::hosts::containerd_config::{ConfigError, ConfigPathSource, ContainerdConfig, DEFAULT_CONFIG_PATH_2X};
use crate::hosts::{marked_registries, DEFAULT_DIR, FILE};
use crate::peer::PEER_FETCH_BYTES;
use crate::swarm::SWARM_CHUNK_BYTES;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Key looked up to see the DHT answer (nobody provides it; the lookup must still complete).
const PROBE_KEY: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

pub struct Options {
    /// This node's mirror (`http.addr`), e.g. `http://127.0.0.1:5000`.
    pub mirror: String,
    /// This node's metrics listener, e.g. `http://127.0.0.1:5004`.
    pub metrics: String,
    pub containerd_socket: PathBuf,
    pub containerd_config: PathBuf,
    /// containerd's content store; default from the config's `root`.
    pub content_dir: Option<PathBuf>,
    /// Where to look for hosts.toml files instead of containerd's config_path.
    pub certs_dir: Option<PathBuf>,
    /// Registries that must be mirrored; default: those with a peerd hosts.toml.
    pub mirror_hosts: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, serde::Serialize)]
pub struct Check {
    /// Stable name: `containerd`, `config_path`, `hosts_toml`, `mirror`, `content`, `p2p_peers`,
    /// `dht_lookup`, `upstream`, `peer_transfer`.
    pub id: &'static str,
    /// The registry a per-registry check is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// For a failed check: what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Every check passed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn pass(id: &'static str, registry: Option<&str>, detail: String) -> Check {
    Check { id, registry: registry.map(str::to_owned), ok: true, detail, fix: None }
}

fn fail(id: &'static str, registry: Option<&str>, detail: String, fix: impl Into<String>) -> Check {
    Check { id, registry: registry.map(str::to_owned), ok: false, detail, fix: Some(fix.into()) }
}

/// `(major, minor)` of a containerd version string such as `1.6.20~ds1` or `v2.1.0`.
pub fn containerd_release(version: &str) -> Option<(u64, u64)> {
    let mut it = version.trim_start_matches('v').split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

async fn containerd_version(socket: &Path, timeout: Duration) -> Result<String, String> {
    let endpoint = tonic::transport::Endpoint::try_from("http://[::]").map_err(|e| e.to_string())?;
    let path = socket.to_owned();
    let channel = endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))?;
    let mut client = containerd_client::services::v1::version_client::VersionClient::new(channel);
    let v = client.version(()).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?.into_inner();
    Ok(v.version)
}

/// A hosts.toml as far as the doctor cares.
struct HostsFile {
    path: PathBuf,
    server: Option<String>,
    /// `[host]` URLs in file order (the order containerd tries them), without a trailing `/`.
    hosts: Vec<String>,
    /// Those of the hosts that lack the `pull` capability.
    no_pull: Vec<String>,
}

fn read_hosts_file(path: &Path) -> Option<Result<HostsFile, String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = match toml::from_str::<toml::Table>(&text) {
        Ok(t) => t,
        Err(e) => return Some(Err(format!("{}: {}", path.display(), e.message()))),
    };
    let table = t.get("host").and_then(toml::Value::as_table).cloned().unwrap_or_default();
    // The parsed table is sorted; the file's order comes from its `[host."..."]` headers.
    let mut keys: Vec<&String> =
        host_headers(&text).iter().filter_map(|h| table.get_key_value(h).map(|(k, _)| k)).collect();
    keys.dedup();
    keys.extend(table.keys().filter(|k| !keys.contains(k)).collect::<Vec<_>>());
    let trim = |k: &String| k.trim_end_matches('/').to_owned();
    let no_pull = table
        .iter()
        .filter(|(_, v)| {
            // containerd's default when `capabilities` is absent: pull, resolve, push.
            v.get("capabilities")
                .and_then(toml::Value::as_array)
                .is_some_and(|caps| !caps.iter().any(|c| c.as_str() == Some("pull")))
        })
        .map(|(k, _)| trim(k))
        .collect();
    Some(Ok(HostsFile {
        path: path.to_owned(),
        server: t.get("server").and_then(toml::Value::as_str).map(str::to_owned),
        hosts: keys.into_iter().map(trim).collect(),
        no_pull,
    }))
}

/// Keys of `[host."<key>"]` / `[host.'<key>']` headers (sub-tables included), in file order.
fn host_headers(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("[host.") else { continue };
        let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
        if let Some(end) = rest[1..].find(quote) {
            let key = rest[1..1 + end].to_owned();
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

/// The file containerd would use for `registry`: its own directory in the first config_path
/// directory that has one, else `_default`.
fn find_hosts_file(dirs: &[PathBuf], registry: &str) -> Option<Result<HostsFile, String>> {
    dirs.iter()
        .find_map(|d| read_hosts_file(&d.join(registry).join(FILE)))
        .or_else(|| dirs.iter().find_map(|d| read_hosts_file(&d.join(DEFAULT_DIR).join(FILE))))
}

struct Http {
    local: reqwest::Client,
    remote: reqwest::Client,
}

impl Http {
    fn new(timeout: Duration) -> Result<Self, String> {
        let b = || reqwest::Client::builder().timeout(timeout).connect_timeout(timeout);
        Ok(Http {
            // Node-local listeners never go through a proxy; upstreams honour the node's.
            local: b().no_proxy().build().map_err(|e| e.to_string())?,
            remote: b().build().map_err(|e| e.to_string())?,
        })
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let resp = client.get(url).send().await.map_err(|e| describe(&e))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| describe(&e))?;
    Ok((status, body.chars().take(64 << 10).collect()))
}

/// A reqwest error with its causes (the top level alone says only "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The config_path check, and the directories containerd reads hosts.toml files from.
fn config_path_check(
    path: &Path,
    config: &Result<ContainerdConfig, ConfigError>,
    release: Option<(u64, u64)>,
) -> (Vec<PathBuf>, Check) {
    let name = path.display();
    let set_it = format!(
        "set config_path = \"/etc/containerd/certs.d\" under [plugins.\"io.containerd.grpc.v1.cri\".registry] \
         (containerd 1.x) or [plugins.\"io.containerd.cri.v1.images\".registry] (2.x) in {name} and restart containerd"
    );
    let v2x = release.is_some_and(|r| r.0 >= 2);
    let default_2x = || DEFAULT_CONFIG_PATH_2X.to_owned();
    // (config_path in effect, how it was found, the parsed config if any)
    let (path_str, how, c) = match config {
        Ok(c) => match (&c.config_path, c.config_path_source) {
            (Some(p), ConfigPathSource::Explicit) => (p.clone(), format!("set, config version {}", c.version), Some(c)),
            (Some(p), _) => (p.clone(), "containerd 2.x's default".to_owned(), Some(c)),
            // containerd 2.x migrates a version 1/2 file and applies its own default.
            (None, _) if v2x => (default_2x(), "unset: containerd 2.x's default".to_owned(), Some(c)),
            (None, _) => {
                let detail = format!("{name} sets no registry config_path: containerd ignores every hosts.toml");
                return (Vec::new(), fail("config_path", None, detail, set_it));
            }
        },
        Err(ConfigError::NotFound(_)) if v2x => (default_2x(), format!("no {name}: containerd 2.x's default"), None),
        Err(e @ ConfigError::NotFound(_)) => {
            let detail = format!("{e}: containerd 1.x then has no config_path and ignores every hosts.toml");
            let fix = format!("pass --containerd-config with containerd's config, or {set_it}");
            return (Vec::new(), fail("config_path", None, detail, fix));
        }
        Err(e) => {
            let fix = format!("fix {name} (containerd cannot read it either)");
            return (Vec::new(), fail("config_path", None, e.to_string(), fix));
        }
    };
    let dirs: Vec<PathBuf> = path_str.split(':').filter(|d| !d.trim().is_empty()).map(PathBuf::from).collect();
    let list = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let mut detail = format!("config_path {path_str:?} ({how}): {list}");
    let local_pull = c.and_then(|c| c.use_local_image_pull) == Some(true);
    let mirrors = c.map(|c| c.inline_mirrors.join(", ")).unwrap_or_default();
    let check = if dirs.len() > 1 && release.is_some_and(|r| r >= (2, 1)) && !local_pull {
        detail.push_str("; containerd 2.1+ pulls through its transfer service, which reads this list as one path and skips every mirror");
        let fix = "set use_local_image_pull = true under [plugins.\"io.containerd.cri.v1.images\"], or make config_path a single directory, and restart containerd";
        fail("config_path", None, detail, fix)
    } else if !mirrors.is_empty() && release.is_some_and(|r| r >= (2, 2)) {
        detail.push_str(&format!("; inline registry.mirrors for {mirrors} as well, which containerd 2.2 refuses"));
        fail(
            "config_path",
            None,
            detail,
            format!("move the inline mirrors of {name} into hosts.toml files and restart containerd"),
        )
    } else {
        if !mirrors.is_empty() {
            detail.push_str(&format!(
                "; note: inline registry.mirrors for {mirrors} (refused by containerd 2.2 together with config_path)"
            ));
        }
        pass("config_path", None, detail)
    };
    (dirs, check)
}

/// Run every check.
pub async fn run(o: &Options) -> Report {
    let mut checks = Vec::new();
    let http = match Http::new(o.timeout) {
        Ok(h) => h,
        Err(e) => {
            checks.push(fail("mirror", None, format!("cannot build an HTTP client: {e}"), "report this as a bug"));
            return Report { ok: false, checks };
        }
    };
    let mirror = o.mirror.trim_end_matches('/');
    let metrics = o.metrics.trim_end_matches('/');

    // 1. containerd
    let socket = o.containerd_socket.display();
    let version = match containerd_version(&o.containerd_socket, o.timeout).await {
        Ok(v) => {
            checks.push(pass("containerd", None, format!("containerd {v} at {socket}")));
            Some(v)
        }
        Err(e) => {
            checks.push(fail(
                "containerd",
                None,
                format!("cannot reach containerd at {socket}: {e}"),
                "start containerd, or pass --containerd-socket with its socket (peerd needs it mounted read-only)",
            ));
            None
        }
    };
    let release = version.as_deref().and_then(containerd_release);

    // 2. config_path
    let config = ContainerdConfig::load(&o.containerd_config);
    let (mut dirs, check) = config_path_check(&o.containerd_config, &config, release);
    checks.push(check);
    if let Some(d) = &o.certs_dir {
        dirs.retain(|x| x != d);
        dirs.insert(0, d.clone());
    }

    // 3. hosts.toml per mirrored registry
    let (registries, from_marker) = if o.mirror_hosts.is_empty() {
        let mut found: Vec<String> = dirs.iter().flat_map(|d| marked_registries(d)).collect();
        found.dedup();
        (found, true)
    } else {
        (o.mirror_hosts.clone(), false)
    };
    let install_hint = |r: &str| {
        let reg = if r == DEFAULT_DIR { "--default-host".to_owned() } else { format!("--registry {r}") };
        format!("run `peerd hosts install --mirror {mirror} {reg}` (the chart's init container does this)")
    };
    let mut servers: Vec<(String, String)> = Vec::new();
    if registries.is_empty() {
        let where_ = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        checks.push(fail(
            "hosts_toml",
            None,
            format!(
                "no hosts.toml written by peerd in {}",
                if where_.is_empty() { "any config_path directory" } else { &where_ }
            ),
            format!("{}, or name the registries with --mirror-host", install_hint("<host>")),
        ));
    }
    for r in &registries {
        let default_server = match crate::oci::parse_ns(Some(r), "") {
            Ok(reg) => format!("https://{}", reg.api_host()),
            Err(_) => format!("https://{r}"),
        };
        let server = match find_hosts_file(&dirs, r) {
            None => {
                let where_ = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
                checks.push(fail(
                    "hosts_toml",
                    Some(r),
                    format!("no {r}/hosts.toml (nor _default) in {where_}"),
                    install_hint(r),
                ));
                (!from_marker).then_some(default_server)
            }
            Some(Err(e)) => {
                checks.push(fail("hosts_toml", Some(r), format!("not valid TOML: {e}"), install_hint(r)));
                None
            }
            Some(Ok(f)) => {
                checks.push(match f.hosts.iter().position(|h| h == mirror) {
                    Some(_) if f.no_pull.iter().any(|h| h == mirror) => fail(
                        "hosts_toml",
                        Some(r),
                        format!("{} lists {mirror} without the pull capability", f.path.display()),
                        install_hint(r),
                    ),
                    Some(pos) => {
                        let order = if pos == 0 {
                            "first".to_owned()
                        } else {
                            format!("host #{} of {}", pos + 1, f.hosts.len())
                        };
                        pass("hosts_toml", Some(r), format!("{} points at {mirror} ({order})", f.path.display()))
                    }
                    None => fail(
                        "hosts_toml",
                        Some(r),
                        format!("{} does not list {mirror} (it lists: {})", f.path.display(), f.hosts.join(", ")),
                        install_hint(r),
                    ),
                });
                Some(f.server.unwrap_or(default_server))
            }
        };
        if let Some(s) = server.filter(|_| r != DEFAULT_DIR) {
            servers.push((r.clone(), s));
        }
    }

    // 4. the mirror
    let v2 = get(&http.local, &format!("{mirror}/v2/")).await;
    let ready = get(&http.local, &format!("{mirror}/readyz")).await;
    let down =
        "start peerd (kubectl -n <namespace> get pods -o wide), or pass --mirror with its --http-addr".to_owned();
    checks.push(match (&v2, &ready) {
        (Ok((200, _)), Ok((200, _))) => pass("mirror", None, format!("{mirror}/v2/ and /readyz answer 200")),
        (Ok((200, _)), Ok((s, body))) => fail(
            "mirror",
            None,
            format!("{mirror}/readyz answers {s}: {}", body.trim()),
            "peerd is up but not ready: it has bootstrap peers but reaches none, see the p2p checks below",
        ),
        (Ok((s, _)), _) => fail("mirror", None, format!("{mirror}/v2/ answers {s}, not 200"), down.clone()),
        (Err(e), _) => fail("mirror", None, format!("{mirror} does not answer: {e}"), down.clone()),
    });

    // 5. the content directory
    let content =
        o.content_dir.clone().or_else(|| config.as_ref().ok().map(ContainerdConfig::content_dir)).unwrap_or_else(
            || PathBuf::from(crate::hosts::containerd_config::DEFAULT_ROOT).join("io.containerd.content.v1.content"),
        );
    let blobs = content.join("blobs").join("sha256");
    let discards = config.as_ref().ok().and_then(|c| c.discard_unpacked_layers) == Some(true);
    checks.push(match std::fs::read_dir(&blobs) {
        _ if discards => fail(
            "content",
            None,
            format!("{} sets discard_unpacked_layers = true: containerd drops layers once unpacked, so this node has none to serve", o.containerd_config.display()),
            "set discard_unpacked_layers = false (EKS sets it true) and restart containerd",
        ),
        Ok(d) => pass("content", None, format!("{} readable ({} blobs): fast path", blobs.display(), d.take(1_000_000).count())),
        Err(e) if version.is_some() => pass(
            "content",
            None,
            format!("{} not readable ({e}): content is read through containerd's gRPC API (gRPC fallback)", blobs.display()),
        ),
        Err(e) => fail(
            "content",
            None,
            format!("{} not readable ({e}) and containerd not reachable: this node cannot serve its content", blobs.display()),
            "mount containerd's content directory read-only (or pass --containerd-content-dir) and fix the containerd check",
        ),
    });

    // 6. peers and the DHT (the debug pages are always on the node-local front end)
    let metrics_down = format!(
        "peerd's metrics listener does not answer at {metrics}: start peerd, or pass --metrics with its --metrics-addr"
    );
    let debug_down = format!("peerd does not answer at {mirror}: start peerd, or pass --mirror with its --http-addr");
    let status = get(&http.local, &format!("{mirror}/debug/p2p")).await;
    let routing_peers = match &status {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(body) {
            Ok(v) => {
                let connected = v["connected_peers"].as_u64().unwrap_or(0);
                let table = v["routing_table_peers"].as_u64().unwrap_or(0);
                checks.push(if connected > 0 {
                    pass("p2p_peers", None, format!("{connected} peers connected, {table} in the routing table (peer id {})", v["peer_id"].as_str().unwrap_or("?")))
                } else {
                    fail(
                        "p2p_peers",
                        None,
                        format!("no peer connected ({table} in the routing table)"),
                        "other nodes must run peerd with the same cluster secret and reach this node's p2p port (5003) and peer port (5001); check p2p.bootstrap_dns / --bootstrap-peer and P2PFailed events",
                    )
                });
                table
            }
            Err(e) => {
                checks.push(fail("p2p_peers", None, format!("/debug/p2p is not JSON: {e}"), debug_down.clone()));
                0
            }
        },
        Ok((404, _)) => {
            checks.push(fail(
                "p2p_peers",
                None,
                "p2p is off: this node is a single-node mirror".into(),
                "give every node the same cluster secret (p2p.secret, PEERD_P2P__SECRET or --secret-file; the chart does), and do not pass --no-p2p",
            ));
            0
        }
        Ok((s, body)) => {
            checks.push(fail(
                "p2p_peers",
                None,
                format!("/debug/p2p answers {s}: {}", body.trim()),
                "see peerd's log for the router error",
            ));
            0
        }
        Err(e) => {
            checks.push(fail("p2p_peers", None, format!("{mirror}/debug/p2p: {e}"), debug_down.clone()));
            0
        }
    };
    let started = Instant::now();
    let lookup = get(&http.local, &format!("{mirror}/debug/resolve?key={PROBE_KEY}")).await;
    let took = started.elapsed().as_secs_f64();
    checks.push(match lookup {
        Ok((200, body)) if routing_peers > 0 => {
            let n =
                serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["peers"].as_array().map(Vec::len));
            match n {
                Some(n) => pass(
                    "dht_lookup",
                    None,
                    format!("a lookup answered in {took:.2} s ({n} providers for the probe key)"),
                ),
                None => fail("dht_lookup", None, format!("/debug/resolve is not JSON: {body}"), "see peerd's log"),
            }
        }
        Ok((200, _)) => fail(
            "dht_lookup",
            None,
            "the lookup had nobody to ask: the routing table is empty".into(),
            "fix the p2p_peers check first",
        ),
        Ok((s, body)) => fail(
            "dht_lookup",
            None,
            format!("/debug/resolve answers {s}: {}", body.trim()),
            "fix the p2p_peers check first",
        ),
        Err(e) => fail("dht_lookup", None, format!("{mirror}/debug/resolve: {e}"), debug_down),
    });

    // 7. the upstreams, in parallel
    let probes = servers.iter().map(|(r, server)| {
        let client = &http.remote;
        async move {
            let url = format!("{}/v2/", server.trim_end_matches('/'));
            match client.get(&url).send().await {
                Ok(resp) => pass("upstream", Some(r), format!("{url} answers HTTP {}", resp.status().as_u16())),
                Err(e) => fail(
                    "upstream",
                    Some(r),
                    format!("{url}: {}", describe(&e)),
                    "this node cannot reach the registry: check DNS, the egress firewall and HTTPS_PROXY/NO_PROXY",
                ),
            }
        }
    });
    checks.extend(futures_util::future::join_all(probes).await);

    // 8. bytes received from peers
    checks.push(match get(&http.local, &format!("{metrics}/metrics/prometheus")).await {
        Ok((200, text)) => {
            let direct = sum_metric(&text, PEER_FETCH_BYTES, None);
            let swarm = sum_metric(&text, SWARM_CHUNK_BYTES, Some("source=\"peer\""));
            if direct + swarm > 0.0 {
                pass("peer_transfer", None, format!("{} bytes received from peers since peerd started", direct + swarm))
            } else {
                fail(
                    "peer_transfer",
                    None,
                    "no content received from a peer since peerd started".into(),
                    "normal on a fresh node or cluster: pull an image another node already holds; if its bytes still come from the registry, check /debug/resolve?key=<digest> and the peer port between nodes",
                )
            }
        }
        Ok((s, _)) => fail("peer_transfer", None, format!("{metrics}/metrics/prometheus answers {s}"), metrics_down.clone()),
        Err(e) => fail("peer_transfer", None, format!("{metrics}/metrics/prometheus: {e}"), metrics_down),
    });

    Report { ok: checks.iter().all(|c| c.ok), checks }
}

/// Sum of a Prometheus metric's samples (only those carrying `label` when given).
fn sum_metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| label.is_none_or(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The report for a terminal: one line per check, the fix under each ✗.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.checks {
        let name = match &c.registry {
            Some(reg) => format!("{} {reg}", c.id),
            None => c.id.to_owned(),
        };
        out.push_str(&format!("{} {name}: {}\n", if c.ok { "✓" } else { "✗" }, c.detail));
        if let Some(f) = &c.fix {
            out.push_str(&format!("    fix: {f}\n"));
        }
    }
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    out.push_str(&if failed == 0 {
        "all checks passed\n".to_owned()
    } else {
        format!("{failed} of {} checks failed\n", r.checks.len())
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_releases() {
        assert_eq!(containerd_release("1.6.20~ds1"), Some((1, 6)));
        assert_eq!(containerd_release("v2.1.0"), Some((2, 1)));
        assert_eq!(containerd_release("2.2.0-rc.1"), Some((2, 2)));
        assert_eq!(containerd_release("dev"), None);
    }

    #[test]
    fn config_path_by_containerd_release() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("config.toml");
        let check = |text: &str, release| {
            std::fs::write(&f, text).unwrap();
            config_path_check(&f, &ContainerdConfig::load(&f), release)
        };
        let list = "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\nconfig_path = '/a:/b'\n";
        let (dirs, c) = check(list, Some((2, 1)));
        assert!(!c.ok && c.fix.unwrap().contains("use_local_image_pull = true"));
        assert_eq!(dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(check(list, Some((2, 0))).1.ok, "2.0 reads the list itself");
        let local = format!("{list}[plugins.'io.containerd.cri.v1.images']\nuse_local_image_pull = true\n");
        assert!(check(&local, Some((2, 1))).1.ok);
        let none = "version = 2\n";
        let (dirs, c) = check(none, Some((1, 6)));
        assert!(!c.ok && dirs.is_empty() && c.fix.unwrap().contains("config_path"));
        let (dirs, c) = check(none, Some((2, 0)));
        assert!(c.ok && dirs.len() == 2, "2.x migrates and applies its default: {}", c.detail);
        let mirrors = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/a\"\n\
                       [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n";
        assert!(!check(mirrors, Some((2, 2))).1.ok);
        let (_, c) = check(mirrors, Some((1, 7)));
        assert!(c.ok && c.detail.contains("docker.io"));
        let missing = d.path().join("missing.toml");
        let c = config_path_check(&missing, &ContainerdConfig::load(&missing), None).1;
        assert!(!c.ok && c.fix.unwrap().contains("--containerd-config"));
        assert!(config_path_check(&missing, &ContainerdConfig::load(&missing), Some((2, 0))).1.ok);
        // 2.1 with no config: its default is a list, which its transfer service skips.
        assert!(!config_path_check(&missing, &ContainerdConfig::load(&missing), Some((2, 1))).1.ok);
    }

    #[test]
    fn sums_only_the_named_metric() {
        let text = "# HELP x\npeerd_peer_fetch_bytes_total 10\npeerd_peer_fetch_bytes_total_other 5\n\
                    peerd_swarm_chunk_bytes_total{source=\"peer\"} 7\npeerd_swarm_chunk_bytes_total{source=\"upstream\"} 9\n";
        assert_eq!(sum_metric(text, PEER_FETCH_BYTES, None), 10.0);
        assert_eq!(sum_metric(text, SWARM_CHUNK_BYTES, Some("source=\"peer\"")), 7.0);
    }

    #[test]
    fn finds_a_registry_file_then_default_in_config_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(b.path().join("ghcr.io")).unwrap();
        std::fs::write(b.path().join("ghcr.io/hosts.toml"), "server = \"https://ghcr.io\"\n[host.\"http://m:1/\"]\n")
            .unwrap();
        std::fs::create_dir_all(a.path().join(DEFAULT_DIR)).unwrap();
        std::fs::write(a.path().join(DEFAULT_DIR).join(FILE), "[host.\"http://m:2\"]\n").unwrap();
        let dirs = [a.path().to_owned(), b.path().to_owned()];
        let f = find_hosts_file(&dirs, "ghcr.io").unwrap().unwrap();
        assert_eq!((f.server.as_deref(), f.hosts), (Some("https://ghcr.io"), vec!["http://m:1".to_owned()]));
        // File order, not the parsed table's (sorted) order; capabilities read.
        let p = a.path().join("order.toml");
        std::fs::write(
            &p,
            "[host.'https://z']\n  capabilities = ['pull']\n[host.\"https://a\"]\n  capabilities = ['resolve']\n[host.\"https://a\".header]\n  x = '1'\n",
        )
        .unwrap();
        let f = read_hosts_file(&p).unwrap().unwrap();
        assert_eq!(
            (f.hosts, f.no_pull),
            (vec!["https://z".to_owned(), "https://a".to_owned()], vec!["https://a".to_owned()])
        );
        assert_eq!(find_hosts_file(&dirs, "quay.io").unwrap().unwrap().hosts, ["http://m:2"]);
        assert!(find_hosts_file(&dirs[1..], "quay.io").is_none());
    }
}
