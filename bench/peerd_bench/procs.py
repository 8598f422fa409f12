"""Processes and clean-up: everything started is recorded and stopped by its PID; containerd and
registry instances through their fixture scripts; namespaces and links deleted by name."""

import os
import signal
import subprocess
import threading
import time

from .common import FIX


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
        self.track(p)
        return p

    def track(self, p):
        """Record a process started elsewhere (perf) so that it is stopped on exit too."""
        with self.lock:
            self.procs.append(p)

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

    def del_netns(self, names):
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
            if ns in self.netns:
                self.netns.remove(ns)

    def all(self):
        self.stop_many(list(reversed(self.procs)))
        for d in list(self.containerds):
            subprocess.run([os.path.join(FIX, "containerd.sh"), "stop", d], capture_output=True, timeout=120)
        self.containerds.clear()
        for d in list(self.registries):
            subprocess.run([os.path.join(FIX, "registry.sh"), "stop", d], capture_output=True, timeout=60)
        self.registries.clear()
        self.del_netns(list(self.netns))
        for link in list(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        self.links.clear()


CLEAN = Cleanup()
