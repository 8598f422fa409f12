"""Constants, sizes and the small helpers every other module uses."""

import os
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)
RUN_PY = os.path.join(BENCH, "run.py")
FIX = os.path.join(ROOT, "tests", "fixtures")
TOOLS = os.environ.get("PEERD_TOOLS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "peerd-tools")
VENV = os.path.join(TOOLS, "bench-venv")
SECRET = "peerd-benchmark-cluster-secret"
GiB = 1 << 30
MiB = 1 << 20

FULL = dict(
    big=GiB, streams=16, reps1=3, repsN=2, lat_n=500, miss_n=60, miss_nodes=[8, 32], dht_nodes=64,
    dht_lookups=5, blobs_reads=500, cl_nodes=8, cl_layers=4, cl_layer=64 * MiB, profile=True,
)
SMOKE = dict(
    big=8 * MiB, streams=4, reps1=1, repsN=1, lat_n=20, miss_n=5, miss_nodes=[3], dht_nodes=4,
    dht_lookups=2, blobs_reads=20, cl_nodes=3, cl_layers=2, cl_layer=1 * MiB, profile=False,
)
NODE_RATE, REG_RATE = "1gbit", "200mbit"
NODE_BPS, REG_BPS = 1e9 / 8, 200e6 / 8

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def log(*a):
    print(f"[bench {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def sh(cmd, timeout=120, check=True, ns=None, input=None, env=None):
    """Run a command (inside network namespace `ns` if given); its stdout as text."""
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout.decode(errors="replace")


def curl_code(*args, ns=None, timeout=120):
    """`curl -s -o /dev/null -w %{http_code} ARGS...`: the HTTP status as a string ("000" if none)."""
    return sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args], ns=ns, timeout=timeout,
              check=False).strip()


def wait_until(what, timeout, f, interval=0.1):
    deadline = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s: {what}")
        time.sleep(interval)


def free_port(ip="127.0.0.1"):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def connects(addr):
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def lat_summary(xs, samples=False):
    """n, p50, p99 and mean in ms of latencies in seconds; with `samples`, the samples in ms too."""
    out = {"n": len(xs), "p50_ms": pct(xs, 50) * 1e3, "p99_ms": pct(xs, 99) * 1e3, "mean_ms": statistics.mean(xs) * 1e3}
    if samples:
        out["samples_ms"] = [x * 1e3 for x in xs]
    return out


def g(d, *ks, default=None):
    """d[k0][k1]..., or `default` where a key is missing."""
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def human(n):
    return f"{n / GiB:.0f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def f2(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"
