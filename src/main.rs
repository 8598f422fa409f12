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
}

#[derive(Subcommand)]
enum HostsCommand {
    /// Write <certs-dir>/<registry>/hosts.toml for each registry; an existing file is kept as
    /// hosts.toml.peerd-backup.
    Install {
        /// containerd's registry config_path.
        #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
        certs_dir: PathBuf,
        /// The node-local peerd mirror.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
        mirror: String,
        /// A registry to mirror; repeat for several.
        #[arg(long, value_name = "HOST", required = true)]
        registry: Vec<String>,
        /// A registry whose own endpoint is plain HTTP; repeat for several.
        #[arg(long, value_name = "HOST")]
        plain_http: Vec<String>,
        /// How long containerd waits for peerd before going to the registry itself.
        #[arg(long, value_name = "DURATION", default_value = "200ms")]
        dial_timeout: String,
        /// Capabilities of the mirror (containerd: pull, resolve, push).
        #[arg(long, value_name = "CAP", default_values = ["pull", "resolve"])]
        capability: Vec<String>,
    },
    /// Remove peerd's hosts.toml files and restore the backups byte for byte.
    Uninstall {
        #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
        certs_dir: PathBuf,
        #[arg(long, value_name = "HOST", required = true)]
        registry: Vec<String>,
    },
}

fn hosts(cmd: &HostsCommand) -> ExitCode {
    let result = match cmd {
        HostsCommand::Install { certs_dir, mirror, registry, plain_http, dial_timeout, capability } => {
            if humantime::parse_duration(dial_timeout).is_err() {
                eprintln!("peerd: invalid --dial-timeout {dial_timeout:?}");
                return ExitCode::from(2);
            }
            peerd::hosts::install(&peerd::hosts::Install {
                certs_dir,
                mirror,
                registries: registry,
                plain_http,
                dial_timeout,
                capabilities: capability,
            })
            .map(|files| files.iter().for_each(|f| println!("wrote {}", f.display())))
        }
        HostsCommand::Uninstall { certs_dir, registry } => peerd::hosts::uninstall(certs_dir, registry)
            .map(|files| files.iter().for_each(|f| println!("restored {}", f.display()))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
    /// Mirror listener (/v2, /healthz, /readyz) [default: 0.0.0.0:5000].
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// Metrics listener (/metrics/prometheus) [default: 0.0.0.0:5004].
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
    /// Directory for the persistent node identity [default: /var/lib/peerd].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the cluster secret (a mounted Kubernetes Secret); or set PEERD_P2P__SECRET.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
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
    let prometheus = match peerd::metrics::install() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("peerd: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let system = actix::System::new();
    match system.block_on(peerd::node::run(cfg, prometheus)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("peerd: {e}");
            ExitCode::FAILURE
        }
    }
}
