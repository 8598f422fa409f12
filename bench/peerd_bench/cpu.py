"""CPU-seconds and memory per process (and per group of processes, a "role") from /proc."""

import os
import resource

CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """utime + stime of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def procs_cpu_s(pids):
    """utime + stime summed over processes; ones that are gone count 0."""
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_s(pid)
        except OSError:
            pass
    return total


def machine_cpu_s():
    """CPU-seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLK


def waited_children_cpu_s():
    """CPU-seconds of this process's children that have been waited for (`sh`, `ctr` pulls)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _kib(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_kib(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
    return _kib(f"/proc/{pid}/status", key)


def rss_mib(pids):
    return sum(proc_kib(p, "VmRSS") for p in pids) / 1024


def meminfo_kib(key):
    return _kib("/proc/meminfo", key)


def reset_hwm(pid):
    """Reset VmHWM (peak RSS) to the current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


class ResourceProbe:
    """CPU-seconds (utime+stime) and peak RSS (VmHWM, reset at start) of named process groups."""

    def __init__(self, groups):
        self.groups = groups  # name -> [pid]

    def __enter__(self):
        self.cpu0 = {}
        for name, pids in self.groups.items():
            for p in pids:
                reset_hwm(p)
            self.cpu0[name] = sum(proc_cpu_s(p) for p in pids)
        return self

    def __exit__(self, *exc):
        self.result = {}
        for name, pids in self.groups.items():
            self.result[name] = {
                "cpu_s": sum(proc_cpu_s(p) for p in pids) - self.cpu0[name],
                "peak_rss_mib": sum(proc_kib(p, "VmHWM") for p in pids) / 1024,
                "rss_mib": rss_mib(pids),
            }
