//! `peerd` command line: `peerd run` starts a node, `peerd config` prints the effective config.

use clap::{Args, Parser, Subcommand};
use peerd::config::{Config, Overrides};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peerd",
    version,
    about = "Peer-to-peer distribution of container images and files in a cluster",
    long_about = "Peer-to-peer distribution of container images and large files in a Kubernetes cluster.\n\n\
Configuration is layered, later wins: built-in defaults (see `peerd config`), the --config file, \
PEERD_<SECTION>__<KEY> environment variables (e.g. PEERD_HTTP__ADDR), then the flags below."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the /v2 registry mirror, the p2p router and the metrics listener.
    Run(RunArgs),
    /// Print the effective configuration (defaults, file, environment and flags merged) as TOML.
    Config(RunArgs),
    /// Configure containerd to use the node-local peerd as its mirror (hosts.toml), or undo it.
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Check this node end to end (containerd, its config_path, hosts.toml, the mirror, content,
    /// peers, the DHT, upstreams, peer transfers): ✓/✗ with a fix each; exit 0 only if all pass.
    Doctor(DoctorArgs),
    /// Helpers the Helm chart runs in peerd's own image (no other image to pull).
    #[command(subcommand)]
    Kube(KubeCommand),
    /// Put images into nodes' containerd before a rollout: asks the node-local peerd, which
    /// picks the nodes (rendezvous hashing on the image digest) and asks each of them.
    /// Exit status 0 only when every chosen node holds the images (with --wait).
    Preheat(PreheatArgs),
}

