#!/usr/bin/env bash
# build-image.sh [--binary PATH] [--tag TAG] [--out DIR] [--push HOST:PORT] [--smoke]
#
# Builds peerd's container image without Docker: the same image as the Dockerfile (binary at
# /usr/local/bin/peerd, glibc from the build host, CA certificates, users root and nonroot
# (65532), default user 65532:65532, ENTRYPOINT ["/usr/local/bin/peerd"], CMD ["run"],
# ports 5000 5001 5003 5004), but with the binary and shared libraries taken from this machine.
# Needs umoci, jq, sha256sum and ldd; --push also skopeo; --smoke also skopeo, docker-registry,
# containerd 1.6, runc, ctr and curl, and root (scripts/install-test-deps.sh installs them all).
#
#   --binary PATH   the peerd binary [target/release/peerd; build it with `make release`]
#   --tag TAG       image tag [`git describe --tags --always --dirty`, else the Cargo version]
#   --out DIR       OCI image layout written here [target/image]; an existing layout there is
#                   replaced, anything else there is left alone and the script fails
#   --push H:P      also copy the image to docker://H:P/peerd:TAG (plain HTTP, no TLS check)
#   --smoke         start a private registry and containerd (tests/fixtures), push, pull with
#                   ctr, run the image (as its default user 65532, plus a second peerd exec'd
#                   as root in the same container), wait for /healthz and /readyz on both
#                   listeners of both, print `image smoke: OK`; everything started is stopped.
#
# The binary's shared libraries (from ldd) are copied to the same paths in the image, with the
# dynamic loader. Built on Debian 12 the result matches distroless cc-debian12 (glibc 2.36).
# Inspect the result with: skopeo inspect oci:target/image:TAG
set -euo pipefail

PROG=build-image
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FIXTURES=$REPO/tests/fixtures
NONROOT=65532
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-30}

usage() {
    echo "usage: scripts/build-image.sh [--binary PATH] [--tag TAG] [--out DIR] [--push HOST:PORT] [--smoke]" >&2
    echo "see the comment at the top of scripts/build-image.sh" >&2
    exit 2
}
die() {
    echo "$PROG: error: $*" >&2
    exit 1
}
log() { echo "$PROG: $*" >&2; }
# abspath P: P made absolute against the caller's working directory.
abspath() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

BINARY="" TAG="" OUT="" PUSH="" SMOKE=0
while (($#)); do
    case $1 in
    --binary) [[ $# -ge 2 ]] || usage; BINARY=$(abspath "$2"); shift 2 ;;
    --binary=*) BINARY=$(abspath "${1#*=}"); shift ;;
    --tag) [[ $# -ge 2 ]] || usage; TAG=$2; shift 2 ;;
    --tag=*) TAG=${1#*=}; shift ;;
    --out) [[ $# -ge 2 ]] || usage; OUT=$(abspath "$2"); shift 2 ;;
    --out=*) OUT=$(abspath "${1#*=}"); shift ;;
    --push) [[ $# -ge 2 ]] || usage; PUSH=$2; shift 2 ;;
    --push=*) PUSH=${1#*=}; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h | --help) usage ;;
    *) echo "$PROG: unknown argument: $1" >&2; usage ;;
    esac
done
cd "$REPO"
BINARY=${BINARY:-$REPO/target/release/peerd}
OUT=${OUT:-$REPO/target/image}
OUT=${OUT%/}

if [[ ! -f "$BINARY" ]]; then
    if [[ "$BINARY" == "$REPO/target/release/peerd" ]]; then
        die "no release binary at target/release/peerd: run \`make release\` first, or pass --binary PATH"
    fi
    die "no binary at $BINARY"
fi
[[ -x "$BINARY" ]] || die "$BINARY is not executable"
[[ "$(head -c4 "$BINARY")" == $'\x7fELF' ]] || die "$BINARY is not an ELF executable"

need() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null ||
            die "$t not found (scripts/install-test-deps.sh installs what this script needs)"
    done
}
need umoci jq sha256sum ldd
[[ -z "$PUSH" && $SMOKE -eq 0 ]] || need skopeo
if ((SMOKE)); then
    need ctr containerd runc docker-registry curl
    [[ $(id -u) -eq 0 ]] || die "--smoke needs root (containerd mounts snapshots)"
fi
if [[ -n "$PUSH" && ! "$PUSH" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?$ && ! "$PUSH" =~ ^\[[0-9a-fA-F:]+\](:[0-9]+)?$ ]]; then
    die "--push wants REGISTRY_HOST:PORT, got '$PUSH'"
fi

# ---- metadata ---------------------------------------------------------------------------------
CARGO_VERSION=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
GIT_DESCRIBE=$(git describe --tags --always --dirty 2>/dev/null || true)
REVISION=$(git rev-parse HEAD 2>/dev/null || true)
SOURCE=$(git remote get-url origin 2>/dev/null || true)
VERSION=${GIT_DESCRIBE:-$CARGO_VERSION}
# Timestamps (files, history, config) are the commit's, so the same commit and binary give the
# same image digest.
EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
if [[ -z "$TAG" ]]; then
    TAG=$(printf '%s' "${VERSION:-dev}" | tr -c 'A-Za-z0-9_.-' '-')
    TAG=${TAG#[.-]}
    TAG=${TAG:0:128}
fi
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag '$TAG'"

case $(uname -m) in
x86_64) ARCH=amd64 ;;
aarch64) ARCH=arm64 ;;
*) ARCH=$(uname -m) ;;
esac

