"""Arguments, checks of the machine, the run, and the output (JSON, markdown, plots)."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .bench import Bench, SECTIONS
from .checks import numbers_ok
from .common import ROOT, RUN_PY, TOOLS, VENV, log
from .plots import make_plots
from .procs import CLEAN
from .report import write_markdown
from .targets import targets

DOC = """peerd benchmarks: `make bench` (full run, writes docs/benchmarks.{md,json} and
docs/benchmarks/*.png) and `python3 bench/run.py --smoke` (tiny sizes, about a minute, used by
`make test`: asserts only that every measurement produced a number; writes to a temp dir).

Everything runs on this machine: peerd, docker-registry, nginx and containerd processes on
loopback addresses (127.0.0.x, 127.0.1.x), and for the cluster pull, network namespaces named
`pdb-*` joined by a bridge, shaped with `tc tbf`. Needs root. Every process this script starts is
stopped by its PID, and the namespaces are deleted by name, on exit, on error and on SIGINT/SIGTERM.

Sections (see docs/benchmarks.md for what each measures; the code is bench/peerd_bench/):
  throughput  1 GiB blob, 1 and 16 streams: nginx (sendfile), docker-registry, peerd local, with
              CPU-s/GiB per role and sha256 alone; resources: idle RSS, peak RSS while serving
  latency     manifest HEAD/GET and a 4 KiB blob: peerd (local hit) vs the registry
  peer        the 1 GiB blob from a peer (nginx in the same rounds); 4 KiB and a manifest from a peer
  blobs       /blobs random 4 KiB-1 MiB reads over a 1 GiB file: nginx, local cache, from a peer
  miss_dht    a blob nobody holds, through peerd in 8- and 32-node DHTs, vs the registry; 64 peerd
              processes: provide -> resolvable everywhere, lookup times, RSS per node
  cluster     8 namespaces, tc tbf (nodes 1 Gbit/s, registry 200 Mbit/s): pulls (a) (b) (c) (c4)
"""


def ensure_matplotlib():
    """matplotlib lives in a venv; re-exec bench/run.py under it when it is missing."""
    try:
        import matplotlib  # noqa: F401

        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python3")
    if os.environ.get("PEERD_BENCH_REEXEC"):
        sys.exit("bench: matplotlib still missing after re-exec under " + py)
    if not os.path.exists(py) or subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode:
        log(f"installing matplotlib into {VENV}")
        os.makedirs(TOOLS, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True, timeout=600)
    os.environ["PEERD_BENCH_REEXEC"] = "1"
    os.execv(py, [py, RUN_PY] + sys.argv[1:])


def strip_samples(x):
    if isinstance(x, dict):
        return {k: strip_samples(v) for k, v in x.items() if k != "samples_ms"}
    if isinstance(x, list):
        return [strip_samples(v) for v in x]
    return x


def write_outputs(res, out):
    """The plots, benchmarks.json (targets included, samples left out) and benchmarks.md."""
    res["targets"] = targets(res)
    plots = make_plots(res, os.path.join(out, "benchmarks"))
    with open(os.path.join(out, "benchmarks.json"), "w") as f:
        json.dump(strip_samples(res), f, indent=1)
    write_markdown(res, os.path.join(out, "benchmarks.md"), plots)
    return plots


def parse_args():
    ap = argparse.ArgumentParser(prog="bench/run.py", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; check that every measurement is a number")
    ap.add_argument("--binary", help="peerd binary (default: target/release/peerd; --smoke: target/debug/peerd "
                                     "if present)")
    ap.add_argument("--out", help="output dir (default: docs/ for a full run, a temp dir for --smoke)")
    ap.add_argument("--only", nargs="*", choices=SECTIONS, metavar="SECTION",
                    help="sections: " + " ".join(SECTIONS))
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--render", metavar="RESULTS_JSON", help="only re-render md and plots from a raw results file")
    return ap.parse_args()


def main():
    args = parse_args()
    if args.render:
        ensure_matplotlib()
        with open(args.render) as f:
            res = json.load(f)
        write_outputs(res, args.out or os.path.join(ROOT, "docs"))
        return
    if os.geteuid() != 0:
        sys.exit("bench: needs root (containerd, network namespaces)")
    if not args.binary:
        rel, dbg = os.path.join(ROOT, "target/release/peerd"), os.path.join(ROOT, "target/debug/peerd")
        args.binary = dbg if args.smoke and os.path.exists(dbg) else rel
    if not os.path.exists(args.binary):
        sys.exit(f"bench: {args.binary} missing (make release)")
    for t in ("docker-registry", "skopeo", "containerd", "ctr", "nginx", "curl", "ip", "tc"):
        if not shutil.which(t):
            sys.exit(f"bench: {t} not found (scripts/install-test-deps.sh)")
    ensure_matplotlib()

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    bench = Bench(args)
    t0 = time.time()
    try:
        bench.run()
    finally:
        CLEAN.all()
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)
        else:
            log(f"work dir kept: {bench.work}")
    res = bench.res
    out = args.out or (tempfile.mkdtemp(prefix="pdb-smoke-out-") if args.smoke else os.path.join(ROOT, "docs"))
    os.makedirs(out, exist_ok=True)
    raw = os.path.join(tempfile.gettempdir(), f"pdb-results-{res['mode']}.json")
    with open(raw, "w") as f:
        json.dump(res, f)  # with samples: `--render` re-draws from it
    plots = write_outputs(res, out)
    log(f"raw results with samples: {raw}")
    log(f"wrote {out}/benchmarks.md, benchmarks.json, {len(plots)} plots; {time.time() - t0:.0f} s")
    missing = numbers_ok(res, bench.cfg, args.only)
    if res["errors"] or (args.smoke and missing):
        log(f"errors: {res['errors']}; missing numbers: {missing}; report: {out}/benchmarks.md")
        sys.exit(1)
    if missing:
        log(f"missing numbers: {missing}")
    if args.smoke:
        log("smoke: OK (every measurement produced a number)")
        if not args.out and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
