//! `peerd-sim`: peerd at 100 to 10,000 nodes, simulated with its real transfer decisions.
//! Writes one JSON document of results (see `make sim`, which turns it into docs/scale.md).
//! Exits non-zero when an invariant of a run is broken (a node completed without every byte
//! exactly once, the registry sent less than the image).

use clap::Parser;
use peerd::config::Config;
use peerd::sim::rollout::{self, Found, Params, Report};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "peerd-sim", about = "Simulate peerd's swarming and DHT at scale (deterministic)")]
struct Args {
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Small sizes, about a minute: for `make test`.
    #[arg(long)]
    quick: bool,
    /// Node counts to sweep (default 100,1000,10000; quick: 100,1000).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Scenarios: dht, rollout, churn, scaleout, validate (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the JSON goes ("-": stdout).
    #[arg(long, default_value = "-")]
    out: String,
}

const MIB: u64 = 1 << 20;
const GBIT: f64 = 1e9 / 8.0;
const MBIT: f64 = 1e6 / 8.0;

fn base(nodes: usize, seed: u64, quick: bool) -> Params {
    let cfg = Config::load(None, Vec::<(String, String)>::new(), Vec::new()).expect("default config");
    let image = if quick { 256 * MIB } else { 1024 * MIB };
    Params {
        nodes,
        blobs: vec![image],
        blob_parallel: 3,
        node_up: GBIT,
        node_down: GBIT,
        registry: 200.0 * MBIT,
        rtt: Duration::from_micros(500),
        registry_rtt: Duration::from_millis(10),
        swarm: cfg.swarm,
        connect_timeout: cfg.p2p.connect_timeout,
        idle_timeout: cfg.p2p.idle_timeout,
        seeds: 0,
        kill: None,
        start_spread: Duration::from_millis(100),
        found: Found::FirstPerStore,
        max_sim: Duration::from_secs(if quick { 300 } else { 900 }),
        max_wall: Duration::from_secs(if quick { 20 } else { 100 }),
        seed,
    }
}

fn log(name: &str, r: &Report) {
    eprintln!(
        "{name:>24} N={:>5}: done {}/{} failed {} p50 {:.1}s slowest {:.1}s ({:.2}x bound {:.1}s) egress {:.2}F up max {:.2}F med {:.2}F views {:.1} takeovers {} abandoned {}{} [{:.1}s wall, {} events]",
        r.nodes,
        r.completed,
        r.downloading,
        r.failed,
        r.p50_s,
        r.slowest_s,
        r.slowest_over_bound,
        r.bound_s,
        r.registry_egress_over_f,
        r.upload_max_over_f,
        r.upload_median_over_f,
        r.view_mean,
        r.takeovers,
        r.abandoned,
        if r.capped { " CAPPED" } else { "" },
        r.wall_s,
        r.events
    );
}

fn main() {
    let args = Args::parse();
    let sizes = if !args.nodes.is_empty() {
        args.nodes.clone()
    } else if args.quick {
        vec![100, 1000]
    } else {
        vec![100, 1000, 10_000]
    };
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut out = serde_json::Map::new();
    let mut broken = Vec::new();
    let mut record = |scenario: &str, r: Report, out: &mut serde_json::Map<String, serde_json::Value>| {
        log(scenario, &r);
        for e in &r.invariant_errors {
            broken.push(format!("{scenario} N={}: {e}", r.nodes));
        }
        let v = out.entry(scenario.to_owned()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        v.as_array_mut().expect("array").push(serde_json::to_value(&r).expect("serializable"));
    };
    if want("rollout") {
        for &n in &sizes {
            record("rollout", rollout::run(base(n, args.seed, args.quick)), &mut out);
        }
    }
    if want("rollout-random") {
        for &n in &sizes {
            let p = Params { found: Found::Random, ..base(n, args.seed, args.quick) };
            record("rollout-random", rollout::run(p), &mut out);
        }
    }
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(out)).expect("json");
    if args.out == "-" {
        println!("{json}");
    } else if let Err(e) = std::fs::write(&args.out, json) {
        eprintln!("peerd-sim: cannot write {}: {e}", args.out);
        std::process::exit(2);
    }
    if !broken.is_empty() {
        for b in &broken {
            eprintln!("peerd-sim: invariant broken: {b}");
        }
        std::process::exit(1);
    }
}
