#!/usr/bin/env python3
"""peerd benchmarks: `make bench` (full run, writes docs/benchmarks.{md,json} and the plots) and
`python3 bench/run.py --smoke` (tiny sizes, used by `make test`). The code is the package
bench/peerd_bench/ (its __init__.py lists the modules); `--help` lists the sections."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peerd_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
