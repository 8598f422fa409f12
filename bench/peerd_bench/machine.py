"""The machine notes at the top of the report: CPU, kernel, memory, the peerd build, tool versions."""

import os
import time

from .common import ROOT, sh
from .cpu import meminfo_kib


def _cpuinfo(key):
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return ""


def _first_line(cmd):
    out = sh(cmd, check=False).strip()
    return out.splitlines()[0] if out else ""


def machine_info(binary):
    dirty = bool(sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], check=False).strip())
    return {
        "nproc": os.cpu_count(), "cpu_model": _cpuinfo("model name"), "cpu_mhz": _cpuinfo("cpu MHz"),
        "sha_ni": " sha_ni" in _cpuinfo("flags") + " ", "kernel": os.uname().release,
        "mem_gib": round(meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "peerd_commit": sh(["git", "-C", ROOT, "rev-parse", "HEAD"], check=False).strip(), "worktree_dirty": dirty,
        "peerd_version": sh([binary, "--version"], check=False).strip(), "binary": os.path.relpath(binary, ROOT),
        "binary_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(binary))),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "tools": {t: _first_line(c) for t, c in {
            "nginx": ["sh", "-c", "nginx -v 2>&1"], "docker-registry": ["docker-registry", "--version"],
            "containerd": ["containerd", "--version"], "python": ["python3", "--version"]}.items()},
    }
