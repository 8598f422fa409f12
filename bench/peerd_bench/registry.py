"""docker-registry: on loopback through tests/fixtures/registry.sh, or inside a network namespace
with a configuration written here (the cluster case)."""

import os

from .common import FIX, curl_code, sh, wait_until
from .procs import CLEAN


class Registry:
    """On loopback (127.0.0.1, a free port; a restart keeps the storage and picks a new port)."""

    def __init__(self, work):
        self.dir = os.path.join(work, "registry")

    def start(self):
        CLEAN.registries.append(self.dir)
        self.addr = sh([os.path.join(FIX, "registry.sh"), "start", self.dir], timeout=60).strip()
        with open(os.path.join(self.dir, "pid")) as f:
            self.pid = int(f.read())
        return self.addr

    def stop(self):
        sh([os.path.join(FIX, "registry.sh"), "stop", self.dir], timeout=60)
        CLEAN.registries.remove(self.dir)


class NsRegistry:
    """In network namespace `ns`, listening on `addr` (that namespace's address)."""

    def __init__(self, d, ns, addr):
        self.dir, self.ns, self.addr = d, ns, addr
        os.makedirs(os.path.join(d, "data"))
        with open(os.path.join(d, "config.yml"), "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {d}/data\nhttp:\n  addr: {addr}\n  secret: bench\n")
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = CLEAN.spawn(["ip", "netns", "exec", self.ns, "docker-registry", "serve",
                                 os.path.join(self.dir, "config.yml")], os.path.join(self.dir, "registry.log"), env=env)
        wait_until("ns registry", 30, lambda: curl_code(f"http://{self.addr}/v2/", ns=self.ns) == "200", 0.2)
        return self

    def tx_bytes(self):
        """Bytes sent on the namespace's eth0 (the registry's egress)."""
        return int(sh(["cat", "/sys/class/net/eth0/statistics/tx_bytes"], ns=self.ns))

    def stop(self):
        CLEAN.stop(self.proc)
