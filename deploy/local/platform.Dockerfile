# The platform image from binaries compiled on the host, for docker-compose.local.yml: what the
# multi-stage ../../Dockerfile makes, without its Rust build stages (they need the rust image,
# which cannot be pulled where this runs). scripts/compose stages the five binaries in bin/ of
# the build context and builds this; the base comes from Debian packages (scripts/base-image:
# ca-certificates, curl for the healthcheck, git for the builder, python3 for the sample app's
# test gate and its process-target instances, socat for the registry forwarder).
ARG BASE=slipway-local/base-platform:bookworm
FROM ${BASE}
# The same writable working directory as Dockerfile's (uid 10001 is the base's user `app`).
RUN install -d -o 10001 -g 10001 -m 0755 /var/lib/slipway
COPY bin/ /usr/local/bin/
COPY registry-link /usr/local/bin/registry-link
WORKDIR /var/lib/slipway
USER 10001:10001
ENV SLIPWAY_HTTP__HOST=0.0.0.0 \
    SLIPWAY_HTTP__PORT=8080
EXPOSE 8080
