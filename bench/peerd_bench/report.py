"""docs/benchmarks.md: one function per section of the page, each reading the results dict."""

import json
import statistics

from .common import GiB, MiB, NODE_BPS, REG_BPS, f2, g, human, pct
from .targets import cpu_per_gib, ratio_to_nginx, relay_costs, role_cpu_per_gib, targets


def analysis(res):
    """What bounds the peerd paths, from this run's CPU numbers and profiles (the arithmetic that
    issue 12 asks for where a target is missed)."""
    tp = res.get("throughput", {})
    S = str(res["config"]["streams"])
    n = res["machine"]["nproc"]

    def per_gib(k, procs):
        return cpu_per_gib(tp, k, S, procs)

    ng = per_gib("nginx", ["nginx"])
    loc = per_gib("peerd_local", ["peerd_a", "containerd_a"])
    loc_p = per_gib("peerd_local", ["peerd_a"])
    loc_c = per_gib("peerd_local", ["containerd_a"])
    peer = per_gib("peerd_peer", ["peerd_b", "peerd_a", "containerd_a"])
    peer_b = per_gib("peerd_peer", ["peerd_b"])
    if None in (ng, loc, peer, loc_p, loc_c, peer_b) or not loc or not peer:
        return ""
    comp = res.get("components", {})
    sha, sha_cpu = comp.get("sha256_python_openssl_gb_s"), comp.get("sha256_cpu_s_per_gib")
    cap = lambda c: n / c * GiB / 1e9  # noqa: E731  GB/s if every CPU did nothing else

    def sha_share(key):
        for line in g(res, key, "top", default=[]) or []:
            if "digest_blocks" in line:
                return line.split("%")[0].strip() + " %"
        return None

    out = [
        "**What bounds the peerd paths: CPU.** Per GiB served with "
        f"{S} streams, nginx used {ng:.2f} CPU-seconds. The local path used {loc:.2f}: peerd {loc_p:.2f} "
        f"and containerd {loc_c:.2f}. The peer path used {peer:.2f}: B {peer_b:.2f}, plus A and A's "
        f"containerd doing the local path's work again. With {n} CPUs and nothing else running, that caps "
        f"the local path at about {cap(loc):.2f} GB/s and the peer path at about {cap(peer):.2f} GB/s "
        "(the client, on the same CPUs, takes the rest).\n"]
    if loc_c >= 0.25 * loc:
        out.append(f"- **containerd** is {loc_c / loc:.0%} of the local path's CPU: its gRPC `ReadContent` (Go "
                   "copies and GC, protobuf framing); one `ctr content get` of the same blob manages "
                   f"{f2(comp.get('ctr_content_get_gb_s'))} GB/s.")
    else:
        out.append(f"- **containerd** is only {loc_c / loc:.0%} of the local path's CPU: peerd reads containerd's "
                   "content files itself and sends what the page cache holds with `sendfile` (no copy through "
                   "peerd, `peerd_direct_sent_bytes_total{how=\"sendfile\"}`), so containerd's gRPC read (Go copies "
                   "and GC) is out of the path (one `ctr content get` of the same blob, for comparison: "
                   f"{f2(comp.get('ctr_content_get_gb_s'))} GB/s).")
    shares = [f"{v} of the {k} path's samples" for k, v in (("local", sha_share("profile_local")),
                                                           ("peer", sha_share("profile_peer"))) if v]
    if sha:
        n1 = g(tp, "nginx", "1", "gb_s") or 0
        bound = (f"so one verified stream cannot reach 0.8× nginx's single stream ({0.8 * n1:.2f} GB/s)"
                 if sha < 0.8 * n1 else "which alone would not prevent 0.8× nginx on a single stream")
        out.append(f"- **sha256** runs at {f2(sha)} GB/s per core here (OpenSSL, {f2(sha_cpu)} CPU-s/GiB), "
                   f"{bound}; a receiving node that hashes each byte once needs at least that much CPU per GiB"
                   + (f". In the profiles, `digest_blocks` is {' and '.join(shares)}." if shares else "."))
    costs = relay_costs(res, S)
    if costs:
        c_sha, c_send, c_recv = costs
        floor = c_sha + c_send + c_recv
        b1 = cpu_per_gib(tp, "peerd_peer", "1", ["peerd_b"])
        out.append(f"- **The receiving node** receives, hashes and sends every byte. In this run receiving costs "
                   f"the client {c_recv:.2f} CPU-s/GiB, sha256 alone {c_sha:.2f} and sending nginx {c_send:.2f} "
                   f"(sendfile, with loopback's TCP work for the receiver), so B cannot spend less than "
                   f"{floor:.2f}; it spent {peer_b:.2f} with {S} streams"
                   + (f" and {b1:.2f} with one" if b1 else "")
                   + ". B writes each piece to the socket itself (no copy into actix-web's write buffer, "
                   "`peerd_direct_sent_bytes_total{how=\"write\"}`); what is above the floor is the piece "
                   "splitting's copy of a received buffer beyond 256 KiB, and the hand-offs between B's tasks.")
        if b1:
            out.append(f"- **One stream through a peer**: B spent {b1:.2f} CPU-s/GiB, which on one thread alone "
                       f"would be about {1 / b1 * GiB / 1e9:.2f} GB/s. Its work need not share one thread: hyper "
                       "reads the peer's socket in the connection's task, which runs on the worker that opened "
                       "the connection, while the response's task hashes and sends; so one stream is bounded by "
                       "the CPUs A, B and the client share (the targets' bound), not by one core. sha256 "
                       "itself is at the hardware's speed: `sha2` (SHA-NI), ring and aws-lc-rs all hash "
                       "1.80-1.82 GB/s on one core here (measured side by side, 256 MiB in 256 KiB updates). "
                       "Hashing in a blocking task beside the I/O (512 KiB "
                       "batches, REFERENCE §6's advice) was measured side by side: no faster here, where A, B and "
                       "the client already keep both CPUs busy, and 0.2-0.3 CPU-s/GiB more for B (hand-offs, "
                       "cache misses on the other core), so the hash stays on the socket's thread.")
    return "\n".join(out) + "\n"


