#!/usr/bin/env bash
# Run on a machine with a package index and an apt mirror (the development VM has both), in the
# checkout, before bench/gpu_session.sh goes to a GPU machine that has python3 3.12 with torch
# but no network. Fetches what that image lacks or has at other
# versions (transformers<5 for FlagEmbedding, Celery, redis-py, ...), pinned by constraints.txt,
# into .whl/, and Debian's redis-server with its two libraries into .deb/. Keep both folders out
# of git (.git/info/exclude) and carry them to the device.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt; }
mkdir -p .whl .deb
names=(transformers tokenizers huggingface_hub FlagEmbedding datasets dill multiprocess lz4 peft fsspec
       celery kombu billiard vine amqp redis click-didyoumean click-repl click-plugins prompt_toolkit
       wcwidth tzlocal Flask blinker itsdangerous
       gunicorn prometheus_client Werkzeug httpx httpcore h11 anyio sniffio idna certifi  # api_bench
       pytest-xdist execnet)  # pyproject's addopts name -n
pins=()
for name in "${names[@]}"; do pins+=("$(pin "$name")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
(cd .deb && apt-get download redis-server redis-tools libjemalloc2 liblzf1)
for f in .deb/*%3a*; do [ -e "$f" ] && mv "$f" "${f//%3a/_}"; done
du -sh .whl .deb
