//! One config tree, loaded once in `main`: built-in defaults (`config/peerd.toml`, embedded) →
//! `--config` file → `PEERD_*` environment → flags. Nothing else reads the environment.

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The commented defaults, compiled in.
pub const DEFAULTS_TOML: &str = include_str!("../config/peerd.toml");
/// Prefix of environment overrides; `__` separates nesting (`PEERD_HTTP__ADDR`).
pub const ENV_PREFIX: &str = "PEERD_";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub peer: PeerConfig,
    pub metrics: MetricsConfig,
    pub containerd: ContainerdConfig,
    pub registry: RegistryConfig,
    pub upstream: UpstreamConfig,
    pub p2p: P2pConfig,
    pub kubernetes: KubernetesConfig,
    pub blobs: BlobsConfig,
    pub swarm: SwarmConfig,
    pub preheat: PreheatConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// A second node-local listener with the same front end (Azure/peerd's :30000); "" = off.
    pub compat_addr: String,
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    /// A connection whose client takes no bytes for this long is closed (TCP_USER_TIMEOUT).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Content bodies streaming at once (front end and peer listener together); more get 503.
    pub max_transfers: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub addr: SocketAddr,
    /// Also serve `/debug/*` here (they are always on the node-local front end).
    pub debug: bool,
    /// Serve the HTML debug page `/debug/web` here.
    pub debug_web: bool,
}

/// Preheat: images written into this node's containerd ahead of a rollout (`crate::preheat`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatConfig {
    pub enabled: bool,
    /// Preheats running at once on this node (more wait in a queue of 4× this, then 503).
    pub max_concurrent: usize,
    /// Bytes per second all preheats of this node read together (0: unlimited).
    pub rate: u64,
    /// How long the containerd lease keeps preheated content from garbage collection.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// containerd namespace written into ("" = the first of `containerd.namespaces`).
    pub namespace: String,
    /// Images in one request.
    pub max_images: usize,
    /// A preheat still running after this long is failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// The listener other nodes fetch from; every request on it is authenticated.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub addr: SocketAddr,
}

