#!/usr/bin/env bash
# `make run`, the README's first command, on the embedded defaults: it must build, start and
# come up as a single-node mirror (no cluster secret) that answers /healthz and /readyz and says
# so in its log. The test suite runs it on the debug build it already has (RUN_BUILD=), on free
# loopback ports and a temporary data directory; everything else is the embedded default.
# Found broken once: a second binary (peerd-sim) made `cargo run` refuse to pick one.
set -euo pipefail
cd "$(dirname "$0")/.."
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP=$(port)
METRICS=$(port)
WORK=$(mktemp -d)
# Its own process group (make, cargo, peerd), stopped as one by the group's id.
setsid make run RUN_BUILD= ARGS="--http-addr 127.0.0.1:$HTTP --metrics-addr 127.0.0.1:$METRICS --data-dir $WORK/data" \
    >"$WORK/log" 2>&1 &
PID=$!
cleanup() {
    kill -TERM -- "-$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
    echo "make run: $1" >&2
    tail -30 "$WORK/log" >&2
    exit 1
}
ready=""
for _ in $(seq 1 600); do
    kill -0 "$PID" 2>/dev/null || fail "exited before it was ready"
    if curl -fsS "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
[ -n "$ready" ] || fail "not ready within 300 s"
curl -fsS "http://127.0.0.1:$HTTP/healthz" >/dev/null || fail "/healthz failed"
curl -fsS "http://127.0.0.1:$METRICS/metrics/prometheus" | grep -q '^peerd_' || fail "no peerd_ metrics"
grep -qi "single-node" "$WORK/log" || fail "the log does not say it runs as a single-node mirror"
echo "make run: ready on 127.0.0.1:$HTTP as a single-node mirror"
