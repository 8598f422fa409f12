"""The PNG plots under docs/benchmarks/ (matplotlib, from the venv that cli.ensure_matplotlib makes)."""

import os

from .common import MiB, g, human
from .targets import nginx_ref


def make_plots(res, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    made = {}

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, f"{name}.png"), dpi=110)
        plt.close(fig)
        made[name] = f"benchmarks/{name}.png"

    S = str(res["config"]["streams"])
    tp = res.get("throughput")
    if tp:
        names = [k for k in ("nginx", "registry", "peerd_local", "peerd_peer") if k in tp]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        w = 0.38
        for j, s in enumerate(("1", S)):
            vals = [g(tp, k, s, "gb_s") or 0 for k in names]
            bars = ax.bar([i + (j - 0.5) * w for i in range(len(names))], vals, w,
                          label=f"{s} stream{'s' if s != '1' else ''}")
            for k, b, v in zip(names, bars, vals):
                ref = g(tp, nginx_ref(tp, k), s, "gb_s")
                if ref:
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}\n{v / ref:.2f}×", ha="center", va="bottom",
                            fontsize=8)
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
        ax.set_ylabel("GB/s (higher is better)")
        ax.set_title(f"Whole-blob GET, {human(res['config']['big'])} blob (label: GB/s, ratio to nginx)")
        ax.legend()
        ax.margins(y=0.25)
        save(fig, "throughput")
    lat = res.get("latency")
    if lat:
        kinds = [k for k in ("manifest_head", "manifest_get", "blob_4k_get", "manifest_get_by_tag") if k in lat]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        w = 0.2
        for j, (tgt, p) in enumerate((("registry", "p50_ms"), ("registry", "p99_ms"), ("peerd", "p50_ms"),
                                      ("peerd", "p99_ms"))):
            vals = [lat[k][tgt][p] for k in kinds]
            ax.bar([i + (j - 1.5) * w for i in range(len(kinds))], vals, w, label=f"{tgt} {p[:3]}",
                   color=["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"][j])
        ax.set_xticks(range(len(kinds)), [k.replace("_", " ") for k in kinds])
        ax.set_ylabel("ms (lower is better)")
        ax.set_title("Request latency: peerd (local hit) vs docker-registry")
        ax.legend(fontsize=8)
        save(fig, "latency")
    dht = res.get("dht")
    if dht and dht.get("provide_to_resolvable_s"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ts = sorted(dht["provide_to_resolvable_s"])
        ax1.step(ts, [(i + 1) / len(ts) for i in range(len(ts))], where="post")
        ax1.set_xlabel("seconds after the import into node 0's containerd")
        ax1.set_ylabel("fraction of the other nodes")
        ax1.set_title(f"Provide → resolvable ({dht['nodes']} nodes)")
        ax1.grid(alpha=0.3)
        for key, label in (("lookup_found", "provided key"), ("lookup_unknown_key", "unknown key")):
            xs = g(dht, key, "samples_ms")
            if xs:
                ax2.hist(xs, bins=30, alpha=0.6, label=label)
        ax2.set_xlabel("/debug/resolve lookup time, ms")
        ax2.set_ylabel("lookups")
        ax2.set_title("DHT lookup times")
        ax2.legend()
        save(fig, "dht")
    bl = res.get("blobs")
    if bl:
        fig, ax = plt.subplots(figsize=(7, 4))
        for k, label in (("nginx_direct", "nginx direct"), ("a_local_hit", "peerd local cache"),
                         ("b_from_peer", "peerd from a peer")):
            xs = sorted(g(bl, k, "samples_ms") or [])
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("request latency, ms (log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title("/blobs random 4 KiB–1 MiB reads")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        save(fig, "blobs")
    cl = res.get("cluster")
    if cl and cl.get("cases"):
        fig, ax = plt.subplots(figsize=(8, 4.2))
        labels = {"a": "(a) no peerd", "b": "(b) first, then rest", "c": "(c) all at once",
                  "c4": "(c4) all at once,\nrates ÷ 4"}
        ks = [k for k in ("a", "b", "c", "c4") if k in cl["cases"]]
        for i, k in enumerate(ks):
            r = cl["cases"][k]
            xs = r["per_node_s"]
            ax.scatter([i] * len(xs), xs, alpha=0.7, zorder=3)
            ax.bar(i, r["total_s"], 0.5, alpha=0.25, color="grey")
            ax.text(i, r["total_s"], f"total {r['total_s']:.1f} s\negress {r['registry_egress_images']:.1f}× F",
                    ha="center", va="bottom", fontsize=8)
            if k == "c4":  # its own bound (rates ÷ 4)
                ax.hlines(r["bound_s"], i - 0.35, i + 0.35, color="green", ls="--")
        ax.axhline(cl["bound_s"], color="green", ls="--", label=f"max(F/u, F/B) = {cl['bound_s']:.1f} s")
        ax.axhline(cl["no_p2p_bound_s"], color="red", ls=":", label=f"N·F/u = {cl['no_p2p_bound_s']:.1f} s")
        ax.set_xticks(range(len(ks)), [labels[k] for k in ks])
        ax.set_ylabel("seconds (dots: per-node pull time; bar: total)")
        ax.set_title(f"{cl['nodes']} nodes pull {cl['image_bytes'] / MiB:.0f} MiB; nodes 1 Gbit/s, registry 200 Mbit/s")
        top = max([cl["no_p2p_bound_s"]] + [cl["cases"][k]["total_s"] for k in ks])
        ax.set_ylim(0, top * 1.35)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
        save(fig, "cluster")
    return made
