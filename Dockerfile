# syntax=docker/dockerfile:1
#
# The peerd image: a release build of peerd on distroless (glibc, CA certificates, no shell).
#
#   docker build -t peerd:dev .
#
# scripts/build-image.sh makes the same image without Docker (umoci + skopeo; `make image`),
# with the same paths, user, ports, entrypoint and command.
#
# Pin the bases by digest for releases, e.g.
#   --build-arg RUST_IMAGE=rust:1.89-bookworm@sha256:...
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12@sha256:...
# The builder must be Debian 12 (bookworm) like the runtime, so the binary needs no newer glibc
# than the runtime has.
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12

FROM ${RUST_IMAGE} AS builder
# protoc: containerd-client's build script compiles containerd's protobuf API.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cargo registry and target dir are BuildKit cache mounts, so the binary is copied out in the
# same step. /out/var/lib/peerd becomes the image's default --data-dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/peerd /out/usr/local/bin/peerd \
    && install -d -m 0750 /out/var/lib/peerd

FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/usr/local/bin/peerd /usr/local/bin/peerd
COPY --from=builder --chown=65532:65532 /out/var/lib/peerd /var/lib/peerd
# reqwest/rustls read the system roots; distroless ships them here (set again to be explicit).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# 5000: registry mirror (/v2, /healthz, /readyz). 5003: libp2p. 5004: metrics (/metrics/prometheus,
# /healthz, /readyz).
EXPOSE 5000 5001 5003 5004
WORKDIR /
# USER: the image's default user is nonroot, 65532:65532 (distroless's `nonroot`), numeric so
# that Kubernetes' runAsNonRoot can check it. The containerd socket
# (/run/containerd/containerd.sock) is owned by root with mode 0660 on most nodes, and so are
# containerd's certs.d and the node's data dir: a nonroot peerd cannot open them. The Helm chart
# decides, not the image: its securityContext sets runAsUser/runAsGroup 0 (with all
# capabilities dropped, no privilege escalation and a read-only root filesystem) only because
# the socket requires it, and can run peerd as 65532 where the socket is made group-accessible.
# Outside the chart, run as 65532 with a writable --data-dir (a volume owned by 65532, or /tmp),
# or pass --user 0 yourself when peerd must reach a root-owned socket.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/peerd"]
CMD ["run"]
