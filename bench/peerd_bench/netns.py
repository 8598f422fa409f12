"""Network namespaces joined by a bridge that lives in its own "switch" namespace; every link is
shaped with `tc tbf` on both ends (the namespace's egress is its upload, the switch port's egress
towards it its download). Names start with `pdb-`; all are deleted by name on exit (CLEAN)."""

from .common import sh
from .procs import CLEAN


class Switch:
    def __init__(self, name, namespaces):
        self.name = name
        self.namespaces = [name] + list(namespaces)
        self.shaped = []  # (namespace, device, bytes per second, burst)
        for ns in self.namespaces:
            sh(["ip", "netns", "add", ns])
            CLEAN.netns.append(ns)
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", name, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", name, "link", "set", "br0", "up"])

    def attach(self, ns, idx, cidr, bps, burst):
        """A veth from `ns` (eth0, address `cidr`) to the bridge, shaped to `bps` bytes/s each way."""
        a, b = f"pdbv{idx}a", f"pdbv{idx}b"
        CLEAN.links += [a, b]
        sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        sh(["ip", "link", "set", a, "netns", self.name])
        sh(["ip", "link", "set", b, "netns", ns])
        CLEAN.links.remove(a)
        CLEAN.links.remove(b)
        sh(["ip", "-n", ns, "link", "set", b, "name", "eth0"])
        sh(["ip", "-n", ns, "addr", "add", cidr, "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", self.name, "link", "set", a, "master", "br0", "up"])
        new = [(ns, "eth0", bps, burst), (self.name, a, bps, burst)]
        self.shaped += new
        self._tbf(new, 1, "add")

    def shape(self, div):
        """Divide every link's rate by `div` (relative to the rate given to attach)."""
        self._tbf(self.shaped, div, "change")

    @staticmethod
    def _tbf(links, div, verb):
        for ns, dev, bps, burst in links:
            sh(["tc", "-n", ns, "qdisc", verb, "dev", dev, "root", "tbf", "rate", f"{int(bps * 8 / div)}bit",
                "burst", burst, "latency", "50ms"])

    def delete(self):
        CLEAN.del_netns(self.namespaces)
