"""A peerd process (on a loopback address or in a network namespace) and the reads the benchmark
makes on its metrics listener: readiness, /debug/p2p, /debug/resolve, Prometheus counters."""

import json
import os
import subprocess

from .client import Conn
from .common import SECRET, tail
from .procs import CLEAN


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
        # A/B runs of one setting: PEERD_BENCH_SET="SWARM__CUT_THROUGH=false,SWARM__REFRESH=500ms".
        for kv in filter(None, os.environ.get("PEERD_BENCH_SET", "").split(",")):
            k, _, v = kv.partition("=")
            e["PEERD_" + k.strip()] = v.strip()
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

    def p2p_info(self):
        return json.loads(self.mget("/debug/p2p")[1])

    def peer_id(self):
        return self.p2p_info()["peer_id"]

    def resolve(self, key):
        s, t = self.mget(f"/debug/resolve?key={key}", 10)
        if s != 200:
            return None
        return json.loads(t)

    def metric(self, name, *labels):
        """The sum of a Prometheus metric's samples whose line contains every label given."""
        s, text = self.mget("/metrics/prometheus")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (len(line) > len(name) and line[len(name)] in " {"):
                if all(l in line for l in labels):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def metrics_by(self, name, label, values):
        """{value: metric(name, label="value")} for each value."""
        return {v: self.metric(name, f'{label}="{v}"') for v in values}


def stop_peerds(peers):
    CLEAN.stop_many([p.proc for p in peers])
