# PostgreSQL 15 from Debian's package, for docker-compose.local.yml: reads the variables of the
# official postgres image that docker-compose.yml sets (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB) and keeps its data in the same place (/var/lib/postgresql/data).
ARG BASE=slipway-local/base-postgres:bookworm
FROM ${BASE}
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
# A fresh named volume takes the owner and mode of the directory it is mounted on.
RUN install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 0775 /run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
CMD ["postgres"]
