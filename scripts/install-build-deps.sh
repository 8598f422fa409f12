#!/usr/bin/env bash
# What building peerd needs beyond Rust: protoc (containerd-client's build script). Nothing else:
# `make run` may be used on a real node, where the test toolchain (containerd, runc, registries)
# must not be installed behind the operator's back. `make test` uses install-test-deps.sh.
set -euo pipefail
command -v protoc >/dev/null && exit 0
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
echo "installing: protobuf-compiler (protoc, needed to build containerd-client)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends protobuf-compiler
