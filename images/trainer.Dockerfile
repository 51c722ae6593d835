# syntax=docker/dockerfile:1.7
# GPU image of the train stage: CUDA, PyTorch, DeepSpeed (ZeRO-3), Transformers.
# The operator runs it as `kakugo stage train --spec /etc/kakugo/spec.yaml` (one Pod that
# starts torchrun itself over its GPUs).
# Build from the repository root (on a machine with Docker; no GPU needed to build):
#   docker build -f images/trainer.Dockerfile -t ghcr.io/kakugo/kakugo-trainer:0.1.0 .
# flash-attn is optional (the recipe trains with SDPA); to add it:
#   --build-arg FLASH_ATTN_VERSION=2.8.3   (compiles for ~1 h unless a wheel matches)
# Runs as UID 10001; writable paths: /tmp and $HOME/.cache (HF cache, Triton and
# torch extensions), so the root filesystem can be read-only with emptyDirs there.
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_DEVEL_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DEEPSPEED_VERSION=0.19.8
ARG FLASH_ATTN_VERSION=""
# Ampere, Hopper, Blackwell.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0;10.0"
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}
# The Ubuntu packages come from the release of the CUDA base image, which is pinned;
# exact package versions would break the build at Ubuntu's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build git \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kakugo \
 && /opt/kakugo/bin/pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
# DeepSpeed with its fused Adam ops compiled now, so that the runtime image needs no nvcc.
RUN DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 /opt/kakugo/bin/pip install --no-build-isolation \
      "deepspeed==${DEEPSPEED_VERSION}" \
 && if [ -n "${FLASH_ATTN_VERSION}" ]; then \
      /opt/kakugo/bin/pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"; fi
WORKDIR /src
COPY images/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY kakugo_stages ./kakugo_stages
COPY operator ./operator
RUN grep -v -E '^(torch|deepspeed)==' /tmp/constraints.txt > /tmp/pins.txt \
 && /opt/kakugo/bin/pip install --constraint /tmp/pins.txt '.[stages,train]' \
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
    TRITON_CACHE_DIR=/home/kakugo/.cache/triton \
    TORCH_EXTENSIONS_DIR=/home/kakugo/.cache/torch_extensions \
    HF_HUB_ENABLE_HF_TRANSFER=0 NCCL_DEBUG=WARN
USER 10001:10001
WORKDIR /home/kakugo
ENTRYPOINT ["kakugo"]
CMD ["stage", "--help"]
