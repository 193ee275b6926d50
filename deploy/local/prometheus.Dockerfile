# Prometheus from Debian's package, for docker-compose.local.yml; docker-compose.yml mounts its
# configuration on /etc/prometheus and its data volume on /prometheus, as for prom/prometheus.
ARG BASE=slipway-local/base-prometheus:bookworm
FROM ${BASE}
RUN install -d -o 65534 -g 65534 -m 0755 /prometheus
WORKDIR /prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
