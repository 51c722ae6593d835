# syntax=docker/dockerfile:1.7
# GPU image of the evaluate stage: lm-eval with the vLLM backend, sacrebleu (chrF++).
# The operator runs it as `kakugo stage evaluate --spec /etc/kakugo/spec.yaml`.
# Build from the repository root:
#   docker build -f images/eval.Dockerfile -t ghcr.io/kakugo/kakugo-eval:0.1.0 .
# vLLM pins its own CUDA torch and transformers (< 5.21): the pins of constraints.txt for
# those two are left to vLLM's resolver; vLLM itself is pinned.
# Runs as UID 10001; writable paths: /tmp and $HOME/.cache.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_DEVEL_IMAGE} AS build
ARG VLLM_VERSION=0.32.0
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The Ubuntu packages come from the release of the CUDA base image, which is pinned;
# exact package versions would break the build at Ubuntu's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kakugo \
 && /opt/kakugo/bin/pip install "vllm==${VLLM_VERSION}"
WORKDIR /src
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY kakugo_stages ./kakugo_stages
COPY operator ./operator
RUN grep -v -E '^(torch|transformers|tokenizers|numpy)==' /tmp/constraints.txt > /tmp/pins.txt \
 && /opt/kakugo/bin/pip install --constraint /tmp/pins.txt "vllm==${VLLM_VERSION}" \
      '.[stages,eval]' 'lm-eval[vllm]' \
 && /opt/kakugo/bin/python -m compileall -q /opt/kakugo/lib

FROM ${CUDA_RUNTIME_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The Ubuntu packages come from the release of the CUDA base image, which is pinned;
# exact package versions would break the build at Ubuntu's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libpython3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 kakugo \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kakugo kakugo
COPY --from=build /opt/kakugo /opt/kakugo
ENV PATH=/opt/kakugo/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kakugo HF_HOME=/home/kakugo/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/kakugo/.cache/vllm TRITON_CACHE_DIR=/home/kakugo/.cache/triton \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
USER 10001:10001
WORKDIR /home/kakugo
ENTRYPOINT ["kakugo"]
CMD ["stage", "--help"]
