# A stand-in for the official postgres image, made only from Debian's mirror (CI cannot reach Docker Hub):
# Debian bookworm's PostgreSQL, with an entrypoint that honours POSTGRES_USER, POSTGRES_PASSWORD and
# POSTGRES_DB on first start (an empty data directory) as far as docker/compose.yaml uses them, keeps its data
# in /var/lib/postgresql/data (a volume), listens on every interface with password authentication, and
# answers `pg_isready`. Not a general replacement of the official image (no init scripts, no other variables).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# No default cluster from the package: the entrypoint makes its own in the volume.
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)" /usr/local/pg-bin \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/local/pg-bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
