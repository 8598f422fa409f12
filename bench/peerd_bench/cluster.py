"""Cluster pull in network namespaces: N nodes (each its own containerd, and in cases b, c, c4 its
own peerd) and a registry on one bridge, shaped with tc tbf (nodes 1 Gbit/s, registry 200 Mbit/s).
Cases: (a) no peerd, all at once; (b) one node first, then the rest through peerd; (c) all at once
through peerd; (c4) = (c) with every rate divided by 4."""

import os
import shutil
import statistics
import threading
import time

from .common import MiB, NODE_BPS, NODE_RATE, REG_BPS, REG_RATE, log, sh, wait_until
from .containerd import Containerd
from .cpu import machine_cpu_s, procs_cpu_s, waited_children_cpu_s
from .images import Layout
from .netns import Switch
from .peerd import Peerd, stop_peerds
from .profile import perf_report, perf_start, perf_stop
from .registry import NsRegistry

NET = "10.213.0."
CASES = (("a", False), ("b", True), ("c", True), ("c4", True))


class Cluster:
    def __init__(self, b):
        c = b.cfg
        self.binary = b.binary
        self.n = c["cl_nodes"]
        self.w = os.path.join(b.work, "cl")
        os.makedirs(self.w, exist_ok=True)
        # image: several uncompressed random layers
        lay = Layout(os.path.join(self.w, "oci"))
        self.layers = [lay.add_layer(c["cl_layer"] - 1536) for _ in range(c["cl_layers"])]
        img = lay.add_image("v1", self.layers)
        self.F = sum(l["size"] for l in self.layers) + img["config"]["size"] + img["manifest"]["size"]
        self.names = [f"pdb-n{i}" for i in range(1, self.n + 1)]
        log(f"cluster: {self.n} namespaces, image {self.F / MiB:.0f} MiB in {len(self.layers)} layers")
        self.net = Switch("pdb-sw", ["pdb-reg"] + self.names)
        reg_ip = NET + "254"
        self.net.attach("pdb-reg", 254, reg_ip + "/24", REG_BPS, "256kb")
        for i, ns in enumerate(self.names, 1):
            self.net.attach(ns, i, f"{NET}{i}/24", NODE_BPS, "1mb")
        self.reg = NsRegistry(os.path.join(self.w, "reg"), "pdb-reg", f"{reg_ip}:5000").start()
        lay.push("v1", self.reg.addr, "bench/cluster", ns="pdb-reg")
        self.image = f"{self.reg.addr}/bench/cluster:v1"
        self.key = max(self.layers, key=lambda l: l["size"])["digest"]

    def hosts_dir(self, i, mirror):
        """A hosts.toml directory for node i: its own peerd as the mirror, or the registry directly."""
        reg = self.reg.addr
        d = os.path.join(self.w, f"hosts{i}-{'m' if mirror else 'd'}", reg)
        os.makedirs(d, exist_ok=True)
        host = f"{NET}{i}:5000" if mirror else reg
        with open(os.path.join(d, "hosts.toml"), "w") as f:
            f.write(f'server = "http://{reg}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n'
                    f'  dial_timeout = "200ms"\n')
        return os.path.dirname(d)

    def start_nodes(self, case, with_peerd):
        ctrds = [Containerd(os.path.join(self.w, f"{case}c{i}"), ns=ns).start() for i, ns in enumerate(self.names, 1)]
        peers = []
        if with_peerd:
            boot = []
            for i in range(1, min(self.n, 3) + 1):
                boot += ["--bootstrap-peer", f"{NET}{i}:5003"]
            reg = self.reg.addr
            for i, ns in enumerate(self.names, 1):
                peers.append(Peerd(self.binary, self.w, f"{case}{i}", NET + str(i), (5000, 5004, 5003),
                                   ["--mirror-host", reg, "--plain-http-host", reg,
                                    "--containerd-socket", ctrds[i - 1].sock] + boot, ns=ns))
            for p in peers:
                wait_until(f"{p.name} ready", 60, p.ready, 0.2)
        return ctrds, peers

    @staticmethod
    def stop_nodes(ctrds, peers):
        stop_peerds(peers)
        for cd in ctrds:
            cd.stop()
            shutil.rmtree(cd.dir, ignore_errors=True)

    def pull_all(self, idx, mirror, ctrds):
        """`ctr image pull` (with unpack) on nodes `idx` at once; ({node: seconds}, wall seconds)."""
        times, errors = {}, {}
        t0 = time.time()

        def pull(i):
            try:
                sh(["ctr", "-a", ctrds[i - 1].sock, "-n", "k8s.io", "image", "pull", "--hosts-dir",
                    self.hosts_dir(i, mirror), self.image], ns=self.names[i - 1], timeout=1800)
                times[i] = time.time() - t0
            except Exception as e:  # reported below, with the others
                errors[i] = str(e)[-600:]

        ts = [threading.Thread(target=pull, args=(i,)) for i in idx]
        for t in ts:
            t.start()
        for t in ts:
            t.join(1900)
        if len(times) != len(idx):
            raise RuntimeError(f"pulls failed: {sorted(set(idx) - set(times))}: {errors}")
        return times, time.time() - t0

    def pull_first_then_rest(self, peers, ctrds, r):
        """Case (b): node 1 pulls alone; once every other node resolves it, the rest pull together."""
        first, _ = self.pull_all([1], True, ctrds)
        t = time.time()
        for p in peers[1:]:
            wait_until(f"{p.name} resolves node 1", 60, lambda p=p: (p.resolve(self.key) or {}).get("peers"), 0.1)
        r["advertise_wait_s"] = time.time() - t
        rest, wall = self.pull_all(list(range(2, self.n + 1)), True, ctrds)
        r["first_node_s"] = first[1]
        r["rest_s"] = [rest[i] for i in sorted(rest)]
        r["per_node_s"] = [first[1]] + r["rest_s"]
        r["total_s"] = first[1] + r["advertise_wait_s"] + wall
        return r["rest_s"]

    def pull_together(self, case, with_peerd, ctrds, r):
        prof_out = os.environ.get("PEERD_BENCH_PROFILE_CLUSTER") if case == "c" else None
        # whole-machine profile of the all-at-once pull (for finding CPU hogs)
        prof = perf_start(os.path.join(self.w, "perf-c.data"), freq=499) if prof_out else None
        times, wall = self.pull_all(list(range(1, self.n + 1)), with_peerd, ctrds)
        if prof:
            perf_stop(prof, 120)
            with open(prof_out, "w") as f:
                f.write(perf_report(os.path.join(self.w, "perf-c.data"), 0.7, timeout=600))
        r["per_node_s"] = [times[i] for i in sorted(times)]
        r["total_s"] = wall
        return r["per_node_s"]

    def run_case(self, case, with_peerd, bound):
        ctrds, peers = self.start_nodes(case, with_peerd)
        try:
            ctrd_pids = lambda: [pid for cd in ctrds for pid in cd.pids()]  # noqa: E731
            tx0 = self.reg.tx_bytes()
            cpu0 = machine_cpu_s()
            peerd_cpu0 = procs_cpu_s([p.pid for p in peers])
            ctrd_cpu0 = procs_cpu_s(ctrd_pids())
            ctr_cpu0 = waited_children_cpu_s()
            r = {}
            if case == "b":
                comp = self.pull_first_then_rest(peers, ctrds, r)
            else:
                comp = self.pull_together(case, with_peerd, ctrds, r)
            r["p50_s"] = statistics.median(comp)
            r["max_s"] = max(comp)
            # Where the machine's CPU went (8 nodes share its cores): busy CPU-seconds in all,
            # and those of peerd and of containerd (with its shims), against what was available.
            r["cpu_busy_s"] = machine_cpu_s() - cpu0
            r["cpu_available_s"] = r["total_s"] * os.cpu_count()
            r["peerd_cpu_s"] = procs_cpu_s([p.pid for p in peers]) - peerd_cpu0
            r["containerd_cpu_s"] = procs_cpu_s(ctrd_pids()) - ctrd_cpu0
            # `ctr image pull` fetches in the client process: that is where the pull's own hashing is
            r["ctr_cpu_s"] = waited_children_cpu_s() - ctr_cpu0
            r["registry_egress_bytes"] = self.reg.tx_bytes() - tx0
            r["registry_egress_images"] = r["registry_egress_bytes"] / self.F
            r["bound_s"] = bound * (4 if case == "c4" else 1)
            r["total_over_bound"] = r["total_s"] / r["bound_s"]
            r["max_over_bound"] = r["max_s"] / r["bound_s"]
            if peers:
                self.peer_counters(peers, r)
            log(f"  ({case}) total {r['total_s']:.1f} s, p50 {r['p50_s']:.1f} s, max {r['max_s']:.1f} s, "
                f"registry egress {r['registry_egress_images']:.2f} images, {r['total_over_bound']:.2f}x bound; "
                f"CPU busy {r['cpu_busy_s']:.0f} of {r['cpu_available_s']:.0f} CPU-s (peerd {r['peerd_cpu_s']:.0f}, "
                f"containerd {r['containerd_cpu_s']:.0f}, ctr {r['ctr_cpu_s']:.0f})")
            return r
        finally:
            self.stop_nodes(ctrds, peers)

    @staticmethod
    def peer_counters(peers, r):
        def total(name, label=None, values=()):
            if label:
                return {v: sum(p.metric(name, f'{label}="{v}"') for p in peers) for v in values}
            return sum(p.metric(name) for p in peers)

        r["served_bytes"] = total("peerd_served_bytes_total", "source", ("local", "peer", "upstream", "swarm"))
        # swarm chunks received, by where they came from
        r["swarm_chunk_bytes"] = total("peerd_swarm_chunk_bytes_total", "source", ("peer", "upstream"))
        # where duplicate registry reads come from: chunks taken over from a peer that made
        # no progress, and upstream reads given up because a peer had the chunk first
        r["swarm_takeovers"] = total("peerd_swarm_takeovers_total")
        r["swarm_abandoned"] = total("peerd_swarm_chunk_failures_total", "reason", ("abandoned",))["abandoned"]

    def close(self):
        self.reg.stop()
        self.net.delete()


def bench_cluster(b):
    cl = Cluster(b)
    F, N = cl.F, cl.n
    bound = max(F / REG_BPS, F / NODE_BPS)
    out = {"nodes": N, "image_bytes": F, "layers": len(cl.layers), "node_rate": NODE_RATE, "registry_rate": REG_RATE,
           "bound_s": bound, "no_p2p_bound_s": N * F / REG_BPS}
    cases = {}
    # PEERD_BENCH_CASES="c,c4": only those (an A/B run of one setting, see PEERD_BENCH_SET).
    only = set(filter(None, os.environ.get("PEERD_BENCH_CASES", "").split(",")))
    for case, with_peerd in CASES:
        if only and case not in only:
            continue
        if case == "c4":
            # (c) again with every rate divided by 4: the same network shape, but 8 nodes' containerd,
            # ctr and peerd no longer need more CPU than this machine has, so the time shows the design.
            cl.net.shape(4)
        log(f"cluster case ({case})")
        cases[case] = cl.run_case(case, with_peerd, bound)
    out["cases"] = cases
    b.res["cluster"] = out
    cl.close()
