# syntax=docker/dockerfile:1.7
# The teacher: vLLM's OpenAI-compatible server, on the official image, as a non-root user.
# The operator's Teacher Deployment runs `python -m vllm.entrypoints.openai.api_server
# --model ... --served-model-name ...` (operator/kakugo_operator/teacher.py).
# Build from the repository root:
#   docker build -f images/teacher.Dockerfile -t ghcr.io/kakugo/kakugo-teacher:0.1.0 .
# Pin by digest in production: --build-arg VLLM_IMAGE=vllm/vllm-openai:v0.32.0@sha256:...
# Runs as UID 10001 (the user the operator's Pods run as, with runAsNonRoot); writable
# paths: /tmp, /dev/shm and $HOME (model download, torch.compile and Triton caches), which
# the operator mounts from the Pod's scratch volume: the root filesystem is read-only.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

FROM ${VLLM_IMAGE}
# root only to add the user below; the image runs as the numeric 10001:10001.
# hadolint ignore=DL3066
USER root
RUN (getent group 10001 || groupadd --gid 10001 kakugo) \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kakugo kakugo \
 && (command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python)
ENV HOME=/home/kakugo HF_HOME=/home/kakugo/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/kakugo/.cache/vllm TRITON_CACHE_DIR=/home/kakugo/.cache/triton \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/kakugo
EXPOSE 8000
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server"]
CMD ["--help"]
