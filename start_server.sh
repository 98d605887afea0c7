#!/usr/bin/env bash
# The seed's start script, kept as a thin wrapper: `bge-m3 up` runs the checks (environment,
# model SHA-256, port, Redis) and starts Redis, the worker(s) and the API. Arguments pass
# through, e.g. ./start_server.sh --workers 2. Settings come from the environment (README).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -x "$here/.venv/bin/bge-m3" ]; then
  exec "$here/.venv/bin/bge-m3" up "$@"
fi
exec bge-m3 up "$@"
