//! `peerd-sim`: peerd at 100 to 10,000 nodes, simulated with its real transfer decisions.
//! Writes one JSON document of results (see `make sim`, which turns it into docs/scale.md).
//! The swarm and p2p settings are peerd's defaults, changed as peerd's are by the environment
//! (e.g. `PEERD_SWARM__REFRESH=250ms` to try a shorter refresh).
//! Exits non-zero when an invariant of a run is broken (a node completed without every byte
//! exactly once, the registry sent less than the image).

use clap::Parser;
use peerd::config::Config;
use peerd::sim::dht::{self, DhtParams};
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
    /// Node counts to sweep (default 100,1000,10000; quick: 50,200).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Scenarios: dht, rollout, rollout-8mib, rollout-random, churn, scaleout, validate (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Churn and scale-out at 10,000 nodes too (about 20 minutes more; `make sim-full`).
    #[arg(long)]
    full: bool,
    /// Wall-clock budget per run in seconds (default 480; quick: 8): a run that reaches it
    /// stops and is reported as stopped.
    #[arg(long)]
    wall: Option<u64>,
    /// Runs at once (default: the cores, at most 4). Each run is single-threaded and
    /// deterministic; the results come out in the same order whatever this is.
    #[arg(long)]
    jobs: Option<usize>,
    /// Image size in MiB for every run (default: 1,024; 64 at 10,000 nodes; quick: 32).
    #[arg(long)]
    image_mib: Option<u64>,
    /// Where the JSON goes ("-": stdout).
    #[arg(long, default_value = "-")]
    out: String,
}

const MIB: u64 = 1 << 20;
const GBIT: f64 = 1e9 / 8.0;
const MBIT: f64 = 1e6 / 8.0;

fn base(nodes: usize, seed: u64, quick: bool, wall: Option<u64>) -> Params {
    let cfg = Config::load(None, std::env::vars(), Vec::new()).expect("config");
    let image = if quick { 32 * MIB } else { 1024 * MIB };
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
        max_wall: Duration::from_secs(wall.unwrap_or(if quick { 8 } else { 480 })),
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

/// Run the jobs on `threads` threads, the biggest first (the runs' lengths differ by 100×);
/// the reports in the jobs' order.
fn run_all(jobs: Vec<(&str, Params)>, threads: usize) -> Vec<(&str, Report)> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].1.nodes as u64 * jobs[i].1.blobs.iter().sum::<u64>()));
    let next = std::sync::Mutex::new(order.into_iter());
    let done: std::sync::Mutex<Vec<Option<Report>>> = std::sync::Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let Some(i) = next.lock().expect("job list").next() else { break };
                let (name, p) = &jobs[i];
                let r = rollout::run(p.clone());
                log(name, &r);
                done.lock().expect("reports")[i] = Some(r);
            });
        }
    });
    let done = done.into_inner().expect("reports");
    jobs.into_iter().zip(done).map(|((name, _), r)| (name, r.expect("every job ran"))).collect()
}

