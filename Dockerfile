# syntax=docker/dockerfile:1
# One Dockerfile, two images:
#   docker build --target api    -t bge-m3-api .     # Flask + gunicorn, no torch
#   docker build --target worker -t bge-m3-worker .  # torch (CUDA build from PyPI) + FlagEmbedding
# CPU-only worker: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS base
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
COPY pyproject.toml constraints.txt README.md ./
ENV BGE_M3_HOST=0.0.0.0 \
    BGE_M3_PORT=7860 \
    BGE_M3_MODEL_DIR=/models/bge-m3 \
    BGE_M3_DATA_DIR=/data \
    BGE_M3_LOG_DIR=/logs \
    HOME=/home/bge

FROM base AS api
COPY bge_m3 ./bge_m3
COPY verify ./verify
COPY api ./api
COPY worker ./worker
# The API-only install: the base dependencies, no torch, transformers or FlagEmbedding.
RUN pip install -c constraints.txt ".[api]" \
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
COPY bge_m3 ./bge_m3
COPY verify ./verify
COPY api ./api
COPY worker ./worker
# The constraints without their torch pin: the one installed above (TORCH_VERSION) stays.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
 && pip install -c /tmp/constraints.txt ".[worker]"
USER bge
CMD ["bge-m3", "worker"]
