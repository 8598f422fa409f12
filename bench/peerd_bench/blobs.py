"""/blobs random 4 KiB–1 MiB range reads over the big file that nginx serves: nginx directly,
peerd A's local cache (after a cold full read and its prefetch), peerd B from A (nginx stopped)."""

import random
import time

from .client import Conn, get
from .common import MiB, lat_summary, log, pct, wait_until

SOURCES = ("local", "peer", "upstream")


def random_reads(seed, n, size):
    """n (offset, length) pairs: length uniform in 4 KiB–1 MiB, offset uniform within the file."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        ln = r.randint(4096, MiB)
        out.append((r.randrange(0, size - ln), ln))
    return out


def range_reads(addr, path, reads):
    """The reads in order on one keep-alive connection; each must be a 206 of the right length."""
    c = Conn(addr, timeout=60)
    lat, total = [], 0
    try:
        for off, ln in reads:
            t = time.perf_counter()
            s, _, got = c.request("GET", path, {"Range": f"bytes={off}-{off + ln - 1}"}, sink=True)
            lat.append(time.perf_counter() - t)
            if s != 206 or got != ln:
                raise RuntimeError(f"{addr}{path} range {off}+{ln}: {s} {got}")
            total += got
    finally:
        c.close()
    return lat_summary(lat, samples=True) | {"p90_ms": pct(lat, 90) * 1e3, "mb_s": total / sum(lat) / 1e6,
                                             "bytes": total}


def bench_blobs(b):
    p = b.pair
    n, size = b.cfg["blobs_reads"], p.big["size"]
    up = p.nginx.addr
    bpath = f"/blobs/http://{up}/big.bin?sv=bench&sig=x"
    out = {}
    ra, rb = random_reads(1, n, size), random_reads(2, n, size)
    out["nginx_direct"] = range_reads(up, "/big.bin", ra)
    # A: cold full read (fills the cache through the upstream, prefetch on), then hits
    t = time.perf_counter()
    s, _, got = get(p.a.http, bpath, timeout=300, sink=True)
    assert s == 200 and got == size, (s, got)
    out["a_cold_full_read_gb_s"] = size / (time.perf_counter() - t) / 1e9
    wait_until("A's /blobs cache holds the file", 300, lambda: p.a.metric("peerd_blobs_cache_bytes") >= size, 0.5)
    h0 = p.a.metric("peerd_blobs_cache_hits_total")
    out["a_local_hit"] = range_reads(p.a.http, bpath, ra)
    out["a_local_hit"]["cache_hits"] = p.a.metric("peerd_blobs_cache_hits_total") - h0
    # B learns the file (one byte) while the upstream is up, then the upstream stops.
    s, _, _ = get(p.b.http, bpath, {"Range": "bytes=0-0"})
    assert s == 206, s
    time.sleep(2 if b.smoke else 5)  # A's chunk advertisements
    p.nginx.stop()
    before = p.b.metrics_by("peerd_blobs_bytes_total", "source", SOURCES)
    out["b_from_peer"] = range_reads(p.b.http, bpath, rb)
    after = p.b.metrics_by("peerd_blobs_bytes_total", "source", SOURCES)
    out["b_from_peer"]["chunk_bytes"] = {k: after[k] - before[k] for k in ("peer", "upstream", "local")}
    assert out["b_from_peer"]["chunk_bytes"]["peer"] > 0, out["b_from_peer"]["chunk_bytes"]
    for k in ("nginx_direct", "a_local_hit", "b_from_peer"):
        log(f"blobs {k}: p50 {out[k]['p50_ms']:.2f} ms p99 {out[k]['p99_ms']:.2f} ms {out[k]['mb_s']:.0f} MB/s")
    b.res["blobs"] = out