fn main() {
    let args = Args::parse();
    let sizes = if !args.nodes.is_empty() {
        args.nodes.clone()
    } else if args.quick {
        vec![50, 200]
    } else {
        vec![100, 1000, 10_000]
    };
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let mut out = serde_json::Map::new();
    let mut broken = Vec::new();
    let mut record = |scenario: &str, r: Report, out: &mut serde_json::Map<String, serde_json::Value>| {
        for e in &r.invariant_errors {
            broken.push(format!("{scenario} N={}: {e}", r.nodes));
        }
        let v = out.entry(scenario.to_owned()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        v.as_array_mut().expect("array").push(serde_json::to_value(&r).expect("serializable"));
    };
    let cfg = Config::load(None, std::env::vars(), Vec::new()).expect("config");
    if want("dht") {
        for &n in &sizes {
            let p = DhtParams {
                nodes: n,
                rtt: Duration::from_micros(500),
                keys_per_node: 10,
                lookups: if args.quick { 40 } else { 300 },
                leave: 0.1,
                provider_ttl: cfg.p2p.provider_ttl,
                provider_republish: cfg.p2p.provider_republish,
                resolve_timeout: cfg.p2p.resolve_timeout,
                max_peers: cfg.p2p.max_peers,
                hedge_delay: cfg.p2p.hedge_delay,
                connect_timeout: cfg.p2p.connect_timeout,
                swarm_lookup_every: cfg.swarm.refresh * 3,
                seed: args.seed,
            };
            let r = dht::run(&p);
            eprintln!(
                "{:>24} N={n:>5}: resolvable p50 {:.1} ms p99 {:.1} ms, hops p50 {} p99 {}, records/node median {} max {}, after 10% left: lookups touching dead {:.0}%, p99 {:.0} ms [{:.1}s wall]",
                "dht", r.resolvable_ms_p50, r.resolvable_ms_p99, r.hops_p50, r.hops_p99, r.records_per_node_median,
                r.records_per_node_max, r.after_lookups_touching_dead * 100.0, r.after_lookup_ms_p99, r.wall_s
            );
            out.entry("dht")
                .or_insert_with(|| serde_json::Value::Array(Vec::new()))
                .as_array_mut()
                .expect("array")
                .push(serde_json::to_value(&r).expect("serializable"));
        }
    }
    // 10,000 nodes of a 1 GiB image is 5 million chunk transfers; there the image is 64 MiB
    // (times are compared with the bound, which scales with it).
    let sized = |n: usize, p: Params| match args.image_mib {
        Some(m) => Params { blobs: vec![m * MIB], ..p },
        None if n >= 10_000 && !args.quick => Params { blobs: vec![64 * MIB], ..p },
        None => p,
    };
    // The what-if runs (discovery that returns a random sample) run at 100 nodes unless the
    // sizes are given: they are a comparison, and at 1,000 nodes a random view grows past 200
    // peers and a run takes more than the 10 minutes of `make sim` by itself.
    let what_if = |n: usize| n <= 100 || !args.nodes.is_empty();
    // Churn and scale-out at 10,000 nodes take ~5 minutes each here: with `--full` (or sizes
    // given), so that `make sim` stays within 10 minutes with the 10,000-node rollout in it.
    let heavy = |n: usize| n < 10_000 || args.full || !args.nodes.is_empty();
    let mut jobs: Vec<(&str, Params)> = Vec::new();
    if want("rollout") {
        for &n in &sizes {
            jobs.push(("rollout", sized(n, base(n, args.seed, args.quick, args.wall))));
        }
    }
    // The setting for clusters of thousands of nodes: chunks up to 8 MiB, so that a small blob
    // has about `parallel` of them (`swarm.max_chunk_size`).
    if want("rollout-8mib") {
        for &n in &sizes {
            let mut p = base(n, args.seed, args.quick, args.wall);
            p.swarm.max_chunk_size = 8 * MIB;
            jobs.push(("rollout-8mib", sized(n, p)));
        }
    }
    if want("rollout-random") {
        for &n in sizes.iter().filter(|n| what_if(**n)) {
            let p = Params { found: Found::Random, ..base(n, args.seed, args.quick, args.wall) };
            jobs.push(("rollout-random", sized(n, p)));
        }
    }
    if want("churn") {
        for &n in sizes.iter().filter(|n| heavy(**n)) {
            let b = sized(n, base(n, args.seed, args.quick, args.wall));
            let at = Duration::from_secs_f64(b.blobs[0] as f64 / b.registry / 2.0);
            for (name, found) in [("churn", Found::FirstPerStore), ("churn-random", Found::Random)] {
                if found == Found::FirstPerStore || what_if(n) {
                    jobs.push((name, Params { kill: Some((0.1, at)), found, ..b.clone() }));
                }
            }
        }
    }
    if want("scaleout") {
        for &n in sizes.iter().filter(|n| heavy(**n)) {
            let b = sized(n, base(n, args.seed, args.quick, args.wall));
            // As peerd does today: a peer holds the blob completely, so every new node pulls it
            // whole from the located holders (at most p2p.max_peers, here the one seed).
            let f = b.blobs.iter().sum::<u64>() as f64;
            let direct = ((n - 1) as f64 * f / b.node_up).max(f / b.node_down);
            out.entry("scaleout-direct").or_insert_with(|| serde_json::Value::Array(Vec::new()))
                .as_array_mut().expect("array")
                .push(serde_json::json!({"nodes": n, "image_bytes": f, "slowest_s": direct, "bound_s": (f / (b.node_up + b.registry)).max(f / b.node_down), "registry_egress_over_f": 0.0}));
            eprintln!("{:>24} N={n:>5}: every node from the one seed: {direct:.1}s", "scaleout-direct");
            for (name, found) in [("scaleout", Found::FirstPerStore), ("scaleout-random", Found::Random)] {
                if found == Found::FirstPerStore || what_if(n) {
                    jobs.push((name, Params { seeds: 1, found, ..b.clone() }));
                }
            }
        }
    }
    if want("validate") {
        // bench/run.py case (c) and (c4): 8 nodes, 4 layers of 64 MiB, nodes 1 Gbit/s, the
        // registry 200 Mbit/s (c4: every rate ÷ 4), one bridge (RTT ~0.1 ms).
        for (name, div) in [("validate-c", 1.0), ("validate-c4", 4.0)] {
            let p = Params {
                blobs: vec![64 * MIB; 4],
                node_up: GBIT / div,
                node_down: GBIT / div,
                registry: 200.0 * MBIT / div,
                rtt: Duration::from_micros(100),
                registry_rtt: Duration::from_micros(100),
                max_wall: Duration::from_secs(60),
                ..base(8, args.seed, false, args.wall)
            };
            jobs.push((name, p));
        }
    }
    let threads = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
    for (name, r) in run_all(jobs, threads) {
        record(name, r, &mut out);
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
