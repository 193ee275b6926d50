# The OCI image registry of docker-compose.local.yml: Docker Distribution from Debian's
# docker-registry package, on :5000 with filesystem storage in /var/lib/registry (what the
# registry:2 image of docker-compose.yml does).
ARG BASE=slipway-local/base-registry:bookworm
FROM ${BASE}
COPY registry-config.yml /etc/docker/registry/config.yml
RUN install -d -o 10001 -g 10001 -m 0755 /var/lib/registry
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["/usr/bin/docker-registry"]
CMD ["serve", "/etc/docker/registry/config.yml"]
