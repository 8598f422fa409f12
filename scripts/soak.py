#!/usr/bin/env python3
"""peerd soak: bounded load and fault scenarios against a built peerd binary (release when it
exists, else debug), on loopback only. `make soak` runs the full soak and writes
docs/reliability.md; `make soak SOAK_ARGS=--quick` runs each scenario for a few seconds and
writes to a temp dir (unless --out is given).

Scenarios (each reports errors, p99 latency, peak RSS of the node under test and bytes lost,
i.e. complete answers with wrong bytes plus bytes never delivered):
  load        wrk, 1,000 connections x 60 s, a 4 KiB blob the node holds (containerd)
  load-miss   wrk, 200 connections, a 300 KiB blob nobody holds: every request is a miss, so
              concurrent ones share one upstream fetch (registry GETs are counted)
  stalled     150 clients ask for a large blob and never read; a healthy client meanwhile
  full-disk   a node whose data_dir (tmpfs) is full, swarming with another node, and /blobs
  outage      the registry unreachable: held blobs, tags and misses; then recovery time
  corrupt     one flipped byte in a peer's containerd copy of a layer; whole reads from another node
  kill-peer   kill -9 of the peer a node is streaming a layer from, mid-body

Needs root (tmpfs mount), docker-registry, containerd, ctr, curl, and wrk (Debian package; the
load scenarios fall back to a Python client when it is missing). Every process is stopped by its
PID; the tmpfs is unmounted; the work dir is removed.
"""

import argparse
import hashlib
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import types  # noqa: E402
from peerd_bench import client, common, containerd, cpu, images, machine, peerd, procs, registry  # noqa: E402

# The benchmark's process, registry, containerd and image helpers, under the names this script
# has always used (they lived in one bench/run.py before the bench became a package).
bench = types.SimpleNamespace(
    CLEAN=procs.CLEAN, Conn=client.Conn, Containerd=containerd.Containerd, Layout=images.Layout,
    OCI_LAYER=common.OCI_LAYER, OCI_MANIFEST=common.OCI_MANIFEST, Peerd=peerd.Peerd, Registry=registry.Registry,
    SECRET=common.SECRET, _connects=common.connects, free_port=common.free_port, machine_info=machine.machine_info,
    pct=common.pct, proc_kib=cpu.proc_kib, reset_hwm=cpu.reset_hwm, sh=common.sh, tail=common.tail,
    wait_until=common.wait_until)

CLEAN = bench.CLEAN
MiB = 1 << 20
SECRET = bench.SECRET

FULL = dict(conns=1000, load_s=60, miss_conns=200, miss_s=15, big=48 * MiB, stalled=150, write_timeout=15,
            disk_clients=8, outage_s=20, corrupt_reads=5, kills=3)
QUICK = dict(conns=200, load_s=4, miss_conns=50, miss_s=3, big=24 * MiB, stalled=30, write_timeout=3,
             disk_clients=3, outage_s=4, corrupt_reads=3, kills=1)


def log(*a):
    print(f"[soak {time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------------------------
# A TCP switch in front of the registry: it forwards, or refuses every connection (an outage).


class Switch:
    def __init__(self, target):
        self.target = target.rsplit(":", 1)
        self.target = (self.target[0], int(self.target[1]))
        self.port = bench.free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.up = True
        self.stop = False
        self.socks = []
        self.lock = threading.Lock()
        self._listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(512)
        self.listener = s

    def set_up(self, up):
        """Down: the listener is closed (connections refused) and open connections are cut."""
        with self.lock:
            if up == self.up:
                return
            self.up = up
            if up:
                self._listen()
            else:
                self.listener.close()
                for c in self.socks:
                    try:
                        c.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.socks.clear()

    def close(self):
        self.stop = True
        self.set_up(False)

    def _accept(self):
        while not self.stop:
            with self.lock:
                lst = self.listener if self.up else None
            if lst is None:
                time.sleep(0.05)
                continue
            try:
                r, _, _ = select.select([lst], [], [], 0.1)
                if not r:
                    continue
                c, _ = lst.accept()
            except (OSError, ValueError):
                continue
            try:
                s = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, s]
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b):
        try:
            while True:
                d = a.recv(256 << 10)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            for x in (a, b):
                if x in self.socks:
                    self.socks.remove(x)
                    x.close()


# --------------------------------------------------------------------------------------------
# Clients


