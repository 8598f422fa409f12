"""The sections in order, each recorded with its time and, on failure, its error."""

import os
import tempfile
import time
import traceback

from . import blobs, cluster, dht, latency, throughput
from .common import FULL, SMOKE, log
from .machine import machine_info
from .pair import Pair

# Sections that share the two-node set-up (pair.Pair), in the order they run.
PAIR_SECTIONS = ("throughput", "latency", "peer", "blobs", "miss_dht")
SECTIONS = PAIR_SECTIONS + ("cluster",)


def bench_peer(b):
    """Registry stopped: B (empty containerd) streams from A; then small requests from the peer."""
    b.pair.reg.stop()
    throughput.bench_peer_throughput(b)
    latency.bench_peer_latency(b)


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
        self.pair = Pair(self.work, self.binary, self.cfg)

    def section(self, name, fn, always=False):
        if self.args.only and name not in self.args.only and not always:
            return
        log(f"== {name}")
        t = time.time()
        try:
            fn(self)
        except Exception as e:  # noqa: BLE001
            log(f"section {name} failed: {e}")
            traceback.print_exc()
            self.res["errors"][name] = f"{type(e).__name__}: {e}"
            if self.smoke:
                raise
        finally:
            self.timings[name] = round(time.time() - t, 1)
            log(f"== {name} done in {self.timings[name]} s")

    def run(self):
        t_all = time.time()
        self.res["machine"] = machine_info(self.binary)
        log(f"machine: {self.res['machine']['cpu_model']}, {self.res['machine']['nproc']} CPUs; work dir {self.work}")
        if not self.args.only or any(s in self.args.only for s in PAIR_SECTIONS):
            self.section("setup", lambda b: b.pair.setup(b.res), always=True)
            if "setup" not in self.res["errors"]:
                self.section("throughput", throughput.bench_throughput)
                self.section("latency", latency.bench_latency)
                self.section("peer", bench_peer)
                self.section("blobs", blobs.bench_blobs)
                self.pair.teardown()
                self.section("miss_dht", dht.bench_miss_and_dht)
        self.section("cluster", cluster.bench_cluster)
        self.res["timings_s"] = self.timings | {"total": round(time.time() - t_all, 1)}
