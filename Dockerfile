# syntax=docker/dockerfile:1
# One Dockerfile, two images:
#   docker build --target api    -t bge-m3-api .     # Flask + gunicorn, no torch
#   docker build --target worker -t bge-m3-worker .  # torch (CUDA build from PyPI) + FlagEmbedding
# CPU-only worker: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A tag, so that a rebuild takes Debian's and Python's security fixes. For a build that is the
# same every time, pin a digest: --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed, non-root uid so named volumes keep one owner across rebuilds.
RUN groupadd --system --gid 10001 bge \
 && useradd --system --uid 10001 --gid bge --home-dir /home/bge --create-home bge \
 && mkdir -p /models/bge-m3 /data /logs \
 && chown -R bge:bge /models /data /logs
WORKDIR /app
# README.md is the package's long description: copied with the sources, so that editing it does
# not rebuild the dependency layers (they build against an empty stand-in).
COPY pyproject.toml constraints.txt ./
ENV BGE_M3_HOST=0.0.0.0 \
    BGE_M3_PORT=7860 \
    BGE_M3_MODEL_DIR=/models/bge-m3 \
    BGE_M3_DATA_DIR=/data \
    BGE_M3_LOG_DIR=/logs \
    HOME=/home/bge

FROM base AS api
# The API-only install: the base dependencies, no torch, transformers or FlagEmbedding. The
# dependencies go in a layer of their own, installed through empty stand-in packages, so that a
# code change reinstalls only the project itself (--no-deps below).
RUN mkdir -p bge_m3 verify api worker \
 && touch README.md bge_m3/__init__.py verify/__init__.py api/__init__.py worker/__init__.py \
 && pip install -c constraints.txt ".[api]" \
 && pip uninstall -y bge-m3-service && rm -rf bge_m3 verify api worker build ./*.egg-info
COPY README.md ./
COPY bge_m3 ./bge_m3
COPY verify ./verify
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps . && rm -rf build ./*.egg-info \
 && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'transformers')))"
USER bge
EXPOSE 7860
CMD ["bge-m3", "api"]

FROM base AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# torch first, from the chosen index, so the project install does not pick another build; and
# before the sources, so that a code change does not download it again.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Then the other dependencies, as in the api stage: through empty stand-in packages, so that a
# code change reinstalls only the project. The constraints without their torch pin: the one
# installed above (TORCH_VERSION) stays.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
 && mkdir -p bge_m3 verify api worker \
 && touch README.md bge_m3/__init__.py verify/__init__.py api/__init__.py worker/__init__.py \
 && pip install -c /tmp/constraints.txt ".[worker]" \
 && pip uninstall -y bge-m3-service && rm -rf bge_m3 verify api worker build ./*.egg-info
COPY README.md ./
COPY bge_m3 ./bge_m3
COPY verify ./verify
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps . && rm -rf build ./*.egg-info
USER bge
CMD ["bge-m3", "worker"]