def fetch(addr, path, timeout=60, headers=None):
    """One GET on a fresh connection: (status, body bytes, seconds, error or None)."""
    t0 = time.time()
    c = bench.Conn(addr, timeout=timeout)
    try:
        s, _, b = c.request("GET", path, headers)
        return s, b, time.time() - t0, None
    except Exception as e:  # a cut body, a reset, a timeout: the client sees an error
        return 0, b"", time.time() - t0, f"{type(e).__name__}: {e}"
    finally:
        c.close()


WRK_LUA = """
bad, seen = 0, 0
function setup(thread) table.insert(threads, thread) end
threads = {}
function response(status, headers, body)
  seen = seen + 1
  if status ~= 200 or #body ~= %d then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b, s = 0, 0
  for _, t in ipairs(threads) do b = b + t:get("bad"); s = s + t:get("seen") end
  io.write(string.format("SOAK bad=%%d seen=%%d p99_us=%%d p50_us=%%d max_us=%%d\\n", b, s,
    latency:percentile(99), latency:percentile(50), latency.max))
end
"""


def wrk(addr, path, conns, seconds, size, work):
    lua = os.path.join(work, f"check{size}.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA % size)
    threads = max(1, min(2, conns))
    out = bench.sh(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "10s",
                    "-s", lua, f"http://{addr}{path}"], timeout=seconds + 120, check=False)
    res = {"tool": "wrk", "conns": conns, "seconds": seconds}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("SOAK "):
            kv = dict(x.split("=") for x in line.split()[1:])
            res.update(bad=int(kv["bad"]), requests=int(kv["seen"]), p99_ms=int(kv["p99_us"]) / 1e3,
                       p50_ms=int(kv["p50_us"]) / 1e3, max_ms=int(kv["max_us"]) / 1e3)
        elif line.startswith("Socket errors:"):
            # Socket errors: connect 0, read 0, write 0, timeout 0
            parts = line.split(":", 1)[1].split(",")
            res["socket_errors"] = {p.split()[0]: int(p.split()[1]) for p in parts}
        elif line.startswith("Non-2xx"):
            res["non_2xx"] = int(line.split(":")[1])
    if "requests" not in res:
        raise RuntimeError(f"wrk gave no summary:\n{out}")
    res["errors"] = res["bad"] + sum(res.get("socket_errors", {}).values())
    res["rps"] = res["requests"] / seconds
    # wrk's read errors at the end of the run are its own connections closing; a body it
    # counted as read with a wrong size is a lost one.
    res["bytes_lost"] = res["bad"] * size
    return res


def py_load(addr, path, conns, seconds, expect):
    """Fallback when wrk is missing: `conns` keep-alive connections in threads (bounded by time)."""
    lat, errors, wrong, lock = [], [0], [0], threading.Lock()
    deadline = time.time() + seconds

    def worker():
        c = bench.Conn(addr, timeout=10)
        while time.time() < deadline:
            t0 = time.time()
            try:
                s, _, b = c.request("GET", path)
                ok = s == 200 and b == expect
            except Exception:
                c.close()
                c = bench.Conn(addr, timeout=10)
                with lock:
                    errors[0] += 1
                continue
            with lock:
                lat.append(time.time() - t0)
                if not ok:
                    wrong[0] += 1
        c.close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    return {"tool": "python", "conns": conns, "seconds": seconds, "requests": len(lat), "rps": len(lat) / seconds,
            "errors": errors[0] + wrong[0], "bad": wrong[0], "p99_ms": bench.pct(lat, 99) * 1e3 if lat else None,
            "p50_ms": bench.pct(lat, 50) * 1e3 if lat else None, "bytes_lost": wrong[0] * len(expect)}


# --------------------------------------------------------------------------------------------


