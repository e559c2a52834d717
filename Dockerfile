# syntax=docker/dockerfile:1
# csm-serve: CUDA runtime + Python + the installed package.
#
#   docker build -t csm-serve:0.1.0 .
#   docker run --gpus all --shm-size=8g --stop-timeout 170 -p 8000:8000 -e HF_TOKEN -e CSM_API_KEYS=<key> csm-serve:0.1.0
#   (runs serve_config.yaml, which requires API keys: clients send Authorization: Bearer <key>)
#
# serve_config.yaml asks for 8 CPUs and 1 GPU at its minimum size (2 ingress replicas of 2 CPUs,
# one model replica of 3.5, the shared state's 0.5). configs/serve/local.yaml listens on 127.0.0.1 only: it is for a
# laptop, not for a container.
#
# As a KubeRay image the operator replaces the command with `ray start ...`: `ray` and `serve` are on
# PATH, `wget` is present for KubeRay's probes, and the user is non-root uid 1000 like Ray's images.
# The torch wheel comes from the CUDA index matching the base image; keep the two in step. Triton
# builds its launcher stubs with a C compiler and Python's headers on a replica's first kernel.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG RAY_VERSION=2.60.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/ray/.cache/huggingface \
    RAY_USAGE_STATS_ENABLED=0 \
    TOKENIZERS_PARALLELISM=false

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
       ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --shell /bin/bash ray \
    && python3 -m venv "$VIRTUAL_ENV" \
    && mkdir -p /data/voices \
    && chown -R ray:ray "$VIRTUAL_ENV" /data/voices

USER ray
WORKDIR /home/ray/app

# The large, rarely changing layer first: CUDA torch, before any project file is copied.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"

COPY --chown=ray:ray pyproject.toml README.md ./
COPY --chown=ray:ray serve_app ./serve_app
# Ray pinned: KubeRay's rayVersion and every node of a cluster must run the same Ray.
# The haproxy extra: `csm-serve serve` puts Ray's HAProxy ingress in front (the fastest measured).
RUN pip install ".[haproxy]" "ray[serve]==${RAY_VERSION}" && mkdir -p "$HF_HOME"

COPY --chown=ray:ray serve_config.yaml ./
COPY --chown=ray:ray configs ./configs

EXPOSE 8000 8265 6379 10001
# `serve run` behind HAProxy, with a stop that drains: on SIGTERM requests and streams in flight
# finish (up to the longest graceful_shutdown_timeout_s, 120 s), the ingress replicas wait out Ray's
# 30 s direct-ingress draining period, then Ray stops (+ 10 s). Let `docker stop` wait that long:
# `docker run --stop-timeout 170 ...` (its default, 10 s, would SIGKILL mid-drain).
CMD ["csm-serve", "serve", "--config", "serve_config.yaml"]
