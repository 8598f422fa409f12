"""A small HTTP/1.1 client on raw sockets (keep-alive, HEAD, Content-Length and chunked bodies, and
a "sink" mode that reads bodies with recv_into a 1 MiB buffer, cheap at GB/s), and the two load
shapes built on it: concurrent whole-blob GETs and interleaved request latency."""

import resource
import socket
import statistics
import threading
import time

from .common import MiB, GiB, lat_summary
from .cpu import ResourceProbe


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
        """(status, lower-case headers, body); with `sink` the body is only counted (its length)."""
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


def get(addr, path, headers=None, method="GET", timeout=30, sink=False):
    """One request on a fresh connection."""
    c = Conn(addr, timeout=timeout)
    try:
        return c.request(method, path, headers, sink=sink)
    finally:
        c.close()


def throughput(addr, path, size, streams, headers=None):
    """`streams` concurrent whole-blob GETs started together; GB/s = all bytes / wall time."""
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
    t0, cpu0 = time.perf_counter(), _own_cpu_s()
    for t in ts:
        t.join(900)
    wall, client_cpu = time.perf_counter() - t0, _own_cpu_s() - cpu0
    bad = [r for r in results if r is None or r[0] != 200 or r[1] != size]
    if bad:
        raise RuntimeError(f"{addr}{path}: bad transfers: {bad[:3]}")
    return {"gb_s": streams * size / wall / 1e9, "wall_s": wall, "bytes": streams * size,
            "stream_s": [r[2] for r in results], "client_cpu_s": client_cpu}


def _own_cpu_s():
    """CPU-seconds of this process (every thread): the client's cost of receiving."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def tp_rounds(cases, size, streams, reps):
    """Each round runs every case once, in turn, so slow phases of a noisy machine hit all cases.
    cases: name -> (addr, path, probe groups or None). Returns name -> summary; where a case has
    probe groups, the last round's resources (CPU-s, peak RSS per group) and the GiB it moved."""
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
        out[name]["client_cpu_s_per_gib"] = rs[-1]["client_cpu_s"] / (rs[-1]["bytes"] / GiB)
    return out


def interleaved_latency(targets, n, warm=20):
    """targets: name -> (addr, method, path, headers, expect_status). Round-robin, keep-alive,
    one connection per target; returns name -> latency summary with samples."""
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
    return {k: lat_summary(v, samples=True) for k, v in lat.items()}
