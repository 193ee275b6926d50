# One image holds all five Slipway binaries; docker-compose.yml and k8s/ pick the service by
# setting the container's command (slipway-gateway, slipway-builder, slipway-registry,
# slipway-deployer, slipway-monitor). There is deliberately no default CMD.
#
# Build:  docker build -t slipway:dev .
#
# Stages: chef (toolchain + cargo-chef) -> planner (dependency recipe) -> builder (cook the
# dependencies, then build the workspace) -> runtime (debian slim, non-root).
# cargo-chef keeps the dependency layer cached as long as no Cargo.toml / Cargo.lock changes,
# so editing Rust sources only rebuilds the workspace crates.

# The tag follows the latest 1.95.x; rust-toolchain.toml pins 1.95.0, and rustup installs that
# exact toolchain in the image if the tag has moved on to a later patch release.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# Build dependencies: pkg-config/libssl-dev for crates that link OpenSSL, make/g++ for the
# bundled librdkafka (rdkafka's default build), zlib1g-dev for rdkafka's `libz` feature.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config make g++ zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is reused until the recipe (manifests + lock file) changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# All five service binaries in one cargo invocation (shared dependency graph, one link pass each).
RUN cargo build --release --locked --bins

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: TLS to outside endpoints (OTLP collectors, git hosts, registries).
# curl: the container healthcheck in docker-compose.yml (`curl -fsS http://127.0.0.1:8080/readyz`);
# a few hundred KiB, and simpler than shipping a healthcheck subcommand in every binary.
# git: the builder fetches the commits it builds with the git command line.
# socat: deploy/registry-link, the image registry's one address (see docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl git socat \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 slipway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/slipway --create-home \
        --shell /usr/sbin/nologin slipway
COPY --from=builder \
    /app/target/release/slipway-gateway \
    /app/target/release/slipway-builder \
    /app/target/release/slipway-registry \
    /app/target/release/slipway-deployer \
    /app/target/release/slipway-monitor \
    /usr/local/bin/
COPY deploy/registry-link /usr/local/bin/registry-link
# Working directory the services may write to (relative state such as `.slipway/`); on
# Kubernetes the root filesystem is read-only and an emptyDir is mounted here and on /tmp.
WORKDIR /var/lib/slipway
# Numeric user so Kubernetes' runAsNonRoot check can verify it without reading /etc/passwd.
USER 10001:10001
# Container defaults of the configuration contract; compose and k8s set them explicitly too.
ENV SLIPWAY_HTTP__HOST=0.0.0.0 \
    SLIPWAY_HTTP__PORT=8080
EXPOSE 8080
