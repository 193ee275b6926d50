# The Kafka-protocol broker of docker-compose.local.yml: Tansu (a single Rust binary, the one
# scripts/lib.sh installs with `cargo install`), copied into the platform's Debian base.
ARG BASE=slipway-local/base-platform:bookworm
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
# Tansu reads a .env file in its working directory: give it an empty one of its own.
RUN install -d -o 10001 -g 10001 -m 0755 /var/lib/tansu
WORKDIR /var/lib/tansu
USER 10001:10001
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/tansu"]