impl HttpConfig {
    /// The compatibility listener's address, if one is configured.
    pub fn compat(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let a = self.compat_addr.trim();
        if a.is_empty() || a == "off" {
            return Ok(None);
        }
        a.parse().map(Some).map_err(|e| ConfigError::Invalid {
            key: "http.compat_addr",
            reason: format!("{a:?}: {e} (expected IP:PORT, e.g. 127.0.0.1:30000, or \"\" for off)"),
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    pub namespaces: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// containerd's content root (`<root>/io.containerd.content.v1.content`) as mounted here;
    /// empty: ask containerd (introspection API).
    pub content_dir: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub default_ns: String,
    pub hosts: Vec<String>,
    pub max_manifest_bytes: u64,
    pub local_tags_on_upstream_error: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub plain_http_hosts: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub failure_cooldown: Duration,
    /// Allow upstream connections (and redirects, token realms) to loopback addresses even when
    /// no configured registry is on loopback.
    pub allow_loopback: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    pub enabled: bool,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub secret_file: String,
    pub secret: String,
    /// Run p2p without a cluster secret: anyone who reaches the peer and p2p ports can join
    /// and read content. Only for isolated test networks.
    pub insecure_no_secret: bool,
    /// Most established inbound libp2p connections, in all and per peer, and inbound
    /// connections still in their handshake.
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    pub bootstrap_peers: Vec<String>,
    pub bootstrap_dns: String,
    #[serde(with = "humantime_serde")]
    pub bootstrap_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub resolve_timeout: Duration,
    pub max_peers: usize,
    #[serde(with = "humantime_serde")]
    pub hedge_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub provider_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub provider_republish: Duration,
    pub max_provided_keys: usize,
    pub resolve_tags: bool,
    pub tags_on_upstream_error: bool,
}

impl P2pConfig {
    /// The cluster secret's bytes, from `secret_file` or `secret`; `None` when neither is set.
    pub fn secret_bytes(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if !self.secret_file.is_empty() {
            let data = std::fs::read(&self.secret_file).map_err(|e| ConfigError::Invalid {
                key: "p2p.secret_file",
                reason: format!("{}: {e}", self.secret_file),
            })?;
            let trimmed = data.trim_ascii();
            if trimmed.len() < MIN_SECRET_LEN {
                return Err(ConfigError::Invalid {
                    key: "p2p.secret_file",
                    reason: format!(
                        "{} holds {} characters; the cluster secret must be at least {MIN_SECRET_LEN}",
                        self.secret_file,
                        trimmed.len()
                    ),
                });
            }
            return Ok(Some(trimmed.to_vec()));
        }
        Ok((!self.secret.is_empty()).then(|| self.secret.as_bytes().to_vec()))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsConfig {
    pub enabled: bool,
    pub allowed_hosts: Vec<String>,
    pub cache_dir: String,
    pub chunk_size: u64,
    pub max_cache_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub revalidate_after: Duration,
    pub prefetch: bool,
    pub prefetch_workers: usize,
    pub parallel_chunks: usize,
    pub coalesce: bool,
    #[serde(with = "humantime_serde")]
    pub coalesce_gather: Duration,
    /// Most bytes of one file fetched ahead of its readers (also at most half the cache).
    pub prefetch_max_bytes: u64,
    /// A file's prefetch stops when no client has read it for this long.
    #[serde(with = "humantime_serde")]
    pub prefetch_idle: Duration,
    /// Chunk fetches in flight per upstream host (of the node's 64).
    pub per_host_fetches: usize,
    /// An upstream chunk fetch that receives no byte for this long fails.
    #[serde(with = "humantime_serde")]
    pub progress_timeout: Duration,
    /// An upstream chunk fetch that has not completed in this long fails (a trickle).
    #[serde(with = "humantime_serde")]
    pub chunk_timeout: Duration,
    /// RFC 5861 stale-if-error: while the upstream is unreachable or answers 5xx/429, serve a
    /// file a cluster node validated within this long. `0s`: off.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
}

/// Swarming: blobs shared while they download, each part fetched from upstream once per cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmConfig {
    pub enabled: bool,
    pub spool_dir: String,
    pub max_spool_bytes: u64,
    /// Chunks of downloads in progress kept in memory instead of the spool file, all
    /// downloads together (0: every chunk to the file).
    pub memory_spool_bytes: u64,
    pub min_size: u64,
    pub chunk_size: u64,
    /// A blob of few chunks gets larger ones, up to this (see [`SwarmConfig::chunk_size_for`]).
    pub max_chunk_size: u64,
    #[serde(with = "humantime_serde")]
    pub gather: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    pub parallel: usize,
    pub upstream_parallel: usize,
    pub per_peer: usize,
    pub max_fetches: usize,
    pub upload_slots: usize,
    #[serde(with = "humantime_serde")]
    pub takeover: Duration,
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    pub upload_rate: u64,
    pub download_rate: u64,
    /// Pass a chunk arriving from a peer on to peers that ask for it while it arrives.
    pub cut_through: bool,
}

impl SwarmConfig {
    /// The chunk size of the swarm download of a `size`-byte blob: the same on every node with
    /// the same settings, so they share it. `chunk_size`, raised (in multiples of it, up to
    /// `max_chunk_size`, by default the same: fixed chunks) for a blob that would have more
    /// chunks than `parallel`: then every node has every chunk of a small blob in flight at
    /// once, and each chunk spreads through the cluster while the upstream still sends it.
    /// (Simulated at 10,000 nodes with a 64 MiB blob: 32 chunks of 2 MiB took 1.95-2.25x the
    /// bound, the last chunks spreading after the upstream's; 8 chunks of 8 MiB, 1.19x in every
    /// seed; docs/scale.md.)
    pub fn chunk_size_for(&self, size: u64) -> u64 {
        let unit = self.chunk_size.max(1);
        let per = size.div_ceil(self.parallel.max(1) as u64).div_ceil(unit).saturating_mul(unit);
        per.min(self.max_chunk_size).max(unit)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub events: EventsMode,
    pub api_url: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub node_name: String,
    #[serde(with = "humantime_serde")]
    pub min_event_interval: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventsMode {
    Auto,
    On,
    Off,
}

impl KubernetesConfig {
    /// Whether events go to the API server.
    pub fn events_enabled(&self) -> bool {
        match self.events {
            EventsMode::On => true,
            EventsMode::Off => false,
            EventsMode::Auto => !self.api_url.is_empty() && !self.pod_name.is_empty(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    MissingFile(PathBuf),
    /// `<key>: <reason>` for each wrong setting (figment's errors, in the config's own words).
    #[error("{0}")]
    Figment(String),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Flag overrides: `(dotted key, value)` pairs, applied last.
pub type Overrides = Vec<(&'static str, figment::value::Value)>;

impl Config {
    /// Load defaults → `file` → environment (`env` given explicitly for tests) → `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            fig = fig.merge(Toml::file(path));
        }
        // Environment: PEERD_A__B=v sets a.b, parsed as figment's Env provider parses values
        // (arrays, numbers, booleans, strings). Taken as an argument so tests need no globals.
        // Only PEERD_<SECTION>__<KEY>: other PEERD_* variables (Kubernetes service links such as
        // PEERD_SERVICE_HOST, test switches) are not configuration.
        let env: Vec<(String, String)> = env.into_iter().collect();
        let k8s_env: Vec<(String, String)> = env
            .iter()
            .filter(|(n, _)| {
                matches!(n.as_str(), "POD_NAME" | "POD_NAMESPACE" | "POD_UID" | "NODE_NAME")
                    || n.starts_with("KUBERNETES_SERVICE_")
            })
            .cloned()
            .collect();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__")) else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let value: figment::value::Value = value.parse().expect("infallible");
            fig = fig.merge((key, value));
        }
        for (key, value) in overrides {
            fig = fig.merge((key, value));
        }
        // The Pod's identity (downward API) and the API server (service discovery) fill in
        // kubernetes.* keys left empty.
        let mut cfg: Config = fig.extract().map_err(|e| ConfigError::Figment(describe(e)))?;
        let k = &mut cfg.kubernetes;
        let get = |name: &str| k8s_env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        for (field, var) in [
            (&mut k.pod_name, "POD_NAME"),
            (&mut k.pod_namespace, "POD_NAMESPACE"),
            (&mut k.pod_uid, "POD_UID"),
            (&mut k.node_name, "NODE_NAME"),
        ] {
            if field.is_empty() {
                *field = get(var);
            }
        }
        if k.api_url.is_empty() {
            let (host, port) = (get("KUBERNETES_SERVICE_HOST"), get("KUBERNETES_SERVICE_PORT"));
            if !host.is_empty() {
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                k.api_url = format!("https://{host}:{}", if port.is_empty() { "443".into() } else { port });
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        use crate::oci::parse_ns;
        fn bad<T>(key: &'static str, reason: String) -> Result<T, ConfigError> {
            Err(ConfigError::Invalid { key, reason })
        }
        parse_ns(Some(&self.registry.default_ns), "").or_else(|e| bad("registry.default_ns", e.to_string()))?;
        for h in &self.registry.hosts {
            parse_ns(Some(h), "").or_else(|e| bad("registry.hosts", e.to_string()))?;
        }
        for h in &self.upstream.plain_http_hosts {
            parse_ns(Some(h), "").or_else(|e| bad("upstream.plain_http_hosts", e.to_string()))?;
        }
        if self.containerd.namespaces.is_empty() {
            return bad("containerd.namespaces", "at least one namespace is needed".into());
        }
        if self.registry.max_manifest_bytes == 0 {
            return bad("registry.max_manifest_bytes", "must be positive".into());
        }
        if self.upstream.failure_threshold == 0 {
            return bad("upstream.failure_threshold", "must be positive".into());
        }
        self.http.compat()?;
        if self.http.max_transfers == 0 {
            return bad("http.max_transfers", "must be positive".into());
        }
        if self.p2p.enabled {
            self.p2p.secret_bytes()?;
            if self.p2p.max_connections == 0
                || self.p2p.max_connections_per_peer == 0
                || self.p2p.max_pending_incoming == 0
            {
                return bad(
                    "p2p.max_connections",
                    "max_connections, max_connections_per_peer and max_pending_incoming must be positive".into(),
                );
            }
        }
        if self.p2p.enabled {
            if self.p2p.max_peers == 0 {
                return bad("p2p.max_peers", "must be positive".into());
            }
            if self.p2p.provider_republish >= self.p2p.provider_ttl {
                return bad("p2p.provider_republish", "must be shorter than p2p.provider_ttl".into());
            }
            if !self.p2p.secret_file.is_empty() && !self.p2p.secret.is_empty() {
                return bad("p2p.secret", "set either p2p.secret or p2p.secret_file, not both".into());
            }
            if !self.p2p.secret.is_empty() && self.p2p.secret.len() < MIN_SECRET_LEN {
                return bad("p2p.secret", format!("must be at least {MIN_SECRET_LEN} characters"));
            }
            for peer in &self.p2p.bootstrap_peers {
                check_host_port(peer).or_else(|e| bad("p2p.bootstrap_peers", e))?;
            }
            if !self.p2p.bootstrap_dns.is_empty() {
                check_host_port(&self.p2p.bootstrap_dns).or_else(|e| bad("p2p.bootstrap_dns", e))?;
            }
        }
        if self.swarm.enabled {
            if !(64 << 10..=64 << 20).contains(&self.swarm.chunk_size) {
                return bad("swarm.chunk_size", "must be between 64 KiB and 64 MiB".into());
            }
            if !(self.swarm.chunk_size..=64 << 20).contains(&self.swarm.max_chunk_size) {
                return bad("swarm.max_chunk_size", "must be between swarm.chunk_size and 64 MiB".into());
            }
            if self.swarm.parallel == 0
                || self.swarm.upstream_parallel == 0
                || self.swarm.per_peer == 0
                || self.swarm.max_fetches == 0
                || self.swarm.upload_slots == 0
            {
                return bad(
                    "swarm.parallel",
                    "parallel, upstream_parallel, per_peer, max_fetches and upload_slots must be positive".into(),
                );
            }
            if self.swarm.refresh.is_zero() || self.swarm.takeover.is_zero() {
                return bad("swarm.refresh", "refresh and takeover must be positive".into());
            }
            for (key, rate) in
                [("swarm.upload_rate", self.swarm.upload_rate), ("swarm.download_rate", self.swarm.download_rate)]
            {
                if rate != 0 && rate < self.swarm.chunk_size {
                    return bad(key, "0 (unlimited) or at least one chunk per second".into());
                }
            }
        }
        for (key, d) in [
            ("p2p.resolve_timeout", self.p2p.resolve_timeout),
            ("p2p.connect_timeout", self.p2p.connect_timeout),
            ("p2p.idle_timeout", self.p2p.idle_timeout),
            ("p2p.bootstrap_interval", self.p2p.bootstrap_interval),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.idle_timeout", self.upstream.idle_timeout),
            ("upstream.request_timeout", self.upstream.request_timeout),
            ("containerd.timeout", self.containerd.timeout),
            ("kubernetes.min_event_interval", self.kubernetes.min_event_interval),
        ] {
            if d.is_zero() {
                return bad(key, "must be longer than zero".into());
            }
        }
        if self.blobs.enabled {
            if !(4096..=64 << 20).contains(&self.blobs.chunk_size) {
                return bad("blobs.chunk_size", "must be between 4 KiB and 64 MiB".into());
            }
            if self.blobs.max_cache_bytes < self.blobs.chunk_size * 16 {
                return bad("blobs.max_cache_bytes", "must hold at least 16 chunks".into());
            }
            if self.blobs.per_host_fetches == 0 {
                return bad("blobs.per_host_fetches", "must be positive".into());
            }
            if self.blobs.progress_timeout.is_zero() || self.blobs.chunk_timeout.is_zero() {
                return bad("blobs.progress_timeout", "progress_timeout and chunk_timeout must be positive".into());
            }
            if self.blobs.parallel_chunks == 0 || self.blobs.prefetch_workers == 0 {
                return bad("blobs.parallel_chunks", "parallel_chunks and prefetch_workers must be positive".into());
            }
            for h in &self.blobs.allowed_hosts {
                AllowRule::parse(h).map_err(|e| ConfigError::Invalid { key: "blobs.allowed_hosts", reason: e })?;
            }
        }
        if self.kubernetes.events == EventsMode::On {
            for (key, v) in [
                ("kubernetes.api_url", &self.kubernetes.api_url),
                ("kubernetes.pod_name", &self.kubernetes.pod_name),
                ("kubernetes.pod_namespace", &self.kubernetes.pod_namespace),
            ] {
                if v.is_empty() {
                    return bad(key, "needed when kubernetes.events = \"on\" (or set POD_NAME, POD_NAMESPACE, KUBERNETES_SERVICE_HOST)".into());
                }
            }
        }
        if self.preheat.enabled {
            if self.preheat.max_concurrent == 0 || self.preheat.max_images == 0 {
                return bad("preheat.max_concurrent", "max_concurrent and max_images must be positive".into());
            }
            if self.preheat.lease_ttl < Duration::from_secs(60) || self.preheat.timeout.is_zero() {
                return bad("preheat.lease_ttl", "lease_ttl must be at least 1m and timeout positive".into());
            }
            if self.preheat.rate != 0 && self.preheat.rate < 1 << 20 {
                return bad("preheat.rate", "0 (unlimited) or at least 1 MiB per second".into());
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .or_else(|e| bad("log.level", format!("{:?}: {e}", self.log.level)))?;
        Ok(())
    }

    /// The effective config as TOML (`peerd config`).
    /// The secret is never printed.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.p2p.secret.is_empty() {
            shown.p2p.secret = "<redacted>".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

/// Shortest cluster secret accepted, from `p2p.secret` and `p2p.secret_file` alike.
pub const MIN_SECRET_LEN: usize = 16;

/// `host:port` or `[v6]:port` with a numeric port (bootstrap peers, the DNS bootstrap name).
fn check_host_port(s: &str) -> Result<(), String> {
    let example = "expected HOST:PORT, e.g. 10.0.0.5:5003 or peerd-p2p.peerd-ns.svc:5003";
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: no port; {example}"))?;
    if host.is_empty() || host.contains('/') || host.contains(' ') || (host.contains(':') && !host.starts_with('[')) {
        return Err(format!("{s:?}: {example}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?}: bad port {port:?}; {example}")),
    }
}

/// A figment error as `<key>: <reason>` lines, in the words of the config file (no profile
/// name, no library types), with the syntax to use when a list was given as a plain string.
fn describe(e: figment::Error) -> String {
    use figment::error::Kind;
    let lines: Vec<String> = e
        .into_iter()
        .map(|e| {
            let mut path: Vec<String> = e.path.clone();
            let reason = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    let near = expected.iter().copied().find(|x| similar(x, field));
                    match near {
                        Some(n) => format!("unknown key (did you mean `{n}`?)"),
                        None => format!("unknown key (known: {})", expected.join(", ")),
                    }
                }
                Kind::InvalidType(actual, expected) if expected.contains("sequence") => format!(
                    "expected a list, found {actual}; in the environment write it as '[\"a\",\"b\"]', e.g. PEERD_{}='[\"{}\"]'",
                    path.iter().map(|p| p.to_ascii_uppercase()).collect::<Vec<_>>().join("__"),
                    "value"
                ),
                Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                    let expected = match expected.as_str() {
                        "usize" | "u64" | "u32" | "u16" => "a non-negative integer",
                        e => e,
                    };
                    format!("expected {expected}, found {actual}")
                }
                Kind::UnknownVariant(found, expected) => {
                    format!("{found:?} is not one of {}", expected.join(", "))
                }
                Kind::MissingField(f) => {
                    path.push(f.to_string());
                    "missing".to_owned()
                }
                other => other.to_string(),
            };
            let key = if path.is_empty() { "config".to_owned() } else { path.join(".") };
            let source = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
                Some(n) if n.contains("TOML file") => e
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref())
                    .map(|s| format!(" (in {s})"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            format!("{key}: {reason}{source}")
        })
        .collect();
    lines.join("; ")
}

/// Whether `a` looks like a typo of `b`: at most two single-character edits apart.
fn similar(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

/// One entry of `blobs.allowed_hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    scheme: String,
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl AllowRule {
    pub fn parse(s: &str) -> Result<AllowRule, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some((sc, r)) if sc == "http" || sc == "https" => (sc.to_owned(), r),
            Some(_) => return Err(format!("{s:?}: only http:// and https:// are allowed")),
            None => ("https".to_owned(), s),
        };
        let port_of = |p: &str| p.parse::<u16>().map_err(|_| format!("{s:?}: bad port"));
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            // [IPv6] or [IPv6]:port, kept in the form `Url::host_str` gives (normalised).
            let (addr, after) = v6.split_once(']').ok_or_else(|| format!("{s:?}: unclosed ["))?;
            let ip = url::Url::parse(&format!("http://[{addr}]/")).map_err(|e| format!("{s:?}: {e}"))?;
            let ip = ip.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = match after.strip_prefix(':') {
                Some(p) => Some(port_of(p)?),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: expected [IPv6]:port")),
            };
            (format!("[{ip}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(port_of(p)?)),
                None => (rest.to_owned(), None),
            }
        };
        let host = host.as_str();
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(h) => (true, h),
            None => (false, host),
        };
        if host.is_empty() || host.contains('/') || host.contains('*') {
            return Err(format!("{s:?}: expected [scheme://]host[:port] or *.domain"));
        }
        Ok(AllowRule { scheme, host: host.to_ascii_lowercase(), wildcard, port })
    }

    /// The host this rule names (without a `*.` prefix; IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn allows(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str().map(|h| h.to_ascii_lowercase()) else { return false };
        let host_ok = if self.wildcard { host.ends_with(&format!(".{}", self.host)) } else { host == self.host };
        host_ok && url.scheme() == self.scheme && self.port.is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_azure_peerd_and_are_safe() {
        let c = Config::load(None, env(&[]), vec![]).unwrap();
        // Azure/peerd's ports; the front end (content for anyone who reaches it) on loopback only.
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:5000");
        assert_eq!(c.http.compat().unwrap(), None);
        assert_eq!(c.peer.addr.to_string(), "0.0.0.0:5001");
        assert_eq!(c.metrics.addr.to_string(), "0.0.0.0:5004");
        assert!(!c.metrics.debug, "who-holds-what pages are not on the metrics port by default");
        assert!(!c.p2p.insecure_no_secret && c.p2p.secret.is_empty(), "p2p needs a secret by default");
        assert!(!c.upstream.allow_loopback);
        assert_eq!(c.containerd.namespaces, vec!["k8s.io"]);
        assert_eq!(c.registry.default_ns, "docker.io");
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.log.format, LogFormat::Text);
    }

    /// Fixed 2 MiB chunks by default. With `max_chunk_size` 8 MiB, small blobs get about
    /// `parallel` chunks (whole multiples of `chunk_size`, at most `max_chunk_size`) and large
    /// ones chunks of `max_chunk_size`; a maximum below the chunk size is refused.
    #[test]
    fn swarm_chunk_size_follows_the_blob_size() {
        const MIB: u64 = 1 << 20;
        let fixed = Config::load(None, env(&[]), vec![]).unwrap().swarm;
        assert_eq!((fixed.chunk_size, fixed.max_chunk_size, fixed.parallel), (2 * MIB, 2 * MIB, 8));
        assert_eq!(fixed.chunk_size_for(64 * MIB), 2 * MIB);
        let c = Config::load(None, env(&[("PEERD_SWARM__MAX_CHUNK_SIZE", "8388608")]), vec![]).unwrap().swarm;
        for (size, chunk) in [
            (1, 2 * MIB),
            (5 * MIB, 2 * MIB),
            (16 * MIB, 2 * MIB),
            (16 * MIB + 1, 4 * MIB),
            (40 * MIB, 6 * MIB),
            (64 * MIB, 8 * MIB),
            (1 << 30, 8 * MIB),
            (u64::MAX, 8 * MIB),
        ] {
            assert_eq!(c.chunk_size_for(size), chunk, "a {size}-byte blob");
            assert!(size.div_ceil(chunk) <= 8 || chunk == 8 * MIB, "at most `parallel` chunks below the cap");
        }
        let e = Config::load(None, env(&[("PEERD_SWARM__MAX_CHUNK_SIZE", "1048576")]), vec![]).unwrap_err();
        assert!(e.to_string().starts_with("swarm.max_chunk_size:"), "{e}");
    }

    #[test]
    fn bootstrap_peers_and_secret_files_are_checked_at_load() {
        let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), vec![]);
        for bad in ["127.0.0.1", "host:", "host:0", "host:port", "a b:1", "::1:5003"] {
            let e = load(&[("PEERD_P2P__BOOTSTRAP_PEERS", &format!("[\"{bad}\"]"))]).unwrap_err().to_string();
            assert!(e.starts_with("p2p.bootstrap_peers:") && e.contains("HOST:PORT"), "{bad}: {e}");
        }
        for good in ["127.0.0.1:5003", "peerd.svc:5003", "[::1]:5003"] {
            assert!(load(&[("PEERD_P2P__BOOTSTRAP_PEERS", &format!("[\"{good}\"]"))]).is_ok(), "{good}");
        }
        assert!(load(&[("PEERD_P2P__BOOTSTRAP_DNS", "peerd-p2p")]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "short\n").unwrap();
        let e = load(&[("PEERD_P2P__SECRET_FILE", short.to_str().unwrap())]).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        let e = load(&[("PEERD_P2P__SECRET", "short")]).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn config_errors_name_the_key_in_the_config_s_words() {
        let err = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), vec![]).unwrap_err().to_string();
        let e = err(&[("PEERD_HTTP__ADRESS", "x")]);
        assert!(e.starts_with("http.adress: unknown key (known: addr,"), "{e}");
        let e = err(&[("PEERD_HTTP__ADDRS", "x")]);
        assert!(e.starts_with("http.addrs: unknown key (did you mean `addr`?)"), "{e}");
        let e = err(&[("PEERD_REGISTRY__HOSTS", "a.io")]);
        assert!(e.starts_with("registry.hosts: expected a list") && e.contains(r#"PEERD_REGISTRY__HOSTS='["#), "{e}");
        let e = err(&[("PEERD_P2P__MAX_PEERS", "-1")]);
        assert_eq!(e, "p2p.max_peers: expected a non-negative integer, found signed int `-1`");
        let e = err(&[("PEERD_LOG__FORMAT", "xml")]);
        assert_eq!(e, r#"log.format: "xml" is not one of text, json"#);
        for e in [err(&[("PEERD_HTTP__ADDR", "nonsense")]), err(&[("PEERD_HTTP__SHUTDOWN_TIMEOUT", "abc")])] {
            assert!(!e.contains("figment") && !e.contains("default.") && !e.contains("global."), "{e}");
        }
    }

    #[test]
    fn layering_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "[http]\naddr = \"127.0.0.2:5000\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n")
            .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("PEERD_LOG__LEVEL", "warn"),
                ("PEERD_UPSTREAM__PLAIN_HTTP_HOSTS", "[\"127.0.0.1:5001\"]"),
                ("OTHER", "x"),
                ("PEERD_SERVICE_HOST", "10.0.0.1"),
                ("PEERD_PORT_5000_TCP_ADDR", "10.0.0.1"),
                ("PEERD_REQUIRE_INTEGRATION", "1"),
            ]),
            vec![("metrics.addr", "127.0.0.9:9".into())],
        )
        .unwrap();
        assert_eq!(c.http.addr.to_string(), "127.0.0.2:5000"); // file
        assert_eq!(c.log.format, LogFormat::Json); // file
        assert_eq!(c.log.level, "warn"); // env beats file
        assert_eq!(c.upstream.plain_http_hosts, vec!["127.0.0.1:5001"]); // env list
        assert_eq!(c.metrics.addr.to_string(), "127.0.0.9:9"); // flag

        let c = Config::load(
            Some(&file),
            env(&[("PEERD_HTTP__ADDR", "127.0.0.3:1")]),
            vec![("http.addr", "127.0.0.4:2".into())],
        )
        .unwrap();
        assert_eq!(c.http.addr.to_string(), "127.0.0.4:2", "flags beat env");
    }

    #[test]
    fn invalid_config_is_one_clear_line() {
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (env(&[("PEERD_HTTP__ADDR", "nonsense")]), "addr"),
            (env(&[("PEERD_UPSTREAM__CONNECT_TIMEOUT", "fast")]), "connect_timeout"),
            (env(&[("PEERD_UPSTREAM__CONNECT_TIMEOUT", "0s")]), "upstream.connect_timeout"),
            (env(&[("PEERD_REGISTRY__DEFAULT_NS", "http://x")]), "registry.default_ns"),
            (env(&[("PEERD_LOG__FORMAT", "xml")]), "format"),
            (env(&[("PEERD_HTTP__NOPE", "1")]), "nope"),
            (env(&[("PEERD_LOG__LEVEL", "peerd=loud")]), "log.level"),
        ];
        for (e, needle) in cases {
            let err = Config::load(None, e.clone(), vec![]).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains(needle), "{e:?} → {err}");
        }
        let err = Config::load(None, env(&[("PEERD_P2P__SECRET_FILE", "/nonexistent/secret")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("p2p.secret_file"), "{err}");
        let err = Config::load(None, env(&[("PEERD_P2P__SECRET", "short")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("16 characters"), "{err}");
        let err = Config::load(None, env(&[("PEERD_P2P__PROVIDER_REPUBLISH", "2h")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("p2p.provider_republish"), "{err}");
        let c = Config::load(None, env(&[("PEERD_P2P__SECRET", "0123456789abcdef-secret")]), vec![]).unwrap();
        assert!(!c.to_toml().contains("0123456789abcdef"), "secret must be redacted");
        let err = Config::load(Some(Path::new("/nonexistent/peerd.toml")), env(&[]), vec![]).unwrap_err();
        assert!(err.to_string().contains("not found"));
    }

    #[test]
    fn kubernetes_identity_from_the_downward_api() {
        let c = Config::load(
            None,
            env(&[
                ("POD_NAME", "peerd-x"),
                ("POD_NAMESPACE", "peerd-ns"),
                ("POD_UID", "u1"),
                ("NODE_NAME", "n1"),
                ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
                ("KUBERNETES_SERVICE_PORT", "6443"),
            ]),
            vec![],
        )
        .unwrap();
        assert_eq!(c.kubernetes.api_url, "https://10.0.0.1:6443");
        assert_eq!((c.kubernetes.pod_name.as_str(), c.kubernetes.pod_uid.as_str()), ("peerd-x", "u1"));
        assert!(c.kubernetes.events_enabled(), "auto: on inside a Pod");
        let outside = Config::load(None, env(&[]), vec![]).unwrap();
        assert!(!outside.kubernetes.events_enabled(), "auto: off outside Kubernetes");
        let err = Config::load(None, env(&[("PEERD_KUBERNETES__EVENTS", "on")]), vec![]).unwrap_err();
        assert!(err.to_string().contains("kubernetes.api_url"), "{err}");
    }

    #[test]
    fn renders_back_to_loadable_toml() {
        let c = Config::load(None, env(&[]), vec![]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.toml");
        std::fs::write(&file, c.to_toml()).unwrap();
        let again = Config::load(Some(&file), env(&[]), vec![]).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }
}