def write_markdown(res, path, plots):
    m = res["machine"]
    L = []
    a = L.append
    a("# peerd benchmarks\n")
    a(f"Generated by `make bench` (`python3 bench/run.py`) on {m['date']}. Raw numbers: "
      "[benchmarks.json](benchmarks.json). Plots: [docs/benchmarks/](benchmarks/).\n")
    a("The machine is small and shared (noisy neighbours), so absolute numbers move between runs; "
      "compare the **ratios within one run**, which are what the targets are stated in.\n")
    a("## Machine\n")
    a("| | |\n| --- | --- |")
    a(f"| CPUs (`nproc`) | {m['nproc']} |")
    a(f"| CPU model | {m['cpu_model']} (SHA-NI: {'yes' if m['sha_ni'] else 'no'}) |")
    a(f"| kernel | {m['kernel']} |")
    a(f"| memory | {m['mem_gib']} GiB |")
    a(f"| peerd commit | `{m['peerd_commit'][:12]}`{' (with uncommitted changes)' if m['worktree_dirty'] else ''} |")
    a(f"| peerd binary | `{m['binary']}` ({m['peerd_version']}, built {m['binary_mtime']}) |")
    for t, v in m["tools"].items():
        a(f"| {t} | {v} |")
    a("")
    a("## How to reproduce\n")
    a("```sh\nmake release   # target/release/peerd\nmake bench     # about 15 minutes; needs root "
      "(containerd, network namespaces)\n```\n")
    a("`make bench BENCH_ARGS='--only throughput'` runs one section (`throughput`, `latency`, `peer`, `blobs`, "
      "`miss_dht`, `cluster`; the first five share one set-up). `python3 bench/run.py --smoke` (part of "
      "`make test`) runs everything with tiny sizes in about a minute and only checks that each "
      "measurement produced a number. All traffic stays on loopback addresses or in network namespaces "
      "named `pdb-*` that the script creates and deletes. The code is the package `bench/peerd_bench/` "
      "(one module per component and per case family; its `__init__.py` lists them); `bench/run.py` only "
      "starts it. An A/B run of one setting: `PEERD_BENCH_SET=SWARM__CUT_THROUGH=false` sets "
      "`PEERD_SWARM__CUT_THROUGH` for every peerd the benchmark starts, and `PEERD_BENCH_CASES=c,c4` "
      "limits the cluster section to those cases (with `--out` elsewhere, so docs/ keeps the full run).\n")
    _targets(res, a)
    for section in (_throughput, _latency, _resources, _dht, _blobs, _cluster):
        section(res, a, plots)
    if res.get("errors"):
        a("## Sections that failed in this run\n")
        for k, v in res["errors"].items():
            a(f"- `{k}`: {v}")
        a("")
    a("## Run time\n")
    a("| section | seconds |\n| --- | ---: |")
    for k, v in res.get("timings_s", {}).items():
        a(f"| {k} | {v} |")
    a("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def _targets(res, a):
    """## Targets: issue 12's table, this run's values."""
    rows = targets(res)
    a("## Targets\n")
    a("The data-plane targets (issue 12), each a ratio or bound within this run. `—` where this run did not "
      "measure it (a section left out with `--only`, or failed).\n")
    a("| measure | now | target | met? |")
    a("| --- | --- | --- | --- |")
    for r in rows:
        met = "—" if r["met"] is None else ("**yes**" if r["met"] else "no")
        a(f"| {r['measure']} | {r['now'] or '—'} | {r['target']} | {met} |")
    a("")


def _throughput(res, a, plots):
    """## 1. Blob throughput"""
    c = res["config"]
    S = str(c["streams"])
    tp = res.get("throughput", {})
    if not tp:
        return
    a("## 1. Blob throughput\n")
    a(f"One blob of {human(c['big'])} (an uncompressed tar layer, random bytes), fetched whole with "
      f"`GET`. **1 stream**: median of {c['reps1']} runs. **{S} streams**: {S} concurrent whole-blob GETs "
      f"({human(int(S) * c['big'])} per run, median of {c['repsN']} runs); GB/s = all bytes / wall "
      "time. The client is a Python raw-socket reader (`recv_into` a 1 MiB buffer) on the same 2 CPUs.\n")
    a("- **nginx**: the blob file, `sendfile on`, `worker_processes auto`.")
    a("- **registry**: docker-registry (distribution 2.8, filesystem storage) directly.")
    a("- **peerd local**: peerd A serving the blob from its containerd (the image was imported into "
      "containerd; peerd's start-up log says whether it reads containerd's content files or its gRPC "
      "content API).")
    a("- **peerd peer**: client → peerd B → peerd A (registry stopped; B's containerd is empty; B checks "
      "the digest end to end). B's metrics confirm every byte came from the peer.")
    a("- A and B run with the default configuration except `p2p.resolve_timeout = 500ms` (a lookup in a "
      "two-node DHT ends in about a millisecond, so it only matters on failure) and the `/blobs` allow-list. "
      "Only B bootstraps (from A): peerd takes a peer's mirror IP from the p2p connection's remote address, "
      "and on one loopback interface a connection A dials comes from 127.0.0.1, not 127.0.0.2, so B would "
      "learn A as 127.0.0.1:PORT, where nothing listens.\n")
    a(f"| source | 1 stream GB/s | ratio to nginx | {S} streams GB/s | ratio to nginx "
      f"| CPU-s/GiB, serving node (1 / {S} streams) | CPU-s/GiB, receiving node (1 / {S} streams) |")
    a("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, label in (("nginx", "nginx (sendfile)"), ("registry", "docker-registry"),
                     ("peerd_local", "peerd, local store"), ("nginx_peer_phase", "nginx, in the peer rounds"),
                     ("peerd_peer", "peerd, from a peer")):
        c1, cN = role_cpu_per_gib(tp, k, "1"), role_cpu_per_gib(tp, k, S)
        cpu = {role: "—" if c1[role] is None and cN[role] is None else f"{f2(c1[role])} / {f2(cN[role])}"
               for role in c1}
        a(f"| {label} | {f2(g(tp, k, '1', 'gb_s'))} | {f2(ratio_to_nginx(tp, k, '1'))} | {f2(g(tp, k, S, 'gb_s'))} | "
          f"{f2(ratio_to_nginx(tp, k, S))} | {cpu.get('serving', '—')} | {cpu.get('receiving', '—')} |")
    a("")
    sha = g(res, "components", "sha256_cpu_s_per_gib")
    a("CPU-seconds per GiB moved, from `/proc/PID/stat` (utime + stime) over the last run of each stream count: "
      "the serving node is the process(es) holding the bytes (nginx; docker-registry; peerd A + containerd A), "
      "the receiving node is peerd B on the peer path. For comparison, sha256 alone (Python hashlib, "
      f"OpenSSL, one core, the bytes already in memory) costs {f2(sha)} CPU-s/GiB in this run.\n")
    a("Each round runs every source once in turn (nginx, registry, peerd local; later nginx, peerd peer), "
      "so a slow phase of the machine hits all of them; the peer path is compared with the nginx runs of "
      "its own rounds. Individual runs are in benchmarks.json (`runs_gb_s`).\n")
    a("Targets: see [Targets](#targets) above.\n")
    comp = res.get("components", {})
    if comp:
        a("### Where the time goes\n")
        a("| component | GB/s | CPU-s per GiB |\n| --- | ---: | ---: |")
        a(f"| `ctr content get` of the blob to /dev/null (containerd's gRPC read path, one client) | "
          f"{f2(comp.get('ctr_content_get_gb_s'))} | — |")
        a(f"| sha256 of the blob, Python hashlib (OpenSSL); CPU: the hashing alone | "
          f"{f2(comp.get('sha256_python_openssl_gb_s'))} | {f2(comp.get('sha256_cpu_s_per_gib'))} |")
        a(f"| `sha256sum` of the blob | {f2(comp.get('sha256sum_gb_s'))} | {f2(comp.get('sha256sum_cpu_s_per_gib'))} |")
        a("")
        for key, title in (("profile_local", "peerd local (peerd A + containerd A)"),
                           ("profile_peer", "peerd peer (peerd B + peerd A)")):
            pr = res.get(key)
            if pr and "top" in pr:
                cpu = ", ".join(f"pid {p}: {s:.2f} s" for p, s in pr["cpu_s"].items())
                a(f"`perf record -e cpu-clock -g` during one 1-stream transfer, {title}: "
                  f"{pr['gb_s_while_profiled']:.2f} GB/s while profiled, CPU-seconds {cpu} over "
                  f"{pr['wall_s']:.2f} s wall. Top entries (comm, dso, symbol, ≥ 1.5 %):\n")
                a("```")
                a("\n".join(pr["top"][:20]))
                a("```\n")
    a(analysis(res))
    if "throughput" in plots:
        a(f"![throughput]({plots['throughput']})\n")


def _latency(res, a, plots):
    """## 2. Latency"""
    c = res["config"]
    lat = res.get("latency", {})
    if not lat:
        return
    a("## 2. Latency\n")
    a(f"{c['lat_n']} requests per row, one keep-alive connection per target, the two targets interleaved "
      "request by request (so both see the same noise), after 20 warm-up requests. Time is from sending the "
      "request to the last body byte, in the client. **peerd** is node A with the image in its containerd "
      "(a mirror hit); requests by digest are served from the local store, the one by tag is forwarded "
      "to the registry because tags move.\n")
    a("| request | registry p50 ms | registry p99 ms | peerd p50 ms | peerd p99 ms | p50 ratio |")
    a("| --- | ---: | ---: | ---: | ---: | ---: |")
    for k, label in (("manifest_head", "manifest HEAD by digest"), ("manifest_get", "manifest GET by digest"),
                     ("blob_4k_get", "4 KiB blob GET"), ("manifest_get_by_tag", "manifest GET by tag (upstream)")):
        r = lat.get(k)
        if r:
            a(f"| {label} | {f2(r['registry']['p50_ms'], 3)} | {f2(r['registry']['p99_ms'], 3)} | "
              f"{f2(r['peerd']['p50_ms'], 3)} | {f2(r['peerd']['p99_ms'], 3)} | "
              f"{f2(r['peerd']['p50_ms'] / r['registry']['p50_ms'])} |")
    a("")
    pl = lat.get("peer")
    if pl:
        a("From a peer (client → B → A, registry stopped): "
          f"4 KiB blob p50 {f2(pl['blob_4k_from_peer']['p50_ms'], 2)} ms, p99 "
          f"{f2(pl['blob_4k_from_peer']['p99_ms'], 2)} ms; manifest by digest p50 "
          f"{f2(pl['manifest_from_peer']['p50_ms'], 2)} ms, p99 {f2(pl['manifest_from_peer']['p99_ms'], 2)} ms "
          f"({pl['blob_4k_from_peer']['n']} requests each). B resolves the digest in the DHT on every request "
          "(it keeps nothing).\n")
    miss = res.get("miss", {})
    if miss:
        a("### A miss falls back upstream\n")
        a("A 2 KiB-payload blob that is in the registry but on no node, fetched through node 0 of an N-node DHT "
          "(127.0.1.x, none of the nodes has it; `p2p.resolve_timeout` = 50 ms, the default), interleaved "
          "with the same GET straight to the registry. Every request is a miss: peerd keeps nothing itself.\n")
        a("| DHT nodes | registry p50 ms | peerd miss p50 ms | peerd miss p99 ms | fallback cost p50 ms | requests |")
        a("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in sorted(miss, key=int):
            r = miss[n]
            a(f"| {n} | {f2(r['registry']['p50_ms'], 3)} | {f2(r['peerd_miss']['p50_ms'])} | "
              f"{f2(r['peerd_miss']['p99_ms'])} | {f2(r['fallback_overhead_p50_ms'])} | {r['peerd_miss']['n']} |")
        a("")
    if "latency" in plots:
        a(f"![latency]({plots['latency']})\n")


def _resources(res, a, plots):
    """## 3. Memory and CPU"""
    S = str(res["config"]["streams"])
    tp = res.get("throughput", {})
    if not tp:
        return
    a("## 3. Memory and CPU\n")
    idle = res.get("resources_idle", {})
    a(f"Idle RSS after start-up and advertisement: peerd A {f2(idle.get('peerd_a_rss_mib'), 1)} MiB, "
      f"peerd B {f2(idle.get('peerd_b_rss_mib'), 1)} MiB (nginx {f2(idle.get('nginx_rss_mib'), 1)} MiB, "
      f"docker-registry {f2(idle.get('registry_rss_mib'), 1)} MiB, containerd "
      f"{f2(idle.get('containerd_rss_mib'), 1)} MiB).\n")
    a(f"While serving {S} concurrent whole-blob streams (last run; VmHWM reset through "
      "`/proc/PID/clear_refs` just before; CPU from `/proc/PID/stat` utime+stime):\n")
    a("| source | process | peak RSS MiB | CPU-s | CPU-s per GiB served |")
    a("| --- | --- | ---: | ---: | ---: |")
    for k in ("nginx", "registry", "peerd_local", "peerd_peer"):
        r = g(tp, k, S)
        if not r or "resources" not in r:
            continue
        gib = r["resources_gib"]
        for proc, v in r["resources"].items():
            a(f"| {k.replace('_', ' ')} | {proc.replace('_', ' ')} | {f2(v['peak_rss_mib'], 1)} | "
              f"{f2(v['cpu_s'])} | {f2(v['cpu_s'] / gib, 3)} |")
    a("")


def _dht(res, a, plots):
    """## 4. DHT scale"""
    dht = res.get("dht")
    if not dht:
        return
    a("## 4. DHT scale\n")
    a(f"{dht['nodes']} peerd processes on 127.0.1.1–127.0.1.{dht['nodes']} (same ports, p2p on, one HTTP worker "
      f"each, bootstrapping from the first three; started and ready in {f2(dht['cluster_start_s'], 1)} s). "
      "Node 0 has a containerd; the others point at a socket that does not exist. **Provide**: a fresh "
      "image (random 2 KiB-payload layer) is imported into node 0's containerd; peerd's advertiser gets "
      "the image event and publishes its keys; the clock starts when `ctr images import` starts (the import "
      f"itself took {f2(dht.get('import_s'), 2)} s). This is the simplest way to make one node provide a key "
      "whose string is known in advance (a `/blobs` chunk key embeds an internal file id). Then every "
      "other node polls `/debug/resolve?key=<layer digest>` until node 0 is listed.\n")
    ts = dht.get("provide_to_resolvable_s") or []
    a("| | value |\n| --- | ---: |")
    a(f"| nodes resolving node 0 | {dht.get('resolvable_nodes')} |")
    if ts:
        a(f"| provide → resolvable, p50 over nodes | {pct(ts, 50):.2f} s |")
        a(f"| provide → resolvable from every node | {f2(dht.get('resolvable_everywhere_s'))} s |")
    lf, lu = dht.get("lookup_found"), dht.get("lookup_unknown_key")
    if lf:
        a(f"| lookup of the provided key (`/debug/resolve` seconds), p50 / p99 | {lf['p50_ms']:.1f} / "
          f"{lf['p99_ms']:.1f} ms ({lf['n']} lookups) |")
    if lu:
        a(f"| lookup of a key nobody has, p50 / p99 | {lu['p50_ms']:.1f} / {lu['p99_ms']:.1f} ms |")
    if dht.get("rss_mib_mean"):
        a(f"| RSS per node, idle mean | {statistics.mean(dht['idle_rss_mib']):.1f} MiB |")
        a(f"| RSS per node after the test, mean / max | {dht['rss_mib_mean']:.1f} / {dht['rss_mib_max']:.1f} MiB |")
    rt = [x for x in dht.get("routing_table_peers") or [] if isinstance(x, int)]
    if rt:
        a(f"| routing-table peers per node, min / median | {min(rt)} / {statistics.median(rt):.0f} |")
    a("")
    a("Polling resolution: 16 pollers, 50 ms between polls of one node, so times include up to a poll "
      "interval plus queueing among 63 nodes.\n")
    if "dht" in plots:
        a(f"![dht]({plots['dht']})\n")


def _blobs(res, a, plots):
    """## 5. /blobs random reads"""
    c = res["config"]
    bl = res.get("blobs")
    if not bl:
        return
    a("## 5. /blobs random reads\n")
    a(f"{c['blobs_reads']} sequential random range reads, length uniform in 4 KiB–1 MiB, offset uniform, over "
      f"a {human(c['big'])} file served by nginx (the overlaybd access pattern); one keep-alive "
      "connection. MB/s = bytes / summed request time. Chunk size 1 MiB (the default).\n")
    a("- **nginx direct**: the same reads straight from nginx (baseline).")
    a(f"- **local cache**: node A after reading the file once through `/blobs` (cold full read: "
      f"{f2(bl.get('a_cold_full_read_gb_s'))} GB/s, upstream nginx) and its background prefetch; every chunk is "
      "on A's disk. peerd still sends a HEAD upstream per request (`blobs.revalidate_after = 0s`, the default).")
    a("- **from a peer**: node B (prefetch off) learned the file with a 1-byte read, then nginx stopped; "
      "other offsets. Chunks come from A; B caches what it fetched, so repeats within the run hit B's cache "
      f"(chunk bytes on B during the run: {json.dumps({k: int(v) for k, v in bl['b_from_peer'].get('chunk_bytes', {}).items()})}).\n")
    a("| source | p50 ms | p50 ratio to nginx | p90 ms | p99 ms | p99 ratio to nginx | MB/s |")
    a("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    ng = bl.get("nginx_direct") or {}
    for k, label in (("nginx_direct", "nginx direct"), ("a_local_hit", "peerd, local cache"),
                     ("b_from_peer", "peerd, from a peer (upstream stopped)")):
        r = bl.get(k)
        if r:
            r50 = r["p50_ms"] / ng["p50_ms"] if ng.get("p50_ms") else None
            r99 = r["p99_ms"] / ng["p99_ms"] if ng.get("p99_ms") else None
            a(f"| {label} | {f2(r['p50_ms'])} | {f2(r50)} | {f2(r.get('p90_ms'))} | {f2(r['p99_ms'])} | {f2(r99)} "
              f"| {f2(r['mb_s'], 0)} |")
    a("")
    a("nginx's p99 of about 40 ms is Nagle's algorithm meeting the client's delayed ACK: loopback's MTU is "
      "64 KiB, so a response of 64–128 KiB is two segments, the second held until the first is acknowledged, "
      "and the client acknowledges after 40 ms (in a separate check, 18 of 300 random reads stalled 40–43 ms, "
      "all 60–120 KB long). peerd sets TCP_NODELAY on its listeners, so its bodies, which go out as streamed "
      "pieces, do not wait (before that its p99 was the same 40 ms). On a 1500-byte MTU such a response is "
      "dozens of segments and the stall is rare.\n")
    if "blobs" in plots:
        a(f"![blobs]({plots['blobs']})\n")


def _cluster(res, a, plots):
    """## 6. Cluster pull"""
    cl = res.get("cluster")
    if not cl:
        return
    F = cl["image_bytes"]
    a("## 6. Cluster pull (network namespaces, tc tbf)\n")
    a(f"{cl['nodes']} node namespaces and a registry namespace on one bridge (in its own namespace). Each node "
      f"has its own containerd and (cases b, c) its own peerd. Shaping with `tc tbf` on both ends of every "
      f"veth: nodes {cl['node_rate']}/s each way, registry {cl['registry_rate']}/s each way. The image: "
      f"{cl['layers']} uncompressed random layers, {F / MiB:.0f} MiB in all (F). `ctr image pull` (with "
      "unpack) in each node's namespace; the time per node is the pull's wall time. Registry egress is the "
      "registry veth's tx bytes.\n")
    a(f"Lower bound (Kumar & Ross): max(F/u, F/B) = max({F / REG_BPS:.1f} s, {F / NODE_BPS:.1f} s) = "
      f"**{cl['bound_s']:.1f} s**, whatever N; without p2p the registry alone needs N·F/u = "
      f"{cl['no_p2p_bound_s']:.1f} s.\n")
    a("| case | node completion p50 s | slowest s | total s | registry egress (images) | slowest / bound "
      "| total / bound | CPU busy / available (peerd, containerd, ctr) |")
    a("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    labels = {"a": "(a) no peerd, all at once", "b": "(b) one node first, then the rest through peerd",
              "c": "(c) all at once through peerd",
              "c4": "(c4) = (c) with every rate ÷ 4 (bound ×4)"}
    for k in ("a", "b", "c", "c4"):
        r = cl["cases"].get(k)
        if r:
            cpu = (f"{r['cpu_busy_s']:.0f} / {r['cpu_available_s']:.0f} CPU-s ({r['peerd_cpu_s']:.0f}, "
                   f"{r['containerd_cpu_s']:.0f}, {r['ctr_cpu_s']:.0f})") if "cpu_busy_s" in r else ""
            a(f"| {labels[k]} | {r['p50_s']:.1f} | {r['max_s']:.1f} | {r['total_s']:.1f} | "
              f"{r['registry_egress_images']:.2f} | {r.get('max_over_bound', r['max_s'] / cl['bound_s']):.2f} | "
              f"{r['total_over_bound']:.2f} | {cpu} |")
    a("")
    rb = cl["cases"].get("b")
    if rb:
        a(f"Case (b): the first node took {rb['first_node_s']:.1f} s (at the registry's rate), its keys were "
          f"resolvable from every other node {rb['advertise_wait_s']:.2f} s later, then the other "
          f"{cl['nodes'] - 1} pulled together from it (p50 {rb['p50_s']:.1f} s, max {rb['max_s']:.1f} s); "
          "p50/max in the table are over those.")
    for k in ("b", "c", "c4"):
        r = cl["cases"].get(k)
        if r and r.get("served_bytes"):
            sb = r["served_bytes"]
            a(f"Case ({k}) bytes served by all peerds: local {sb['local'] / MiB:.0f} MiB, peer "
              f"{sb['peer'] / MiB:.0f} MiB, upstream {sb['upstream'] / MiB:.0f} MiB, swarm "
              f"{sb.get('swarm', 0) / MiB:.0f} MiB"
              + (" (`local` counts what a node served from its own store, here to the peers that fetched "
                 "from it; the first node's pull was a swarm of one)." if k == "b" else "."))
            sc = r.get("swarm_chunk_bytes")
            if sc and k != "b":
                a(f"Swarm chunks received in ({k}): {sc['upstream'] / MiB:.0f} MiB from the registry, "
                  f"{sc['peer'] / MiB:.0f} MiB from other nodes"
                  + (f"; {r['swarm_takeovers']:.0f} chunks taken over from a peer without progress, "
                     f"{r['swarm_abandoned']:.0f} registry reads given up because a peer had the chunk first."
                     if "swarm_takeovers" in r else "."))
    a("\nCases (c) and (c4) are swarming: every node that wants a layer announces it, the layer's 2 MiB "
      "chunks are split among them by rendezvous hashing, each chunk comes from the registry once (to its "
      "owner) and moves between the nodes while they are all still downloading. Registry egress is the image "
      "once plus the manifests, the small config blob each node fetches directly, and chunks fetched twice "
      "while two nodes' views of who is downloading still differed. The slowest node's time in (c) is set "
      "by this 2-CPU machine, not the network: the CPU column shows it busy almost all the time, mostly "
      "with containerd and ctr (hashing, writing and unpacking 8 copies of the image); peerd's part is "
      "receiving, hashing (each chunk, then the whole blob), spooling and serving. Case (c4) divides every "
      "rate by 4, so the same work fits the CPU, and shows what the design does when the machine keeps up.\n")
    if "cluster" in plots:
        a(f"![cluster]({plots['cluster']})\n")


