#!/usr/bin/env python3
"""peerd benchmarks: `make bench` (full run, writes docs/benchmarks.{md,json} and
docs/benchmarks/*.png) and `python3 bench/run.py --smoke` (tiny sizes, about a minute, used by
`make test`: asserts only that every measurement produced a number; writes to a temp dir).

Everything runs on this machine: peerd, docker-registry, nginx and containerd processes on
loopback addresses (127.0.0.x, 127.0.1.x), and for the cluster pull, network namespaces named
`pdb-*` joined by a bridge, shaped with `tc tbf`. Needs root. Every process this script starts is
stopped by its PID, and the namespaces are deleted by name, on exit, on error and on SIGINT/SIGTERM.

Sections (see docs/benchmarks.md for what each measures):
  throughput  1 GiB blob, 1 and 16 streams: nginx (sendfile), docker-registry, peerd local, peerd peer
  latency     manifest HEAD/GET and a 4 KiB blob: peerd (local hit) vs the registry; 4 KiB from a peer
  resources   idle RSS; peak RSS and CPU-seconds per GiB while serving 16 streams
  miss        a blob nobody holds, through peerd in 8- and 32-node DHTs, vs the registry
  dht         64 peerd processes: provide -> resolvable everywhere, lookup times, RSS per node
  blobs       /blobs random 4 KiB-1 MiB reads over a 1 GiB file: nginx, local cache, from a peer
  cluster     8 namespaces, tc tbf (nodes 1 Gbit/s, registry 200 Mbit/s): pulls (a) (b) (c)
"""

