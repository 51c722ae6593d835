# syntax=docker/dockerfile:1.7
# CPU image of the data stages (topics ... filter): `kakugo stage <name> --spec FILE`.
# The operator runs it as `kakugo stage NAME --spec /etc/kakugo/spec.yaml` (Job command).
# Build from the repository root:
#   docker build -f images/stages.Dockerfile -t ghcr.io/kakugo/kakugo-stages:0.1.0 .
# Runs as UID 10001. Every writable path is under /tmp and $HOME/.cache (HF and
# matplotlib caches), so the root filesystem can be read-only with emptyDirs there.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY kakugo_stages ./kakugo_stages
COPY operator ./operator
RUN python -m venv /opt/kakugo \
 && /opt/kakugo/bin/pip install --constraint /tmp/constraints.txt '.[stages]' \
 && /opt/kakugo/bin/python -m compileall -q /opt/kakugo/lib

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 kakugo \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kakugo kakugo
COPY --from=build /opt/kakugo /opt/kakugo
ENV PATH=/opt/kakugo/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kakugo HF_HOME=/home/kakugo/.cache/huggingface \
    MPLCONFIGDIR=/home/kakugo/.cache/matplotlib
USER 10001:10001
WORKDIR /home/kakugo
ENTRYPOINT ["kakugo"]
CMD ["stage", "--help"]
