"""containerd instances through tests/fixtures/containerd.sh (own root, state and sockets)."""

import os

from .common import FIX, sh
from .cpu import children
from .procs import CLEAN


class Containerd:
    def __init__(self, d, ns=None):
        self.dir = d
        self.ns = ns

    def start(self):
        CLEAN.containerds.append(self.dir)
        self.sock = sh([os.path.join(FIX, "containerd.sh"), "start", self.dir], timeout=60, ns=self.ns).strip()
        with open(os.path.join(self.dir, "pid")) as f:
            self.pid = int(f.read())
        return self

    def running(self):
        return self.dir in CLEAN.containerds

    def pids(self):
        """containerd and its children (shims)."""
        return [self.pid] + children(self.pid)

    def stop(self):
        sh([os.path.join(FIX, "containerd.sh"), "stop", self.dir], timeout=120)
        CLEAN.containerds.remove(self.dir)
