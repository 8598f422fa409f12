"""Request latency: manifest HEAD/GET and a 4 KiB blob, peerd A (local hit) interleaved with the
registry (section `latency`); a 4 KiB blob and a manifest from a peer (section `peer`)."""

from .client import interleaved_latency
from .common import OCI_MANIFEST, log


def bench_latency(b):
    p = b.pair
    n = b.cfg["lat_n"]
    man, blob = p.layout.refs["small"]["manifest"]["digest"], p.small_layer["digest"]
    acc = {"Accept": OCI_MANIFEST}
    kinds = {
        "manifest_head": ("HEAD", f"/v2/bench/small/manifests/{man}", acc),
        "manifest_get": ("GET", f"/v2/bench/small/manifests/{man}", acc),
        "blob_4k_get": ("GET", f"/v2/bench/small/blobs/{blob}", {}),
        "manifest_get_by_tag": ("GET", "/v2/bench/small/manifests/v1", acc),
    }
    out = {}
    for k, (m, path, h) in kinds.items():
        r = interleaved_latency({"registry": (p.reg_addr, m, path, h, 200),
                                 "peerd": (p.a.http, m, path + "?" + p.ns_q, h, 200)}, n)
        out[k] = r
        log(f"latency {k}: registry p50 {r['registry']['p50_ms']:.3f} ms p99 {r['registry']['p99_ms']:.3f}; "
            f"peerd p50 {r['peerd']['p50_ms']:.3f} p99 {r['peerd']['p99_ms']:.3f}")
    out["_note"] = "by digest: served from A's containerd; by tag: peerd asks the upstream (tags move)"
    b.res["latency"] = out


def bench_peer_latency(b):
    """4 KiB blob and manifest from a peer (no baseline: the registry is stopped)."""
    p = b.pair
    man = p.layout.refs["small"]["manifest"]["digest"]
    r = interleaved_latency({
        "blob_4k_from_peer": (p.b.http, "GET", p.blob_path("small", p.small_layer["digest"]), {}, 200),
        "manifest_from_peer": (p.b.http, "GET", f"/v2/bench/small/manifests/{man}?{p.ns_q}",
                               {"Accept": OCI_MANIFEST}, 200),
    }, max(10, b.cfg["lat_n"] // 5), warm=5)
    b.res.setdefault("latency", {})["peer"] = r
