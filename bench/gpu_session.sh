#!/usr/bin/env bash
# The GPU checks in one pass, for a lent CUDA machine that has python3 with torch but no network.
#
# What it needs beside the checkout (bench/gpu_prepare.sh fetches both on a networked machine):
#   .whl/  the pure-Python and manylinux wheels the image lacks or has at other versions
#          (transformers<5, FlagEmbedding, Celery, redis-py, ...), installed into /tmp/site;
#   .deb/  Debian's redis-server and its two libraries, unpacked into /tmp/redisroot.
# It runs the `gpu`-marked tests (CUDA path, real worker on cuda:0), builds the full-size
# random model, and runs bench/worker_bench.py on it with --device cuda --mfu; then bench/api_bench.py
# (tiny model, CPU), whose p50 on a many-core host says how much of the VM's figure is the VM.
# Results go to $OUT (default /tmp/gpu-out): gpu-tests.log, build.log, bench-<budget>.log and
# .json (the JSON written as soon as the model's figures are; the log has each figure as measured),
# api-bench.log, worker logs. One budget by default (BUDGETS="16384 65536" for two: over 8 files).
# With the `device` tool (at most 600 s a call and 15 min a session, start-up included): run
# `bash bench/gpu_prepare.sh` on the development VM first (it has the package index and Debian's
# apt mirror, which the device lacks), then make one call:
#   command "BUDGETS=16384 bash bench/gpu_session.sh", carry [".whl", ".deb"], timeout_s 590
# (each step's timeout caps it, and the caps add up to under 590 s with one budget: 15 s of
# installs, 240 s for the model build beside the tests, 220 s of bench, 90 s of API bench;
# typical: tests and the model build ~1 min, the bench ~3 min, the API bench ~1 min). $OUT is the device tool's own; what the script leaves there
# comes back.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
step() { echo "== $(date +%T) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
PY=$(command -v python3)
"$PY" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name(0))'

step "install wheels and redis-server"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site"
mkdir -p /tmp/redisroot
for f in .deb/*.deb; do dpkg -x "$f" /tmp/redisroot; done
export PATH="/tmp/redisroot/usr/bin:$PATH"
export LD_LIBRARY_PATH="/tmp/redisroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
redis-server --version || exit 1
# tests/support.py starts workers as `<python's bin>/bge-m3`, the console script of an install.
cat >"$(dirname "$PY")/bge-m3" <<EOF
#!$PY
import sys
from bge_m3.cli import main
sys.exit(main())
EOF
chmod +x "$(dirname "$PY")/bge-m3"
"$PY" -c 'import transformers, FlagEmbedding, celery; print("transformers", transformers.__version__, "celery", celery.__version__)' || exit 1

step "build the full-size model (background) and run the gpu tests"
(timeout 240 "$PY" -m bge_m3.cli tiny-model /tmp/full --full >"$OUT/build.log" 2>&1; echo "build rc=$?" >>"$OUT/build.log") &
build=$!
timeout 200 "$PY" -m pytest -m gpu tests/test_worker_device.py -n 0 -p no:cacheprovider -q -rA 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
wait "$build"
tail -2 "$OUT/build.log"
grep -q "build rc=0" "$OUT/build.log" || { step "the full-size model was not built: no bench"; exit 1; }

for budget in ${BUDGETS:-16384}; do
  step "worker bench on the full model, cuda, $budget-token batches"
  timeout "${BENCH_TIMEOUT:-220}" "$PY" bench/worker_bench.py --skip-tiny --full /tmp/full --device cuda --mfu \
    --max-batch-tokens "$budget" --full-texts "${FULL_TEXTS:-2000}" --mfu-texts "${MFU_TEXTS:-512}" \
    --mfu-colbert-texts "${MFU_COLBERT_TEXTS:-128}" --log-level DEBUG --keep-logs "$OUT" \
    --json "$OUT/bench-$budget.json" 2>&1 | grep -v -E "XLMRobertaTokenizerFast|it/s\]|^\s*$" | tee "$OUT/bench-$budget.log"
done
step "API overhead (tiny model, CPU) on this many-core host: the 2-core VM's hops are its noise"
timeout "${API_BENCH_TIMEOUT:-90}" "$PY" bench/api_bench.py 2>&1 | grep -v -E "XLMRobertaTokenizerFast|^\s*$" | tee "$OUT/api-bench.log"
step "done"
