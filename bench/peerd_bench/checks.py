"""--smoke: every measurement produced a number."""

from .targets import targets


def want(cfg):
    """Dotted paths into the results that each section must fill with a number."""
    S = cfg["streams"]
    return {
        "throughput": ["throughput.nginx.1.gb_s", "throughput.registry.1.gb_s", "throughput.peerd_local.1.gb_s",
                       f"throughput.nginx.{S}.gb_s", f"throughput.peerd_local.{S}.gb_s",
                       f"throughput.peerd_local.{S}.resources.peerd_a.cpu_s",
                       f"throughput.peerd_local.{S}.resources.containerd_a.cpu_s",
                       f"throughput.peerd_local.{S}.resources.peerd_a.peak_rss_mib",
                       f"throughput.nginx.{S}.resources.nginx.cpu_s",
                       "components.ctr_content_get_gb_s", "components.sha256sum_gb_s",
                       "components.sha256_cpu_s_per_gib", "components.sha256sum_cpu_s_per_gib",
                       "resources_idle.peerd_a_rss_mib"],
        "latency": ["latency.manifest_head.peerd.p50_ms", "latency.manifest_get.registry.p99_ms",
                    "latency.blob_4k_get.peerd.p99_ms"],
        "peer": ["throughput.peerd_peer.1.gb_s", f"throughput.peerd_peer.{S}.gb_s",
                 f"throughput.peerd_peer.{S}.resources.peerd_b.cpu_s",
                 f"throughput.nginx_peer_phase.{S}.resources.nginx.cpu_s",
                 "latency.peer.blob_4k_from_peer.p50_ms"],
        "blobs": ["blobs.nginx_direct.p50_ms", "blobs.a_local_hit.p50_ms", "blobs.a_local_hit.p99_ms",
                  "blobs.a_local_hit.mb_s", "blobs.b_from_peer.p99_ms", "blobs.b_from_peer.mb_s"],
        "miss_dht": [f"miss.{cfg['miss_nodes'][0]}.peerd_miss.p50_ms", "dht.resolvable_everywhere_s",
                     "dht.lookup_found.p50_ms", "dht.rss_mib_mean"],
        "cluster": ["cluster.cases.a.max_s", "cluster.cases.b.max_s", "cluster.cases.c.max_s",
                    "cluster.cases.a.registry_egress_bytes"],
    }


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def numbers_ok(res, cfg, only):
    """The dotted paths (and, on a run of every section, the targets) that are not numbers."""
    missing = []
    for sec, paths in want(cfg).items():
        if only and sec not in only:
            continue
        for p in paths:
            v = res
            for k in p.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            if not _number(v):
                missing.append(p)
    if not only:
        missing += [f"target: {r['measure']}" for r in targets(res) if r["now"] is None]
    return missing
