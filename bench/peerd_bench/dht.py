"""DHT clusters of peerd processes on 127.0.1.x: a blob nobody holds through 8- and 32-node DHTs
vs the registry (miss), and 64 nodes: provide -> resolvable everywhere, lookup times, RSS (dht)."""

import hashlib
import os
import statistics
import threading
import time

from .client import interleaved_latency
from .common import free_port, lat_summary, log, wait_until
from .containerd import Containerd
from .cpu import rss_mib
from .images import Layout
from .peerd import Peerd, stop_peerds


def start_dht(b, n, reg_addr, with_containerd=False):
    """n peerds bootstrapping from the first three; node 0 gets a containerd if asked."""
    w = os.path.join(b.work, f"dht{n}")
    os.makedirs(w, exist_ok=True)
    ips = [f"127.0.1.{i + 1}" for i in range(n)]
    ports = (free_port(ips[0]), free_port(ips[0]), free_port(ips[0]), free_port(ips[0]))
    boot = []
    for ip in ips[:3]:
        boot += ["--bootstrap-peer", f"{ip}:{ports[2]}"]
    ctrd = Containerd(os.path.join(w, "c0")).start() if with_containerd else None
    nodes = []
    t0 = time.time()
    for i, ip in enumerate(ips):
        sock = ctrd.sock if (ctrd and i == 0) else "/nonexistent.sock"
        nodes.append(Peerd(b.binary, w, f"n{i}", ip, ports,
                           ["--mirror-host", reg_addr, "--plain-http-host", reg_addr, "--containerd-socket", sock] + boot,
                           {"PEERD_HTTP__WORKERS": "1", "PEERD_LOG__LEVEL": "warn"}))
    for p in nodes:
        wait_until(f"{p.name} ready", 120, p.ready, 0.2)
    return nodes, ctrd, time.time() - t0


def stop_dht(nodes, ctrd):
    stop_peerds(nodes)
    if ctrd:
        ctrd.stop()


def miss_once(b, nodes, reg_addr):
    n = b.cfg["miss_n"]
    layer = b.pair.miss_layer
    d = layer["digest"]
    ns_q = "ns=" + reg_addr.replace(":", "%3A")
    up0 = nodes[0].metric("peerd_served_bytes_total", 'source="upstream"')
    r = interleaved_latency({
        "registry": (reg_addr, "GET", f"/v2/bench/miss/blobs/{d}", {}, 200),
        "peerd_miss": (nodes[0].http, "GET", f"/v2/bench/miss/blobs/{d}?{ns_q}", {}, 200),
    }, n, warm=3)
    up1 = nodes[0].metric("peerd_served_bytes_total", 'source="upstream"')
    assert up1 - up0 >= n * layer["size"], (up0, up1)
    r["fallback_overhead_p50_ms"] = r["peerd_miss"]["p50_ms"] - r["registry"]["p50_ms"]
    r["fallback_overhead_p99_ms"] = r["peerd_miss"]["p99_ms"] - r["registry"]["p99_ms"]
    return r


def bench_miss_and_dht(b):
    reg_addr = b.pair.reg.start()  # same storage, new port (it was stopped for the peer test)
    miss = {}
    for n in b.cfg["miss_nodes"]:
        log(f"miss: {n}-node DHT")
        nodes, ctrd, start_s = start_dht(b, n, reg_addr)
        try:
            time.sleep(2)
            r = miss[str(n)] = miss_once(b, nodes, reg_addr) | {"cluster_start_s": start_s}
            log(f"  {n} nodes: peerd miss p50 {r['peerd_miss']['p50_ms']:.1f} ms p99 {r['peerd_miss']['p99_ms']:.1f}; "
                f"registry p50 {r['registry']['p50_ms']:.2f} ms")
        finally:
            stop_dht(nodes, ctrd)
    b.res["miss"] = miss
    bench_dht(b, reg_addr)


def _wait_resolvable(nodes, key, provider, t0, parallel=16):
    """{node name: seconds after t0 when `key` resolved to `provider` there}, polling every 50 ms."""
    seen = {}
    lock = threading.Lock()
    sem = threading.Semaphore(parallel)

    def poll(p):
        with sem:
            deadline = t0 + 120
            while time.time() < deadline:
                r = p.resolve(key)
                if r and any(x.get("id") == provider for x in r.get("peers", [])):
                    with lock:
                        seen[p.name] = time.time() - t0
                    return
                time.sleep(0.05)

    ts = [threading.Thread(target=poll, args=(p,)) for p in nodes]
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    return seen


def bench_dht(b, reg_addr):
    n = b.cfg["dht_nodes"]
    log(f"dht: {n} nodes")
    nodes, ctrd, start_s = start_dht(b, n, reg_addr, with_containerd=True)
    out = {"nodes": n, "cluster_start_s": start_s}
    try:
        time.sleep(3)
        out["idle_rss_mib"] = [rss_mib([p.pid]) for p in nodes]
        out["routing_table_peers"] = [p.p2p_info().get("routing_table_peers") for p in nodes]
        n0 = nodes[0].peer_id()
        # node 0 provides: a fresh image (random layer) imported into its containerd. peerd's
        # advertiser sees the image event and publishes tag, manifest, config and layer.
        lay = Layout(os.path.join(b.work, "dht-oci"))
        layer = lay.add_layer(2048)
        lay.add_image("v1", [layer])
        key = layer["digest"]
        t0 = time.time()
        lay.ctr_import(ctrd.sock, "v1", f"{reg_addr}/bench/dht:v1")
        out["import_s"] = time.time() - t0
        others = nodes[1:]
        seen = _wait_resolvable(others, key, n0, t0)
        out["provide_to_resolvable_s"] = sorted(seen.values())
        out["resolvable_everywhere_s"] = max(seen.values()) if len(seen) == len(others) else None
        out["resolvable_nodes"] = f"{len(seen)}/{len(others)}"
        out["note_poll"] = "16 pollers in parallel, 50 ms apart per node: includes polling granularity"
        if len(seen) != len(others):
            raise RuntimeError(f"only {len(seen)} of {len(others)} nodes resolved node 0")
        hit, missk = [], []
        unknown = "sha256:" + hashlib.sha256(os.urandom(16)).hexdigest()
        for p in others:
            for _ in range(b.cfg["dht_lookups"]):
                hit.append(p.resolve(key)["seconds"])
            missk.append(p.resolve(unknown)["seconds"])
        out["lookup_found"] = lat_summary(hit, samples=True)
        out["lookup_unknown_key"] = lat_summary(missk, samples=True)
        out["rss_after_mib"] = [rss_mib([p.pid]) for p in nodes]
        out["rss_mib_mean"] = statistics.mean(out["rss_after_mib"])
        out["rss_mib_max"] = max(out["rss_after_mib"])
        log(f"dht: everywhere after {out['resolvable_everywhere_s']:.2f} s; lookup p50 "
            f"{out['lookup_found']['p50_ms']:.1f} ms p99 {out['lookup_found']['p99_ms']:.1f}; "
            f"RSS mean {out['rss_mib_mean']:.1f} MiB")
        if str(n) not in b.res.get("miss", {}):
            b.res.setdefault("miss", {})[str(n)] = miss_once(b, nodes, reg_addr) | {"cluster_start_s": start_s}
    finally:
        b.res["dht"] = out
        stop_dht(nodes, ctrd)
    b.pair.reg.stop()
