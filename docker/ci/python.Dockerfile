# A stand-in for python:3.11-slim-bookworm, made only from Debian's mirror (CI cannot reach Docker Hub):
# Debian bookworm's own Python 3.11 with venv and pip, reachable as `python` and `python3` like in the
# official image. BASE_IMAGE is a Debian bookworm root file system (docker/ci-smoke.sh makes one with
# debootstrap and `docker import`). extra-ca/ holds the build machine's own CA certificates, if any (a
# TLS-inspecting proxy between the build and PyPI); ci-smoke.sh copies them from
# /usr/local/share/ca-certificates.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /usr/bin/python3 /usr/local/bin/python \
    && python --version
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