T_START=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# ---- rootfs -------------------------------------------------------------------------------------
OUT_PARENT=$(dirname "$OUT")
mkdir -p "$OUT_PARENT"
WORK=$(mktemp -d /tmp/peerd-image.XXXXXX)
STAGE=""
SW="" # smoke work dir
CTR_ID="" EXEC_PID="" NS=peerd-smoke
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$SW" ]]; then smoke_cleanup || true; fi
    [[ -z "$STAGE" ]] || rm -rf "$STAGE"
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "binary $BINARY ($(stat -c %s "$BINARY") bytes), tag $TAG, $ARCH"
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"/{usr/local/bin,etc/ssl/certs,tmp,var/lib/peerd,root,home/nonroot}
install -m 0755 "$BINARY" "$ROOTFS/usr/local/bin/peerd"

# Shared libraries and the loader, at the paths ldd resolves them to. A static binary has none.
LIBS=()
if ldd_out=$(ldd "$BINARY" 2>&1); then
    if grep -q 'not found' <<<"$ldd_out"; then
        die "missing shared libraries for $BINARY:"$'\n'"$ldd_out"
    fi
    while read -r line; do
        case $line in
        *'=> /'*) lib=${line#*=> }; LIBS+=("${lib%% (*}") ;; # libc.so.6 => /lib/.../libc.so.6 (0x..)
        /*) LIBS+=("${line%% (*}") ;;                       # /lib64/ld-linux-x86-64.so.2 (0x..)
        esac                                                # linux-vdso.so.1: in the kernel
    done <<<"$ldd_out"
    ((${#LIBS[@]})) || die "ldd found no libraries for $BINARY:"$'\n'"$ldd_out"
elif ! grep -q 'not a dynamic executable\|statically linked' <<<"$ldd_out"; then
    die "ldd $BINARY failed:"$'\n'"$ldd_out"
fi
for lib in "${LIBS[@]}"; do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L --preserve=mode "$lib" "$ROOTFS$lib"
done

CA=/etc/ssl/certs/ca-certificates.crt
[[ -s "$CA" ]] || die "$CA not found (install ca-certificates)"
cp -L "$CA" "$ROOTFS$CA"
chmod 0644 "$ROOTFS$CA"

cat >"$ROOTFS/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$ROOTFS/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
nonroot:x:$NONROOT:
EOF
# glibc reads this for host names (bootstrap DNS, upstream registries): /etc/hosts, then DNS.
cat >"$ROOTFS/etc/nsswitch.conf" <<EOF
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$ROOTFS"/etc/{passwd,group,nsswitch.conf}
chmod 1777 "$ROOTFS/tmp"
chmod 0700 "$ROOTFS/root" "$ROOTFS/home/nonroot"
chmod 0750 "$ROOTFS/var/lib/peerd"
chown "$NONROOT:$NONROOT" "$ROOTFS/home/nonroot" "$ROOTFS/var/lib/peerd"

# The rootfs must hold all the binary needs: run it there once.
if [[ $(id -u) -eq 0 ]] && command -v chroot >/dev/null; then
    chroot "$ROOTFS" /usr/local/bin/peerd --version >/dev/null 2>"$WORK/chroot.err" ||
        die "the binary does not run in the image's rootfs:"$'\n'"$(cat "$WORK/chroot.err")"
fi
ROOTFS_BYTES=$(du -sb "$ROOTFS" | cut -f1)

# ---- OCI layout ---------------------------------------------------------------------------------
# umoci 0.4.7: `repack` of an unpacked bundle adds one layer with everything changed in it; it
# writes blobs 0600 (made world-readable below); `config` writes a new config and manifest each
# time (`gc` drops the old ones).
STAGE=$(mktemp -d "$OUT_PARENT/.$(basename "$OUT").tmp.XXXXXX")
L=$STAGE/layout
umoci init --layout "$L"
umoci new --image "$L:$TAG"
umoci unpack --image "$L:$TAG" "$WORK/bundle" >/dev/null
cp -a "$ROOTFS/." "$WORK/bundle/rootfs/"
find "$WORK/bundle/rootfs" -exec touch -h -d "@$EPOCH" {} +
umoci repack --image "$L:$TAG" --history.created "$CREATED" \
    --history.created_by "scripts/build-image.sh: peerd rootfs" "$WORK/bundle"
labels=(
    --config.label "org.opencontainers.image.title=peerd"
    --config.label "org.opencontainers.image.description=Peer-to-peer distribution of container images in a cluster"
    --config.label "org.opencontainers.image.licenses=MIT"
    --config.label "org.opencontainers.image.version=$VERSION"
)
[[ -z "$REVISION" ]] || labels+=(--config.label "org.opencontainers.image.revision=$REVISION")
[[ -z "$SOURCE" ]] || labels+=(--config.label "org.opencontainers.image.source=$SOURCE")
[[ -n "$SOURCE" ]] || log "no git remote 'origin': label org.opencontainers.image.source left out"
umoci config --image "$L:$TAG" --os linux --architecture "$ARCH" --created "$CREATED" \
    --config.entrypoint /usr/local/bin/peerd --config.cmd run \
    --config.exposedports 5000/tcp --config.exposedports 5001/tcp --config.exposedports 5003/tcp --config.exposedports 5004/tcp \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env SSL_CERT_FILE=$CA \
    --config.user "$NONROOT:$NONROOT" --config.workingdir / \
    "${labels[@]}" \
    --history.created "$CREATED" \
    --history.created_by "scripts/build-image.sh: entrypoint, cmd, ports, env, user, labels"
umoci gc --layout "$L"
chmod -R a+rX "$L"

desc=$(jq -ce --arg t "$TAG" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)' "$L/index.json")
DIGEST=$(jq -r .digest <<<"$desc")
manifest=$L/blobs/sha256/${DIGEST#sha256:}
[[ "sha256:$(sha256sum "$manifest" | cut -d' ' -f1)" == "$DIGEST" ]] || die "manifest digest mismatch"
LAYERS=$(jq '.layers | length' "$manifest")
# What a pull transfers: manifest, config and (compressed) layers.
IMAGE_BYTES=$(jq --argjson m "$(jq .size <<<"$desc")" '$m + .config.size + ([.layers[].size] | add)' "$manifest")
config=$L/blobs/sha256/$(jq -r '.config.digest | ltrimstr("sha256:")' "$manifest")
jq -e --arg u "$NONROOT:$NONROOT" \
    '.config.User == $u and .config.Entrypoint == ["/usr/local/bin/peerd"] and .config.Cmd == ["run"]' \
    "$config" >/dev/null || die "image config is not what was asked for: $(jq -c .config "$config")"

# Put the layout in place of an older one; never remove anything that is not an OCI layout.
if [[ -e "$OUT" ]]; then
    if [[ -f "$OUT/oci-layout" || (-d "$OUT" && -z "$(ls -A "$OUT")") ]]; then
        mv -T "$OUT" "$STAGE/old"
    else
        die "$OUT exists and is not an OCI layout; remove it or pass another --out"
    fi
fi
mv -T "$L" "$OUT"
rm -rf "$STAGE"
STAGE=""

human() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
log "built oci:$OUT:$TAG in $(elapsed "$T_START")s: $DIGEST, $LAYERS layer(s), $IMAGE_BYTES bytes ($(human "$IMAGE_BYTES")) compressed, rootfs $(human "$ROOTFS_BYTES")"

# push HOST:PORT: copy the image to docker://HOST:PORT/peerd:TAG and check the served digest.
push() {
    local dest="docker://$1/peerd:$TAG" got
    skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$OUT:$TAG" "$dest" ||
        die "skopeo copy to $dest failed"
    got=$(skopeo inspect --tls-verify=false --raw "$dest" | sha256sum | cut -d' ' -f1) ||
        die "could not read $dest back"
    [[ "sha256:$got" == "$DIGEST" ]] || die "$dest has digest sha256:$got, the layout $DIGEST"
    log "pushed $1/peerd:$TAG ($DIGEST)"
}

if [[ -n "$PUSH" ]]; then
    t0=$(date +%s.%N)
    push "$PUSH"
    log "push took $(elapsed "$t0")s"
fi
((SMOKE)) || exit 0

# ---- smoke test -------------------------------------------------------------------------------
# ctr 1.6 notes: `ctr run` has no --user (added in 1.7) and refuses --rm with --detach, so the
# container runs detached as the image's user and is removed in cleanup; root is checked with
# `ctr task exec --user 0` of a second peerd in the same container (the chart's runAsUser: 0).
T_SMOKE=$(date +%s.%N)
SW=$(mktemp -d /tmp/peerd-ismoke.XXXXXX)
SOCK=""

c() { ctr -a "$SOCK" -n "$NS" "$@"; }

# alive PID: PID exists and is not a zombie.
alive() {
    local state
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

smoke_cleanup() {
    if [[ -n "$CTR_ID" && -S "$SOCK" ]]; then
        c --timeout 10s task kill -s SIGKILL --all "$CTR_ID" >/dev/null 2>&1 || true
        c --timeout 10s task delete -f "$CTR_ID" >/dev/null 2>&1 || true
        c --timeout 10s container delete "$CTR_ID" >/dev/null 2>&1 || true
    fi
    if [[ -n "$EXEC_PID" ]] && alive "$EXEC_PID"; then
        kill "$EXEC_PID" 2>/dev/null || true
    fi
    [[ -z "$EXEC_PID" ]] || wait "$EXEC_PID" 2>/dev/null || true
    "$FIXTURES/containerd.sh" stop "$SW/ctd" >/dev/null 2>&1 || true
    "$FIXTURES/registry.sh" stop "$SW/reg" >/dev/null 2>&1 || true
    local m
    while read -r m; do
        [[ -n "$m" ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$SW" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf "$SW"
}

# Ports nobody listens on (20000-29999, below the ephemeral range), distinct from PORTS_TAKEN.
PORTS_TAKEN=" "
free_port() {
    local p f line local_addr inuse
    while :; do
        p=$((20000 + RANDOM % 10000))
        [[ "$PORTS_TAKEN" != *" $p "* ]] || continue
        inuse=0
        for f in /proc/net/tcp /proc/net/tcp6; do
            [[ -r "$f" ]] || continue
            while read -r _ local_addr _; do
                [[ "$local_addr" == *:* ]] || continue
                if (($((16#${local_addr##*:})) == p)); then inuse=1; break; fi
            done <"$f"
            ((inuse == 0)) || break
        done
        ((inuse)) && continue
        PORTS_TAKEN+="$p "
        echo "$p"
        return
    done
}

fail() {
    local f
    for f in "$SW/peerd.log" "$SW/peerd-root.log"; do
        [[ -s "$f" ]] || continue
        echo "--- $(basename "$f") (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
    die "image smoke: $*"
}

# task_pid: PID of the container's init process (peerd), empty if the task is not running.
task_pid() { c task ls 2>/dev/null | awk -v id="$CTR_ID" '$1 == id && $3 == "RUNNING" { print $2 }'; }
# uid_of PID: real, effective, saved and fs uid.
uid_of() { sed -n 's/^Uid:[[:space:]]*//p' "/proc/$1/status" | tr -s '[:space:]' ' ' | sed 's/ $//'; }

# wait_healthy WHO PORT... : every /healthz and /readyz answers 200 within SMOKE_TIMEOUT.
wait_healthy() {
    local who=$1 deadline=$((SECONDS + SMOKE_TIMEOUT)) p path code pending
    shift
    while :; do
        pending=""
        for p in "$@"; do
            for path in healthz readyz; do
                code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$p/$path" || true)
                [[ "$code" == 200 ]] || pending+=" 127.0.0.1:$p/$path=$code"
            done
        done
        [[ -n "$pending" ]] || return 0
        [[ -n "$(task_pid)" ]] || fail "$who: the container stopped before it was healthy"
        ((SECONDS < deadline)) || fail "$who: not healthy after ${SMOKE_TIMEOUT}s:$pending"
        sleep 0.2
    done
}

t0=$(date +%s.%N)
ADDR=$("$FIXTURES/registry.sh" start "$SW/reg") || fail "registry.sh start failed"
T_REG=$(elapsed "$t0")
t0=$(date +%s.%N)
push "$ADDR"
T_PUSH=$(elapsed "$t0")
t0=$(date +%s.%N)
SOCK=$("$FIXTURES/containerd.sh" start "$SW/ctd") || fail "containerd.sh start failed"
SNAP=$(cat "$SW/ctd/snapshotter")
T_CTD=$(elapsed "$t0")
REF=$ADDR/peerd:$TAG

t0=$(date +%s.%N)
c image pull --plain-http --snapshotter "$SNAP" "$REF" >"$SW/pull.log" 2>&1 ||
    { cat "$SW/pull.log" >&2; fail "ctr image pull $REF failed"; }
T_PULL=$(elapsed "$t0")
pulled=$(c image ls | awk -v r="$REF" '$1 == r { print $3 }')
[[ "$pulled" == "$DIGEST" ]] || fail "containerd has $REF as '$pulled', expected $DIGEST"

# Unique across containerd instances: cgroups are named /<namespace>/<container id>.
CTR_ID=peerd-smoke-$$-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
P1=$(free_port) P2=$(free_port) P3=$(free_port) P4=$(free_port)

# As the image's default user (65532), read-only rootfs and a tmpfs /tmp like the chart's
# readOnlyRootFilesystem + emptyDir, data dir under /tmp.
t0=$(date +%s.%N)
c run -d --net-host --snapshotter "$SNAP" --read-only \
    --mount "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:mode=1777" \
    --log-uri "file://$SW/peerd.log" \
    "$REF" "$CTR_ID" /usr/local/bin/peerd run --no-p2p \
    --http-addr "127.0.0.1:$P1" --metrics-addr "127.0.0.1:$P2" \
    --containerd-socket /nonexistent.sock --data-dir /tmp/peerd >"$SW/run.log" 2>&1 ||
    { cat "$SW/run.log" >&2; fail "ctr run failed"; }
wait_healthy "peerd as the image user" "$P1" "$P2"
T_UP=$(elapsed "$t0")
PID1=$(task_pid)
[[ -n "$PID1" ]] || fail "no running task for $CTR_ID"
u=$(uid_of "$PID1")
[[ "$u" == "$NONROOT $NONROOT $NONROOT $NONROOT" ]] || fail "peerd runs as uid '$u', expected $NONROOT"
log "smoke: peerd up as uid $NONROOT in ${T_UP}s (pid $PID1, 127.0.0.1:$P1 and :$P2 answer 200)"

# As root (--user 0), like the chart's runAsUser: 0: a second peerd in the same container.
t0=$(date +%s.%N)
c task exec --exec-id "root-$$" --user 0 "$CTR_ID" /usr/local/bin/peerd run --no-p2p \
    --http-addr "127.0.0.1:$P3" --metrics-addr "127.0.0.1:$P4" \
    --containerd-socket /nonexistent.sock --data-dir /tmp/peerd-root \
    >"$SW/peerd-root.log" 2>&1 </dev/null &
EXEC_PID=$!
wait_healthy "peerd as root" "$P3" "$P4"
T_ROOT=$(elapsed "$t0")
PID0=""
for p in $(c task ps "$CTR_ID" | awk 'NR > 1 { print $1 }'); do
    [[ "$p" == "$PID1" ]] || PID0=$p
done
[[ -n "$PID0" ]] || fail "no second process in $CTR_ID"
u=$(uid_of "$PID0")
[[ "$u" == "0 0 0 0" ]] || fail "the exec'd peerd runs as uid '$u', expected 0"
log "smoke: peerd up as uid 0 in ${T_ROOT}s (pid $PID0, 127.0.0.1:$P3 and :$P4 answer 200)"

# SIGTERM to the container's init (peerd as PID 1 must handle it; the kubelet sends it).
t0=$(date +%s.%N)
c task kill -s SIGTERM "$CTR_ID" >/dev/null
deadline=$((SECONDS + 15))
while [[ -n "$(task_pid)" ]] && ((SECONDS < deadline)); do sleep 0.1; done
if [[ -n "$(task_pid)" ]]; then
    log "smoke: warning: peerd did not exit within 15s of SIGTERM; killing it"
else
    log "smoke: peerd (PID 1) exited $(elapsed "$t0")s after SIGTERM"
fi

echo "image smoke: OK  $REF  digest $DIGEST  size $IMAGE_BYTES bytes ($(human "$IMAGE_BYTES")) compressed, rootfs $(human "$ROOTFS_BYTES")"
log "timings: registry start ${T_REG}s, push ${T_PUSH}s, containerd start ${T_CTD}s, pull ${T_PULL}s, healthy as $NONROOT ${T_UP}s, as root ${T_ROOT}s, smoke total $(elapsed "$T_SMOKE")s, all $(elapsed "$T_START")s"
