# syntax=docker/dockerfile:1.7
# The Kopf operator: `kakugo operator` (the Helm chart's Deployment).
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/kakugo/kakugo-operator:0.1.0 .
# Runs as UID 10001 with a read-only root filesystem (the chart mounts /tmp); it needs no
# other writable path.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY kakugo_stages ./kakugo_stages
COPY operator ./operator
RUN python -m venv /opt/kakugo \
 && /opt/kakugo/bin/pip install --constraint /tmp/constraints.txt '.[operator]' \
 && /opt/kakugo/bin/python -m compileall -q /opt/kakugo/lib

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 kakugo \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kakugo
COPY --from=build /opt/kakugo /opt/kakugo
ENV PATH=/opt/kakugo/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
# 9090: /metrics and /readyz; 8080: Kopf's /healthz.
EXPOSE 9090 8080
ENTRYPOINT ["kakugo"]
CMD ["operator"]
