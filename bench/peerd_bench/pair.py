"""The two-node set-up shared by the throughput, latency, peer, blobs and miss_dht sections:
a docker-registry with three images, nginx serving the big blob's file, peerd A on 127.0.0.2 with
the images imported into its containerd, peerd B on 127.0.0.3 with an empty containerd."""

import json
import os
import shutil
import time

from .common import MiB, free_port, log, wait_until
from .containerd import Containerd
from .cpu import proc_kib, rss_mib
from .images import Layout
from .nginx import Nginx
from .peerd import Peerd, stop_peerds
from .registry import Registry


class Pair:
    def __init__(self, work, binary, cfg):
        self.work, self.binary, self.cfg = work, binary, cfg
        self.a = self.b = self.ca = self.cb = self.nginx = None

    def setup(self, res):
        c, w = self.cfg, self.work
        log(f"writing images (blob {c['big'] / MiB:.0f} MiB)")
        t = time.time()
        self.layout = Layout(os.path.join(w, "oci"))
        big = self.layout.add_layer(c["big"] - 1536)  # + 512 tar header + 1024 end blocks = c['big'] bytes
        assert big["size"] == c["big"], big
        self.big = big
        self.layout.add_image("big", [big])
        self.small_layer = self.layout.add_layer(4096 - 1536)  # a 4 KiB blob
        self.layout.add_image("small", [self.small_layer])
        self.miss_layer = self.layout.add_layer(2048)
        self.layout.add_image("miss", [self.miss_layer])
        res["setup_gen_s"] = time.time() - t
        # nginx serves the very same bytes as the blob
        self.www = os.path.join(w, "www")
        os.makedirs(self.www)
        os.link(self.layout.blob_path(big["digest"]), os.path.join(self.www, "big.bin"))

        self.reg = Registry(w)
        self.reg_addr = self.reg.start()
        t = time.time()
        for ref in ("big", "small", "miss"):
            self.layout.push(ref, self.reg_addr, f"bench/{ref}")
        res["setup_push_s"] = time.time() - t
        self.nginx = Nginx(w, self.www)
        self.nginx.start()
        self.ca = Containerd(os.path.join(w, "ca")).start()
        self.cb = Containerd(os.path.join(w, "cb")).start()
        t = time.time()
        for ref in ("big", "small"):
            self.layout.ctr_import(self.ca.sock, ref, f"{self.reg_addr}/bench/{ref}:v1")
        res["setup_import_s"] = time.time() - t
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
        for d in (big["digest"], self.small_layer["digest"]):
            wait_until("B resolves A for the blobs", 60,
                       lambda d=d: self.a_id in json.dumps(self.b.resolve(d) or {}), 0.3)
        time.sleep(1)
        res["resources_idle"] = {
            "peerd_a_rss_mib": proc_kib(self.a.pid, "VmRSS") / 1024,
            "peerd_b_rss_mib": proc_kib(self.b.pid, "VmRSS") / 1024,
            "nginx_rss_mib": rss_mib(self.nginx.pids()),
            "registry_rss_mib": proc_kib(self.reg.pid, "VmRSS") / 1024,
            "containerd_rss_mib": proc_kib(self.ca.pid, "VmRSS") / 1024,
        }

    def blob_path(self, repo, digest):
        """/v2 path of a blob through peerd (with the ?ns= of the registry)."""
        return f"/v2/bench/{repo}/blobs/{digest}?{self.ns_q}"

    def teardown(self):
        stop_peerds([p for p in (self.a, self.b) if p])
        for c in (self.ca, self.cb):
            if c and c.running():
                c.stop()
        if self.nginx and self.nginx.running():
            self.nginx.stop()
        shutil.rmtree(os.path.join(self.work, "ca"), ignore_errors=True)
        shutil.rmtree(os.path.join(self.work, "cb"), ignore_errors=True)