import argparse
import hashlib
import json
import os
import resource
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
TOOLS = os.environ.get("PEERD_TOOLS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "peerd-tools")
VENV = os.path.join(TOOLS, "bench-venv")
SECRET = "peerd-benchmark-cluster-secret"
CLK = os.sysconf("SC_CLK_TCK")
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


# --------------------------------------------------------------------------------------------
# matplotlib lives in a venv; re-exec under it when it is missing.


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401

        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python3")
    if os.environ.get("PEERD_BENCH_REEXEC"):
        sys.exit("bench: matplotlib still missing after re-exec under " + py)
    if not os.path.exists(py) or subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode:
        log(f"installing matplotlib into {VENV}")
        os.makedirs(TOOLS, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True, timeout=600)
    os.environ["PEERD_BENCH_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


# --------------------------------------------------------------------------------------------
# Processes and clean-up: everything started is recorded and stopped by PID; namespaces by name.


class Cleanup:
    def __init__(self):
        self.procs = []  # Popen
        self.containerds = []  # dirs for containerd.sh stop
        self.registries = []  # dirs for registry.sh stop
        self.netns = []  # names
        self.links = []  # root-namespace link names
        self.lock = threading.Lock()

    def spawn(self, cmd, logfile, env=None):
        f = open(logfile, "ab")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        f.close()
        with self.lock:
            self.procs.append(p)
        return p

    def stop(self, p, timeout=20):
        self.stop_many([p], timeout)

    def stop_many(self, ps, timeout=20):
        for p in ps:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + timeout
        for p in ps:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
            with self.lock:
                if p in self.procs:
                    self.procs.remove(p)

    def all(self):
        self.stop_many(list(reversed(self.procs)))
        for d in list(self.containerds):
            subprocess.run([os.path.join(FIX, "containerd.sh"), "stop", d], capture_output=True, timeout=120)
        self.containerds.clear()
        for d in list(self.registries):
            subprocess.run([os.path.join(FIX, "registry.sh"), "stop", d], capture_output=True, timeout=60)
        self.registries.clear()
        for ns in list(self.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.netns.clear()
        for link in list(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        self.links.clear()


CLEAN = Cleanup()


def sh(cmd, timeout=120, check=True, ns=None, input=None, env=None):
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")
    return r.stdout.decode(errors="replace")


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


# --------------------------------------------------------------------------------------------
# A small HTTP/1.1 client on raw sockets: keep-alive, HEAD, Content-Length and chunked bodies,
# and a "sink" mode that reads bodies with recv_into a 1 MiB buffer (cheap at GB/s).


class Conn:
    def __init__(self, addr, timeout=120):
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.hostport = addr
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.sinkbuf = None

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("connection closed")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n, sink):
        take = self.buf[:n]
        self.buf = self.buf[n:]
        got = len(take)
        if sink:
            if self.sinkbuf is None:
                self.sinkbuf = memoryview(bytearray(MiB))
            while got < n:
                r = self.sock.recv_into(self.sinkbuf, min(MiB, n - got))
                if r == 0:
                    raise ConnectionError(f"closed after {got} of {n} bytes")
                got += r
            return got
        out = bytearray(take)
        while len(out) < n:
            d = self.sock.recv(min(MiB, n - len(out)))
            if not d:
                raise ConnectionError(f"closed after {len(out)} of {n} bytes")
            out += d
        return bytes(out)

    def request(self, method, path, headers=None, sink=False):
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = f"{method} {path} HTTP/1.1\r\nHost: {self.hostport}\r\nUser-Agent: peerd-bench\r\n"
        for k, v in (headers or {}).items():
            req += f"{k}: {v}\r\n"
        self.sock.sendall((req + "\r\n").encode())
        status_line = self._line().decode("latin1")
        status = int(status_line.split()[1])
        hdrs = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode("latin1").partition(":")
            hdrs[k.strip().lower()] = v.strip()
        if method == "HEAD" or status in (204, 304) or status < 200:
            body = 0 if sink else b""
        elif "content-length" in hdrs:
            body = self._exact(int(hdrs["content-length"]), sink)
        elif "chunked" in hdrs.get("transfer-encoding", ""):
            parts, total = [], 0
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                chunk = self._exact(size, sink)
                total += chunk if sink else len(chunk)
                if not sink:
                    parts.append(chunk)
                self._line()
            body = total if sink else b"".join(parts)
        else:  # read to EOF
            parts = [self.buf]
            self.buf = b""
            while True:
                d = self.sock.recv(MiB)
                if not d:
                    break
                parts.append(d)
            body = b"".join(parts)
            body = len(body) if sink else body
            self.close()
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, body


def get(addr, path, headers=None, method="GET"):
    c = Conn(addr, timeout=30)
    try:
        return c.request(method, path, headers)
    finally:
        c.close()


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def lat_summary(xs):
    return {"n": len(xs), "p50_ms": pct(xs, 50) * 1e3, "p99_ms": pct(xs, 99) * 1e3, "mean_ms": statistics.mean(xs) * 1e3}


# --------------------------------------------------------------------------------------------
# /proc helpers


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def machine_cpu_s():
    """CPU-seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK


def procs_cpu_s(pids):
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_s(pid)
        except OSError:
            pass
    return total


def proc_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_hwm(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


class ResourceProbe:
    """CPU-seconds (utime+stime) and peak RSS (VmHWM, reset at start) of named process groups."""

    def __init__(self, groups):
        self.groups = groups  # name -> [pid]

    def __enter__(self):
        self.cpu0 = {}
        for name, pids in self.groups.items():
            for p in pids:
                reset_hwm(p)
            self.cpu0[name] = sum(proc_cpu_s(p) for p in pids)
        return self

    def __exit__(self, *exc):
        self.result = {}
        for name, pids in self.groups.items():
            self.result[name] = {
                "cpu_s": sum(proc_cpu_s(p) for p in pids) - self.cpu0[name],
                "peak_rss_mib": sum(proc_kib(p, "VmHWM") for p in pids) / 1024,
                "rss_mib": sum(proc_kib(p, "VmRSS") for p in pids) / 1024,
            }


# --------------------------------------------------------------------------------------------
# Images written by hand: uncompressed tar layers (no gzip), config, manifest, OCI layout.


def tar_header(name, size):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    return ti.tobuf(format=tarfile.USTAR_FORMAT)


def write_layer(path, payload_size, seed=None):
    """A tar layer with one file of random bytes; returns (digest, size)."""
    h = hashlib.sha256()
    rng = random.Random(seed) if seed is not None else None
    with open(path, "wb") as f:
        hdr = tar_header("data/blob.bin", payload_size)
        f.write(hdr)
        h.update(hdr)
        left = payload_size
        while left:
            n = min(left, 8 * MiB)
            b = rng.randbytes(n) if rng else os.urandom(n)
            f.write(b)
            h.update(b)
            left -= n
        tail = b"\0" * ((-payload_size) % 512) + b"\0" * 1024
        f.write(tail)
        h.update(tail)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)


class Layout:
    """An OCI image layout directory; each image is one manifest with tar layers."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        self.refs = {}  # ref -> {"manifest": desc, "layers": [desc], "config": desc}

    def blob_path(self, digest):
        return os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1])

    def add_bytes(self, data):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.blob_path(d), "wb") as f:
            f.write(data)
        return d

    def add_layer(self, payload_size, seed=None):
        tmp = os.path.join(self.path, "layer.tmp")
        d, size = write_layer(tmp, payload_size, seed)
        os.replace(tmp, self.blob_path(d))
        return {"mediaType": OCI_LAYER, "digest": d, "size": size}

    def add_image(self, ref, layers):
        cfg = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        }, separators=(",", ":")).encode()
        cdesc = {"mediaType": OCI_CONFIG, "digest": self.add_bytes(cfg), "size": len(cfg)}
        man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": layers},
                         separators=(",", ":")).encode()
        mdesc = {"mediaType": OCI_MANIFEST, "digest": self.add_bytes(man), "size": len(man)}
        self.refs[ref] = {"manifest": mdesc, "config": cdesc, "layers": layers}
        self.write_index()
        return self.refs[ref]

    def write_index(self):
        idx = {"schemaVersion": 2, "manifests": [
            dict(v["manifest"], annotations={"org.opencontainers.image.ref.name": r}) for r, v in self.refs.items()]}
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump(idx, f)

    def push(self, ref, reg, repo, tag="v1", ns=None):
        """Push with the distribution API through curl (monolithic uploads, streamed with -T).
        skopeo would gzip the uncompressed layers on the way to a registry (and so change their
        digests); this keeps the bytes as they are."""
        img = self.refs[ref]
        for d in [img["config"]] + img["layers"]:
            url = f"http://{reg}/v2/{repo}/blobs/{d['digest']}"
            if sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", url], ns=ns).strip() == "200":
                continue
            hdrs = sh(["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST",
                       f"http://{reg}/v2/{repo}/blobs/uploads/"], ns=ns)
            loc = re.search(r"(?im)^location:\s*(\S+)", hdrs).group(1)
            if loc.startswith("/"):
                loc = f"http://{reg}{loc}"
            loc += ("&" if "?" in loc else "?") + "digest=" + d["digest"]
            code = sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-H",
                       "Content-Type: application/octet-stream", "-T", self.blob_path(d["digest"]), loc],
                      ns=ns, timeout=900).strip()
            if code != "201":
                raise RuntimeError(f"blob upload {d['digest']} to {reg}/{repo}: HTTP {code}")
        m = img["manifest"]
        code = sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-H",
                   f"Content-Type: {m['mediaType']}", "-T", self.blob_path(m["digest"]),
                   f"http://{reg}/v2/{repo}/manifests/{tag}"], ns=ns).strip()
        if code != "201":
            raise RuntimeError(f"manifest upload to {reg}/{repo}:{tag}: HTTP {code}")
        got = sh(["curl", "-s", "-I", "-H", f"Accept: {m['mediaType']}", f"http://{reg}/v2/{repo}/manifests/{tag}"],
                 ns=ns)
        if m["digest"] not in got:
            raise RuntimeError(f"{reg}/{repo}:{tag} is not {m['digest']}: {got}")

    def ctr_import(self, sock, ref, name):
        """Import one image into containerd (no unpack) as image record NAME, streaming a tar."""
        img = self.refs[ref]
        errf = tempfile.TemporaryFile()
        p = subprocess.Popen(["ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--no-unpack",
                              "--base-name", name.rsplit(":", 1)[0], "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
        try:
            with tarfile.open(fileobj=p.stdin, mode="w|", format=tarfile.USTAR_FORMAT) as t:
                def add(name_in_tar, data=None, path=None):
                    ti = tarfile.TarInfo(name_in_tar)
                    ti.mode = 0o644
                    if path:
                        ti.size = os.path.getsize(path)
                        with open(path, "rb") as f:
                            t.addfile(ti, f)
                    else:
                        ti.size = len(data)
                        t.addfile(ti, __import__("io").BytesIO(data))
                add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                tag = name.rsplit(":", 1)[1]
                idx = {"schemaVersion": 2, "manifests": [
                    dict(img["manifest"], annotations={"org.opencontainers.image.ref.name": tag})]}
                add("index.json", json.dumps(idx).encode())
                for d in [img["manifest"], img["config"]] + img["layers"]:
                    add("blobs/sha256/" + d["digest"].split(":", 1)[1], path=self.blob_path(d["digest"]))
            p.stdin.close()
            p.wait(timeout=900)
        except BaseException:
            p.kill()
            p.wait()
            raise
        if p.returncode:
            errf.seek(0)
            raise RuntimeError(f"ctr import failed: {errf.read().decode(errors='replace')[-1000:]}")


# --------------------------------------------------------------------------------------------
# Components: nginx, registry, containerd, peerd


class Nginx:
    def __init__(self, work, root):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.root = root
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        d = self.dir
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen {self.addr}; root {self.root}; }}
}}
""")
        self.proc = CLEAN.spawn(["nginx", "-c", conf, "-p", d], os.path.join(d, "nginx.log"))
        wait_until("nginx listening", 15, lambda: _connects(self.addr))

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)

    def stop(self):
        CLEAN.stop(self.proc)


def _connects(addr):
    try:
        socket.create_connection(tuple([addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1])]), timeout=1).close()
        return True
    except OSError:
        return False


class Registry:
    def __init__(self, work):
        self.dir = os.path.join(work, "registry")

    def start(self):
        CLEAN.registries.append(self.dir)
        self.addr = sh([os.path.join(FIX, "registry.sh"), "start", self.dir], timeout=60).strip()
        self.pid = int(open(os.path.join(self.dir, "pid")).read())
        return self.addr

    def stop(self):
        sh([os.path.join(FIX, "registry.sh"), "stop", self.dir], timeout=60)
        CLEAN.registries.remove(self.dir)


class Containerd:
    def __init__(self, d, ns=None):
        self.dir = d
        self.ns = ns

    def start(self):
        CLEAN.containerds.append(self.dir)
        self.sock = sh([os.path.join(FIX, "containerd.sh"), "start", self.dir], timeout=60, ns=self.ns).strip()
        self.pid = int(open(os.path.join(self.dir, "pid")).read())
        return self

    def stop(self):
        sh([os.path.join(FIX, "containerd.sh"), "stop", self.dir], timeout=120)
        CLEAN.containerds.remove(self.dir)


class Peerd:
    def __init__(self, binary, work, name, ip, ports, args, env=None, ns=None, http_ip=None):
        self.name, self.ip, self.ns = name, ip, ns
        self.http = f"{http_ip or ip}:{ports[0]}"
        self.metrics = f"{ip}:{ports[1]}"
        self.p2p = f"{ip}:{ports[2]}"
        # The peer listener (other nodes fetch here, authenticated): a 4th port, or Azure/peerd's 5001.
        self.peer = f"{ip}:{ports[3] if len(ports) > 3 else 5001}"
        self.data = os.path.join(work, "peerd-" + name)
        os.makedirs(self.data, exist_ok=True)
        self.logfile = os.path.join(work, f"peerd-{name}.log")
        cmd = [binary, "run", "--http-addr", self.http, "--metrics-addr", self.metrics, "--p2p-addr", self.p2p,
               "--peer-addr", self.peer, "--data-dir", self.data] + args
        if ns:
            cmd = ["ip", "netns", "exec", ns] + cmd
        e = {k: v for k, v in os.environ.items() if not k.startswith("PEERD_")}
        # /debug/* on the metrics listener too: the benchmark reads them there.
        e.update({"PEERD_P2P__SECRET": SECRET, "PEERD_P2P__BOOTSTRAP_INTERVAL": "1s", "PEERD_LOG__FORMAT": "text",
                  "PEERD_METRICS__DEBUG": "true"})
        e.update(env or {})
        if os.environ.get("PEERD_BENCH_LOG"):
            e["PEERD_LOG__LEVEL"] = os.environ["PEERD_BENCH_LOG"]
        self.proc = CLEAN.spawn(cmd, self.logfile, env=e)
        self.pid = self.proc.pid

    def mget(self, path, timeout=10):
        """GET on the metrics listener; returns (status, text)."""
        if self.ns:
            r = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-s", "--max-time", str(timeout), "-w",
                                "\n%{http_code}", f"http://{self.metrics}{path}"], capture_output=True, timeout=timeout + 5)
            text, _, code = r.stdout.decode(errors="replace").rpartition("\n")
            return int(code or 0), text
        try:
            c = Conn(self.metrics, timeout=timeout)
            s, _, b = c.request("GET", path)
            c.close()
            return s, b.decode(errors="replace")
        except OSError:
            return 0, ""

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"peerd {self.name} exited; log tail:\n{tail(self.logfile)}")
        return self.mget("/readyz", 3)[0] == 200

    def peer_id(self):
        return json.loads(self.mget("/debug/p2p")[1])["peer_id"]

    def resolve(self, key):
        s, t = self.mget(f"/debug/resolve?key={key}", 10)
        if s != 200:
            return None
        return json.loads(t)

    def metric(self, name, *labels):
        s, text = self.mget("/metrics/prometheus")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (len(line) > len(name) and line[len(name)] in " {"):
                if all(l in line for l in labels):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Measurements


def throughput(addr, path, size, streams, headers=None):
    results = [None] * streams
    barrier = threading.Barrier(streams + 1)

    def one(i):
        c = Conn(addr, timeout=120)
        try:
            barrier.wait()
            t = time.perf_counter()
            s, _, n = c.request("GET", path, headers, sink=True)
            results[i] = (s, n, time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001
            results[i] = (0, 0, repr(e))
        finally:
            c.close()

    ts = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join(900)
    wall = time.perf_counter() - t0
    bad = [r for r in results if r is None or r[0] != 200 or r[1] != size]
    if bad:
        raise RuntimeError(f"{addr}{path}: bad transfers: {bad[:3]}")
    return {"gb_s": streams * size / wall / 1e9, "wall_s": wall, "bytes": streams * size,
            "stream_s": [r[2] for r in results]}


def tp_rounds(cases, size, streams, reps):
    """Each round runs every case once, in turn, so slow phases of a noisy machine hit all cases.
    cases: name -> (addr, path, probe groups or None). Returns name -> summary."""
    runs = {k: [] for k in cases}
    for _ in range(reps):
        for name, (addr, path, probe) in cases.items():
            if probe:
                with ResourceProbe(probe) as pr:
                    r = throughput(addr, path, size, streams)
                r["resources"] = pr.result
            else:
                r = throughput(addr, path, size, streams)
            runs[name].append(r)
    out = {}
    for name, rs in runs.items():
        gbs = [r["gb_s"] for r in rs]
        out[name] = {"gb_s": statistics.median(gbs), "runs_gb_s": gbs, "streams": streams,
                     "bytes_per_run": streams * size}
        if "resources" in rs[-1]:
            out[name]["resources"] = rs[-1]["resources"]  # the last round
            out[name]["resources_gib"] = rs[-1]["bytes"] / GiB
    return out


def interleaved_latency(targets, n, warm=20):
    """targets: name -> (addr, method, path, headers, expect_status). Round-robin, keep-alive."""
    conns = {k: Conn(v[0], timeout=30) for k, v in targets.items()}
    lat = {k: [] for k in targets}
    try:
        for i in range(n + warm):
            for k, (addr, method, path, headers, expect) in targets.items():
                t = time.perf_counter()
                s, _, _ = conns[k].request(method, path, headers, sink=True)
                dt = time.perf_counter() - t
                if s != expect:
                    raise RuntimeError(f"{k}: {method} {path} -> {s}, want {expect}")
                if i >= warm:
                    lat[k].append(dt)
    finally:
        for c in conns.values():
            c.close()
    return {k: lat_summary(v) | {"samples_ms": [x * 1e3 for x in v]} for k, v in lat.items()}


def machine_info(binary):
    def cpuinfo(key):
        for line in open("/proc/cpuinfo"):
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
        return ""

    mem = proc_meminfo("MemTotal")
    commit = sh(["git", "-C", ROOT, "rev-parse", "HEAD"], check=False).strip()
    dirty = bool(sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], check=False).strip())
    ver = sh([binary, "--version"], check=False).strip()
    return {
        "nproc": os.cpu_count(), "cpu_model": cpuinfo("model name"), "cpu_mhz": cpuinfo("cpu MHz"),
        "sha_ni": " sha_ni" in cpuinfo("flags") + " ", "kernel": os.uname().release,
        "mem_gib": round(mem / 1024 / 1024, 1), "peerd_commit": commit, "worktree_dirty": dirty,
        "peerd_version": ver, "binary": os.path.relpath(binary, ROOT),
        "binary_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(binary))),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "tools": {t: sh(c, check=False).strip().splitlines()[0] if sh(c, check=False).strip() else "" for t, c in {
            "nginx": ["sh", "-c", "nginx -v 2>&1"], "docker-registry": ["docker-registry", "--version"],
            "containerd": ["containerd", "--version"], "python": ["python3", "--version"]}.items()},
    }


def proc_meminfo(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.cfg = dict(SMOKE if args.smoke else FULL)
        self.work = tempfile.mkdtemp(prefix="pdb-", dir="/tmp")
        os.chmod(self.work, 0o755)  # nginx workers (not root) read the blob under it
        self.binary = os.path.abspath(args.binary)
        self.res = {"mode": "smoke" if self.smoke else "full", "config": self.cfg, "errors": {}}
        self.timings = {}

    def section(self, name, fn, always=False):
        if self.args.only and name not in self.args.only and not always:
            return
        log(f"== {name}")
        t = time.time()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log(f"section {name} failed: {e}")
            traceback.print_exc()
            self.res["errors"][name] = f"{type(e).__name__}: {e}"
            if self.smoke:
                raise
        finally:
            self.timings[name] = round(time.time() - t, 1)
            log(f"== {name} done in {self.timings[name]} s")

    # ---- set-up shared by throughput, latency, resources, blobs ------------------------------

    def setup_single(self):
        c = self.cfg
        w = self.work
        log(f"writing images (blob {c['big'] / MiB:.0f} MiB)")
        t = time.time()
        self.layout = Layout(os.path.join(w, "oci"))
        big = self.layout.add_layer(c["big"] - 1536)  # + 512 tar header + 1024 end blocks = c['big'] bytes
        assert big["size"] == c["big"], big
        self.big = big
        self.layout.add_image("big", [big])
        small = self.layout.add_layer(4096 - 1536)  # a 4 KiB blob
        self.small_layer = small
        self.layout.add_image("small", [small])
        miss = self.layout.add_layer(2048)
        self.miss_layer = miss
        self.layout.add_image("miss", [miss])
        self.res["setup_gen_s"] = time.time() - t
        # nginx serves the very same bytes as the blob
        self.www = os.path.join(w, "www")
        os.makedirs(self.www)
        os.link(self.layout.blob_path(big["digest"]), os.path.join(self.www, "big.bin"))

        self.reg = Registry(w)
        self.reg_addr = self.reg.start()
        t = time.time()
        for ref in ("big", "small", "miss"):
            self.layout.push(ref, self.reg_addr, f"bench/{ref}")
        self.res["setup_push_s"] = time.time() - t
        self.nginx = Nginx(w, self.www)
        self.nginx.start()
        self.ca = Containerd(os.path.join(w, "ca")).start()
        self.cb = Containerd(os.path.join(w, "cb")).start()
        t = time.time()
        for ref in ("big", "small"):
            self.layout.ctr_import(self.ca.sock, ref, f"{self.reg_addr}/bench/{ref}:v1")
        self.res["setup_import_s"] = time.time() - t
        ip_a, ip_b = "127.0.0.2", "127.0.0.3"
        ports = (free_port(ip_a), free_port(ip_a), free_port(ip_a), free_port(ip_a))
        self.ns_q = "ns=" + self.reg_addr.replace(":", "%3A")
        # Only B dials A. peerd takes a peer's mirror IP from the p2p connection's remote address;
        # on one loopback interface a connection A dials comes from 127.0.0.1, not 127.0.0.2, so
        # B would learn A as 127.0.0.1:PORT (nothing listens there) if A dialed B.
        common = ["--mirror-host", self.reg_addr, "--plain-http-host", self.reg_addr]
        boot = ["--bootstrap-peer", f"{ip_a}:{ports[2]}"]
        benv = {"PEERD_BLOBS__ALLOWED_HOSTS": f'["http://{self.nginx.addr}"]', "PEERD_P2P__RESOLVE_TIMEOUT": "500ms"}
        self.a = Peerd(self.binary, w, "a", ip_a, ports, common + ["--containerd-socket", self.ca.sock], benv)
        self.b = Peerd(self.binary, w, "b", ip_b, ports, common + boot + ["--containerd-socket", self.cb.sock],
                       dict(benv, PEERD_BLOBS__PREFETCH="false"))
        for p in (self.a, self.b):
            wait_until(f"peerd {p.name} ready", 60, p.ready, 0.2)
        self.a_id = self.a.peer_id()
        for d in (big["digest"], small["digest"]):
            wait_until("B resolves A for the blobs", 60,
                       lambda d=d: self.a_id in json.dumps(self.b.resolve(d) or {}), 0.3)
        time.sleep(1)
        self.res["resources_idle"] = {
            "peerd_a_rss_mib": proc_kib(self.a.pid, "VmRSS") / 1024,
            "peerd_b_rss_mib": proc_kib(self.b.pid, "VmRSS") / 1024,
            "nginx_rss_mib": sum(proc_kib(p, "VmRSS") for p in self.nginx.pids()) / 1024,
            "registry_rss_mib": proc_kib(self.reg.pid, "VmRSS") / 1024,
            "containerd_rss_mib": proc_kib(self.ca.pid, "VmRSS") / 1024,
        }

    def teardown_single(self):
        for p in (getattr(self, "a", None), getattr(self, "b", None)):
            if p:
                CLEAN.stop(p.proc)
        for c in (getattr(self, "ca", None), getattr(self, "cb", None)):
            if c and c.dir in CLEAN.containerds:
                c.stop()
        if getattr(self, "nginx", None) and self.nginx.proc.poll() is None:
            self.nginx.stop()
        shutil.rmtree(os.path.join(self.work, "ca"), ignore_errors=True)
        shutil.rmtree(os.path.join(self.work, "cb"), ignore_errors=True)

    # ---- 1 + 3: throughput and resources ------------------------------------------------------

    def bench_throughput(self):
        c = self.cfg
        size = self.big["size"]
        d = self.big["digest"]
        cases = {
            "nginx": (self.nginx.addr, "/big.bin", {"nginx": self.nginx.pids()}),
            "registry": (self.reg_addr, f"/v2/bench/big/blobs/{d}", {"registry": [self.reg.pid]}),
            "peerd_local": (self.a.http, f"/v2/bench/big/blobs/{d}?{self.ns_q}",
                            {"peerd_a": [self.a.pid], "containerd_a": [self.ca.pid]}),
        }
        for name, (addr, path, _) in cases.items():
            throughput(addr, path, size, 1)  # warm-up (page cache, connections)
        tp = {k: {} for k in cases}
        for streams, reps in ((1, c["reps1"]), (c["streams"], c["repsN"])):
            log(f"throughput: {streams} stream(s), {reps} round(s) of {', '.join(cases)}")
            for k, v in tp_rounds(cases, size, streams, reps).items():
                tp[k][str(streams)] = v
                log(f"  {k}: {streams} stream(s) {v['gb_s']:.2f} GB/s (runs {[round(x, 2) for x in v['runs_gb_s']]})")
        self.res["throughput"] = tp
        self.components()

    def bench_latency(self):
        n = self.cfg["lat_n"]
        img = self.layout.refs["small"]
        man, blob = img["manifest"]["digest"], self.small_layer["digest"]
        acc = {"Accept": OCI_MANIFEST}
        R, A, q = self.reg_addr, self.a.http, self.ns_q
        kinds = {
            "manifest_head": ("HEAD", f"/v2/bench/small/manifests/{man}", acc),
            "manifest_get": ("GET", f"/v2/bench/small/manifests/{man}", acc),
            "blob_4k_get": ("GET", f"/v2/bench/small/blobs/{blob}", {}),
            "manifest_get_by_tag": ("GET", "/v2/bench/small/manifests/v1", acc),
        }
        out = {}
        for k, (m, p, h) in kinds.items():
            r = interleaved_latency({"registry": (R, m, p, h, 200), "peerd": (A, m, p + "?" + q, h, 200)}, n)
            out[k] = r
            log(f"latency {k}: registry p50 {r['registry']['p50_ms']:.3f} ms p99 {r['registry']['p99_ms']:.3f}; "
                f"peerd p50 {r['peerd']['p50_ms']:.3f} p99 {r['peerd']['p99_ms']:.3f}")
        out["_note"] = "by digest: served from A's containerd; by tag: peerd asks the upstream (tags move)"
        self.res["latency"] = out
        self.local_served_before_peer = self.a.metric("peerd_served_bytes_total", 'source="local"')

    def bench_peer(self):
        """Registry stopped: B (empty containerd) streams from A."""
        c = self.cfg
        self.reg.stop()
        size, d = self.big["size"], self.big["digest"]
        path = f"/v2/bench/big/blobs/{d}?{self.ns_q}"
        up0 = self.b.metric("peerd_served_bytes_total", 'source="upstream"')
        peer0 = self.b.metric("peerd_served_bytes_total", 'source="peer"')
        probe = {"peerd_b": [self.b.pid], "peerd_a": [self.a.pid], "containerd_a": [self.ca.pid]}
        # nginx again, in the same rounds: the peer path's ratio is to this phase's nginx
        cases = {"nginx": (self.nginx.addr, "/big.bin", {"nginx": self.nginx.pids()}),
                 "peerd_peer": (self.b.http, path, probe)}
        throughput(self.b.http, path, size, 1)
        tp, ng = {}, {}
        for streams, reps in ((1, c["reps1"]), (c["streams"], c["repsN"])):
            r = tp_rounds(cases, size, streams, reps)
            tp[str(streams)] = r["peerd_peer"]
            ng[str(streams)] = r["nginx"]
            log(f"  peerd_peer: {streams} stream(s) {r['peerd_peer']['gb_s']:.2f} GB/s; nginx in the same rounds "
                f"{r['nginx']['gb_s']:.2f} GB/s")
        up1 = self.b.metric("peerd_served_bytes_total", 'source="upstream"')
        peer1 = self.b.metric("peerd_served_bytes_total", 'source="peer"')
        tp["check"] = {"b_bytes_from_peer": peer1 - peer0, "b_bytes_from_upstream": up1 - up0}
        assert up1 == up0 and peer1 > peer0, tp["check"]
        self.res.setdefault("throughput", {})["peerd_peer"] = tp
        self.res["throughput"]["nginx_peer_phase"] = ng
        # 4 KiB blob and manifest from a peer (no baseline: the registry is stopped)
        blob = self.small_layer["digest"]
        man = self.layout.refs["small"]["manifest"]["digest"]
        r = interleaved_latency({
            "blob_4k_from_peer": (self.b.http, "GET", f"/v2/bench/small/blobs/{blob}?{self.ns_q}", {}, 200),
            "manifest_from_peer": (self.b.http, "GET", f"/v2/bench/small/manifests/{man}?{self.ns_q}",
                                   {"Accept": OCI_MANIFEST}, 200),
        }, max(10, self.cfg["lat_n"] // 5), warm=5)
        self.res.setdefault("latency", {})["peer"] = r
        if self.cfg["profile"]:
            self.profile_peer(path, size)

    def components(self):
        """Where time goes on the local path: containerd's read speed, sha256 speed."""
        comp = {}
        d = self.big["digest"]
        t = time.perf_counter()
        sh(["sh", "-c", f"ctr -a {self.ca.sock} -n k8s.io content get {d} > /dev/null"], timeout=600)
        comp["ctr_content_get_gb_s"] = self.big["size"] / (time.perf_counter() - t) / 1e9
        path = self.layout.blob_path(d)
        h = hashlib.sha256()
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while True:
                b = f.read(4 * MiB)
                if not b:
                    break
                h.update(b)
        comp["sha256_python_openssl_gb_s"] = self.big["size"] / (time.perf_counter() - t) / 1e9
        t = time.perf_counter()
        sh(["sha256sum", path], timeout=600)
        comp["sha256sum_gb_s"] = self.big["size"] / (time.perf_counter() - t) / 1e9
        log(f"components: {comp}")
        self.res["components"] = comp
        if self.cfg["profile"]:
            self.res["profile_local"] = self.perf_profile(
                self.a, self.a.http, f"/v2/bench/big/blobs/{d}?{self.ns_q}", self.big["size"], extra=[self.ca.pid])

    def profile_peer(self, path, size):
        self.res["profile_peer"] = self.perf_profile(self.b, self.b.http, path, size, extra=[self.a.pid])

    def perf_profile(self, node, addr, path, size, extra=()):
        """perf record (cpu-clock) of peerd during one 1-stream transfer; top symbols."""
        if not shutil.which("perf"):
            return {"error": "perf not installed"}
        out = {}
        pids = [node.pid] + list(extra)
        data = os.path.join(self.work, f"perf-{node.name}.data")
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", data,
                                "-p", ",".join(map(str, pids))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        CLEAN.procs.append(rec)
        time.sleep(0.5)
        cpu0 = {p: proc_cpu_s(p) for p in pids}
        r = throughput(addr, path, size, 1)
        cpu1 = {p: proc_cpu_s(p) for p in pids}
        os.kill(rec.pid, signal.SIGINT)
        try:
            rec.wait(60)
        except subprocess.TimeoutExpired:
            pass
        CLEAN.stop(rec)
        out["gb_s_while_profiled"] = r["gb_s"]
        out["wall_s"] = r["wall_s"]
        out["cpu_s"] = {str(p): cpu1[p] - cpu0[p] for p in pids}
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "comm,dso,sym",
                              "--percent-limit", "1.5", "-g", "none"], capture_output=True, timeout=300)
        lines = [l for l in rep.stdout.decode(errors="replace").splitlines() if l.strip() and not l.startswith("#")]
        out["top"] = lines[:30]
        return out

    # ---- 5: /blobs ----------------------------------------------------------------------------

    def bench_blobs(self):
        n = self.cfg["blobs_reads"]
        size = self.big["size"]
        up = self.nginx.addr
        bpath = f"/blobs/http://{up}/big.bin?sv=bench&sig=x"
        rnd = random.Random(42)

        def reads(seed):
            r = random.Random(seed)
            out = []
            for _ in range(n):
                ln = r.randint(4096, MiB)
                off = r.randrange(0, size - ln)
                out.append((off, ln))
            return out

        def run(addr, path, rs):
            c = Conn(addr, timeout=60)
            lat, total = [], 0
            try:
                for off, ln in rs:
                    t = time.perf_counter()
                    s, _, got = c.request("GET", path, {"Range": f"bytes={off}-{off + ln - 1}"}, sink=True)
                    lat.append(time.perf_counter() - t)
                    if s != 206 or got != ln:
                        raise RuntimeError(f"{addr}{path} range {off}+{ln}: {s} {got}")
                    total += got
            finally:
                c.close()
            return lat_summary(lat) | {"p90_ms": pct(lat, 90) * 1e3, "mb_s": total / sum(lat) / 1e6, "bytes": total,
                                       "samples_ms": [x * 1e3 for x in lat]}

        del rnd
        out = {}
        ra, rb = reads(1), reads(2)
        out["nginx_direct"] = run(up, "/big.bin", ra)
        # A: cold full read (fills the cache through the upstream, prefetch on), then hits
        t = time.perf_counter()
        c = Conn(self.a.http, timeout=300)
        s, _, got = c.request("GET", bpath, sink=True)
        c.close()
        assert s == 200 and got == size, (s, got)
        out["a_cold_full_read_gb_s"] = size / (time.perf_counter() - t) / 1e9
        wait_until("A's /blobs cache holds the file", 300,
                   lambda: self.a.metric("peerd_blobs_cache_bytes") >= size, 0.5)
        h0 = self.a.metric("peerd_blobs_cache_hits_total")
        out["a_local_hit"] = run(self.a.http, bpath, ra)
        out["a_local_hit"]["cache_hits"] = self.a.metric("peerd_blobs_cache_hits_total") - h0
        # B learns the file (one byte) while the upstream is up, then the upstream stops.
        s, _, _ = get(self.b.http, bpath, {"Range": "bytes=0-0"})
        assert s == 206, s
        time.sleep(2 if self.smoke else 5)  # A's chunk advertisements
        self.nginx.stop()
        p0 = self.b.metric("peerd_blobs_bytes_total", 'source="peer"')
        u0 = self.b.metric("peerd_blobs_bytes_total", 'source="upstream"')
        l0 = self.b.metric("peerd_blobs_bytes_total", 'source="local"')
        out["b_from_peer"] = run(self.b.http, bpath, rb)
        out["b_from_peer"]["chunk_bytes"] = {
            "peer": self.b.metric("peerd_blobs_bytes_total", 'source="peer"') - p0,
            "upstream": self.b.metric("peerd_blobs_bytes_total", 'source="upstream"') - u0,
            "local": self.b.metric("peerd_blobs_bytes_total", 'source="local"') - l0,
        }
        assert out["b_from_peer"]["chunk_bytes"]["peer"] > 0, out["b_from_peer"]["chunk_bytes"]
        for k in ("nginx_direct", "a_local_hit", "b_from_peer"):
            log(f"blobs {k}: p50 {out[k]['p50_ms']:.2f} ms p99 {out[k]['p99_ms']:.2f} ms {out[k]['mb_s']:.0f} MB/s")
        self.res["blobs"] = out

    # ---- 2b + 4: DHT clusters on 127.0.1.x ----------------------------------------------------

    def start_dht(self, n, reg_addr, with_containerd=False):
        w = os.path.join(self.work, f"dht{n}")
        os.makedirs(w, exist_ok=True)
        ips = [f"127.0.1.{i + 1}" for i in range(n)]
        ports = (free_port(ips[0]), free_port(ips[0]), free_port(ips[0]), free_port(ips[0]))
        boot = []
        for ip in ips[:3]:
            boot += ["--bootstrap-peer", f"{ip}:{ports[2]}"]
        ctrd = None
        if with_containerd:
            ctrd = Containerd(os.path.join(w, "c0")).start()
        nodes = []
        t0 = time.time()
        for i, ip in enumerate(ips):
            sock = ctrd.sock if (ctrd and i == 0) else "/nonexistent.sock"
            nodes.append(Peerd(self.binary, w, f"n{i}", ip, ports,
                               ["--mirror-host", reg_addr, "--plain-http-host", reg_addr,
                                "--containerd-socket", sock] + boot,
                               {"PEERD_HTTP__WORKERS": "1", "PEERD_LOG__LEVEL": "warn"}))
        for p in nodes:
            wait_until(f"{p.name} ready", 120, p.ready, 0.2)
        return nodes, ctrd, time.time() - t0

    def stop_dht(self, nodes, ctrd):
        CLEAN.stop_many([p.proc for p in nodes])
        if ctrd:
            ctrd.stop()

    def miss_once(self, nodes, reg_addr):
        n = self.cfg["miss_n"]
        d = self.miss_layer["digest"]
        ns_q = "ns=" + reg_addr.replace(":", "%3A")
        up0 = nodes[0].metric("peerd_served_bytes_total", 'source="upstream"')
        r = interleaved_latency({
            "registry": (reg_addr, "GET", f"/v2/bench/miss/blobs/{d}", {}, 200),
            "peerd_miss": (nodes[0].http, "GET", f"/v2/bench/miss/blobs/{d}?{ns_q}", {}, 200),
        }, n, warm=3)
        up1 = nodes[0].metric("peerd_served_bytes_total", 'source="upstream"')
        assert up1 - up0 >= n * self.miss_layer["size"], (up0, up1)
        r["fallback_overhead_p50_ms"] = r["peerd_miss"]["p50_ms"] - r["registry"]["p50_ms"]
        r["fallback_overhead_p99_ms"] = r["peerd_miss"]["p99_ms"] - r["registry"]["p99_ms"]
        return r

    def bench_miss_and_dht(self):
        reg_addr = self.reg.start()  # same storage, new port (it was stopped for the peer test)
        miss = {}
        for n in self.cfg["miss_nodes"]:
            log(f"miss: {n}-node DHT")
            nodes, ctrd, start_s = self.start_dht(n, reg_addr)
            try:
                time.sleep(2)
                miss[str(n)] = self.miss_once(nodes, reg_addr) | {"cluster_start_s": start_s}
                log(f"  {n} nodes: peerd miss p50 {miss[str(n)]['peerd_miss']['p50_ms']:.1f} ms "
                    f"p99 {miss[str(n)]['peerd_miss']['p99_ms']:.1f}; registry p50 "
                    f"{miss[str(n)]['registry']['p50_ms']:.2f} ms")
            finally:
                self.stop_dht(nodes, ctrd)
        self.res["miss"] = miss
        self.bench_dht(reg_addr)

    def bench_dht(self, reg_addr):
        n = self.cfg["dht_nodes"]
        log(f"dht: {n} nodes")
        nodes, ctrd, start_s = self.start_dht(n, reg_addr, with_containerd=True)
        out = {"nodes": n, "cluster_start_s": start_s}
        try:
            time.sleep(3)
            out["idle_rss_mib"] = [proc_kib(p.pid, "VmRSS") / 1024 for p in nodes]
            out["routing_table_peers"] = [json.loads(p.mget("/debug/p2p")[1]).get("routing_table_peers") for p in nodes]
            n0 = nodes[0].peer_id()
            # node 0 provides: a fresh image (random layer) imported into its containerd. peerd's
            # advertiser sees the image event and publishes tag, manifest, config and layer.
            lay = Layout(os.path.join(self.work, "dht-oci"))
            layer = lay.add_layer(2048)
            lay.add_image("v1", [layer])
            key = layer["digest"]
            t0 = time.time()
            lay.ctr_import(ctrd.sock, "v1", f"{reg_addr}/bench/dht:v1")
            out["import_s"] = time.time() - t0
            seen = {}
            lock = threading.Lock()
            others = nodes[1:]

            def poll(p):
                deadline = t0 + 120
                while time.time() < deadline:
                    r = p.resolve(key)
                    if r and any(x.get("id") == n0 for x in r.get("peers", [])):
                        with lock:
                            seen[p.name] = time.time() - t0
                        return
                    time.sleep(0.05)

            ts = []
            sem = threading.Semaphore(16)

            def guarded(p):
                with sem:
                    poll(p)

            for p in others:
                t = threading.Thread(target=guarded, args=(p,))
                t.start()
                ts.append(t)
            for t in ts:
                t.join(180)
            out["provide_to_resolvable_s"] = sorted(seen.values())
            out["resolvable_everywhere_s"] = max(seen.values()) if len(seen) == len(others) else None
            out["resolvable_nodes"] = f"{len(seen)}/{len(others)}"
            out["note_poll"] = "16 pollers in parallel, 50 ms apart per node: includes polling granularity"
            if len(seen) != len(others):
                raise RuntimeError(f"only {len(seen)} of {len(others)} nodes resolved node 0")
            hit, missk = [], []
            unknown = "sha256:" + hashlib.sha256(os.urandom(16)).hexdigest()
            for p in others:
                for _ in range(self.cfg["dht_lookups"]):
                    r = p.resolve(key)
                    hit.append(r["seconds"])
                r = p.resolve(unknown)
                missk.append(r["seconds"])
            out["lookup_found"] = lat_summary(hit) | {"samples_ms": [x * 1e3 for x in hit]}
            out["lookup_unknown_key"] = lat_summary(missk) | {"samples_ms": [x * 1e3 for x in missk]}
            out["rss_after_mib"] = [proc_kib(p.pid, "VmRSS") / 1024 for p in nodes]
            out["rss_mib_mean"] = statistics.mean(out["rss_after_mib"])
            out["rss_mib_max"] = max(out["rss_after_mib"])
            log(f"dht: everywhere after {out['resolvable_everywhere_s']:.2f} s; lookup p50 "
                f"{out['lookup_found']['p50_ms']:.1f} ms p99 {out['lookup_found']['p99_ms']:.1f}; "
                f"RSS mean {out['rss_mib_mean']:.1f} MiB")
            if str(n) not in self.res.get("miss", {}):
                self.res.setdefault("miss", {})[str(n)] = self.miss_once(nodes, reg_addr) | {"cluster_start_s": start_s}
        finally:
            self.res["dht"] = out
            self.stop_dht(nodes, ctrd)
        self.reg.stop()

    # ---- 6: cluster pull in namespaces ---------------------------------------------------------

    def bench_cluster(self):
        c = self.cfg
        N = c["cl_nodes"]
        w = os.path.join(self.work, "cl")
        os.makedirs(w, exist_ok=True)
        # image: several uncompressed random layers
        lay = Layout(os.path.join(w, "oci"))
        layers = [lay.add_layer(c["cl_layer"] - 1536) for _ in range(c["cl_layers"])]
        img = lay.add_image("v1", layers)
        F = sum(l["size"] for l in layers) + img["config"]["size"] + img["manifest"]["size"]
        net = "10.213.0."
        reg_ip = net + "254"
        sw = "pdb-sw"
        names = [f"pdb-n{i}" for i in range(1, N + 1)]
        log(f"cluster: {N} namespaces, image {F / MiB:.0f} MiB in {len(layers)} layers")
        for ns in [sw, "pdb-reg"] + names:
            sh(["ip", "netns", "add", ns])
            CLEAN.netns.append(ns)
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", sw, "link", "set", "br0", "up"])

        def attach(ns, idx, ip, rate_out, rate_in):
            a, b = f"pdbv{idx}a", f"pdbv{idx}b"
            CLEAN.links += [a, b]
            sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
            sh(["ip", "link", "set", a, "netns", sw])
            sh(["ip", "link", "set", b, "netns", ns])
            CLEAN.links.remove(a)
            CLEAN.links.remove(b)
            sh(["ip", "-n", ns, "link", "set", b, "name", "eth0"])
            sh(["ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", sw, "link", "set", a, "master", "br0", "up"])
            # egress of the node (its upload) and egress of the switch port towards it (its download)
            shaped.append((ns, "eth0", rate_out))
            shaped.append((sw, a, rate_in))
            shape(1, "add")

        shaped = []  # (namespace, device, rate)

        def shape(div, verb="change"):
            """Apply tbf to every attached link; `div` divides every rate (case c4)."""
            for ns_, dev, rate in shaped[-2:] if verb == "add" else shaped:
                bps = (NODE_BPS if rate == NODE_RATE else REG_BPS) * 8 / div
                burst = "1mb" if rate == NODE_RATE else "256kb"
                sh(["tc", "-n", ns_, "qdisc", verb, "dev", dev, "root", "tbf", "rate", f"{int(bps)}bit", "burst",
                    burst, "latency", "50ms"])

        attach("pdb-reg", 254, reg_ip, REG_RATE, REG_RATE)
        for i, ns in enumerate(names, 1):
            attach(ns, i, net + str(i), NODE_RATE, NODE_RATE)
        # registry inside its namespace
        rdir = os.path.join(w, "reg")
        os.makedirs(os.path.join(rdir, "data"))
        reg_addr = f"{reg_ip}:5000"
        with open(os.path.join(rdir, "config.yml"), "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {rdir}/data\nhttp:\n  addr: {reg_addr}\n  secret: bench\n")
        renv = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        rproc = CLEAN.spawn(["ip", "netns", "exec", "pdb-reg", "docker-registry", "serve", rdir + "/config.yml"],
                            os.path.join(rdir, "registry.log"), env=renv)
        wait_until("ns registry", 30, lambda: sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                                  f"http://{reg_addr}/v2/"], ns="pdb-reg", check=False) == "200", 0.2)
        lay.push("v1", reg_addr, "bench/cluster", ns="pdb-reg")
        image = f"{reg_addr}/bench/cluster:v1"
        key = max(layers, key=lambda l: l["size"])["digest"]

        def reg_tx():
            return int(sh(["cat", "/sys/class/net/eth0/statistics/tx_bytes"], ns="pdb-reg"))

        def hosts(i, mirror):
            d = os.path.join(w, f"hosts{i}-{'m' if mirror else 'd'}", reg_addr)
            os.makedirs(d, exist_ok=True)
            host = f"{net}{i}:5000" if mirror else reg_addr
            with open(os.path.join(d, "hosts.toml"), "w") as f:
                f.write(f'server = "http://{reg_addr}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
                        f'  dial_timeout = "200ms"\n')
            return os.path.dirname(d)

        def start_nodes(case, with_peerd):
            ctrds, peers = [], []
            for i, ns in enumerate(names, 1):
                cd = Containerd(os.path.join(w, f"{case}c{i}"), ns=ns).start()
                ctrds.append(cd)
            if with_peerd:
                boot = []
                for i in range(1, min(N, 3) + 1):
                    boot += ["--bootstrap-peer", f"{net}{i}:5003"]
                for i, ns in enumerate(names, 1):
                    peers.append(Peerd(self.binary, w, f"{case}{i}", net + str(i), (5000, 5004, 5003),
                                       ["--mirror-host", reg_addr, "--plain-http-host", reg_addr,
                                        "--containerd-socket", ctrds[i - 1].sock] + boot, ns=ns))
                for p in peers:
                    wait_until(f"{p.name} ready", 60, p.ready, 0.2)
            return ctrds, peers

        def stop_nodes(ctrds, peers):
            CLEAN.stop_many([p.proc for p in peers])
            for cd in ctrds:
                cd.stop()
                shutil.rmtree(cd.dir, ignore_errors=True)

        def pull(i, mirror, times, t0):
            ns = names[i - 1]
            sock = os.path.join(w, f"{case_name[0]}c{i}", "containerd.sock")
            sh(["ctr", "-a", sock, "-n", "k8s.io", "image", "pull", "--hosts-dir", hosts(i, mirror), image],
               ns=ns, timeout=1800)
            times[i] = time.time() - t0

        def pull_all(idx, mirror):
            times = {}
            t0 = time.time()
            ts = [threading.Thread(target=pull, args=(i, mirror, times, t0)) for i in idx]
            for t in ts:
                t.start()
            for t in ts:
                t.join(1900)
            if len(times) != len(idx):
                raise RuntimeError(f"pulls failed: {sorted(set(idx) - set(times))}")
            return times, time.time() - t0

        case_name = [""]
        out = {"nodes": N, "image_bytes": F, "layers": len(layers), "node_rate": NODE_RATE, "registry_rate": REG_RATE}
        bound = max(F / REG_BPS, F / NODE_BPS)
        out["bound_s"] = bound
        out["no_p2p_bound_s"] = N * F / REG_BPS
        cases = {}
        for case, with_peerd in (("a", False), ("b", True), ("c", True), ("c4", True)):
            case_name[0] = case
            if case == "c4":
                # (c) again with every rate divided by 4: the same network shape, but 8 nodes' containerd,
                # ctr and peerd no longer need more CPU than this machine has, so the time shows the design.
                shape(4)
            log(f"cluster case ({case})")
            ctrds, peers = start_nodes(case, with_peerd)
            try:
                tx0 = reg_tx()
                cpu0 = machine_cpu_s()
                peerd_cpu0 = procs_cpu_s([p.pid for p in peers])
                ctrd_cpu0 = procs_cpu_s([pid for cd in ctrds for pid in [cd.pid] + children(cd.pid)])
                ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = {}
                if case == "b":
                    first, _ = pull_all([1], True)
                    t = time.time()
                    for p in peers[1:]:
                        wait_until(f"{p.name} resolves node 1", 60,
                                   lambda p=p: (p.resolve(key) or {}).get("peers"), 0.1)
                    r["advertise_wait_s"] = time.time() - t
                    rest, wall = pull_all(list(range(2, N + 1)), True)
                    r["first_node_s"] = first[1]
                    r["rest_s"] = [rest[i] for i in sorted(rest)]
                    r["per_node_s"] = [first[1]] + r["rest_s"]
                    r["total_s"] = first[1] + r["advertise_wait_s"] + wall
                    comp = r["rest_s"]
                else:
                    prof = None
                    if case == "c" and os.environ.get("PEERD_BENCH_PROFILE_CLUSTER"):
                        # whole-machine profile of the all-at-once pull (for finding CPU hogs)
                        prof = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "499", "-a", "-g", "-o",
                                                 os.path.join(w, "perf-c.data")],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        CLEAN.procs.append(prof)
                    times, wall = pull_all(list(range(1, N + 1)), with_peerd)
                    if prof:
                        os.kill(prof.pid, signal.SIGINT)
                        prof.wait(120)
                        rep = subprocess.run(["perf", "report", "-i", os.path.join(w, "perf-c.data"), "--stdio",
                                              "--no-children", "--sort", "comm,dso,sym", "--percent-limit", "0.7",
                                              "-g", "none"], capture_output=True, timeout=600)
                        with open(os.environ["PEERD_BENCH_PROFILE_CLUSTER"], "w") as f:
                            f.write(rep.stdout.decode(errors="replace"))
                    r["per_node_s"] = [times[i] for i in sorted(times)]
                    r["total_s"] = wall
                    comp = r["per_node_s"]
                r["p50_s"] = statistics.median(comp)
                r["max_s"] = max(comp)
                # Where the machine's CPU went (8 nodes share its cores): busy CPU-seconds in all,
                # and those of peerd and of containerd (with its shims), against what was available.
                r["cpu_busy_s"] = machine_cpu_s() - cpu0
                r["cpu_available_s"] = r["total_s"] * os.cpu_count()
                r["peerd_cpu_s"] = procs_cpu_s([p.pid for p in peers]) - peerd_cpu0
                r["containerd_cpu_s"] = procs_cpu_s([pid for cd in ctrds for pid in [cd.pid] + children(cd.pid)]) - ctrd_cpu0
                ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                # `ctr image pull` fetches in the client process: that is where the pull's own hashing is
                r["ctr_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
                r["registry_egress_bytes"] = reg_tx() - tx0
                r["registry_egress_images"] = r["registry_egress_bytes"] / F
                r["bound_s"] = bound * (4 if case == "c4" else 1)
                r["total_over_bound"] = r["total_s"] / r["bound_s"]
                r["max_over_bound"] = r["max_s"] / r["bound_s"]
                if peers:
                    r["served_bytes"] = {s: sum(p.metric("peerd_served_bytes_total", f'source="{s}"') for p in peers)
                                         for s in ("local", "peer", "upstream", "swarm")}
                    # swarm chunks received, by where they came from
                    r["swarm_chunk_bytes"] = {s: sum(p.metric("peerd_swarm_chunk_bytes_total", f'source="{s}"')
                                                     for p in peers) for s in ("peer", "upstream")}
                    # where duplicate registry reads come from: chunks taken over from a peer that made
                    # no progress, and upstream reads given up because a peer had the chunk first
                    r["swarm_takeovers"] = sum(p.metric("peerd_swarm_takeovers_total") for p in peers)
                    r["swarm_abandoned"] = sum(p.metric("peerd_swarm_chunk_failures_total", 'reason="abandoned"')
                                               for p in peers)
                cases[case] = r
                log(f"  ({case}) total {r['total_s']:.1f} s, p50 {r['p50_s']:.1f} s, max {r['max_s']:.1f} s, "
                    f"registry egress {r['registry_egress_images']:.2f} images, {r['total_over_bound']:.2f}x bound; "
                    f"CPU busy {r['cpu_busy_s']:.0f} of {r['cpu_available_s']:.0f} CPU-s (peerd {r['peerd_cpu_s']:.0f}, "
                    f"containerd {r['containerd_cpu_s']:.0f}, ctr {r['ctr_cpu_s']:.0f})")
            finally:
                stop_nodes(ctrds, peers)
        out["cases"] = cases
        self.res["cluster"] = out
        CLEAN.stop(rproc)
        for ns in [sw, "pdb-reg"] + names:
            sh(["ip", "netns", "del", ns], check=False)
            if ns in CLEAN.netns:
                CLEAN.netns.remove(ns)

    # ---- run ----------------------------------------------------------------------------------

    def run(self):
        t_all = time.time()
        self.res["machine"] = machine_info(self.binary)
        log(f"machine: {self.res['machine']['cpu_model']}, {self.res['machine']['nproc']} CPUs; work dir {self.work}")
        single = ("throughput", "latency", "peer", "blobs", "miss_dht")
        if not self.args.only or any(s in self.args.only for s in single):
            self.section("setup", self.setup_single, always=True)
            if "setup" in self.res["errors"]:
                pass
            else:
                self.section("throughput", self.bench_throughput)
                self.section("latency", self.bench_latency)
                self.section("peer", self.bench_peer)
                self.section("blobs", self.bench_blobs)
                self.teardown_single()
                self.section("miss_dht", self.bench_miss_and_dht)
        self.section("cluster", self.bench_cluster)
        self.res["timings_s"] = self.timings | {"total": round(time.time() - t_all, 1)}


# --------------------------------------------------------------------------------------------
# Output: JSON, markdown, plots


def numbers_ok(res, mode_cfg, only):
    """--smoke: every measurement produced a number."""
    want = {
        "throughput": ["throughput.nginx.1.gb_s", "throughput.registry.1.gb_s", "throughput.peerd_local.1.gb_s",
                       f"throughput.nginx.{mode_cfg['streams']}.gb_s",
                       f"throughput.peerd_local.{mode_cfg['streams']}.gb_s",
                       f"throughput.peerd_local.{mode_cfg['streams']}.resources.peerd_a.cpu_s",
                       f"throughput.peerd_local.{mode_cfg['streams']}.resources.peerd_a.peak_rss_mib",
                       "components.ctr_content_get_gb_s", "components.sha256sum_gb_s", "resources_idle.peerd_a_rss_mib"],
        "latency": ["latency.manifest_head.peerd.p50_ms", "latency.manifest_get.registry.p99_ms",
                    "latency.blob_4k_get.peerd.p99_ms"],
        "peer": ["throughput.peerd_peer.1.gb_s", f"throughput.peerd_peer.{mode_cfg['streams']}.gb_s",
                 "latency.peer.blob_4k_from_peer.p50_ms"],
        "blobs": ["blobs.nginx_direct.p50_ms", "blobs.a_local_hit.p99_ms", "blobs.a_local_hit.mb_s",
                  "blobs.b_from_peer.p99_ms", "blobs.b_from_peer.mb_s"],
        "miss_dht": [f"miss.{mode_cfg['miss_nodes'][0]}.peerd_miss.p50_ms", "dht.resolvable_everywhere_s",
                     "dht.lookup_found.p50_ms", "dht.rss_mib_mean"],
        "cluster": ["cluster.cases.a.max_s", "cluster.cases.b.max_s", "cluster.cases.c.max_s",
                    "cluster.cases.a.registry_egress_bytes"],
    }
    missing = []
    for sec, paths in want.items():
        if only and sec not in only:
            continue
        for p in paths:
            v = res
            for k in p.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            if not isinstance(v, (int, float)) or v != v:
                missing.append(p)
    return missing


def g(d, *ks, default=None):
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def human(n):
    return f"{n / GiB:.0f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def f2(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def analysis(res):
    """A paragraph on why the throughput targets are (not) met, from this run's CPU numbers."""
    tp = res.get("throughput", {})
    S = str(res["config"]["streams"])
    n = res["machine"]["nproc"]

    def per_gib(k, procs):
        r = g(tp, k, S)
        if not r or "resources" not in r:
            return None
        return sum(r["resources"][p]["cpu_s"] for p in procs if p in r["resources"]) / r["resources_gib"]

    ng = per_gib("nginx", ["nginx"])
    loc = per_gib("peerd_local", ["peerd_a", "containerd_a"])
    loc_p = per_gib("peerd_local", ["peerd_a"])
    loc_c = per_gib("peerd_local", ["containerd_a"])
    peer = per_gib("peerd_peer", ["peerd_b", "peerd_a", "containerd_a"])
    peer_b = per_gib("peerd_peer", ["peerd_b"])
    sha = g(res, "components", "sha256_python_openssl_gb_s")
    if None in (ng, loc, peer, loc_p, loc_c, peer_b):
        return ""
    cap = lambda c: n / c * GiB / 1e9  # noqa: E731  GB/s if every CPU did nothing else

    def sha_share(key):
        for line in g(res, key, "top", default=[]) or []:
            if "digest_blocks" in line:
                return line.split("%")[0].strip() + " %"
        return "?"

    n1 = g(tp, "nginx", "1", "gb_s") or 0
    if sha and sha < 0.8 * n1:
        sha_note = (f"so a single stream that is hashed cannot reach 0.8× nginx's single stream "
                    f"({0.8 * n1:.2f} GB/s) whatever else is done.")
    else:
        sha_note = "which alone would not prevent 0.8× nginx on a single stream."
    return (
        "**Why the targets are missed: the peerd paths are CPU-bound.** Per GiB served with "
        f"{S} streams, nginx used {ng:.2f} CPU-seconds. The local path used {loc:.2f}: peerd {loc_p:.2f} "
        f"and containerd {loc_c:.2f}. The peer path used {peer:.2f}: B {peer_b:.2f}, plus A and A's "
        f"containerd doing the local path's work again. With {n} CPUs and nothing else running, that caps "
        f"the local path at about {cap(loc):.2f} GB/s and the peer path at about {cap(peer):.2f} GB/s, "
        "close to what was measured (the client takes the rest). The profiles above show where the "
        "CPU goes:\n\n"
        "1. **containerd's gRPC `ReadContent`**: Go copies and GC (`runtime.memmove`, `scanobject`, "
        "`memclrNoHeapPointers`), plus protobuf framing. It costs about as much CPU as peerd itself, and one "
        f"`ctr content get` reading the same blob manages only {g(res, 'components', 'ctr_content_get_gb_s', default=0):.2f} GB/s.\n"
        "2. **sha256 on every hop**: `sha2::sha256::x86::digest_blocks` (SHA-NI) is the largest single "
        f"symbol. It takes {sha_share('profile_local')} of the local path's samples and "
        f"{sha_share('profile_peer')} of the peer path's, where A hashes "
        "what it reads from containerd and B hashes it again. On this CPU sha256 runs at about "
        f"{f2(sha)} GB/s per core (OpenSSL), {sha_note}\n"
        "3. **Copies**: userspace memmove from gRPC frames into HTTP buffers, then `_copy_from_iter` into "
        "the socket. nginx has neither, because sendfile goes from the page cache to the socket.\n\n"
        "What would close the gap: serve local blobs straight from containerd's content-store files "
        "(`<root>/io.containerd.content.v1.content/blobs/sha256/<hex>`, which containerd verified on "
        "ingest) with sendfile and without re-hashing. That path costs about what nginx does. A serving "
        "node could also skip the hash when the requester is a peer that verifies anyway. B would still "
        "hash, which bounds a single peer stream at about the sha256 speed above.\n"
    )


def write_markdown(res, path, plots):
    m = res["machine"]
    c = res["config"]
    S = str(c["streams"])
    L = []
    a = L.append
    a("# peerd benchmarks\n")
    a(f"Generated by `make bench` (`python3 bench/run.py`) on {m['date']}. Raw numbers: "
      "[benchmarks.json](benchmarks.json). Plots: [docs/benchmarks/](benchmarks/).\n")
    a("The machine is small and shared (noisy neighbours), so absolute numbers move between runs; "
      "compare the **ratios within one run**, which are what the targets are stated in.\n")
    a("## Machine\n")
    a("| | |\n| --- | --- |")
    a(f"| CPUs (`nproc`) | {m['nproc']} |")
    a(f"| CPU model | {m['cpu_model']} (SHA-NI: {'yes' if m['sha_ni'] else 'no'}) |")
    a(f"| kernel | {m['kernel']} |")
    a(f"| memory | {m['mem_gib']} GiB |")
    a(f"| peerd commit | `{m['peerd_commit'][:12]}`{' (with uncommitted changes)' if m['worktree_dirty'] else ''} |")
    a(f"| peerd binary | `{m['binary']}` ({m['peerd_version']}, built {m['binary_mtime']}) |")
    for t, v in m["tools"].items():
        a(f"| {t} | {v} |")
    a("")
    a("## How to reproduce\n")
    a("```sh\nmake release   # target/release/peerd\nmake bench     # about 15 minutes; needs root "
      "(containerd, network namespaces)\n```\n")
    a("`make bench BENCH_ARGS='--only throughput'` runs one section (`throughput`, `latency`, `peer`, `blobs`, "
      "`miss_dht`, `cluster`; the first five share one set-up). `python3 bench/run.py --smoke` (part of "
      "`make test`) runs everything with tiny sizes in about a minute and only checks that each "
      "measurement produced a number. All traffic stays on loopback addresses or in network namespaces "
      "named `pdb-*` that the script creates and deletes.\n")

    tp = res.get("throughput", {})
    if tp:
        a("## 1. Blob throughput\n")
        a(f"One blob of {human(c['big'])} (an uncompressed tar layer, random bytes), fetched whole with "
          f"`GET`. **1 stream**: median of {c['reps1']} runs. **{S} streams**: {S} concurrent whole-blob GETs "
          f"({human(int(S) * c['big'])} per run, median of {c['repsN']} runs); GB/s = all bytes / wall "
          "time. The client is a Python raw-socket reader (`recv_into` a 1 MiB buffer) on the same 2 CPUs.\n")
        a("- **nginx**: the blob file, `sendfile on`, `worker_processes auto`.")
        a("- **registry**: docker-registry (distribution 2.8, filesystem storage) directly.")
        a("- **peerd local**: peerd A serving the blob from its containerd (the image was imported into "
          "containerd; peerd streams it over containerd's gRPC content API and hashes it while streaming).")
        a("- **peerd peer**: client → peerd B → peerd A (registry stopped; B's containerd is empty; B checks "
          "the digest end to end). B's metrics confirm every byte came from the peer.")
        a("- A and B run with the default configuration except `p2p.resolve_timeout = 500ms` (a lookup in a "
          "two-node DHT ends in about a millisecond, so it only matters on failure) and the `/blobs` allow-list. "
          "Only B bootstraps (from A): peerd takes a peer's mirror IP from the p2p connection's remote address, "
          "and on one loopback interface a connection A dials comes from 127.0.0.1, not 127.0.0.2, so B would "
          "learn A as 127.0.0.1:PORT, where nothing listens.\n")
        a(f"| source | 1 stream GB/s | ratio to nginx | {S} streams GB/s | ratio to nginx |")
        a("| --- | ---: | ---: | ---: | ---: |")
        for k, label in (("nginx", "nginx (sendfile)"), ("registry", "docker-registry"),
                         ("peerd_local", "peerd, local store"), ("nginx_peer_phase", "nginx, in the peer rounds"),
                         ("peerd_peer", "peerd, from a peer")):
            v1, vN = g(tp, k, "1", "gb_s"), g(tp, k, S, "gb_s")
            ref = "nginx_peer_phase" if k == "peerd_peer" and "nginx_peer_phase" in tp else "nginx"
            n1, nN = g(tp, ref, "1", "gb_s"), g(tp, ref, S, "gb_s")
            r1 = v1 / n1 if v1 and n1 else None
            rN = vN / nN if vN and nN else None
            a(f"| {label} | {f2(v1)} | {f2(r1)} | {f2(vN)} | {f2(rN)} |")
        a("")
        a("Each round runs every source once in turn (nginx, registry, peerd local; later nginx, peerd peer), "
          "so a slow phase of the machine hits all of them; the peer path is compared with the nginx runs of "
          "its own rounds. Individual runs are in benchmarks.json (`runs_gb_s`).\n")
        tgt = []
        for k, want in (("peerd_local", 0.9), ("peerd_peer", 0.8)):
            for s in ("1", S):
                v = g(tp, k, s, "gb_s")
                ref = g(tp, "nginx_peer_phase" if k == "peerd_peer" and "nginx_peer_phase" in tp else "nginx", s, "gb_s")
                if v and ref:
                    tgt.append(f"{k.replace('_', ' ')}, {s} stream{'s' if s != '1' else ''}: "
                               f"{v / ref:.2f}× nginx (target ≥ {want}×) — **{'met' if v / ref >= want else 'missed'}**")
        a("Targets: " + "; ".join(tgt) + ".\n")
        comp = res.get("components", {})
        if comp:
            a("### Where the time goes\n")
            a("| component | GB/s |\n| --- | ---: |")
            a(f"| `ctr content get` of the blob to /dev/null (containerd's gRPC read path, one client) | "
              f"{f2(comp.get('ctr_content_get_gb_s'))} |")
            a(f"| sha256 of the blob, Python hashlib (OpenSSL) | {f2(comp.get('sha256_python_openssl_gb_s'))} |")
            a(f"| `sha256sum` of the blob | {f2(comp.get('sha256sum_gb_s'))} |")
            a("")
            for key, title in (("profile_local", "peerd local (peerd A + containerd A)"),
                               ("profile_peer", "peerd peer (peerd B + peerd A)")):
                pr = res.get(key)
                if pr and "top" in pr:
                    cpu = ", ".join(f"pid {p}: {s:.2f} s" for p, s in pr["cpu_s"].items())
                    a(f"`perf record -e cpu-clock -g` during one 1-stream transfer, {title}: "
                      f"{pr['gb_s_while_profiled']:.2f} GB/s while profiled, CPU-seconds {cpu} over "
                      f"{pr['wall_s']:.2f} s wall. Top entries (comm, dso, symbol, ≥ 1.5 %):\n")
                    a("```")
                    L.extend(pr["top"][:20])
                    a("```\n")
        a(analysis(res))
        if "throughput" in plots:
            a(f"![throughput]({plots['throughput']})\n")

    lat = res.get("latency", {})
    if lat:
        a("## 2. Latency\n")
        a(f"{c['lat_n']} requests per row, one keep-alive connection per target, the two targets interleaved "
          "request by request (so both see the same noise), after 20 warm-up requests. Time is from sending the "
          "request to the last body byte, in the client. **peerd** is node A with the image in its containerd "
          "(a mirror hit); requests by digest are served from the local store, the one by tag is forwarded "
          "to the registry because tags move.\n")
        a("| request | registry p50 ms | registry p99 ms | peerd p50 ms | peerd p99 ms | p50 ratio |")
        a("| --- | ---: | ---: | ---: | ---: | ---: |")
        for k, label in (("manifest_head", "manifest HEAD by digest"), ("manifest_get", "manifest GET by digest"),
                         ("blob_4k_get", "4 KiB blob GET"), ("manifest_get_by_tag", "manifest GET by tag (upstream)")):
            r = lat.get(k)
            if r:
                a(f"| {label} | {f2(r['registry']['p50_ms'], 3)} | {f2(r['registry']['p99_ms'], 3)} | "
                  f"{f2(r['peerd']['p50_ms'], 3)} | {f2(r['peerd']['p99_ms'], 3)} | "
                  f"{f2(r['peerd']['p50_ms'] / r['registry']['p50_ms'])} |")
        a("")
        pl = lat.get("peer")
        if pl:
            a("From a peer (client → B → A, registry stopped): "
              f"4 KiB blob p50 {f2(pl['blob_4k_from_peer']['p50_ms'], 2)} ms, p99 "
              f"{f2(pl['blob_4k_from_peer']['p99_ms'], 2)} ms; manifest by digest p50 "
              f"{f2(pl['manifest_from_peer']['p50_ms'], 2)} ms, p99 {f2(pl['manifest_from_peer']['p99_ms'], 2)} ms "
              f"({pl['blob_4k_from_peer']['n']} requests each). B resolves the digest in the DHT on every request "
              "(it keeps nothing).\n")
        miss = res.get("miss", {})
        if miss:
            a("### A miss falls back upstream\n")
            a("A 2 KiB-payload blob that is in the registry but on no node, fetched through node 0 of an N-node DHT "
              "(127.0.1.x, none of the nodes has it; `p2p.resolve_timeout` = 50 ms, the default), interleaved "
              "with the same GET straight to the registry. Every request is a miss: peerd keeps nothing itself.\n")
            a("| DHT nodes | registry p50 ms | peerd miss p50 ms | peerd miss p99 ms | fallback cost p50 ms | requests |")
            a("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for n in sorted(miss, key=int):
                r = miss[n]
                a(f"| {n} | {f2(r['registry']['p50_ms'], 3)} | {f2(r['peerd_miss']['p50_ms'])} | "
                  f"{f2(r['peerd_miss']['p99_ms'])} | {f2(r['fallback_overhead_p50_ms'])} | {r['peerd_miss']['n']} |")
            a("")
        if "latency" in plots:
            a(f"![latency]({plots['latency']})\n")

    if tp:
        a("## 3. Memory and CPU\n")
        idle = res.get("resources_idle", {})
        a(f"Idle RSS after start-up and advertisement: peerd A {f2(idle.get('peerd_a_rss_mib'), 1)} MiB, "
          f"peerd B {f2(idle.get('peerd_b_rss_mib'), 1)} MiB (nginx {f2(idle.get('nginx_rss_mib'), 1)} MiB, "
          f"docker-registry {f2(idle.get('registry_rss_mib'), 1)} MiB, containerd "
          f"{f2(idle.get('containerd_rss_mib'), 1)} MiB).\n")
        a(f"While serving {S} concurrent whole-blob streams (last run; VmHWM reset through "
          "`/proc/PID/clear_refs` just before; CPU from `/proc/PID/stat` utime+stime):\n")
        a("| source | process | peak RSS MiB | CPU-s | CPU-s per GiB served |")
        a("| --- | --- | ---: | ---: | ---: |")
        for k in ("nginx", "registry", "peerd_local", "peerd_peer"):
            r = g(tp, k, S)
            if not r or "resources" not in r:
                continue
            gib = r["resources_gib"]
            for proc, v in r["resources"].items():
                a(f"| {k.replace('_', ' ')} | {proc.replace('_', ' ')} | {f2(v['peak_rss_mib'], 1)} | "
                  f"{f2(v['cpu_s'])} | {f2(v['cpu_s'] / gib, 3)} |")
        a("")

    dht = res.get("dht")
    if dht:
        a("## 4. DHT scale\n")
        a(f"{dht['nodes']} peerd processes on 127.0.1.1–127.0.1.{dht['nodes']} (same ports, p2p on, one HTTP worker "
          f"each, bootstrapping from the first three; started and ready in {f2(dht['cluster_start_s'], 1)} s). "
          "Node 0 has a containerd; the others point at a socket that does not exist. **Provide**: a fresh "
          "image (random 2 KiB-payload layer) is imported into node 0's containerd; peerd's advertiser gets "
          "the image event and publishes its keys; the clock starts when `ctr images import` starts (the import "
          f"itself took {f2(dht.get('import_s'), 2)} s). This is the simplest way to make one node provide a key "
          "whose string is known in advance (a `/blobs` chunk key embeds an internal file id). Then every "
          "other node polls `/debug/resolve?key=<layer digest>` until node 0 is listed.\n")
        ts = dht.get("provide_to_resolvable_s") or []
        a("| | value |\n| --- | ---: |")
        a(f"| nodes resolving node 0 | {dht.get('resolvable_nodes')} |")
        if ts:
            a(f"| provide → resolvable, p50 over nodes | {pct(ts, 50):.2f} s |")
            a(f"| provide → resolvable from every node | {f2(dht.get('resolvable_everywhere_s'))} s |")
        lf, lu = dht.get("lookup_found"), dht.get("lookup_unknown_key")
        if lf:
            a(f"| lookup of the provided key (`/debug/resolve` seconds), p50 / p99 | {lf['p50_ms']:.1f} / "
              f"{lf['p99_ms']:.1f} ms ({lf['n']} lookups) |")
        if lu:
            a(f"| lookup of a key nobody has, p50 / p99 | {lu['p50_ms']:.1f} / {lu['p99_ms']:.1f} ms |")
        if dht.get("rss_mib_mean"):
            a(f"| RSS per node, idle mean | {statistics.mean(dht['idle_rss_mib']):.1f} MiB |")
            a(f"| RSS per node after the test, mean / max | {dht['rss_mib_mean']:.1f} / {dht['rss_mib_max']:.1f} MiB |")
        rt = [x for x in dht.get("routing_table_peers") or [] if isinstance(x, int)]
        if rt:
            a(f"| routing-table peers per node, min / median | {min(rt)} / {statistics.median(rt):.0f} |")
        a("")
        a("Polling resolution: 16 pollers, 50 ms between polls of one node, so times include up to a poll "
          "interval plus queueing among 63 nodes.\n")
        if "dht" in plots:
            a(f"![dht]({plots['dht']})\n")

    bl = res.get("blobs")
    if bl:
        a("## 5. /blobs random reads\n")
        a(f"{c['blobs_reads']} sequential random range reads, length uniform in 4 KiB–1 MiB, offset uniform, over "
          f"a {human(c['big'])} file served by nginx (the overlaybd access pattern); one keep-alive "
          "connection. MB/s = bytes / summed request time. Chunk size 1 MiB (the default).\n")
        a("- **nginx direct**: the same reads straight from nginx (baseline).")
        a(f"- **local cache**: node A after reading the file once through `/blobs` (cold full read: "
          f"{f2(bl.get('a_cold_full_read_gb_s'))} GB/s, upstream nginx) and its background prefetch; every chunk is "
          "on A's disk. peerd still sends a HEAD upstream per request (`blobs.revalidate_after = 0s`, the default).")
        a("- **from a peer**: node B (prefetch off) learned the file with a 1-byte read, then nginx stopped; "
          "other offsets. Chunks come from A; B caches what it fetched, so repeats within the run hit B's cache "
          f"(chunk bytes on B during the run: {json.dumps({k: int(v) for k, v in bl['b_from_peer'].get('chunk_bytes', {}).items()})}).\n")
        a("| source | p50 ms | p90 ms | p99 ms | MB/s |")
        a("| --- | ---: | ---: | ---: | ---: |")
        for k, label in (("nginx_direct", "nginx direct"), ("a_local_hit", "peerd, local cache"),
                         ("b_from_peer", "peerd, from a peer (upstream stopped)")):
            r = bl.get(k)
            if r:
                a(f"| {label} | {f2(r['p50_ms'])} | {f2(r.get('p90_ms'))} | {f2(r['p99_ms'])} | {f2(r['mb_s'], 0)} |")
        a("")
        a("The p99 of about 40 ms, nginx's own included, is a loopback artefact: loopback's MTU is 64 KiB, so a "
          "response of 64–128 KiB is two segments, the second held by Nagle until the first is acknowledged, "
          "and the client's delayed ACK takes 40 ms. In a separate check against nginx alone, 18 of 300 random "
          "reads stalled for 40–43 ms, all of them 60–120 KB long. On a 1500-byte MTU such a response is dozens "
          "of segments and the stall is rare. Compare p50 and p90.\n")
        if "blobs" in plots:
            a(f"![blobs]({plots['blobs']})\n")

    cl = res.get("cluster")
    if cl:
        F = cl["image_bytes"]
        a("## 6. Cluster pull (network namespaces, tc tbf)\n")
        a(f"{cl['nodes']} node namespaces and a registry namespace on one bridge (in its own namespace). Each node "
          f"has its own containerd and (cases b, c) its own peerd. Shaping with `tc tbf` on both ends of every "
          f"veth: nodes {cl['node_rate']}/s each way, registry {cl['registry_rate']}/s each way. The image: "
          f"{cl['layers']} uncompressed random layers, {F / MiB:.0f} MiB in all (F). `ctr image pull` (with "
          "unpack) in each node's namespace; the time per node is the pull's wall time. Registry egress is the "
          "registry veth's tx bytes.\n")
        a(f"Lower bound (Kumar & Ross): max(F/u, F/B) = max({F / REG_BPS:.1f} s, {F / NODE_BPS:.1f} s) = "
          f"**{cl['bound_s']:.1f} s**, whatever N; without p2p the registry alone needs N·F/u = "
          f"{cl['no_p2p_bound_s']:.1f} s.\n")
        a("| case | node completion p50 s | slowest s | total s | registry egress (images) | slowest / bound "
          "| total / bound | CPU busy / available (peerd, containerd, ctr) |")
        a("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        labels = {"a": "(a) no peerd, all at once", "b": "(b) one node first, then the rest through peerd",
                  "c": "(c) all at once through peerd",
                  "c4": "(c4) = (c) with every rate ÷ 4 (bound ×4)"}
        for k in ("a", "b", "c", "c4"):
            r = cl["cases"].get(k)
            if r:
                cpu = (f"{r['cpu_busy_s']:.0f} / {r['cpu_available_s']:.0f} CPU-s ({r['peerd_cpu_s']:.0f}, "
                       f"{r['containerd_cpu_s']:.0f}, {r['ctr_cpu_s']:.0f})") if "cpu_busy_s" in r else ""
                a(f"| {labels[k]} | {r['p50_s']:.1f} | {r['max_s']:.1f} | {r['total_s']:.1f} | "
                  f"{r['registry_egress_images']:.2f} | {r.get('max_over_bound', r['max_s'] / cl['bound_s']):.2f} | "
                  f"{r['total_over_bound']:.2f} | {cpu} |")
        a("")
        rb = cl["cases"].get("b")
        if rb:
            a(f"Case (b): the first node took {rb['first_node_s']:.1f} s (at the registry's rate), its keys were "
              f"resolvable from every other node {rb['advertise_wait_s']:.2f} s later, then the other "
              f"{cl['nodes'] - 1} pulled together from it (p50 {rb['p50_s']:.1f} s, max {rb['max_s']:.1f} s); "
              "p50/max in the table are over those.")
        for k in ("b", "c", "c4"):
            r = cl["cases"].get(k)
            if r and r.get("served_bytes"):
                sb = r["served_bytes"]
                a(f"Case ({k}) bytes served by all peerds: local {sb['local'] / MiB:.0f} MiB, peer "
                  f"{sb['peer'] / MiB:.0f} MiB, upstream {sb['upstream'] / MiB:.0f} MiB, swarm "
                  f"{sb.get('swarm', 0) / MiB:.0f} MiB"
                  + (" (`local` counts what a node served from its own store, here to the peers that fetched "
                     "from it; the first node's pull was a swarm of one)." if k == "b" else "."))
                sc = r.get("swarm_chunk_bytes")
                if sc and k != "b":
                    a(f"Swarm chunks received in ({k}): {sc['upstream'] / MiB:.0f} MiB from the registry, "
                      f"{sc['peer'] / MiB:.0f} MiB from other nodes"
                      + (f"; {r['swarm_takeovers']:.0f} chunks taken over from a peer without progress, "
                         f"{r['swarm_abandoned']:.0f} registry reads given up because a peer had the chunk first."
                         if "swarm_takeovers" in r else "."))
        a("\nCases (c) and (c4) are swarming: every node that wants a layer announces it, the layer's 2 MiB "
          "chunks are split among them by rendezvous hashing, each chunk comes from the registry once (to its "
          "owner) and moves between the nodes while they are all still downloading. Registry egress is the image "
          "once plus the manifests, the small config blob each node fetches directly, and chunks fetched twice "
          "while two nodes' views of who is downloading still differed. The slowest node's time in (c) is set "
          "by this 2-CPU machine, not the network: the CPU column shows it busy almost all the time, mostly "
          "with containerd and ctr (hashing, writing and unpacking 8 copies of the image); peerd's part is "
          "receiving, hashing (each chunk, then the whole blob), spooling and serving. Case (c4) divides every "
          "rate by 4, so the same work fits the CPU, and shows what the design does when the machine keeps up.\n")
        if "cluster" in plots:
            a(f"![cluster]({plots['cluster']})\n")

    if res.get("errors"):
        a("## Sections that failed in this run\n")
        for k, v in res["errors"].items():
            a(f"- `{k}`: {v}")
        a("")
    a("## Run time\n")
    a("| section | seconds |\n| --- | ---: |")
    for k, v in res.get("timings_s", {}).items():
        a(f"| {k} | {v} |")
    a("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def make_plots(res, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    made = {}

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, f"{name}.png"), dpi=110)
        plt.close(fig)
        made[name] = f"benchmarks/{name}.png"

    S = str(res["config"]["streams"])
    tp = res.get("throughput")
    if tp:
        names = [k for k in ("nginx", "registry", "peerd_local", "peerd_peer") if k in tp]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        w = 0.38
        for j, s in enumerate(("1", S)):
            vals = [g(tp, k, s, "gb_s") or 0 for k in names]
            bars = ax.bar([i + (j - 0.5) * w for i in range(len(names))], vals, w,
                          label=f"{s} stream{'s' if s != '1' else ''}")
            for k, b, v in zip(names, bars, vals):
                ref = g(tp, "nginx_peer_phase" if k == "peerd_peer" and "nginx_peer_phase" in tp else "nginx", s,
                        "gb_s")
                if ref:
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}\n{v / ref:.2f}×", ha="center", va="bottom",
                            fontsize=8)
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
        ax.set_ylabel("GB/s (higher is better)")
        ax.set_title(f"Whole-blob GET, {human(res['config']['big'])} blob (label: GB/s, ratio to nginx)")
        ax.legend()
        ax.margins(y=0.25)
        save(fig, "throughput")
    lat = res.get("latency")
    if lat:
        kinds = [k for k in ("manifest_head", "manifest_get", "blob_4k_get", "manifest_get_by_tag") if k in lat]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        w = 0.2
        for j, (tgt, p) in enumerate((("registry", "p50_ms"), ("registry", "p99_ms"), ("peerd", "p50_ms"),
                                      ("peerd", "p99_ms"))):
            vals = [lat[k][tgt][p] for k in kinds]
            ax.bar([i + (j - 1.5) * w for i in range(len(kinds))], vals, w, label=f"{tgt} {p[:3]}",
                   color=["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"][j])
        ax.set_xticks(range(len(kinds)), [k.replace("_", " ") for k in kinds])
        ax.set_ylabel("ms (lower is better)")
        ax.set_title("Request latency: peerd (local hit) vs docker-registry")
        ax.legend(fontsize=8)
        save(fig, "latency")
    dht = res.get("dht")
    if dht and dht.get("provide_to_resolvable_s"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ts = sorted(dht["provide_to_resolvable_s"])
        ax1.step(ts, [(i + 1) / len(ts) for i in range(len(ts))], where="post")
        ax1.set_xlabel("seconds after the import into node 0's containerd")
        ax1.set_ylabel("fraction of the other nodes")
        ax1.set_title(f"Provide → resolvable ({dht['nodes']} nodes)")
        ax1.grid(alpha=0.3)
        for key, label in (("lookup_found", "provided key"), ("lookup_unknown_key", "unknown key")):
            xs = g(dht, key, "samples_ms")
            if xs:
                ax2.hist(xs, bins=30, alpha=0.6, label=label)
        ax2.set_xlabel("/debug/resolve lookup time, ms")
        ax2.set_ylabel("lookups")
        ax2.set_title("DHT lookup times")
        ax2.legend()
        save(fig, "dht")
    bl = res.get("blobs")
    if bl:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, label in (("nginx_direct", "nginx direct"), ("a_local_hit", "peerd local cache"),
                         ("b_from_peer", "peerd from a peer")):
            xs = sorted(g(bl, k, "samples_ms") or [])
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("request latency, ms (log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title("/blobs random 4 KiB–1 MiB reads")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        save(fig, "blobs")
    cl = res.get("cluster")
    if cl and cl.get("cases"):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        labels = {"a": "(a) no peerd", "b": "(b) first, then rest", "c": "(c) all at once",
                  "c4": "(c4) all at once,\nrates ÷ 4"}
        ks = [k for k in ("a", "b", "c", "c4") if k in cl["cases"]]
        for i, k in enumerate(ks):
            r = cl["cases"][k]
            xs = r["per_node_s"]
            ax.scatter([i] * len(xs), xs, alpha=0.7, zorder=3)
            ax.bar(i, r["total_s"], 0.5, alpha=0.25, color="grey")
            ax.text(i, r["total_s"], f"total {r['total_s']:.1f} s\negress {r['registry_egress_images']:.1f}× F",
                    ha="center", va="bottom", fontsize=8)
            if k == "c4":  # its own bound (rates ÷ 4)
                ax.hlines(r["bound_s"], i - 0.35, i + 0.35, color="green", ls="--")
        ax.axhline(cl["bound_s"], color="green", ls="--", label=f"max(F/u, F/B) = {cl['bound_s']:.1f} s")
        ax.axhline(cl["no_p2p_bound_s"], color="red", ls=":", label=f"N·F/u = {cl['no_p2p_bound_s']:.1f} s")
        ax.set_xticks(range(len(ks)), [labels[k] for k in ks])
        ax.set_ylabel("seconds (dots: per-node pull time; bar: total)")
        ax.set_title(f"{cl['nodes']} nodes pull {cl['image_bytes'] / MiB:.0f} MiB; nodes 1 Gbit/s, registry 200 Mbit/s")
        top = max([cl["no_p2p_bound_s"]] + [cl["cases"][k]["total_s"] for k in ks])
        ax.set_ylim(0, top * 1.35)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
        save(fig, "cluster")
    return made


def strip_samples(x):
    if isinstance(x, dict):
        return {k: strip_samples(v) for k, v in x.items() if k != "samples_ms"}
    if isinstance(x, list):
        return [strip_samples(v) for v in x]
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; check that every measurement is a number")
    ap.add_argument("--binary", help="peerd binary (default: target/release/peerd; --smoke: target/debug/peerd "
                                     "if present)")
    ap.add_argument("--out", help="output dir (default: docs/ for a full run, a temp dir for --smoke)")
    ap.add_argument("--only", nargs="*", help="sections: throughput latency peer blobs miss_dht cluster")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--render", metavar="RESULTS_JSON", help="only re-render md and plots from a raw results file")
    args = ap.parse_args()
    if args.render:
        ensure_matplotlib()
        res = json.load(open(args.render))
        out = args.out or os.path.join(ROOT, "docs")
        plots = make_plots(res, os.path.join(out, "benchmarks"))
        with open(os.path.join(out, "benchmarks.json"), "w") as f:
            json.dump(strip_samples(res), f, indent=1)
        write_markdown(res, os.path.join(out, "benchmarks.md"), plots)
        return
    if os.geteuid() != 0:
        sys.exit("bench: needs root (containerd, network namespaces)")
    if not args.binary:
        rel, dbg = os.path.join(ROOT, "target/release/peerd"), os.path.join(ROOT, "target/debug/peerd")
        args.binary = dbg if args.smoke and os.path.exists(dbg) else rel
    if not os.path.exists(args.binary):
        sys.exit(f"bench: {args.binary} missing (make release)")
    for t in ("docker-registry", "skopeo", "containerd", "ctr", "nginx", "curl", "ip", "tc"):
        if not shutil.which(t):
            sys.exit(f"bench: {t} not found (scripts/install-test-deps.sh)")
    ensure_matplotlib()

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    bench = Bench(args)
    t0 = time.time()
    try:
        bench.run()
    finally:
        CLEAN.all()
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
        else:
            log(f"work dir kept: {bench.work}")
    res = bench.res
    out = args.out or (tempfile.mkdtemp(prefix="pdb-smoke-out-") if args.smoke else os.path.join(ROOT, "docs"))
    os.makedirs(out, exist_ok=True)
    raw = os.path.join(tempfile.gettempdir(), f"pdb-results-{res['mode']}.json")
    with open(raw, "w") as f:
        json.dump(res, f)  # with samples: `--render` re-draws from it
    plots = make_plots(res, os.path.join(out, "benchmarks"))
    with open(os.path.join(out, "benchmarks.json"), "w") as f:
        json.dump(strip_samples(res), f, indent=1)
    write_markdown(res, os.path.join(out, "benchmarks.md"), plots)
    log(f"raw results with samples: {raw}")
    log(f"wrote {out}/benchmarks.md, benchmarks.json, {len(plots)} plots; {time.time() - t0:.0f} s")
    missing = numbers_ok(res, bench.cfg, args.only)
    if res["errors"] or (args.smoke and missing):
        log(f"errors: {res['errors']}; missing numbers: {missing}; report: {out}/benchmarks.md")
        sys.exit(1)
    if missing:
        log(f"missing numbers: {missing}")
    if args.smoke:
        log("smoke: OK (every measurement produced a number)")
        if not args.out and not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
