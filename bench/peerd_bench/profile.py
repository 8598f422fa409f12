"""perf record / perf report: where the CPU goes during a transfer or a whole case."""

import os
import shutil
import signal
import subprocess
import time

from .client import throughput
from .cpu import proc_cpu_s
from .procs import CLEAN


def perf_start(out, pids=None, freq=999):
    """`perf record -e cpu-clock -g` of `pids`, or of the whole machine when None."""
    target = ["-p", ",".join(map(str, pids))] if pids else ["-a"]
    p = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", str(freq), "-g", "-o", out] + target,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    CLEAN.track(p)
    return p


def perf_stop(p, timeout=60):
    os.kill(p.pid, signal.SIGINT)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    CLEAN.stop(p)


def perf_report(data, percent_limit, timeout=300):
    """Flat report by comm, dso, symbol: the lines above `percent_limit` %."""
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "comm,dso,sym",
                          "--percent-limit", str(percent_limit), "-g", "none"], capture_output=True, timeout=timeout)
    return rep.stdout.decode(errors="replace")


def profile_transfer(work, node, addr, path, size, extra=()):
    """perf record (cpu-clock) of peerd `node` (and `extra` pids) during one 1-stream transfer; top symbols."""
    if not shutil.which("perf"):
        return {"error": "perf not installed"}
    pids = [node.pid] + list(extra)
    data = os.path.join(work, f"perf-{node.name}.data")
    rec = perf_start(data, pids)
    time.sleep(0.5)
    cpu0 = {p: proc_cpu_s(p) for p in pids}
    r = throughput(addr, path, size, 1)
    cpu1 = {p: proc_cpu_s(p) for p in pids}
    perf_stop(rec)
    lines = [l for l in perf_report(data, 1.5).splitlines() if l.strip() and not l.startswith("#")]
    return {"gb_s_while_profiled": r["gb_s"], "wall_s": r["wall_s"],
            "cpu_s": {str(p): cpu1[p] - cpu0[p] for p in pids}, "top": lines[:30]}
