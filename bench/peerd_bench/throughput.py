"""Whole-blob throughput, 1 and N streams, with CPU-seconds and peak RSS per process group:
nginx, docker-registry and peerd A from its containerd (section `throughput`), then peerd B from
peerd A with nginx again in the same rounds (section `peer`); and the components that bound them
(containerd's gRPC read, sha256 alone: GB/s and CPU-seconds per GiB)."""

import hashlib
import time

from .client import throughput, tp_rounds
from .common import GiB, MiB, log, sh
from .cpu import waited_children_cpu_s
from .profile import profile_transfer


def _rounds(b, cases):
    """1 and N streams of every case, in rounds; returns {case: {"1": summary, "N": summary}}."""
    c = b.cfg
    out = {k: {} for k in cases}
    for streams, reps in ((1, c["reps1"]), (c["streams"], c["repsN"])):
        log(f"throughput: {streams} stream(s), {reps} round(s) of {', '.join(cases)}")
        for k, v in tp_rounds(cases, b.pair.big["size"], streams, reps).items():
            out[k][str(streams)] = v
            log(f"  {k}: {streams} stream(s) {v['gb_s']:.2f} GB/s (runs {[round(x, 2) for x in v['runs_gb_s']]})")
    return out


def bench_throughput(b):
    p = b.pair
    size, d = p.big["size"], p.big["digest"]
    cases = {
        "nginx": (p.nginx.addr, "/big.bin", {"nginx": p.nginx.pids()}),
        "registry": (p.reg_addr, f"/v2/bench/big/blobs/{d}", {"registry": [p.reg.pid]}),
        "peerd_local": (p.a.http, p.blob_path("big", d), {"peerd_a": [p.a.pid], "containerd_a": [p.ca.pid]}),
    }
    for addr, path, _ in cases.values():
        throughput(addr, path, size, 1)  # warm-up (page cache, connections)
    b.res["throughput"] = _rounds(b, cases)
    components(b)


def bench_peer_throughput(b):
    """Registry stopped: B (empty containerd) streams from A. The caller stops the registry."""
    p = b.pair
    size = p.big["size"]
    path = p.blob_path("big", p.big["digest"])
    served = ("upstream", "peer")
    before = p.b.metrics_by("peerd_served_bytes_total", "source", served)
    probe = {"peerd_b": [p.b.pid], "peerd_a": [p.a.pid], "containerd_a": [p.ca.pid]}
    # nginx again, in the same rounds: the peer path's ratio is to this phase's nginx
    cases = {"nginx": (p.nginx.addr, "/big.bin", {"nginx": p.nginx.pids()}), "peerd_peer": (p.b.http, path, probe)}
    throughput(p.b.http, path, size, 1)
    r = _rounds(b, cases)
    after = p.b.metrics_by("peerd_served_bytes_total", "source", served)
    tp = r["peerd_peer"]
    tp["check"] = {"b_bytes_from_peer": after["peer"] - before["peer"],
                   "b_bytes_from_upstream": after["upstream"] - before["upstream"]}
    assert after["upstream"] == before["upstream"] and after["peer"] > before["peer"], tp["check"]
    b.res.setdefault("throughput", {})["peerd_peer"] = tp
    if "sha256_cpu_s_per_gib" not in b.res.get("components", {}):  # `--only peer`: the receiving target needs it
        sha256_components(b)
    b.res["throughput"]["nginx_peer_phase"] = r["nginx"]
    if b.cfg["profile"]:
        b.res["profile_peer"] = profile_transfer(b.work, p.b, p.b.http, path, size, extra=[p.a.pid])


def sha256_alone(path, size):
    """sha256 of the file with Python's hashlib (OpenSSL; SHA-NI where the CPU has it, the speed of
    the sha2 crate per docs/REFERENCE): GB/s including the reads, and CPU-seconds per GiB of the
    hashing alone (this thread's CPU time around `update`, the reads not counted)."""
    h = hashlib.sha256()
    cpu = 0.0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            buf = f.read(4 * MiB)
            if not buf:
                break
            c0 = time.thread_time()
            h.update(buf)
            cpu += time.thread_time() - c0
    return size / (time.perf_counter() - t) / 1e9, cpu / (size / GiB)


def sha256_components(b):
    """sha256 alone over the big blob's bytes: hashlib (GB/s, CPU-s/GiB) and `sha256sum`."""
    p = b.pair
    size = p.big["size"]
    path = p.layout.blob_path(p.big["digest"])
    comp = b.res.setdefault("components", {})
    comp["sha256_python_openssl_gb_s"], comp["sha256_cpu_s_per_gib"] = sha256_alone(path, size)
    cpu0 = waited_children_cpu_s()
    t = time.perf_counter()
    sh(["sha256sum", path], timeout=600)
    comp["sha256sum_gb_s"] = size / (time.perf_counter() - t) / 1e9
    comp["sha256sum_cpu_s_per_gib"] = (waited_children_cpu_s() - cpu0) / (size / GiB)


def components(b):
    """Where time goes on the local path: containerd's read speed, sha256 speed and CPU cost."""
    p = b.pair
    d, size = p.big["digest"], p.big["size"]
    t = time.perf_counter()
    sh(["sh", "-c", f"ctr -a {p.ca.sock} -n k8s.io content get {d} > /dev/null"], timeout=600)
    b.res.setdefault("components", {})["ctr_content_get_gb_s"] = size / (time.perf_counter() - t) / 1e9
    sha256_components(b)
    log(f"components: {b.res['components']}")
    if b.cfg["profile"]:
        b.res["profile_local"] = profile_transfer(b.work, p.a, p.a.http, p.blob_path("big", d), size,
                                                  extra=[p.ca.pid])