#[derive(Args)]
struct PreheatArgs {
    /// Images, e.g. registry.example.com/app:v2 or ...@sha256:<digest>; only from mirrored registries.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Platform to take from a multi-platform index [default: this node's, e.g. linux/amd64].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Number of nodes per image [default: 1].
    #[arg(long, value_name = "N", conflicts_with = "all")]
    copies: Option<usize>,
    /// Every node.
    #[arg(long)]
    all: bool,
    /// Show progress per node until every chosen node is done or failed.
    #[arg(long)]
    wait: bool,
    /// The node-local peerd front end.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
    addr: String,
    /// With --wait: give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn preheat(a: &PreheatArgs) -> ExitCode {
    use peerd::preheat::cli;
    let opts = cli::Options {
        addr: a.addr.clone(),
        request: peerd::preheat::PreheatRequest {
            images: a.images.clone(),
            platform: a.platform.clone(),
            copies: a.copies,
            all: a.all,
        },
        wait: a.wait,
        timeout: a.timeout,
    };
    let Some(rt) = cli_runtime() else { return ExitCode::FAILURE };
    match rt.block_on(cli::run(&opts)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peerd preheat: {e}");
            match e {
                cli::CliError::Refused(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[derive(Subcommand)]
enum KubeCommand {
    /// Do nothing until SIGTERM or SIGINT (the uninstall pods' main container).
    Sleep,
    /// Wait until a DaemonSet runs a Ready pod of its current spec on every node it should run
    /// on, as `kubectl rollout status` does; exit 1 after --timeout.
    WaitDaemonset {
        /// The DaemonSet's name.
        name: String,
        #[arg(long, value_name = "NS")]
        namespace: String,
        #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// API server; default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
        #[arg(long, value_name = "URL")]
        api_url: Option<String>,
        #[arg(long, value_name = "FILE", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token")]
        token_file: PathBuf,
        #[arg(long, value_name = "FILE", default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")]
        ca_file: PathBuf,
    },
}

fn kube(cmd: &KubeCommand) -> ExitCode {
    let Some(rt) = cli_runtime() else { return ExitCode::FAILURE };
    match cmd {
        KubeCommand::Sleep => rt.block_on(async {
            match peerd::lifecycle::termination().await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("peerd: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        KubeCommand::WaitDaemonset { name, namespace, timeout, api_url, token_file, ca_file } => {
            let api_url = match api_url.clone().or_else(|| {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
                let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                Some(format!("https://{host}:{port}"))
            }) {
                Some(u) => u,
                None => {
                    eprintln!("peerd: no --api-url and not in a Pod (KUBERNETES_SERVICE_HOST unset)");
                    return ExitCode::from(2);
                }
            };
            let w = peerd::kube::WaitDaemonSet {
                api_url,
                token_file: token_file.clone(),
                ca_file: ca_file.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                timeout: *timeout,
                poll: std::time::Duration::from_secs(2),
            };
            match rt.block_on(peerd::kube::wait_daemonset(&w)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("peerd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[derive(Args)]
struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
    /// This node's mirror (peerd's --http-addr).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
    mirror: String,
    /// This node's metrics listener (peerd's --metrics-addr).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5004")]
    metrics: String,
    /// containerd's gRPC socket.
    #[arg(long, value_name = "PATH", default_value = "/run/containerd/containerd.sock")]
    containerd_socket: PathBuf,
    /// containerd's config (imports followed), for config_path and the content root.
    #[arg(long, value_name = "FILE", default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// containerd's content store [default: <root>/io.containerd.content.v1.content from the config,
    /// /var/lib/containerd/io.containerd.content.v1.content].
    #[arg(long, value_name = "DIR")]
    containerd_content_dir: Option<PathBuf>,
    /// Look for hosts.toml files here first (besides containerd's config_path).
    #[arg(long, value_name = "DIR")]
    certs_dir: Option<PathBuf>,
    /// A registry that must go through peerd; repeat for several [default: every registry with a
    /// hosts.toml written by peerd].
    #[arg(long, value_name = "HOST")]
    mirror_host: Vec<String>,
    /// Bound on each probe.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn doctor(a: &DoctorArgs) -> ExitCode {
    let opts = peerd::doctor::Options {
        mirror: a.mirror.clone(),
        metrics: a.metrics.clone(),
        containerd_socket: a.containerd_socket.clone(),
        containerd_config: a.containerd_config.clone(),
        content_dir: a.containerd_content_dir.clone(),
        certs_dir: a.certs_dir.clone(),
        mirror_hosts: a.mirror_host.clone(),
        timeout: a.timeout,
    };
    let Some(rt) = cli_runtime() else { return ExitCode::FAILURE };
    let report = rt.block_on(peerd::doctor::run(&opts));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("the report serializes"));
    } else {
        print!("{}", peerd::doctor::render_text(&report));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Subcommand)]
enum HostsCommand {
    /// Write <certs-dir>/<registry>/hosts.toml for each registry; an existing file is kept as
    /// hosts.toml.peerd-backup. The directory is containerd's config_path, read from its config.
    Install {
        #[command(flatten)]
        target: HostsTarget,
        /// Write even when containerd's config sets no config_path (containerd then ignores the files).
        #[arg(long)]
        force: bool,
        /// The node-local peerd mirror.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
        mirror: String,
        /// A registry to mirror; repeat for several.
        #[arg(long, value_name = "HOST", required_unless_present = "default_host")]
        registry: Vec<String>,
        /// Also write _default/hosts.toml: every registry without its own file asks peerd first
        /// (peerd still serves only its registry.hosts unless run with --mirror-any-host).
        #[arg(long)]
        default_host: bool,
        /// A registry whose own endpoint is plain HTTP; repeat for several.
        #[arg(long, value_name = "HOST")]
        plain_http: Vec<String>,
        /// How long containerd (2.1 and later) waits for peerd before going to the registry itself.
        #[arg(long, value_name = "DURATION", default_value = "200ms")]
        dial_timeout: String,
        /// Capabilities of the mirror: pull, resolve (peerd does not support push).
        #[arg(long, value_name = "CAP", default_values = ["pull", "resolve"])]
        capability: Vec<String>,
        /// replace: peerd's file instead of an existing one; prepend: peerd first, then the
        /// existing file's hosts, ca and client certificates.
        #[arg(long, value_enum, default_value = "replace")]
        mode: HostsMode,
        /// Remove peerd's (and Azure/peerd's) hosts.toml for registries not listed, restoring backups.
        #[arg(long)]
        prune: bool,
    },
    /// Remove every hosts.toml peerd (or Azure/peerd) wrote and restore the backups byte for byte.
    Uninstall {
        #[command(flatten)]
        target: HostsTarget,
        /// Accepted for compatibility: every peerd file is removed, listed or not.
        #[arg(long, value_name = "HOST")]
        registry: Vec<String>,
    },
}

#[derive(Args)]
struct HostsTarget {
    /// containerd's config (imports followed); its registry config_path names the directory.
    #[arg(long, value_name = "FILE", default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// Write here instead of containerd's config_path [fallback: /etc/containerd/certs.d].
    #[arg(long, value_name = "DIR")]
    certs_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HostsMode {
    Replace,
    Prepend,
}

/// containerd's certs directory when neither its config nor --certs-dir names one.
const DEFAULT_CERTS_DIR: &str = "/etc/containerd/certs.d";

/// The directory to write into (and every directory containerd reads), with warnings; an
/// error when containerd would ignore hosts.toml files and `force` is off.
fn hosts_dirs(target: &HostsTarget, force: bool, warn: &mut Vec<String>) -> Result<(PathBuf, Vec<PathBuf>), String> {
    use peerd::hosts::containerd_config::{ConfigError, ConfigPathSource, ContainerdConfig};
    let config = &target.containerd_config;
    let fallback = || target.certs_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CERTS_DIR));
    let cfg = match ContainerdConfig::load(config) {
        Ok(c) => c,
        Err(ConfigError::NotFound(_)) => {
            let dir = fallback();
            warn.push(format!(
                "{} not found: using {}; make sure containerd's registry config_path names it",
                config.display(),
                dir.display()
            ));
            return Ok((dir.clone(), vec![dir]));
        }
        Err(e) => return Err(e.to_string()),
    };
    let dirs = cfg.dirs();
    let Some(first) = dirs.first().cloned() else {
        let msg = format!(
            "{} sets no registry config_path, so containerd ignores hosts.toml files. Set it and restart \
             containerd:\n  version 2 (containerd 1.x): [plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \"{DEFAULT_CERTS_DIR}\"\n  \
             version 3 (containerd 2.x): [plugins.\"io.containerd.cri.v1.images\".registry] config_path = \"{DEFAULT_CERTS_DIR}\"\n\
             or pass --force to write the files anyway",
            config.display()
        );
        if !force {
            return Err(msg);
        }
        warn.push(msg.replace("or pass --force to write the files anyway", "writing anyway (--force)"));
        let dir = fallback();
        return Ok((dir.clone(), vec![dir]));
    };
    if dirs.len() > 1 && cfg.use_local_image_pull != Some(true) {
        let how = if cfg.config_path_source == ConfigPathSource::Default2x { "containerd 2.x's default " } else { "" };
        warn.push(format!(
            "{how}config_path {:?} lists several directories: writing into the first, {}. containerd 2.1+ pulls \
             through its transfer service, which reads the list as one path and skips every mirror: set \
             use_local_image_pull = true under [plugins.\"io.containerd.cri.v1.images\"] or a single directory",
            cfg.config_path.clone().unwrap_or_default(),
            first.display()
        ));
    }
    if !cfg.inline_mirrors.is_empty() {
        warn.push(format!(
            "{} also has inline registry.mirrors for {}: containerd 2.2 refuses them together with config_path \
             (and peerd's hosts.toml files do not apply to them): move them to hosts.toml files",
            config.display(),
            cfg.inline_mirrors.join(", ")
        ));
    }
    if cfg.discard_unpacked_layers == Some(true) {
        warn.push(
            "discard_unpacked_layers = true: containerd drops layers after unpacking, so this node cannot serve \
             them to its peers; set it to false"
                .into(),
        );
    }
    let dir = match &target.certs_dir {
        Some(d) => {
            if !dirs.contains(d) {
                warn.push(format!(
                    "--certs-dir {} is not in containerd's config_path ({}): containerd will not read it",
                    d.display(),
                    cfg.config_path.clone().unwrap_or_default()
                ));
            } else if *d != first {
                warn.push(format!(
                    "--certs-dir {} is not the first config_path directory ({})",
                    d.display(),
                    first.display()
                ));
            }
            d.clone()
        }
        None => first,
    };
    let mut all = vec![dir.clone()];
    all.extend(dirs.into_iter().filter(|d| *d != dir));
    Ok((dir, all))
}

fn hosts(cmd: &HostsCommand) -> ExitCode {
    let mut warn = Vec::new();
    let result = match cmd {
        HostsCommand::Install {
            target,
            force,
            mirror,
            registry,
            default_host,
            plain_http,
            dial_timeout,
            capability,
            mode,
            prune,
        } => {
            let usage = peerd::hosts::parse_dial_timeout(dial_timeout)
                .and_then(|_| peerd::hosts::check_capabilities(capability));
            if let Err(e) = usage {
                eprintln!("peerd: {e}");
                return ExitCode::from(2);
            }
            let dir = match hosts_dirs(target, *force, &mut warn) {
                Ok((dir, _)) => dir,
                Err(e) => {
                    warn.iter().for_each(|w| eprintln!("peerd: warning: {w}"));
                    eprintln!("peerd: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if target.certs_dir.is_some() && !dir.exists() {
                warn.push(format!("{} does not exist (a typo?); creating it", dir.display()));
            }
            warn.iter().for_each(|w| eprintln!("peerd: warning: {w}"));
            warn.clear();
            peerd::hosts::install(&peerd::hosts::Install {
                certs_dir: &dir,
                mirror,
                registries: registry,
                plain_http,
                dial_timeout,
                capabilities: capability,
                mode: match mode {
                    HostsMode::Replace => peerd::hosts::Mode::Replace,
                    HostsMode::Prepend => peerd::hosts::Mode::Prepend,
                },
                default_host: *default_host,
                prune: *prune,
            })
        }
        HostsCommand::Uninstall { target, registry: _ } => match hosts_dirs(target, true, &mut Vec::new()) {
            Ok((_, dirs)) => peerd::hosts::uninstall(&dirs),
            Err(e) => {
                eprintln!("peerd: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match result {
        Ok(report) => {
            report.warnings.iter().for_each(|w| eprintln!("peerd: warning: {w}"));
            report.written.iter().for_each(|f| println!("wrote {}", f.display()));
            report.removed.iter().for_each(|f| println!("removed {}", f.display()));
            report.restored.iter().for_each(|f| println!("restored {}", f.display()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peerd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file layered over the built-in defaults.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node-local front end for containerd and overlaybd: /v2, /blobs, /debug/*, /healthz,
    /// /readyz [default: 127.0.0.1:5000].
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// A second node-local front end listener, e.g. 127.0.0.1:30000 for clients set up for
    /// Azure/peerd ("" = off) [default: off].
    #[arg(long, value_name = "ADDR")]
    compat_addr: Option<String>,
    /// Peer listener, where other nodes fetch from (every request authenticated with the cluster
    /// secret) [default: 0.0.0.0:5001].
    #[arg(long, value_name = "ADDR")]
    peer_addr: Option<SocketAddr>,
    /// Metrics listener: /metrics/prometheus, /healthz, /readyz (and /debug/* with
    /// metrics.debug) [default: 0.0.0.0:5004].
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// containerd gRPC socket [default: /run/containerd/containerd.sock].
    #[arg(long, value_name = "PATH")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace to serve from; repeat for several [default: k8s.io].
    #[arg(long, value_name = "NS")]
    containerd_namespace: Vec<String>,
    /// containerd's content root as mounted here [default: asked from containerd].
    #[arg(long, value_name = "DIR")]
    containerd_content_dir: Option<PathBuf>,
    /// Registry assumed when a request has no `ns` parameter [default: docker.io].
    #[arg(long, value_name = "HOST")]
    default_ns: Option<String>,
    /// A registry this node mirrors (host[:port]); repeat for several. Replaces the default list.
    #[arg(long, value_name = "HOST")]
    mirror_host: Vec<String>,
    /// Mirror any registry (an empty `registry.hosts`): only for trusted networks.
    #[arg(long, conflicts_with = "mirror_host")]
    mirror_any_host: bool,
    /// A registry reached over plain HTTP (host:port); repeat for several.
    #[arg(long, value_name = "HOST")]
    plain_http_host: Vec<String>,
    /// libp2p listener [default: 0.0.0.0:5003].
    #[arg(long, value_name = "ADDR")]
    p2p_addr: Option<SocketAddr>,
    /// Run as a single-node mirror: no DHT, no peers.
    #[arg(long)]
    no_p2p: bool,
    /// Data directory: the persistent node identity (identity.key), the /blobs chunk cache and
    /// the swarm spool, unless blobs.cache_dir / swarm.spool_dir say otherwise [default: /var/lib/peerd].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the cluster secret (a mounted Kubernetes Secret); or set PEERD_P2P__SECRET.
    /// Without a secret p2p stays off (a single-node mirror).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Run p2p WITHOUT a cluster secret: anyone who reaches the peer and p2p ports can join and
    /// read every layer. Only for isolated test networks.
    #[arg(long)]
    insecure_no_secret: bool,
    /// A peer's p2p address (host:port) to bootstrap from; repeat for several.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap_peer: Vec<String>,
    /// A DNS name (name:port) resolving to peers, e.g. a headless Service.
    #[arg(long, value_name = "NAME:PORT")]
    bootstrap_dns: Option<String>,
    /// Log filter, e.g. info, debug, peerd=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        use figment::value::Value;
        let v = |x: &dyn erased::Ser| x.value();
        let mut o: Overrides = Vec::new();
        let mut put = |k: &'static str, val: Value| o.push((k, val));
        if let Some(a) = &self.http_addr {
            put("http.addr", v(&a.to_string()));
        }
        if let Some(a) = &self.compat_addr {
            put("http.compat_addr", v(a));
        }
        if let Some(a) = &self.peer_addr {
            put("peer.addr", v(&a.to_string()));
        }
        if let Some(a) = &self.metrics_addr {
            put("metrics.addr", v(&a.to_string()));
        }
        if let Some(p) = &self.containerd_socket {
            put("containerd.socket", v(&p.display().to_string()));
        }
        if !self.containerd_namespace.is_empty() {
            put("containerd.namespaces", v(&self.containerd_namespace));
        }
        if let Some(d) = &self.containerd_content_dir {
            put("containerd.content_dir", v(&d.display().to_string()));
        }
        if let Some(ns) = &self.default_ns {
            put("registry.default_ns", v(ns));
        }
        if !self.mirror_host.is_empty() {
            put("registry.hosts", v(&self.mirror_host));
        }
        if self.mirror_any_host {
            put("registry.hosts", v(&Vec::<String>::new()));
        }
        if !self.plain_http_host.is_empty() {
            put("upstream.plain_http_hosts", v(&self.plain_http_host));
        }
        if let Some(a) = &self.p2p_addr {
            put("p2p.addr", v(&a.to_string()));
        }
        if self.no_p2p {
            put("p2p.enabled", v(&false));
        }
        if let Some(d) = &self.data_dir {
            put("p2p.data_dir", v(&d.display().to_string()));
        }
        if let Some(f) = &self.secret_file {
            put("p2p.secret_file", v(&f.display().to_string()));
        }
        if self.insecure_no_secret {
            put("p2p.insecure_no_secret", v(&true));
        }
        if !self.bootstrap_peer.is_empty() {
            put("p2p.bootstrap_peers", v(&self.bootstrap_peer));
        }
        if let Some(d) = &self.bootstrap_dns {
            put("p2p.bootstrap_dns", v(d));
        }
        if let Some(l) = &self.log_level {
            put("log.level", v(l));
        }
        if let Some(f) = &self.log_format {
            put("log.format", v(f));
        }
        o
    }

    fn load(&self) -> Result<Config, peerd::config::ConfigError> {
        Config::load(self.config.as_deref(), std::env::vars(), self.overrides())
    }
}

/// Tiny helper so flag values of different types become figment values in one line each.
mod erased {
    pub trait Ser {
        fn value(&self) -> figment::value::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> figment::value::Value {
            figment::value::Value::serialize(self).expect("flag values serialize")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, print_only) = match &cli.command {
        Command::Run(a) => (a, false),
        Command::Config(a) => (a, true),
        Command::Hosts(h) => return hosts(h),
        Command::Doctor(d) => return doctor(d),
        Command::Kube(k) => return kube(k),
        Command::Preheat(p) => return preheat(p),
    };
    let cfg = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peerd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if print_only {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    peerd::node::init_tracing(&cfg.log);
    let prometheus = match peerd::metrics::install(peerd::node::METRIC_BUCKETS, peerd::node::METRICS) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("peerd: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let system = actix::System::new();
    match system.block_on(peerd::node::run(cfg, prometheus)) {
        Ok(()) => ExitCode::SUCCESS,
        // Logged once (the log goes to stderr), with the logging set up.
        Err(e) => {
            tracing::error!("peerd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime of a one-shot command (`doctor`, `preheat`, the chart's `kube` helpers); `None`
/// (said on stderr) when it cannot be built.
fn cli_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| eprintln!("peerd: {e}")).ok()
}
