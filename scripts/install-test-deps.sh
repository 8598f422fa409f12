#!/usr/bin/env bash
# Install everything peerd's build and tests need on a fresh Debian/Ubuntu machine.
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail

PACKAGES=(
  protobuf-compiler   # containerd-client's build script (protoc)
  docker-registry     # upstream registry (distribution 2.8)
  containerd runc     # containerd 1.6 pulling through peerd
  skopeo umoci        # building and pushing test images
  busybox-static      # the test images' rootfs
  nginx-light         # plain HTTP upstream (/blobs tests)
  curl jq iproute2 ca-certificates
  chromium            # the /debug/web page rendered in a headless browser (tests/debug_web.rs)
  python3-matplotlib  # make sim: the plots of docs/scale.md
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Azurite (Azure Blob emulator) for the /blobs tests with real SAS URLs, from the npm registry.
TOOLS=${PEERD_TOOLS_DIR:-$HOME/.cache/peerd-tools}
if [[ ! -x "$TOOLS/azurite/node_modules/.bin/azurite-blob" ]]; then
  command -v npm >/dev/null || { SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"; $SUDO apt-get install -y -qq nodejs npm; }
  mkdir -p "$TOOLS/azurite"
  npm install --prefix "$TOOLS/azurite" azurite@3 --no-audit --no-fund --loglevel=error
fi