class Soak:
    def __init__(self, args):
        self.args = args
        self.cfg = QUICK if args.quick else FULL
        self.binary = args.binary
        self.work = tempfile.mkdtemp(prefix="pd-soak-")
        self.results = {}
        self.nodes = []
        self.mounts = []

    def node(self, name, ctrd=None, boot=None, env=None):
        ports = [bench.free_port() for _ in range(4)]
        args = ["--mirror-host", self.up.addr, "--plain-http-host", self.up.addr,
                "--containerd-socket", ctrd.sock if ctrd else "/nonexistent.sock"]
        for b in boot or []:
            args += ["--bootstrap-peer", b.p2p]
        e = {"PEERD_P2P__RESOLVE_TIMEOUT": "500ms", "PEERD_P2P__PROVIDER_TTL": "10s",
             "PEERD_P2P__PROVIDER_REPUBLISH": "4s", "PEERD_HTTP__WRITE_TIMEOUT": f"{self.cfg['write_timeout']}s",
             "PEERD_BLOBS__ALLOWED_HOSTS": json.dumps([f"http://{self.up.addr}"])}
        e.update(env or {})
        p = bench.Peerd(self.binary, self.work, name, "127.0.0.1", ports, args, env=e)
        self.nodes.append(p)
        bench.wait_until(f"peerd {name} healthy", 60,
                         lambda: p.proc.poll() is None and bench._connects(p.http))
        return p

    def ns(self):
        return self.up.addr.replace(":", "%3A")

    def blob_path(self, digest):
        return f"/v2/soak/blobs/{digest}?ns={self.ns()}"

    def push_blob(self, data):
        d = sha(data)
        hdrs = bench.sh(["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST",
                         f"http://{self.reg.addr}/v2/soak/blobs/uploads/"])
        loc = [l.split(":", 1)[1].strip() for l in hdrs.splitlines() if l.lower().startswith("location:")][0]
        if loc.startswith("/"):
            loc = f"http://{self.reg.addr}{loc}"
        loc += ("&" if "?" in loc else "?") + "digest=" + d
        path = os.path.join(self.work, "upload")
        with open(path, "wb") as f:
            f.write(data)
        code = bench.sh(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-H",
                         "Content-Type: application/octet-stream", "-T", path, loc]).strip()
        assert code == "201", f"upload: {code}"
        return d

    def rss_probe(self, p):
        bench.reset_hwm(p.pid)
        return lambda: bench.proc_kib(p.pid, "VmHWM") / 1024

    def setup(self):
        c = self.cfg
        log(f"work dir {self.work}; binary {self.binary}")
        self.reg = bench.Registry(self.work)
        self.reg.start()
        self.up = Switch(self.reg.addr)
        lay = bench.Layout(os.path.join(self.work, "layout"))
        small = {"mediaType": bench.OCI_LAYER, "digest": lay.add_bytes(os.urandom(4096)), "size": 4096}
        big = lay.add_layer(c["big"], seed=7)
        self.image = lay.add_image("soak", [small, big])
        lay.push("soak", self.reg.addr, "soak")
        self.small, self.big = small, big
        with open(lay.blob_path(small["digest"]), "rb") as f:
            self.small_bytes = f.read()
        with open(lay.blob_path(big["digest"]), "rb") as f:
            self.big_bytes = f.read()
        # Blobs only the registry holds: a 300 KiB one (coalesced misses) and a large one.
        self.miss_bytes = os.urandom(300 * 1024)
        self.miss = self.push_blob(self.miss_bytes)
        self.big2_bytes = os.urandom(c["big"])
        self.big2 = self.push_blob(self.big2_bytes)
        # Node A: its containerd holds the image.
        self.ca = bench.Containerd(os.path.join(self.work, "ca")).start()
        lay.ctr_import(self.ca.sock, "soak", f"{self.up.addr}/soak:v1")
        self.a = self.node("a", self.ca, env={"PEERD_P2P__SECRET": SECRET})
        bench.wait_until("node a ready", 60, self.a.ready)

    def fresh_client_node(self, name, env=None):
        """A node with no content, connected to A; ready once it resolves A for the big layer."""
        e = {"PEERD_P2P__SECRET": SECRET}
        e.update(env or {})
        n = self.node(name, boot=[self.a], env=e)
        bench.wait_until(f"{name} ready", 60, n.ready)
        return n

    def wait_resolves(self, n, key, timeout=60):
        a_id = self.a.peer_id()

        def ok():
            r = n.resolve(key) or {}
            return any(p.get("id") == a_id for p in r.get("peers", []))

        bench.wait_until(f"{n.name} resolves A for {key}", timeout, ok, interval=0.5)

    # ----------------------------------------------------------------------------------------

    def load(self):
        c = self.cfg
        rss = self.rss_probe(self.a)
        path = self.blob_path(self.small["digest"])
        if shutil.which("wrk"):
            r = wrk(self.a.http, path, c["conns"], c["load_s"], 4096, self.work)
        else:
            r = py_load(self.a.http, path, min(c["conns"], 200), c["load_s"], self.small_bytes)
        r["peak_rss_mib"] = rss()
        r["alive"] = self.a.proc.poll() is None
        return r

    def load_miss(self):
        c = self.cfg
        n = self.fresh_client_node("miss")
        rss = self.rss_probe(n)
        before = self.registry_gets(self.miss)
        path = self.blob_path(self.miss)
        if shutil.which("wrk"):
            r = wrk(n.http, path, c["miss_conns"], c["miss_s"], len(self.miss_bytes), self.work)
        else:
            r = py_load(n.http, path, c["miss_conns"], c["miss_s"], self.miss_bytes)
        r["registry_blob_gets"] = self.registry_gets(self.miss) - before
        r["shared"] = n.metric("peerd_coalesced_requests_total", 'outcome="shared"')
        r["peak_rss_mib"] = rss()
        self.stop_node(n)
        return r

    def registry_gets(self, digest):
        try:
            with open(os.path.join(self.reg.dir, "registry.log"), errors="replace") as f:
                return sum(1 for l in f if f'"GET /v2/soak/blobs/{digest} ' in l)
        except OSError:
            return 0

    def stalled(self):
        c = self.cfg
        rss = self.rss_probe(self.a)
        host, port = self.a.http.rsplit(":", 1)
        req = (f"GET {self.blob_path(self.big['digest'])} HTTP/1.1\r\nHost: {self.a.http}\r\n\r\n").encode()
        socks = []
        for _ in range(c["stalled"]):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(req)
            socks.append(s)
        t0 = time.time()
        # A healthy client meanwhile: whole reads of the same blob.
        lat, errors, wrong = [], 0, 0
        while time.time() - t0 < c["write_timeout"] + 2 or (not lat and time.time() - t0 < 120):
            s_, b, dt, err = fetch(self.a.http, self.blob_path(self.big["digest"]))
            if err or s_ != 200:
                errors += 1
            elif b != self.big_bytes:
                wrong += 1
            else:
                lat.append(dt)
        peak = rss()
        # Past the write timeout: the stalled connections must have been cut by the server.
        deadline = time.time() + c["write_timeout"] + 10
        open_ = len(socks)
        while time.time() < deadline:
            open_ = self.established(int(port))
            if open_ == 0:
                break
            time.sleep(0.5)
        cut_after = time.time() - t0
        for s in socks:
            s.close()
        return {"stalled": c["stalled"], "blob_mib": c["big"] / MiB, "healthy_reads": len(lat), "errors": errors,
                "wrong": wrong, "bytes_lost": wrong * len(self.big_bytes), "p99_ms": bench.pct(lat, 99) * 1e3,
                "peak_rss_mib": peak, "server_conns_open_at_end": open_, "all_cut_after_s": cut_after,
                "write_timeout_s": c["write_timeout"]}

    def established(self, port):
        out = bench.sh(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], check=False)
        return len([l for l in out.splitlines() if l.strip()])

    def full_disk(self):
        c = self.cfg
        # The node's data dir (bench.Peerd uses <work>/peerd-<name>) is a 2 MiB tmpfs.
        mnt = os.path.join(self.work, "peerd-disk")
        os.makedirs(mnt)
        bench.sh(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt])
        self.mounts.append(mnt)
        n = self.fresh_client_node("disk")
        fd = os.open(os.path.join(mnt, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"\x5a" * (64 << 10)) > 0:
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        avail = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        assert avail < 64 << 10, f"the tmpfs is full: {avail} bytes left"
        rss = self.rss_probe(n)
        results = []
        lock = threading.Lock()
        paths = [self.blob_path(self.big2), f"/blobs/http://{self.up.addr}/v2/soak/blobs/{self.big2}"]

        def client(i):
            r = fetch(n.http, paths[i % 2], timeout=120)
            with lock:
                results.append(r)

        ts = [threading.Thread(target=client, args=(i,)) for i in range(c["disk_clients"] * 2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(180)
        errors = sum(1 for s, b, _, e in results if e or s != 200)
        wrong = sum(1 for s, b, _, e in results if not e and s == 200 and b != self.big2_bytes)
        leftovers = []
        for dp, _, fs in os.walk(mnt):
            leftovers += [f for f in fs if "tmp" in f or "spool" in f]
        out = {"clients": len(results), "errors": errors, "wrong": wrong,
               "bytes_lost": wrong * len(self.big2_bytes),
               "p99_ms": bench.pct([dt for _, _, dt, e in results if not e], 99),
               "peak_rss_mib": rss(), "leftover_files": len(leftovers),
               "said_no_room": "no disk room" in bench.tail(n.logfile, 400)}
        if out["p99_ms"] is not None:
            out["p99_ms"] *= 1e3
        self.stop_node(n)
        bench.sh(["umount", "-l", mnt], check=False)
        self.mounts.remove(mnt)
        return out

    def outage(self):
        c = self.cfg
        rss = self.rss_probe(self.a)
        lat = {"held_blob": [], "tag": [], "miss": []}
        status = {"held_blob": {}, "tag": {}, "miss": {}}
        wrong = 0
        self.up.set_up(False)
        t0 = time.time()
        miss = self.miss  # A never held it
        while time.time() - t0 < c["outage_s"]:
            for kind, path in (("held_blob", self.blob_path(self.small["digest"])),
                               ("tag", f"/v2/soak/manifests/v1?ns={self.ns()}"),
                               ("miss", self.blob_path(miss))):
                hdr = {"Accept": bench.OCI_MANIFEST} if kind == "tag" else None
                s, b, dt, err = fetch(self.a.http, path, timeout=30, headers=hdr)
                key = err.split(":")[0] if err else s
                status[kind][key] = status[kind].get(key, 0) + 1
                lat[kind].append(dt)
                if kind == "held_blob" and s == 200 and b != self.small_bytes:
                    wrong += 1
        self.up.set_up(True)
        t1 = time.time()
        recovered = None
        while time.time() - t1 < 120:
            s, b, dt, err = fetch(self.a.http, self.blob_path(miss), timeout=30)
            if s == 200 and b == self.miss_bytes:
                recovered = time.time() - t1
                break
            time.sleep(0.2)
        return {"seconds": c["outage_s"], "status": {k: {str(x): y for x, y in v.items()} for k, v in status.items()},
                "p99_ms": {k: bench.pct(v, 99) * 1e3 for k, v in lat.items()},
                "errors_on_held": sum(v for k, v in status["held_blob"].items() if k != 200),
                "wrong": wrong, "bytes_lost": wrong * len(self.small_bytes),
                "stale_tags": self.a.metric("peerd_stale_tags_total"),
                "recovered_after_s": recovered, "peak_rss_mib": rss()}

    def content_file(self, ctrd, digest):
        return os.path.join(ctrd.dir, "root/io.containerd.content.v1.content/blobs/sha256", digest.split(":")[1])

    def corrupt(self):
        c = self.cfg
        n = self.fresh_client_node("corrupt")
        self.wait_resolves(n, self.big["digest"])
        path = self.content_file(self.ca, self.big["digest"])
        orig = open(path, "rb").read()
        flipped = bytearray(orig)
        flipped[-1] ^= 1
        with open(path, "wb") as f:
            f.write(flipped)
        rss = self.rss_probe(n)
        reads = []
        try:
            for _ in range(c["corrupt_reads"]):
                reads.append(fetch(n.http, self.blob_path(self.big["digest"]), timeout=120))
        finally:
            with open(path, "wb") as f:
                f.write(orig)
        wrong = sum(1 for s, b, _, e in reads if not e and s == 200 and b != self.big_bytes)
        errors = sum(1 for s, b, _, e in reads if e or s != 200)
        out = {"reads": len(reads), "errors": errors, "wrong": wrong, "bytes_lost": wrong * len(self.big_bytes),
               "first_read": "cut" if reads[0][3] else str(reads[0][0]),
               "ok_after_first": all(s == 200 and b == self.big_bytes and not e for s, b, _, e in reads[1:]),
               "p99_ms": bench.pct([r[2] for r in reads], 99) * 1e3, "peak_rss_mib": rss(),
               "peer_rests": n.metric("peerd_peer_rests_total", 'reason="digest_mismatch"'),
               "mismatches": n.metric("peerd_digest_mismatches_total", 'source="peer"')}
        self.stop_node(n)
        return out

    def kill_peer(self):
        c = self.cfg
        rounds = []
        for i in range(c["kills"]):
            if self.a.proc.poll() is not None:
                self.a = self.node("a", self.ca, env={"PEERD_P2P__SECRET": SECRET})
                bench.wait_until("node a ready again", 60, self.a.ready)
            n = self.fresh_client_node(f"kill{i}")
            self.wait_resolves(n, self.big["digest"])
            rss = self.rss_probe(n)
            t0 = time.time()
            err, body, status = None, b"", 0
            try:
                host, port = n.http.rsplit(":", 1)
                s = socket.create_connection((host, int(port)), timeout=120)
                s.sendall(f"GET {self.blob_path(self.big['digest'])} HTTP/1.1\r\nHost: {n.http}\r\n"
                          "Connection: close\r\n\r\n".encode())
                buf = bytearray()
                killed = False
                while True:
                    d = s.recv(256 << 10)
                    if not d:
                        break
                    buf += d
                    if not killed and len(buf) > len(self.big_bytes) // 4:
                        os.kill(self.a.pid, 9)
                        self.a.proc.wait(10)
                        killed = True
                s.close()
                head, _, body = bytes(buf).partition(b"\r\n\r\n")
                status = int(head.split()[1]) if head else 0
                if not killed:
                    err = "the body ended before a quarter"
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
            dt = time.time() - t0
            ok = status == 200 and body == self.big_bytes
            rounds.append({"status": status, "bytes": len(body), "ok": ok, "error": err, "seconds": dt,
                           "wrong": int(status == 200 and len(body) == len(self.big_bytes) and not ok),
                           "peak_rss_mib": rss(), "upstream_bytes": n.metric("peerd_served_bytes_total",
                                                                             'source="upstream"')})
            self.stop_node(n)
        return {"rounds": len(rounds), "errors": sum(1 for r in rounds if not r["ok"]),
                "wrong": sum(r["wrong"] for r in rounds),
                # A 200 that ended (EOF) short or with other bytes: the raw client saw no error.
                "bytes_lost": sum(len(self.big_bytes) if r["status"] == 200 and not r["ok"] else 0 for r in rounds),
                "p99_ms": bench.pct([r["seconds"] for r in rounds], 99) * 1e3,
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds), "detail": rounds}

    def stop_node(self, n):
        CLEAN.stop(n.proc)
        if n in self.nodes:
            self.nodes.remove(n)

    def run(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        if want < self.cfg["conns"] + 512:
            log(f"open-file limit {want}: load uses {want - 512} connections")
            self.cfg = dict(self.cfg, conns=max(64, want - 512))
        self.setup()
        order = [("load", self.load), ("load-miss", self.load_miss), ("stalled", self.stalled),
                 ("full-disk", self.full_disk), ("outage", self.outage), ("corrupt", self.corrupt),
                 ("kill-peer", self.kill_peer)]
        for name, f in order:
            if self.args.only and name not in self.args.only:
                continue
            log(f"scenario {name}")
            t0 = time.time()
            try:
                r = f()
            except Exception as e:
                traceback.print_exc()
                r = {"failed": f"{type(e).__name__}: {e}"}
            r["wall_s"] = round(time.time() - t0, 1)
            if self.a.proc.poll() is not None and name != "kill-peer":
                r["node_a_died"] = True
            self.results[name] = r
            log(name, json.dumps({k: v for k, v in r.items() if k != "detail"}, default=str))

    def cleanup(self):
        CLEAN.all()
        for m in self.mounts:
            subprocess.run(["umount", "-l", m], capture_output=True)
        if hasattr(self, "up"):
            self.up.close()
        shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------------------------


def f(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown(res, machine, cfg, quick):
    L = []
    w = L.append
    w("# Reliability: soak and fault scenarios\n")
    w("Written by `make soak` (scripts/soak.py); do not edit by hand. Issue 14's scenarios, bounded, "
      "against real components on loopback: docker-registry (behind a switchable TCP proxy for the outage), "
      "containerd, peerd processes. The registry is reached through that proxy, a Python thread pair per "
      "connection, so scenarios that read from the upstream (load-miss, full-disk, kill-peer's resumed part) "
      "are bound by its throughput, not peerd's.\n")
    w(f"**Machine:** {machine['nproc']} vCPU ({machine['cpu_model']}), {machine['mem_gib']} GiB, kernel "
      f"{machine['kernel']}. **Shared** with other agents' builds and tests while this ran, so latency and "
      "throughput figures are pessimistic and noisy; errors and bytes lost are not affected by load.\n")
    w(f"**Binary:** `{machine['binary']}` ({machine['peerd_version']}), commit `{machine['peerd_commit'][:12]}`"
      f"{' (worktree modified)' if machine['worktree_dirty'] else ''}; run {machine['date']}"
      f"{'; QUICK mode' if quick else ''}.\n")
    w("**Bytes lost** = bytes of answers a client took as successful that were wrong or missing (a 200 whose "
      "body differs from the blob or ends short without an error). A cut connection or an error status is "
      "counted under **errors** instead: the client sees it and containerd retries it. Every body is "
      "compared with the blob byte for byte (wrk: status and length).\n")
    if "/debug/" in machine["binary"]:
        w("The binary is a **debug build** (unoptimised): requests/s and latency under load are several times "
          "worse than a release build's; errors, bytes lost and the memory bounds are what this soak is for.\n")
    w("| scenario | what | errors | p99 | peak RSS | bytes lost |")
    w("|---|---|---|---|---|---|")

    def row(name, what, r, errors=None, p99=None):
        if "failed" in r:
            w(f"| {name} | {what} | scenario failed: {r['failed']} | | | |")
            return
        e = errors if errors is not None else r.get("errors")
        p = p99 if p99 is not None else r.get("p99_ms")
        w(f"| {name} | {what} | {f(e)} | {f(p)} ms | {f(r.get('peak_rss_mib'))} MiB | {f(r.get('bytes_lost'))} |")

    g = res.get
    if g("load"):
        r = g("load")
        row("load", f"{cfg['conns']:,} connections × {cfg['load_s']} s, 4 KiB held blob: "
            f"{f(r.get('requests'))} requests ({f(r.get('rps'), 0)}/s, {r.get('tool')})", r)
    if g("load-miss"):
        r = g("load-miss")
        row("load-miss", f"{cfg['miss_conns']} connections × {cfg['miss_s']} s, 300 KiB blob nobody holds: "
            f"{f(r.get('requests'))} requests, {f(r.get('registry_blob_gets'))} registry blob GETs", r)
    if g("stalled"):
        r = g("stalled")
        row("stalled", f"{cfg['stalled']} clients never read a {f(r.get('blob_mib'), 0)} MiB blob; "
            f"{f(r.get('healthy_reads'))} healthy whole reads meanwhile", r)
    if g("full-disk"):
        r = g("full-disk")
        row("full-disk", f"data_dir full (2 MiB tmpfs): {f(r.get('clients'))} concurrent whole reads, /v2 (swarm) "
            f"and /blobs, {cfg['big'] // MiB} MiB", r)
    if g("outage"):
        r = g("outage")
        row("outage", f"registry unreachable {cfg['outage_s']} s: held blob, tag, miss in a loop",
            r, errors=r.get("errors_on_held"), p99=(r.get("p99_ms") or {}).get("held_blob"))
    if g("corrupt"):
        r = g("corrupt")
        row("corrupt", f"1 flipped byte in the peer's copy; {f(r.get('reads'))} whole reads from another node", r)
    if g("kill-peer"):
        r = g("kill-peer")
        row("kill-peer", f"kill -9 of the serving peer a quarter into the body, {f(r.get('rounds'))} round(s)", r)
    w("\n## Details\n")
    if g("load") and "failed" not in g("load"):
        r = g("load")
        w(f"- **load**: p50 {f(r.get('p50_ms'))} ms, p99 {f(r.get('p99_ms'))} ms, max {f(r.get('max_ms'))} ms; "
          f"socket errors {r.get('socket_errors') or 'none'}; answers with a wrong status or size: {r.get('bad')}; "
          f"node alive after: {r.get('alive')}.")
    if g("load-miss") and "failed" not in g("load-miss"):
        r = g("load-miss")
        w(f"- **load-miss**: {f(r.get('requests'))} requests for a blob only the registry holds cost "
          f"{f(r.get('registry_blob_gets'))} blob GETs at the registry; {f(r.get('shared'), 0)} requests were "
          "served the bytes of another request's fetch (finding 7: concurrent misses of a blob ≤ 1 MiB share "
          "one upstream fetch per node). Sequential misses still fetch again: nothing is cached in memory.")
    if g("stalled") and "failed" not in g("stalled"):
        r = g("stalled")
        w(f"- **stalled**: with `http.write_timeout` {r.get('write_timeout_s')} s, server connections still open "
          f"at the end: {r.get('server_conns_open_at_end')} (checked until {f(r.get('all_cut_after_s'))} s). "
          f"Peak RSS {f(r.get('peak_rss_mib'))} MiB with {r.get('stalled')} stalled readers of a "
          f"{f(r.get('blob_mib'), 0)} MiB blob (the chart's memory limit is 512 MiB), about "
          f"{f((r.get('peak_rss_mib') or 0) / max(1, r.get('stalled') or 1), 2)} MiB per stalled reader.")
    if g("full-disk") and "failed" not in g("full-disk"):
        r = g("full-disk")
        w(f"- **full-disk**: wrong complete bodies {r.get('wrong')}; temporary or spool files left "
          f"{r.get('leftover_files')}; node said it had no room: {r.get('said_no_room')}.")
    if g("outage") and "failed" not in g("outage"):
        r = g("outage")
        w(f"- **outage**: answers by kind {json.dumps(r.get('status'))}; p99 by kind "
          f"{json.dumps({k: round(v, 1) for k, v in (r.get('p99_ms') or {}).items()})} ms (held blobs must all be "
          "200; tags may be served stale from the local image record; misses must fail fast); stale tags served "
          f"{f(r.get('stale_tags'), 0)}; a miss succeeded again {f(r.get('recovered_after_s'))} s after the "
          "registry came back.")
        odd = {k: v for k, v in (r.get("status") or {}).get("tag", {}).items() if k != "200"}
        if odd:
            w(f"  Tag answers other than 200 during the outage: {json.dumps(odd)}. The proxy cuts the open "
              "connections when the outage starts; a request on peerd's pooled connection to it fails as a "
              "protocol error (502), which is not treated as an unreachable upstream, so no stale tag for it.")
    if g("corrupt") and "failed" not in g("corrupt"):
        r = g("corrupt")
        w(f"- **corrupt**: first read {r.get('first_read')}; every later read complete and right: "
          f"{r.get('ok_after_first')}; peer mismatches {f(r.get('mismatches'), 0)}, rests "
          f"{f(r.get('peer_rests'), 0)}.")
    if g("kill-peer") and "failed" not in g("kill-peer"):
        for i, d in enumerate(g("kill-peer")["detail"]):
            w(f"- **kill-peer** round {i + 1}: status {d['status']}, {f(d['bytes'])} bytes, right: {d['ok']}, "
              f"{f(d['seconds'], 2)} s, {f(d['upstream_bytes'], 0)} bytes resumed from the registry"
              f"{', error ' + d['error'] if d['error'] else ''}.")
    w("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="each scenario a few seconds")
    ap.add_argument("--binary", help="peerd binary (default: target/release/peerd, else target/debug/peerd)")
    ap.add_argument("--only", nargs="*", help="run only these scenarios")
    ap.add_argument("--render", metavar="JSON", help="only write the markdown again from a saved result file")
    ap.add_argument("--out", help="markdown file (default: docs/reliability.md; with --quick, a temp file)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            saved = json.load(fh)
        out = args.out or os.path.splitext(args.render)[0] + ".md"
        with open(out, "w") as fh:
            fh.write(markdown(saved["results"], saved["machine"], saved["config"], saved.get("quick", False)))
        log(f"wrote {out}")
        return
    if os.geteuid() != 0:
        sys.exit("soak: needs root (tmpfs mount, containerd)")
    for t in ("docker-registry", "containerd", "ctr", "curl", "ss", "mount"):
        if not shutil.which(t):
            sys.exit(f"soak: {t} is missing (make deps)")
    if not shutil.which("wrk"):
        log("wrk is missing (apt-get install wrk): the load scenarios use a Python client, at most 200 connections")
    if not args.binary:
        for b in ("release", "debug"):
            p = os.path.join(ROOT, "target", b, "peerd")
            if os.path.exists(p):
                args.binary = p
                break
        else:
            sys.exit("soak: no peerd binary; run `make release` (or cargo build)")
    s = Soak(args)
    import signal

    def on_signal(sig, _):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        s.run()
    finally:
        s.cleanup()
    machine = bench.machine_info(args.binary)
    md = markdown(s.results, machine, s.cfg, args.quick)
    out = args.out or (os.path.join(tempfile.gettempdir(), "peerd-soak-quick.md") if args.quick
                       else os.path.join(ROOT, "docs", "reliability.md"))
    with open(out, "w") as fh:
        fh.write(md)
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump({"machine": machine, "config": s.cfg, "quick": args.quick, "results": s.results}, fh, indent=1, default=str)
    print(md)
    log(f"wrote {out}")
    failed = [k for k, v in s.results.items() if "failed" in v]
    lost = sum((v.get("bytes_lost") or 0) for v in s.results.values())
    if failed or lost:
        log(f"scenarios failed: {failed}; bytes lost: {lost}")
        sys.exit(1)


if __name__ == "__main__":
    main()
