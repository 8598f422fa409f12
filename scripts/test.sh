#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what the tests need, then run unit,
# integration and chart checks. Integration tests that cannot run are failures here
# (PEERD_REQUIRE_INTEGRATION=1), never silent skips.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export PEERD_REQUIRE_INTEGRATION=1
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Two test threads: the integration tests start registries, containerds and peerds.
cargo test --all-targets --locked -- --test-threads 2
# `make run` (the README's first command) on the embedded defaults, with the debug build above.
scripts/run-check.sh
# The HTTP API against api/swagger.yaml (offline; built by the cargo test above).
python3 scripts/api-check.py target/debug/peerd
# The container image, built without Docker from the debug binary above and run under a private
# containerd (registry push, ctr pull, /healthz and /readyz as uid 65532 and as root).
scripts/build-image.sh --binary target/debug/peerd --smoke
# The Helm chart: lint, render, schema validation and assertions (offline once tools are cached).
scripts/chart-check.sh
# Benchmarks with tiny sizes (about a minute): every measurement must produce a number. Uses the
# debug binary built above; `make bench` runs the full sizes and writes docs/benchmarks.md.
# First the unit tests of the bench's pure parts (targets table, number check, HTTP client).
python3 -m unittest discover -s bench
python3 bench/run.py --smoke
# The scale simulator in quick mode (debug build, well under a minute): it exits non-zero when an
# invariant breaks (a node completing without every byte exactly once); the report script checks
# that every run produced sane numbers. `make sim` runs the full sizes and writes docs/scale.md.
cargo run --locked --bin peerd-sim -- --quick --out target/sim-quick.json
/usr/bin/python3 scripts/sim-report.py target/sim-quick.json --check
